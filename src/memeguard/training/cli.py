"""``memeguard train`` / ``pretrain`` / ``predict`` (merged at top level). Each command parses its options
into a config and calls one function; torch is imported inside the commands."""

from __future__ import annotations

import os
from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False)


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


@app.command("train")
def train_command(
    ctx: typer.Context,
    model: str = typer.Option(..., help="Registered model name, e.g. uniter-large or visualbert-tiny."),
    features: Path = typer.Option(..., help="Feature store directory."),
    data: Path = typer.Option(..., help="Dataset directory (img/ + *.jsonl)."),
    out: Path = typer.Option(..., help="Run directory."),
    train_split: str = typer.Option("train_clean", help="Training split (run a: train_clean, run b: traindev)."),
    predict: list[str] = typer.Option(["dev_seen"], help="Splits to predict (repeat the option)."),
    eval_split: str = typer.Option("dev_seen", help="Evaluated every --eval-every updates; 'none' to skip."),
    seed: int = typer.Option(42),
    init: str | None = typer.Option(None, help="Our model dir, a (pre)train run dir, or an original checkpoint."),
    epochs: int = typer.Option(5),
    lr: float = typer.Option(1e-5),
    batch_size: int = typer.Option(8),
    acc: int = typer.Option(1, help="Gradient accumulation steps."),
    clip: float = typer.Option(5.0, help="Grad-norm clip (<= 0: off)."),
    weight_decay: float = typer.Option(0.0),
    warmup_ratio: float = typer.Option(0.1),
    sum_loss: bool = typer.Option(True, help="vilio's loss x batch size (--no-sum-loss: the mean)."),
    head_lr_mult: float = typer.Option(1.0, help="lr multiplier outside encoder/embeddings/pooler (vilio V: 500)."),
    swa: str = typer.Option("none", help="none | torch | contrib"),
    eval_every: int = typer.Option(250, help="Updates between evaluations (0: only at the end)."),
    select_best: bool = typer.Option(False, help="Keep the weights with the best eval AUROC."),
    checkpoint_every: int = typer.Option(0, help="Updates between mid-epoch checkpoints (0: epoch ends only)."),
    limit: int | None = typer.Option(None, help="Only the first N memes of every split (vilio's topk)."),
    standardize_features: str = typer.Option(
        "auto", help="auto: standardise region features when the model starts from scratch; always; never."
    ),
    device: str = typer.Option("auto"),
    precision: str = typer.Option("fp32", help="fp32 | bf16 | fp16 (fp16 on CUDA only)."),
    num_workers: int = typer.Option(0),
    zero_visual: bool = typer.Option(False, help="Text-only control: zero the visual input."),
    tiny: bool = typer.Option(False, help="Start from TINY_DEFAULTS (explicit options still apply on top)."),
    set_: list[str] = typer.Option([], "--set", help="Model config override key=value (repeatable)."),
    progress: bool = typer.Option(True),
) -> None:
    """Fine-tune a model and write RUN_DIR/<split>.csv for every --predict split."""
    from memeguard.training.config import TINY_DEFAULTS, TrainConfig
    from memeguard.training.loop import finetune

    values = dict(
        model=model, features=features, data_dir=data, out_dir=out, train_split=train_split,
        predict_splits=tuple(predict), eval_split=None if eval_split.lower() == "none" else eval_split, seed=seed,
        init=init, epochs=epochs, lr=lr, batch_size=batch_size, acc=acc, clip=clip, weight_decay=weight_decay,
        warmup_ratio=warmup_ratio, sum_loss=sum_loss, head_lr_mult=head_lr_mult, swa=swa, eval_every=eval_every,
        select_best=select_best, checkpoint_every=checkpoint_every, limit=limit, device=device,
        standardize_features=standardize_features,
        precision=precision, num_workers=num_workers, zero_visual=zero_visual, progress=progress,
        model_overrides=_parse_overrides(set_),
    )
    if tiny:
        for key, value in TINY_DEFAULTS.items():
            if key == "model_overrides":
                values[key] = {**value, **values[key]}  # --set wins
                continue
            source = ctx.get_parameter_source(key)
            if source is None or source.name == "DEFAULT":
                values[key] = value
    result = finetune(TrainConfig(**values))
    if os.environ.get("RANK", "0") != "0":
        return  # under torchrun only rank 0 reports
    state = "already finished" if result.skipped else "done"
    typer.echo(f"{result.run_dir}: {state}; " + ", ".join(f"{k}={v:.4f}" for k, v in result.metrics.items()))
    for split, path in result.predictions.items():
        typer.echo(f"  {split}: {path}")


@app.command("pretrain")
def pretrain_command(
    model: str = typer.Option(...),
    features: Path = typer.Option(...),
    data: Path = typer.Option(...),
    out: Path = typer.Option(...),
    split: str = typer.Option("pretrain"),
    seed: int = typer.Option(42),
    init: str | None = typer.Option(None),
    mlm: bool = typer.Option(True, help="Masked language modelling."),
    itm: bool = typer.Option(True, help="Image-text matching (vilio's O; V and X: --no-itm)."),
    word_mask_rate: float = typer.Option(0.15),
    obj_mask_rate: float = typer.Option(0.15),
    epochs: int = typer.Option(8),
    lr: float = typer.Option(5e-6),
    batch_size: int = typer.Option(16),
    schedule: str = typer.Option("cosine", help="cosine (O, V) | linear (X)"),
    warmup_ratio: float = typer.Option(0.05),
    clip: float = typer.Option(1.0),
    limit: int | None = typer.Option(None),
    device: str = typer.Option("auto"),
    precision: str = typer.Option("fp32"),
    set_: list[str] = typer.Option([], "--set", help="Model config override key=value (repeatable)."),
    progress: bool = typer.Option(True),
) -> None:
    """Task pretraining (MLM + ITM) on the memes; fine-tune from it with `train --init RUN_DIR`."""
    from memeguard.training.config import PretrainConfig
    from memeguard.training.pretraining import pretrain

    cfg = PretrainConfig(
        model=model, features=features, data_dir=data, out_dir=out, split=split, seed=seed, init=init, mlm=mlm,
        itm=itm, word_mask_rate=word_mask_rate, obj_mask_rate=obj_mask_rate, epochs=epochs, lr=lr,
        batch_size=batch_size, schedule=schedule, warmup_ratio=warmup_ratio, clip=clip, limit=limit,
        device=device, precision=precision, progress=progress, model_overrides=_parse_overrides(set_),
    )
    typer.echo(f"{pretrain(cfg)}: done")


@app.command("predict")
def predict_command(
    checkpoint: Path = typer.Option(..., help="A run dir (its model/) or a model dir."),
    features: Path = typer.Option(...),
    data: Path = typer.Option(...),
    split: str = typer.Option(...),
    out: Path = typer.Option(..., help="Output CSV (id,proba,label)."),
    batch_size: int = typer.Option(50),
    device: str = typer.Option("auto"),
    precision: str = typer.Option("fp32"),
    limit: int | None = typer.Option(None),
) -> None:
    """Predict one split with a trained model."""
    from memeguard.training.inference import predict

    path = predict(checkpoint, features, data, split, out, batch_size=batch_size, device=device,
                   precision=precision, limit=limit)
    typer.echo(str(path))
