"""OCR on the synthetic meme set: how well the caption is read back, and whether the score changes.

Every synthetic meme carries its caption in the image (white DejaVu Sans Bold, black outline, at the top,
the bottom or both), so the jsonl text is the truth. For each meme the caption is read with
``memeguard.data.ocr.read_caption`` and compared with the normalised true text:

* word recall: share of the true words found in the OCR text (with multiplicity);
* exact caption: the OCR text equals the true text;
* score agreement: the scorer's probability with the OCR text equals (within 1e-6) the one with the true
  text, and the label agrees;
* seconds per image: OCR alone (the engine is loaded before timing).

Rows are split by image width (the set's images are 160-400 px; small ones have small text).

    .venv/bin/python benchmarks/ocr.py [--data SYNTH_DIR] [--n 200] [--memes 100] [--model RUN_DIR]

Without ``--data`` a set of ``--n`` ids is synthesised into a temporary folder. Without ``--model`` the
scorer is a ``visualbert-tiny`` with random weights spread wide (std 0.15, so that its score moves with the
text) on grid features; pass a trained run (e.g. one of ``memeguard demo``'s) for the realistic figure.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np


def word_recall(truth: str, read: str) -> float:
    want, got = Counter(truth.split()), Counter(read.split())
    return sum(min(n, got[word]) for word, n in want.items()) / max(1, sum(want.values()))


def random_run(root: Path, data: Path, split: str) -> Path:
    """A tiny run whose train_config.json points at a grid store of the split."""
    import torch

    from memeguard.features.extract import extract_features
    from memeguard.features.grid import GRID_FEATURE_DIM, GridExtractor
    from memeguard.models import create_model
    from memeguard.names import MODEL_DIR, TRAIN_CONFIG_FILE

    store = root / "grid"
    extract_features(data, store, GridExtractor(), splits=[split], progress=False)
    torch.manual_seed(0)
    model = create_model("visualbert-tiny", visual_feat_dim=GRID_FEATURE_DIM)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim >= 2:
                parameter.normal_(0.0, 0.15)
    run = root / "run"
    model.save_pretrained(run / MODEL_DIR)
    (run / TRAIN_CONFIG_FILE).write_text(json.dumps({"model": "visualbert-tiny", "features": str(store)}))
    return run


def measure(data: Path, split: str, memes: int, run: Path | None, root: Path) -> list[dict[str, float]]:
    from memeguard.data.hm import image_path, load_jsonl
    from memeguard.data.ocr import get_engine, normalise_caption, read_caption
    from memeguard.names import split_file
    from memeguard.serving.scorer import MemeScorer, load_image

    chosen = load_jsonl(data / split_file(split))[:memes]
    scorer = MemeScorer.from_runs([run or random_run(root, data, split)], device="cpu")
    get_engine()
    results = []
    for meme in chosen:
        image = load_image(image_path(data, meme), str(meme.id))
        start = time.perf_counter()
        read = read_caption(image)
        seconds = time.perf_counter() - start
        truth = normalise_caption(meme.text)
        with_ocr, with_truth = scorer.score_images([image, image], [read, truth])
        results.append(
            {
                "width": image.width,
                "recall": word_recall(truth, read),
                "exact": float(read == truth),
                "agree": float(
                    abs(with_ocr.proba - with_truth.proba) < 1e-6 and with_ocr.label == with_truth.label
                ),
                "label_agree": float(with_ocr.label == with_truth.label),
                "seconds": seconds,
            }
        )
    return results


def table(results: list[dict[str, float]]) -> None:
    groups = {
        "width < 250 px": [r for r in results if r["width"] < 250],
        "width >= 250 px": [r for r in results if r["width"] >= 250],
        "all": results,
    }
    print(
        f"{'memes':<16} {'n':>4} {'word recall':>12} {'exact':>7} {'score agrees':>13} "
        f"{'label agrees':>13} {'s/image':>8}"
    )
    for name, rows in groups.items():
        if not rows:
            continue

        def mean(key: str, rows: list[dict[str, float]] = rows) -> float:
            return float(np.mean([r[key] for r in rows]))

        print(
            f"{name:<16} {len(rows):>4} {mean('recall'):>12.3f} {mean('exact'):>7.3f} {mean('agree'):>13.3f} "
            f"{mean('label_agree'):>13.3f} {mean('seconds'):>8.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="A synthetic set (memeguard data synth); default: make one")
    parser.add_argument("--n", type=int, default=200, help="Ids to synthesise without --data")
    parser.add_argument("--split", default="dev_seen")
    parser.add_argument("--memes", type=int, default=100)
    parser.add_argument("--model", type=Path, help="A trained run dir (default: a random tiny run)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (OCR uses its own)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = args.data
        if data is None:
            from memeguard.data.synth import generate_synthetic

            data = root / "synth"
            generate_synthetic(data, n=args.n, seed=0, progress=False)
        table(measure(data, args.split, args.memes, args.model, root))


if __name__ == "__main__":
    main()
