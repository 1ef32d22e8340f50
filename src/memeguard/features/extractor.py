"""The protocol every region-feature extractor (BUTD, grid, CLIP) implements.

An extractor may produce several *variants* from one pass over an image (BUTD: 36, 50, 72 and
10-100 boxes share the detector pass); each variant becomes its own feature store.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from PIL import Image

from memeguard.features.record import RegionRecord


@runtime_checkable
class Extractor(Protocol):
    name: str  # "butd", "grid", "clip"

    def variants(self) -> list[str]:
        """Names of the variants one call produces, e.g. ["36", "50", "10-100"] or ["default"]."""
        ...

    def extract(
        self, images: Sequence[Image.Image], meme_ids: Sequence[int], texts: Sequence[str]
    ) -> dict[str, list[RegionRecord]]:
        """RGB images (original size) -> {variant: one RegionRecord per image, boxes in original pixels}."""
        ...

    def meta(self) -> dict[str, Any]:
        """What goes into the store's meta.json: parameters, weights path and sha256, feature dim."""
        ...
