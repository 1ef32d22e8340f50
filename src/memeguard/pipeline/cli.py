"""``memeguard run`` (a recipe end to end) and ``memeguard demo`` (the embedded default)."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from memeguard.names import PREDICTED_SPLITS, REPORT_FILE, TEST_UNSEEN, fin_file, split_file

app = typer.Typer()

RECIPES_DIR = Path(__file__).parent / "recipes"
SHIPPED_RECIPES: tuple[str, ...] = tuple(sorted(path.stem for path in RECIPES_DIR.glob("*.yaml")))


def resolve_recipe(recipe: str) -> Path:
    """A path, or the name of a shipped recipe (``SHIPPED_RECIPES``: ``demo``, ``vilio``, ...)."""
    path = Path(recipe)
    if path.is_file():
        return path
    shipped = RECIPES_DIR / f"{recipe.removesuffix('.yaml')}.yaml"
    return shipped if shipped.is_file() else path


def print_summary(report) -> None:  # noqa: ANN001 - RunReport, imported lazily
    """AUROC / accuracy of every family and the ensemble on each labelled split (accuracy from the CSV
    labels)."""
    import numpy as np
    from rich.console import Console
    from rich.table import Table

    from memeguard.data.metrics import auroc
    from memeguard.data.predictions import align_predictions, read_predictions
    from memeguard.pipeline.stages import split_labels

    labels = split_labels(report.data_dir)
    splits = [s for s in PREDICTED_SPLITS if s in labels]
    table = Table(title="AUROC / accuracy")
    table.add_column("model")
    for split in splits:
        table.add_column(split, justify="right")
    for name, files in {**report.family_files, "ENSEMBLE": report.fin_files}.items():
        cells = []
        for split in splits:
            if split not in files:
                cells.append("-")
                continue
            truth = labels[split]
            preds = align_predictions(read_predictions(files[split]), list(truth), str(files[split]))
            y = np.asarray([truth[i] for i in preds.ids.tolist()])
            cells.append(f"{auroc(y, preds.proba):.3f} / {np.mean(preds.label == y):.3f}")
        table.add_row(name, *cells)
    Console().print(table)


@app.command("run")
def run(
    recipe: str = typer.Argument(
        ..., help=f"Recipe YAML file, or a shipped recipe: {', '.join(SHIPPED_RECIPES)}."
    ),
    overrides: list[str] | None = typer.Argument(
        None,
        metavar="KEY.PATH=VALUE",
        help="Recipe fields to override, values in YAML: models.0.train.epochs=3, models.V.train.lr=1e-4, "
        "ensemble.method=rank.",
    ),
    data: Path = typer.Option(..., "--data", help="Dataset folder in the Hateful Memes layout."),
    out: Path = typer.Option(..., "--out", help="Output folder (stages are cached here)."),
    inference_only: bool = typer.Option(
        False, "--inference-only", help="Predict with the runs' fine-tuned checkpoints."
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1 ..."),
    limit: int | None = typer.Option(
        None, "--limit", help="Only the first N memes of every split (smoke runs)."
    ),
    workers: int = typer.Option(
        1, "--workers", help="Stages run in parallel processes (fine-tunes of different runs)."
    ),
) -> None:
    """Run a recipe: clean -> features -> pretrain -> fine-tune -> seed average -> ensemble -> report."""
    from memeguard.pipeline.runner import run_recipe

    report = run_recipe(
        resolve_recipe(recipe),
        data,
        out,
        inference_only=inference_only,
        device=device,
        limit=limit,
        workers=workers,
        overrides=overrides or (),
    )
    print_summary(report)
    typer.echo(f"{fin_file('*')} and {REPORT_FILE} in {out}")


@app.command(
    "demo",
    # The help is given here rather than as the docstring: one line in `memeguard --help`, two in the source.
    help=(
        "The whole pipeline on the synthetic meme set: "
        "synth -> check -> clean -> features -> train -> ensemble -> report."
    ),
)
def demo(
    out: Path = typer.Option(Path("memeguard_demo"), "--out", help="Output folder."),
    n: int = typer.Option(3000, "--n", help="Synthetic memes to generate."),
    seed: int = typer.Option(0, "--seed"),
    workers: int = typer.Option(2, "--workers", help="Parallel training processes (2 fit a 2-core machine)."),
) -> None:
    """Synthesise the set (unless present), check it, run the demo recipe on it and print the summary."""
    from memeguard.data.check import check_dataset
    from memeguard.data.cli import print_check_report
    from memeguard.data.synth import generate_synthetic
    from memeguard.errors import DataError
    from memeguard.pipeline.runner import run_recipe

    start = time.perf_counter()
    data_dir = out / "synthetic"
    if not (data_dir / split_file(TEST_UNSEEN)).is_file():  # synth writes the split files last, this one last
        typer.echo(f"generating {n} synthetic memes in {data_dir} ...")
        generate_synthetic(data_dir, n=n, seed=seed)
    report = check_dataset(data_dir)
    print_check_report(report)
    if not report.ok:
        raise DataError("; ".join(report.errors[:5]))
    result = run_recipe(RECIPES_DIR / "demo.yaml", data_dir, out, workers=workers)
    print_summary(result)
    seconds = time.perf_counter() - start
    typer.echo(f"demo finished in {seconds:.0f}s: {out}/{fin_file('*')}, {out}/{REPORT_FILE}")
