"""Attacks on a finalised store: NaN/inf written into its data files, mistyped meta.json / layout.json.

Each test writes the bad file, then checks the exact one-line error and that nothing in the store changed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from memeguard.cli import main
from memeguard.errors import FeatureStoreError
from memeguard.features.record import RegionRecord
from memeguard.features.store import FeatureStore, FeatureStoreWriter

DIM = 4


def small_store(path: Path, count: int = 9, seed: int = 0) -> list[RegionRecord]:
    rng = np.random.default_rng(seed)
    recs = []
    with FeatureStoreWriter(path, DIM, dtype="float16", meta={"extractor": "test"}) as writer:
        for i in range(count):
            n = int(rng.integers(1, 6))
            record = RegionRecord(
                meme_id=100 + i,
                features=rng.normal(size=(n, DIM)).astype(np.float32),
                boxes=np.tile(np.array([[0, 0, 10, 10]], dtype=np.float32), (n, 1)),
                image_size=(20, 20),
                object_conf=rng.uniform(size=n).astype(np.float32),
                extras={"emb": rng.normal(size=3).astype(np.float32)},
            )
            writer.add(record)
            recs.append(record)
    return recs


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def poke(path: Path, dtype: str, offset_items: int, value: float) -> None:
    """Overwrite one item of a raw little-endian file in place (what a bad write or a flipped bit does)."""
    data = np.fromfile(path, dtype=dtype)
    data[offset_items] = value
    data.tofile(path)


def first_non_finite(store: FeatureStore, ids: list[int]) -> tuple[str, int] | None:
    """The reference: records read one by one, files in the order verify checks them."""
    checks = [
        ("features.bin", lambda r: r.features),
        ("boxes.bin", lambda r: r.boxes),
        ("object_conf.bin", lambda r: r.object_conf),
        ("extra.emb.bin", lambda r: r.extras["emb"]),
    ]
    for name, field in checks:
        for meme_id in ids:
            if not np.isfinite(field(store[meme_id])).all():
                return name, meme_id
    return None


@pytest.mark.parametrize("seed", range(6))
def test_verify_names_the_same_meme_as_reading_every_record(tmp_path: Path, seed: int) -> None:
    store_dir = tmp_path / "s"
    small_store(store_dir, seed=seed)
    rng = np.random.default_rng(100 + seed)
    rows = FeatureStore.open(store_dir).box_counts().sum()
    targets = [("features.bin", "<f2", rows * DIM), ("boxes.bin", "<f4", rows * 4)]
    targets += [("object_conf.bin", "<f4", rows), ("extra.emb.bin", "<f4", 9 * 3)]
    for _ in range(2):
        name, dtype, size = targets[int(rng.integers(len(targets)))]
        poke(
            store_dir / name, dtype, int(rng.integers(size)), [np.nan, np.inf, -np.inf][int(rng.integers(3))]
        )
    store = FeatureStore.open(store_dir)  # sizes are intact: opening does not read values
    for ids in (store.ids(), store.ids()[::2], store.ids()[5:]):
        expected = first_non_finite(store, ids)
        for chunk_rows in (1, 3, 1000):
            if expected is None:
                store.verify(ids, chunk_rows=chunk_rows)
                continue
            with pytest.raises(FeatureStoreError) as error:
                store.verify(ids, chunk_rows=chunk_rows)
            name, meme_id = expected
            assert str(error.value) == (
                f"{store_dir / name}: meme id {meme_id} holds NaN or inf; "
                "the store is corrupt (re-extract it, or re-import it, into a new folder)"
            )


def test_features_info_verify_names_the_store_and_meme(tmp_path: Path, capsys) -> None:
    store_dir = tmp_path / "s"
    recs = small_store(store_dir)
    with pytest.raises(SystemExit) as exit_info:
        main(["features", "info", "--verify", str(store_dir)])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip().endswith("verified: every value of the 9 images is finite")
    third_row = sum(len(r.features) for r in recs[:3])  # the first row of the 4th meme (id 103)
    poke(store_dir / "features.bin", "<f2", third_row * DIM + 1, np.nan)
    before = snapshot(store_dir)
    with pytest.raises(SystemExit) as exit_info:  # without --verify, only sizes are checked (cheap)
        main(["features", "info", str(store_dir)])
    assert exit_info.value.code == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["features", "info", "--verify", str(store_dir)])
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.strip() == (
        f"error: {store_dir / 'features.bin'}: meme id 103 holds NaN or inf; "
        "the store is corrupt (re-extract it, or re-import it, into a new folder)"
    )
    assert snapshot(store_dir) == before


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (
            lambda m: m["store"].update(num_rows="lots"),
            "store.num_rows: Input should be a valid integer",
        ),
        (lambda m: m["store"].update(files=[1, 2]), "store.files: Input should be a valid dictionary"),
        (
            lambda m: m["store"].update(num_images=-1),
            "store.num_images: Input should be greater than or equal to 0",
        ),
        (
            lambda m: m["store"].update(extras={"emb": "3"}),
            "store.extras.emb: Input should be a valid integer",
        ),
        (lambda m: m.pop("store"), "store: Field required"),
        (lambda m: m["store"].pop("feature_dim"), "store.feature_dim: Field required"),
    ],
)
def test_mistyped_meta_json_is_one_line_naming_the_file(tmp_path: Path, capsys, edit, problem) -> None:
    store_dir = tmp_path / "s"
    small_store(store_dir)
    meta_path = store_dir / "meta.json"
    meta = json.loads(meta_path.read_text())
    edit(meta)
    meta_path.write_text(json.dumps(meta))
    before = snapshot(store_dir)
    with pytest.raises(SystemExit):
        main(["features", "info", str(store_dir)])
    err = capsys.readouterr().err
    assert err.startswith(f"error: {meta_path}: invalid StoreMeta: {problem}") and err.count("\n") == 1
    assert snapshot(store_dir) == before


def test_mistyped_layout_json_stops_a_resumed_writer(tmp_path: Path) -> None:
    store_dir = tmp_path / "s"
    small_store(store_dir)
    layout_path = store_dir / "layout.json"
    layout = json.loads(layout_path.read_text())
    layout_path.write_text(json.dumps({**layout, "fields": "object_conf"}))
    before = snapshot(store_dir)
    with pytest.raises(FeatureStoreError) as error:
        FeatureStoreWriter(store_dir, DIM)
    assert str(error.value) == f"{layout_path}: invalid StoreLayout: fields: Input should be a valid list"
    layout_path.write_text(json.dumps({**layout, "extras": {"../x": 3}}))
    with pytest.raises(FeatureStoreError, match=r"bad extra vector '\.\./x'"):
        FeatureStoreWriter(store_dir, DIM)
    layout_path.write_text("{not json")
    with pytest.raises(FeatureStoreError) as error:
        FeatureStoreWriter(store_dir, DIM)
    assert (
        str(error.value)
        == f"{layout_path}: corrupt JSON (Expecting property name enclosed in double quotes at line 1)"
    )
    del before["layout.json"]
    assert {k: v for k, v in snapshot(store_dir).items() if k != "layout.json"} == before
