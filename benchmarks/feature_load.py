"""Feature loading: vilio's TSV parsing vs the memory-mapped FeatureStore, in one run.

Writes an N-image x K-box TSV in vilio's format (random values), imports it into a store, then times

(a) the first batch of 8 images: vilio must parse (base64-decode) the whole TSV, as ``load_obj_tsv``
    does, before it can yield anything; the store opens and reads 8 records;
(b) a full pass reading every image's features and boxes, both ways.

Targets: (a) >= 100x faster, (b) >= 5x faster. Optionally times BUTD extraction on CPU (random
weights, 600 px) when ``memeguard.features.butd`` exists.

    .venv/bin/python benchmarks/feature_load.py [--images 2000] [--boxes 100] [--dim 2048]
"""

from __future__ import annotations

import argparse
import base64
import csv
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from memeguard.features.record import RegionRecord
from memeguard.features.store import FeatureStore
from memeguard.features.tsv import TSV_FIELDS, import_tsv, write_tsv

BATCH = 8


def synthetic_records(images: int, boxes: int, dim: int, seed: int = 0) -> Iterator[RegionRecord]:
    rng = np.random.default_rng(seed)
    for i in range(images):
        corner = rng.uniform(0, 200, (boxes, 2)).astype(np.float32)
        yield RegionRecord(
            meme_id=10000 + i,
            features=np.abs(rng.standard_normal((boxes, dim), dtype=np.float32)),
            boxes=np.concatenate([corner, corner + 100], axis=1),
            image_size=(480, 640),
            object_ids=rng.integers(0, 1600, boxes),
            object_conf=rng.random(boxes, dtype=np.float32),
            attr_ids=rng.integers(0, 400, boxes),
            attr_conf=rng.random(boxes, dtype=np.float32),
        )


def vilio_load_obj_tsv(path: Path, ids: set[int]) -> list[dict]:
    """The baseline: vilio's ``load_obj_tsv`` behaviour (csv DictReader, base64 + reshape per row)."""
    csv.field_size_limit(sys.maxsize)
    decode = [
        ("objects_id", np.int64, False),
        ("objects_conf", np.float32, False),
        ("attrs_id", np.int64, False),
        ("attrs_conf", np.float32, False),
        ("boxes", np.float32, True),
        ("features", np.float32, True),
    ]
    data = []
    with open(path) as handle:
        for item in csv.DictReader(handle, list(TSV_FIELDS), delimiter="\t"):
            if int(item["img_id"]) not in ids:
                continue
            for key in ("img_h", "img_w", "num_boxes"):
                item[key] = int(item[key])
            n = item["num_boxes"]
            for key, dtype, two_d in decode:
                array = np.frombuffer(base64.b64decode(item[key]), dtype=dtype)
                item[key] = array.reshape((n, -1) if two_d else (n,))
                item[key].setflags(write=False)
            data.append(item)
    return data


def timed(fn, repeat: int = 1) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def vilio_first_batch(path: Path, ids: set[int]) -> list[tuple[np.ndarray, np.ndarray]]:
    data = vilio_load_obj_tsv(path, ids)
    return [(item["features"].copy(), item["boxes"].copy()) for item in data[:BATCH]]


def store_first_batch(path: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    store = FeatureStore.open(path)
    return [(r.features, r.boxes) for r in store.records(store.ids()[:BATCH])]


def vilio_full_pass(path: Path, ids: set[int]) -> float:
    total = 0.0
    for item in vilio_load_obj_tsv(path, ids):
        feats, boxes = item["features"].copy(), item["boxes"].copy()  # vilio's __getitem__ copies too
        total += float(feats[0, 0]) + float(boxes[0, 0])
    return total


def store_full_pass(path: Path) -> float:
    store = FeatureStore.open(path)
    total = 0.0
    for record in store:
        total += float(record.features[0, 0]) + float(record.boxes[0, 0])
    return total


def butd_throughput(images: int = 2) -> str:
    try:
        from memeguard.features.butd import ButdExtractor
    except ImportError as exc:
        return f"skipped (memeguard.features.butd not available: {exc})"
    try:
        import torch
        from PIL import Image

        torch.set_num_threads(2)
        extractor = ButdExtractor(weights=None, box_variants=("36",), device="cpu")
        rng = np.random.default_rng(0)
        batch = [Image.fromarray(rng.integers(0, 255, (600, 800, 3), dtype=np.uint8)) for _ in range(images)]
        start = time.perf_counter()
        extractor.extract(batch, list(range(images)), [""] * images)
        elapsed = time.perf_counter() - start
        return (
            f"{images / elapsed:.2f} images/s ({elapsed / images:.2f} s/image, "
            "600x800 input, random weights, 36 boxes)"
        )
    except Exception as exc:  # a benchmark reports, it does not crash on an unfinished extractor
        return f"skipped (ButdExtractor failed: {type(exc).__name__}: {exc})"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--boxes", type=int, default=100)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    parser.add_argument(
        "--workdir", type=Path, default=None, help="Where the TSV and store go (default: a temp dir)."
    )
    parser.add_argument("--keep", action="store_true", help="Keep the TSV and store afterwards.")
    parser.add_argument("--skip-butd", action="store_true")
    parser.add_argument("--butd-images", type=int, default=2, help="Images timed for BUTD (slow on CPU).")
    args = parser.parse_args()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="feature_load_"))
    workdir.mkdir(parents=True, exist_ok=True)
    tsv, store_path = workdir / "HM_img.tsv", workdir / "store"
    try:
        t_write, _ = timed(lambda: write_tsv(tsv, synthetic_records(args.images, args.boxes, args.dim)))
        t_import, report = timed(lambda: import_tsv(tsv, store_path, dtype=args.dtype))
        ids = set(range(10000, 10000 + args.images))
        print(
            f"{args.images} images x {args.boxes} boxes x {args.dim} dims; "
            f"TSV {tsv.stat().st_size / 1e9:.2f} GB (written in {t_write:.1f} s), "
            f"store {sum(f.stat().st_size for f in store_path.iterdir()) / 1e9:.2f} GB "
            f"{args.dtype} (imported in {t_import:.1f} s, once)"
        )

        # Warm the page cache for both files so neither side pays for the disk.
        vilio_full_pass(tsv, ids)
        t_vilio_first, vilio_batch = timed(lambda: vilio_first_batch(tsv, ids))
        t_store_first, store_batch = timed(lambda: store_first_batch(store_path), repeat=5)
        for (vf, vb), (sf, sb) in zip(vilio_batch, store_batch, strict=True):
            np.testing.assert_allclose(sf, vf.astype(args.dtype).astype(np.float32))
            np.testing.assert_array_equal(sb, vb)
        t_vilio_full, _ = timed(lambda: vilio_full_pass(tsv, ids))
        t_store_full, _ = timed(lambda: store_full_pass(store_path), repeat=3)

        rows = [
            ("first batch of 8", t_vilio_first, t_store_first, 100.0),
            ("full pass (features+boxes)", t_vilio_full, t_store_full, 5.0),
        ]
        print(f"\n{'measurement':<28} {'vilio TSV':>12} {'FeatureStore':>14} {'speed-up':>10} {'target':>8}")
        for name, slow, fast, target in rows:
            ratio = slow / fast
            verdict = "ok" if ratio >= target else "MISSED"
            print(
                f"{name:<28} {slow:>10.3f} s {fast * 1000:>11.2f} ms {ratio:>9.0f}x {target:>6.0f}x {verdict}"
            )
        if not args.skip_butd:
            print(f"\nBUTD extraction on CPU: {butd_throughput(args.butd_images)}")
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
