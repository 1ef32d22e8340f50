"""Serving throughput and latency: ``MemeScorer.score`` one meme at a time (the baseline) vs ``score_batch``.

The demo setting: a ``visualbert-tiny`` model (random weights: speed does not depend on them) trained on
default grid features (41 regions x 42-d), scored on CPU from PNG files of meme size (mixed shapes around
HM's typical 550x500). Each row reports memes per second and the p50/p95 latency of one call; for the
batched rows a "call" scores a whole batch, and the per-meme latency is shown beside it. The last row is
the same single-meme request through the HTTP app (in-process TestClient: JSON + base64 + routing cost,
no socket).

    .venv/bin/python benchmarks/serving.py [--memes 64] [--batch-size 16] [--threads 1] [--device cpu]

``--threads`` defaults to 1: on a small, busy machine torch's intra-op threads fight other processes for
the cores, and a tiny model's forward pass gets an order of magnitude slower with 2 threads than with 1.
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SIZES = [(550, 500), (600, 400), (400, 600), (500, 500), (700, 525)]


def make_images(folder: Path, n: int) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for k in range(n):
        width, height = SIZES[k % len(SIZES)]
        pixels = np.clip(rng.normal(120, 40, size=(height, width, 3)), 0, 255).astype(np.uint8)
        image = Image.fromarray(pixels, "RGB")
        draw = ImageDraw.Draw(image)
        x, y = int(rng.integers(0, width // 2)), int(rng.integers(0, height // 2))
        draw.ellipse(
            (x, y, x + width // 3, y + height // 3), fill=tuple(int(c) for c in rng.integers(0, 256, 3))
        )
        path = folder / f"{k:05d}.png"
        image.save(path)
        paths.append(path)
    return paths


def make_run(root: Path, images: list[Path]) -> Path:
    """A run dir whose train_config.json points at a default grid store of the images."""
    import torch

    from memeguard.features.extract import extract_features
    from memeguard.features.grid import GRID_FEATURE_DIM, GridExtractor
    from memeguard.models import create_model
    from memeguard.names import DEV_SEEN, IMAGE_DIR, MODEL_DIR, TRAIN_CONFIG_FILE, split_file

    data = root / "data"
    (data / IMAGE_DIR).mkdir(parents=True)
    lines = []
    for k, path in enumerate(images[:4]):
        (data / IMAGE_DIR / path.name).write_bytes(path.read_bytes())
        lines.append(json.dumps({"id": k, "img": f"{IMAGE_DIR}/{path.name}", "text": "benchmark meme"}))
    (data / split_file(DEV_SEEN)).write_text("\n".join(lines) + "\n")
    store = root / "grid"
    extract_features(data, store, GridExtractor(), progress=False)
    torch.manual_seed(0)
    run = root / "run"
    create_model("visualbert-tiny", visual_feat_dim=GRID_FEATURE_DIM).save_pretrained(run / MODEL_DIR)
    (run / TRAIN_CONFIG_FILE).write_text(json.dumps({"model": "visualbert-tiny", "features": str(store)}))
    return run


def timed(calls: list[Callable[[], object]]) -> list[float]:
    seconds = []
    for call in calls:
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    return seconds


def row(name: str, per_call: list[float], memes_per_call: int) -> tuple[str, ...]:
    total = sum(per_call)
    p50 = statistics.median(per_call) * 1000
    p95 = float(np.percentile(per_call, 95)) * 1000
    return (
        name,
        str(memes_per_call),
        f"{memes_per_call * len(per_call) / total:8.1f}",
        f"{p50:8.1f}",
        f"{p95:8.1f}",
        f"{p50 / memes_per_call:8.1f}",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memes", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    import torch

    from memeguard.serving.scorer import MemeScorer

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "memes").mkdir()
        paths = make_images(root / "memes", args.memes)
        run = make_run(root, paths)
        scorer = MemeScorer.from_runs([run], device=args.device, batch_size=args.batch_size)
        scorer.warmup()
        texts = [f"when the meme number {k} is benchmarked" for k in range(len(paths))]
        items = list(zip(paths, texts, strict=True))
        rows = []

        single = timed([lambda p=p, t=t: scorer.score(p, t) for p, t in items])
        rows.append(row("score (baseline)", single, 1))
        size = args.batch_size
        chunks = [items[i : i + size] for i in range(0, len(items) - size + 1, size)]
        batched = timed([lambda c=c: scorer.score_batch(c) for c in chunks])
        rows.append(row(f"score_batch({size})", batched, size))

        # Where a batch's time goes: decoding + extraction (both spread over the cores) vs the model.
        from memeguard.serving.scorer import load_image
        from memeguard.threads import map_in_threads

        decode = timed([lambda c=c: map_in_threads(lambda item: load_image(item[0]), c) for c in chunks])
        rows.append(row("  of which: decode PNGs", decode, size))
        decode_one = timed([lambda c=c: [load_image(p) for p, _ in c] for c in chunks])
        rows.append(row("    (one thread)", decode_one, size))
        decoded = [[load_image(p) for p, _ in c] for c in chunks]
        (extractor,) = scorer.extractors.values()
        extract = timed([lambda d=d: extractor.extract(d, list(range(len(d)))) for d in decoded])
        rows.append(row("  of which: grid features", extract, size))
        extract_one = timed([lambda d=d: [extractor.extract_one(i, 0) for i in d] for d in decoded])
        rows.append(row("    (one thread)", extract_one, size))

        try:
            from fastapi.testclient import TestClient

            from memeguard.serving.http import create_app

            bodies = [{"image_b64": base64.b64encode(p.read_bytes()).decode(), "text": t} for p, t in items]
            with TestClient(create_app(scorer)) as client:
                http = timed([lambda b=b: client.post("/score", json=b).raise_for_status() for b in bodies])
            rows.append(row("HTTP /score (1 meme)", http, 1))
        except ImportError:
            pass

    header = ("case", "batch", "memes/s", "p50 ms", "p95 ms", "ms/meme")
    widths = [max(len(r[i].strip()) for r in [header, *rows]) + 2 for i in range(len(header))]
    print(f"device={args.device} threads={args.threads} memes={len(paths)} model=visualbert-tiny grid 41x42")
    print(
        "".join(
            h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths, strict=True))
        )
    )
    for r in rows:
        print(
            "".join(
                c.strip().ljust(w) if i == 0 and not c.startswith("  ") else c.rjust(w) if i else c.ljust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
    speedup = (sum(single) / len(single)) / (sum(batched) / (len(batched) * size))
    print(f"score_batch({size}) vs score: {speedup:.2f}x memes/s")


if __name__ == "__main__":
    main()
