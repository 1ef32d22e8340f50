"""``memeguard ensemble PRED_DIR --gt DEV_JSONL --out OUT``: vilio's seed averaging + ensemble loop."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import typer

from memeguard.ensemble.method_names import (
    LOOP,
    METHOD_ALIASES,
    METHODS,
    OPTIMIZER_NAMES,
    SIMPLEX,
    TEST_LABEL_RULES,
)
from memeguard.names import PREDICTED_SPLITS

app = typer.Typer(help="Ensembling of prediction CSVs.", no_args_is_help=True)


def choice(
    default: str, flag: str, choices: tuple[str, ...], help: str, aliases: Mapping[str, str] | None = None
) -> str:  # typer's Option object, typed as the value it yields
    """An option that takes one of ``choices`` (or an alias of one), listed in ``--help`` as ``[a|b|c]``.

    typer's ``Literal`` choices cannot take aliases, so the value is checked (and an alias replaced) here.
    """
    known = dict(aliases or {})

    def check(value: str) -> str:
        value = known.get(value, value)
        if value not in choices:
            raise typer.BadParameter(f"{value!r} is not one of {', '.join(choices)}")
        return value

    return typer.Option(default, flag, metavar="[" + "|".join(choices) + "]", callback=check, help=help)


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
    method: str = choice(
        LOOP,
        "--method",
        METHODS,
        aliases=METHOD_ALIASES,
        help="loop: vilio's two passes; mean, power, rank: one unweighted blend; simplex, coordinate: one "
        "weighted blend (weights from vilio's simplex tuner or the faster coordinate search). vilio's "
        "sa, pa, ra, sx and 0.1's opt are accepted as aliases.",
    ),
    families: str = typer.Option(
        "auto",
        "--families",
        help="Seed families: auto (families.json, else <family>__<run> names), none, regex:PATTERN, "
        "or a JSON file.",
    ),
    optimizer: str = choice(SIMPLEX, "--optimizer", OPTIMIZER_NAMES, help="Weight search inside the loop."),
    splits: str = typer.Option(
        ",".join(PREDICTED_SPLITS), "--splits", help="Comma-separated splits to ensemble (or auto)."
    ),
    class_counts: str | None = typer.Option(
        None,
        "--class-counts",
        help="POS,NEG counts for the threshold rule (vilio: 250,250); default: real dev counts.",
    ),
    test_labels: str = choice(
        "prior",
        "--test-labels",
        TEST_LABEL_RULES,
        help="How many test memes are labelled hateful: prior (the models' mean probability on the split), "
        "rate (the dev threshold's share on dev) or threshold (vilio: the dev threshold itself).",
    ),
) -> None:
    """Seed-average each family, blend (mean/power/rank/simplex; loop: two passes), write FIN_<split>.csv."""
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
        f"{result.method}: dev AUROC {result.dev_auroc:.4f}, threshold {result.threshold:.4f}, "
        f"dev accuracy {result.dev_accuracy:.4f}"
    )
    for path in result.files.values():
        typer.echo(f"wrote {path}")
    typer.echo(f"wrote {result.weights_path}")
