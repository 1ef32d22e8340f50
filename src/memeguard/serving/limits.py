"""What one request may cost, checked at the edge before any real work starts.

A meme is a few hundred KB and at most a few megapixels. Everything a client controls is bounded here:
body bytes (while streaming, so a huge or stalled upload is cut early), JSON nesting and integer length
(Python's recursive parser and its int() are quadratic or crash on hostile input), decoded pixels per
image and per request (read from the image header, before decoding), and lone surrogates (they cannot be
encoded as UTF-8, so they would fail deep inside the tokenizer).
"""

from __future__ import annotations

import io
import json
import re
import warnings
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
from PIL import Image

from memeguard.errors import ConfigError

# The formats a meme comes in; anything else is refused before a decoder runs.
IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP")
# A JSON string literal, written as an unrolled loop so the regex stays linear on multi-MB base64.
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = re.compile(rb"[^\[\]{}]")


class RequestError(Exception):
    """A client mistake: becomes a JSON ``{"detail": message}`` response with ``status``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


@dataclass(frozen=True)
class ServiceLimits:
    """Request limits and batching settings; the defaults suit memes (a few hundred KB, a few megapixels)."""

    max_image_bytes: int = 10 * 1024 * 1024
    max_batch: int = 32
    max_request_bytes: int = 8 * 1024 * 1024
    max_concurrency: int = 1
    max_image_pixels: int = 16_000_000
    max_request_pixels: int = 40_000_000
    max_wait_ms: float = 5.0
    max_queue: int = 128
    max_queue_bytes: int = 64 * 1024 * 1024
    max_inflight_bytes: int = 256 * 1024 * 1024
    body_idle_s: float = 0.5
    body_total_s: float = 30.0
    max_json_depth: int = 16
    max_int_digits: int = 32

    def __post_init__(self) -> None:
        for spec in fields(self):
            value = getattr(self, spec.name)
            if spec.name == "max_wait_ms":
                if value < 0:
                    raise ConfigError(f"service limit max_wait_ms must be >= 0, got {value}")
            elif value <= 0:
                raise ConfigError(f"service limit {spec.name} must be >= 1, got {value}")


# ------------------------------------------------------------------------------------------- JSON


def json_depth(body: bytes) -> int:
    """The deepest nesting of ``body`` without parsing it (string contents are skipped; numpy, no loop)."""
    brackets = _NOT_BRACKET.sub(b"", _JSON_STRING.sub(b"", body))
    if not brackets:
        return 0
    codes = np.frombuffer(brackets, dtype=np.uint8)
    steps = np.where((codes == ord("[")) | (codes == ord("{")), 1, -1)
    return int(np.cumsum(steps).max())


def parse_json(body: bytes, limits: ServiceLimits) -> Any:
    """A request body -> its JSON value, refusing deep nesting, long integers and NaN before they cost."""
    depth = json_depth(body)
    if depth > limits.max_json_depth:
        raise RequestError(
            400, f"the body nests {depth:,} levels deep, over the limit of {limits.max_json_depth}"
        )

    def parse_int(digits: str) -> int:
        if len(digits.lstrip("-")) > limits.max_int_digits:
            raise ValueError(
                f"an integer of {len(digits):,} digits is over the {limits.max_int_digits}-digit limit"
            )
        return int(digits)

    def refuse_constant(name: str) -> None:
        raise ValueError(f"{name} is not allowed")

    try:
        return json.loads(body, parse_int=parse_int, parse_constant=refuse_constant)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(400, f"the body is not valid JSON ({exc})") from None
    except (ValueError, RecursionError) as exc:
        raise RequestError(400, f"the body is not acceptable JSON ({exc})") from None


def check_unicode(value: str, where: str) -> str:
    """``value`` unchanged, or a 400 when it holds a lone surrogate (JSON can spell one; UTF-8 cannot)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise RequestError(
            400, f"{where} is not valid Unicode (a lone surrogate at position {exc.start})"
        ) from None
    return value


# ----------------------------------------------------------------------------------------- pixels


def header_pixels(data: bytes, where: str, limits: ServiceLimits) -> int:
    """Width x height from the image header alone (``Image.open`` does not decode); 422 over the budget."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as image:
                width, height = image.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise RequestError(422, f"{where}: image is too large to be a meme ({exc})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise RequestError(422, f"{where}: image is unreadable or truncated ({exc})") from None
    if width * height > limits.max_image_pixels:
        raise RequestError(
            422,
            f"{where}: image is {width}x{height} pixels, over the {limits.max_image_pixels:,}-pixel limit "
            "(decompression bomb?)",
        )
    return width * height


def check_request_pixels(pixels: list[int], limits: ServiceLimits) -> int:
    """The request's total decoded pixels, or a 413 when they pass the per-request budget."""
    total = sum(pixels)
    if total > limits.max_request_pixels:
        raise RequestError(
            413,
            f"the request's images total {total:,} pixels, over the {limits.max_request_pixels:,} budget",
        )
    return total
