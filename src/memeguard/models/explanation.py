"""Explanations of one meme's score by given models: the records, word and region mapping, the PNG.

Why here, in ``models``: the explanation of a meme needs only models, their processors and the meme's
region records, and both ``memeguard explain`` (serving: records extracted from pixels by the scorer) and
the pipeline's report gallery (records read from the runs' feature stores) explain memes. ``pipeline`` may
not import ``serving``, so the shared part lives next to the IG core (:mod:`memeguard.models.attribution`),
the lowest package that knows models.

Numbers are in logit units. For each model the token and region attributions sum to
``logit - baseline_logit`` up to ``delta`` (IG's approximation error). An ensemble's words and heat map
are the members' attributions weighted by the ensemble weights (each member's in its own logit units).
The PNG: the meme with each region's attribution spread over its box (attribution / box area, summed
where boxes overlap; red pushes toward hateful, blue away, opacity by magnitude), and the words below,
coloured the same way.

A model on pooled embeddings (the CLIP heads) reads one vector for the whole text and one for the whole
image: its explanation has one token (the whole text, belonging to no single word), its text attribution
spread over the words in equal shares (the vector does not say which word mattered; the shares keep the
sum), and one region, the whole image.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydantic import BaseModel, Field

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from memeguard.features.record import RegionRecord
    from memeguard.models.base import MemeModel

# Torch and captum are imported when an explanation is computed, not with the records (the HTTP app
# imports them to describe its API).
METHOD = "integrated_gradients"  # memeguard.models.attribution.METHOD
MAX_PNG_SIDE = 1024  # the overlay is drawn on the meme scaled to at most this many pixels a side
MIN_PNG_SIDE = 320  # ... and at least this many, so small memes stay readable
POSITIVE_RGB = (220, 30, 30)  # toward hateful
NEGATIVE_RGB = (30, 90, 230)  # away from hateful
MAX_ALPHA = 170


# ------------------------------------------------------------------------------------------ records


class TokenAttribution(BaseModel):
    token: str = Field(description="A word piece of the model's input, special tokens included")
    word: int | None = Field(description="Index into 'words' of the word it belongs to; null for none")
    attribution: float


class WordAttribution(BaseModel):
    word: str
    attribution: float = Field(description="Sum of its word pieces' attributions (logit units)")


class RegionAttribution(BaseModel):
    box: list[float] = Field(description="x1, y1, x2, y2 in pixels of the scored image")
    attribution: float


class ModelExplanation(BaseModel):
    """One ensemble member: tokens + regions sum to ``logit - baseline_logit`` up to ``delta``."""

    model: str
    weight: float = Field(description="The member's ensemble weight (normalised)")
    method: Literal["integrated_gradients"] = METHOD
    steps: int
    logit: float
    baseline_logit: float = Field(description="The logit with every word piece [PAD] and regions zeroed")
    delta: float = Field(description="sum of attributions - (logit - baseline_logit): IG's error")
    tokens: list[TokenAttribution]
    words: list[WordAttribution]
    regions: list[RegionAttribution]


class Explanation(BaseModel):
    """Why the models scored a meme as they did."""

    text: str = Field(description="The text the models read")
    image_size: list[int] = Field(description="width, height of the scored image")
    method: Literal["integrated_gradients"] = METHOD
    steps: int
    words: list[WordAttribution] = Field(description="Ensemble-weighted word attributions")
    models: list[ModelExplanation]


# ------------------------------------------------------------------------------------------ words


def words_of(text: str) -> list[tuple[int, int]]:
    """Character spans of the whitespace-separated words of ``text`` (as the processor collapses it)."""
    return [match.span() for match in re.finditer(r"\S+", text)]


def token_words(tokenizer: Any, text: str, input_ids: Sequence[int], max_length: int) -> list[int | None]:
    """For each position of ``input_ids``, the index of the word of ``text`` it comes from, or None.

    The text is tokenised again with offsets; positions beyond what it yields (OSCAR's object tags) or
    where the ids differ belong to no word.
    """
    encoded = tokenizer(text, truncation=True, max_length=max_length, return_offsets_mapping=True)
    spans = words_of(text)
    starts = np.asarray([start for start, _ in spans])
    out: list[int | None] = []
    for k, token_id in enumerate(input_ids):
        if k >= len(encoded["input_ids"]) or encoded["input_ids"][k] != token_id:
            out.append(None)
            continue
        start, end = encoded["offset_mapping"][k]
        out.append(int(np.searchsorted(starts, start, side="right") - 1) if end > start and spans else None)
    return out


def _sum_by_word(words: Sequence[str], owners: Sequence[int | None], values: np.ndarray) -> np.ndarray:
    totals = np.zeros(len(words), dtype=np.float64)
    for owner, value in zip(owners, values, strict=True):
        if owner is not None:
            totals[owner] += float(value)
    return totals


# ------------------------------------------------------------------------------------------ explain


@dataclass
class MemberInput:
    """One model's view of one meme, however it was built (the scorer from pixels, the pipeline from a
    feature store): the batch it differentiates through and the region record the batch came from."""

    name: str
    model: MemeModel
    processor: Any
    record: RegionRecord
    batch: dict[str, torch.Tensor]
    weight: float = 1.0


def explain_members(
    members: Sequence[MemberInput], text: str, image_size: Sequence[int], steps: int
) -> Explanation:
    """Attribute every member's logit for one meme (``text``: what it was scored with; ``image_size``:
    width, height); the ensemble's words weight the members' by their normalised weights."""
    from memeguard.models.attribution import check_steps

    check_steps(steps)
    cleaned = " ".join(text.split())
    words = [cleaned[start:end] for start, end in words_of(cleaned)]
    totals = np.zeros(len(words))
    explained_members = []
    total = sum(member.weight for member in members)
    weights = [member.weight / total for member in members]  # as the scorer normalises them
    for member, weight in zip(members, weights, strict=True):
        explained = explain_member(member, cleaned, words, steps, float(weight))
        totals += float(weight) * np.asarray([w.attribution for w in explained.words])
        explained_members.append(explained)
    return Explanation(
        text=text,
        image_size=[int(v) for v in image_size],
        steps=steps,
        words=[WordAttribution(word=w, attribution=float(a)) for w, a in zip(words, totals, strict=True)],
        models=explained_members,
    )


def _tokens(
    member: MemberInput, values: np.ndarray | None, text: str, words: list[str]
) -> tuple[list[TokenAttribution], np.ndarray]:
    """The member's token rows and its per-word sums: word pieces mapped to words, or, for a model that
    reads one pooled text vector (no ``input_ids``), one token for the whole text spread evenly."""
    batch = member.batch
    if "input_ids" not in batch:
        value = float(values.sum()) if values is not None else 0.0
        shares = np.full(len(words), value / len(words)) if words else np.zeros(0)
        return [TokenAttribution(token=text, word=None, attribution=value)], shares
    tokenizer = member.processor.tokenizer
    ids = batch["input_ids"][0].tolist()
    length = int(batch["attention_mask"][0].sum()) if "attention_mask" in batch else len(ids)
    owners = token_words(tokenizer, text, ids[:length], member.processor.config.max_text_length)
    text_attr = values[:length] if values is not None else np.zeros(length)
    tokens = [
        TokenAttribution(token=token, word=owner, attribution=float(value))
        for token, owner, value in zip(
            tokenizer.convert_ids_to_tokens(ids[:length]), owners, text_attr, strict=True
        )
    ]
    return tokens, _sum_by_word(words, owners, text_attr)


def _keep(member: MemberInput) -> torch.Tensor:
    """The text positions the baseline keeps; a pooled text vector has no special tokens to keep."""
    import torch

    from memeguard.models.attribution import keep_mask

    if "input_ids" in member.batch:
        return keep_mask(member.batch, member.processor.tokenizer.all_special_ids)
    rows = next(v for v in member.batch.values() if isinstance(v, torch.Tensor)).shape[0]
    return torch.zeros((rows, 1), dtype=torch.bool)


def explain_member(
    member: MemberInput, text: str, words: list[str], steps: int, weight: float
) -> ModelExplanation:
    """One member's IG attributions of one meme, as tokens, words and pixel boxes."""
    from memeguard.models.attribution import check_explainable, integrated_gradients

    check_explainable(member.model, member.batch)
    (result,) = integrated_gradients(member.model, member.batch, _keep(member), steps)
    tokens, word_values = _tokens(member, result.text, text, words)
    boxes = member.processor.region_boxes(member.record)
    region_attr = result.regions if result.regions is not None else np.zeros(len(boxes))
    return ModelExplanation(
        model=member.name,
        weight=weight,
        steps=steps,
        logit=result.logit,
        baseline_logit=result.baseline_logit,
        delta=result.delta,
        tokens=tokens,
        words=[
            WordAttribution(word=w, attribution=float(a)) for w, a in zip(words, word_values, strict=True)
        ],
        regions=[
            RegionAttribution(box=[float(v) for v in box], attribution=float(value))
            for box, value in zip(boxes, region_attr[: len(boxes)], strict=True)
        ],
    )


# ------------------------------------------------------------------------------------------ drawing


def region_heat(
    boxes: Sequence[Sequence[float]], values: Sequence[float], size: tuple[int, int], scale: float = 1.0
) -> np.ndarray:
    """[H, W] map (``size`` = (width, height)) where each box adds its attribution / its area (in pixels
    of the map): a map whose sum over a box's pixels is that box's attribution."""
    width, height = size
    heat = np.zeros((height, width), dtype=np.float64)
    for box, value in zip(boxes, values, strict=True):
        x1, y1, x2, y2 = (float(v) * scale for v in box)
        left, top = max(0, int(np.floor(x1))), max(0, int(np.floor(y1)))
        right, bottom = min(width, int(np.ceil(x2))), min(height, int(np.ceil(y2)))
        if right > left and bottom > top:
            heat[top:bottom, left:right] += float(value) / ((right - left) * (bottom - top))
    return heat


def _overlay(image: Image.Image, heat: np.ndarray) -> Image.Image:
    peak = float(np.abs(heat).max()) or 1.0
    level = heat / peak
    rgba = np.zeros((*heat.shape, 4), dtype=np.uint8)
    rgba[level > 0, :3] = POSITIVE_RGB
    rgba[level < 0, :3] = NEGATIVE_RGB
    rgba[..., 3] = np.round(np.abs(level) * MAX_ALPHA).astype(np.uint8)
    return Image.alpha_composite(image.convert("RGBA"), Image.fromarray(rgba, "RGBA")).convert("RGB")


def _word_colour(value: float, peak: float) -> tuple[int, int, int]:
    """White blended toward red (positive) or blue (negative) by |value| / peak."""
    share = min(1.0, abs(value) / peak) if peak > 0 else 0.0
    target = POSITIVE_RGB if value > 0 else NEGATIVE_RGB
    return tuple(int(round(255 + (c - 255) * share)) for c in target)  # type: ignore[return-value]


def _word_strip(words: Sequence[WordAttribution], width: int, legend: Sequence[str]) -> Image.Image:
    """The words, wrapped to ``width`` and coloured by attribution, then the ``legend`` lines."""
    font, small = ImageFont.load_default(size=16), ImageFont.load_default(size=12)
    pad, line_height, legend_height = 6, 24, 16
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines: list[list[tuple[WordAttribution, int, int]]] = [[]]
    x = pad
    for word in words:
        w = int(draw.textlength(word.word, font=font)) + 8
        if x + w > width - pad and lines[-1]:
            lines.append([])
            x = pad
        lines[-1].append((word, x, w))
        x += w + 4
    height = pad * 2 + line_height * len(lines) + legend_height * len(legend)
    strip = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(strip)
    peak = max((abs(w.attribution) for w in words), default=0.0)
    for row, line in enumerate(lines):
        top = pad + row * line_height
        for word, left, w in line:
            colour = _word_colour(word.attribution, peak)
            draw.rectangle((left, top, left + w, top + line_height - 4), fill=colour)
            draw.text((left + 4, top + 2), word.word, fill="black", font=font)
    for row, text in enumerate(legend):
        draw.text(
            (pad, pad + len(lines) * line_height + row * legend_height), text, fill=(80, 80, 80), font=small
        )
    return strip


def _short(name: str, limit: int = 24) -> str:
    """A model name that fits the legend of a 320-pixel-wide PNG."""
    return name if len(name) <= limit else name[: limit - 3] + "..."


def _display_scale(width: int, height: int) -> float:
    """Pixels of the PNG per pixel of the meme: the longer side between 320 and ``MAX_PNG_SIDE``."""
    side = max(width, height)
    return min(MAX_PNG_SIDE, max(MIN_PNG_SIDE, side)) / side


def render_png(image: Image.Image, explanation: Explanation) -> bytes:
    """The meme (its longer side scaled into 320..``MAX_PNG_SIDE``) with its region heat overlay and the
    words below."""
    scale = _display_scale(image.width, image.height)
    shown = image.convert("RGB")
    if scale != 1.0:
        shown = shown.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
    heat = np.zeros((shown.height, shown.width))
    for member in explanation.models:
        boxes = [region.box for region in member.regions]
        values = [member.weight * region.attribution for region in member.regions]
        heat += region_heat(boxes, values, shown.size, scale)
    overlaid = _overlay(shown, heat)
    legend = [f"red: toward hateful, blue: away (IG, {explanation.steps} steps)"] + [
        f"{_short(m.model)}: logit {m.logit:+.2f} (baseline {m.baseline_logit:+.2f})"
        for m in explanation.models
    ]
    strip = _word_strip(explanation.words, max(overlaid.width, MIN_PNG_SIDE), legend)
    canvas = Image.new("RGB", (strip.width, overlaid.height + strip.height), "white")
    canvas.paste(overlaid, (0, 0))
    canvas.paste(strip, (0, overlaid.height))
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()
