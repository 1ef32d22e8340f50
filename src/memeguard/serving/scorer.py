"""``MemeScorer``: score new memes (image + text) with one or more trained runs.

Why this exists: vilio's "inference on any meme" needed three environments and a notebook; users of
mmf wrote their own predictors and got the region features wrong (mmf #791, #895). Here a trained run
says how its training features were made (``RUN_DIR/train_config.json`` -> ``features`` -> the store's
``meta.json``), so the scorer rebuilds exactly that extractor and feeds the model what it was trained
on. Three details keep on-the-fly features identical to the stored ones:

* the extractor is rebuilt with the stored parameters, and its weights are checked against the stored
  sha256 (a swapped detector would silently change every score);
* features are rounded to the store's dtype (stores default to float16, so the model never saw more
  precision than that at training time);
* a run trained as the text-only control (``zero_visual``) gets its visual input zeroed here too.

Runs that share a feature setting share one extractor; runs on several variants whose extractor makes
them in one pass (BUTD's box counts of one detector) share that pass (the extractor emits every variant
at once).

An ensemble is the (weighted) mean of the members' probabilities. Ensemble ``weights.json`` files are
not mapped: their blends (rank and power averages, vilio's loop) are defined over a whole split, not
over one meme, so they cannot score a single new meme.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from memeguard.data.images import MAX_IMAGE_PIXELS, open_image, open_image_bytes
from memeguard.data.meme import Meme
from memeguard.data.text import check_text
from memeguard.errors import ConfigError, DataError
from memeguard.features import factory
from memeguard.features.record import RegionRecord
from memeguard.names import FEATURES_META_FILE, MODEL_DIR, STORE_META_FILE, TRAIN_CONFIG_FILE
from memeguard.records import load_json
from memeguard.threads import map_in_threads

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from memeguard.features.extractor import Extractor
    from memeguard.models.base import MemeModel
    from memeguard.serving.operating_point import OperatingPoint

ImageSource = Image.Image | bytes | bytearray | memoryview | str | os.PathLike


# ------------------------------------------------------------------------------------------ images


def load_image(source: ImageSource, context: str = "image") -> Image.Image:
    """A PIL image, encoded bytes or a path -> a fully decoded RGB image; bad input raises DataError."""
    if isinstance(source, Image.Image):
        width, height = source.size
        if width * height > MAX_IMAGE_PIXELS:
            raise DataError(
                f"{context}: image is {width}x{height} pixels, over the {MAX_IMAGE_PIXELS:,}-pixel limit"
            )
        return source if source.mode == "RGB" else source.convert("RGB")
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if not data:
            raise DataError(f"{context}: empty image bytes")
        return open_image_bytes(data, context)
    if isinstance(source, (str, os.PathLike)):
        return open_image(source, context=context if context != "image" else None)
    raise DataError(f"{context}: expected a PIL image, encoded bytes or a path, got {type(source).__name__}")


# ------------------------------------------------------------------------------- feature settings


@dataclass(frozen=True)
class FeatureSpec:
    """How one run's training features were made: enough to rebuild the extractor and match the store.

    ``kwargs`` go to ``make_extractor`` (the extractor class's ``from_meta``; ``boxes`` and ``device`` are
    added when it is built); ``dtype`` is the store's on-disk feature dtype, to which on-the-fly features
    are rounded; ``sha256`` the recorded weights digest.
    """

    extractor: str
    kwargs: dict[str, Any]
    variant: str
    dtype: str | None
    feature_dim: int | None
    sha256: str | None
    source: str  # where the settings came from, for messages

    @property
    def key(self) -> str:
        """Runs with equal keys share one extractor (the variant is not part of it: one pass gives all)."""
        return json.dumps({"extractor": self.extractor, **self.kwargs}, sort_keys=True, default=str)


def _resolve_store(features: str, run_dir: Path) -> Path | None:
    """The store a run recorded; relative paths are tried against the cwd, the run dir and its parent."""
    path = Path(features)
    candidates = [path] if path.is_absolute() else [path, run_dir / path, run_dir.parent / path]
    return next((c for c in candidates if (c / STORE_META_FILE).is_file()), None)


def read_features_meta(run_dir: Path) -> tuple[dict[str, Any], str] | None:
    """(the feature store meta.json a run was trained on, its location), or None for a bare model dir."""
    snapshot = run_dir / FEATURES_META_FILE
    if snapshot.is_file():
        return read_json_object(snapshot), str(snapshot)
    config_path = run_dir / TRAIN_CONFIG_FILE
    if not config_path.is_file():
        return None
    features = read_json_object(config_path).get("features")
    if not features:
        raise ConfigError(f"{config_path}: records no 'features' store")
    store = _resolve_store(str(features), run_dir)
    if store is None:
        raise ConfigError(
            f"{config_path}: its feature store {features} is not here (tried it relative to the cwd, "
            f"{run_dir} and {run_dir.parent}); copy the store's meta.json to {run_dir / FEATURES_META_FILE}, "
            "or pass the extractor explicitly (--extractor)"
        )
    return read_json_object(store / STORE_META_FILE), str(store / STORE_META_FILE)


def read_json_object(path: Path) -> dict[str, Any]:
    """A run's or store's JSON file as a dict; one ConfigError naming the file when it is missing,
    unreadable or not a JSON object (the scorer and the bundle exporter read the same files)."""
    data = load_json(path, ConfigError)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return data


def spec_from_meta(meta: dict[str, Any], source: str, device: str = "cpu") -> FeatureSpec:
    """A store's meta.json -> how to rebuild its extractor on ``device``; ConfigError when impossible."""
    name = meta.get("extractor")
    if not factory.is_registered(name):
        origin = meta.get("source") or meta.get("source_format") or "unknown origin"
        raise ConfigError(
            f"{source}: features were made by {name!r} ({origin}), which memeguard cannot rerun on new "
            f"images (it reruns {', '.join(factory.extractor_names())}); pass the matching extractor "
            "explicitly (MemeScorer.from_runs(..., extractor=...) or --extractor)"
        )
    kwargs = factory.extractor_class(name).from_meta(meta, source, device)
    store = meta.get("store") if isinstance(meta.get("store"), dict) else {}
    return FeatureSpec(
        name,
        kwargs,
        variant=str(meta.get("variant", "default")),
        dtype=store.get("dtype"),
        feature_dim=store.get("feature_dim", meta.get("feature_dim")),
        sha256=meta.get("weights_sha256"),
        source=source,
    )


def build_extractor(spec: FeatureSpec, variants: Sequence[str], device: str) -> Extractor:
    """Build ``spec``'s extractor emitting ``variants`` and check it against the recorded weights."""
    kwargs = {**spec.kwargs, "device": device}
    if factory.extractor_class(spec.extractor).variants_share_pass:
        kwargs["boxes"] = tuple(variants)
    extractor = factory.make_extractor(spec.extractor, **kwargs)
    meta = extractor.meta()
    recorded, actual = spec.sha256, meta.get("weights_sha256")
    if recorded and actual and recorded != actual:
        raise ConfigError(
            f"{spec.source}: the {spec.extractor} weights changed since the training features were made "
            f"(sha256 {actual[:12]}... now, {recorded[:12]}... recorded)"
        )
    dim = meta.get("feature_dim")
    if spec.feature_dim is not None and dim is not None and int(dim) != int(spec.feature_dim):
        raise ConfigError(
            f"{spec.source}: the rebuilt extractor gives {dim}-d features, the store has {spec.feature_dim}-d"
        )
    return extractor


def round_to_dtype(record: RegionRecord, dtype: str | None) -> RegionRecord:
    """What the store would have handed the model: features cast to its on-disk dtype and back."""
    if dtype is None or dtype == "float32":
        return record
    features = np.asarray(record.features).astype(np.dtype(dtype)).astype(np.float32)
    boxes = np.asarray(record.boxes, dtype=np.float32)
    return RegionRecord(
        record.meme_id,
        features,
        boxes,
        record.image_size,
        record.object_ids,
        record.object_conf,
        record.attr_ids,
        record.attr_conf,
        dict(record.extras),
    )


# ---------------------------------------------------------------------------------------- scorer


OCR_MODES = ("auto", "always", "never")
TEXT_GIVEN, TEXT_OCR = "given", "ocr"


@dataclass(frozen=True)
class Score:
    """One meme's result: ensemble probability, its label at the threshold, each model's probability, and
    the text the models read with where it came from (``given`` by the caller, or ``ocr`` from the image)."""

    proba: float
    label: int
    per_model: dict[str, float]
    text: str = ""
    text_source: str = TEXT_GIVEN

    def to_dict(self, include_text: bool = False) -> dict[str, Any]:
        """proba, label and per_model; with ``include_text`` also text and text_source (off by default: the
        HTTP response's keys are a contract)."""
        fields = {"proba": self.proba, "label": self.label, "per_model": dict(self.per_model)}
        if include_text:
            fields.update(text=self.text, text_source=self.text_source)
        return fields


def resolve_texts(
    images: Sequence[Image.Image],
    texts: Sequence[str | None] | None,
    ocr: str = "auto",
    contexts: Sequence[str] | None = None,
) -> tuple[list[str], list[str]]:
    """(the text each meme is scored with, ``given``/``ocr``): ``auto`` reads the image only when its text is
    None, ``always`` reads every image, ``never`` refuses a missing text. ``contexts`` name the items in
    errors (default ``item K``)."""
    if ocr not in OCR_MODES:
        raise ConfigError(f"ocr must be one of {', '.join(OCR_MODES)}, got {ocr!r}")
    texts = [None] * len(images) if texts is None else list(texts)
    if len(images) != len(texts):
        raise DataError(f"{len(images)} images but {len(texts)} texts")
    used, sources = [], []
    for k, (image, text) in enumerate(zip(images, texts, strict=True)):
        context = contexts[k] if contexts is not None else f"item {k}"
        if ocr == "always" or (text is None and ocr == "auto"):
            from memeguard.data.ocr import read_caption

            used.append(read_caption(image, context))
            sources.append(TEXT_OCR)
        elif text is None:
            raise DataError(f"{context}: no text given and OCR is off (ocr='never')")
        else:
            used.append(_check_text(text, context))
            sources.append(TEXT_GIVEN)
    return used, sources


@dataclass
class Member:
    """One model of the ensemble and where its regions come from."""

    name: str
    path: Path
    model: MemeModel
    processor: Any
    extractor_key: str
    variant: str
    dtype: str | None
    zero_visual: bool = False
    weight: float = 1.0
    spec: FeatureSpec | None = field(default=None, repr=False)


@dataclass
class _RunPlan:
    """What a run needs before anything heavy is built: its model dir and its feature settings."""

    run: Path
    model_dir: Path
    spec: FeatureSpec | None  # None: the explicit extractor is used
    variant: str | None
    dtype: str | None  # the training store's feature dtype, when known
    zero_visual: bool


def _plan_run(run: Path, explicit: bool, device: str) -> _RunPlan:
    from memeguard.training.build import model_dir_of

    model_dir = model_dir_of(run)
    if model_dir is None:
        raise ConfigError(f"{run}: neither a train run dir (with model/) nor a memeguard model dir")
    run_dir = model_dir.parent if model_dir != run else run
    config = read_json_object(run_dir / TRAIN_CONFIG_FILE) if (run_dir / TRAIN_CONFIG_FILE).is_file() else {}
    zero_visual = bool(config.get("zero_visual", False))
    try:
        found = read_features_meta(run_dir)
    except ConfigError:
        if not explicit:
            raise
        found = None  # the explicit extractor replaces the store's settings
    if found is None:
        if not explicit:
            raise ConfigError(
                f"{run}: no {TRAIN_CONFIG_FILE} says which features this model was trained on; "
                "pass the extractor explicitly (extractor=... / --extractor)"
            )
        return _RunPlan(run, model_dir, None, None, None, zero_visual)
    meta, source = found
    store = meta.get("store") if isinstance(meta.get("store"), dict) else {}
    spec = None if explicit else spec_from_meta(meta, source, device)
    return _RunPlan(run, model_dir, spec, meta.get("variant"), store.get("dtype"), zero_visual)


def _build_shared_extractors(plans: Sequence[_RunPlan], device: str) -> dict[str, Extractor]:
    """One extractor per distinct setting, emitting every variant its runs need (one BUTD pass gives 36
    and 50)."""
    specs: dict[str, FeatureSpec] = {}
    variants: dict[str, list[str]] = {}
    for plan in plans:
        assert plan.spec is not None
        specs.setdefault(plan.spec.key, plan.spec)
        wanted = variants.setdefault(plan.spec.key, [])
        if plan.spec.variant not in wanted:
            wanted.append(plan.spec.variant)
    return {key: build_extractor(spec, variants[key], device) for key, spec in specs.items()}


def _run_name(path: Path, taken: set[str]) -> str:
    """The run dir's name (a bare ``model`` dir is named after its parent), made unique."""
    path = path.resolve()
    base = path.parent.name if path.name == MODEL_DIR else path.name
    name, k = base, 2
    while name in taken:
        name, k = f"{base}#{k}", k + 1
    taken.add(name)
    return name


def _explicit_variant(extractor: Extractor, wanted: str | None, run: Path) -> str:
    variants = list(extractor.variants())
    if wanted in variants:
        return str(wanted)
    if len(variants) == 1:
        return variants[0]
    raise ConfigError(
        f"{run}: the given extractor emits variants {variants}; the run's store used {wanted!r}"
    )


class MemeScorer:
    """Scores memes with one or more trained runs; build it with :meth:`from_runs`."""

    def __init__(
        self,
        members: Sequence[Member],
        extractors: dict[str, Extractor],
        device: torch.device,
        threshold: float = 0.5,
        batch_size: int = 16,
        operating_point: OperatingPoint | None = None,
    ) -> None:
        if not members:
            raise ConfigError("a scorer needs at least one model")
        if not 0.0 <= threshold <= 1.0:
            raise ConfigError(f"threshold must be in [0, 1], got {threshold}")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.members = list(members)
        self.extractors = dict(extractors)
        self.device = device
        self.threshold = float(threshold)
        self.optimize = "fp32"  # from_runs sets the fast path it loaded the members with
        self.batch_size = int(batch_size)
        # How the threshold was chosen (a bundle's dev-set rule), or None for a threshold given by hand.
        self.operating_point = operating_point
        total = sum(member.weight for member in self.members)
        self._weights = np.asarray([member.weight / total for member in self.members], dtype=np.float64)

    # -- building -----------------------------------------------------------------------------

    @classmethod
    def from_runs(
        cls,
        runs: Sequence[str | os.PathLike[str]],
        device: str = "auto",
        extractor: Extractor | None = None,
        threshold: float = 0.5,
        weights: Sequence[float] | None = None,
        batch_size: int = 16,
        optimize: str = "fp32",
    ) -> MemeScorer:
        """Load every run (a train run dir or a ``save_pretrained`` model dir) and the extractors they need.

        ``extractor``: use this one for every run instead of rebuilding from the store metadata (required
        for runs trained on imported TSV/LMDB features or bare model dirs). ``weights``: one non-negative
        weight per run for the weighted mean (default: equal). ``optimize``: ``fp32``, or a CPU fast path
        (``int8``, ``onnx``: see :mod:`memeguard.models.fast`), which puts ``device='auto'`` on the CPU.
        """
        from memeguard.models.fast import FP32, check_optimization, load_optimized
        from memeguard.training.distributed import resolve_device

        if not runs:
            raise ConfigError("give at least one run (--model RUN_DIR)")
        if weights is not None:
            weights = [float(w) for w in weights]
            if len(weights) != len(runs):
                raise ConfigError(f"{len(weights)} weights for {len(runs)} runs")
            if any(not np.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
                raise ConfigError(f"ensemble weights must be non-negative with a positive sum, got {weights}")
        check_optimization(optimize)
        torch_device = resolve_device("cpu" if optimize != FP32 and device == "auto" else device)
        if optimize != FP32 and torch_device.type != "cpu":
            raise ConfigError(f"optimize={optimize!r} is a CPU fast path; it cannot run on {torch_device}")
        plans = [_plan_run(Path(run), extractor is not None, str(torch_device)) for run in runs]
        extractors = (
            {"explicit": extractor}
            if extractor is not None
            else _build_shared_extractors(plans, str(torch_device))
        )
        # meta() may hash a large weights file: ask once.
        explicit_dim = extractor.meta().get("feature_dim") if extractor is not None else None
        taken: set[str] = set()
        members = []
        for k, plan in enumerate(plans):
            model = load_optimized(plan.model_dir, optimize).to(torch_device).eval()
            if plan.spec is not None:
                key, variant, dim = plan.spec.key, plan.spec.variant, plan.spec.feature_dim
                origin = "its store has"
            else:
                key = "explicit"
                variant = _explicit_variant(extractors[key], plan.variant, plan.run)
                dim, origin = explicit_dim, "the given extractor makes"
            if dim is not None and int(dim) != model.config.visual_feat_dim:
                expected = model.config.visual_feat_dim
                raise ConfigError(f"{plan.run}: the model expects {expected}-d regions, {origin} {dim}-d")
            members.append(
                Member(
                    name=_run_name(plan.run, taken),
                    path=plan.run,
                    model=model,
                    processor=model.build_processor(),
                    extractor_key=key,
                    variant=variant,
                    dtype=plan.dtype,
                    zero_visual=plan.zero_visual,
                    weight=1.0 if weights is None else weights[k],
                    spec=plan.spec,
                )
            )
        scorer = cls(members, extractors, torch_device, threshold=threshold, batch_size=batch_size)
        scorer.optimize = optimize
        return scorer

    @classmethod
    def from_bundle(
        cls,
        source: str | os.PathLike[str],
        device: str = "auto",
        threshold: float | None = None,
        batch_size: int = 16,
        cache_dir: str | os.PathLike[str] | None = None,
        optimize: str | None = None,
    ) -> MemeScorer:
        """Load a bundle (``memeguard export``): a folder or a Hugging Face Hub id ``org/name``.

        Every file is hash-checked first; labels use the bundle's operating point unless ``threshold``
        overrides it. ``optimize`` overrides the bundle's fast path (explanations need ``fp32``: gradients
        do not flow through int8 layers or an ONNX graph; every bundle holds the fp32 weights).
        """
        from memeguard.serving.bundle import load_bundle, member_dir

        bundle, manifest = load_bundle(source, cache_dir)
        scorer = cls.from_runs(
            [member_dir(bundle, member) for member in manifest.members],
            device=device,
            threshold=manifest.operating_point.threshold if threshold is None else threshold,
            weights=[member.weight for member in manifest.members],
            batch_size=batch_size,
            optimize=manifest.optimize if optimize is None else optimize,
        )
        if threshold is None:
            scorer.operating_point = manifest.operating_point
        return scorer

    # -- scoring ------------------------------------------------------------------------------

    def score(self, image: ImageSource, text: str | None = None, ocr: str = "auto") -> Score:
        """Score one meme (image as PIL image, encoded bytes or path; text as printed on the meme, or None
        to read it from the image; ``ocr``: see :func:`resolve_texts`)."""
        return self.score_batch([(image, text)], ocr=ocr)[0]

    def score_batch(
        self,
        items: Iterable[tuple[ImageSource, str | None]],
        batch_size: int | None = None,
        ocr: str = "auto",
    ) -> list[Score]:
        """Score many memes; images are decoded, extracted and run through the models ``batch_size`` at a
        time."""
        items = list(items)
        size = int(batch_size or self.batch_size)
        results: list[Score] = []
        for start in range(0, len(items), size):
            chunk = items[start : start + size]
            numbered = [(image, f"item {start + k}") for k, (image, _) in enumerate(chunk)]
            images = map_in_threads(lambda pair: load_image(*pair), numbered)  # decoders release the GIL
            contexts = [f"item {start + k}" for k in range(len(chunk))]
            results.extend(self.score_images(images, [text for _, text in chunk], ocr, contexts))
        return results

    def score_images(
        self,
        images: Sequence[Image.Image],
        texts: Sequence[str | None] | None = None,
        ocr: str = "auto",
        contexts: Sequence[str] | None = None,
    ) -> list[Score]:
        """Score already-decoded RGB images (one forward pass per model); a None text is read by OCR.
        ``contexts`` name the images in error messages (a file name reads better than ``item 3``)."""
        used, sources = resolve_texts(images, texts, ocr, contexts)
        return self._score_texts(images, used, sources)

    def _score_texts(
        self, images: Sequence[Image.Image], texts: Sequence[str], sources: Sequence[str]
    ) -> list[Score]:
        """One Score per meme, built once: the numbers leave numpy in one ``tolist`` each (a cheap student
        scores a meme in a few hundred microseconds, so per-meme Python is worth keeping small)."""
        probs = self.member_probabilities(images, texts)
        mean = self._weights @ probs
        names = [member.name for member in self.members]
        labels = (mean >= self.threshold).tolist()
        return [
            Score(p, int(label), dict(zip(names, row, strict=True)), text, source)
            for p, label, row, text, source in zip(
                mean.tolist(), labels, probs.T.tolist(), texts, sources, strict=True
            )
        ]

    def member_probabilities(self, images: Sequence[Image.Image], texts: Sequence[str]) -> np.ndarray:
        """[models, memes] probabilities; every extractor runs once over the images."""
        import torch

        from memeguard.training.data import to_device, zero_visual_input

        if len(images) != len(texts):
            raise DataError(f"{len(images)} images but {len(texts)} texts")
        if not images:
            return np.zeros((len(self.members), 0), dtype=np.float64)
        ids = list(range(len(images)))
        memes = [Meme(id=i, img="", text=text) for i, text in zip(ids, texts, strict=True)]
        probs = np.zeros((len(self.members), len(images)), dtype=np.float64)
        with torch.inference_mode():
            regions = {
                key: extractor.extract(images, ids, list(texts)) for key, extractor in self.extractors.items()
            }
            rounded: dict[tuple[str, str, str | None], list[RegionRecord]] = {}
            for m, member in enumerate(self.members):
                cache_key = (member.extractor_key, member.variant, member.dtype)
                if cache_key not in rounded:
                    records = regions[member.extractor_key].get(member.variant)
                    if records is None:
                        raise ConfigError(
                            f"{member.name}: the extractor produced no {member.variant!r} variant"
                        )
                    rounded[cache_key] = [round_to_dtype(record, member.dtype) for record in records]
                batch = member.processor(memes, rounded[cache_key])
                if member.zero_visual:
                    zero_visual_input(batch)
                batch = to_device(batch, self.device)
                probs[m] = member.model.predict_proba(batch).float().cpu().numpy()
        return probs

    def member_batches(
        self, images: Sequence[Image.Image], texts: Sequence[str]
    ) -> list[tuple[Member, list[RegionRecord], dict[str, torch.Tensor]]]:
        """Each member's model batch (on the scorer's device) and the region records it was built from,
        made as :meth:`member_probabilities` makes them, but outside inference mode: explanations
        differentiate through these batches (``memeguard.serving.explain``)."""
        import torch

        from memeguard.training.data import to_device, zero_visual_input

        ids = list(range(len(images)))
        memes = [Meme(id=i, img="", text=text) for i, text in zip(ids, texts, strict=True)]
        with torch.no_grad():
            regions = {
                key: extractor.extract(images, ids, list(texts)) for key, extractor in self.extractors.items()
            }
        out = []
        for member in self.members:
            records = regions[member.extractor_key].get(member.variant)
            if records is None:
                raise ConfigError(f"{member.name}: the extractor produced no {member.variant!r} variant")
            records = [round_to_dtype(record, member.dtype) for record in records]
            batch = member.processor(memes, records)
            if member.zero_visual:
                zero_visual_input(batch)
            out.append((member, records, to_device(batch, self.device)))
        return out

    def warmup(self) -> None:
        """One throw-away pass so the first real request does not pay for lazy initialisation."""
        self.score_images([Image.new("RGB", (64, 64), (128, 128, 128))], ["warm up"])

    # -- introspection ------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """What ``/health`` reports: models, extractors and device."""
        extractors = []
        for key, extractor in self.extractors.items():
            settings = (
                json.loads(key) if key != "explicit" else {"extractor": extractor.name, "explicit": True}
            )
            extractors.append(
                {"name": extractor.name, "variants": list(extractor.variants()), "settings": settings}
            )
        return {
            "models": [
                {
                    "name": member.name,
                    "path": str(member.path),
                    "architecture": member.model.config.model_type,
                    "weight": float(w),
                    "features": member.spec.source if member.spec is not None else "explicit extractor",
                    "variant": member.variant,
                }
                for member, w in zip(self.members, self._weights, strict=True)
            ],
            "extractors": extractors,
            "device": str(self.device),
            "threshold": self.threshold,
            "operating_point": self._operating_point_summary(),
        }

    def _operating_point_summary(self) -> dict[str, Any]:
        """The rule behind ``threshold`` and what it gave on dev; ``fixed`` when it was given by hand."""
        if self.operating_point is None:
            return {"rule": "fixed", "target": self.threshold, "threshold": self.threshold}
        return self.operating_point.model_dump(mode="json")


def _check_text(text: object, context: str) -> str:
    """Given text passes the project's one text gate (valid Unicode, bounded length), like every text."""
    if not isinstance(text, str):
        raise DataError(f"{context}: text must be a string, got {type(text).__name__}")
    return check_text(text, context)
