"""Disk full during extraction (issue #11): one line that says what was kept and how to resume; the
same command then completes a store identical to one written without the interruption."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from memeguard.errors import FeatureStoreError
from memeguard.features.extract import extract_features
from memeguard.features.grid import GridExtractor
from memeguard.features.store import FeatureStore, FeatureStoreWriter


class _FullDisk:
    """A file handle that accepts ``budget[0]`` more bytes, writes part of the next write, then ENOSPC."""

    def __init__(self, handle: Any, budget: list[int]) -> None:
        self._handle, self._budget = handle, budget

    def write(self, data: bytes) -> int:
        if len(data) > self._budget[0]:
            self._handle.write(data[: self._budget[0]])
            self._budget[0] = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self._budget[0] -= len(data)
        return self._handle.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_disk_full_is_one_line_and_the_same_command_resumes(
    hm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "grid"
    extract_features(hm_dir, tmp_path / "clean", GridExtractor(levels=(2,)), batch_size=2, progress=False)
    written = sum(p.stat().st_size for p in (tmp_path / "clean").glob("*.bin"))
    budget = [written // 2 + 7]  # the disk fills in the middle of a record
    original = FeatureStoreWriter._handle
    monkeypatch.setattr(
        FeatureStoreWriter, "_handle", lambda self, name: _FullDisk(original(self, name), budget)
    )
    dataset_before = _tree(hm_dir)
    with pytest.raises(FeatureStoreError) as info:
        extract_features(hm_dir, out, GridExtractor(levels=(2,)), batch_size=2, progress=False)
    reopened = FeatureStoreWriter(out)  # reopening recovers the torn write, as after a kill
    kept = len(reopened.ids())
    reopened.close()
    assert 0 < kept < 7
    assert str(info.value) == (
        f"disk full while writing {out}; the {kept} memes written are kept; "
        "free space and rerun the same command to resume"
    )
    assert _tree(hm_dir) == dataset_before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clean", "grid", "hm"]

    monkeypatch.setattr(FeatureStoreWriter, "_handle", original)
    extract_features(hm_dir, out, GridExtractor(levels=(2,)), batch_size=2, progress=False)
    resumed, clean = FeatureStore.open(out), FeatureStore.open(tmp_path / "clean")
    assert sorted(resumed.ids()) == sorted(clean.ids()) == list(range(100, 107))
    for meme_id in clean.ids():
        np.testing.assert_array_equal(resumed[meme_id].features, clean[meme_id].features)
        np.testing.assert_array_equal(resumed[meme_id].boxes, clean[meme_id].boxes)


def test_other_os_errors_are_not_disguised(
    hm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: FeatureStoreWriter, name: str) -> Any:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(FeatureStoreWriter, "_handle", broken)
    with pytest.raises(OSError, match="Input/output error"):
        extract_features(hm_dir, tmp_path / "grid", GridExtractor(levels=(2,)), progress=False)
