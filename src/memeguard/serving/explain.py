"""Explanations of a score: which words and which image regions push a meme toward hateful or away.

The method is integrated gradients through each model's input embeddings (see
:mod:`memeguard.models.attribution` for why, the baselines and the model hook). This module is the glue
for ``memeguard explain`` and ``explain=true`` over HTTP: it builds each ensemble member's batch through
the scorer (the same extractor, rounding and processor as scoring) and hands them to
:mod:`memeguard.models.explanation`, which attributes each member's hateful logit, maps word pieces to the
meme's words and regions to their pixel boxes, and draws the PNG (the report's gallery uses it too, from
the runs' feature stores).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image
from pydantic import Field

from memeguard.errors import ConfigError
from memeguard.models.explanation import Explanation, MemberInput, explain_members, render_png

if TYPE_CHECKING:  # pragma: no cover
    from memeguard.serving.scorer import MemeScorer

DEFAULT_STEPS = 32
HTTP_STEPS = 32  # fixed for the service: an explanation costs this many forward + backward passes


class ExplanationResponse(Explanation):
    """What ``explain=true`` adds to an HTTP score: the explanation and its overlay PNG."""

    png_b64: str = Field(description="The overlay PNG, base64")


def explain_image(
    scorer: MemeScorer, image: Image.Image, text: str, steps: int = DEFAULT_STEPS
) -> Explanation:
    """Attribute every member's logit for one decoded RGB image and the text it is scored with."""
    from memeguard.models.attribution import check_steps

    check_steps(steps)
    if scorer.optimize != "fp32":
        raise ConfigError(
            f"explanations need the fp32 weights; these models run the {scorer.optimize} fast path "
            "(load the bundle with optimize='fp32', as `memeguard explain` does)"
        )
    members = [
        MemberInput(member.name, member.model, member.processor, records[0], batch, member.weight)
        for member, records, batch in scorer.member_batches([image], [text])
    ]
    return explain_members(members, text, (image.width, image.height), steps)


def explanation_response(
    scorer: MemeScorer, image: Image.Image, text: str, steps: int
) -> ExplanationResponse:
    """The HTTP form: the explanation with its PNG in base64."""
    explanation = explain_image(scorer, image, text, steps)
    png = base64.b64encode(render_png(image, explanation)).decode("ascii")
    return ExplanationResponse(**explanation.model_dump(), png_b64=png)


# ------------------------------------------------------------------------------------------ files


def output_stems(paths: Sequence[Path]) -> list[str]:
    """Each meme's file stem in the output folder; two memes with one stem are refused (one would
    overwrite the other)."""
    stems = [path.stem for path in paths]
    seen: dict[str, Path] = {}
    for stem, path in zip(stems, paths, strict=True):
        if stem in seen:
            raise ConfigError(
                f"{path} and {seen[stem]} would both write {stem}.explain.*; explain them apart"
            )
        seen[stem] = path
    return stems


def explain_files(
    scorer: MemeScorer,
    paths: Sequence[Path],
    out_dir: Path,
    text: str | None = None,
    ocr: str = "auto",
    steps: int = DEFAULT_STEPS,
) -> list[Path]:
    """``memeguard explain``: for each image, ``OUT/<stem>.explain.json`` (score + explanation) and
    ``OUT/<stem>.explain.png``, each written atomically. Returns the JSON paths."""
    from memeguard.io import write_bytes_atomic, write_json_atomic
    from memeguard.names import explanation_files
    from memeguard.serving.scorer import load_image

    if text is not None and len(paths) != 1:
        raise ConfigError("--text goes with one MEME; several memes are read by OCR")
    stems = output_stems(paths)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path, stem in zip(paths, stems, strict=True):
        image = load_image(path, str(path))
        (score,) = scorer.score_images([image], [text], ocr=ocr, contexts=[str(path)])
        explanation = explain_image(scorer, image, score.text, steps)
        json_name, png_name = explanation_files(stem)
        write_bytes_atomic(out_dir / png_name, render_png(image, explanation))
        record = {"image": str(path), **score.to_dict(include_text=True), **explanation.model_dump()}
        write_json_atomic(out_dir / json_name, record)
        written.append(out_dir / json_name)
    return written
