"""Issue #11 attacks on ``memeguard ensemble``: each bad CSV is one line naming that file (never the file
beside it), the inputs are left as they were and no output folder is made."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from memeguard.cli import main


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _run_ensemble(folder, capsys: pytest.CaptureFixture[str]) -> str:
    before = _snapshot(folder.root)
    with pytest.raises(SystemExit) as exit_info:
        main(
            ["ensemble", str(folder.pred_dir), "--gt", str(folder.gt_path), "--out", str(folder.root / "out")]
        )
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert _snapshot(folder.root) == before and not (folder.root / "out").exists()
    return err.removeprefix("error: ").rstrip("\n")


def _two_models(make_folder: Callable[..., object]):
    folder = make_folder()
    folder.noisy("A", 3.0)
    folder.noisy("B", 2.0)
    return folder


@pytest.mark.parametrize("bom", ["utf-16", "utf-16-be"])
def test_a_utf16_csv_is_named(make_folder, capsys: pytest.CaptureFixture[str], bom: str) -> None:
    folder = _two_models(make_folder)
    path = folder.pred_dir / "B_dev_seen.csv"
    text = path.read_text(encoding="utf-8")
    path.write_bytes(("\ufeff" if bom == "utf-16-be" else "").encode(bom) + text.encode(bom))
    assert path.read_bytes()[:2] in (b"\xff\xfe", b"\xfe\xff")
    assert _run_ensemble(folder, capsys) == f"{path}: UTF-16 text; save it as UTF-8"


def test_other_non_utf8_bytes_are_one_line(make_folder, capsys: pytest.CaptureFixture[str]) -> None:
    folder = _two_models(make_folder)
    path = folder.pred_dir / "A_test_seen.csv"
    path.write_bytes(path.read_bytes() + b"\xe9\n")
    assert _run_ensemble(folder, capsys).startswith(f"{path}: not UTF-8 text")


def test_a_utf8_bom_is_read_as_nothing(make_folder, capsys: pytest.CaptureFixture[str]) -> None:
    from memeguard.data.predictions import read_predictions

    folder = _two_models(make_folder)
    path = folder.pred_dir / "A_dev_seen.csv"
    plain = read_predictions(path)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    with_bom = read_predictions(path)
    assert with_bom.ids.tolist() == plain.ids.tolist() and with_bom.proba.tolist() == plain.proba.tolist()


@pytest.mark.parametrize("empty", ["A", "B"])
def test_a_header_only_csv_is_blamed_itself(
    make_folder, capsys: pytest.CaptureFixture[str], empty: str
) -> None:
    folder = _two_models(make_folder)
    path = folder.pred_dir / f"{empty}_dev_seen.csv"
    path.write_text("id,proba,label\n", encoding="utf-8")
    assert _run_ensemble(folder, capsys) == f"{path}: no prediction rows (only a header)"


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ("99999999999999999999,0.5,1", "id '99999999999999999999' is outside the 64-bit integer range"),
        ("1,0.5,1\x00", "cannot parse ['1', '0.5', '1\\x00']"),
        ('1,"' + "x" * 200_000 + '",1', "not a readable CSV line (field larger than field limit (131072))"),
    ],
)
def test_rows_that_used_to_escape_as_tracebacks(
    make_folder, capsys: pytest.CaptureFixture[str], row: str, expected: str
) -> None:
    folder = _two_models(make_folder)
    path = folder.pred_dir / "A_dev_seen.csv"
    lines = path.read_text(encoding="utf-8").splitlines()
    path.write_text("\n".join([lines[0], row, *lines[1:]]) + "\n", encoding="utf-8")
    assert _run_ensemble(folder, capsys) == f"{path}:2: {expected}"


def test_a_families_file_that_is_not_utf8_is_one_line(
    make_folder, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _two_models(make_folder)
    families = folder.root / "families.json"
    families.write_bytes('{"F": ["A", "B"]}'.encode("utf-16"))
    with pytest.raises(SystemExit) as exit_info:
        main(
            ["ensemble", str(folder.pred_dir), "--gt", str(folder.gt_path), "--out", str(folder.root / "out")]
            + ["--families", str(families)]
        )
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {families}: cannot read families ('utf-8' codec can't decode")
    assert err.count("\n") == 1 and not (folder.root / "out").exists()
