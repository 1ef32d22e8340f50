"""The extractor registry and ``make_extractor``: the one table the CLIs, recipes, pipeline and scorer read.

Adding an extractor is one new module (a :class:`~memeguard.features.extractor.BaseExtractor` subclass)
and one line in ``EXTRACTORS``. Entries name their class as ``"module:Class"`` and are imported on
first use (as Hugging Face's auto classes map names to lazily imported classes), so ``memeguard --help``
and the grid path never pay for torchvision or transformers, and this module imports nothing heavy.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeGuard

from memeguard.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from memeguard.features.extractor import BaseExtractor, Extractor

# name -> "module:Class", or the class itself (a plugin or a test may add ``EXTRACTORS[name] = cls``).
EXTRACTORS: dict[str, str | type[BaseExtractor]] = {
    "grid": "memeguard.features.grid:GridExtractor",
    "butd": "memeguard.features.butd:ButdExtractor",
    "clip": "memeguard.features.clip:ClipExtractor",
}


def extractor_names() -> tuple[str, ...]:
    """Registered extractor names, in table order (no extractor module is imported)."""
    return tuple(EXTRACTORS)


def is_registered(name: object) -> TypeGuard[str]:
    return isinstance(name, str) and name in EXTRACTORS


def extractor_class(name: str) -> type[BaseExtractor]:
    """The class registered as ``name``, imported now; ConfigError naming the choices for an unknown one."""
    if not is_registered(name):
        raise ConfigError(f"unknown extractor {name!r}; choose one of {', '.join(EXTRACTORS)}")
    target = EXTRACTORS[name]
    if isinstance(target, str):
        module, _, attribute = target.partition(":")
        target = getattr(importlib.import_module(module), attribute)
    if getattr(target, "name", None) != name:
        # Stores record the class's name and the scorer looks it up again: the two must agree.
        found = getattr(target, "name", None)
        raise ConfigError(f"extractor {name!r} is registered to {target!r}, whose name is {found!r}")
    return target


def make_extractor(
    name: str,
    weights: str | None = None,
    boxes: str | Sequence[str] | None = None,
    device: str | None = None,
    **params: Any,
) -> Extractor:
    """Build a registered extractor from its options: ``weights`` (file or folder), ``boxes`` (variants
    that share a pass, e.g. ``"36,50"``), ``device`` and its typed ``params``; ConfigError for options it
    does not take. ``remove_text=True`` (+ ``remove_text_dilation``), taken by every extractor, wraps it
    so it sees each image with its caption inpainted (:mod:`memeguard.features.text_removal`)."""
    from memeguard.features.extractor import ExtractorOptions, TextRemoval  # imported on use

    cls = extractor_class(name)
    variants, typed = cls.check_options(weights, boxes, params)
    made = cls.create(ExtractorOptions(weights, variants, device, typed))
    _, removal = TextRemoval.split(name, params)
    if not removal.remove_text:
        return made
    from memeguard.features.text_removal import TextRemovingExtractor

    return TextRemovingExtractor(made, dilation=removal.remove_text_dilation)


def parse_box_variants(boxes: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """Kept for old imports: BUTD's ``--boxes`` parser, :func:`memeguard.features.butd.parse_box_variants`."""
    from memeguard.features.butd import parse_box_variants as parse

    return parse(boxes)
