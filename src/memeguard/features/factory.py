"""``make_extractor(name, ...)``: one entry point for the CLI and the pipeline.

BUTD and CLIP are imported only when asked for, so the grid path (and ``--help``) never pays for
torchvision or transformers.
"""

from __future__ import annotations

import re
from typing import Any

from memeguard.errors import ConfigError
from memeguard.features.extractor import Extractor

EXTRACTORS: tuple[str, ...] = ("grid", "butd", "clip")
_VARIANT = re.compile(r"^(\d+)(?:-(\d+))?$")


def parse_box_variants(boxes: str | tuple[str, ...] | list[str] | None) -> tuple[str, ...] | None:
    """``"36,50,72,10-100"`` -> ("36", "50", "72", "10-100"); each a fixed count or a min-max range."""
    if boxes is None:
        return None
    items = (
        [b.strip() for b in boxes.split(",")] if isinstance(boxes, str) else [str(b).strip() for b in boxes]
    )
    items = [item for item in items if item]
    if not items:
        raise ConfigError("--boxes is empty; give e.g. 36 or 36,50,72,10-100")
    for item in items:
        match = _VARIANT.match(item)
        if not match:
            raise ConfigError(f"bad box variant {item!r}: expected a count (36) or a range (10-100)")
        low, high = int(match.group(1)), int(match.group(2) or match.group(1))
        if low < 1 or high < low:
            raise ConfigError(f"bad box variant {item!r}: need 1 <= min <= max")
    if len(set(items)) != len(items):
        raise ConfigError(f"--boxes lists a variant twice: {','.join(items)}")
    return tuple(items)


def make_extractor(
    name: str,
    weights: str | None = None,
    boxes: str | tuple[str, ...] | None = None,
    device: str | None = None,
    **kw: Any,
) -> Extractor:
    """Build an extractor by name: ``grid`` (no weights), ``butd`` (detector weights), ``clip`` (model dir)."""
    variants = parse_box_variants(boxes)
    if name == "grid":
        if weights is not None:
            raise ConfigError("the grid extractor has no weights; drop --weights")
        if variants is not None:
            raise ConfigError("the grid extractor has a fixed region layout; drop --boxes")
        from memeguard.features.grid import GridExtractor

        return GridExtractor(**kw)
    if name == "butd":
        from memeguard.features.butd import ButdExtractor

        return ButdExtractor(weights=weights, box_variants=variants or ("36",), device=device or "cpu", **kw)
    if name == "clip":
        if weights is None:
            raise ConfigError("the clip extractor needs --weights pointing at a CLIP model folder")
        if variants is not None:
            raise ConfigError("the clip extractor has no box variants; drop --boxes")
        from memeguard.features.clip import ClipExtractor

        return ClipExtractor(model_dir=weights, device=device or "cpu", **kw)
    raise ConfigError(f"unknown extractor {name!r}; choose one of {', '.join(EXTRACTORS)}")
