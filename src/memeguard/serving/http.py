"""The HTTP service: ``create_app(scorer)`` -> a FastAPI app with ``GET /health`` and ``POST /score``.

Requests are JSON only (``{"image_b64": ..., "text": ...}`` or ``{"items": [...]}``), never multipart:
that would pull in python-multipart for no gain. The body is parsed by hand rather than by a pydantic
model so every mistake gets one plain message naming the item and field (``{"detail": "..."}``):

* 400: body is not JSON, fields missing or of the wrong type, bad base64, empty or too large a batch;
* 413: request body or one image larger than the configured limits;
* 422: the bytes are not a decodable image (or a decompression bomb / truncated file).

The scorer (models + extractors) is built before the app, so it is loaded once; inference runs in the
thread pool under ``torch.inference_mode`` (inside the scorer), at most ``max_concurrency`` at a time:
torch already uses every core for one batch, so parallel batches would only fight over them.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the endpoints' annotations (``Request``)
# at runtime, and they name classes imported inside ``create_app``, which string annotations cannot see.

import base64
import binascii
import json
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from memeguard.errors import ConfigError, DataError, MemeguardError

if TYPE_CHECKING:  # pragma: no cover
    from fastapi import FastAPI
    from PIL import Image

    from memeguard.serving.scorer import MemeScorer


_ITEM_SCHEMA = {
    "type": "object",
    "required": ["image_b64", "text"],
    "properties": {
        "image_b64": {
            "type": "string",
            "description": "The image file (PNG, JPEG, ...) in base64, or a data: URL",
        },
        "text": {"type": "string", "description": "The meme's text"},
    },
}
# The body is parsed by hand (see the module docstring); this only documents it in /docs.
SCORE_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "oneOf": [
                        _ITEM_SCHEMA,
                        {
                            "type": "object",
                            "required": ["items"],
                            "properties": {"items": {"type": "array", "items": _ITEM_SCHEMA}},
                        },
                    ]
                }
            }
        },
    }
}


@dataclass(frozen=True)
class ServiceLimits:
    """Request limits; the defaults suit memes (a few hundred KB each)."""

    max_image_bytes: int = 10 * 1024 * 1024
    max_batch: int = 32
    max_request_bytes: int = 64 * 1024 * 1024
    max_concurrency: int = 1

    def __post_init__(self) -> None:
        for name in ("max_image_bytes", "max_batch", "max_request_bytes", "max_concurrency"):
            if getattr(self, name) < 1:
                raise ConfigError(f"service limit {name} must be >= 1, got {getattr(self, name)}")


class RequestError(Exception):
    """A client mistake: becomes a JSON ``{"detail": message}`` response with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


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


def parse_items(payload: object, limits: ServiceLimits) -> tuple[list[tuple[bytes, str]], bool]:
    """A request body -> ([(image bytes, text)], whether it was a single item)."""
    if not isinstance(payload, dict):
        raise RequestError(400, 'the body must be a JSON object: {"image_b64", "text"} or {"items": [...]}')
    single = "items" not in payload
    if single:
        raw_items, names = [payload], ["request"]
    else:
        raw_items = payload["items"]
        if not isinstance(raw_items, list) or not raw_items:
            raise RequestError(400, "'items' must be a non-empty list")
        if len(raw_items) > limits.max_batch:
            raise RequestError(
                400, f"'items' has {len(raw_items)} memes, over the batch limit of {limits.max_batch}"
            )
        names = [f"items[{k}]" for k in range(len(raw_items))]
    items = []
    for where, item in zip(names, raw_items, strict=True):
        if not isinstance(item, dict):
            raise RequestError(400, f"{where}: expected an object with 'image_b64' and 'text'")
        missing = [key for key in ("image_b64", "text") if key not in item]
        if missing:
            raise RequestError(400, f"{where}: missing {' and '.join(repr(k) for k in missing)}")
        if not isinstance(item["text"], str):
            raise RequestError(400, f"{where}: 'text' must be a string")
        items.append((_decode_b64(item["image_b64"], where, limits.max_image_bytes), item["text"]))
    return items, single


def decode_images(items: list[tuple[bytes, str]], single: bool) -> "list[Image.Image]":
    from memeguard.serving.scorer import load_image

    images = []
    for k, (data, _) in enumerate(items):
        where = "request" if single else f"items[{k}]"
        try:
            images.append(load_image(data, where))
        except DataError as exc:
            raise RequestError(422, str(exc)) from None
    return images


def create_app(scorer: "MemeScorer", limits: "ServiceLimits | None" = None) -> "FastAPI":
    """The service around an already-loaded scorer."""
    try:
        from fastapi import FastAPI, Request
        from fastapi.responses import JSONResponse
        from starlette.concurrency import run_in_threadpool
    except ImportError as exc:
        raise ConfigError(
            f"the HTTP service needs the 'serve' extra: pip install 'memeguard[serve]' ({exc})"
        ) from exc

    limits = limits or ServiceLimits()
    gate = threading.Semaphore(limits.max_concurrency)
    app = FastAPI(title="memeguard", summary="Hateful-meme scoring", version="1")
    app.state.scorer = scorer
    app.state.limits = limits

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, exc: RequestError) -> JSONResponse:
        return JSONResponse(status_code=exc.status, content={"detail": exc.message})

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {
            "status": "ok",
            **scorer.describe(),
            "limits": {"max_image_bytes": limits.max_image_bytes, "max_batch": limits.max_batch},
        }

    def work(items: list[tuple[bytes, str]], single: bool) -> list[dict[str, Any]]:
        images = decode_images(items, single)
        with gate:
            try:
                scores = scorer.score_images(images, [text for _, text in items])
            except MemeguardError as exc:
                raise RequestError(422, str(exc)) from None
        return [score.to_dict() for score in scores]

    @app.post("/score", openapi_extra=SCORE_OPENAPI)
    async def score(request: Request) -> dict[str, Any]:
        started = time.perf_counter()
        body = await _read_body(request, limits.max_request_bytes)
        try:
            payload = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RequestError(400, f"the body is not valid JSON ({exc})") from None
        items, single = parse_items(payload, limits)
        results = await run_in_threadpool(work, items, single)
        latency_ms = round(1000.0 * (time.perf_counter() - started), 3)
        if single:
            return {**results[0], "latency_ms": latency_ms}
        return {"results": results, "latency_ms": latency_ms}

    return app


async def _read_body(request: Any, limit: int) -> bytes:
    """The body, refused as soon as it passes ``limit`` (a huge upload is never held in memory)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"request body of {int(declared):,} bytes is over the {limit:,}-byte limit")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"request body is over the {limit:,}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)
