"""The HTTP service: ``create_app(scorer)`` -> a FastAPI app that a hostile client cannot knock over.

Routes: ``POST /v1/score`` (one meme: multipart ``image`` + optional ``text``, or JSON ``{"image_b64",
"text"?}``), ``POST /v1/score/batch`` (several: repeated multipart ``image``/``text`` parts, or JSON
``{"items": [...]}``), the original ``POST /score`` (JSON, text required), ``GET /health`` (models,
threshold, limits; no file paths), ``GET /healthz`` (alive), ``GET /readyz`` (models loaded, taking work),
``GET /metrics`` (Prometheus) and ``GET /`` (a page for moderators). ``explain=true`` on ``POST /v1/score``
(query parameter, JSON or multipart field) adds the explanation (``memeguard.serving.explain``: word and
region attributions and the overlay PNG); it costs ``HTTP_STEPS`` forward and backward passes, so it runs
outside the micro-batcher, one at a time (a second one meanwhile gets 503 + ``Retry-After``). Every error
is one line,
``{"detail": "..."}``, naming the item and field:

* 400: body not JSON or not acceptable JSON (too deep, huge integers, lone surrogates), fields missing or
  of the wrong type, bad base64, an empty or too large batch;
* 401: ``MEMEGUARD_API_KEY`` is set and the request does not carry it (``X-API-Key`` or ``Bearer``);
* 408: the body stalled; 413: body, image bytes or the request's pixels over their limits;
* 422: not a decodable image, or over the per-image pixel limit (read from its header);
* 503 + ``Retry-After``: the queue is full, too many bytes are arriving at once, or shutting down.

Cost is bounded before work starts (see ``limits``); scoring is micro-batched (see ``batching``): the
scorer is built once, before the app, and its batches run in worker threads, ``max_concurrency`` at a time.
"""

# No ``from __future__ import annotations``: FastAPI reads the endpoints' annotations at runtime.

import asyncio
import base64
import binascii
import inspect
import logging
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from memeguard.errors import ConfigError, DataError, MemeguardError
from memeguard.serving.batching import Job, MicroBatcher, QueueFull, ShuttingDown
from memeguard.serving.explain import HTTP_STEPS, ExplanationResponse
from memeguard.serving.limits import (
    RequestError,
    ServiceLimits,
    check_request_pixels,
    check_unicode,
    header_pixels,
    parse_json,
)
from memeguard.threads import map_in_threads

if TYPE_CHECKING:  # pragma: no cover
    from fastapi import FastAPI

    from memeguard.serving.scorer import MemeScorer

__all__ = ["RequestError", "ServiceLimits", "create_app"]

API_KEY_ENV = "MEMEGUARD_API_KEY"
RETRY_AFTER_S = "1"
access_log = logging.getLogger("memeguard.access")


# ------------------------------------------------------------------------------------------ models


class ScoreItem(BaseModel):
    """One meme in a JSON request."""

    image_b64: str = Field(description="The image file (PNG, JPEG, GIF, WebP, BMP) in base64, or a data: URL")
    text: str | None = Field(None, description="The meme's text; omitted: read from the image (OCR)")
    explain: bool = Field(False, description="POST /v1/score only: add the explanation (slow)")


class LegacyScoreItem(BaseModel):
    """One meme for ``POST /score`` (text required)."""

    image_b64: str = Field(description="The image file in base64, or a data: URL")
    text: str = Field(description="The meme's text")


class ScoreBatch(BaseModel):
    items: list[ScoreItem]


class LegacyScoreBatch(BaseModel):
    items: list[LegacyScoreItem]


class ScoreResult(BaseModel):
    """One meme's score: ensemble probability, its label at the operating point, each model's probability."""

    proba: float
    label: int = Field(description="1 (hateful) when proba >= the served threshold")
    per_model: dict[str, float]
    text: str = Field(description="The text the models read")
    text_source: Literal["given", "ocr"]


class ScoreResponse(ScoreResult):
    latency_ms: float
    explanation: ExplanationResponse | None = Field(
        None, description="With explain=true: which words and regions push the score up or down"
    )


class BatchResponse(BaseModel):
    results: list[ScoreResult]
    latency_ms: float


class ErrorResponse(BaseModel):
    detail: str = Field(description="One line naming the item and field at fault")


class Alive(BaseModel):
    status: Literal["alive"] = "alive"


class Ready(BaseModel):
    status: Literal["ready"] = "ready"
    models: list[str]
    threshold: float
    reads_text: bool = Field(description="Whether a meme without text is read by OCR")


@dataclass(frozen=True)
class Meme:
    """One meme of a request, before decoding: encoded bytes, optional text, its name in messages."""

    data: bytes
    text: str | None
    where: str


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 408, 413, 422, 503)
}


def _json_body(model: type[BaseModel], multipart: dict[str, Any] | None = None) -> dict[str, Any]:
    """openapi_extra for an endpoint that reads its body by hand (one message per mistake, see above)."""
    content: dict[str, Any] = {"application/json": {"schema": model.model_json_schema()}}
    if multipart is not None:
        content["multipart/form-data"] = {"schema": multipart}
    return {"requestBody": {"required": True, "content": content}}


def _multipart_schema(many: bool) -> dict[str, Any]:
    image = {"type": "string", "format": "binary"}
    text = {"type": "string"}
    if many:
        image, text = {"type": "array", "items": image}, {"type": "array", "items": text}
        return {"type": "object", "required": ["image"], "properties": {"image": image, "text": text}}
    properties = {"image": image, "text": text, EXPLAIN_FIELD: {"type": "boolean"}}
    return {"type": "object", "required": ["image"], "properties": properties}


EXPLAIN_FIELD = "explain"
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off", "")


def explain_flag(value: object, where: str) -> bool:
    """``explain`` from a query parameter, a form field (strings) or JSON (a boolean)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise RequestError(400, f"{where}: 'explain' must be true or false, got {str(value)[:40]!r}")


# ------------------------------------------------------------------------------------- parsing


def _decode_b64(value: object, where: str, max_bytes: int) -> bytes:
    if not isinstance(value, str) or not value:
        raise RequestError(400, f"{where}: 'image_b64' must be a non-empty base64 string")
    if value.startswith("data:"):  # a data URL from a browser: data:image/png;base64,....
        value = value.partition(",")[2]
    # Refuse before decoding: 4 base64 characters carry 3 bytes.
    if (len(value) // 4) * 3 > max_bytes + 3:
        raise RequestError(413, f"{where}: image is larger than the {max_bytes:,}-byte limit")
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RequestError(400, f"{where}: 'image_b64' is not valid base64 ({exc})") from None
    if len(data) > max_bytes:
        raise RequestError(413, f"{where}: image is {len(data):,} bytes, over the {max_bytes:,}-byte limit")
    if not data:
        raise RequestError(400, f"{where}: 'image_b64' decodes to no bytes")
    return data


def _item_list(payload: object, limits: ServiceLimits, batch: bool | None) -> list[tuple[str, object]]:
    """[(name in messages, raw item)]; ``batch`` None: either form (``POST /score``)."""
    if not isinstance(payload, dict):
        raise RequestError(400, 'the body must be a JSON object: {"image_b64", "text"} or {"items": [...]}')
    if batch is False or (batch is None and "items" not in payload):
        return [("request", payload)]
    raw_items = payload.get("items")
    if not isinstance(raw_items, list) or not raw_items:
        raise RequestError(400, "'items' must be a non-empty list")
    if len(raw_items) > limits.max_batch:
        raise RequestError(
            400, f"'items' has {len(raw_items)} memes, over the batch limit of {limits.max_batch}"
        )
    return [(f"items[{k}]", item) for k, item in enumerate(raw_items)]


def _json_meme(where: str, item: object, limits: ServiceLimits, text_required: bool) -> Meme:
    if not isinstance(item, dict):
        raise RequestError(400, f"{where}: expected an object with 'image_b64' and 'text'")
    required = ("image_b64", "text") if text_required else ("image_b64",)
    missing = [key for key in required if key not in item]
    if missing:
        raise RequestError(400, f"{where}: missing {' and '.join(repr(k) for k in missing)}")
    text = item.get("text")
    if text is not None and not isinstance(text, str) or (text_required and text is None):
        raise RequestError(400, f"{where}: 'text' must be a string")
    if text is not None:
        check_unicode(text, f"{where}: 'text'")
    return Meme(_decode_b64(item["image_b64"], where, limits.max_image_bytes), text, where)


def parse_items(payload: object, limits: ServiceLimits) -> tuple[list[tuple[bytes, str]], bool]:
    """A ``POST /score`` body -> ([(image bytes, text)], whether it was a single item) (kept for callers)."""
    memes = [_json_meme(where, item, limits, True) for where, item in _item_list(payload, limits, None)]
    return [(meme.data, meme.text or "") for meme in memes], "items" not in payload  # type: ignore[operator]


async def _multipart_memes(
    request: Any, limits: ServiceLimits, batch: bool, options: dict[str, object] | None = None
) -> list[Meme]:
    """``image`` parts (+ ``text`` parts: none, or one per image), held in memory (the body is bounded).
    ``options``: filled with the single-meme form's ``explain`` field when it has one."""
    from starlette.formparsers import MultiPartException, MultiPartParser

    parser = MultiPartParser(
        request.headers,
        request.stream(),
        max_files=limits.max_batch if batch else 1,
        max_fields=limits.max_batch if batch else 1 + (options is not None),
        max_part_size=limits.max_request_bytes,
    )
    parser.spool_max_size = limits.max_request_bytes  # never spill an upload to a temp file
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise RequestError(400, f"the multipart body is malformed ({exc.message})") from None
    images, texts = form.getlist("image"), form.getlist("text")
    if options is not None and form.get(EXPLAIN_FIELD) is not None:
        options[EXPLAIN_FIELD] = str(form.get(EXPLAIN_FIELD))
    if not images or any(isinstance(image, str) for image in images):
        raise RequestError(400, "the multipart body needs an 'image' file part")
    if texts and len(texts) != len(images):
        raise RequestError(
            400, f"{len(images)} 'image' parts but {len(texts)} 'text' parts (give none or one each)"
        )
    memes = []
    for k, image in enumerate(images):
        where = f"items[{k}]" if batch else "request"
        data = await image.read()
        if len(data) > limits.max_image_bytes:
            raise RequestError(
                413, f"{where}: image is {len(data):,} bytes, over the {limits.max_image_bytes:,}-byte limit"
            )
        text = check_unicode(str(texts[k]), f"{where}: 'text'") if texts else None
        memes.append(Meme(data, text, where))
    return memes


# ------------------------------------------------------------------------------------- scoring


def _reads_text(scorer: Any) -> bool:
    """Whether the scorer can score a meme without text (OCR): its ``score_images`` takes ``ocr``."""
    try:
        return "ocr" in inspect.signature(scorer.score_images).parameters
    except (TypeError, ValueError):
        return False


def score_jobs(scorer: Any, jobs: list[Job]) -> list[Any]:
    """Decode and score a batch of jobs (in a worker thread); a bad job fails alone, not its batch mates."""
    outcomes: list[Any] = [None] * len(jobs)
    decoded = []
    for k, images in enumerate(map_in_threads(_decode_job, jobs)):  # decoders release the GIL: all cores
        if isinstance(images, RequestError):
            outcomes[k] = images
        else:
            decoded.append((k, images))
    _score_decoded(scorer, jobs, decoded, outcomes)
    return outcomes


def _decode_job(job: Job) -> list[Any] | RequestError:
    """A job's images decoded, or the 422 its first undecodable image earns."""
    from memeguard.serving.scorer import load_image

    try:
        return [load_image(meme.data, meme.where) for meme in job.items]
    except DataError as exc:
        return RequestError(422, str(exc))


def _score_decoded(
    scorer: Any, jobs: list[Job], decoded: list[tuple[int, list[Any]]], outcomes: list[Any]
) -> None:
    images = [image for _, job_images in decoded for image in job_images]
    texts = [meme.text for k, _ in decoded for meme in jobs[k].items]
    if not images:
        return
    try:
        scores = scorer.score_images(images, texts)
    except MemeguardError as exc:
        if len(decoded) == 1:
            outcomes[decoded[0][0]] = RequestError(422, str(exc))
            return
        for one in decoded:  # find the job at fault: score each alone
            _score_decoded(scorer, jobs, [one], outcomes)
        return
    start = 0
    for k, job_images in decoded:
        outcomes[k] = [
            _result(score, meme) for score, meme in zip(scores[start:], jobs[k].items, strict=False)
        ]
        start += len(job_images)


def explain_meme(scorer: Any, meme: Meme, text: str) -> ExplanationResponse:
    """The explanation of one meme of a request (in a worker thread); bad input is one 422 line."""
    from memeguard.serving.explain import explanation_response
    from memeguard.serving.scorer import load_image

    if not hasattr(scorer, "member_batches"):
        raise RequestError(422, f"{meme.where}: this server's scorer cannot explain its scores")
    try:
        return explanation_response(scorer, load_image(meme.data, meme.where), text, HTTP_STEPS)
    except MemeguardError as exc:
        raise RequestError(422, f"{meme.where}: {exc}") from None


def _result(score: Any, meme: Meme) -> ScoreResult:
    """A Score -> the response model; a scorer without OCR reports the given text as ``given``."""
    return ScoreResult(
        proba=score.proba,
        label=score.label,
        per_model=dict(score.per_model),
        text=getattr(score, "text", None) or (meme.text or ""),
        text_source=getattr(score, "text_source", "given"),
    )


# ------------------------------------------------------------------------------------------- app


def create_app(
    scorer: "MemeScorer",
    limits: ServiceLimits | None = None,
    *,
    api_key: str | None = None,
    docs: bool = True,
) -> "FastAPI":
    """The service around an already-loaded scorer.

    ``api_key``: required on the scoring routes and ``/metrics`` (default: ``$MEMEGUARD_API_KEY``; unset
    or empty: open). ``docs``: serve ``/docs`` and ``/openapi.json``.
    """
    try:
        from fastapi import FastAPI
    except ImportError as exc:
        raise ConfigError(
            f"the HTTP service needs the 'serve' extra: pip install 'memeguard[serve]' ({exc})"
        ) from exc
    from memeguard.serving.edge import EdgeMiddleware, ServiceMetrics, add_error_handlers

    limits = limits or ServiceLimits()
    key = api_key if api_key is not None else os.environ.get(API_KEY_ENV, "")
    metrics = ServiceMetrics()
    batcher = MicroBatcher(
        lambda jobs: score_jobs(scorer, jobs),
        max_batch=limits.max_batch,
        max_batch_pixels=limits.max_request_pixels,
        max_wait_s=limits.max_wait_ms / 1000.0,
        max_queue=limits.max_queue,
        max_queue_bytes=limits.max_queue_bytes,
        workers=limits.max_concurrency,
        on_batch=metrics.batch_memes.observe,
    )

    async def lifespan(app: Any):  # noqa: ANN202 - FastAPI's lifespan protocol
        yield
        await batcher.close()  # graceful shutdown: every queued meme is scored before the process exits

    app = FastAPI(
        title="memeguard",
        summary="Hateful-meme scoring",
        version="1",
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        redoc_url=None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.state.scorer, app.state.limits, app.state.batcher, app.state.metrics = (
        scorer,
        limits,
        batcher,
        metrics,
    )
    add_error_handlers(app)
    app.add_middleware(EdgeMiddleware, limits=limits, metrics=metrics, api_key=key)
    _add_probe_routes(app, scorer, limits, batcher, metrics)
    _add_score_routes(app, scorer, limits, batcher, metrics)
    return app


def without_paths(value: Any) -> Any:
    """``value`` with every string that looks like a path cut to its last part (probes leak no layout)."""
    if isinstance(value, dict):
        return {k: without_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_paths(v) for v in value]
    if isinstance(value, str) and ("/" in value or "\\" in value):
        return value.replace("\\", "/").rstrip("/").rpartition("/")[2]
    return value


def _add_probe_routes(
    app: Any, scorer: Any, limits: ServiceLimits, batcher: MicroBatcher, metrics: Any
) -> None:
    from fastapi.responses import HTMLResponse, JSONResponse, Response

    from memeguard.serving.edge import PAGE

    @app.get("/", include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(PAGE.read_text(encoding="utf-8"), headers={"Cache-Control": "no-cache"})

    @app.get("/health")
    def health() -> dict[str, Any]:
        described = scorer.describe()
        models = [
            {k: v for k, v in model.items() if k not in ("path", "features")} for model in described["models"]
        ]
        return {
            "status": "ok",
            **without_paths(described),
            "models": without_paths(models),
            "limits": {"max_image_bytes": limits.max_image_bytes, "max_batch": limits.max_batch},
        }

    @app.get("/healthz", response_model=Alive)
    def healthz() -> Alive:
        return Alive()

    @app.get("/readyz", response_model=Ready, responses={503: {"model": ErrorResponse}})
    def readyz() -> Any:
        if batcher.closing:
            return JSONResponse({"detail": "shutting down"}, status_code=503)
        names = [model.get("name", "") for model in scorer.describe().get("models", [])]
        return Ready(models=names, threshold=scorer.threshold, reads_text=_reads_text(scorer))

    @app.get("/metrics", include_in_schema=False)
    def prometheus() -> Response:
        body, content_type = metrics.render(batcher)
        return Response(body, media_type=content_type)


def _add_score_routes(
    app: Any, scorer: Any, limits: ServiceLimits, batcher: MicroBatcher, metrics: Any
) -> None:
    from fastapi import Request
    from fastapi.responses import JSONResponse

    reads_text = _reads_text(scorer)

    async def read_memes(
        request: Request, batch: bool | None, text_required: bool, options: dict[str, object] | None = None
    ) -> list[Meme]:
        content_type = request.headers.get("content-type", "")
        if batch is not None and content_type.startswith("multipart/form-data"):
            memes = await _multipart_memes(request, limits, batch, options)
        else:
            payload = parse_json(await request.body(), limits)
            if options is not None and isinstance(payload, dict) and EXPLAIN_FIELD in payload:
                options[EXPLAIN_FIELD] = payload[EXPLAIN_FIELD]
            memes = [
                _json_meme(w, item, limits, text_required) for w, item in _item_list(payload, limits, batch)
            ]
        if not reads_text and any(meme.text is None for meme in memes):
            where = next(meme.where for meme in memes if meme.text is None)
            raise RequestError(422, f"{where}: no 'text' given, and this server cannot read text from images")
        return memes

    async def score(memes: list[Meme]) -> list[ScoreResult]:
        pixels = [header_pixels(meme.data, meme.where, limits) for meme in memes]
        total = check_request_pixels(pixels, limits)
        try:
            return await batcher.submit(Job(memes, total, sum(len(m.data) for m in memes)))
        except QueueFull as exc:
            metrics.rejections.labels("queue_full").inc()
            raise RequestError(503, f"{exc}; retry shortly", {"Retry-After": RETRY_AFTER_S}) from None
        except ShuttingDown as exc:
            raise RequestError(503, str(exc), {"Retry-After": RETRY_AFTER_S}) from None

    def ms_since(started: float) -> float:
        return round(1000.0 * (time.perf_counter() - started), 3)

    explain_gate = asyncio.Lock()

    async def explain(meme: Meme, text: str) -> ExplanationResponse:
        """One explanation at a time, in a worker thread; a second one meanwhile is told to retry."""
        if explain_gate.locked():
            metrics.rejections.labels("explain_busy").inc()
            busy = "an explanation is running; retry shortly"
            raise RequestError(503, busy, {"Retry-After": RETRY_AFTER_S})
        async with explain_gate:
            return await asyncio.to_thread(explain_meme, scorer, meme, text)

    one_extra = _json_body(ScoreItem, _multipart_schema(False))
    one_extra["parameters"] = [
        {"name": EXPLAIN_FIELD, "in": "query", "required": False, "schema": {"type": "boolean"}}
    ]

    @app.post(
        "/v1/score",
        response_model=ScoreResponse,
        responses=ERROR_RESPONSES,
        openapi_extra=one_extra,
    )
    async def score_one(request: Request) -> ScoreResponse:
        """Score one meme: multipart (``image`` file, optional ``text``) or JSON (``image_b64``, ``text``);
        ``explain=true`` (query, JSON or form field) adds the explanation."""
        started = time.perf_counter()
        options: dict[str, object] = {}
        if EXPLAIN_FIELD in request.query_params:
            options[EXPLAIN_FIELD] = request.query_params[EXPLAIN_FIELD]
        memes = await read_memes(request, False, False, options)
        wanted = explain_flag(options.get(EXPLAIN_FIELD, False), "request")
        (result,) = await score(memes)
        if not wanted:  # the response keys of a plain score stay what they were: no "explanation"
            body = ScoreResponse(**result.model_dump(), latency_ms=ms_since(started))
            return JSONResponse(body.model_dump(exclude={"explanation"}))  # type: ignore[return-value]
        explanation = await explain(memes[0], result.text)
        return ScoreResponse(**result.model_dump(), latency_ms=ms_since(started), explanation=explanation)

    @app.post(
        "/v1/score/batch",
        response_model=BatchResponse,
        responses=ERROR_RESPONSES,
        openapi_extra=_json_body(ScoreBatch, _multipart_schema(True)),
    )
    async def score_many(request: Request) -> BatchResponse:
        """Score several memes: repeated multipart ``image`` (+ ``text``) parts, or JSON ``{"items"}``."""
        started = time.perf_counter()
        if explain_flag(request.query_params.get(EXPLAIN_FIELD, "false"), "request"):
            raise RequestError(400, "explain=true is for POST /v1/score (one meme at a time)")
        results = await score(await read_memes(request, True, False))
        return BatchResponse(results=results, latency_ms=ms_since(started))

    legacy = {"oneOf": [LegacyScoreItem.model_json_schema(), LegacyScoreBatch.model_json_schema()]}
    legacy_body = {"requestBody": {"required": True, "content": {"application/json": {"schema": legacy}}}}

    @app.post("/score", responses=ERROR_RESPONSES, openapi_extra=legacy_body)
    async def score_legacy(request: Request) -> dict[str, Any]:
        """The original JSON route (text required): one meme, or ``{"items": [...]}``."""
        started = time.perf_counter()
        payload = parse_json(await request.body(), limits)
        items = _item_list(payload, limits, None)
        results = await score([_json_meme(where, item, limits, True) for where, item in items])
        plain = [{"proba": r.proba, "label": r.label, "per_model": r.per_model} for r in results]
        if items[0][0] == "request":
            return {**plain[0], "latency_ms": ms_since(started)}
        return {"results": plain, "latency_ms": ms_since(started)}
