"""Box encodings the vision-language models expect, computed from pixel boxes at read time.

Vilio's loaders (``fts_tsv/hm_data_tsv.py``) produce these from the stored pixel boxes:
``xyxy`` (4-d, O/V/X/D), ``xyxya`` (5-d, +area, ViLBERT style), ``uniter7`` (UNITER's
[x1, y1, x2, y2, w, h, w*h]); ERNIE-ViL prepends a global mean-feature token (``ernie_layout``).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

BoxEncoding = Literal["xyxy", "xyxya", "uniter7"]
BOX_ENCODING_DIMS: dict[str, int] = {"xyxy": 4, "xyxya": 5, "uniter7": 7}


def normalize_boxes(boxes: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """Pixel (x1, y1, x2, y2) -> fractions of the image width/height, clipped to [0, 1]."""
    height, width = image_size
    scale = np.array([width, height, width, height], dtype=np.float32)
    return np.clip(np.asarray(boxes, dtype=np.float32) / scale, 0.0, 1.0)


def encode_boxes(boxes: np.ndarray, image_size: tuple[int, int], kind: BoxEncoding = "xyxy") -> np.ndarray:
    """Encode pixel boxes [n, 4] as the float32 position features [n, BOX_ENCODING_DIMS[kind]]."""
    norm = normalize_boxes(boxes, image_size)
    if kind == "xyxy":
        return norm
    widths = norm[:, 2] - norm[:, 0]
    heights = norm[:, 3] - norm[:, 1]
    if kind == "xyxya":
        return np.concatenate([norm, (widths * heights)[:, None]], axis=1).astype(np.float32)
    if kind == "uniter7":
        extra = np.stack([widths, heights, widths * heights], axis=1)
        return np.concatenate([norm, extra], axis=1).astype(np.float32)
    raise ValueError(f"unknown box encoding {kind!r}; expected one of {sorted(BOX_ENCODING_DIMS)}")


def ernie_layout(
    features: np.ndarray, boxes: np.ndarray, image_size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """ERNIE-ViL's region sequence: [mean of all features ; features] with 5-d locations.

    The global token gets location [0, 0, 1, 1, 1] (``reader/_tsv_reader.py``).
    """
    features = np.asarray(features, dtype=np.float32)
    global_feature = features.mean(axis=0, keepdims=True)
    locations = encode_boxes(boxes, image_size, "xyxya")
    global_location = np.array([[0.0, 0.0, 1.0, 1.0, 1.0]], dtype=np.float32)
    return (
        np.concatenate([global_feature, features], axis=0),
        np.concatenate([global_location, locations], axis=0),
    )
