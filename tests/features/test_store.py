"""FeatureStore / FeatureStoreWriter: round trip, resume after a kill, refusal of broken stores."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from memeguard.errors import FeatureStoreError
from memeguard.features.record import RegionRecord
from memeguard.features.store import FeatureStore, FeatureStoreWriter

DIM = 16


def make_record(meme_id: int, n: int, rng: np.random.Generator, extras: bool = True) -> RegionRecord:
    height, width = int(rng.integers(100, 900)), int(rng.integers(100, 900))
    x1 = rng.uniform(0, width / 2, n)
    y1 = rng.uniform(0, height / 2, n)
    boxes = np.stack([x1, y1, x1 + rng.uniform(1, width / 2, n), y1 + rng.uniform(1, height / 2, n)], axis=1)
    return RegionRecord(
        meme_id=meme_id,
        features=rng.normal(0, 3, (n, DIM)).astype(np.float32),
        boxes=boxes.astype(np.float32),
        image_size=(height, width),
        object_ids=rng.integers(0, 1600, n),
        object_conf=rng.uniform(0, 1, n).astype(np.float32),
        attr_ids=rng.integers(0, 400, n),
        attr_conf=rng.uniform(0, 1, n).astype(np.float32),
        extras={"image_embeds": rng.normal(size=8).astype(np.float32)} if extras else {},
    )


def records(count: int, seed: int = 0) -> list[RegionRecord]:
    rng = np.random.default_rng(seed)
    return [make_record(1000 + 7 * i, int(rng.integers(10, 101)), rng) for i in range(count)]


def write_store(path: Path, recs: list[RegionRecord], dtype: str = "float16") -> FeatureStore:
    with FeatureStoreWriter(
        path, DIM, dtype=dtype, meta={"extractor": "test", "weights_sha256": "abc"}
    ) as writer:
        for record in recs:
            assert writer.add(record) is True
    return FeatureStore.open(path)


def assert_same(got: RegionRecord, want: RegionRecord, feature_dtype: str = "float32") -> None:
    assert got.meme_id == want.meme_id
    assert got.features.dtype == np.float32
    np.testing.assert_array_equal(got.features, want.features.astype(feature_dtype).astype(np.float32))
    np.testing.assert_array_equal(got.boxes, want.boxes)
    assert got.image_size == want.image_size
    for field in ("object_ids", "object_conf", "attr_ids", "attr_conf"):
        np.testing.assert_array_equal(getattr(got, field), getattr(want, field))
    assert got.object_ids.dtype == np.int64
    assert set(got.extras) == set(want.extras)
    for name, value in want.extras.items():
        np.testing.assert_array_equal(got.extras[name], value)


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_round_trip_variable_box_counts(tmp_path: Path, dtype: str) -> None:
    recs = records(12)
    store = write_store(tmp_path / "s", recs, dtype)
    assert len(store) == 12 and store.feature_dim == DIM and store.dtype == dtype
    assert store.ids() == [r.meme_id for r in recs]
    assert store.meta["extractor"] == "test" and store.meta["weights_sha256"] == "abc"
    assert "created" in store.meta and store.meta["store"]["num_images"] == 12
    np.testing.assert_array_equal(store.box_counts(), [r.num_boxes for r in recs])
    assert store.fields == ["object_ids", "object_conf", "attr_ids", "attr_conf"]
    assert store.extras == {"image_embeds": 8}
    for want in reversed(recs):  # random access, not just sequential
        assert want.meme_id in store
        assert_same(store[want.meme_id], want, dtype)
        assert store.num_boxes(want.meme_id) == want.num_boxes
        assert store.image_size(want.meme_id) == want.image_size
    assert [r.meme_id for r in store] == store.ids()
    batches = list(store.batches(batch_size=5))
    assert [len(b) for b in batches] == [5, 5, 2]
    assert 999 not in store and "x" not in store
    with pytest.raises(KeyError, match="999"):
        store[999]
    # Rows are concatenated, not padded: the file holds exactly sum(n_i) rows.
    itemsize = np.dtype(dtype).itemsize
    total_rows = sum(r.num_boxes for r in recs)
    assert (tmp_path / "s" / "features.bin").stat().st_size == total_rows * DIM * itemsize
    assert isinstance(store._arrays["features.bin"], np.memmap)


def test_pickled_store_reopens_by_path_instead_of_copying_data(tmp_path: Path) -> None:
    import pickle

    recs = records(3)
    store = write_store(tmp_path / "s", recs)
    payload = pickle.dumps(store)
    assert len(payload) < 1000  # the path, not the arrays
    clone = pickle.loads(payload)
    assert clone.ids() == store.ids()
    assert_same(clone[recs[2].meme_id], recs[2], "float16")


def test_store_without_optional_fields_reads_none(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    rec = RegionRecord(
        5, rng.normal(size=(3, DIM)).astype(np.float32), np.zeros((3, 4), np.float32), (10, 20)
    )
    store = write_store(tmp_path / "s", [rec], "float32")
    got = store[5]
    assert got.object_ids is None and got.attr_conf is None and got.extras == {}
    np.testing.assert_array_equal(got.features, rec.features)


def test_add_skips_existing_ids_and_resume_after_finalise(tmp_path: Path) -> None:
    recs = records(6)
    write_store(tmp_path / "s", recs[:4])
    writer = FeatureStoreWriter(tmp_path / "s", meta={"extractor": "test"})  # feature dim from the store
    assert len(writer) == 4 and recs[0].meme_id in writer
    assert writer.add(recs[0]) is False
    # Re-opening a finalised store does not unfinalise it until something new is added.
    assert FeatureStore.open(tmp_path / "s") is not None
    assert writer.add(recs[4]) is True and writer.add(recs[5]) is True
    with pytest.raises(FeatureStoreError, match="never finalised"):
        FeatureStore.open(tmp_path / "s")
    writer.finalize()
    store = FeatureStore.open(tmp_path / "s")
    assert store.ids() == [r.meme_id for r in recs]
    for want in recs:
        assert_same(store[want.meme_id], want, "float16")


def test_interrupted_write_with_partial_tail_recovers(tmp_path: Path) -> None:
    path = tmp_path / "s"
    recs = records(5)
    writer = FeatureStoreWriter(path, DIM)
    for record in recs[:3]:
        writer.add(record)
    writer.close()  # "killed": never finalised
    # A kill in the middle of the next record leaves partial data and a partial index entry.
    with open(path / "features.bin", "ab") as handle:
        handle.write(b"\x01" * 100)
    with open(path / "index.bin", "ab") as handle:
        handle.write(b"\x02" * 13)
    with pytest.raises(FeatureStoreError, match="never finalised"):
        FeatureStore.open(path)
    writer = FeatureStoreWriter(path, DIM)
    assert len(writer) == 3
    added = [writer.add(record) for record in recs]
    assert added == [False, False, False, True, True]
    writer.finalize()
    store = FeatureStore.open(path)
    assert store.ids() == [r.meme_id for r in recs]
    for want in recs:
        assert_same(store[want.meme_id], want, "float16")


def test_index_entry_without_its_data_is_dropped(tmp_path: Path) -> None:
    """If the index got ahead of the data (OS crash), the entry is discarded, not trusted."""
    path = tmp_path / "s"
    recs = records(3)
    writer = FeatureStoreWriter(path, DIM)
    for record in recs:
        writer.add(record)
    writer.close()
    size = (path / "boxes.bin").stat().st_size
    os.truncate(path / "boxes.bin", size - 4)
    writer = FeatureStoreWriter(path, DIM)
    assert writer.ids() == [recs[0].meme_id, recs[1].meme_id]
    writer.add(recs[2])
    writer.finalize()
    assert_same(FeatureStore.open(path)[recs[2].meme_id], recs[2], "float16")


KILL_SCRIPT = textwrap.dedent(
    """
    import sys, numpy as np
    from memeguard.features.record import RegionRecord
    from memeguard.features.store import FeatureStoreWriter
    writer = FeatureStoreWriter(sys.argv[1], 32)
    rng = np.random.default_rng(0)
    for i in range(100000):
        n = 10 + i % 50
        writer.add(RegionRecord(i, rng.normal(size=(n, 32)).astype(np.float32),
                                np.ones((n, 4), np.float32), (100, 200)))
        print(i, flush=True)
    """
)


def test_sigkill_during_writing_resumes_without_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "s"
    child = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    for line in child.stdout:
        if int(line) >= 20:
            break
    child.send_signal(signal.SIGKILL)
    child.wait()
    writer = FeatureStoreWriter(path, 32)
    done = len(writer)
    assert done >= 21 and writer.ids() == list(range(done))
    rng = np.random.default_rng(0)
    expected = {}
    for i in range(done + 5):  # replay the same stream: the stored prefix is skipped
        n = 10 + i % 50
        rec = RegionRecord(
            i, rng.normal(size=(n, 32)).astype(np.float32), np.ones((n, 4), np.float32), (100, 200)
        )
        expected[i] = rec
        assert writer.add(rec) is (i >= done)
    writer.finalize()
    store = FeatureStore.open(path)
    assert store.ids() == list(range(done + 5))
    for i in (0, done - 1, done, done + 4):
        np.testing.assert_array_equal(
            store[i].features, expected[i].features.astype(np.float16).astype(np.float32)
        )


def test_truncated_store_fails_clearly(tmp_path: Path) -> None:
    write_store(tmp_path / "s", records(4))
    features = tmp_path / "s" / "features.bin"
    os.truncate(features, features.stat().st_size - 10)
    with pytest.raises(FeatureStoreError, match=r"features\.bin: truncated"):
        FeatureStore.open(tmp_path / "s")


def test_missing_file_and_corrupt_meta_fail_clearly(tmp_path: Path) -> None:
    write_store(tmp_path / "a", records(2))
    (tmp_path / "a" / "attr_conf.bin").unlink()
    with pytest.raises(FeatureStoreError, match=r"attr_conf\.bin.*missing"):
        FeatureStore.open(tmp_path / "a")
    write_store(tmp_path / "b", records(2))
    (tmp_path / "b" / "meta.json").write_text('{"store": ')
    with pytest.raises(FeatureStoreError, match="corrupt JSON"):
        FeatureStore.open(tmp_path / "b")
    with pytest.raises(FeatureStoreError, match="not found"):
        FeatureStore.open(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FeatureStoreError, match="not a feature store"):
        FeatureStore.open(tmp_path / "empty")


def test_inconsistent_index_fails_clearly(tmp_path: Path) -> None:
    recs = records(3)
    recs[1].meme_id = recs[0].meme_id + 1
    write_store(tmp_path / "s", recs)
    index = np.fromfile(tmp_path / "s" / "index.bin", dtype="<i8").reshape(-1, 5)
    index[1, 0] = index[0, 0]  # the same id twice
    index.tofile(tmp_path / "s" / "index.bin")
    with pytest.raises(FeatureStoreError, match=f"meme id {recs[0].meme_id} is stored more than once"):
        FeatureStore.open(tmp_path / "s")
    index[1, 0] = 77
    index[1, 1] += 1  # offsets no longer follow the counts
    index.tofile(tmp_path / "s" / "index.bin")
    with pytest.raises(FeatureStoreError, match="row offsets"):
        FeatureStore.open(tmp_path / "s")
    meta = json.loads((tmp_path / "s" / "meta.json").read_text())
    meta["store"]["num_images"] = 4
    (tmp_path / "s" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(FeatureStoreError, match="inconsistent"):
        FeatureStore.open(tmp_path / "s")


def test_bad_records_are_refused_with_the_meme_id(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    writer = FeatureStoreWriter(tmp_path / "s", DIM)
    writer.add(make_record(1, 10, rng))
    with pytest.raises(FeatureStoreError, match="meme id 2: features have shape"):
        writer.add(RegionRecord(2, np.zeros((3, DIM + 1), np.float32), np.zeros((3, 4), np.float32), (5, 5)))
    big = make_record(3, 4, rng)
    big.features[0, 0] = 1e6
    with pytest.raises(FeatureStoreError, match="meme id 3: feature values overflow float16"):
        writer.add(big)
    lacking = make_record(4, 4, rng)
    lacking.attr_ids = None
    with pytest.raises(FeatureStoreError, match="meme id 4: record lacks attr_ids"):
        writer.add(lacking)
    with pytest.raises(FeatureStoreError, match="meme id 5: extras"):
        writer.add(make_record(5, 4, rng, extras=False))
    writer.finalize()
    assert FeatureStore.open(tmp_path / "s").ids() == [1]  # refused records left no trace


def test_writer_refuses_foreign_dir_other_writer_and_mismatched_layout(tmp_path: Path) -> None:
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(FeatureStoreError, match="not a feature store"):
        FeatureStoreWriter(tmp_path / "busy", DIM)
    first = FeatureStoreWriter(tmp_path / "s", DIM)
    with pytest.raises(FeatureStoreError, match="another process"):
        FeatureStoreWriter(tmp_path / "s", DIM)
    first.add(records(1)[0])
    first.close()
    with pytest.raises(FeatureStoreError, match="feature dim 16"):
        FeatureStoreWriter(tmp_path / "s", DIM * 2)
    with pytest.raises(FeatureStoreError, match="float16"):
        FeatureStoreWriter(tmp_path / "s", DIM, dtype="float32")


def test_a_refused_foreign_folder_is_left_exactly_as_it_was(tmp_path: Path) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(FeatureStoreError, match="is not empty and is not a feature store"):
        FeatureStoreWriter(folder, DIM)
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]  # no .lock left behind


HOLD_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from memeguard.features.store import FeatureStoreWriter
    writer = FeatureStoreWriter(sys.argv[1], 16)
    print("holding", flush=True)
    time.sleep(60)
    """
)


def test_a_writer_in_another_process_is_refused_and_its_death_frees_the_store(tmp_path: Path) -> None:
    path = tmp_path / "s"
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD_SCRIPT, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "holding"
        with pytest.raises(FeatureStoreError, match="being written by another process"):
            FeatureStoreWriter(path, DIM)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    # The OS dropped the dead writer's lock: no stale lock file blocks the next run.
    with FeatureStoreWriter(path, DIM) as writer:
        writer.add(records(1)[0])
    assert len(FeatureStore.open(path)) == 1
