"""``memeguard train`` / ``pretrain`` / ``predict`` (merged at top level). Each command parses its options
into a config and calls one function; torch is imported inside the commands.

The options of ``train`` and ``pretrain`` are the fields of ``TrainConfig`` / ``PretrainConfig``: name, type,
default, choices and help come from the pydantic field, so a new field is a new option. A few keep the short
spellings the commands always had (``--data``, ``--out``, ``--predict``, ``--set``), and ``--acc`` stays an
alias of ``--grad-accum-steps``.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_args, get_origin

import typer

from memeguard.training.config import Precision, PretrainConfig, RunConfig, TrainConfig

app = typer.Typer(no_args_is_help=True, add_completion=False)

# field -> option spellings, where they are not ``--field-name``
OPTION_NAMES: dict[str, tuple[str, ...]] = {
    "data_dir": ("--data",),
    "out_dir": ("--out",),
    "predict_splits": ("--predict",),
    "grad_accum_steps": ("--grad-accum-steps", "--acc"),  # --acc: the name before the rename, kept working
    "model_overrides": ("--set",),
}
OVERRIDES_HELP = "Model config override key=value, JSON values where they parse (repeatable)."


def _parse_overrides(items: list[str]) -> dict[str, object]:
    """``--set key=value`` (JSON values where they parse: ``max_regions=50``, ``head="layeravg"``)."""
    import json

    from memeguard.errors import ConfigError

    out: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _option_type(annotation: Any) -> Any:
    """What typer parses for a field: paths as Path, tuples as a repeatable option, the rest as declared
    (``Literal`` fields become choices)."""
    if annotation == (str | Path):
        return Path
    if annotation == (tuple[str, ...] | None):  # a list that may be absent (distillation's unlabelled)
        return list[str] | None
    if get_origin(annotation) is tuple:
        return list[get_args(annotation)[0]]
    return annotation


def config_options(config: type[RunConfig]) -> list[inspect.Parameter]:
    """One typer option per config field."""
    params = []
    for name, field in config.model_fields.items():
        annotation, help_text = _option_type(field.annotation), field.description
        default = ... if field.is_required() else field.get_default(call_default_factory=True)
        if name == "model_overrides":
            annotation, default, help_text = list[str], [], OVERRIDES_HELP
        elif isinstance(default, tuple):
            default = list(default)
        option = typer.Option(default, *OPTION_NAMES.get(name, ()), help=help_text)
        params.append(
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation)
        )
    return params


def config_command(name: str, config: type[RunConfig], *extra: inspect.Parameter) -> Callable:
    """Register ``run(ctx, **options)`` as command ``name``, with ``config``'s fields (+ ``extra``) as
    its options."""

    def register(run: Callable[..., None]) -> Callable[..., None]:
        def command(**values: Any) -> None:
            run(**values)

        context = inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)
        signature = inspect.Signature([context, *config_options(config), *extra])
        command.__signature__ = signature  # type: ignore[attr-defined]
        command.__doc__ = run.__doc__
        app.command(name)(command)
        return run

    return register


def config_values(values: dict[str, Any]) -> dict[str, Any]:
    """Parsed options -> config keyword arguments (``--set`` items, ``--eval-split none``)."""
    values = {**values, "model_overrides": _parse_overrides(values["model_overrides"])}
    if isinstance(values.get("eval_split"), str) and values["eval_split"].lower() == "none":
        values["eval_split"] = None
    return values


TINY_OPTION = inspect.Parameter(
    "tiny",
    inspect.Parameter.KEYWORD_ONLY,
    annotation=bool,
    default=typer.Option(False, help="Start from TINY_DEFAULTS (explicit options still apply on top)."),
)


FAMILY_OPTION = inspect.Parameter(
    "family_defaults",
    inspect.Parameter.KEYWORD_ONLY,
    annotation=bool,
    default=typer.Option(
        False,
        help="Start from the model family's training defaults (Hate-CLIPper, RGCL: their papers' optimiser "
        "settings; none for the BERT-style models); explicit options still apply on top.",
    ),
)


def apply_defaults(ctx: typer.Context, values: dict[str, Any], defaults: dict[str, Any]) -> None:
    """``defaults`` for every option left at its default; ``model_overrides`` are merged (--set wins)."""
    for key, value in defaults.items():
        if key == "model_overrides":
            values[key] = {**value, **values[key]}
            continue
        source = ctx.get_parameter_source(key)
        if source is None or source.name == "DEFAULT":
            values[key] = value


@config_command("train", TrainConfig, TINY_OPTION, FAMILY_OPTION)
def train_command(ctx: typer.Context, tiny: bool, family_defaults: bool, **options: Any) -> None:
    """Fine-tune a model and write RUN_DIR/<split>.csv for every --predict split."""
    from memeguard.training.build import train_defaults
    from memeguard.training.config import TINY_DEFAULTS
    from memeguard.training.loop import finetune

    values = config_values(options)
    if family_defaults:
        apply_defaults(ctx, values, train_defaults(values["model"]))
    if tiny:
        apply_defaults(ctx, values, TINY_DEFAULTS)
    result = finetune(TrainConfig(**values))
    if os.environ.get("RANK", "0") != "0":
        return  # under torchrun only rank 0 reports
    state = "already finished" if result.skipped else "done"
    typer.echo(f"{result.run_dir}: {state}; " + ", ".join(f"{k}={v:.4f}" for k, v in result.metrics.items()))
    for split, path in result.predictions.items():
        typer.echo(f"  {split}: {path}")


@config_command("pretrain", PretrainConfig)
def pretrain_command(ctx: typer.Context, **options: Any) -> None:
    """Task pretraining (MLM + ITM) on the memes; fine-tune from it with `train --init RUN_DIR`."""
    from memeguard.training.pretraining import pretrain

    typer.echo(f"{pretrain(PretrainConfig(**config_values(options)))}: done")


@app.command("predict")
def predict_command(
    checkpoint: Path = typer.Option(..., help="A run dir (its model/) or a model dir."),
    features: Path = typer.Option(...),
    data: Path = typer.Option(...),
    split: str = typer.Option(...),
    out: Path = typer.Option(..., help="Output CSV (id,proba,label)."),
    batch_size: int = typer.Option(50),
    device: str = typer.Option("auto"),
    precision: Precision = typer.Option("fp32", help="Autocast precision (fp16 on CUDA only)."),
    limit: int | None = typer.Option(None),
) -> None:
    """Predict one split with a trained model."""
    from memeguard.training.inference import predict

    path = predict(
        checkpoint,
        features,
        data,
        split,
        out,
        batch_size=batch_size,
        device=device,
        precision=precision,
        limit=limit,
    )
    typer.echo(str(path))
