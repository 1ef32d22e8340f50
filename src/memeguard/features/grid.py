"""Grid "regions": weight-free region features computed from an image grid.

Why: BUTD weights cannot be downloaded here, yet every model needs regions to train on. A grid of
cells with colour, hue, edge and position statistics is enough for a model to learn which colour
a dominant shape has, roughly what its outline looks like, and where it is — exactly what the
synthetic dataset encodes. It costs a few milliseconds per image on one CPU core.

Regions (default ``levels=(6, 2, 1)``): the 36 cells of a 6x6 grid, then the 4 quadrants, then the
whole image — 41 rows. Boxes are the cell rectangles in ORIGINAL image pixels. Each row has
``GRID_FEATURE_DIM`` = 42 values, in the order of ``FEATURE_NAMES``:

====================  ===  =====================================================================
rgb_mean / rgb_std     6   per-channel mean and std of R, G, B in [0, 1]
sat/val mean, std      4   HSV saturation and value statistics
hue_vec                2   mean of saturation * (cos hue, sin hue): the region's dominant hue
hue_hist              12   fraction of region pixels that are chromatic (s > .25, v > .2) per 30° hue bin
edge_mean/std/strong   3   colour Sobel gradient magnitude (steepest RGB channel): mean, std, fraction > 0.1
orient_hist            8   orientation of strong edges (> 0.1) in 22.5° bins (0, 22, 45, ... 157), magnitude-
                           weighted, sums to 1 (all 0 when the region has no strong edge)
rgb_contrast           3   region rgb mean minus whole-image rgb mean (what stands out)
position               4   box centre x, y and width, height as fractions of the image
====================  ===  =====================================================================
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Annotated, Any

import numpy as np
from PIL import Image
from pydantic import Field
from scipy import ndimage

from memeguard.errors import ConfigError
from memeguard.features.extractor import BaseExtractor, ExtractorOptions, ExtractorParams
from memeguard.features.record import RegionRecord
from memeguard.threads import POOL_THREADS, map_in_threads

FEATURE_NAMES: tuple[str, ...] = (
    *(f"rgb_mean_{c}" for c in "rgb"),
    *(f"rgb_std_{c}" for c in "rgb"),
    "sat_mean",
    "val_mean",
    "sat_std",
    "val_std",
    "hue_cos",
    "hue_sin",
    *(f"hue_hist_{i * 30:03d}" for i in range(12)),
    "edge_mean",
    "edge_std",
    "edge_strong",
    *(f"orient_{i * 45 // 2:03d}" for i in range(8)),
    *(f"rgb_contrast_{c}" for c in "rgb"),
    "center_x",
    "center_y",
    "width",
    "height",
)
GRID_FEATURE_DIM = len(FEATURE_NAMES)

HUE_BINS = 12
ORIENT_BINS = 8
CHROMA_SAT, CHROMA_VAL = 0.25, 0.2
STRONG_EDGE = 0.1

# Per-pixel float channels whose region means give the real-valued statistics above.
_RGB, _RGB2 = slice(0, 3), slice(3, 6)
_SV, _SV2 = slice(6, 8), slice(8, 10)
_HUEVEC = slice(10, 12)
_EDGE = 12  # magnitude, magnitude²
_ORIENT = slice(_EDGE + 2, _EDGE + 2 + ORIENT_BINS)
_NUM_CHANNELS = _EDGE + 2 + ORIENT_BINS
# The 0/1 statistics (hue histogram, strong-edge fraction) are counted as integers instead: a float32 sum
# of zeros and ones is the exact count, so counting gives the same bits for a third of the work.
_NOT_CHROMATIC = HUE_BINS  # hue code of a pixel outside every hue bin

# Images of one ``extract`` call are featurised in parallel threads (memeguard.threads): PIL and most
# numpy/scipy work here release the GIL, so a batch uses every core while each image's features stay exactly
# the one-image ones. Images with small working copies of one size are featurised as one stack
# (``_STACK_PIXELS``).


def _working_copies(
    images: Sequence[Image.Image], size: tuple[int, int], reducing_gap: float | None
) -> tuple[np.ndarray, np.ndarray]:
    """The images resized to ``size`` (w, h) as RGB and HSV in [0, 1], [images, height, width, 3] each.
    ``reducing_gap``: PIL's two-step resize (a box ``reduce`` to within that factor of ``size``, then
    bilinear), see ``GridParams``."""
    smalls = [
        (image if image.mode == "RGB" else image.convert("RGB")).resize(  # convert() would copy RGB
            size, Image.Resampling.BILINEAR, reducing_gap=reducing_gap
        )
        for image in images
    ]
    # uint8 -> float32 is exact, so converting the stack equals converting each image
    rgb = np.stack([np.asarray(small) for small in smalls]).astype(np.float32) / 255.0
    hsv = np.stack([np.asarray(small.convert("HSV")) for small in smalls]).astype(np.float32) / 255.0
    return rgb, hsv


def _pixel_channels(rgb: np.ndarray, hsv: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-pixel quantities of working copies [images, height, width, 3]: the float channels
    [images, height, width, _NUM_CHANNELS], each pixel's hue code (its hue bin, or ``_NOT_CHROMATIC``) and
    whether it lies on a strong edge [images, height, width]. Every operation is per pixel (or along one
    image's rows and columns), so an image's values do not depend on the others in the stack."""
    hue, sat_val = hsv[..., 0] * (2 * math.pi), hsv[..., 1:]
    chromatic = (hsv[..., 1] > CHROMA_SAT) & (hsv[..., 2] > CHROMA_VAL)
    hue_bin = np.minimum((hsv[..., 0] * HUE_BINS).astype(np.int64), HUE_BINS - 1)
    hue_code = np.where(chromatic, hue_bin, _NOT_CHROMATIC)

    gx, gy, magnitude = _steepest_gradient(rgb)
    angle = np.mod(np.arctan2(gy, gx), math.pi)
    orient_bin = np.rint(angle / (math.pi / ORIENT_BINS)).astype(np.int64) % ORIENT_BINS
    # Only strong edges vote: faint texture/noise would otherwise drown an object's outline.
    strong = magnitude > STRONG_EDGE

    channels = np.zeros((*rgb.shape[:-1], _NUM_CHANNELS), dtype=np.float32)
    # Products are written straight into their channels (out=): the same float32 operations, no temporaries.
    channels[..., _RGB] = rgb
    np.multiply(rgb, rgb, out=channels[..., _RGB2])
    channels[..., _SV] = sat_val
    np.multiply(sat_val, sat_val, out=channels[..., _SV2])
    np.multiply(np.cos(hue), hsv[..., 1], out=channels[..., _HUEVEC.start])
    np.multiply(np.sin(hue), hsv[..., 1], out=channels[..., _HUEVEC.start + 1])
    channels[..., _EDGE] = magnitude
    np.multiply(magnitude, magnitude, out=channels[..., _EDGE + 1])
    # One-hot histogram: write each pixel's single non-zero entry in place (the assignment put_along_axis
    # makes, indexed directly: it builds its index arrays in Python, a cost that dominates small copies).
    flat = channels.reshape(-1, _NUM_CHANNELS)
    flat[_pixel_rows(flat.shape[0]), _ORIENT.start + orient_bin.ravel()] = (magnitude * strong).ravel()
    return channels, hue_code, strong


@functools.lru_cache(maxsize=256)
def _pixel_rows(count: int) -> np.ndarray:
    """``arange(count)``, kept per working-copy size (read-only): the row index of every pixel."""
    rows = np.arange(count)
    rows.setflags(write=False)
    return rows


def _steepest_gradient(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Colour gradient of [..., height, width, 3]: per pixel, the Sobel (gx, gy, magnitude / 4) of the RGB
    channel with the steepest gradient (the first on ties). A grey-level gradient would miss edges between
    colours of equal brightness (green on mid-grey). Selected with two comparisons rather than argmax +
    take_along_axis: the same values at a third of the cost."""
    # ndimage.sobel per channel, all three channels in one call: derivative along one axis, [1, 2, 1]
    # smoothing along the other (not along the channels), the same arithmetic in the same order.
    gx = ndimage.correlate1d(ndimage.correlate1d(rgb, [-1, 0, 1], axis=-2), [1, 2, 1], axis=-3)
    gy = ndimage.correlate1d(ndimage.correlate1d(rgb, [-1, 0, 1], axis=-3), [1, 2, 1], axis=-2)
    magnitudes = np.hypot(gx, gy)
    m0, m1, m2 = magnitudes[..., 0], magnitudes[..., 1], magnitudes[..., 2]
    pick1 = m1 > m0
    best = np.where(pick1, m1, m0)
    pick2 = m2 > best
    select_x = np.where(pick2, gx[..., 2], np.where(pick1, gx[..., 1], gx[..., 0]))
    select_y = np.where(pick2, gy[..., 2], np.where(pick1, gy[..., 1], gy[..., 0]))
    return select_x, select_y, np.where(pick2, m2, best) / 4.0  # Sobel's gain is 4


def _numpy_mean(sums: np.ndarray, count: int) -> np.ndarray:
    """``sums / count`` exactly as ``ndarray.mean`` divides its float32 sum (by an intp, in place)."""
    return np.true_divide(sums, np.intp(count), out=sums, casting="unsafe")


def _block_means(channels: np.ndarray, cells: int) -> np.ndarray:
    """Mean of every channel over each cell of a cells x cells grid: [images, H, W, C] -> [images, cells *
    cells, C], row-major.

    Bit for bit ``channels[k].reshape(cells, h, cells, w, C).mean(axis=(1, 3))`` for each image k: that
    sums each cell's pixels one after the other in row-major order, which a contiguous (images, h, w, cell,
    cell, C) copy summed over its axes 1 and 2 does too, with one long inner loop instead of one 22-value
    loop per pixel.
    """
    images, height, width = channels.shape[:3]
    shape = (images, cells, height // cells, cells, width // cells, -1)
    blocks = channels.reshape(shape).transpose(0, 2, 4, 1, 3, 5)
    sums = np.ascontiguousarray(blocks).sum(axis=(1, 2))
    return _numpy_mean(sums, (height // cells) * (width // cells)).reshape(images, cells * cells, -1)


@functools.lru_cache(maxsize=256)
def _cell_index(height: int, width: int, cells: int) -> np.ndarray:
    """[height * width] row-major index of the cell each working-copy pixel falls in. Cached (read-only):
    working copies come in few sizes, and rebuilding it per image is a fixed cost that small copies feel."""
    rows = np.arange(height) // (height // cells)
    columns = np.arange(width) // (width // cells)
    index = (rows[:, None] * cells + columns[None, :]).ravel()
    index.setflags(write=False)
    return index


def _count_means(hue_code: np.ndarray, strong: np.ndarray, cells: int) -> np.ndarray:
    """[images, cells * cells, HUE_BINS + 1]: per cell, the fraction of pixels in each hue bin, then the
    fraction on strong edges. Integer counts divided like ``_block_means`` divides its float sums: the same
    bits."""
    images, height, width = hue_code.shape
    regions = cells * cells
    cell = (np.arange(images)[:, None] * regions + _cell_index(height, width, cells)[None, :]).ravel()
    rows = images * regions
    hue = np.bincount(cell * (HUE_BINS + 1) + hue_code.ravel(), minlength=rows * (HUE_BINS + 1))
    edges = np.bincount(cell * 2 + strong.ravel(), minlength=rows * 2)
    counts = np.concatenate([hue.reshape(rows, HUE_BINS + 1)[:, :HUE_BINS], edges.reshape(rows, 2)[:, 1:]], 1)
    means = _numpy_mean(counts.astype(np.float32), (height // cells) * (width // cells))
    return means.reshape(images, regions, HUE_BINS + 1)


def _cell_boxes(cells: int, height: int, width: int) -> np.ndarray:
    """Pixel (x1, y1, x2, y2) of each cell, row-major, matching ``_block_means``."""
    xs = np.linspace(0.0, width, cells + 1, dtype=np.float64)
    ys = np.linspace(0.0, height, cells + 1, dtype=np.float64)
    grid_y, grid_x = np.meshgrid(np.arange(cells), np.arange(cells), indexing="ij")
    gx, gy = grid_x.ravel(), grid_y.ravel()
    return np.stack([xs[gx], ys[gy], xs[gx + 1], ys[gy + 1]], axis=1).astype(np.float32)


@functools.lru_cache(maxsize=1024)
def _geometry(levels: tuple[int, ...], height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(boxes, position features) of every region of an image of this size, cached (read-only): they depend
    on the size alone, and ``linspace`` costs more than a small working copy's statistics."""
    boxes = np.concatenate([_cell_boxes(level, height, width) for level in levels], axis=0)
    position = np.stack(
        [
            (boxes[:, 0] + boxes[:, 2]) / (2 * width),
            (boxes[:, 1] + boxes[:, 3]) / (2 * height),
            (boxes[:, 2] - boxes[:, 0]) / width,
            (boxes[:, 3] - boxes[:, 1]) / height,
        ],
        axis=1,
    )
    boxes.setflags(write=False)
    position.setflags(write=False)
    return boxes, position


def _region_features(
    means: np.ndarray, counts: np.ndarray, image_mean_rgb: np.ndarray, position: np.ndarray
) -> np.ndarray:
    """Per-region channel means and count fractions [rows, ...] -> the documented feature rows;
    ``image_mean_rgb`` [rows, 3] is the mean colour of each row's image. Every operation is per row."""
    rgb = means[:, _RGB]
    rgb_std = np.sqrt(np.maximum(means[:, _RGB2] - rgb * rgb, 0.0))
    sv = means[:, _SV]
    sv_std = np.sqrt(np.maximum(means[:, _SV2] - sv * sv, 0.0))
    edge = means[:, _EDGE]
    edge_std = np.sqrt(np.maximum(means[:, _EDGE + 1] - edge * edge, 0.0))
    orient = means[:, _ORIENT]
    orient = orient / np.maximum(orient.sum(axis=1, keepdims=True), 1e-6)
    parts = [
        rgb,
        rgb_std,
        sv,
        sv_std,
        means[:, _HUEVEC],
        counts[:, :HUE_BINS],
        edge[:, None],
        edge_std[:, None],
        counts[:, HUE_BINS:],
        orient,
        rgb - image_mean_rgb,
        position,
    ]
    return np.concatenate(parts, axis=1).astype(np.float32)


# Working-copy pixels featurised as one stack: small copies (a student's 8-px grid) share one pass of numpy
# calls, whose fixed cost would otherwise be most of the work; the default 192-px copies stay one per pass.
_STACK_PIXELS = 1 << 14


class GridParams(ExtractorParams):
    """``make_extractor("grid", **params)`` / recipe ``params:``."""

    # Cells per side of each grid level.
    levels: tuple[Annotated[int, Field(ge=1)], ...] = Field((6, 2, 1), min_length=1)
    cell_px: int = Field(32, ge=1)  # working-copy pixels per side of a finest-level cell
    batch_size: int = Field(32, ge=1)
    # The working copy is made by PIL's two-step resize: a box ``Image.reduce`` to within this factor of
    # its size, then bilinear (``Image.resize(reducing_gap=...)``). None: one bilinear pass over every
    # original pixel, the default and what existing stores were made with. A coarse copy (a student's
    # 8-px grid) costs a third with 2.0, for features that are close but not the same bits: a recorded
    # parameter, so a store and the scorer that rebuilds its extractor agree.
    reducing_gap: float | None = Field(None, ge=1.0, allow_inf_nan=False)  # recorded in JSON: finite


class GridExtractor(BaseExtractor):
    """Weight-free grid regions (see the module docstring for the 42 features)."""

    name = "grid"
    Params = GridParams

    def __init__(
        self,
        levels: Sequence[int] = (6, 2, 1),
        cell_px: int = 32,
        batch_size: int = 32,
        reducing_gap: float | None = None,
    ) -> None:
        levels = tuple(int(level) for level in levels)
        if not levels or any(level < 1 for level in levels):
            raise ValueError(f"grid levels must be positive integers, got {levels}")
        self.levels = levels
        self.batch_size = batch_size
        self._lcm = math.lcm(*levels)
        # The short side of the working copy: every level divides it, ~cell_px pixels per finest cell.
        self.side = max(1, math.ceil(max(levels) * cell_px / self._lcm)) * self._lcm
        self.cell_px = cell_px
        if reducing_gap is not None and not 1.0 <= reducing_gap < math.inf:
            raise ValueError(f"grid reducing_gap must be finite and >= 1 (or None), got {reducing_gap}")
        self.reducing_gap = None if reducing_gap is None else float(reducing_gap)

    @classmethod
    def create(cls, options: ExtractorOptions) -> GridExtractor:
        return cls(**dict(options.params))  # numpy on the CPU: weights, variants and device do not apply

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any], source: str, device: str) -> dict[str, Any]:
        params = meta.get("parameters") or {}
        if "levels" not in params or "cell_px" not in params:
            raise ConfigError(f"{source}: grid features without their parameters (levels, cell_px)")
        kwargs: dict[str, Any] = {
            "levels": [int(v) for v in params["levels"]],
            "cell_px": int(params["cell_px"]),
        }
        if params.get("reducing_gap") is not None:  # absent from stores made before it existed: None
            kwargs["reducing_gap"] = float(params["reducing_gap"])
        return kwargs

    def work_size(self, width: int, height: int) -> tuple[int, int]:
        """(w, h) of the working copy: short side ``side``, aspect kept (angles stay true), long side
        rounded to a multiple every level divides and capped at 4x the short side."""
        short, long = min(width, height), max(width, height)
        long_work = min(
            4 * self.side, max(self.side, round(self.side * long / short / self._lcm) * self._lcm)
        )
        return (long_work, self.side) if width >= height else (self.side, long_work)

    @property
    def num_regions(self) -> int:
        return sum(level * level for level in self.levels)

    @property
    def feature_dim(self) -> int:
        return GRID_FEATURE_DIM

    def variants(self) -> list[str]:
        return ["default"]

    def extract_one(self, image: Image.Image, meme_id: int) -> RegionRecord:
        return self._extract_stack([image], [meme_id])[0]

    def _extract_stack(self, images: Sequence[Image.Image], meme_ids: Sequence[int]) -> list[RegionRecord]:
        """Records of images whose working copies have one size, computed as one stack; each image's
        bytes are exactly its one-image ones (tests/features/test_grid.py checks it)."""
        count = len(images)
        rgb, hsv = _working_copies(images, self.work_size(*images[0].size), self.reducing_gap)
        channels, hue_code, strong = _pixel_channels(rgb, hsv)
        means = [_block_means(channels, level) for level in self.levels]
        if 1 in self.levels:  # the whole-image level sums the same pixels in the same order
            image_mean_rgb = means[self.levels.index(1)][:, 0, _RGB]
        else:
            image_mean_rgb = np.stack([image[..., _RGB].reshape(-1, 3).mean(axis=0) for image in channels])
        regions = self.num_regions
        geometry = [_geometry(self.levels, image.size[1], image.size[0]) for image in images]
        features = _region_features(
            np.concatenate(means, axis=1).reshape(count * regions, -1),
            np.concatenate([_count_means(hue_code, strong, level) for level in self.levels], axis=1).reshape(
                count * regions, -1
            ),
            np.repeat(image_mean_rgb, regions, axis=0),
            np.concatenate([position for _, position in geometry], axis=0),
        )
        return [
            RegionRecord(
                meme_id=int(meme_id),
                features=features[k * regions : (k + 1) * regions],
                boxes=boxes.copy(),
                image_size=(image.size[1], image.size[0]),
            )
            for k, (image, meme_id, (boxes, _)) in enumerate(zip(images, meme_ids, geometry, strict=True))
        ]

    def _stacks(self, images: Sequence[Image.Image]) -> list[list[int]]:
        """Indices of the images featurised together: one working-copy size, at most ``_STACK_PIXELS``
        working pixels, and no more than a thread's share of the batch (the stacks run in parallel)."""
        groups: dict[tuple[int, int], list[int]] = {}
        for k, image in enumerate(images):
            groups.setdefault(self.work_size(*image.size), []).append(k)
        share = math.ceil(len(images) / POOL_THREADS)
        stacks = []
        for (width, height), members in groups.items():
            step = max(1, min(share, _STACK_PIXELS // (width * height)))
            stacks.extend(members[start : start + step] for start in range(0, len(members), step))
        return stacks

    def extract(
        self, images: Sequence[Image.Image], meme_ids: Sequence[int], texts: Sequence[str] | None = None
    ) -> dict[str, list[RegionRecord]]:
        if len(images) != len(meme_ids):
            raise ValueError(f"{len(images)} images but {len(meme_ids)} meme ids")
        stacks = self._stacks(images)
        done = map_in_threads(
            lambda stack: self._extract_stack([images[k] for k in stack], [meme_ids[k] for k in stack]),
            stacks,
            purpose="grid",
        )
        records: list[RegionRecord] = [None] * len(images)  # type: ignore[list-item]
        for stack, stack_records in zip(stacks, done, strict=True):
            for k, record in zip(stack, stack_records, strict=True):
                records[k] = record
        return {"default": records}

    def meta(self) -> dict[str, Any]:
        return {
            "extractor": self.name,
            "weights": None,
            "weights_sha256": None,
            "feature_dim": GRID_FEATURE_DIM,
            "num_regions": self.num_regions,
            "parameters": self._parameters(),
            "feature_names": list(FEATURE_NAMES),
        }

    def _parameters(self) -> dict[str, Any]:
        """What a store records; ``reducing_gap`` only when set, so stores made without it keep their meta."""
        parameters: dict[str, Any] = {
            "levels": list(self.levels),
            "cell_px": self.cell_px,
            "work_side": self.side,
        }
        if self.reducing_gap is not None:
            parameters["reducing_gap"] = self.reducing_gap
        return parameters
