"""``memeguard score`` (one meme, folders of memes or a jsonl into a CSV) and ``memeguard serve`` (HTTP)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from memeguard.errors import ConfigError
from memeguard.features.factory import extractor_names

app = typer.Typer(help="Score new memes with trained runs.", no_args_is_help=True)

MODEL_HELP = (
    "A train run dir (or model dir); repeat for an ensemble (mean probability). Or one bundle "
    "(`memeguard export`): its members, weights and operating point."
)
THRESHOLD_HELP = "Label = proba >= threshold (default: a bundle's operating point, else 0.5)."
EXTRACTOR_HELP = (
    "Extractor to use instead of the one the runs' feature stores record (needed for imported TSV/LMDB "
    f"features): one of {', '.join(extractor_names())}."
)


THREADS_HELP = "torch CPU threads (default: torch's choice). 1 is often fastest on a busy or small machine."


def _build_scorer(
    models: list[Path],
    device: str,
    threshold: float | None,
    weights: list[float] | None,
    batch_size: int,
    extractor: str | None,
    extractor_weights: str | None,
    boxes: str | None,
    threads: int | None = None,
) -> Any:
    from memeguard.serving.bundle import load_scorer

    if threads is not None:
        if threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {threads}")
        import torch

        torch.set_num_threads(threads)

    explicit = None
    if extractor is not None:
        from memeguard.features.factory import make_extractor
        from memeguard.training.distributed import resolve_device

        explicit = make_extractor(
            extractor, weights=extractor_weights, boxes=boxes, device=str(resolve_device(device))
        )
    elif extractor_weights is not None or boxes is not None:
        raise ConfigError("--extractor-weights and --boxes go with --extractor")
    # A bundle (folder or Hub id) brings its members, weights, operating point and fast path (--optimize).
    return load_scorer(
        models,
        device=device,
        extractor=explicit,
        threshold=threshold,
        weights=weights or None,
        batch_size=batch_size,
    )


OCR_HELP = "Read the caption from the image: auto (only when no text is given), always, never."
PATHS_HELP = (
    "Meme images: files, folders (searched recursively) or quoted globs. One image without --out prints "
    "JSON; several, or --out, write a CSV (id,proba,label,text,text_source). Omit with --jsonl or --merge."
)


@app.command("score")
def score(
    paths: list[str] | None = typer.Argument(None, help=PATHS_HELP),
    model: list[Path] | None = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    text: str | None = typer.Option(None, "--text", "-t", help="The meme's text (one IMAGE; default: OCR)."),
    jsonl: Path | None = typer.Option(None, "--jsonl", help="Hateful Memes lines {id, img, text} to score."),
    data_dir: Path | None = typer.Option(
        None, "--data-dir", help="Folder the jsonl's img paths are relative to (default: the jsonl's folder)."
    ),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Output CSV: id,proba,label for --jsonl; +text,text_source for images."
    ),
    ocr: str = typer.Option("auto", "--ocr", help=OCR_HELP),
    merge: bool = typer.Option(
        False, "--merge", help="Only merge the OUT.part* files of a multi-machine torchrun into --out."
    ),
    threshold: float | None = typer.Option(None, "--threshold", help=THRESHOLD_HELP),
    weight: list[float] | None = typer.Option(
        None, "--weight", help="One weight per --model (default equal)."
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1 ..."),
    batch_size: int = typer.Option(16, "--batch-size", help="Memes per extractor/model batch."),
    extractor: str | None = typer.Option(None, "--extractor", help=EXTRACTOR_HELP),
    extractor_weights: str | None = typer.Option(
        None, "--extractor-weights", help="Weights for --extractor."
    ),
    boxes: str | None = typer.Option(None, "--boxes", help="BUTD box variant(s) for --extractor butd."),
    threads: int | None = typer.Option(None, "--threads", help=THREADS_HELP),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Score memes: one image (prints JSON), many images (CSV, resumable, torchrun-shardable) or a jsonl."""
    from memeguard.serving.scorer import OCR_MODES

    if ocr not in OCR_MODES:
        raise ConfigError(f"--ocr must be one of {', '.join(OCR_MODES)}, got {ocr!r}")
    if merge:
        _merge_only(paths, jsonl, out)
        return
    mode = _score_mode(paths or [], jsonl, out, text, ocr)
    if not model:
        raise ConfigError("give at least one --model RUN_DIR")
    scorer = _build_scorer(
        model, device, threshold, weight, batch_size, extractor, extractor_weights, boxes, threads
    )
    if mode == "one":
        assert paths is not None
        typer.echo(json.dumps(_score_one(scorer, Path(paths[0]), text, ocr).to_dict(include_text=True)))
    elif mode == "bulk":
        from memeguard.serving.bulk import bulk_score

        assert paths is not None and out is not None
        total, scored = bulk_score(scorer, paths, out, ocr=ocr, progress=progress)
        if total:  # under torchrun only rank 0 merges and reports
            typer.echo(f"scored {scored} new memes; {total} in {out}")
    else:
        assert jsonl is not None and out is not None
        written, count = score_jsonl(scorer, jsonl, out, data_dir, progress=progress, ocr=ocr)
        typer.echo(f"scored {count} memes -> {written}")


def _score_mode(paths: list[str], jsonl: Path | None, out: Path | None, text: str | None, ocr: str) -> str:
    """``one`` (JSON to stdout), ``bulk`` (images to a CSV) or ``jsonl``; ConfigError for a bad mix."""
    from memeguard.serving.bulk import IMAGE_SUFFIXES

    if bool(paths) == (jsonl is not None):
        raise ConfigError("give either IMAGE (or images) with --model, or --jsonl with --out")
    if jsonl is not None:
        if out is None:
            raise ConfigError("--jsonl needs --out for the submission CSV")
        if text is not None:
            raise ConfigError("--text goes with one IMAGE, not --jsonl (the jsonl has the texts)")
        return "jsonl"
    single = len(paths) == 1 and out is None and Path(paths[0]).suffix.lower() in IMAGE_SUFFIXES
    if not single and text is not None:
        raise ConfigError("--text goes with one IMAGE without --out; images in bulk are read by OCR")
    if text is None and ocr == "never":
        raise ConfigError('--ocr never needs the text: give one IMAGE with --text "..." or use --jsonl')
    if single:
        return "one"
    if out is None:
        raise ConfigError("scoring several images (a folder, a glob or many files) needs --out for the CSV")
    return "bulk"


def _score_one(scorer: Any, image: Path, text: str | None, ocr: str) -> Any:
    """One meme; when OCR finds no caption the user is asked for it (a meme without text is rare)."""
    from memeguard.serving.scorer import TEXT_OCR, load_image

    result = scorer.score(load_image(image, str(image)), text, ocr=ocr)
    if result.text_source == TEXT_OCR and not result.text:
        raise ConfigError(
            f'{image}: no text given and OCR found none in the image: give it with --text "..." '
            '(--text "" for none)'
        )
    return result


def _merge_only(paths: list[str] | None, jsonl: Path | None, out: Path | None) -> None:
    from memeguard.serving.bulk import merge_parts, part_files

    if paths or jsonl is not None or out is None:
        raise ConfigError("--merge takes only --out (the CSV whose OUT.part* files to merge)")
    parts = part_files(out)
    if not parts:
        raise ConfigError(f"{out}: no part files ({out.name}.partRofW) to merge next to it")
    total = merge_parts(out)
    typer.echo(f"merged {len(parts)} parts: {total} memes in {out}")


def score_jsonl(
    scorer: Any,
    jsonl: Path,
    out: Path,
    data_dir: Path | None = None,
    progress: bool = True,
    ocr: str = "auto",
) -> tuple[Path, int]:
    """Score every meme of an HM jsonl file and write ``id,proba,label`` (labels at the scorer's
    threshold)."""
    from memeguard.data.hm import image_path, load_jsonl
    from memeguard.data.predictions import write_predictions
    from memeguard.serving.bulk import progress_bar
    from memeguard.serving.scorer import load_image

    memes = load_jsonl(jsonl)
    root = data_dir if data_dir is not None else jsonl.parent
    ids: list[int] = []
    probas: list[float] = []
    size = scorer.batch_size
    with progress_bar(progress and len(memes) > size, len(memes)) as advance:
        for start in range(0, len(memes), size):
            chunk = memes[start : start + size]
            images = [load_image(image_path(root, m), f"{jsonl} (id {m.id})") for m in chunk]
            texts = [m.text for m in chunk]
            for meme, result in zip(chunk, scorer.score_images(images, texts, ocr=ocr), strict=True):
                ids.append(meme.id)
                probas.append(result.proba)
            advance(len(chunk))
    return write_predictions(out, ids, probas, threshold=scorer.threshold), len(memes)


@app.command("serve")
def serve(
    model: list[Path] = typer.Option(..., "--model", "-m", help=MODEL_HELP),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on (0.0.0.0 exposes it)."),
    port: int = typer.Option(8000, "--port"),
    threshold: float | None = typer.Option(None, "--threshold", help=THRESHOLD_HELP),
    weight: list[float] | None = typer.Option(
        None, "--weight", help="One weight per --model (default equal)."
    ),
    device: str = typer.Option("auto", "--device"),
    max_image_mb: float = typer.Option(10.0, "--max-image-mb", help="Largest accepted image file."),
    max_request_mb: float = typer.Option(
        8.0, "--max-request-mb", help="Largest request body (cut while it streams in)."
    ),
    max_image_megapixels: float = typer.Option(
        16.0, "--max-image-megapixels", help="Most decoded pixels per image (read from its header)."
    ),
    max_batch: int = typer.Option(
        32, "--max-batch", help="Most memes per request and per scoring batch (1: no micro-batching)."
    ),
    max_wait_ms: float = typer.Option(
        5.0, "--max-wait-ms", help="How long a batch waits for more requests to join it."
    ),
    max_queue: int = typer.Option(128, "--max-queue", help="Memes waiting before requests get 503."),
    max_concurrency: int = typer.Option(1, "--max-concurrency", help="Batches scored at the same time."),
    docs: bool = typer.Option(True, "--docs/--no-docs", help="Serve /docs and /openapi.json."),
    extractor: str | None = typer.Option(None, "--extractor", help=EXTRACTOR_HELP),
    extractor_weights: str | None = typer.Option(None, "--extractor-weights"),
    boxes: str | None = typer.Option(None, "--boxes"),
    threads: int | None = typer.Option(None, "--threads", help=THREADS_HELP),
) -> None:
    """Serve the scoring API, the moderator page (/) and probes over HTTP (models load once, at startup).

    Set MEMEGUARD_API_KEY to require that key (X-API-Key header) on the scoring routes and /metrics.
    """
    try:
        import uvicorn
    except ImportError as exc:
        raise ConfigError("serving needs the 'serve' extra: pip install 'memeguard[serve]'") from exc
    from memeguard.serving.http import ServiceLimits, create_app

    limits = ServiceLimits(
        max_image_bytes=int(max_image_mb * 1024 * 1024),
        max_batch=max_batch,
        max_request_bytes=int(max_request_mb * 1024 * 1024),
        max_concurrency=max_concurrency,
        max_image_pixels=int(max_image_megapixels * 1_000_000),
        max_request_pixels=max(int(max_image_megapixels * 1_000_000), 40_000_000),
        max_wait_ms=max_wait_ms,
        max_queue=max_queue,
    )
    scorer = _build_scorer(
        model, device, threshold, weight, max_batch, extractor, extractor_weights, boxes, threads
    )
    scorer.warmup()
    uvicorn.run(
        create_app(scorer, limits, docs=docs),
        host=host,
        port=port,
        workers=1,
        log_level="info",
        access_log=False,  # the service writes its own line per request, with a request id
        limit_concurrency=1024,  # connections beyond this get 503 from uvicorn itself
        timeout_graceful_shutdown=30,  # on SIGTERM: finish in-flight requests and drain the queue
        log_config=_log_config(),
    )


def _log_config() -> dict[str, Any]:
    """uvicorn's logging, plus the service's JSON access lines (logger ``memeguard.access``) on stderr."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["formatters"]["memeguard_access"] = {"format": "%(message)s"}
    config["handlers"]["memeguard_access"] = {
        "class": "logging.StreamHandler",
        "formatter": "memeguard_access",
        "stream": "ext://sys.stderr",
    }
    config["loggers"]["memeguard.access"] = {
        "handlers": ["memeguard_access"],
        "level": "INFO",
        "propagate": False,
    }
    return config


@app.command("explain")
def explain(
    memes: list[Path] = typer.Argument(..., help="Meme image files."),
    model: list[Path] = typer.Option(
        ..., "--model", "-m", help="A run dir, model dir or bundle; repeat runs."
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Folder for <stem>.explain.json and <stem>.explain.png."
    ),
    text: str | None = typer.Option(None, "--text", "-t", help="The meme's text (one MEME; default: OCR)."),
    ocr: str = typer.Option("auto", "--ocr", help=OCR_HELP),
    steps: int = typer.Option(
        32, "--steps", help="Integrated-gradients steps (each a forward+backward pass)."
    ),
    threshold: float | None = typer.Option(
        None, "--threshold", help="Label threshold (default: a bundle's operating point, else 0.5)."
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1 ..."),
    threads: int | None = typer.Option(None, "--threads", help=THREADS_HELP),
) -> None:
    r"""Which words and image regions push each meme's score up or down: JSON + an overlay PNG per meme.

    Integrated gradients of each model's hateful logit through its word embeddings and region features
    (needs pip install 'memeguard\[explain]'); a bundle is explained with its fp32 weights.
    """
    from memeguard.models.attribution import check_steps
    from memeguard.serving.bundle import load_scorer
    from memeguard.serving.explain import explain_files
    from memeguard.serving.scorer import OCR_MODES

    if ocr not in OCR_MODES:
        raise ConfigError(f"--ocr must be one of {', '.join(OCR_MODES)}, got {ocr!r}")
    check_steps(steps)
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {threads}")
        import torch

        torch.set_num_threads(threads)
    scorer = load_scorer(model, device=device, threshold=threshold, batch_size=1, optimize="fp32")
    for path in explain_files(scorer, memes, out, text=text, ocr=ocr, steps=steps):
        typer.echo(str(path))
