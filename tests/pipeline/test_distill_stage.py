"""Distillation end to end on a small synthetic set: the recipe's ``distill:`` stage after a weighted-mean
ensemble, the distillation set's ids, the student as an ordinary run (predict, MemeScorer), the teacher's
probabilities, caching, and the ``memeguard distill`` command's refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from grid_recipes import grid_recipe, model_entry, write_recipe

from memeguard.data.hm import image_path, read_split
from memeguard.data.predictions import read_predictions
from memeguard.errors import ConfigError
from memeguard.pipeline.recipe import load_recipe
from memeguard.pipeline.runner import RecipeRunner

TRAIN = "{lr: 0.001, epochs: 1, batch_size: 32, sum_loss: false, eval_every: 0}"
DISTILL = """\
distill:
  model: visualbert-tiny
  features: grid
  overrides: {hidden_size: 32, num_hidden_layers: 1}
  train: {lr: 0.001, epochs: 1, batch_size: 32, sum_loss: false, eval_every: 0, distill_alpha: 0.3}
"""
RECIPE = (
    grid_recipe("small", [model_entry("V", "visualbert-tiny", "[1]", TRAIN)], ensemble="simplex") + DISTILL
)


@pytest.fixture(scope="module")
def distilled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, RecipeRunner]:
    """The synthetic data, the pipeline output and its runner, after one run with a distill stage."""
    from memeguard.data.synth import generate_synthetic

    root = tmp_path_factory.mktemp("distill")
    data = root / "data"
    generate_synthetic(data, n=200, seed=3, progress=False)
    runner = RecipeRunner(load_recipe(write_recipe(root, RECIPE)), data, root / "out")
    report = runner.execute()
    assert report.student_dir is not None
    return data, root / "out", runner


def _ids(data: Path, split: str) -> set[int]:
    return {meme.id for meme in read_split(data, split)}


@pytest.mark.slow  # shares one pipeline run (clean, grid, 2 fine-tunes, distill)
def test_distillation_set_is_train_plus_test_and_never_dev(distilled):
    _, out, runner = distilled
    student = runner.distill_stage().directory
    clean = runner.clean_dir
    (targets,) = student.glob("soft_targets.*.csv")
    ids = set(read_predictions(targets).ids.tolist())
    dev = _ids(clean, "dev_seen") | _ids(clean, "dev_unseen")
    assert _ids(clean, "train_clean") & dev  # vilio's cleaning adds dev_unseen memes to train_clean
    assert ids == (_ids(clean, "train_clean") - dev) | _ids(clean, "test_seen") | _ids(clean, "test_unseen")
    assert not ids & dev
    config = json.loads((student / "train_config.json").read_text())
    assert config["train_split"] == "train_clean" and config["unlabelled"] == ["test_seen", "test_unseen"]
    assert config["distill_alpha"] == 0.3 and config["model_overrides"]["hidden_size"] == 32


@pytest.mark.slow  # shares one pipeline run (clean, grid, 2 fine-tunes, distill)
def test_soft_targets_are_the_ensembles_weighted_mean(distilled):
    """One family with one run: the teacher of a test meme is that run (b)'s own test prediction."""
    _, out, runner = distilled
    student = runner.distill_stage().directory
    teacher = read_predictions(next(student.glob("soft_targets.*.csv"))).as_dict()
    members = json.loads((out / "members.json").read_text())
    run_b = out / members["V"]["V1"]["test_unseen"]
    written = read_predictions(run_b).as_dict()
    np.testing.assert_allclose([teacher[i] for i in written], list(written.values()), rtol=0, atol=1e-6)


@pytest.mark.slow  # shares one pipeline run (clean, grid, 2 fine-tunes, distill)
def test_student_is_an_ordinary_run(distilled, tmp_path):
    from memeguard.serving.scorer import MemeScorer
    from memeguard.training import predict

    _, out, runner = distilled
    student = runner.distill_stage().directory
    store = runner.store_path("grid")
    again = predict(student, store, runner.clean_dir, "dev_seen", tmp_path / "dev.csv", device="cpu")
    before = read_predictions(student / "dev_seen.csv")
    np.testing.assert_allclose(read_predictions(again).proba, before.proba, rtol=0, atol=1e-6)
    scorer = MemeScorer.from_runs([student], device="cpu")
    memes = read_split(runner.clean_dir, "dev_seen")[:4]
    scores = scorer.score_batch([(image_path(runner.clean_dir, m), m.text) for m in memes], ocr="never")
    expected = before.as_dict()
    np.testing.assert_allclose([s.proba for s in scores], [expected[m.id] for m in memes], atol=2e-3)
    assert "(distilled)" in (out / "report.html").read_text()


@pytest.mark.slow  # shares one pipeline run (clean, grid, 2 fine-tunes, distill)
def test_distill_stage_is_cached(distilled):
    data, out, runner = distilled
    again = RecipeRunner(load_recipe(runner.recipe.source), data, out)
    again.build()
    for stage in again.stages:
        stage.action = lambda directory: pytest.fail("a stage ran again")
    stage = again.distill_stage()
    assert stage is not None and stage.done
    report = again.execute()
    assert report.timings["distill student"]["cached"]


def test_weighted_mean_ensembles_only(tmp_path):
    loop = grid_recipe("s", [model_entry("V", "visualbert-tiny", "[1]", TRAIN)], ensemble="loop") + DISTILL
    with pytest.raises(ConfigError, match="ensemble.method must be one of simplex, coordinate"):
        load_recipe(write_recipe(tmp_path, loop))
    bad_key = RECIPE.replace("distill_alpha: 0.3", "unlabelled: [dev_seen]")
    with pytest.raises(ConfigError, match="distill.train: unknown key 'unlabelled'"):
        load_recipe(write_recipe(tmp_path, bad_key))


@pytest.mark.slow  # shares one pipeline run (clean, grid, 2 fine-tunes, distill)
def test_distill_command_refuses_a_rank_ensemble_and_a_bare_folder(distilled, tmp_path):
    from typer.testing import CliRunner

    from memeguard.cli import app

    data, out, runner = distilled
    ens = tmp_path / "ens"
    ens.mkdir()
    (ens / "weights.json").write_text(json.dumps({"method": "rank", "final": {"blend": "RA", "weights": {}}}))
    common = [
        "--student",
        "visualbert-tiny",
        "--features",
        str(runner.store_path("grid")),
        "--data",
        str(data),
    ]
    result = CliRunner().invoke(
        app, ["distill", "--teacher", str(ens), *common, "--out", str(tmp_path / "s")]
    )
    assert result.exit_code != 0 and "cannot score train or extra memes" in str(result.exception)
    assert not (tmp_path / "s").exists()
    extra = tmp_path / "imgs"
    extra.mkdir()
    args = ["distill", "--teacher", str(out), *common, "--out", str(tmp_path / "s"), "--extra", str(extra)]
    result = CliRunner().invoke(app, args)
    assert "Hateful Memes layout" in str(result.exception)


@pytest.mark.slow  # shares one pipeline run (clean, grid, 2 fine-tunes, distill)
def test_distill_command_from_a_bundle(distilled, tmp_path):
    """A bundle teacher scores the memes from their images; on test memes that is run (b)'s own score."""
    from typer.testing import CliRunner

    from memeguard.cli import app
    from memeguard.serving.bundle import export_bundle

    _, out, runner = distilled
    members = json.loads((out / "members.json").read_text())
    run_b = (out / members["V"]["V1"]["test_unseen"]).parent
    bundle = tmp_path / "bundle"
    export_bundle([run_b], bundle, ensemble=out, data_dir=runner.clean_dir)
    student = tmp_path / "student"
    args = ["distill", "--teacher", str(bundle), "--student", "visualbert-tiny"]
    args += [
        "--features",
        str(runner.store_path("grid")),
        "--data",
        str(runner.clean_dir),
        "--out",
        str(student),
    ]
    args += ["--limit", "12", "--epochs", "1", "--set", "hidden_size=32", "--device", "cpu", "--no-progress"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    targets = read_predictions(next(student.glob("soft_targets.*.csv"))).as_dict()
    written = read_predictions(run_b / "test_unseen.csv").as_dict()
    shared = sorted(set(targets) & set(written))
    assert len(shared) == 12
    # the store holds float16 features, the bundle extracts float32 ones from the images
    np.testing.assert_allclose([targets[i] for i in shared], [written[i] for i in shared], atol=2e-3)
    dev = [meme.id for meme in read_split(runner.clean_dir, "dev_seen")[:12]]
    assert read_predictions(student / "dev_seen.csv").ids.tolist() == dev  # an ordinary run's predictions


@pytest.mark.slow  # shares one pipeline run (clean, grid, 2 fine-tunes, distill)
def test_another_teacher_is_refused_before_anything_is_written(distilled):
    from memeguard.pipeline.distill import distill
    from memeguard.training import TrainConfig

    _, _, runner = distilled
    student = runner.distill_stage().directory
    cfg = TrainConfig.from_dict(json.loads((student / "train_config.json").read_text()))
    before = sorted(path.name for path in student.iterdir())
    with pytest.raises(ConfigError, match=r"different configuration \(differs in \['soft_targets'\]\)"):
        distill(cfg, lambda items: {meme.id: 0.5 for _, meme in items})
    assert sorted(path.name for path in student.iterdir()) == before
