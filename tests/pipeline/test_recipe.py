"""Recipes fail at load time with the offending line; the shipped recipes load."""

from __future__ import annotations

from pathlib import Path

import pytest
from grid_recipes import TWO_SEED_RECIPE, write_recipe

from memeguard.errors import ConfigError
from memeguard.pipeline.recipe import load_recipe

RECIPES = Path(__file__).resolve().parents[2] / "src" / "memeguard" / "pipeline" / "recipes"

GOOD = TWO_SEED_RECIPE


def write(tmp_path: Path, text: str) -> Path:
    """``text`` as ``r.yaml``, the file name the expected errors quote."""
    return write_recipe(tmp_path, text, "r.yaml")


def test_good_recipe_expands_seeds_into_runs(tmp_path: Path) -> None:
    recipe = load_recipe(write(tmp_path, GOOD))
    runs = recipe.models[0].runs
    assert [(r.name, r.seed, r.features) for r in runs] == [("V1", 1, "grid"), ("V2", 2, "grid")]
    assert recipe.ensemble.method == "loop"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            GOOD.replace("    seeds: [1, 2]\n", "    seeds: [1, 2]\n    colour: blue\n"),
            r"r.yaml:10: models.0.colour: Extra inputs",
        ),
        (GOOD.replace("extractor: grid", "extractor: sift"), r"r.yaml:4: features.grid.extractor"),
        (GOOD.replace("features: grid", "features: butd36"), r"feature set 'butd36' is not defined"),
        (
            GOOD.replace("visualbert-tiny", "visualbert-huge"),
            r"r.yaml:7: unknown architecture 'visualbert-huge'",
        ),
        (
            GOOD.replace("{lr: 0.001, epochs: 1}", "{lr: 0.001, epoch: 1}"),
            r"r.yaml:10: models\[0\].train: unknown key 'epoch'",
        ),
        (
            GOOD.replace(
                "  grid:\n    extractor: grid", "  grid:\n    extractor: grid\n    import_tsv: x.tsv"
            ),
            r"exactly one of",
        ),
        (GOOD + "  - {name: V, model: visualbert-tiny, features: grid}\n", r"model names must be unique"),
        (GOOD.replace("features:\n  grid", "features:\n grid:\n  - ]"), r"invalid YAML"),
    ],
)
def test_bad_recipes_name_the_line(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_recipe(write(tmp_path, text))


def test_missing_files_are_reported(tmp_path: Path) -> None:
    text = GOOD.replace("    extractor: grid", "    import_tsv: features/hm_vgattr3636.tsv").replace(
        "    seeds: [1, 2]", "    seeds: [1, 2]\n    init: weights/model.pth"
    )
    with pytest.raises(
        ConfigError,
        match=r"features.grid.import_tsv: features/hm_vgattr3636.tsv does not exist.*init: weights/model.pth",
    ):
        load_recipe(write(tmp_path, text))


def test_inference_only_needs_checkpoints(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--inference-only needs checkpoints"):
        load_recipe(write(tmp_path, GOOD), inference_only=True)
    (tmp_path / "a.pth").write_bytes(b"x")
    text = GOOD.replace(
        "    seeds: [1, 2]\n",
        "    runs:\n      - {seed: 1, checkpoints: {train: a.pth, traindev: a.pth}}\n",
    )
    recipe = load_recipe(write(tmp_path, text), inference_only=True)
    assert recipe.models[0].runs[0].checkpoints.train == str(tmp_path / "a.pth")


def test_shipped_demo_recipe_loads() -> None:
    recipe = load_recipe(RECIPES / "demo.yaml")
    assert {m.model for m in recipe.models} == {"visualbert-tiny", "uniter-tiny", "oscar-tiny"}
    assert all(len(m.runs) == 2 for m in recipe.models)


def test_shipped_vilio_recipe_is_complete_but_needs_the_weights() -> None:
    with pytest.raises(ConfigError) as info:
        load_recipe(RECIPES / "vilio.yaml")
    message = str(info.value)
    for needed in (
        "faster_rcnn_from_caffe_attr.pkl",
        "uniter-large.pt",
        "visual_bert/model.pth",
        "ernielarge/params",
    ):
        assert needed in message


def test_shipped_inference_recipe_lists_every_released_run() -> None:
    import yaml

    data = yaml.safe_load((RECIPES / "vilio_inference.yaml").read_text())
    names = [run["name"] for model in data["models"] for run in model["runs"]]
    assert names == [
        "O36",
        "O50",
        "OV50",
        "U36",
        "U50",
        "U72",
        "V45",
        "V90",
        "V135",
        "ES36",
        "ESVCR36",
        "ESV50",
        "ES72",
        "ESVCR72",
        "EL36",
        "ELVCR36",
        "ELV50",
        "EL72",
        "ELVCR72",
    ]
    with pytest.raises(ConfigError) as info:
        load_recipe(RECIPES / "vilio_inference.yaml", inference_only=True)
    message = str(info.value)
    assert "weights/vilio/U72/LASTtraindev.pth does not exist" in message
    assert "weights/vilio/ELVCR72/step_2500train does not exist" in message
