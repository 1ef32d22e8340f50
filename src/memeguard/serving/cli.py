"""``memeguard score`` (one meme, or a jsonl of memes into a submission CSV) and ``memeguard serve`` (HTTP)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from memeguard.errors import ConfigError
from memeguard.features.factory import extractor_names

app = typer.Typer(help="Score new memes with trained runs.", no_args_is_help=True)

MODEL_HELP = "A train run dir (or model dir); repeat for an ensemble (mean probability)."
EXTRACTOR_HELP = (
    "Extractor to use instead of the one the runs' feature stores record (needed for imported TSV/LMDB "
    f"features): one of {', '.join(extractor_names())}."
)


THREADS_HELP = "torch CPU threads (default: torch's choice). 1 is often fastest on a busy or small machine."


def _build_scorer(
    models: list[Path],
    device: str,
    threshold: float,
    weights: list[float] | None,
    batch_size: int,
    extractor: str | None,
    extractor_weights: str | None,
    boxes: str | None,
    threads: int | None = None,
) -> Any:
    from memeguard.serving.scorer import MemeScorer

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
    return MemeScorer.from_runs(
        models,
        device=device,
        extractor=explicit,
        threshold=threshold,
        weights=weights or None,
        batch_size=batch_size,
    )


@app.command("score")
def score(
    image: Path | None = typer.Argument(None, help="The meme image (omit with --jsonl)."),
    model: list[Path] = typer.Option(..., "--model", "-m", help=MODEL_HELP),
    text: str | None = typer.Option(None, "--text", "-t", help="The meme's text (with IMAGE)."),
    jsonl: Path | None = typer.Option(None, "--jsonl", help="Hateful Memes lines {id, img, text} to score."),
    data_dir: Path | None = typer.Option(
        None, "--data-dir", help="Folder the jsonl's img paths are relative to (default: the jsonl's folder)."
    ),
    out: Path | None = typer.Option(None, "--out", "-o", help="Submission CSV (id,proba,label) for --jsonl."),
    threshold: float = typer.Option(0.5, "--threshold", help="Label = proba >= threshold."),
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
) -> None:
    """Score one meme (prints JSON: proba, label, per_model) or a jsonl of memes (writes --out)."""
    if (image is None) == (jsonl is None):
        raise ConfigError("give either IMAGE with --text, or --jsonl with --out")
    if image is not None and text is None:
        raise ConfigError('scoring an image needs its text: --text "..." (use --text "" for none)')
    if jsonl is not None and out is None:
        raise ConfigError("--jsonl needs --out for the submission CSV")
    scorer = _build_scorer(
        model, device, threshold, weight, batch_size, extractor, extractor_weights, boxes, threads
    )
    if image is not None:
        result = scorer.score(image, text or "")
        typer.echo(json.dumps(result.to_dict()))
        return
    assert jsonl is not None and out is not None
    written, count = score_jsonl(scorer, jsonl, out, data_dir)
    typer.echo(f"scored {count} memes -> {written}")


def score_jsonl(
    scorer: Any, jsonl: Path, out: Path, data_dir: Path | None = None, progress: bool = True
) -> tuple[Path, int]:
    """Score every meme of an HM jsonl file and write ``id,proba,label`` (labels at the scorer's threshold)."""
    from memeguard.data.hm import image_path, load_jsonl
    from memeguard.data.predictions import write_predictions
    from memeguard.serving.scorer import load_image

    memes = load_jsonl(jsonl)
    root = data_dir if data_dir is not None else jsonl.parent
    ids: list[int] = []
    probas: list[float] = []
    size = scorer.batch_size
    with _progress(progress and len(memes) > size, len(memes)) as advance:
        for start in range(0, len(memes), size):
            chunk = memes[start : start + size]
            images = [load_image(image_path(root, m), f"{jsonl} (id {m.id})") for m in chunk]
            for meme, result in zip(chunk, scorer.score_images(images, [m.text for m in chunk]), strict=True):
                ids.append(meme.id)
                probas.append(result.proba)
            advance(len(chunk))
    return write_predictions(out, ids, probas, threshold=scorer.threshold), len(memes)


class _progress:
    """A rich bar when asked for, else a no-op ``advance``."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled, self.total, self.bar = enabled, total, None

    def __enter__(self) -> Any:
        if not self.enabled:
            return lambda n: None
        from rich.progress import Progress

        self.bar = Progress()
        self.bar.start()
        task = self.bar.add_task("scoring", total=self.total)
        return lambda n: self.bar.advance(task, n)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


@app.command("serve")
def serve(
    model: list[Path] = typer.Option(..., "--model", "-m", help=MODEL_HELP),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on (0.0.0.0 exposes it)."),
    port: int = typer.Option(8000, "--port"),
    threshold: float = typer.Option(0.5, "--threshold"),
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
