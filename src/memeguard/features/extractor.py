"""What a region-feature extractor is: the per-image protocol, and the class-level facts the registry reads.

An extractor may produce several *variants* from one pass over an image (BUTD: 36, 50, 72 and
10-100 boxes share the detector pass); each variant becomes its own feature store.

A registered extractor class (see :mod:`memeguard.features.factory`) subclasses :class:`BaseExtractor`
and says, as class attributes and classmethods, everything the rest of memeguard asks about it: which
options it takes (weights, box variants, typed ``Params``), how to build it from those options, and how
to rebuild it from a store's ``meta.json``. The factory, the recipe schema, the CLIs, the pipeline
runner and the scorer hold no per-extractor code, so adding one is one new module and one
registration line.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from memeguard.errors import ConfigError
from memeguard.features.record import RegionRecord


@runtime_checkable
class Extractor(Protocol):
    """What ``extract_features`` and the scorer call. Optional: ``batch_size`` (images per call), and
    ``dataset_meta(texts) -> dict``, facts about every caption of the dataset recorded in the store's meta
    (CLIP: how many captions were cut to its 77 tokens)."""

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


class ExtractorParams(BaseModel):
    """An extractor's keyword parameters (a recipe's ``params:``, ``make_extractor(name, **params)``).

    Typed and closed: a misspelt or mistyped parameter is refused when the recipe loads, not hours
    into an extraction. Each extractor subclasses this with its own fields and defaults.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


def _params_error(name: str, exc: ValidationError) -> ConfigError:
    problems = "; ".join(
        f"{'.'.join(str(part) for part in error['loc']) or 'params'}: {error['msg']}"
        for error in exc.errors()
    )
    return ConfigError(f"the {name} extractor's params: {problems}")


# Pixels the OCR boxes grow by before inpainting (meme text has a black outline and anti-aliasing).
DEFAULT_TEXT_DILATION = 4


class TextRemoval(BaseModel):
    """``--remove-text`` (recipe ``params: {remove_text: true}``), which every extractor takes: the caption
    is found by OCR and inpainted before the extractor sees the image (Zhu's 1st-place trick; see
    :mod:`memeguard.features.text_removal`). Kept out of each extractor's own ``Params`` so it is
    implemented once, as a wrapper around any extractor (:func:`memeguard.features.factory.make_extractor`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    remove_text: bool = False
    remove_text_dilation: int = Field(DEFAULT_TEXT_DILATION, ge=0, le=64)

    @classmethod
    def split(cls, name: str, params: Mapping[str, Any]) -> tuple[dict[str, Any], TextRemoval]:
        """(the extractor's own params, the text-removal settings) from one ``params`` mapping."""
        own = {key: value for key, value in params.items() if key not in cls.model_fields}
        try:
            removal = cls.model_validate({k: v for k, v in params.items() if k in cls.model_fields})
        except ValidationError as exc:
            raise _params_error(name, exc) from None
        return own, removal

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> dict[str, Any]:
        """The ``make_extractor`` params that repeat a store's recorded text removal ({} when none)."""
        if not meta.get("remove_text"):
            return {}
        return {
            "remove_text": True,
            "remove_text_dilation": int(meta.get("remove_text_dilation", DEFAULT_TEXT_DILATION)),
        }


@dataclass(frozen=True)
class ExtractorOptions:
    """The checked options ``make_extractor`` hands to :meth:`BaseExtractor.create`.

    One object rather than four arguments, so that every extractor's ``create`` keeps one short signature
    and a new option is added here once, not in every override.
    """

    weights: str | None  # file or folder; None for extractors without weights
    variants: tuple[str, ...] | None  # parsed ``--boxes``; None: the extractor's default variant
    device: str | None  # None: the extractor's default (CPU-only extractors ignore it)
    params: ExtractorParams  # the typed ``Params`` of the extractor

    def variants_or(self, default: str) -> tuple[str, ...]:
        """The variants asked for, or ``(default,)`` when none were."""
        return self.variants or (default,)


class BaseExtractor:
    """Base class of the registered extractors: the options they take, and how to build and rebuild them.

    Options messages name both spellings (``--weights`` on the command line, ``weights:`` in a recipe)
    because the same checks serve both.
    """

    name: ClassVar[str]
    Params: ClassVar[type[ExtractorParams]] = ExtractorParams
    # What ``--weights`` points at, for messages; None: the extractor has no weights.
    weights_kind: ClassVar[str | None] = None
    weights_required: ClassVar[bool] = False
    # True: ``--boxes`` picks variants that one pass over an image yields together (BUTD's box counts),
    # so one extractor serves every variant a recipe or an ensemble asks for.
    variants_share_pass: ClassVar[bool] = False
    # The variant made when none is asked for (the name the extractor gives its only variant otherwise).
    default_variant: ClassVar[str] = "default"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Every ``from_meta`` a subclass defines also returns the store's recorded text removal, so an
        extractor rebuilt from a store (the scorer) repeats it: done once here, no extractor can forget it,
        and the scorer needs no text-removal code."""
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("from_meta")
        if isinstance(own, classmethod):
            cls.from_meta = classmethod(_repeating_text_removal(own.__func__))  # type: ignore[method-assign]

    @classmethod
    def check_options(
        cls, weights: str | None, boxes: str | Sequence[str] | None, params: Mapping[str, Any]
    ) -> tuple[tuple[str, ...] | None, ExtractorParams]:
        """Refuse options this extractor does not take -> (box variants or None, typed params)."""
        if weights is None and cls.weights_required:
            raise ConfigError(
                f"the {cls.name} extractor needs --weights (recipe: weights): {cls.weights_kind}"
            )
        if weights is not None and cls.weights_kind is None:
            raise ConfigError(f"the {cls.name} extractor has no weights: drop --weights (recipe: weights)")
        if boxes is not None and not cls.variants_share_pass:
            raise ConfigError(f"the {cls.name} extractor has no box variants: drop --boxes (recipe: boxes)")
        variants = None if boxes is None else cls.parse_variants(boxes)
        own, _ = TextRemoval.split(cls.name, params)  # every extractor takes remove_text (a wrapper)
        return variants, cls.validate_params(own)

    @classmethod
    def parse_variants(cls, boxes: str | Sequence[str]) -> tuple[str, ...]:
        """``--boxes`` (``"a,b"`` or a list) -> variant names, each once; subclasses check each name."""
        parts = boxes.split(",") if isinstance(boxes, str) else [str(b) for b in boxes]
        items = tuple(item.strip() for item in parts if item.strip())
        if not items:
            raise ConfigError(f"--boxes is empty; give e.g. {cls.default_variant}")
        if len(set(items)) != len(items):
            raise ConfigError(f"--boxes lists a variant twice: {','.join(items)}")
        return items

    @classmethod
    def validate_params(cls, params: Mapping[str, Any]) -> ExtractorParams:
        try:
            return cls.Params.model_validate(dict(params))
        except ValidationError as exc:
            raise _params_error(cls.name, exc) from None

    @classmethod
    def create(cls, options: ExtractorOptions) -> Extractor:
        """Build from checked options (``device`` None: the extractor's default; CPU-only ones ignore it)."""
        raise NotImplementedError(f"{cls.__name__}.create")

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any], source: str, device: str) -> dict[str, Any]:
        """The ``make_extractor`` keyword arguments (weights and params) that rebuild, on ``device``, the
        extractor a store's ``meta.json`` records: what the scorer needs to featurise new memes exactly as
        the training store was. ``source`` names the meta file in errors."""
        raise NotImplementedError(f"{cls.__name__}.from_meta")


def _repeating_text_removal(rebuild: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    """``from_meta`` plus the recorded text-removal params (see ``BaseExtractor.__init_subclass__``)."""

    @functools.wraps(rebuild)
    def from_meta(cls: type, meta: Mapping[str, Any], source: str, device: str) -> dict[str, Any]:
        return {**rebuild(cls, meta, source, device), **TextRemoval.from_meta(meta)}

    return from_meta
