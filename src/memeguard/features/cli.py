"""``memeguard features ...``: extract, import original formats, inspect a store.

Each command parses arguments and calls one library function; heavy imports stay inside commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from memeguard.features.factory import extractor_names

app = typer.Typer(
    help="Region features: extract (grid/BUTD/CLIP ...), import vilio TSV or MMF LMDB, inspect a store.",
    no_args_is_help=True,
    add_completion=False,
)

DtypeOption = Annotated[str, typer.Option("--dtype", help="On-disk feature dtype: float16 or float32.")]
EXTRACTOR_HELP = f"One of {', '.join(extractor_names())}."


def _print_report(report: object) -> None:
    for line in report.summary_lines():  # type: ignore[attr-defined]
        typer.echo(line, err=True)


def parse_params(items: list[str]) -> dict[str, object]:
    """``--param KEY=VALUE`` items -> the extractor's params; values read as YAML (``true``, ``8``,
    ``square``) so they mean what they mean in a recipe's ``params:``; one line naming a bad item."""
    import yaml

    from memeguard.errors import ConfigError

    params: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--param {item!r}: expected KEY=VALUE, e.g. --param resize=square")
        try:
            params[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ConfigError(f"--param {item!r}: the value is not valid YAML") from None
    return params


@app.command("extract")
def extract_command(
    data_dir: Annotated[Path, typer.Argument(help="Hateful Memes folder (img/ + *.jsonl).")],
    out: Annotated[Path, typer.Argument(help="Output store (or folder of stores, one per box variant).")],
    extractor: Annotated[str, typer.Option("--extractor", help=EXTRACTOR_HELP)] = "grid",
    weights: Annotated[
        str | None, typer.Option("--weights", help="Weights file or folder (BUTD detector, CLIP model ...).")
    ] = None,
    boxes: Annotated[
        str | None,
        typer.Option("--boxes", help="Box variants that share one pass (BUTD), e.g. 36,50,72,10-100."),
    ] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=1)] = None,
    device: Annotated[str | None, typer.Option("--device", help="cpu, cuda, cuda:1 ...")] = None,
    splits: Annotated[
        str | None, typer.Option("--splits", help="Comma-separated splits (default: all).")
    ] = None,
    dtype: DtypeOption = "float16",
    remove_text: Annotated[
        bool,
        typer.Option(
            "--remove-text",
            help="Inpaint the caption (OCR boxes) before the extractor sees an image; needs memeguard[ocr].",
        ),
    ] = False,
    remove_text_dilation: Annotated[
        int | None,
        typer.Option(
            "--remove-text-dilation", min=0, max=64, help="Pixels the OCR boxes grow by (default 4)."
        ),
    ] = None,
    param: Annotated[
        list[str] | None,
        typer.Option(
            "--param",
            help="An extractor parameter as KEY=VALUE (YAML value), repeatable: --param resize=square.",
        ),
    ] = None,
) -> None:
    """Extract region features of every meme image (resumes an interrupted run)."""
    from memeguard.errors import ConfigError
    from memeguard.features.extract import extract_features
    from memeguard.features.factory import make_extractor

    kw = parse_params(param or [])
    if batch_size:
        kw["batch_size"] = batch_size
    if remove_text_dilation is not None and not remove_text:
        raise ConfigError("--remove-text-dilation goes with --remove-text")
    if remove_text:
        kw["remove_text"] = True
    if remove_text_dilation is not None:
        kw["remove_text_dilation"] = remove_text_dilation
    made = make_extractor(extractor, weights=weights, boxes=boxes, device=device, **kw)
    split_list = [s.strip() for s in splits.split(",") if s.strip()] if splits else None
    paths = extract_features(data_dir, out, made, batch_size=batch_size, splits=split_list, dtype=dtype)
    for variant, path in paths.items():
        typer.echo(f"{variant}: {path}")


@app.command("import-tsv")
def import_tsv_command(
    file: Annotated[Path, typer.Argument(help="vilio / py-bottom-up-attention TSV (headerless).")],
    out: Annotated[Path, typer.Argument(help="Output feature store directory.")],
    dtype: DtypeOption = "float16",
    skip_bad_lines: Annotated[
        bool, typer.Option("--skip-bad-lines", help="Report undecodable lines and go on instead of stopping.")
    ] = False,
) -> None:
    """Import a vilio TSV (duplicates: first kept; vilio's N+1-row lines repaired; bad lines named)."""
    from memeguard.features.tsv import import_tsv

    _print_report(import_tsv(file, out, dtype=dtype, skip_bad_lines=skip_bad_lines, progress=True))


@app.command("import-lmdb")
def import_lmdb_command(
    path: Annotated[Path, typer.Argument(help="MMF detectron.lmdb (folder or file).")],
    out: Annotated[Path, typer.Argument(help="Output feature store directory.")],
    dtype: DtypeOption = "float16",
) -> None:
    """Import MMF's detectron.lmdb (pickles read with the restricted unpickler)."""
    from memeguard.features.lmdb_import import import_lmdb

    _print_report(import_lmdb(path, out, dtype=dtype, progress=True))


@app.command("info")
def info_command(
    store: Annotated[Path, typer.Argument(help="Feature store directory.")],
    verify: Annotated[
        bool, typer.Option("--verify", help="Also read every value once and refuse NaN/inf (names the id).")
    ] = False,
) -> None:
    """Summarise a feature store: images, feature dim, box counts, dtype, extractor, meta."""
    import json

    from rich.console import Console
    from rich.table import Table

    from memeguard.features.store import FeatureStore

    opened = FeatureStore.open(store)
    if verify:
        opened.verify()
    counts = opened.box_counts()
    table = Table(title=str(store), show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    rows = {
        "images": str(len(opened)),
        "feature dim": str(opened.feature_dim),
        "boxes min/mean/max": (
            f"{counts.min()} / {counts.mean():.1f} / {counts.max()}" if len(counts) else "-"
        ),
        "dtype": opened.dtype,
        "extractor": str(opened.meta.get("extractor", "?")),
        "fields": ", ".join(opened.fields) or "-",
        "extras": ", ".join(f"{k}[{v}]" for k, v in opened.extras.items()) or "-",
        "extras dtype": opened.extras_dtype if opened.extras else "-",
    }
    for key, value in rows.items():
        table.add_row(key, value)
    for key, value in opened.meta.items():
        if key in ("store", "extractor", "feature_names"):
            continue
        table.add_row(f"meta.{key}", value if isinstance(value, str) else json.dumps(value))
    Console(width=120).print(table)
    if verify:
        typer.echo(f"verified: every value of the {len(opened)} images is finite")
