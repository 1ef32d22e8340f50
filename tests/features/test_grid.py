"""GridExtractor: exact values on simple images; colour, shape and position are recoverable."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image, ImageDraw
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from memeguard.errors import ConfigError
from memeguard.features.extractor import Extractor
from memeguard.features.grid import FEATURE_NAMES, GRID_FEATURE_DIM, GridExtractor

COL = {name: i for i, name in enumerate(FEATURE_NAMES)}


def cols(prefix: str) -> list[int]:
    return [i for name, i in COL.items() if name.startswith(prefix)]


def test_protocol_dims_and_meta() -> None:
    grid = GridExtractor()
    assert isinstance(grid, Extractor)
    assert GRID_FEATURE_DIM == 42 <= 128 and grid.num_regions == 36 + 4 + 1
    assert grid.variants() == ["default"]
    image = Image.new("RGB", (50, 30), (10, 20, 30))
    out = grid.extract([image, image], [3, 4], ["a", "b"])
    assert list(out) == ["default"] and [r.meme_id for r in out["default"]] == [3, 4]
    record = out["default"][0]
    assert record.features.shape == (41, 42) and record.features.dtype == np.float32
    assert record.image_size == (30, 50)
    meta = grid.meta()
    assert meta["feature_dim"] == 42 and meta["weights"] is None
    json.dumps(meta)


def test_boxes_are_cell_rectangles_in_original_pixels() -> None:
    record = GridExtractor(levels=(6, 2, 1)).extract_one(Image.new("RGB", (180, 120)), 1)
    boxes = record.boxes
    np.testing.assert_allclose(boxes[0], [0, 0, 30, 20])
    np.testing.assert_allclose(boxes[6 * 1 + 2], [60, 20, 90, 40])  # row 1, column 2
    np.testing.assert_allclose(boxes[35], [150, 100, 180, 120])
    np.testing.assert_allclose(
        boxes[36:40], [[0, 0, 90, 60], [90, 0, 180, 60], [0, 60, 90, 120], [90, 60, 180, 120]]
    )
    np.testing.assert_allclose(boxes[40], [0, 0, 180, 120])
    # position features restate the boxes as fractions
    np.testing.assert_allclose(
        record.features[7, cols("center_x") + cols("center_y")], [1.5 / 6, 1.5 / 6], atol=1e-6
    )
    np.testing.assert_allclose(record.features[40, COL["width"]], 1.0)


def test_exact_values_on_a_red_blue_image() -> None:
    pixels = np.zeros((120, 180, 3), np.uint8)
    pixels[:, :90] = (255, 0, 0)
    pixels[:, 90:] = (0, 0, 255)
    features = GridExtractor().extract_one(Image.fromarray(pixels), 1).features
    red, blue, full = features[0], features[5], features[40]
    np.testing.assert_allclose(red[cols("rgb_mean")], [1, 0, 0], atol=1e-6)
    np.testing.assert_allclose(red[cols("rgb_std")], 0, atol=1e-3)
    np.testing.assert_allclose(red[[COL["sat_mean"], COL["val_mean"]]], [1, 1], atol=1e-6)
    np.testing.assert_allclose(red[[COL["hue_cos"], COL["hue_sin"]]], [1, 0], atol=1e-6)
    assert red[COL["hue_hist_000"]] == 1 and red[cols("hue_hist")].sum() == 1
    assert blue[COL["hue_hist_240"]] == 1
    angle = 2 * math.pi * 170 / 255  # PIL stores hue in 0..255
    np.testing.assert_allclose(
        blue[[COL["hue_cos"], COL["hue_sin"]]], [math.cos(angle), math.sin(angle)], atol=1e-4
    )
    np.testing.assert_allclose(red[cols("edge")], 0, atol=1e-6)
    np.testing.assert_allclose(red[cols("rgb_contrast")], [0.5, 0, -0.5], atol=0.01)
    # The colour boundary is a vertical edge: its gradient points along x (orientation 0).
    boundary = features[2]
    assert boundary[COL["edge_mean"]] > 0.003 and boundary[COL["edge_strong"]] > 0
    assert boundary[COL["orient_000"]] > 0.99
    np.testing.assert_allclose(full[cols("rgb_mean")], [0.5, 0, 0.5], atol=0.01)
    np.testing.assert_allclose(full[cols("rgb_std")], [0.5, 0, 0.5], atol=0.01)


COLOURS = {"red": (220, 30, 30), "green": (30, 190, 40), "blue": (40, 60, 230), "yellow": (235, 220, 30)}
SHAPES = ("square", "circle", "triangle")


def synthetic(colour: str, shape: str, rng: np.random.Generator) -> tuple[Image.Image, tuple[float, float]]:
    width, height = int(rng.integers(200, 320)), int(rng.integers(200, 320))
    noise = rng.normal(128, 6, (height, width, 1)).clip(0, 255).astype(np.uint8).repeat(3, axis=2)
    image = Image.fromarray(noise)
    radius = 0.18 * min(width, height)
    cx, cy = rng.uniform(radius + 2, width - radius - 2), rng.uniform(radius + 2, height - radius - 2)
    draw = ImageDraw.Draw(image)
    fill = COLOURS[colour]
    if shape == "square":
        draw.rectangle([cx - radius, cy - radius, cx + radius, cy + radius], fill=fill)
    elif shape == "circle":
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=fill)
    else:
        draw.polygon([(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)], fill=fill)
    return image, (cx / width, cy / height)


@pytest.fixture(scope="module")
def dataset() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    grid = GridExtractor()
    feats, colours, shapes, centres = [], [], [], []
    for repeat in range(8):
        for c, colour in enumerate(COLOURS):
            for s, shape in enumerate(SHAPES):
                image, centre = synthetic(colour, shape, rng)
                feats.append(grid.extract_one(image, repeat).features)
                colours.append(c)
                shapes.append(s)
                centres.append(centre)
    return np.stack(feats), np.array(colours), np.array(shapes), np.array(centres)


def _held_out_accuracy(x: np.ndarray, y: np.ndarray) -> float:
    half = len(y) // 2
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    model.fit(x[:half], y[:half])
    return float((model.predict(x[half:]) == y[half:]).mean())


def test_colour_is_recoverable(dataset) -> None:
    feats, colours, _, _ = dataset
    whole_image = feats[:, 40]  # position-free: the full-image region
    assert _held_out_accuracy(whole_image[:, cols("hue") + cols("rgb_mean")], colours) >= 0.95


def test_shape_is_recoverable(dataset) -> None:
    feats, _, shapes, _ = dataset
    whole_image = feats[:, 40]
    accuracy = _held_out_accuracy(whole_image[:, cols("orient") + cols("edge")], shapes)
    assert accuracy >= 0.85, accuracy


def test_position_is_recoverable(dataset) -> None:
    feats, _, _, centres = dataset
    cells = feats[:, :36]
    contrast = np.linalg.norm(cells[:, :, cols("rgb_contrast")], axis=2)
    weights = np.where(contrast > 0.5 * contrast.max(axis=1, keepdims=True), contrast, 0.0)
    xy = cells[:, :, [COL["center_x"], COL["center_y"]]]
    predicted = (weights[..., None] * xy).sum(axis=1) / weights.sum(axis=1, keepdims=True)
    error = np.abs(predicted - centres).max(axis=1)
    assert (error < 0.1).mean() >= 0.9, np.sort(error)[-5:]


def test_bad_levels_rejected() -> None:
    with pytest.raises(ValueError, match="positive"):
        GridExtractor(levels=(0,))
    assert GridExtractor(levels=(4,)).extract_one(Image.new("RGB", (33, 17)), 1).features.shape == (16, 42)


# ------------------------------------------------------------------ the fast path keeps every bit


def _reference_features(grid: GridExtractor, image: Image.Image) -> np.ndarray:
    """The features computed the plain way (every statistic, counts included, as a float32 channel
    averaged by ``ndarray.mean``; the steepest channel by argmax): what every stored grid feature was made
    with before the fast path, so trained runs and the demo's stored features depend on these bits."""
    from scipy import ndimage

    width, height = image.size
    work_w, work_h = grid.work_size(width, height)
    small = image.convert("RGB").resize(
        (work_w, work_h), Image.Resampling.BILINEAR, reducing_gap=grid.reducing_gap
    )
    rgb = np.asarray(small, dtype=np.float32) / 255.0
    hsv = np.asarray(small.convert("HSV"), dtype=np.float32) / 255.0
    gx = np.stack([ndimage.sobel(rgb[..., c], axis=1) for c in range(3)])
    gy = np.stack([ndimage.sobel(rgb[..., c], axis=0) for c in range(3)])
    magnitudes = np.hypot(gx, gy)
    steepest = magnitudes.argmax(axis=0)[None]
    gx, gy = (np.take_along_axis(g, steepest, axis=0)[0] for g in (gx, gy))
    magnitude = np.take_along_axis(magnitudes, steepest, axis=0)[0] / 4.0
    orient = np.rint(np.mod(np.arctan2(gy, gx), math.pi) / (math.pi / 8)).astype(np.int64) % 8
    strong = magnitude > 0.1
    chromatic = (hsv[..., 1] > 0.25) & (hsv[..., 2] > 0.2)
    hue_bin = np.minimum((hsv[..., 0] * 12).astype(np.int64), 11)
    hue = hsv[..., 0] * (2 * math.pi)
    channels = [
        rgb,
        rgb * rgb,
        hsv[..., 1:],
        hsv[..., 1:] ** 2,
        np.stack([np.cos(hue), np.sin(hue)], axis=-1) * hsv[..., 1:2],
        (np.arange(12) == hue_bin[..., None]) * chromatic[..., None],
        np.stack([magnitude, magnitude * magnitude, strong], axis=-1),
        (np.arange(8) == orient[..., None]) * (magnitude * strong)[..., None],
    ]
    pixels = np.concatenate([c.astype(np.float32) for c in channels], axis=-1)
    rows = []
    for cells in grid.levels:
        blocks = pixels.reshape(cells, work_h // cells, cells, work_w // cells, -1).mean(axis=(1, 3))
        rows.append(blocks.reshape(cells * cells, -1))
    means = np.concatenate(rows)
    image_rgb = pixels[..., :3].reshape(-1, 3).mean(axis=0)
    record = grid.extract_one(image, 0)  # boxes and positions are plain arithmetic: taken as they are
    std = lambda mean, square: np.sqrt(np.maximum(square - mean * mean, 0.0))  # noqa: E731
    orient_mean = means[:, 27:35] / np.maximum(means[:, 27:35].sum(axis=1, keepdims=True), 1e-6)
    parts = [
        means[:, 0:3],
        std(means[:, 0:3], means[:, 3:6]),
        means[:, 6:8],
        std(means[:, 6:8], means[:, 8:10]),
        means[:, 10:24],
        means[:, 24:25],
        std(means[:, 24:25], means[:, 25:26]),
        means[:, 26:27],
        orient_mean,
        means[:, 0:3] - image_rgb[None, :],
        record.features[:, -4:],
    ]
    return np.concatenate(parts, axis=1).astype(np.float32)


def _varied_image(width: int, height: int, mode: str, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8))
    draw = ImageDraw.Draw(image)
    draw.ellipse((width // 4, height // 4, width // 2 + 1, height // 2 + 1), fill=(200, 30, 40))
    draw.rectangle((0, 0, width // 3, height // 5), fill=(30, 200, 90))
    return image.convert(mode)


VARIED = [(550, 500, "RGB"), (600, 400, "L"), (37, 900, "RGBA"), (1000, 123, "P"), (1, 1, "RGB")]
VARIED += [(64, 64, "CMYK"), (333, 222, "LA"), (5000, 40, "RGB")]


@pytest.mark.parametrize(
    "levels, cell_px, gap",
    [((6, 2, 1), 32, None), ((4,), 8, None), ((3, 2), 16, None), ((5, 1), 3, None)]
    + [((1,), 8, 2.0), ((2, 1), 8, 1.0)],
)
def test_features_are_bit_identical_to_the_plain_computation(
    levels: tuple[int, ...], cell_px: int, gap: float | None
) -> None:
    grid = GridExtractor(levels=levels, cell_px=cell_px, reducing_gap=gap)
    for k, (width, height, mode) in enumerate(VARIED):
        image = _varied_image(width, height, mode, k)
        got = grid.extract_one(image, 0).features
        assert got.tobytes() == _reference_features(grid, image).tobytes(), (levels, width, height, mode)


def test_a_batch_gives_each_image_its_one_image_bytes() -> None:
    grid = GridExtractor()
    images = [_varied_image(w, h, mode, k) for k, (w, h, mode) in enumerate(VARIED)]
    batch = grid.extract(images, list(range(10, 10 + len(images))))["default"]
    assert [r.meme_id for r in batch] == list(range(10, 10 + len(images)))
    for image, record in zip(images, batch, strict=True):
        alone = grid.extract_one(image, record.meme_id)
        assert record.features.tobytes() == alone.features.tobytes()
        assert record.boxes.tobytes() == alone.boxes.tobytes() and record.image_size == alone.image_size


def test_reducing_gap_is_a_recorded_parameter_that_changes_only_the_working_copy() -> None:
    """Stores made without it keep their meta (no key); with it, the meta records it and the scorer's
    rebuilt extractor (``from_meta``) makes the same bytes; the features differ from the one-pass resize."""
    from memeguard.features.factory import make_extractor

    plain, gapped = (
        GridExtractor(levels=(1,), cell_px=8),
        GridExtractor(levels=(1,), cell_px=8, reducing_gap=2),
    )
    assert plain.meta()["parameters"] == {"levels": [1], "cell_px": 8, "work_side": 8}
    assert gapped.meta()["parameters"]["reducing_gap"] == 2.0
    assert GridExtractor.from_meta(plain.meta(), "m", "cpu") == {"levels": [1], "cell_px": 8}
    rebuilt = make_extractor("grid", **GridExtractor.from_meta(gapped.meta(), "m", "cpu"))
    image = _varied_image(400, 300, "RGB", 3)
    got = rebuilt.extract_one(image, 0).features
    assert got.tobytes() == gapped.extract_one(image, 0).features.tobytes()
    assert got.tobytes() != plain.extract_one(image, 0).features.tobytes()
    np.testing.assert_allclose(
        got[:, cols("rgb_mean")], plain.extract_one(image, 0).features[:, cols("rgb_mean")], atol=0.02
    )
    for bad in (0.5, math.inf, math.nan):  # a store records it in JSON, which has no inf or nan
        with pytest.raises(ValueError, match="reducing_gap"):
            GridExtractor(reducing_gap=bad)
    with pytest.raises(ConfigError, match="reducing_gap"):
        make_extractor("grid", reducing_gap=math.inf)


@pytest.mark.parametrize("levels, cell_px, gap", [((1,), 8, 2.0), ((2, 1), 8, None), ((3, 2), 4, None)])
def test_stacked_small_copies_give_each_image_its_one_image_bytes(
    levels: tuple[int, ...], cell_px: int, gap: float | None
) -> None:
    """Small working copies of one size are featurised as one stack (``_stacks``): every image still gets
    exactly its one-image bytes, in its own place, whatever the sizes around it."""
    grid = GridExtractor(levels=levels, cell_px=cell_px, reducing_gap=gap)
    sizes = [(300, 200), (301, 199), (200, 300), (300, 200), (90, 60), (64, 64), (300, 200), (1000, 30)] * 3
    images = [_varied_image(w, h, "RGB", k) for k, (w, h) in enumerate(sizes)]
    stacks = grid._stacks(images)
    assert max(len(stack) for stack in stacks) > 2  # the stacked path is what this test exercises
    assert sorted(k for stack in stacks for k in stack) == list(range(len(images)))
    batch = grid.extract(images, list(range(100, 100 + len(images))))["default"]
    for k, (image, record) in enumerate(zip(images, batch, strict=True)):
        alone = grid.extract_one(image, 100 + k)
        assert record.meme_id == 100 + k and record.image_size == alone.image_size
        assert record.features.tobytes() == alone.features.tobytes(), (levels, k)
        assert record.features.tobytes() == _reference_features(grid, image).tobytes(), (levels, k)
        assert record.boxes.tobytes() == alone.boxes.tobytes()
