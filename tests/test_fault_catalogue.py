"""The fault-injection catalogue (benchmarks/fault_injection.py): its judges and a fast subset of its rows.

The whole catalogue takes minutes; here only its verdict logic is checked against hand-made outcomes, and
a few ensemble rows (which need no training) run for real against the current code.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "fault_injection.py"


@pytest.fixture(scope="module")
def catalogue():
    spec = importlib.util.spec_from_file_location("fault_injection", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["fault_injection"] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("fault_injection", None)


def test_the_catalogue_covers_the_issue_with_distinct_rows(catalogue) -> None:
    rows = catalogue.ROWS
    assert len(rows) >= 83
    assert len({(r.area, r.input) for r in rows}) == len(rows)
    assert {"data", "features", "pickle", "checkpoint", "train", "predict", "ensemble", "recipe"} <= {
        r.area for r in rows
    }


def test_a_refusal_passes_only_as_one_matching_line_without_traceback(catalogue) -> None:
    proc = catalogue.Proc
    good = proc(1, "", "error: data/train.jsonl:3: malformed JSON\n", 0.1)
    assert catalogue.refused(good, r"train\.jsonl:\d+").passed
    assert not catalogue.refused(good, r"dev_seen\.jsonl").passed  # names another culprit
    assert not catalogue.refused(proc(0, "", "", 0.1), r".").passed  # accepted the bad input
    two = proc(1, "", "error: a.csv: bad\nsecond line\n", 0.1)
    assert catalogue.error_problems(two, r"a\.csv") == ["2 stderr lines"]
    trace = proc(1, "", "Traceback (most recent call last):\nValueError: x\n", 0.1)
    assert "traceback" in catalogue.error_problems(trace, r".")
    typo = proc(1, "", "error: f.json: corrupt (x at at line 1)\n", 0.1)
    assert catalogue.error_problems(typo, r"f\.json", forbid=r"at at") == ["has /at at/"]
    many = proc(1, "", "error: t.jsonl:1: a\nerror: t.jsonl:2: b\n", 0.1)
    assert catalogue.refused(many, r"t\.jsonl:2", many=True).passed


def test_changes_outside_the_targets_are_found(catalogue, tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "input.csv").write_text("id\n")
    before = catalogue.snapshot(tmp_path)
    (tmp_path / "out" / "result.csv").write_text("ok\n")
    (tmp_path / "input.csv").write_text("id\n1\n")
    (tmp_path / "escaped").mkdir()
    after = catalogue.snapshot(tmp_path)
    assert catalogue.changes_outside(before, after, ["out"]) == ["escaped", "input.csv"]
    assert catalogue.changes_outside(before, after, ["out", "input.csv", "escaped"]) == []


@pytest.mark.parametrize(
    "input_text",
    ["prediction CSV: proba nan", "good prediction folder"],
)
def test_ensemble_rows_hold_against_the_current_code(catalogue, tmp_path: Path, input_text: str) -> None:
    (entry,) = [r for r in catalogue.ROWS if r.input == input_text]
    base = catalogue.Base(tmp_path / "base")
    base.root.mkdir()
    base.clean.mkdir()
    for split, ids in {"dev_seen": [1, 2, 3, 4], "test_seen": [5, 6], "test_unseen": [7, 8, 9]}.items():
        lines = [f'{{"id": {i}, "img": "img/{i}.png", "text": "t", "label": {i % 2}}}' for i in ids]
        (base.clean / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    catalogue.write_prediction_folder(base.preds, base.clean)
    result = catalogue.run_row(entry, 1, base, tmp_path / "rows")
    assert result.verdict == "PASS", result.actual
