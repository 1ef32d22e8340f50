"""The report gallery's explanations: each gallery meme explained by the runs behind the ensemble.

The gallery (:mod:`memeguard.pipeline.report.gallery`) takes a provider ``explain(meme) -> (png, words)``;
:class:`GalleryExplainer` is the pipeline's. The members are the runs that predicted dev_seen (run (a) of
every run of every family: the predictions the ensemble blended and the gallery picks from); each reads
the gallery meme's region record from the feature store it was trained on, so no extractor runs and the
explained logit is the one that run predicted. Integrated gradients, the word mapping and the PNG are
:mod:`memeguard.models.explanation`'s, as for ``memeguard explain`` (``pipeline`` may not import
``serving``). Members are weighted like the ensemble when its final blend is a weighted mean of the
families (a family's weight split evenly over its runs, as the distillation teacher does), else equally
(rank, power and loop blends have no per-model weight).

The cost is bounded: gallery size (at most ``MAX_GALLERY_SIZE``) x members x ``steps`` forward and backward
passes of one meme; :data:`GALLERY_STEPS` is modest because the report shows where the attribution goes,
not its third decimal (each model's ``delta`` says how far the sum is from the logit change). On the demo
(10 gallery memes, 6 tiny runs) it adds about 7 CPU seconds to the report, the first meme's model and
tokenizer loading included (``benchmarks/gallery_explain.py``). Models load once, on the first meme. A
member whose model cannot be explained (RGCL's kNN vote; a model without word pieces or regions and
without the hook) is skipped and named in :attr:`GalleryExplainer.notes`, shown above the gallery; a run
with weight 0 in the ensemble is not explained; without captum every card says so in one line and shows
the plain meme.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memeguard.data.hm import image_path
from memeguard.data.images import open_image
from memeguard.data.meme import Meme
from memeguard.errors import ConfigError
from memeguard.names import ENSEMBLE_WEIGHTS_FILE, TRAIN_CONFIG_FILE

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from memeguard.models.base import MemeModel
    from memeguard.models.explanation import MemberInput

GALLERY_STEPS = 16  # IG steps per meme and member in the report (``memeguard explain`` uses 32)


@dataclass(frozen=True)
class GalleryMember:
    """One run behind the ensemble's dev_seen predictions and the feature store it reads."""

    family: str
    run: str
    run_dir: Path
    store: Path


@dataclass
class _Loaded:
    """A member ready to explain: its model, processor, opened store and ensemble weight."""

    member: GalleryMember
    model: MemeModel
    processor: Any
    regions: Any
    zero_visual: bool
    weight: float


def ensemble_weights(out_dir: Path) -> dict[str, float] | None:
    """family -> weight of the ensemble's final blend when it is a weighted mean, else None."""
    from memeguard.pipeline.distill import blend_weights

    if not (out_dir / ENSEMBLE_WEIGHTS_FILE).is_file():
        return None
    try:
        return blend_weights(out_dir)
    except ConfigError:
        return None


def member_weights(members: Sequence[GalleryMember], weights: Mapping[str, float] | None) -> list[float]:
    """Each run's share: its family's weight split evenly over the family's runs; equal without weights."""
    if weights is None:
        return [1.0] * len(members)
    runs_of: dict[str, int] = {}
    for member in members:
        runs_of[member.family] = runs_of.get(member.family, 0) + 1
    return [float(weights.get(m.family, 0.0)) / runs_of[m.family] for m in members]


def _zero_visual(run_dir: Path) -> bool:
    """Whether the run was trained with its visual input zeroed (``train_config.json``), as predict does."""
    path = run_dir / TRAIN_CONFIG_FILE
    try:
        return bool(json.loads(path.read_text(encoding="utf-8")).get("zero_visual", False))
    except (OSError, ValueError, AttributeError):
        return False


class GalleryExplainer:
    """``explain(meme) -> (overlay PNG, [(word, attribution)])`` for the report's gallery.

    ``notes``: one line per member left out (and why), for the report to show above the gallery.
    """

    def __init__(
        self,
        members: Sequence[GalleryMember],
        weights: Sequence[float],
        data_dir: Path,
        steps: int = GALLERY_STEPS,
        device: str = "cpu",
    ) -> None:
        from memeguard.models.attribution import check_steps

        self.members = list(members)
        self.weights = list(weights)
        self.data_dir = Path(data_dir)
        self.steps = check_steps(steps)
        self.device = device
        self.notes: list[str] = []
        self._loaded: list[_Loaded] | None = None
        self._unavailable = _captum_missing()

    def __call__(self, meme: Meme) -> tuple[bytes, list[tuple[str, float]]]:
        from memeguard.models.explanation import explain_members, render_png

        if self._unavailable:
            raise ConfigError(self._unavailable)
        image = open_image(image_path(self.data_dir, meme), f"meme {meme.id}")
        inputs = [self._input(loaded, meme) for loaded in self._members(meme)]
        if not inputs:
            raise ConfigError("no model of the ensemble can be explained (see the notes above the gallery)")
        explanation = explain_members(inputs, meme.text, (image.width, image.height), self.steps)
        words = [(word.word, word.attribution) for word in explanation.words]
        return render_png(image, explanation), words

    # -- members ---------------------------------------------------------------------------------
    def _members(self, meme: Meme) -> list[_Loaded]:
        """The loaded members (loaded on the first meme, and the unexplainable ones dropped then)."""
        if self._loaded is None:
            self._loaded = []
            for member, weight in zip(self.members, self.weights, strict=True):
                loaded = self._load(member, weight)
                if loaded is not None and self._explainable(loaded, meme):
                    self._loaded.append(loaded)
        return self._loaded

    def _load(self, member: GalleryMember, weight: float) -> _Loaded | None:
        from memeguard.errors import MemeguardError
        from memeguard.training.build import load_model_dir, model_dir_of
        from memeguard.training.data import open_regions

        if weight <= 0:
            return None  # the ensemble does not use it
        if model_dir_of(member.run_dir) is None:
            self.notes.append(
                f"{member.run}: left out, {member.run_dir} holds no model (an inference-only run)"
            )
            return None
        try:
            model = load_model_dir(member.run_dir).to(self.device).eval()
            regions = open_regions(member.store)
        except MemeguardError as exc:
            self.notes.append(f"{member.run}: left out ({exc})")
            return None
        processor = model.build_processor()
        return _Loaded(member, model, processor, regions, _zero_visual(member.run_dir), weight)

    def _explainable(self, loaded: _Loaded, meme: Meme) -> bool:
        """Whether the member's model has the attribution hook for its batches; a note when not."""
        from memeguard.models.attribution import check_explainable

        try:
            batch = self._batch(loaded, meme)
            if batch is None:
                return True  # this meme is missing from the store; the next may not be
            check_explainable(loaded.model, batch)
            loaded.model.attribution_inputs(batch)
        except ConfigError as exc:
            self.notes.append(f"{loaded.member.run}: left out of the attributions ({exc})")
            return False
        return True

    def _batch(self, loaded: _Loaded, meme: Meme) -> dict[str, torch.Tensor] | None:
        """The member's batch of one meme, as its predictions were made (None: not in its store)."""
        from memeguard.training.data import to_device, zero_visual_input

        if meme.id not in loaded.regions:
            return None
        batch = loaded.processor([meme], [loaded.regions[meme.id]])
        if loaded.zero_visual:
            zero_visual_input(batch)
        return to_device(batch, self.model_device(loaded.model))

    @staticmethod
    def model_device(model: MemeModel) -> torch.device:
        return next(model.parameters()).device

    def _input(self, loaded: _Loaded, meme: Meme) -> MemberInput:
        from memeguard.models.explanation import MemberInput

        batch = self._batch(loaded, meme)
        if batch is None:
            raise ConfigError(
                f"meme {meme.id} is not in {loaded.member.run}'s feature store {loaded.member.store}"
            )
        record = loaded.regions[meme.id]
        return MemberInput(loaded.member.run, loaded.model, loaded.processor, record, batch, loaded.weight)


def _captum_missing() -> str | None:
    """The one-line reason explanations cannot run here (captum is an extra), or None."""
    from memeguard.models.attribution import captum_ig

    try:
        captum_ig()
    except ConfigError as exc:
        return str(exc)
    return None


def gallery_explainer(
    members: Sequence[GalleryMember],
    out_dir: Path,
    data_dir: Path,
    steps: int = GALLERY_STEPS,
    device: str = "cpu",
) -> GalleryExplainer | None:
    """The report's provider for the run in ``out_dir`` (None when no run has a model to explain)."""
    if not members:
        return None
    weights = member_weights(members, ensemble_weights(out_dir))
    return GalleryExplainer(members, weights, data_dir, steps=steps, device=device)
