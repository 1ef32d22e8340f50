"""``memeguard export``: trained runs (and their ensemble's weights) into one deployable bundle folder."""

from __future__ import annotations

from pathlib import Path

import typer

from memeguard.errors import ConfigError

app = typer.Typer(help="Export trained runs as a deployable bundle.", no_args_is_help=True)


def _rule(
    threshold: str, target_precision: float | None, target_recall: float | None
) -> tuple[str, float | None]:
    """The three mutually exclusive ways to give the operating point -> (rule, target)."""
    targets = [t for t in (target_precision, target_recall) if t is not None]
    if len(targets) > 1 or (targets and threshold != "accuracy"):
        raise ConfigError("give one of --threshold, --target-precision, --target-recall")
    if target_precision is not None:
        return "precision", target_precision
    if target_recall is not None:
        return "recall", target_recall
    if threshold == "accuracy":
        return "accuracy", None
    try:
        return "fixed", float(threshold)
    except ValueError:
        raise ConfigError(
            f"--threshold must be 'accuracy' or a number in [0, 1], got {threshold!r}"
        ) from None


@app.command("export")
def export(
    runs: list[Path] = typer.Argument(
        ..., metavar="RUN_DIR...", help="Train run dirs (RUN_DIR/model, train_config.json)."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="The bundle folder to write (new, empty or a bundle)."),
    ensemble: Path | None = typer.Option(
        None, "--ensemble", help="A `memeguard ensemble` output: its SX weights become the members' weights."
    ),
    threshold: str = typer.Option(
        "accuracy", "--threshold", help="'accuracy' (best dev accuracy) or a fixed probability in [0, 1]."
    ),
    target_precision: float | None = typer.Option(
        None, "--target-precision", help="Highest-recall threshold whose dev precision >= P."
    ),
    target_recall: float | None = typer.Option(
        None, "--target-recall", help="Highest-precision threshold whose dev recall >= R."
    ),
    data_dir: Path | None = typer.Option(
        None,
        "--data-dir",
        help="Folder with the labelled dev_seen.jsonl (default: the first run's data_dir).",
    ),
    dev_predictions: Path | None = typer.Option(
        None, "--dev-predictions", help="dev_seen scores (id,proba,label CSV) to choose the threshold on."
    ),
    optimize: str = typer.Option(
        "fp32",
        "--optimize",
        help="How score/serve run the models on a CPU: fp32 (as trained), int8 (int8 feed-forward Linear "
        "layers) or onnx (an exported graph run by onnxruntime).",
    ),
) -> None:
    """Write RUN_DIR... as one bundle: weights, configs, feature settings, operating point, model card."""
    from memeguard.serving.bundle import export_bundle

    rule, target = _rule(threshold, target_precision, target_recall)
    manifest = export_bundle(runs, out, ensemble, rule, target, data_dir, dev_predictions, optimize)
    point = manifest.operating_point
    dev = point.dev
    summary = f"precision {dev.precision:.3f}, recall {dev.recall:.3f} on dev" if dev is not None else ""
    count = len(manifest.members)
    typer.echo(
        f"exported {count} model(s) -> {out} ({optimize}; "
        f"threshold {point.threshold:.4f} by {rule}; {summary})"
    )
