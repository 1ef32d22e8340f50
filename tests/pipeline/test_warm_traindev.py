"""``traindev_init: train``: a recipe model's traindev run starts from its train run's final weights (issue
14), keyed and cached by it, resumable; the default (vilio's from-scratch run b) is unchanged."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from grid_recipes import grid_recipe, model_entry, write_recipe

from memeguard.errors import ConfigError
from memeguard.pipeline.recipe import load_recipe
from memeguard.pipeline.runner import RecipeRunner, Stage, run_stage
from memeguard.training import run as run_module

BASE = "lr: 0.001, epochs: 1, batch_size: 16, sum_loss: false, eval_every: 0"
LIMIT = 48  # memes of every split a run reads: 3 updates an epoch
TINY_LR = 1e-12  # a traindev run at this lr ends where it started: its weights show where that was


def recipe_text(train: str) -> str:
    return grid_recipe("warm", [model_entry("V", "visualbert-tiny", "[1]", "{" + train + "}")])


def make_runner(tmp_path: Path, data: Path, out: Path, train: str, name: str = "r.yaml") -> RecipeRunner:
    recipe = load_recipe(write_recipe(tmp_path, recipe_text(train), name))
    return RecipeRunner(recipe, data, out, limit=LIMIT)


def stages_of(runner: RecipeRunner) -> dict[str, Stage]:
    return {stage.label: stage for stage in runner.build()}


def weights_of(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "model" / "model.safetensors"))


def largest_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[key] - b[key]).abs().max()) for key in a)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from memeguard.data.synth import generate_synthetic

    root = tmp_path_factory.mktemp("synth") / "data"
    generate_synthetic(root, n=120, seed=3, progress=False)
    return root


@pytest.fixture(scope="module")
def prepared(synthetic: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An output folder whose clean and feature stages are done (every recipe here shares them)."""
    folder = tmp_path_factory.mktemp("prepared")
    out = folder / "out"
    runner = make_runner(folder, synthetic, out, BASE)
    for stage in runner.build():
        if stage.kind in ("clean", "features"):
            run_stage(stage)
    return out


def execute(tmp_path: Path, data: Path, prepared: Path, name: str, train: str) -> dict[str, Stage]:
    """The recipe's stages run in ``tmp_path/name``, its clean and features stages copied from
    ``prepared``; the stages by label."""
    out = tmp_path / name
    if not out.exists():
        shutil.copytree(prepared, out)
    stages = stages_of(make_runner(tmp_path, data, out, train, f"{name}.yaml"))
    for stage in stages.values():
        if not stage.done:
            run_stage(stage)
    return stages


def test_default_and_explicit_scratch_make_the_same_stages(synthetic: Path, tmp_path: Path) -> None:
    """Every recipe without the option keeps its stage keys (its finished runs stay cached)."""
    omitted = stages_of(make_runner(tmp_path, synthetic, tmp_path / "o", BASE, "a.yaml"))
    scratch = stages_of(
        make_runner(tmp_path, synthetic, tmp_path / "o", BASE + ", traindev_init: scratch", "b.yaml")
    )
    assert {label: s.key for label, s in omitted.items()} == {label: s.key for label, s in scratch.items()}
    assert omitted["V1-train"] not in omitted["V1-traindev"].deps  # from scratch: no wait


def test_the_traindev_stage_is_keyed_by_its_train_run(synthetic: Path, tmp_path: Path) -> None:
    def keys(train: str, name: str) -> tuple[str, str, list[object]]:
        stages = stages_of(make_runner(tmp_path, synthetic, tmp_path / "o", train, name))
        return stages["V1-train"].key, stages["V1-traindev"].key, stages["V1-traindev"].deps

    warm = BASE + ", traindev_init: train"
    scratch_train, scratch_traindev, _ = keys(BASE, "a.yaml")
    train, traindev, deps = keys(warm, "b.yaml")
    assert train == scratch_train  # the traindev keys key only the traindev stage
    assert traindev != scratch_traindev and len(deps) == 3  # clean, features, the train run
    other_lr_train, other_lr_traindev, _ = keys(warm + ", traindev_lr: 0.0005", "c.yaml")
    assert other_lr_train == train and other_lr_traindev != traindev
    new_train, new_traindev, _ = keys(warm.replace("lr: 0.001", "lr: 0.002"), "d.yaml")
    assert new_train != train and new_traindev != traindev  # new train weights: a new traindev run


@pytest.mark.slow  # two tiny training runs
def test_the_traindev_run_starts_from_the_train_runs_final_weights(
    synthetic: Path, prepared: Path, tmp_path: Path
) -> None:
    stages = execute(
        tmp_path, synthetic, prepared, "warm", f"{BASE}, traindev_init: train, traindev_lr: {TINY_LR}"
    )
    train_dir, traindev_dir = stages["V1-train"].directory, stages["V1-traindev"].directory
    saved = json.loads((traindev_dir / "train_config.json").read_text())
    assert saved["init"] == str(train_dir) and saved["epochs"] == 1 and saved["lr"] == TINY_LR
    assert saved["train_split"] == "traindev" and saved["eval_every"] == 0
    assert saved["standardize_features"] == "never"  # the train run's statistics, in its model config
    assert json.loads((traindev_dir / "DONE").read_text())["updates"] > 0
    assert largest_difference(weights_of(traindev_dir), weights_of(train_dir)) < 1e-9

    # (from scratch it would start at the seed's init, which the train run's updates at lr 1e-3 have left)


@pytest.mark.slow  # four tiny training runs, one killed
def test_a_killed_warm_traindev_run_resumes_to_the_same_outputs(
    synthetic: Path, prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    train = f"{BASE}, checkpoint_every: 1, traindev_init: train, traindev_lr: 0.0005, traindev_epochs: 2"
    reference_dir = execute(tmp_path, synthetic, prepared, "reference", train)["V1-traindev"].directory

    update, start = run_module.RunState.update, run_module.RunState.start
    resumed: list[tuple[str, bool]] = []

    def killing_update(self, averaging=None):  # type: ignore[no-untyped-def]
        if self.cfg.train_split == "traindev" and self.updates == 3:
            raise KeyboardInterrupt("killed")
        update(self, averaging)

    def recording_start(self, **companions):  # type: ignore[no-untyped-def]
        start(self, **companions)
        resumed.append((self.cfg.train_split, self.resumed))

    monkeypatch.setattr(run_module.RunState, "update", killing_update)
    with pytest.raises(KeyboardInterrupt):
        execute(tmp_path, synthetic, prepared, "killed", train)
    killed_dir = stages_of(make_runner(tmp_path, synthetic, tmp_path / "killed", train))[
        "V1-traindev"
    ].directory
    assert not (killed_dir / "DONE").exists() and (killed_dir / "checkpoints" / "last.pt").is_file()

    monkeypatch.setattr(run_module.RunState, "update", update)
    monkeypatch.setattr(run_module.RunState, "start", recording_start)
    execute(tmp_path, synthetic, prepared, "killed", train)
    assert resumed == [("traindev", True)]  # the train run is cached; the traindev run resumed
    for split in ("test_seen", "test_unseen"):
        assert (killed_dir / f"{split}.csv").read_bytes() == (reference_dir / f"{split}.csv").read_bytes()
    assert largest_difference(weights_of(killed_dir), weights_of(reference_dir)) == 0.0


@pytest.mark.parametrize(
    ("train", "expected"),
    [
        (BASE + ", traindev_epochs: 2", r"r.yaml:\d+: .*traindev_epochs and traindev_lr need traindev_init"),
        (BASE + ", traindev_lr: 0.001", r"traindev_epochs and traindev_lr need traindev_init: train"),
        (BASE + ", traindev_init: last", r"traindev_init must be one of"),
        (BASE + ", traindev_init: train, traindev_epochs: 0", r"traindev_epochs"),
    ],
)
def test_a_recipe_with_traindev_options_that_make_no_sense_is_refused(
    tmp_path: Path, train: str, expected: str
) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_recipe(write_recipe(tmp_path, recipe_text(train), "r.yaml"))
