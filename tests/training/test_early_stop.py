"""Early stopping and ``max_updates``: where a run stops (against a reference computed from an unstopped
run's log), that it stops on the same trajectory, its resume after a kill, and the pipeline's traindev run
trained for as long as its train run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from xor_memes import make_meme_set, toy_config, write_jsonl

from memeguard.errors import ConfigError
from memeguard.features.record import RegionRecord
from memeguard.training import TrainConfig, finetune
from memeguard.training.loop import updates_taken

pytestmark = pytest.mark.usefixtures("one_thread")

UPDATES_PER_EPOCH = 6  # 48 toy memes in batches of 8
EPOCHS = 4


def config(data: Path, out: Path, **kw) -> TrainConfig:
    defaults = dict(features="toy-regions", epochs=EPOCHS, lr=1e-3, eval_every=1, sum_loss=False)
    return toy_config(TrainConfig, data, out, **{**defaults, **kw})


def log_of(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def weights_of(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "model" / "model.safetensors"))


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights_of(a), weights_of(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


def reference_stop(aurocs: list[float], patience: int, min_delta: float, after: float) -> int | None:
    """The evaluation (1-based) after which a patience rule stops, written as a plain scan of the log."""
    best, stale = -math.inf, 0
    for number, auroc in enumerate(aurocs, start=1):
        if auroc < after:
            continue
        if auroc - best > min_delta:
            best, stale = auroc, 0
        else:
            stale += 1
        if stale >= patience:
            return number
    return None


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory) -> tuple[Path, dict[int, RegionRecord]]:
    """The training tests' toy set (conftest's ``toy_data``), made once for the module."""
    data = tmp_path_factory.mktemp("early_stop") / "data"
    data.mkdir()
    train, regions = make_meme_set(48, seed=1, start_id=1)
    dev, dev_regions = make_meme_set(16, seed=2, start_id=1001)
    regions.update(dev_regions)
    for split, memes in (("train_clean", train), ("dev_seen", dev), ("traindev", train + dev)):
        write_jsonl(data / f"{split}.jsonl", memes)
    return data, regions


@pytest.fixture(scope="module")
def full_run(toy_data, tmp_path_factory) -> tuple[Path, list[float]]:
    """The run without early stopping, evaluated after every update: the trajectory every stop is on."""
    data, regions = toy_data
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    result = finetune(config(data, tmp_path_factory.mktemp("full") / "run"), regions=regions)
    torch.set_num_threads(before)
    aurocs = [entry["auroc"] for entry in log_of(result.run_dir) if not entry.get("final")]
    assert len(aurocs) == UPDATES_PER_EPOCH * EPOCHS
    return result.run_dir, aurocs


@pytest.mark.parametrize("patience", [1, 3])
def test_stops_where_the_rule_says_on_the_same_trajectory(toy_data, tmp_path, full_run, patience):
    data, regions = toy_data
    full_dir, aurocs = full_run
    after = sorted(aurocs)[len(aurocs) // 3]  # the first evaluations do not count
    expected = reference_stop(aurocs, patience, 0.002, after)
    assert expected is not None and expected < len(aurocs), "the toy run must give the rule a stop to find"
    options = dict(early_stop_patience=patience, early_stop_min_delta=0.002, early_stop_after_auroc=after)
    result = finetune(config(data, tmp_path / "stopped", **options), regions=regions)
    log = log_of(result.run_dir)
    assert [entry["update"] for entry in log] == [*range(1, expected + 1), expected]
    assert [entry["auroc"] for entry in log[:-1]] == aurocs[:expected]  # same trajectory as the full run
    assert log[-1]["final"] and log[-1]["stopped_early"]
    assert updates_taken(result.run_dir) == expected
    # the kept weights are the last ones: those of a run told to stop at that update, without evaluations
    capped = finetune(config(data, tmp_path / "capped", eval_every=0, max_updates=expected), regions=regions)
    assert_same_weights(result.run_dir, capped.run_dir)
    assert (result.run_dir / "dev_seen.csv").read_text() == (capped.run_dir / "dev_seen.csv").read_text()


def test_a_threshold_never_reached_never_stops(toy_data, tmp_path, full_run):
    data, regions = toy_data
    full_dir, aurocs = full_run
    options = dict(early_stop_patience=1, early_stop_min_delta=1.0, early_stop_after_auroc=max(aurocs) + 1e-9)
    if max(aurocs) >= 1.0:
        pytest.skip("the toy run reached AUROC 1: no threshold above it")
    result = finetune(config(data, tmp_path / "never", **options), regions=regions)
    assert updates_taken(result.run_dir) == UPDATES_PER_EPOCH * EPOCHS
    assert_same_weights(result.run_dir, full_dir)


def test_select_best_keeps_the_best_weights_and_reports_their_update(toy_data, tmp_path, full_run):
    data, regions = toy_data
    _, aurocs = full_run
    options = dict(early_stop_patience=4, early_stop_min_delta=0.0, select_best=True)
    result = finetune(config(data, tmp_path / "best", **options), regions=regions)
    expected_stop = reference_stop(aurocs, 4, 0.0, 0.0)
    assert expected_stop is not None
    seen = aurocs[:expected_stop]
    best_update = seen.index(max(seen)) + 1  # the first of equal bests: select_best keeps it
    done = json.loads((result.run_dir / "DONE").read_text())
    assert done["updates"] == expected_stop
    if best_update < expected_stop:  # the best was not the last evaluation: its weights were swapped in
        assert done["metrics"]["best_update"] == best_update
        assert updates_taken(result.run_dir) == best_update
    assert result.metrics["auroc"] == pytest.approx(max(seen))


def test_killed_early_stopping_run_resumes_to_identical_weights(toy_data, tmp_path, full_run):
    data, regions = toy_data
    _, aurocs = full_run
    options = dict(early_stop_patience=2, early_stop_min_delta=0.002, checkpoint_every=2)
    expected = reference_stop(aurocs, 2, 0.002, 0.0)
    assert expected is not None and expected > 3
    reference = finetune(config(data, tmp_path / "ref", **options), regions=regions)

    class Killed(RuntimeError):
        pass

    def kill_at(update: int) -> None:
        if update == expected - 1:
            raise Killed

    cfg = config(data, tmp_path / "killed", **options)
    with pytest.raises(Killed):
        finetune(cfg, regions=regions, on_update=kill_at)
    resumed = finetune(cfg, regions=regions)
    assert resumed.resumed
    assert_same_weights(reference.run_dir, resumed.run_dir)
    assert [(e["update"], e["auroc"]) for e in log_of(reference.run_dir)] == [
        (e["update"], e["auroc"]) for e in log_of(resumed.run_dir)
    ]


def test_a_run_killed_after_its_stop_goes_straight_to_its_outputs(toy_data, tmp_path):
    """The stop is checkpointed as 'no epoch left': losing the outputs after it retrains nothing."""
    data, regions = toy_data
    cfg = config(data, tmp_path / "run", early_stop_patience=1, early_stop_min_delta=1.0)
    first = finetune(cfg, regions=regions)
    assert updates_taken(first.run_dir) == 2  # the first evaluation sets the best, the second is stale
    position = torch.load(first.run_dir / "checkpoints" / "last.pt", weights_only=True)["position"]
    assert position == {"epoch": EPOCHS, "batch": 0, "update": 2}
    before = weights_of(first.run_dir)
    for name in ("DONE", "dev_seen.csv"):
        (first.run_dir / name).unlink()  # as if killed between the stop and DONE
    again = finetune(cfg, regions=regions, on_update=lambda n: pytest.fail(f"update {n} ran again"))
    assert again.resumed
    after = weights_of(first.run_dir)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert updates_taken(first.run_dir) == 2


def test_max_updates_longer_than_the_run_changes_nothing(toy_data, tmp_path):
    data, regions = toy_data
    plain = finetune(config(data, tmp_path / "plain", eval_every=0, epochs=1), regions=regions)
    capped_cfg = config(data, tmp_path / "cap", eval_every=0, epochs=1, max_updates=100)
    capped = finetune(capped_cfg, regions=regions)
    assert_same_weights(plain.run_dir, capped.run_dir)
    assert updates_taken(capped.run_dir) == UPDATES_PER_EPOCH


def test_early_stopping_needs_periodic_evaluation(toy_data, tmp_path):
    data, _ = toy_data
    with pytest.raises(ConfigError, match="early_stop_patience needs an eval_split and eval_every > 0"):
        config(data, tmp_path / "x", early_stop_patience=2, eval_every=0)
    with pytest.raises(ConfigError, match="early_stop_patience needs"):
        config(data, tmp_path / "x", early_stop_patience=2, eval_split=None)
    with pytest.raises(ConfigError, match="max_updates"):
        config(data, tmp_path / "x", max_updates=0)


def test_updates_taken_refuses_a_done_without_the_count(tmp_path):
    (tmp_path / "DONE").write_text(json.dumps({"finished": 1.0, "metrics": {"auroc": 0.5}}))
    with pytest.raises(ConfigError, match="does not record the updates"):
        updates_taken(tmp_path)


@pytest.mark.slow  # synthesises a small set and extracts its features (~10 s)
def test_pipeline_trains_traindev_for_as_long_as_its_early_stopped_train_run(tmp_path):
    """The runner makes a traindev run wait for its train run and passes on the updates it took."""
    from memeguard.data.synth import generate_synthetic
    from memeguard.pipeline.recipe import load_recipe
    from memeguard.pipeline.runner import RecipeRunner

    data = tmp_path / "data"
    generate_synthetic(data, n=120, seed=3, progress=False)
    train = (
        "{lr: 0.001, epochs: 2, batch_size: 16, sum_loss: false, eval_every: 2, "
        "early_stop_patience: 1, early_stop_min_delta: 1.0}"
    )
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "name: es\nfeatures:\n  grid: {extractor: grid}\nmodels:\n"
        f"  - name: V\n    model: visualbert-tiny\n    features: grid\n    seeds: [1]\n    train: {train}\n"
    )
    runner = RecipeRunner(load_recipe(recipe), data, tmp_path / "out")
    stages = {stage.label: stage for stage in runner.build()}
    train_stage, traindev_stage = stages["V1-train"], stages["V1-traindev"]
    assert train_stage in traindev_stage.deps
    runner.execute()
    assert updates_taken(train_stage.directory) == 4  # evaluation 1 (update 2) is the best, 2 is stale
    traindev_config = json.loads((traindev_stage.directory / "train_config.json").read_text())
    assert traindev_config["max_updates"] == 4
    assert traindev_config["early_stop_patience"] == 0 and traindev_config["eval_every"] == 0
    assert json.loads((traindev_stage.directory / "DONE").read_text())["updates"] == 4


def test_a_run_dir_saved_before_the_early_stop_fields_still_resumes(toy_data, tmp_path):
    """Fields added since a run dir was written count as their defaults: the run is not refused."""
    data, regions = toy_data
    cfg = config(data, tmp_path / "old", eval_every=0, epochs=1)
    first = finetune(cfg, regions=regions)
    saved = json.loads((first.run_dir / "train_config.json").read_text())
    for key in ("early_stop_patience", "early_stop_min_delta", "early_stop_after_auroc", "max_updates"):
        del saved[key]
    (first.run_dir / "train_config.json").write_text(json.dumps(saved))
    assert finetune(cfg, regions=regions).skipped
    with pytest.raises(ConfigError, match="early_stop_patience"):
        finetune(cfg.replace(early_stop_patience=2, eval_every=1), regions=regions)
