"""The report gallery's explanations from a pipeline run (memeguard.pipeline.explain): every gallery card
gets its overlay and coloured words, the explained logit is the one the run predicted, members are
weighted like the ensemble, and a missing captum or a run without a model is a note, not an error."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from grid_recipes import grid_recipe, model_entry, write_recipe

from memeguard.data.hm import read_split
from memeguard.data.predictions import read_predictions
from memeguard.pipeline.explain import GalleryExplainer, GalleryMember, member_weights
from memeguard.pipeline.recipe import load_recipe
from memeguard.pipeline.runner import RecipeRunner

TRAIN = "{lr: 0.001, epochs: 1, batch_size: 32, sum_loss: false, eval_every: 0}"
RECIPE = grid_recipe(
    "gallery",
    [model_entry("V", "visualbert-tiny", "[1]", TRAIN), model_entry("O", "oscar-tiny", "[2]", TRAIN)],
    ensemble="simplex",
)


def _page_images(page: str, alt: str) -> int:
    return page.count(f'alt="{alt}')


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> tuple[RecipeRunner, Path]:
    pytest.importorskip("captum")
    from memeguard.data.synth import generate_synthetic

    root = tmp_path_factory.mktemp("gallery")
    generate_synthetic(root / "data", n=200, seed=5, progress=False)
    runner = RecipeRunner(load_recipe(write_recipe(root, RECIPE)), root / "data", root / "out")
    runner.execute()
    return runner, root / "out"


@pytest.mark.slow
def test_every_gallery_card_shows_its_attributions(ran) -> None:
    _, out = ran
    page = (out / "report.html").read_text(encoding="utf-8")
    cards = page.count('<div class="meta">id ')
    assert cards > 0
    assert _page_images(page, "attribution overlay of meme") == cards
    assert page.count('<mark class="w"') >= cards  # the caption's words coloured on every card
    assert "no explanation" not in page and "left out" not in page


@pytest.mark.slow
def test_the_explained_logit_is_the_runs_prediction_and_members_weigh_as_the_ensemble(ran) -> None:
    from memeguard.models.explanation import explain_members

    runner, out = ran
    explainer = runner.gallery_explainer()
    meme = read_split(runner.clean_dir, "dev_seen")[3]
    loaded = explainer._members(meme)
    explanation = explain_members([explainer._input(m, meme) for m in loaded], meme.text, (1, 1), 8)
    final = json.loads((out / "weights.json").read_text())["final"]["weights"]
    used = {family: weight for family, weight in final.items() if weight > 0}  # a 0-weight family is not
    weights = {member.model[0]: member.weight for member in explanation.models}  # run name = family + seed
    assert weights == pytest.approx({family: weight / sum(used.values()) for family, weight in used.items()})
    for member in explanation.models:
        csv = runner.run_predictions[member.model[0]][member.model]["dev_seen"]
        predicted = read_predictions(csv)
        proba = float(predicted.proba[predicted.ids == meme.id][0])
        assert 1 / (1 + math.exp(-member.logit)) == pytest.approx(proba, abs=1e-5)
        change = member.logit - member.baseline_logit
        total_attr = sum(t.attribution for t in member.tokens) + sum(r.attribution for r in member.regions)
        assert total_attr - change == pytest.approx(member.delta, abs=1e-5)


@pytest.mark.slow
def test_without_captum_each_card_says_so_and_the_report_is_written(ran, monkeypatch) -> None:
    from memeguard.pipeline.stages import write_run_report

    runner, out = ran
    monkeypatch.setitem(sys.modules, "captum", None)
    monkeypatch.setitem(sys.modules, "captum.attr", None)
    report = out / "nocaptum"
    report.mkdir()
    families = {f: {s: out / "predictions" / f"{f}_{s}.csv" for s in ("dev_seen",)} for f in ("V", "O")}
    fin = {"dev_seen": out / "FIN_dev_seen.csv"}
    write_run_report(report, families, fin, runner.clean_dir, {}, "t", explain=runner.gallery_explainer())
    page = (report / "report.html").read_text(encoding="utf-8")
    cards = page.count('<div class="meta">id ')
    assert cards > 0 and page.count("explanations need captum") == cards
    assert _page_images(page, "attribution overlay") == 0 and _page_images(page, "meme ") == cards


@pytest.mark.slow
def test_a_run_without_a_model_is_left_out_with_a_note(ran, tmp_path) -> None:
    runner, _ = ran
    real = runner.gallery_explainer().members[0]
    empty = GalleryMember("Z", "Z9", tmp_path / "nothing", real.store)
    explainer = GalleryExplainer([empty, real], [1.0, 1.0], runner.clean_dir, steps=4)
    meme = read_split(runner.clean_dir, "dev_seen")[0]
    png, words = explainer(meme)
    assert png.startswith(b"\x89PNG") and [w for w, _ in words] == meme.text.split()
    assert len(explainer.notes) == 1 and explainer.notes[0].startswith("Z9: left out")


def test_members_take_their_familys_weight_split_over_its_runs() -> None:
    members = [GalleryMember(f, r, Path(r), Path("s")) for f, r in (("V", "V1"), ("V", "V2"), ("O", "O1"))]
    assert member_weights(members, {"V": 0.6, "O": 0.4}) == [0.3, 0.3, 0.4]
    assert member_weights(members, {"V": 1.0}) == [0.5, 0.5, 0.0]
    assert member_weights(members, None) == [1.0, 1.0, 1.0]
    np.testing.assert_allclose(sum(member_weights(members, {"V": 0.6, "O": 0.4})), 1.0)
