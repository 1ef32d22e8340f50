"""Region features: the feature store, original-format importers and extractors (BUTD, grid, CLIP)."""

from memeguard.features.record import RegionRecord

__all__ = ["RegionRecord"]
