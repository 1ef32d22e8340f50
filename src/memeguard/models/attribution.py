"""Integrated gradients of the hateful logit over a model's input embeddings (the core of ``explain``).

Why integrated gradients (Sundararajan et al. 2017) and not attention rollout: every memeguard family is
differentiable from its word embeddings and region features to its logit, so one method serves all of
them, and IG's *completeness* (the attributions sum to ``f(x) - f(baseline)``) makes the numbers mean
something: "this word moved the logit by +0.8". Rollout needs one attention graph per architecture (the
two-stream models have three kinds of attention) and its scores sum to nothing. The inputs, their
baselines and the forward from them come from the model (``MemeModel.attribution_inputs`` ... in
:mod:`memeguard.models.base`), so a new family only overrides those three methods. IG itself is captum's
(``pip install 'memeguard[explain]'``), imported lazily.

Why the product explains along the straight path from the joint "absent" baseline ([PAD] words, zero
regions), measured with ``benchmarks/explain.py`` on the synthetic set whose object alone carries the colour
family: it puts the top region on the object for 0.59 of correctly scored hateful memes (chance 0.12) and
every deletion ratio is > 1. The alternatives kept here for comparison do no better for their cost:
``path="modalities"`` (one modality restored at a time, both orders averaged) localises hateful memes as
well (0.60) and benign ones better (0.56 against 0.45) but needs ~4x the steps for the same ``delta``;
baselines from reference memes (:func:`reference_baselines`, expected gradients) localise worse from 4
memes (0.38) and as well from 16 (0.62) at 8x the cost. The rate is 0.96 for cool-object memes and 0.18
for warm ones, and 0.16 to 0.21 for warm ones with each alternative: the noise-free model reads "a cool
object somewhere" and warm as its absence, which no attribution can place on the object (see the
benchmark's table).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from memeguard.errors import ConfigError
from memeguard.models.base import MemeModel

METHOD = "integrated_gradients"
PATHS = ("straight", "modalities")  # see integrated_gradients
MAX_STEPS = 1024  # each step is one forward + backward pass: an explanation costs `steps` passes
EXPLAIN_EXTRA_HINT = "pip install 'memeguard[explain]'"


@dataclass
class Attribution:
    """One meme's attributions: per token (rows of ``input_ids``) and per region (rows of the boxes).

    ``text``/``regions`` are None when the model has no such input. ``delta`` is IG's approximation
    error, ``sum(attributions) - (logit - baseline_logit)``.
    """

    text: np.ndarray | None
    regions: np.ndarray | None
    logit: float
    baseline_logit: float
    delta: float
    steps: int
    method: str = METHOD


def captum_ig():  # noqa: ANN202 - captum's class, imported lazily
    try:
        from captum.attr import IntegratedGradients
    except ImportError:
        raise ConfigError(f"explanations need captum: {EXPLAIN_EXTRA_HINT}") from None
    return IntegratedGradients


def check_explainable(model: MemeModel, batch: Mapping[str, torch.Tensor]) -> None:
    """A one-line ConfigError for a model whose batch the default hook cannot read (a head on pooled CLIP
    embeddings has no word pieces nor regions) and that does not provide its own hook."""
    overrides = type(model).attribution_inputs is not MemeModel.attribution_inputs
    if not overrides and not {"input_ids", "visual_feats"} <= set(batch):
        raise ConfigError(
            f"{model.config.model_type} models cannot be explained yet: they read no word pieces and region "
            "features (e.g. pooled CLIP embeddings) and define no MemeModel.attribution_inputs"
        )


def keep_mask(batch: Mapping[str, torch.Tensor], special_ids: Iterable[int]) -> torch.Tensor:
    """[B, T] true where the text baseline keeps the real token: special tokens and padding."""
    input_ids = batch["input_ids"]
    special = torch.isin(input_ids, torch.as_tensor(sorted(set(special_ids)), device=input_ids.device))
    padding = batch.get("attention_mask", torch.ones_like(input_ids)) == 0
    return special | padding


def tile_batch(batch: Mapping[str, torch.Tensor], times: int) -> dict[str, torch.Tensor]:
    """The batch repeated ``times`` along dim 0, in captum's layout (all memes for step 1, then step 2)."""
    if times == 1:
        return dict(batch)
    return {
        key: value.repeat(times, *([1] * (value.dim() - 1))) if isinstance(value, torch.Tensor) else value
        for key, value in batch.items()
    }


def logit_from(
    model: MemeModel, batch: Mapping[str, torch.Tensor], inputs: Mapping[str, torch.Tensor]
) -> torch.Tensor:
    """The hateful logit [B] from ``inputs`` (the originals, the baselines or a deletion of some rows)."""
    with torch.no_grad():
        return model.forward_from_inputs(batch, **inputs).float()


def check_steps(steps: int) -> int:
    """``steps`` when in 1..MAX_STEPS; a ConfigError naming the range otherwise."""
    if not 1 <= steps <= MAX_STEPS:
        raise ConfigError(f"steps must be in 1..{MAX_STEPS}, got {steps}")
    return steps


def reference_baselines(
    model: MemeModel,
    batch: Mapping[str, torch.Tensor],
    keep: torch.Tensor,
    references: Mapping[str, torch.Tensor],
    reference_keep: torch.Tensor,
) -> list[dict[str, torch.Tensor]]:
    """One baseline per reference meme (expected gradients, Erion et al. 2021): the memes of ``batch``
    with their word pieces replaced, in order, by the reference's and their region rows by its rows.

    Why: the "absent" baseline ([PAD] words, zero regions) is a meme no model was trained on, and a model
    may score it as confidently as a real one (on the synthetic set a saturated model scores it +9 like
    every hateful meme, leaving IG nothing to distribute). Real memes average to the data's own score, so
    the attributions explain "why this meme rather than a typical one". ``references``: the reference
    memes' :meth:`~MemeModel.attribution_inputs` [K, ...] and ``reference_keep`` [K, T'] their
    :func:`keep_mask`. Word positions beyond a shorter reference's words keep the [PAD] baseline, region
    rows beyond its regions stay zero; special tokens and padding keep their own embedding as before.
    """
    inputs = model.attribution_inputs(batch)
    absent = model.attribution_baselines(batch, inputs, keep)
    out = []
    for k in range(next(iter(references.values())).shape[0]):
        base = {name: value.clone() for name, value in absent.items()}
        if "text" in base and "text" in references:
            pieces = references["text"][k][~reference_keep[k].to(references["text"].device)]
            for row in range(base["text"].shape[0]):
                slots = torch.nonzero(~keep[row]).flatten()[: pieces.shape[0]]
                base["text"][row, slots] = pieces[: slots.numel()].to(base["text"].dtype)
        if "regions" in base and "regions" in references:
            rows = min(base["regions"].shape[1], references["regions"].shape[1])
            base["regions"][:, :rows] = references["regions"][k, :rows].to(base["regions"].dtype)
        out.append(base)
    return out


def integrated_gradients(
    model: MemeModel,
    batch: Mapping[str, torch.Tensor],
    keep: torch.Tensor,
    steps: int = 32,
    internal_batch_size: int | None = None,
    baselines: Mapping[str, torch.Tensor] | Sequence[Mapping[str, torch.Tensor]] | None = None,
    path: str = "straight",
) -> list[Attribution]:
    """IG attributions of every meme of ``batch``, summed over each token's and region's vector.

    ``keep`` [B, T]: the text positions the baseline keeps (:func:`keep_mask`). ``steps``: Gauss-Legendre
    points along the straight path; 32 keeps ``delta`` under 1 % of the logit change on the tiny models,
    at the cost of ``steps`` forward and backward passes. ``baselines``: other starting points than
    the model's (``benchmarks/explain.py`` compares one modality removed at a time), or a list of them
    (:func:`reference_baselines`): then ``steps`` is shared out (``steps // len(baselines)`` points per
    path, at least one) and the attributions, logit and delta are the means over the paths, so they still
    sum to ``logit - baseline_logit`` with ``baseline_logit`` the mean of the baselines' logits.
    ``path``: ``straight`` (every input at once) or ``modalities`` (:func:`_modality_paths`).
    """
    check_steps(steps)
    check_explainable(model, batch)
    if model.training:
        raise ConfigError("explain a model in eval mode (dropout would make the path integral random)")
    inputs = model.attribution_inputs(batch)
    if baselines is None:
        baselines = model.attribution_baselines(batch, inputs, keep)
    if path not in PATHS:
        raise ConfigError(f"integrated-gradients path {path!r}: choose one of {', '.join(PATHS)}")
    if path == "modalities" and not isinstance(baselines, Mapping):
        raise ConfigError("the modalities path starts from one baseline, not a list of them")
    if isinstance(baselines, Mapping) and path == "modalities" and len(inputs) > 1:
        return _modality_paths(model, batch, inputs, baselines, steps, internal_batch_size)
    if isinstance(baselines, Mapping):
        return _integrate(model, batch, inputs, baselines, steps, internal_batch_size)
    if not baselines:
        raise ConfigError("integrated gradients from a list of baselines needs at least one")
    paths = len(baselines)
    tiled = tile_batch(batch, paths)  # path k of meme b is row k * B + b, as captum tiles too
    stacked = {name: torch.cat([base[name] for base in baselines]) for name in inputs}
    repeated = {name: value.repeat(paths, *([1] * (value.dim() - 1))) for name, value in inputs.items()}
    per_path = _integrate(model, tiled, repeated, stacked, max(1, steps // paths), internal_batch_size)
    size = next(iter(inputs.values())).shape[0]
    return [_mean(per_path[row::size], steps) for row in range(size)]


def _modality_paths(
    model: MemeModel,
    batch: Mapping[str, torch.Tensor],
    inputs: Mapping[str, torch.Tensor],
    baselines: Mapping[str, torch.Tensor],
    steps: int,
    internal_batch_size: int | None,
) -> list[Attribution]:
    """IG along the paths that restore one modality at a time (words, then regions; regions, then words),
    averaged over the orders: the Shapley value of the modalities, split within each by IG.

    Why: on a label that needs both modalities (the synthetic XOR, a hateful meme's image-text
    interaction), the straight path credits the interaction to whichever modality's gradient is larger along
    the diagonal; here each modality gets half its effect without the other and half its effect with the
    other present. Every segment is a straight IG path, so the attributions still sum to
    ``f(x) - f(baseline)``. Costs the same ``steps`` passes, shared over the segments.
    """
    segments = []
    for order in itertools.permutations(inputs):
        point = dict(baselines)
        for name in order:
            start, point = point, {**point, name: inputs[name]}
            segments.append((start, point))
    count = len(segments)
    starts = {name: torch.cat([start[name] for start, _ in segments]) for name in inputs}
    ends = {name: torch.cat([end[name] for _, end in segments]) for name in inputs}
    tiled = tile_batch(batch, count)
    per_segment = _integrate(model, tiled, ends, starts, max(1, steps // count), internal_batch_size)
    size, orders = next(iter(inputs.values())).shape[0], count // len(inputs)
    out = []
    for row in range(size):
        parts = per_segment[row::size]  # segment k of meme `row` is row k * size + row
        text = None if parts[0].text is None else np.sum([part.text for part in parts], axis=0) / orders
        regions = None if parts[0].regions is None else np.sum([p.regions for p in parts], axis=0) / orders
        logit, baseline_logit = parts[-1].logit, parts[0].baseline_logit
        total = sum(float(values.sum()) for values in (text, regions) if values is not None)
        out.append(Attribution(text, regions, logit, baseline_logit, total - (logit - baseline_logit), steps))
    return out


def _mean(paths: Sequence[Attribution], steps: int) -> Attribution:
    """One meme's attribution averaged over its paths (completeness holds for the mean)."""

    def average(values: list[np.ndarray | None]) -> np.ndarray | None:
        return None if values[0] is None else np.mean(np.stack(values), axis=0)

    return Attribution(
        text=average([path.text for path in paths]),
        regions=average([path.regions for path in paths]),
        logit=float(np.mean([path.logit for path in paths])),
        baseline_logit=float(np.mean([path.baseline_logit for path in paths])),
        delta=float(np.mean([path.delta for path in paths])),
        steps=steps,
    )


def _integrate(
    model: MemeModel,
    batch: Mapping[str, torch.Tensor],
    inputs: Mapping[str, torch.Tensor],
    baselines: Mapping[str, torch.Tensor],
    steps: int,
    internal_batch_size: int | None,
) -> list[Attribution]:
    """captum's IG along one straight path per row of ``inputs``, from that row of ``baselines``."""
    names = tuple(inputs)
    size = next(iter(inputs.values())).shape[0]

    def forward(*values: torch.Tensor) -> torch.Tensor:
        tiled = tile_batch(batch, values[0].shape[0] // size)
        return model.forward_from_inputs(tiled, **dict(zip(names, values, strict=True))).float()

    ig = captum_ig()(forward)
    with torch.enable_grad():
        attributions, delta = ig.attribute(
            tuple(inputs[name] for name in names),
            baselines=tuple(baselines[name] for name in names),
            n_steps=steps,
            internal_batch_size=internal_batch_size,
            return_convergence_delta=True,
        )
    logits = logit_from(model, batch, inputs)
    baseline_logits = logit_from(model, batch, baselines)
    per_name = {
        name: attr.detach().float().sum(-1).cpu().numpy()
        for name, attr in zip(names, attributions, strict=True)
    }
    return [
        Attribution(
            text=per_name["text"][row] if "text" in per_name else None,
            regions=per_name["regions"][row] if "regions" in per_name else None,
            logit=float(logits[row]),
            baseline_logit=float(baseline_logits[row]),
            delta=float(delta[row]),
            steps=steps,
        )
        for row in range(size)
    ]
