"""Seed averaging in the pipeline (the ensemble's), stage keys, overrides in parallel workers, the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from grid_recipes import grid_recipe, model_entry, write_recipe
from typer.testing import CliRunner

from memeguard import __version__
from memeguard.cli import app, main
from memeguard.data.predictions import read_predictions, write_predictions
from memeguard.pipeline import runner as runner_module
from memeguard.pipeline.recipe import load_recipe
from memeguard.pipeline.runner import RecipeRunner
from memeguard.pipeline.stages import average_seeds

RECIPE = grid_recipe("small", [model_entry("V", "visualbert-tiny", "[1, 2]")])


def test_average_seeds_is_the_mean_by_id_in_the_first_runs_order(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    ids = np.arange(100, 140)
    runs = {name: rng.uniform(0, 1, len(ids)) for name in ("a", "b", "c")}
    files: dict[str, dict[str, Path]] = {}
    for k, (name, proba) in enumerate(runs.items()):
        order = rng.permutation(len(ids)) if k else np.arange(len(ids))  # later runs list the ids shuffled
        write_predictions(tmp_path / f"{name}.csv", ids[order], proba[order])
        files[name] = {"dev_seen": tmp_path / f"{name}.csv"}
    written = average_seeds({"F": files, "G": {"a": files["a"]}}, tmp_path / "out")
    assert written == {
        "F": {"dev_seen": tmp_path / "out" / "F_dev_seen.csv"},
        "G": {"dev_seen": tmp_path / "out" / "G_dev_seen.csv"},
    }
    # The reference: runs summed in order (a + b) + c, then divided, written by the project's CSV writer.
    write_predictions(tmp_path / "expected.csv", ids, (runs["a"] + runs["b"] + runs["c"]) / 3)
    assert written["F"]["dev_seen"].read_bytes() == (tmp_path / "expected.csv").read_bytes()
    assert written["G"]["dev_seen"].read_bytes() == (tmp_path / "a.csv").read_bytes()
    assert read_predictions(written["F"]["dev_seen"]).ids.tolist() == ids.tolist()


def _runner(tmp_path: Path, overrides: tuple[str, ...] = ()) -> RecipeRunner:
    path = write_recipe(tmp_path, RECIPE)
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    runner = RecipeRunner(load_recipe(path, overrides=overrides), data, tmp_path / "out")
    runner.build()
    return runner


def test_stage_keys_change_with_the_package_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = {(s.kind, s.label): s.key for s in _runner(tmp_path).stages}
    monkeypatch.setattr(runner_module, "__version__", __version__ + ".post1")
    after = {(s.kind, s.label): s.key for s in _runner(tmp_path).stages}
    assert before.keys() == after.keys()
    assert all(before[name] != after[name] for name in before)


def test_overrides_reach_the_parallel_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker rebuilds the recipe from the file: without the overrides it would not find the stage's key."""
    runner = _runner(tmp_path, ("models.V.train.epochs=2",))
    plain = {s.key for s in _runner(tmp_path).stages}
    stage = next(s for s in runner.stages if s.kind == "finetune")
    assert stage.key not in plain
    ran: list[str] = []
    monkeypatch.setattr(runner_module, "run_stage", lambda s: ran.append(s.key) or 0.0)
    monkeypatch.setenv("MEMEGUARD_NO_PROGRESS", "0")  # restored after the test; the worker sets it
    spec = {
        "recipe": runner.recipe.source,
        "overrides": runner.recipe.command_line,
        "data": str(runner.data_dir),
        "out": str(runner.out_dir),
        "inference_only": False,
        "device": "cpu",
        "limit": None,
        "threads": 1,
    }
    import torch

    threads = torch.get_num_threads()
    try:
        runner_module._run_stage_in_child(spec, stage.key)
    finally:
        torch.set_num_threads(threads)
    assert ran == [stage.key]


def test_version_and_run_overrides_on_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cli = CliRunner(env={"COLUMNS": "200"})
    shown = cli.invoke(app, ["--version"])
    assert shown.exit_code == 0 and shown.output == f"memeguard {__version__}\n"
    assert "clip, demo, vilio, vilio_clip, vilio_inference" in cli.invoke(app, ["run", "--help"]).output
    (tmp_path / "data").mkdir()
    (tmp_path / "small.yaml").write_text(RECIPE)
    common = ["--data", str(tmp_path / "data"), "--out", str(tmp_path / "out")]
    for override, message in (
        ("models.V.train.epochs", "command line: 'models.V.train.epochs': an override is key.path=value"),
        ("models.V.seeds=one", "overridden from the command line by models.V.seeds=one: models.0.seeds: "),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(["run", str(tmp_path / "small.yaml"), override, *common])
        assert exit_info.value.code == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()
