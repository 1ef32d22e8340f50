"""``memeguard ensemble PRED_DIR --gt DEV_JSONL --out OUT``: vilio's seed averaging + ensemble loop."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="Ensembling of prediction CSVs.", no_args_is_help=True)


def _class_counts(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        positives, negatives = (int(part) for part in value.split(","))
    except ValueError:
        raise typer.BadParameter(f"expected POSITIVES,NEGATIVES (e.g. 250,250), got {value!r}") from None
    return positives, negatives


@app.command("ensemble")
def ensemble(
    pred_dir: Path = typer.Argument(
        ..., help="Folder of <model>_{dev_seen,test_seen,test_unseen}.csv files."
    ),
    gt: Path = typer.Option(..., "--gt", help="Labelled dev split, e.g. DATA_DIR/dev_seen.jsonl."),
    out: Path = typer.Option(..., "--out", help="Output folder for FIN_<split>.csv and weights.json."),
    method: str = typer.Option(
        "loop", "--method", help="loop (vilio), sa, pa, ra, sx (simplex) or opt (fast search)."
    ),
    families: str = typer.Option(
        "auto",
        "--families",
        help="Seed families: auto (families.json, else <family>__<run> names), none, regex:PATTERN, or a JSON file.",
    ),
    optimizer: str = typer.Option(
        "simplex", "--optimizer", help="Weight search inside the loop: simplex or coordinate."
    ),
    splits: str = typer.Option(
        "dev_seen,test_seen,test_unseen", "--splits", help="Comma-separated splits to ensemble."
    ),
    class_counts: str | None = typer.Option(
        None,
        "--class-counts",
        help="POS,NEG counts for the threshold rule (vilio: 250,250); default: real dev counts.",
    ),
    test_labels: str = typer.Option(
        "prior", "--test-labels",
        help="How many test memes are labelled hateful: prior (the models' mean probability on the split), "
        "rate (the dev threshold's share on dev) or threshold (vilio: the dev threshold itself).",
    ),
) -> None:
    """Seed-average each family, blend (SA/PA/RA/simplex, two passes for 'loop') and write FIN_<split>.csv."""
    from memeguard.ensemble.folder import ensemble_folder

    result = ensemble_folder(
        pred_dir,
        gt,
        out,
        method=method,
        families=families,
        optimizer=optimizer,
        splits=None if splits == "auto" else tuple(s.strip() for s in splits.split(",") if s.strip()),
        class_counts=_class_counts(class_counts),
        test_labels=test_labels,
    )
    groups = ", ".join(f"{name}({len(members)})" for name, members in result.families.items())
    typer.echo(f"families: {groups}")
    typer.echo(
        f"{method}: dev AUROC {result.dev_auroc:.4f}, threshold {result.threshold:.4f}, dev accuracy {result.dev_accuracy:.4f}"
    )
    for path in result.files.values():
        typer.echo(f"wrote {path}")
    typer.echo(f"wrote {result.weights_path}")
