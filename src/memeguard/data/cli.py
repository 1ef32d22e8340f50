"""``memeguard data ...``: check, clean and synthesise Hateful Memes datasets."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(
    help="Hateful Memes splits: validate, clean (vilio's rules), synthesise.", no_args_is_help=True
)


def print_check_report(report) -> None:  # noqa: ANN001 - CheckReport, imported lazily
    """The summary table on stdout, then any warnings on stderr (errors are the caller's to print)."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"dataset {report.data_dir}")
    for column in ("split", "file", "memes", "labelled", "hateful", "% hateful"):
        table.add_column(column, justify="right" if column not in ("split", "file") else "left")
    for s in report.splits:
        share = f"{100.0 * s.hateful / s.labelled:.1f}" if s.labelled else "-"
        table.add_row(s.name, s.file, str(s.count), str(s.labelled), str(s.hateful), share)
    console.print(table)
    if report.overlaps:
        console.print("overlapping ids: " + ", ".join(f"{k}: {v}" for k, v in report.overlaps.items()))
    else:
        console.print("overlapping ids: none")
    stats = report.image_stats()
    if stats:
        console.print(
            f"images: {int(stats['images'])}, height {stats['height_min']:.0f}-{stats['height_max']:.0f} "
            f"(mean {stats['height_mean']:.0f}), width {stats['width_min']:.0f}-{stats['width_max']:.0f} "
            f"(mean {stats['width_mean']:.0f})"
        )
    for warning in report.warnings:  # on stderr, like the errors, so that `demo` shows them too
        typer.echo(f"warning: {warning}", err=True)


@app.command("check")
def check(
    data_dir: Path = typer.Argument(..., help="Dataset folder: img/ + <split>.jsonl"),
    no_images: bool = typer.Option(False, "--no-images", help="Skip decoding every image."),
) -> None:
    """Validate a dataset and print a summary; exits non-zero on any error."""
    from memeguard.data.check import check_dataset

    report = check_dataset(data_dir, check_images=not no_images)
    if report.splits:
        print_check_report(report)
    for error in report.errors:
        typer.echo(f"error: {error}", err=True)
    if report.errors_left_off:
        typer.echo(f"error: ... and {report.errors_left_off} more errors", err=True)
    if not report.ok:
        raise typer.Exit(1)


@app.command("clean")
def clean(
    data_dir: Path = typer.Argument(..., help="Dataset folder with train, dev_seen, dev_unseen."),
    out: Path = typer.Option(..., "--out", help="Output folder (never the input folder)."),
) -> None:
    """vilio's cleaning: writes train_clean, traindev, pretrain and cleaning_report.json to OUT."""
    from memeguard.data.cleaning import clean_dataset

    result = clean_dataset(data_dir, out)
    counts = result.report["counts"]
    typer.echo(
        f"removed {counts['removed']} duplicates, added {counts['dev_unseen_new']} dev_unseen memes: "
        f"train_clean {counts['train_clean']}, traindev {counts['traindev']}, "
        f"pretrain {counts['pretrain']} -> {out}"
    )


@app.command("synth")
def synth(
    out: Path = typer.Argument(..., help="Output folder for the synthetic dataset."),
    n: int = typer.Option(3000, "--n", min=50, help="Number of unique memes."),
    seed: int = typer.Option(0, "--seed", help="Random seed (same seed, same bytes)."),
    label_noise: float = typer.Option(
        0.03,
        "--label-noise",
        min=0.0,
        max=0.03,
        help=(
            "Share of memes whose noun disagrees with the rule "
            "(0 gives the same memes with rule-true labels)."
        ),
    ),
) -> None:
    """Generate the synthetic meme set in the Hateful Memes layout."""
    from memeguard.data.synth import generate_synthetic

    summary = generate_synthetic(out, n=n, seed=seed, label_noise=label_noise)
    typer.echo(f"wrote {summary} to {out}")
