"""Atomic writes: an interrupted write leaves the previous file intact and no temporary behind."""

from pathlib import Path

import pytest

from memeguard.io import atomic_write, write_json_atomic


def test_interrupted_write_keeps_old_content(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    write_json_atomic(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_write(target) as handle:
            handle.write('{"v": 2, "half')
            raise RuntimeError("killed mid-write")
    assert target.read_text().strip() == '{\n  "v": 1\n}'
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_new_file_appears_only_when_complete(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "new.txt"
    with atomic_write(target) as handle:
        handle.write("partial")
        assert not target.exists()
    assert target.read_text() == "partial"
