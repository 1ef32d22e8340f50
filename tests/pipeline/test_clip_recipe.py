"""The CLIP family in recipes: a CLIP feature set and a Hate-CLIPper head run through the recipe runner
next to a grid-feature model, the feature stage's cache key follows the CLIP options, and the shipped
CLIP recipes carry the papers' settings (they load once the weights are there)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from grid_recipes import write_recipe

from memeguard.data.predictions import read_predictions
from memeguard.errors import ConfigError
from memeguard.pipeline.recipe import load_recipe
from memeguard.pipeline.runner import RecipeRunner
from tiny_clip import save_tiny_clip

RECIPES = Path(__file__).resolve().parents[2] / "src" / "memeguard" / "pipeline" / "recipes"

QUICK = "{lr: 0.003, epochs: 1, batch_size: 16, sum_loss: false, eval_every: 0}"


def clip_recipe(clip_dir: Path, resize: str = "square") -> str:
    return f"""\
name: clipmix
features:
  clip: {{extractor: clip, weights: {clip_dir}, params: {{resize: {resize}}}}}
  grid: {{extractor: grid, params: {{levels: [2, 1]}}}}
models:
  - {{name: HA, model: hateclipper-align-tiny, features: clip, seeds: [1], train: {QUICK}}}
  - {{name: V, model: visualbert-tiny, features: grid, seeds: [2], train: {QUICK}}}
ensemble: {{method: simplex}}
"""


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")


@pytest.mark.slow
def test_a_clip_recipe_runs_and_blends_with_a_grid_model(clip_dir: Path, tmp_path: Path) -> None:
    from memeguard.data.synth import generate_synthetic

    data, out = tmp_path / "data", tmp_path / "out"
    generate_synthetic(data, n=80, seed=3, progress=False)
    recipe = load_recipe(write_recipe(tmp_path, clip_recipe(clip_dir)))
    RecipeRunner(recipe, data, out, device="cpu").execute()
    for split in ("dev_seen", "test_seen", "test_unseen"):
        fin = read_predictions(out / f"FIN_{split}.csv")
        for family in ("HA", "V"):
            family_preds = read_predictions(out / "predictions" / f"{family}_{split}.csv")
            assert sorted(family_preds.ids) == sorted(fin.ids)
    assert (out / "report.html").is_file()


def test_the_clip_feature_key_follows_its_options_and_weights(clip_dir: Path, tmp_path: Path) -> None:
    def keys(text: str) -> dict[tuple[str, str], str]:
        runner = RecipeRunner(load_recipe(write_recipe(tmp_path, text)), tmp_path, tmp_path / "o")
        runner.build()
        return {(s.kind, s.label): s.key for s in runner.stages}

    (tmp_path / "train_clean.jsonl").write_text("")
    square = keys(clip_recipe(clip_dir))
    crop = keys(clip_recipe(clip_dir, resize="crop"))
    assert crop[("features", "clip")] != square[("features", "clip")]
    assert crop[("finetune", "HA1-train")] != square[("finetune", "HA1-train")]
    assert crop[("features", "grid")] == square[("features", "grid")]
    assert crop[("finetune", "V2-train")] == square[("finetune", "V2-train")]
    weights = clip_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes())  # rewritten: a new mtime, so possibly new weights
    assert keys(clip_recipe(clip_dir))[("features", "clip")] != square[("features", "clip")]


def shipped(name: str) -> dict:
    return yaml.safe_load((RECIPES / name).read_text())


def test_shipped_clip_recipe_has_the_papers_settings_and_needs_the_clip_folders() -> None:
    with pytest.raises(ConfigError) as info:
        load_recipe(RECIPES / "clip.yaml")
    assert "clip-vit-large-patch14" in str(info.value) and "clip-vit-large-patch14-336" in str(info.value)
    recipe = shipped("clip.yaml")
    features = recipe["features"]
    # Hate-CLIPper (224) and RGCL (336) stretch the whole meme to the tower's square, no crop
    assert features["clip224"]["params"] == features["clip336"]["params"] == {"resize": "square"}
    models = {m["name"]: m for m in recipe["models"]}
    align, cross, rgcl = models["HCA"], models["HCX"], models["RGCL"]
    assert (align["model"], align["features"]) == ("hateclipper-align", "clip224")
    assert (cross["model"], cross["features"]) == ("hateclipper-cross-32", "clip224")
    assert (rgcl["model"], rgcl["features"]) == ("rgcl", "clip336")
    for model in (align, cross):
        assert model["train"]["lr"] == 1e-4 and model["train"]["batch_size"] == 64
        assert model["train"]["weight_decay"] == 1e-4 and model["train"]["epochs"] == 20
    assert rgcl["train"]["weight_decay"] == 0.01 and rgcl["train"]["epochs"] == 30


def test_shipped_vilio_clip_recipe_blends_vilios_families_with_the_clip_family() -> None:
    with pytest.raises(ConfigError) as info:
        load_recipe(RECIPES / "vilio_clip.yaml")
    for needed in ("faster_rcnn_from_caffe_attr.pkl", "uniter-large.pt", "clip-vit-large-patch14"):
        assert needed in str(info.value)
    blend, vilio = shipped("vilio_clip.yaml"), shipped("vilio.yaml")
    names = {m["name"] for m in blend["models"] if m.get("enabled", True)}
    assert names == {"O", "U", "V", "ES", "EL", "HCA", "HCX", "RGCL"}
    by_name = {m["name"]: m for m in blend["models"]}
    for model in vilio["models"]:  # vilio's families exactly as vilio.yaml has them
        assert by_name[model["name"]] == model
    clip = {m["name"]: m for m in shipped("clip.yaml")["models"]}
    assert all(by_name[name] == clip[name] for name in clip)
    assert blend["ensemble"] == vilio["ensemble"]
