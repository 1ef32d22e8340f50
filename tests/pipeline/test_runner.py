"""The recipe runner end to end on a small synthetic set: outputs, caching, resume after a kill."""

from __future__ import annotations

from pathlib import Path

import pytest
from grid_recipes import grid_recipe, model_entry, write_recipe

from memeguard.data.predictions import read_predictions
from memeguard.pipeline.recipe import load_recipe
from memeguard.pipeline.runner import RecipeRunner

FULL_TRAIN = "{lr: 0.001, epochs: 1, batch_size: 32, sum_loss: false, eval_every: 0}"
RECIPE = grid_recipe(
    "small",
    [
        model_entry("V", "visualbert-tiny", "[1]", FULL_TRAIN),
        model_entry("X", "lxmert-tiny", "[2]", FULL_TRAIN),
    ],
    ensemble="loop",
)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from memeguard.data.synth import generate_synthetic

    root = tmp_path_factory.mktemp("synth") / "data"
    generate_synthetic(root, n=240, seed=3, progress=False)
    return root


def make_runner(tmp_path: Path, data: Path, out: Path) -> RecipeRunner:
    return RecipeRunner(load_recipe(write_recipe(tmp_path, RECIPE)), data, out)


def test_run_writes_outputs_then_caches_everything(synthetic: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = make_runner(tmp_path, synthetic, out).execute()
    for split in ("dev_seen", "test_seen", "test_unseen"):
        fin = read_predictions(out / f"FIN_{split}.csv")
        family = read_predictions(out / "predictions" / f"V_{split}.csv")
        assert sorted(fin.ids.tolist()) == sorted(family.ids.tolist())
    assert (out / "report.html").is_file()
    assert not any(
        entry["cached"]
        for name, entry in report.timings.items()
        if name.split()[0] in ("clean", "features", "finetune")
    )

    fin_before = (out / "FIN_test_unseen.csv").read_bytes()
    second = make_runner(tmp_path, synthetic, out)
    second.build()
    for stage in second.stages:
        stage.action = lambda directory, s=stage: pytest.fail(f"stage {s.kind} {s.label} ran again")
    again = second.execute()
    assert all(
        entry["cached"]
        for name, entry in again.timings.items()
        if name.split()[0] in ("clean", "features", "finetune")
    )
    assert (out / "FIN_test_unseen.csv").read_bytes() == fin_before


def test_killed_run_resumes_and_matches_an_uninterrupted_one(synthetic: Path, tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    make_runner(tmp_path, synthetic, reference).execute()

    out = tmp_path / "killed"
    killed = make_runner(tmp_path, synthetic, out)
    killed.build()
    victim = next(s for s in killed.stages if s.kind == "finetune" and s.label.startswith("X"))
    original = victim.action

    def crash(directory: Path) -> None:
        raise KeyboardInterrupt("killed")

    victim.action = crash
    with pytest.raises(KeyboardInterrupt):
        killed.execute()
    assert not victim.done
    assert all(s.done for s in killed.stages[: killed.stages.index(victim)])
    victim.action = original

    ran: list[str] = []
    resumed = make_runner(tmp_path, synthetic, out)
    resumed.build()
    for stage in resumed.stages:
        action = stage.action
        stage.action = lambda directory, s=stage, a=action: (ran.append(f"{s.kind} {s.label}"), a(directory))
    resumed.execute()
    assert ran and ran[0] == f"{victim.kind} {victim.label}"
    for split in ("dev_seen", "test_seen", "test_unseen"):
        assert (out / f"FIN_{split}.csv").read_text() == (reference / f"FIN_{split}.csv").read_text()


def test_stage_keys_change_only_downstream(synthetic: Path, tmp_path: Path) -> None:
    first = make_runner(tmp_path, synthetic, tmp_path / "o")
    first.build()
    (tmp_path / "small.yaml").write_text(RECIPE.replace("seeds: [2]", "seeds: [5]"))
    second = RecipeRunner(load_recipe(tmp_path / "small.yaml"), synthetic, tmp_path / "o")
    second.build()
    before = {(s.kind, s.label): s.key for s in first.stages}
    after = {(s.kind, s.label): s.key for s in second.stages}
    assert after[("clean", "data")] == before[("clean", "data")]
    assert after[("features", "grid")] == before[("features", "grid")]
    assert after[("finetune", "V1-train")] == before[("finetune", "V1-train")]
    assert ("finetune", "X5-train") in after and ("finetune", "X2-train") not in after


def test_runner_rejects_missing_data(tmp_path: Path) -> None:
    from memeguard.errors import DataError

    path = tmp_path / "small.yaml"
    path.write_text(RECIPE)
    with pytest.raises(DataError, match="dataset directory not found"):
        RecipeRunner(load_recipe(path), tmp_path / "nope", tmp_path / "out")


def test_inference_only_reproduces_the_trained_runs(synthetic: Path, tmp_path: Path) -> None:
    """--inference-only with the fine-tuned model folders as checkpoints gives the trained runs'
    predictions."""
    out = tmp_path / "trained"
    trained = make_runner(tmp_path, synthetic, out)
    trained.execute()
    finetunes = {s.label: s.directory for s in trained.stages if s.kind == "finetune"}
    text = RECIPE
    for family, seed in (("V", 1), ("X", 2)):
        run = f"{family}{seed}"
        entry = (
            f"    runs:\n      - {{seed: {seed}, "
            f"checkpoints: {{train: {finetunes[run + '-train'] / 'model'}, "
            f"traindev: {finetunes[run + '-traindev'] / 'model'}}}}}\n"
        )
        text = text.replace(f"    seeds: [{seed}]\n", entry)
    path = tmp_path / "inference.yaml"
    path.write_text(text)
    inferred = RecipeRunner(
        load_recipe(path, inference_only=True), synthetic, tmp_path / "inferred", inference_only=True
    )
    inferred.execute()
    assert {s.kind for s in inferred.stages} == {"clean", "features", "predict"}
    for family in ("V", "X"):
        for split in ("dev_seen", "test_seen", "test_unseen"):
            expected = read_predictions(out / "predictions" / f"{family}_{split}.csv")
            got = read_predictions(tmp_path / "inferred" / "predictions" / f"{family}_{split}.csv")
            assert got.ids.tolist() == expected.ids.tolist()
            assert abs(got.proba - expected.proba).max() < 1e-6
