"""CPU forward throughput (memes/s) of every registered ``*-base`` architecture, random weights.

Each model scores the same 8 synthetic memes with 50 regions each, batched by its own processor
(processing is not timed). Baseline, timed in the same run: a plain 12-layer BERT-base encoder over
the same number of positions (text tokens + 50), i.e. what a single-stream model costs at minimum;
the ``x baseline`` column is each model's time per batch divided by the baseline's.

    .venv/bin/python benchmarks/model_forward.py [--batch-size 8] [--boxes 50] [--repeats 3] [--names a,b]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from memeguard.data.meme import Meme
from memeguard.errors import ConfigError
from memeguard.features.record import RegionRecord
from memeguard.models import create_model, list_models
from memeguard.models.blocks import BertEncoder, extended_attention_mask
from memeguard.models.tokenization import default_uncased_vocab, load_tokenizer, read_wordpiece_vocab

TEXTS = [
    "when you finally get the job and realise mondays are every week",
    "look how many people love you",
    "that face when someone says pineapple belongs on pizza",
    "my dog after eating the whole cake and pretending nothing happened at all",
]


def tokenizer_for(config):
    """The model's tokenizer when it is available offline, else uncased WordPiece cut to its vocabulary."""
    try:
        return load_tokenizer(config.tokenizer)
    except ConfigError:
        from transformers import BertTokenizer

        vocab = {
            t: i for t, i in read_wordpiece_vocab(default_uncased_vocab()).items() if i < config.vocab_size
        }
        return BertTokenizer(vocab=vocab, do_lower_case=True)


def synthetic_inputs(batch_size: int, boxes: int, feature_dim: int) -> tuple[list[Meme], list[RegionRecord]]:
    rng = np.random.default_rng(0)
    memes, regions = [], []
    for index in range(batch_size):
        xy = rng.uniform(0, 300, size=(boxes, 2))
        memes.append(Meme(index, f"img/{index:05d}.png", TEXTS[index % len(TEXTS)], index % 2))
        regions.append(
            RegionRecord(
                meme_id=index,
                features=np.abs(rng.normal(size=(boxes, feature_dim))).astype(np.float32),
                boxes=np.concatenate([xy, xy + rng.uniform(20, 200, size=(boxes, 2))], axis=1).astype(
                    np.float32
                ),
                image_size=(600, 800),
            )
        )
    return memes, regions


def median_seconds(fn: Callable[[], object], warmup: int, repeats: int) -> list[float]:
    """Wall times of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones."""
    with torch.inference_mode():
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return times


class Baseline:
    """A 12-layer, 768-wide BERT encoder (no embeddings, no head) over a given number of positions."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.encoder = BertEncoder(
            12,
            hidden_size=768,
            num_heads=12,
            intermediate_size=3072,
            act="gelu",
            attention_dropout=0.1,
            hidden_dropout=0.1,
            eps=1e-12,
        ).eval()
        self.params = sum(p.numel() for p in self.encoder.parameters()) / 1e6

    def call(self, batch_size: int, length: int) -> Callable[[], object]:
        hidden = torch.randn(batch_size, length, 768)
        mask = extended_attention_mask(torch.ones(batch_size, length))
        return lambda: self.encoder(hidden, mask)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--boxes", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--names", default="", help="comma-separated model names (default: every *-base)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    names = [n for n in args.names.split(",") if n] or [n for n in list_models() if n.endswith("-base")]
    baseline = Baseline()
    print(
        f"CPU forward, fp32, batch {args.batch_size}, {args.boxes} boxes, "
        f"torch threads {torch.get_num_threads()}, {args.repeats} timed calls each, "
        "model and baseline alternating (medians; ratio = median of ratios)"
    )
    header = (
        f"{'model':<18}{'params (M)':>11}{'text':>6}{'regions':>9}{'ms/batch':>10}{'memes/s':>9}"
        f"{'baseline ms':>13}{'x baseline':>12}"
    )
    print(header)
    print("-" * len(header))
    for name in names:
        torch.manual_seed(0)
        model = create_model(name).eval()
        memes, regions = synthetic_inputs(args.batch_size, args.boxes, model.config.visual_feat_dim)
        batch = model.build_processor(tokenizer_for(model.config))(memes, regions)
        text, boxes = batch["input_ids"].shape[1], batch["visual_feats"].shape[1]
        run_model = lambda model=model, batch=batch: model(batch)  # noqa: E731
        run_base = baseline.call(args.batch_size, text + args.boxes)
        median_seconds(run_model, args.warmup, 0)
        median_seconds(run_base, args.warmup, 0)
        model_times, base_times = [], []
        for _ in range(args.repeats):  # alternate so that load from other processes hits both alike
            model_times += median_seconds(run_model, 0, 1)
            base_times += median_seconds(run_base, 0, 1)
        seconds, base = statistics.median(model_times), statistics.median(base_times)
        ratio = statistics.median(m / b for m, b in zip(model_times, base_times, strict=True))
        params = sum(p.numel() for p in model.parameters()) / 1e6
        print(
            f"{name:<18}{params:>11.1f}{text:>6}{boxes:>9}{seconds * 1e3:>10.0f}"
            f"{args.batch_size / seconds:>9.1f}{base * 1e3:>13.0f}{ratio:>12.2f}",
            flush=True,
        )
        del model, batch, run_model
        gc.collect()
    print(
        f"baseline: BERT-base encoder, {baseline.params:.1f} M parameters, over text + {args.boxes} positions"
    )


if __name__ == "__main__":
    main()
