"""The vilio TSV importer, value for value (the MMF LMDB importer: ``test_lmdb_import.py``).

The fixtures are written here with base64 directly (not with memeguard's writers), in
exactly the layout the original scripts produce.
"""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest

from memeguard.errors import FeatureStoreError
from memeguard.features.record import RegionRecord
from memeguard.features.store import FeatureStore
from memeguard.features.tsv import import_tsv, iter_tsv, write_tsv

DIM = 24


def b64(array: np.ndarray, dtype: str) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype=dtype).tobytes()).decode("ascii")


def tsv_item(
    img_id: int, n: int, rng: np.random.Generator, rows: int | None = None, attrs: bool = True
) -> dict:
    """One image as the extraction script stores it; ``rows`` != n makes vilio's N+1 case."""
    rows = n if rows is None else rows
    h, w = int(rng.integers(200, 800)), int(rng.integers(200, 800))
    x1, y1 = rng.uniform(0, w / 2, rows), rng.uniform(0, h / 2, rows)
    return {
        "img_id": f"{img_id:05d}",
        "img_h": h,
        "img_w": w,
        "objects_id": rng.integers(0, 1600, rows).astype(np.int64),
        "objects_conf": rng.uniform(0, 1, rows).astype(np.float32),
        "attrs_id": rng.integers(0, 400, rows).astype(np.int64) if attrs else np.zeros(rows, np.int64),
        "attrs_conf": rng.uniform(0, 1, rows).astype(np.float32) if attrs else np.zeros(rows, np.float32),
        "num_boxes": n,
        "boxes": np.stack([x1, y1, x1 + w / 3, y1 + h / 3], axis=1).astype(np.float32),
        "features": rng.gamma(1.0, 2.0, (rows, DIM)).astype(np.float32),
    }


def tsv_line(item: dict) -> str:
    cols = [
        item["img_id"],
        str(item["img_h"]),
        str(item["img_w"]),
        b64(item["objects_id"], "<i8"),
        b64(item["objects_conf"], "<f4"),
        b64(item["attrs_id"], "<i8"),
        b64(item["attrs_conf"], "<f4"),
        str(item["num_boxes"]),
        b64(item["boxes"], "<f4"),
        b64(item["features"], "<f4"),
    ]
    return "\t".join(cols) + "\n"


def assert_matches_tsv_item(record: RegionRecord, item: dict) -> None:
    assert record.meme_id == int(item["img_id"])
    assert record.image_size == (item["img_h"], item["img_w"])
    np.testing.assert_array_equal(record.features, item["features"])
    np.testing.assert_array_equal(record.boxes, item["boxes"])
    np.testing.assert_array_equal(record.object_ids, item["objects_id"])
    np.testing.assert_array_equal(record.object_conf, item["objects_conf"])
    np.testing.assert_array_equal(record.attr_ids, item["attrs_id"])
    np.testing.assert_array_equal(record.attr_conf, item["attrs_conf"])


@pytest.fixture
def tsv_items() -> list[dict]:
    rng = np.random.default_rng(0)
    items = [tsv_item(i, int(rng.integers(10, 101)), rng) for i in (1235, 42, 99001, 7)]
    items.append(tsv_item(31337, 36, rng, rows=37))  # vilio's "1 out of 10K" line
    items.append(tsv_item(8, 50, rng, attrs=False))  # `vg` weights: zero attributes
    return items


def test_tsv_round_trip_value_for_value(tmp_path: Path, tsv_items: list[dict]) -> None:
    path = tmp_path / "hm_vgattr10100.tsv"
    rng = np.random.default_rng(9)
    duplicate = tsv_item(42, 12, rng)  # append-mode re-run: a later, different line for id 42
    path.write_text("".join(tsv_line(item) for item in tsv_items) + tsv_line(duplicate))
    report = import_tsv(path, tmp_path / "store", dtype="float32")
    assert report.imported == len(tsv_items) and report.bad == []
    assert report.duplicates == [(f"{path}:7", 42, "first on line 2")]
    assert report.repaired == [(f"{path}:5", 31337, "num_boxes says 36, arrays hold 37 rows")]
    store = FeatureStore.open(tmp_path / "store")
    assert store.ids() == [int(item["img_id"]) for item in tsv_items]
    assert store.feature_dim == DIM and store.meta["source_format"] == "vilio-tsv"
    for item in tsv_items:
        assert_matches_tsv_item(store[int(item["img_id"])], item)
    assert store.num_boxes(31337) == 37


def test_tsv_float16_store_rounds_features_only(tmp_path: Path, tsv_items: list[dict]) -> None:
    path = tmp_path / "f.tsv"
    path.write_text("".join(tsv_line(item) for item in tsv_items))
    import_tsv(path, tmp_path / "store")
    store = FeatureStore.open(tmp_path / "store")
    assert store.dtype == "float16"
    item = tsv_items[0]
    record = store[int(item["img_id"])]
    np.testing.assert_array_equal(record.features, item["features"].astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(record.boxes, item["boxes"])


def test_tsv_bad_line_named_by_line_number(tmp_path: Path, tsv_items: list[dict]) -> None:
    rng = np.random.default_rng(5)
    bad = tsv_item(555, 20, rng)
    bad["boxes"] = bad["boxes"][:17]  # neither 20 nor 21 rows
    lines = [tsv_line(item) for item in tsv_items[:2]] + [
        tsv_line(bad),
        "00777\t12\tnot-a-row\n",
        tsv_line(tsv_items[2]),
    ]
    path = tmp_path / "f.tsv"
    path.write_text("".join(lines))
    with pytest.raises(FeatureStoreError, match=rf"{path}:3: num_boxes=20 does not match"):
        import_tsv(path, tmp_path / "strict")
    with pytest.raises(FeatureStoreError, match="never finalised"):
        FeatureStore.open(tmp_path / "strict")
    report = import_tsv(path, tmp_path / "lenient", skip_bad_lines=True)
    assert [where for where, _ in report.bad] == [f"{path}:3", f"{path}:4"]
    assert "expected 10 tab-separated columns, found 3" in report.bad[1][1]
    assert FeatureStore.open(tmp_path / "lenient").ids() == [1235, 42, 99001]
    # The strict store resumes: only what is missing gets written.
    path.write_text("".join(tsv_line(item) for item in tsv_items))
    report = import_tsv(path, tmp_path / "strict")
    assert report.already_stored == 2 and report.imported == len(tsv_items) - 2


def test_tsv_corrupt_base64_and_feature_dim_change(tmp_path: Path, tsv_items: list[dict]) -> None:
    path = tmp_path / "f.tsv"
    cols = tsv_line(tsv_items[1]).split("\t")
    cols[9] = cols[9][:-5] + "!!!!\n"
    path.write_text(tsv_line(tsv_items[0]) + "\t".join(cols))
    with pytest.raises(FeatureStoreError, match=rf"{path}:2: column 'features' is not valid base64"):
        list(iter_tsv(path))
    other = dict(tsv_items[1])
    other["features"] = np.zeros((other["num_boxes"], DIM + 2), np.float32)
    path.write_text(tsv_line(tsv_items[0]) + tsv_line(other))
    with pytest.raises(FeatureStoreError, match=rf"{path}:2: feature dim {DIM + 2} differs"):
        list(iter_tsv(path))


def test_write_tsv_is_readable_by_the_test_decoder(tmp_path: Path, tsv_items: list[dict]) -> None:
    """Our writer produces the original format: decode it here with plain base64 like vilio does."""
    recs = list(iter_tsv(_write(tmp_path / "a.tsv", tsv_items)))
    out = write_tsv(tmp_path / "b.tsv", recs)
    lines = out.read_text().splitlines()
    assert len(lines) == len(tsv_items)
    cols = lines[0].split("\t")
    item = tsv_items[0]
    assert cols[0] == item["img_id"] and int(cols[7]) == item["num_boxes"]
    feats = np.frombuffer(base64.b64decode(cols[9]), dtype=np.float32).reshape(item["num_boxes"], -1)
    np.testing.assert_array_equal(feats, item["features"])
    assert (tmp_path / "a.tsv").read_text().splitlines()[0] == lines[0]


def _write(path: Path, items: list[dict]) -> Path:
    path.write_text("".join(tsv_line(item) for item in items))
    return path


# ------------------------------------------------------------------------------------------- LMDB
