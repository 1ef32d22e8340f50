"""Readable ensemble method names, and vilio's spellings (and 0.1's ``opt``) wherever one is named."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from memeguard.cli import app
from memeguard.ensemble import METHOD_ALIASES, METHODS, canonical_method
from memeguard.ensemble.folder import ensemble_folder
from memeguard.errors import ConfigError


def test_every_alias_names_a_method_and_every_name_is_its_own_canonical_form() -> None:
    assert METHODS == ("loop", "mean", "power", "rank", "simplex", "coordinate")
    assert {canonical_method(old) for old in ("sa", "pa", "ra", "sx", "opt")} == set(METHODS) - {"loop"}
    assert all(canonical_method(name) == name for name in METHODS)
    assert set(METHOD_ALIASES.values()) <= set(METHODS)


def test_an_unknown_method_is_one_line_that_lists_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"unknown ensemble method 'avg'; choose from loop, mean, .*sa=mea"):
        canonical_method("avg")


@pytest.mark.parametrize(
    ("new", "old"),
    [("mean", "sa"), ("power", "pa"), ("rank", "ra"), ("simplex", "sx"), ("coordinate", "opt")],
)
def test_a_readable_name_and_its_alias_write_the_same_bytes(make_folder, new: str, old: str) -> None:
    folder = make_folder(seed=4)
    folder.noisy("A__1", 2.0)
    folder.noisy("A__2", 1.0)
    folder.noisy("B", 1.5)
    by_new = ensemble_folder(folder.pred_dir, folder.gt_path, folder.root / new, method=new)
    by_old = ensemble_folder(folder.pred_dir, folder.gt_path, folder.root / old, method=old)
    assert by_new.method == by_old.method == new
    for split, path in by_new.files.items():
        assert path.read_bytes() == by_old.files[split].read_bytes()
    assert by_new.weights_path.read_bytes() == by_old.weights_path.read_bytes()
    record = json.loads(by_new.weights_path.read_text())
    assert record["method"] == new
    assert record["final"]["blend"] == {"mean": "SA", "power": "PA", "rank": "RA"}.get(new, "SX")
    assert record["optimizer"] == {"simplex": "simplex", "coordinate": "coordinate"}.get(new)


def test_the_cli_takes_an_alias_lists_the_readable_names_and_rejects_others(make_folder) -> None:
    folder = make_folder()
    folder.noisy("A", 2.0)
    folder.noisy("B", 1.0)
    runner = CliRunner(env={"COLUMNS": "200"})  # rich wraps help and errors at the terminal width
    base = ["ensemble", str(folder.pred_dir), "--gt", str(folder.gt_path)]
    by_alias = runner.invoke(app, [*base, "--out", str(folder.root / "ra"), "--method", "ra"])
    by_name = runner.invoke(app, [*base, "--out", str(folder.root / "rank"), "--method", "rank"])
    assert by_alias.exit_code == by_name.exit_code == 0, by_alias.output
    assert "rank: dev AUROC" in by_alias.output
    for split in ("dev_seen", "test_seen", "test_unseen"):
        name = f"FIN_{split}.csv"
        assert (folder.root / "ra" / name).read_bytes() == (folder.root / "rank" / name).read_bytes()
    bad = runner.invoke(app, [*base, "--out", str(folder.root / "bad"), "--method", "median"])
    assert bad.exit_code == 2 and "'median' is not one of loop, mean, power, rank" in bad.output
    assert not (folder.root / "bad").exists()
    shown = runner.invoke(app, ["ensemble", "--help"]).output
    for choices in (
        "[loop|mean|power|rank|simplex|coordinate]",
        "[simplex|coordinate]",
        "[prior|rate|threshold]",
    ):
        assert choices in shown
