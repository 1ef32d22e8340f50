"""Text-removed images: the mask, the inpainting, OCR on a rendered meme, and ``--remove-text`` end to end."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from memeguard.errors import ConfigError
from memeguard.features.factory import make_extractor
from memeguard.features.text_removal import TextRemovingExtractor, box_quad, inpaint, text_mask

CAPTIONS = ["when you finally get the dog to sit still", "me and the boys going to the beach"]


def rendered_meme(caption: str, seed: int, size: tuple[int, int] = (360, 300)) -> tuple[Image.Image, list]:
    """A meme as generators draw it (DejaVu Sans Bold, white with a black outline) on a busy picture;
    -> (image, the caption's true boxes)."""
    from memeguard.data.synth import draw_caption, find_font

    rng = np.random.default_rng(seed)
    width, height = size
    ramp = np.linspace(0, 1, width)[None, :, None] * rng.uniform(40, 220, size=3)
    noise = rng.normal(0, 18, size=(height, width, 3))
    image = Image.fromarray(np.clip(ramp + noise + 20, 0, 255).astype(np.uint8), "RGB")
    return image, draw_caption(image, caption, seed, str(find_font()))


def test_mask_fills_the_quadrilaterals_and_grows_by_the_dilation() -> None:
    exact = text_mask((60, 80), [box_quad((10, 20, 30, 40))], dilation=0)
    expected = np.zeros((60, 80), np.uint8)
    expected[20:41, 10:31] = 255  # corners rounded outwards, both edges included
    np.testing.assert_array_equal(exact, expected)
    grown = text_mask((60, 80), [box_quad((10.4, 20.6, 29.5, 39.2))], dilation=3)
    assert grown[20:41, 10:31].all() and grown[30, 7] and grown[30, 33] and grown[17, 20]
    assert not grown[30, 6] and not grown[30, 34] and not grown[16, 20] and not grown[45, 20]
    # A rotated quadrilateral (a diamond) is filled as drawn, not as its bounding box.
    diamond = text_mask((60, 80), [np.array([[40, 10], [60, 30], [40, 50], [20, 30]])], dilation=0)
    assert diamond[30, 40] and diamond[11, 40] and not diamond[12, 22] and not diamond[48, 58]
    assert not text_mask((5, 5), [], dilation=4).any()


def test_inpainting_fills_the_mask_from_around_it_and_nothing_else() -> None:
    pixels = np.full((40, 60, 3), (30, 120, 200), np.uint8)
    pixels[18:22, 10:50] = 255  # a white stroke on a flat background
    mask = text_mask((40, 60), [box_quad((10, 18, 49, 21))], dilation=1)
    cleaned = np.asarray(inpaint(Image.fromarray(pixels), mask)).astype(int)
    outside = mask == 0
    np.testing.assert_array_equal(cleaned[outside], pixels[outside])
    assert np.abs(cleaned[18:22, 10:50] - np.array([30, 120, 200])).max() <= 2
    unchanged = inpaint(Image.fromarray(pixels), np.zeros((40, 60), np.uint8))
    np.testing.assert_array_equal(np.asarray(unchanged), pixels)


def test_missing_opencv_is_one_line_naming_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cv2", None)  # import cv2 now raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'memeguard\[ocr\]'") as error:
        text_mask((4, 4), [box_quad((0, 0, 2, 2))], dilation=1)
    assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match=r"memeguard\[ocr\]"):
        make_extractor("grid", remove_text=True)


def test_every_extractor_takes_remove_text_as_a_param() -> None:
    from memeguard.features.grid import GridExtractor
    from memeguard.pipeline.recipe import FeatureSetSpec

    wrapped = make_extractor("grid", levels=(2,), remove_text=True, remove_text_dilation=6)
    assert isinstance(wrapped, TextRemovingExtractor) and wrapped.name == "grid"
    assert wrapped.variants() == ["default"] and wrapped.batch_size == 32
    meta = wrapped.meta()
    assert (meta["remove_text"], meta["remove_text_dilation"], meta["parameters"]["levels"]) == (True, 6, [2])
    assert "remove_text" not in make_extractor("grid").meta()
    # Rebuilt from a store's meta (what the scorer does), any registered extractor repeats it.
    again = GridExtractor.from_meta(meta, "meta.json", "cpu")
    assert again["remove_text"] is True and again["remove_text_dilation"] == 6
    assert make_extractor("grid", **again).meta() == meta
    assert "remove_text" not in GridExtractor.from_meta(make_extractor("grid").meta(), "m", "cpu")
    with pytest.raises(ConfigError, match="remove_text_dilation"):
        make_extractor("grid", remove_text=True, remove_text_dilation=-1)
    with pytest.raises(ConfigError, match="the grid extractor's params: remove_text"):
        make_extractor("grid", remove_text="sometimes")
    # A recipe takes it in params: it is part of the feature stage's cache key, which hashes params.
    spec = FeatureSetSpec(extractor="grid", params={"remove_text": True})
    assert spec.params == {"remove_text": True}


@pytest.mark.slow
def test_ocr_finds_no_caption_after_removal_and_the_picture_is_kept() -> None:
    from memeguard.data.ocr import read_caption
    from memeguard.features.text_removal import remove_text

    for seed, caption in enumerate(CAPTIONS):
        image, boxes = rendered_meme(caption, seed)
        assert len(set(read_caption(image).split()) & set(caption.split())) >= 5  # OCR reads it first
        cleaned = remove_text(image, dilation=4)
        assert len(read_caption(cleaned).split()) <= 1
        near = text_mask((image.height, image.width), [box_quad(box) for box in boxes], dilation=16)
        far = near == 0
        assert far.mean() > 0.3  # a real share of the picture is far from the caption
        np.testing.assert_array_equal(np.asarray(cleaned)[far], np.asarray(image)[far])


@pytest.mark.slow
def test_remove_text_through_the_cli_is_repeated_by_the_scorer(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from memeguard.cli import app
    from memeguard.features.store import FeatureStore
    from memeguard.serving.scorer import build_extractor, round_to_dtype, spec_from_meta

    data = tmp_path / "hm"
    (data / "img").mkdir(parents=True)
    lines = []
    for seed, caption in enumerate(CAPTIONS):
        image, _ = rendered_meme(caption, seed)
        image.save(data / "img" / f"{seed + 1:05d}.png")
        lines.append(
            json.dumps({"id": seed + 1, "img": f"img/{seed + 1:05d}.png", "text": caption, "label": 0})
        )
    (data / "train.jsonl").write_text("\n".join(lines) + "\n")
    runner = CliRunner()
    args = ["features", "extract", str(data), str(tmp_path / "clean"), "--extractor", "grid", "--remove-text"]
    result = runner.invoke(app, [*args, "--remove-text-dilation", "5"])
    assert result.exit_code == 0, result.output
    store = FeatureStore.open(tmp_path / "clean")
    assert (store.meta["remove_text"], store.meta["remove_text_dilation"]) == (True, 5)
    spec = spec_from_meta(store.meta, "clean/meta.json")
    rebuilt = build_extractor(spec, ["default"], "cpu")
    assert isinstance(rebuilt, TextRemovingExtractor) and rebuilt.dilation == 5
    plain = make_extractor("grid")
    for meme_id in (1, 2):
        image = Image.open(data / "img" / f"{meme_id:05d}.png").convert("RGB")
        fresh = round_to_dtype(rebuilt.extract([image], [meme_id], [""])["default"][0], spec.dtype)
        np.testing.assert_array_equal(fresh.features, store[meme_id].features)  # bit for bit
        with_text = round_to_dtype(plain.extract([image], [meme_id], [""])["default"][0], spec.dtype)
        assert not np.array_equal(with_text.features, store[meme_id].features)
    refused = runner.invoke(
        app, ["features", "extract", str(data), str(tmp_path / "x"), "--remove-text-dilation", "3"]
    )
    assert refused.exit_code != 0


def test_remove_text_changes_the_feature_stage_key(hm_dir: Path, tmp_path: Path) -> None:
    from memeguard.pipeline.recipe import load_recipe
    from memeguard.pipeline.runner import RecipeRunner

    keys = []
    for params in ("{}", "{remove_text: true}", "{remove_text: true, remove_text_dilation: 8}"):
        path = tmp_path / "r.yaml"
        path.write_text(
            "name: t\nfeatures:\n  grid: {extractor: grid, params: " + params + "}\n"
            "models:\n  - name: V\n    model: visualbert-tiny\n    features: grid\n    train: {epochs: 1}\n"
        )
        runner = RecipeRunner(load_recipe(path), hm_dir, tmp_path / "out")
        runner.build()
        keys.append(next(s.key for s in runner.stages if s.kind == "features"))
    assert len(set(keys)) == 3
