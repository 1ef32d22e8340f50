"""Opening meme images safely: truncated files and decompression bombs become DataErrors, not crashes."""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from memeguard.errors import DataError

# Real memes are at most a few megapixels; anything beyond this is not a meme but an attack or an accident.
MAX_IMAGE_PIXELS = 40_000_000


def _decode(opener: Callable[[], Image.Image], context: str) -> Image.Image:
    """Open and fully decode, turning bombs, truncation and garbage into DataErrors."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = opener()
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS:
                raise DataError(
                    f"{context}: image is {width}x{height} pixels, larger than the "
                    f"{MAX_IMAGE_PIXELS:,}-pixel limit (decompression bomb?)"
                )
            image.load()  # forces a full decode: catches truncated files
    except DataError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(f"{context}: image is too large to be a meme ({exc})") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{context}: image is unreadable or truncated ({exc})") from exc
    return image


def _checked_open(path: Path, context: str) -> Image.Image:
    if not path.is_file():
        raise DataError(f"{context}: image {path} does not exist")
    return _decode(lambda: Image.open(path), f"{context}: {path}" if context != str(path) else context)


def open_image_bytes(data: bytes, context: str = "uploaded image") -> Image.Image:
    """Decode an uploaded image with the same checks as :func:`open_image`; RGB."""
    image = _decode(lambda: Image.open(io.BytesIO(data)), context)
    return image if image.mode == "RGB" else image.convert("RGB")


def open_image(path: str | os.PathLike[str], context: str | None = None) -> Image.Image:
    """Decode an image fully and return it as RGB; ``context`` (e.g. ``"train.jsonl:12 (id 1235)"``)
    prefixes errors."""
    path = Path(path)
    image = _checked_open(path, context or str(path))
    if image.mode != "RGB":
        image = image.convert("RGB")
    return image


def open_image_raw(path: str | os.PathLike[str], context: str | None = None) -> Image.Image:
    """Decode an image fully but keep its mode (vilio's hashes work on the raw pixel array)."""
    path = Path(path)
    return _checked_open(path, context or str(path))


def image_size(path: str | os.PathLike[str], context: str | None = None) -> tuple[int, int]:
    """(height, width) after a full decode check."""
    image = open_image_raw(path, context)
    width, height = image.size
    return height, width
