"""The extractor registry: a new extractor is one class and one registration; everything else looks it up.

``ToyExtractor`` plays the next extractor someone adds. Registered with one line, it is built by
``make_extractor``, checked by the recipe schema, grouped into one shared pass by the runner and rebuilt
from its store's meta.json by the scorer, with no other file changed.
"""

from __future__ import annotations

import inspect
import subprocess
import sys
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from memeguard.errors import ConfigError
from memeguard.features import factory
from memeguard.features.butd import ButdExtractor
from memeguard.features.clip import ClipExtractor
from memeguard.features.extract import extract_features
from memeguard.features.extractor import BaseExtractor, ExtractorOptions, ExtractorParams
from memeguard.features.factory import extractor_class, extractor_names, make_extractor
from memeguard.features.grid import GridExtractor
from memeguard.features.record import RegionRecord
from memeguard.features.store import FeatureStore
from memeguard.pipeline.recipe import FeatureSetSpec
from memeguard.serving.scorer import build_extractor, round_to_dtype, spec_from_meta


class ToyParams(ExtractorParams):
    scale: float = 1.0


class ToyExtractor(BaseExtractor):
    """Grid cells as regions, one variant per grid side ("1", "2", ...), all made in one pass."""

    name = "toy"
    Params = ToyParams
    variants_share_pass = True
    default_variant = "1"
    passes = 0  # extract() calls, over all instances

    def __init__(self, sides: Sequence[str] = ("1",), scale: float = 1.0) -> None:
        self.sides, self.scale = list(sides), scale
        self.grids = {side: GridExtractor(levels=(int(side),)) for side in self.sides}

    @classmethod
    def parse_variants(cls, boxes: str | Sequence[str]) -> tuple[str, ...]:
        items = super().parse_variants(boxes)
        if not all(item.isdigit() and int(item) > 0 for item in items):
            raise ConfigError(f"toy variants are grid sides, got {boxes!r}")
        return items

    @classmethod
    def create(cls, options: ExtractorOptions) -> ToyExtractor:
        assert isinstance(options.params, ToyParams)
        return cls(options.variants_or(cls.default_variant), options.params.scale)

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any], source: str, device: str) -> dict[str, Any]:
        return {"scale": float(meta["parameters"]["scale"])}

    def variants(self) -> list[str]:
        return list(self.sides)

    def extract(
        self, images: Sequence[Image.Image], meme_ids: Sequence[int], texts: Sequence[str]
    ) -> dict[str, list[RegionRecord]]:
        ToyExtractor.passes += 1
        out = {}
        for side, grid in self.grids.items():
            records = grid.extract(images, meme_ids)["default"]
            for record in records:
                record.features = record.features * self.scale
            out[side] = records
        return out

    def meta(self) -> dict[str, Any]:
        return {
            "extractor": self.name,
            "parameters": {"scale": self.scale},
            "feature_dim": 42,
            "weights_sha256": None,
        }


@pytest.fixture
def toy(monkeypatch: pytest.MonkeyPatch) -> type[ToyExtractor]:
    monkeypatch.setitem(factory.EXTRACTORS, "toy", ToyExtractor)  # the one registration line
    ToyExtractor.passes = 0
    return ToyExtractor


def test_builtin_extractors_are_registered_under_their_own_names() -> None:
    assert extractor_names()[:3] == ("grid", "butd", "clip")
    assert [extractor_class(name) for name in ("grid", "butd", "clip")] == [
        GridExtractor,
        ButdExtractor,
        ClipExtractor,
    ]
    with pytest.raises(ConfigError, match="unknown extractor 'resnet'; choose one of grid, butd, clip"):
        extractor_class("resnet")


def test_a_class_registered_under_another_name_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # A store records the class's name and the scorer looks that name up: the two must agree.
    monkeypatch.setitem(factory.EXTRACTORS, "grid2", GridExtractor)
    with pytest.raises(ConfigError, match="'grid2' is registered to .*GridExtractor.*whose name is 'grid'"):
        make_extractor("grid2")


@pytest.mark.parametrize("cls", [GridExtractor, ButdExtractor, ClipExtractor])
def test_params_defaults_equal_the_constructor_defaults(cls: type[BaseExtractor]) -> None:
    """make_extractor (Params) and a direct constructor call must build the same extractor."""
    signature = inspect.signature(cls.__init__).parameters
    for field_name, info in cls.Params.model_fields.items():
        assert field_name in signature, f"{cls.__name__}.Params.{field_name} is no constructor argument"
        assert info.default == signature[field_name].default, f"{cls.__name__}.{field_name}"


def test_option_checks_come_from_the_class(toy: type[ToyExtractor]) -> None:
    built = make_extractor("toy", boxes="1,2", scale=2.0)
    assert isinstance(built, ToyExtractor) and built.variants() == ["1", "2"] and built.scale == 2.0
    assert make_extractor("toy").variants() == ["1"]
    with pytest.raises(ConfigError, match="the toy extractor has no weights: drop --weights"):
        make_extractor("toy", weights="w.pkl")
    with pytest.raises(ConfigError, match="toy variants are grid sides"):
        make_extractor("toy", boxes="1,x")
    one_line = r"^the toy extractor's params: colour: Extra inputs are not permitted$"
    with pytest.raises(ConfigError, match=one_line):
        make_extractor("toy", colour="red")
    with pytest.raises(ConfigError, match="params: scale: Input should be a valid number"):
        make_extractor("toy", scale="big")
    with pytest.raises(ConfigError, match="the clip extractor needs --weights .*Hugging Face CLIP folder"):
        make_extractor("clip")
    with pytest.raises(ConfigError, match="the grid extractor has no box variants: drop --boxes"):
        make_extractor("grid", boxes="36")
    with pytest.raises(ConfigError, match=r"params: levels\.0: Input should be greater than or equal to 1"):
        make_extractor("grid", levels=[0, 2])
    with pytest.raises(ConfigError, match="params: config: Value error, expected a ButdConfig .* got dict"):
        make_extractor("butd", config={"min_size": 800})


def test_recipe_feature_sets_are_checked_by_the_extractor_class(toy: type[ToyExtractor]) -> None:
    assert FeatureSetSpec(extractor="toy", boxes="2", params={"scale": 3}).boxes == "2"
    assert FeatureSetSpec(extractor="butd", boxes=" 50").boxes == "50"  # the name of the store's folder
    refused = [
        ({"extractor": "sift"}, "unknown extractor 'sift'; choose one of grid, butd, clip, toy"),
        ({"extractor": "toy", "boxes": "1,2"}, "a feature set is one store: give one box variant"),
        ({"extractor": "toy", "params": {"colour": 1}}, "the toy extractor's params: colour"),
        ({"extractor": "grid", "boxes": "36"}, "drop --boxes"),
        ({"extractor": "clip"}, "the clip extractor needs --weights"),
        ({"extractor": "butd", "boxes": "100-10"}, "need 1 <= MIN <= MAX"),
        ({"import_tsv": "x.tsv", "weights": "w.pkl"}, "weights, boxes and params go with extractor"),
    ]
    for fields, message in refused:
        with pytest.raises(ValidationError, match=message):
            FeatureSetSpec(**fields)


RECIPE = """\
name: toy
features:
  toy1: {extractor: toy, boxes: "1", params: {scale: 2}}
  toy2: {extractor: toy, boxes: "2", params: {scale: 2}}
  toy1x3: {extractor: toy, params: {scale: 3}}
  grid: {extractor: grid, params: {levels: [2]}}
models:
  - name: V
    architecture: visualbert-tiny
    runs:
      - {seed: 1, features: toy1}
      - {seed: 2, features: toy2}
      - {seed: 3, features: toy1x3}
      - {seed: 4, features: grid}
"""


def test_runner_gives_variants_that_share_a_pass_one_stage(
    toy: type[ToyExtractor], hm_dir: Path, tmp_path: Path
) -> None:
    from memeguard.pipeline.recipe import load_recipe
    from memeguard.pipeline.runner import RecipeRunner

    (tmp_path / "toy.yaml").write_text(RECIPE)
    runner = RecipeRunner(load_recipe(tmp_path / "toy.yaml"), hm_dir, tmp_path / "out")
    runner.build()
    stages = {name: stage for name, (stage, _) in runner.feature_stages.items()}
    assert stages["toy1"] is stages["toy2"] and stages["toy1"].label == "toy-1_2"
    assert stages["toy1x3"].label == "toy-1"  # other params: another pass
    assert stages["grid"].label == "grid"
    shared = stages["toy1"]
    shared.action(shared.directory)
    assert ToyExtractor.passes == 1  # 7 images in one batch: one pass made both stores
    for name, side in (("toy1", 1), ("toy2", 2)):
        store = FeatureStore.open(runner.store_path(name))
        assert runner.store_path(name) == shared.directory / "store" / str(side)
        assert store.num_boxes(100) == side * side and store.meta["parameters"] == {"scale": 2.0}


def test_scorer_rebuilds_a_registered_extractor_from_its_store(
    toy: type[ToyExtractor], hm_dir: Path, tmp_path: Path
) -> None:
    paths = extract_features(
        hm_dir, tmp_path / "toy", make_extractor("toy", boxes="1,2", scale=3.0), progress=False
    )
    store = FeatureStore.open(paths["2"])
    spec = spec_from_meta(store.meta, "toy/2/meta.json", "cpu")
    assert (spec.extractor, spec.kwargs, spec.variant, spec.dtype) == ("toy", {"scale": 3.0}, "2", "float16")
    rebuilt = build_extractor(spec, ["1", "2"], "cpu")
    assert rebuilt.variants() == ["1", "2"]  # one pass for both, as the runs' stores were made
    image = Image.open(hm_dir / "img" / "00104.png").convert("RGB")
    fresh = round_to_dtype(rebuilt.extract([image], [104], [""])["2"][0], spec.dtype)
    np.testing.assert_array_equal(fresh.features, store[104].features)
    np.testing.assert_array_equal(fresh.boxes, store[104].boxes)


def test_grid_meta_round_trip() -> None:
    grid = GridExtractor(levels=(3, 1), cell_px=8)
    settings = GridExtractor.from_meta(grid.meta(), "meta.json", "cpu")
    assert make_extractor("grid", device="cuda", **settings).meta() == grid.meta()
    with pytest.raises(ConfigError, match="meta.json: grid features without their parameters"):
        GridExtractor.from_meta({"extractor": "grid"}, "meta.json", "cpu")


def test_butd_and_clip_from_meta(tmp_path: Path) -> None:
    random = {"extractor": "butd", "weights": None, "fp16": True, "seed": 3}
    expected = {"weights": None, "fp16": False, "seed": 3, "batched": False}
    assert ButdExtractor.from_meta(random, "m", "cpu") == expected
    assert ButdExtractor.from_meta({**random, "batched": True}, "m", "cpu")["batched"] is True
    assert ButdExtractor.from_meta(random, "m", "cuda:1")["fp16"] is True
    weights = tmp_path / "faster_rcnn_from_caffe_attr.pkl"
    with pytest.raises(ConfigError, match=f"m: BUTD weights {weights} are not here"):
        ButdExtractor.from_meta({"weights": str(weights)}, "m", "cpu")
    weights.write_bytes(b"x")
    found = ButdExtractor.from_meta({"weights": str(weights)}, "m", "cpu")
    assert found == {"weights": str(weights), "fp16": False, "batched": False}
    with pytest.raises(ConfigError, match="m: CLIP model folder .*clip is not here"):
        ClipExtractor.from_meta({"model_dir": str(tmp_path / "clip")}, "m", "cpu")
    # A store written before resize/patches/dtype existed: patch regions, float32 extras, centre crop.
    old = {"weights": str(tmp_path), "resize": "crop", "patches": True, "dtype": "float32"}
    assert ClipExtractor.from_meta({"model_dir": str(tmp_path)}, "m", "cpu") == old


LAZY = textwrap.dedent(
    """
    import sys
    import memeguard.cli  # what `memeguard --help` loads
    heavy = ("torch", "torchvision", "transformers")
    assert not [m for m in heavy if m in sys.modules], [m for m in heavy if m in sys.modules]
    from PIL import Image
    from memeguard.features.factory import extractor_names, make_extractor
    assert extractor_names()[:3] == ("grid", "butd", "clip")
    make_extractor("grid").extract([Image.new("RGB", (64, 48))], [1])
    assert not [m for m in heavy if m in sys.modules], [m for m in heavy if m in sys.modules]
    """
)


def test_help_and_the_grid_path_import_no_torch() -> None:
    result = subprocess.run([sys.executable, "-c", LAZY], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
