"""``memeguard distill``: one student trained on a teacher ensemble's probabilities.

It lives in serving because a bundle teacher is scored by :class:`MemeScorer` (from the images, as it would
score new memes); an ensemble-folder teacher and the distillation itself are ``pipeline/distill.py``'s. The
options after ``--teacher``, ``--student`` and ``--extra`` are ``memeguard train``'s (``TrainConfig``'s
fields, ``--tiny``), less the ones distillation sets: the training split, the unlabelled memes, the soft
targets and the predicted splits (every split present but train).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import typer

from memeguard.data.meme import Meme
from memeguard.training.cli import TINY_OPTION, config_options, config_values
from memeguard.training.config import TrainConfig

app = typer.Typer(no_args_is_help=True, add_completion=False)

# TrainConfig fields the command fills in itself.
SET_BY_DISTILL = {"model", "train_split", "unlabelled", "soft_targets", "predict_splits"}
# Memes scored per MemeScorer call (decoded images are held in memory for one call only).
BUNDLE_BATCH = 32


def bundle_scores(source: str | Path, device: str = "auto"):  # type: ignore[no-untyped-def]
    """A bundle as a teacher: ``MemeScorer.from_bundle`` scores each meme from its image and its text, as
    the bundle scores a new meme in production (features re-extracted with the bundle's extractor)."""
    from memeguard.data.hm import image_path
    from memeguard.serving.scorer import MemeScorer

    scorer = MemeScorer.from_bundle(source, device=device)

    def scores(items: Sequence[tuple[Path, Meme]]) -> dict[int, float]:
        found: dict[int, float] = {}
        for start in range(0, len(items), BUNDLE_BATCH):
            chunk = items[start : start + BUNDLE_BATCH]
            pairs = [(image_path(folder, meme), meme.text) for folder, meme in chunk]
            for (_, meme), score in zip(chunk, scorer.score_batch(pairs, ocr="never"), strict=True):
                found[meme.id] = score.proba
        return found

    return scores


def teacher_scores(teacher: Path, device: str):  # type: ignore[no-untyped-def]
    """The teacher behind ``--teacher``: a bundle (``memeguard export``) or an ensemble folder."""
    from memeguard.pipeline.distill import ensemble_scores, ensemble_teacher
    from memeguard.serving.bundle import is_bundle

    if is_bundle(teacher):
        return bundle_scores(teacher, device)
    return ensemble_scores(ensemble_teacher(teacher), device=device)


def _parameters() -> list[inspect.Parameter]:
    def option(name: str, annotation: Any, default: Any) -> inspect.Parameter:
        return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)

    own = [
        option("teacher", Path, typer.Option(..., help="An ensemble folder (weighted mean) or a bundle.")),
        option("student", str, typer.Option(..., help="Registered model name of the student.")),
        option(
            "extra",
            list[Path],
            typer.Option([], help="A Hateful-Memes-layout folder of unlabelled memes (repeatable)."),
        ),
    ]
    kept = [p for p in config_options(TrainConfig) if p.name not in SET_BY_DISTILL]
    context = inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)
    return [context, *own, *kept, TINY_OPTION]


def distill_command(
    ctx: typer.Context, teacher: Path, student: str, extra: list[Path], tiny: bool, **options: Any
) -> None:
    """Train one student on the teacher's probabilities over train + test + --extra memes (never dev)."""
    from memeguard.pipeline.distill import distill, student_config

    values = config_values({**options, "model_overrides": options["model_overrides"]})
    if tiny:
        from memeguard.training.cli import apply_defaults
        from memeguard.training.config import TINY_DEFAULTS

        apply_defaults(ctx, values, TINY_DEFAULTS)  # as ``memeguard train --tiny``
    paths = {key: values.pop(key) for key in ("features", "data_dir", "out_dir")}
    cfg = student_config(student, paths["features"], paths["data_dir"], paths["out_dir"], extra, **values)
    result = distill(cfg, teacher_scores(teacher, cfg.device))
    state = "already finished" if result.skipped else "done"
    typer.echo(f"{result.run_dir}: {state}; " + ", ".join(f"{k}={v:.4f}" for k, v in result.metrics.items()))


def _command(**values: Any) -> None:
    distill_command(**values)


_command.__signature__ = inspect.Signature(_parameters())  # type: ignore[attr-defined]
_command.__doc__ = distill_command.__doc__
app.command("distill")(_command)
