"""The CLIP family on the synthetic meme set: which heads learn the image-XOR-text rule from a small
random-weight CLIP, how fast they train, and how fast a CLIP-family bundle scores a meme next to a BUTD
region-feature model.

Table 1 (learning). ``memeguard data synth`` memes (noise-free labels, as benchmarks/learning.py), one pass
of a small random-weight CLIP this script saves (no download: a Hugging Face CLIP folder in the original
layout, a word-level BPE vocabulary of the synthetic captions), then every head trained on the stored
pooled vectors with the same trainer and settings: clip-concat, hateclipper-align, hateclipper-cross-32
(the small-n cross head), rgcl. The controls train the align head with one modality zeroed: text only
(``zero_visual``: the image vector is zeroed in every batch) and image only (the text vectors of every
record zeroed before training). Baseline, same data, same run: visualbert-tiny on grid features with the
demo's settings (demo.yaml). Columns: dev_seen AUROC, seconds (the fine-tune incl. its dev prediction),
training memes/s (train memes x epochs / seconds), and the CLIP pass's time once.

Table 2 (scoring latency, one meme per call, CPU): ``MemeScorer.score`` of (a) a CLIP-family run (the
Hate-CLIPper align head at its real size behind a random-weight CLIP at ViT-L/14 size, 224 px) and (b) a
BUTD region-feature run (the full-size ResNet-101 C4 detector with random weights, 36 boxes, behind a
random VisualBERT-base) on the same meme images; then the CLIP run exported as a bundle and scored from it.
Random weights: speed does not depend on them. Pass --skip-latency to skip it (it writes ~1.7 GB).

    .venv/bin/python benchmarks/clip_learning.py --work /tmp/clip_learning [--n 2000] [--epochs 20]
        [--threads 1] [--skip-latency] [--skip-bert]

Heads and the baseline use 1 torch thread each by default (the tiny models are fastest so on 2 shared cores).

Measured 2026-12-02 (defaults, n 2000: 1,400 train / 82 dev_seen memes, 2 CPU cores shared with other
jobs, load average 12-16, so the seconds are pessimistic): CLIP pass 17 s (every split); dev AUROC /
seconds / train memes/s: clip-concat 0.769 / 24 / 1191, hateclipper-align 0.776 / 34 / 833, its text-only
control 0.502, image-only control 0.446, hateclipper-cross-32 0.569 / 11 / 2499, rgcl 0.522 / 356 / 79
(the faiss memory is rebuilt every epoch); baseline visualbert-tiny on grid features 1.000 / 79 / 107
(+ 123 s for the grid pass). So on a random-weight CLIP only concat and align pick up part of the rule
(both controls stay at chance, so what they learn is the interaction), far below the tiny BERT-style model on
grid features: a random ViT's pooled output keeps little of the object's colour family. With real CLIP
weights the picture is expected to differ; this set cannot show it.
Latency (--latency-memes 4, 1 thread, same shared cores), p50 per meme: CLIP ViT-L/14 + align head 2.6 s
from the run, 2.3 s from its bundle; BUTD R101-C4 (36 boxes) + VisualBERT-base 18.8 s: ~7-8x faster.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

HEADS = ("clip-concat", "hateclipper-align", "hateclipper-cross-32", "rgcl")
CONTROL_HEAD = "hateclipper-align"
# demo.yaml's visualbert-tiny settings, the BERT-style baseline
DEMO_OVERRIDES = {
    "hidden_size": 128, "num_attention_heads": 4, "intermediate_size": 256, "initializer_range": 0.1,
    "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
}  # fmt: skip
DEMO_TRAIN = {"lr": 1.5e-3, "epochs": 6, "batch_size": 16, "sum_loss": False, "clip": 1.0, "swa": "none"}
# OpenAI CLIP ViT-L/14 sizes (the Hate-CLIPper checkpoint) for the latency table
VIT_L14 = {
    "text": {
        "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
    },
    "vision": {
        "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
        "image_size": 224, "patch_size": 14,
    },
    "projection_dim": 768,
}  # fmt: skip
SMALL_CLIP = {
    "text": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2},
    "vision": {
        "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
        "image_size": 64, "patch_size": 8,
    },
    "projection_dim": 32,
}  # fmt: skip


def word_bpe(corpus: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A CLIP BPE vocabulary in which each corpus word is (nearly always) one token: the byte alphabet,
    plus a left-to-right chain of merges per word. Every merge result is in the vocabulary, so no text maps
    to an unknown token; a word outside the corpus falls back to shorter pieces."""
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = sorted(ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    vocab.update({ch + "</w>": len(alphabet) + i for i, ch in enumerate(alphabet)})
    merges: list[tuple[str, str]] = []
    words = sorted({w for text in corpus for w in re.findall(r"[a-z0-9]+", text.lower())})
    for word in words:
        pieces = [*word[:-1], word[-1] + "</w>"]
        left = pieces[0]
        for right in pieces[1:]:
            merged = left + right
            if merged not in vocab:
                vocab[merged] = len(vocab)
                merges.append((left, right))
            left = merged
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    return vocab, merges


def save_random_clip(path: Path, sizes: dict[str, Any], corpus: list[str], seed: int = 0) -> Path:
    """A random-weight Hugging Face CLIP folder (model, tokenizer, image processor) of ``sizes``."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    vocab, merges = word_bpe(corpus)
    bos, eos = vocab["<|startoftext|>"], vocab["<|endoftext|>"]
    text = dict(sizes["text"], bos_token_id=bos, eos_token_id=eos, pad_token_id=eos, vocab_size=len(vocab))
    config = CLIPConfig(
        text_config={**text, "max_position_embeddings": 77},
        vision_config=sizes["vision"],
        projection_dim=sizes["projection_dim"],
    )
    torch.manual_seed(seed)
    CLIPModel(config).eval().save_pretrained(path)
    CLIPTokenizer(vocab=vocab, merges=merges).save_pretrained(path)
    side = sizes["vision"]["image_size"]
    processor = CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
    processor.save_pretrained(path)
    return path


def captions(data: Path) -> list[str]:
    return [json.loads(line)["text"] for f in sorted(data.glob("*.jsonl")) for line in f.open()]


def prepare(work: Path, n: int, seed: int) -> Path:
    from memeguard.data.synth import generate_synthetic
    from memeguard.names import SYNTH_META_FILE

    data = work / "data"
    meta = data / SYNTH_META_FILE
    if not meta.is_file() or json.loads(meta.read_text()).get("n") != n:
        shutil.rmtree(data, ignore_errors=True)
        generate_synthetic(data, n=n, seed=seed, progress=False, label_noise=0.0)
    return data


def extract(data: Path, store: Path, extractor: Any) -> tuple[Path, float]:
    from memeguard.features.extract import extract_features

    shutil.rmtree(store, ignore_errors=True)
    start = time.perf_counter()
    paths = extract_features(data, store, extractor, progress=False, dtype="float32")
    return next(iter(paths.values())), time.perf_counter() - start


def load_regions(store: Path, zero_text: bool = False) -> dict:
    """Every record of ``store`` in memory; ``zero_text``: its text vectors zeroed (image-only control)."""
    from dataclasses import replace

    from memeguard.features.store import FeatureStore

    opened = FeatureStore.open(store)
    regions = {}
    for record in opened.records(opened.ids()):
        if zero_text:
            extras = {k: (np.zeros_like(v) if k.startswith("text_") else v) for k, v in record.extras.items()}
            record = replace(record, extras=extras)
        regions[record.meme_id] = record
    return regions


def train(model: str, data: Path, features: Any, out: Path, settings: dict, **options: Any) -> tuple:
    from memeguard.training import TrainConfig, finetune

    shutil.rmtree(out, ignore_errors=True)
    in_memory = isinstance(features, dict)
    cfg = TrainConfig(
        model=model, features="memory" if in_memory else features, data_dir=data, out_dir=out,
        train_split="train", predict_splits=("dev_seen",), device="cpu", progress=False,
        **{**settings, **options},
    )  # fmt: skip
    start = time.perf_counter()
    result = finetune(cfg, regions=features if in_memory else None)
    return result, time.perf_counter() - start


def learning_rows(args: argparse.Namespace, data: Path) -> list[tuple]:
    """Table 1: (name, input, dev AUROC, seconds, training memes/s) per head, control and baseline."""
    from memeguard.features.clip import ClipExtractor
    from memeguard.training.build import train_defaults

    clip = save_random_clip(args.work / "clip-small", SMALL_CLIP, captions(data))
    store, seconds = extract(data, args.work / "clip_store", ClipExtractor(clip, resize=args.resize))
    n_train = sum(1 for _ in (data / "train.jsonl").open())
    print(
        f"CLIP pass (small random CLIP, {args.resize}): {seconds:.1f} s for every split ({store})", flush=True
    )
    regions = load_regions(store)
    rows = []

    def add(name: str, kind: str, model: str, features: Any, settings: dict, **options: Any) -> None:
        settings = {**settings, "seed": args.seed}
        result, secs = train(
            model, data, features, args.work / "runs" / f"{name}-{kind}", settings, **options
        )
        rate = n_train * settings["epochs"] / secs
        rows.append((name, kind, result.metrics["auroc"], secs, rate))
        print(f"  {name:<22}{kind:<12}{result.metrics['auroc']:.4f} {secs:7.1f} s", flush=True)

    for head in HEADS:
        settings = {**train_defaults(head), "lr": args.lr, "epochs": args.epochs, "select_best": False}
        settings["eval_every"] = 0
        add(head, "image+text", head, regions, settings)
        if head == CONTROL_HEAD:
            add(head, "text only", head, regions, settings, zero_visual=True)
            add(head, "image only", head, load_regions(store, zero_text=True), settings)
    if not args.skip_bert:
        from memeguard.features.grid import GridExtractor

        grid, grid_seconds = extract(data, args.work / "grid_store", GridExtractor())
        print(f"grid pass: {grid_seconds:.1f} s", flush=True)
        settings = {**DEMO_TRAIN, "eval_every": 0, "model_overrides": DEMO_OVERRIDES}
        add("visualbert-tiny (demo)", "image+text", "visualbert-tiny", grid, settings)
    return rows


def print_learning(rows: list[tuple]) -> None:
    print(f"\n{'head':<24}{'input':<12}{'dev AUROC':>10}{'time s':>8}{'train memes/s':>15}")
    for name, kind, auroc, seconds, rate in rows:
        print(f"{name:<24}{kind:<12}{auroc:>10.4f}{seconds:>8.1f}{rate:>15.0f}")


def write_meme_data(root: Path, images: list[Path]) -> Path:
    """A dev_seen split of ``images`` (the store a served run points at)."""
    from memeguard.names import DEV_SEEN, IMAGE_DIR, split_file

    data = root / "data"
    (data / IMAGE_DIR).mkdir(parents=True, exist_ok=True)
    lines = []
    for k, path in enumerate(images):
        (data / IMAGE_DIR / path.name).write_bytes(path.read_bytes())
        line = {"id": k, "img": f"{IMAGE_DIR}/{path.name}", "text": "when the benchmark meme", "label": k % 2}
        lines.append(json.dumps(line))
    (data / split_file(DEV_SEEN)).write_text("\n".join(lines) + "\n")
    return data


def save_run(run: Path, model: Any, name: str, store: Path, data: Path) -> Path:
    """A run dir (nothing trained: random weights score as fast as trained ones) with its dev predictions."""
    from memeguard.names import MODEL_DIR, TRAIN_CONFIG_FILE

    model.save_pretrained(run / MODEL_DIR)
    config = {"model": name, "features": str(store), "data_dir": str(data)}
    (run / TRAIN_CONFIG_FILE).write_text(json.dumps(config))
    return run


def latency(scorer: Any, items: list[tuple[Path, str]]) -> tuple[float, float]:
    scorer.score(*items[0])  # warm-up
    seconds = []
    for path, text in items:
        start = time.perf_counter()
        scorer.score(path, text)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds) * 1000, float(np.percentile(seconds, 95)) * 1000


def latency_rows(args: argparse.Namespace, data: Path) -> list[tuple]:
    """Table 2: one meme per call through ``MemeScorer.score`` for a CLIP run, its bundle and a BUTD run."""
    import torch

    from memeguard.data.predictions import write_predictions
    from memeguard.features.butd import ButdExtractor
    from memeguard.features.clip import ClipExtractor
    from memeguard.models import create_model
    from memeguard.serving.bundle import export_bundle
    from memeguard.serving.scorer import MemeScorer

    root = args.work / "latency"
    shutil.rmtree(root, ignore_errors=True)
    images = sorted((data / "img").glob("*.png"))[: args.latency_memes]
    memes = write_meme_data(root, images)
    items = [(path, "when the benchmark meme") for path in images]
    clip = save_random_clip(root / "clip-vit-l14", VIT_L14, ["when the benchmark meme"])
    clip_store, _ = extract(memes, root / "clip_store", ClipExtractor(clip, resize="square"))
    torch.manual_seed(0)
    image_dim, text_dim = VIT_L14["vision"]["hidden_size"], VIT_L14["text"]["hidden_size"]
    head = create_model(
        "hateclipper-align", image_dim=image_dim, text_dim=text_dim, visual_feat_dim=image_dim
    )
    clip_run = save_run(root / "HCA", head, "hateclipper-align", clip_store, memes)
    ids = list(range(len(images)))
    write_predictions(clip_run / "dev_seen.csv", ids, np.linspace(0.1, 0.9, len(ids)))
    butd_store, _ = extract(memes, root / "butd_store", ButdExtractor(weights=None, box_variants=("36",)))
    bert = create_model("visualbert-base", visual_feat_dim=2048)
    butd_run = save_run(root / "V", bert, "visualbert-base", butd_store, memes)
    export_bundle([clip_run], root / "bundle", data_dir=memes)
    rows = []
    for name, load in (
        ("CLIP ViT-L/14 + hateclipper-align (run)", lambda: MemeScorer.from_runs([clip_run], device="cpu")),
        ("  the same from its bundle", lambda: MemeScorer.from_bundle(root / "bundle", device="cpu")),
        ("BUTD R101-C4 36 boxes + visualbert-base", lambda: MemeScorer.from_runs([butd_run], device="cpu")),
    ):
        start = time.perf_counter()
        scorer = load()
        loaded = time.perf_counter() - start
        p50, p95 = latency(scorer, items)
        rows.append((name, loaded, p50, p95))
        print(f"  {name}: p50 {p50:.0f} ms", flush=True)
        del scorer
    return rows


def print_latency(rows: list[tuple], memes: int) -> None:
    print(f"\nscoring one meme per call on CPU ({memes} synthetic memes, random weights)")
    print(f"{'model':<42}{'load s':>8}{'p50 ms':>9}{'p95 ms':>9}{'x BUTD':>8}")
    butd = rows[-1][2]
    for name, loaded, p50, p95 in rows:
        print(f"{name:<42}{loaded:>8.1f}{p50:>9.0f}{p95:>9.0f}{butd / p50:>8.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/memeguard-clip-learning"))
    parser.add_argument("--n", type=int, default=2000, help="synthetic memes (train is 70%%)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=20, help="epochs per CLIP head (the paper's 20)")
    parser.add_argument("--lr", type=float, default=1e-3, help="CLIP heads' lr (paper: 1e-4 for 8,500 memes)")
    parser.add_argument("--resize", default="square", choices=("square", "crop"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--latency-memes", type=int, default=8)
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--skip-learning", action="store_true", help="only the latency table")
    parser.add_argument("--skip-bert", action="store_true", help="skip the visualbert-tiny baseline")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    data = prepare(args.work, args.n, args.seed)
    if not args.skip_learning:
        print_learning(learning_rows(args, data))
    if not args.skip_latency:
        print_latency(latency_rows(args, data), args.latency_memes)


if __name__ == "__main__":
    main()
