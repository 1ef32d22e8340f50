"""Region features: the feature store, original-format importers and extractors (BUTD, grid, CLIP).

Only light modules are imported here; extractors (listed in ``factory.EXTRACTORS``), importers and the
factory load on first use.
"""

from memeguard.features.record import RegionRecord
from memeguard.features.store import FeatureStore, FeatureStoreWriter

__all__ = ["FeatureStore", "FeatureStoreWriter", "RegionRecord"]
