"""The per-image region record that every extractor writes and every model processor reads."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class RegionRecord:
    """Region features of one image.

    ``boxes`` are pixel coordinates (x1, y1, x2, y2) of the ORIGINAL image, as the BUTD extraction
    wrote them; ``image_size`` is (height, width). Detector extras are None when the extractor has none.
    """

    meme_id: int
    features: np.ndarray  # float32 [n, D]
    boxes: np.ndarray  # float32 [n, 4]
    image_size: tuple[int, int]  # (height, width)
    object_ids: np.ndarray | None = None  # int64 [n]
    object_conf: np.ndarray | None = None  # float32 [n]
    attr_ids: np.ndarray | None = None  # int64 [n]
    attr_conf: np.ndarray | None = None  # float32 [n]
    # Fixed-size per-image vectors some extractors add (CLIP: "image_embeds", "text_embeds").
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def num_boxes(self) -> int:
        return int(self.features.shape[0])

    @property
    def feature_dim(self) -> int:
        return int(self.features.shape[1])
