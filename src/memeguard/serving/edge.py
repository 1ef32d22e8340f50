"""The service's edge, around every request: request id, API key, body limits, access log, metrics.

A pure ASGI middleware rather than FastAPI dependencies, so that a refused request costs nothing: an
oversized ``Content-Length`` or a missing key is answered before one byte of the body is read, and the
body is counted while it streams in (over the limit, stalled, or too many bytes arriving at once across
all requests: cut there, with a one-line error). One JSON access-log line per request, with its id
(the client's ``X-Request-ID`` when sane, else a fresh one; echoed in the response).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

from memeguard.serving.limits import RequestError, ServiceLimits

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

PAGE = Path(__file__).with_name("web") / "index.html"
# Routes that need the API key when one is set; probes, the page and the docs stay open.
PROTECTED = ("/score", "/v1/", "/metrics")
# Known routes are metric labels as they are; anything else is "other" (random paths must not add series).
KNOWN_ROUTES = ("/", "/score", "/v1/score", "/v1/score/batch", "/health", "/healthz", "/readyz", "/metrics")
_SANE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
access_log = logging.getLogger("memeguard.access")


class ServiceMetrics:
    """Prometheus metrics in the app's own registry (several apps in one process must not collide)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter(
            "memeguard_requests",
            "HTTP requests by route and status",
            ["route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "memeguard_request_seconds",
            "Request latency",
            ["route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=self.registry,
        )
        self.batch_memes = Histogram(
            "memeguard_batch_memes",
            "Memes per scoring batch",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=self.registry,
        )
        self.ocr_seconds = Histogram(
            "memeguard_ocr_batch_seconds",
            "Scoring time of batches that read text by OCR",
            registry=self.registry,
        )
        self.rejections = Counter(
            "memeguard_rejections",
            "Requests refused before scoring, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.queue = Gauge("memeguard_queue_memes", "Memes waiting to be scored", registry=self.registry)

    def render(self, batcher: Any) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        self.queue.set(batcher.queued_memes)
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def observe(self, path: str, status: int, seconds: float) -> None:
        route = path if path in KNOWN_ROUTES else "other"
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)
        if 400 <= status < 500 or status == 503:
            self.rejections.labels(str(status)).inc()


def add_error_handlers(app: Any) -> None:
    """RequestError -> ``{"detail": message}`` with its status (and headers, e.g. Retry-After)."""
    from fastapi.responses import JSONResponse

    @app.exception_handler(RequestError)
    async def _request_error(request: Any, exc: RequestError) -> JSONResponse:
        return JSONResponse(status_code=exc.status, content={"detail": exc.message}, headers=exc.headers)


async def send_error(send: Send, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
    """Answer without the app (and without reading the body): a JSON one-liner."""
    body = json.dumps({"detail": detail}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class InflightBytes:
    """Body bytes held by requests being received, across all of them (the memory a flood can claim)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.held = limit, 0

    def take(self, size: int) -> None:
        if self.held + size > self.limit:
            raise RequestError(
                503, "the server is receiving too much at once; retry shortly", {"Retry-After": "1"}
            )
        self.held += size


class BodyGuard:
    """Wraps ``receive``: counts body bytes against the limits; a gap over ``body_idle_s`` is a stall."""

    def __init__(self, receive: Receive, limits: ServiceLimits, inflight: InflightBytes) -> None:
        self._receive, self.limits, self.inflight = receive, limits, inflight
        self.size, self.taken, self.complete = 0, 0, False
        self.deadline = time.monotonic() + limits.body_total_s

    async def receive(self) -> Message:
        if self.complete:  # after the body: Starlette only listens for a disconnect, no timeout applies
            return await self._receive()
        timeout = min(self.limits.body_idle_s, self.deadline - time.monotonic())
        try:
            message = await asyncio.wait_for(self._receive(), max(timeout, 0.0))
        except TimeoutError:
            raise RequestError(
                408, f"the request body stalled (nothing arrived for {timeout:.1f} s)"
            ) from None
        if message["type"] == "http.request":
            self._count(len(message.get("body", b"")))
            self.complete = not message.get("more_body", False)
        return message

    def _count(self, size: int) -> None:
        self.size += size
        if self.size > self.limits.max_request_bytes:
            raise RequestError(413, f"request body is over the {self.limits.max_request_bytes:,}-byte limit")
        self.inflight.take(size)
        self.taken += size

    def release(self) -> None:
        """Give back what this request's body holds of the shared in-flight budget."""
        self.inflight.held -= self.taken
        self.taken = 0


class EdgeMiddleware:
    """Request id, API key, body limits, access log and metrics for every HTTP request."""

    def __init__(self, app: Any, limits: ServiceLimits, metrics: ServiceMetrics, api_key: str) -> None:
        self.app, self.limits, self.metrics, self.api_key = app, limits, metrics, api_key
        self.inflight = InflightBytes(limits.max_inflight_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        request_id = headers.get("x-request-id", "")
        request_id = request_id if _SANE_ID.fullmatch(request_id) else uuid.uuid4().hex
        status = [500]

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message = {
                    **message,
                    "headers": [*message.get("headers", []), (b"x-request-id", request_id.encode())],
                }
            await send(message)

        guard = BodyGuard(receive, self.limits, self.inflight)
        try:
            refusal = self._refusal(scope["path"], headers)
            if refusal is not None:
                await send_error(send_with_id, *refusal)
            else:
                await self.app(scope, guard.receive, send_with_id)
        finally:
            guard.release()
            elapsed = time.perf_counter() - started
            self.metrics.observe(scope["path"], status[0], elapsed)
            _log_access(scope, request_id, status[0], elapsed, guard.size)

    def _refusal(self, path: str, headers: dict[str, str]) -> tuple[int, str] | None:
        """(status, message) when the request is refused on its headers alone."""
        if self.api_key and path.startswith(PROTECTED) and not self._authorised(headers):
            return 401, "missing or wrong API key (send it as X-API-Key or Authorization: Bearer)"
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.limits.max_request_bytes:
            limit = self.limits.max_request_bytes
            return 413, f"request body of {int(declared):,} bytes is over the {limit:,}-byte limit"
        return None

    def _authorised(self, headers: dict[str, str]) -> bool:
        given = headers.get("x-api-key") or headers.get("authorization", "").removeprefix("Bearer ").strip()
        return hmac.compare_digest(given.encode("utf-8", "replace"), self.api_key.encode("utf-8"))


def _log_access(scope: Scope, request_id: str, status: int, seconds: float, body_bytes: int) -> None:
    if not access_log.isEnabledFor(logging.INFO):
        return
    client = scope.get("client") or ("", 0)
    line = {
        "request_id": request_id,
        "method": scope.get("method"),
        "path": scope["path"],
        "status": status,
        "ms": round(1000.0 * seconds, 2),
        "body_bytes": body_bytes,
        "client": client[0],
    }
    access_log.info(json.dumps(line))
