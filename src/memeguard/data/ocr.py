"""Read a meme's caption from its pixels, for memes that arrive without their text.

Real memes reach a moderator as images; the models need the caption too. ``rapidocr`` with
``onnxruntime`` ships small detection and recognition models inside its wheel, so reading works offline
and needs no GPU (about 0.3-1 s per meme on 2 cores). The engine is loaded once per process, on first use.

The boxes are returned with the text (:func:`read_lines`): the text-removal feature variant paints over
them, so the caption is located once, here, low in the stack.

Captions are normalised the way the Hateful Memes texts are (lower case, single spaces; punctuation is
kept), and lines are joined in reading order: top to bottom, and left to right within a row of boxes
whose vertical extents overlap (a caption split into side-by-side boxes stays one line).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from memeguard.errors import ConfigError, DataError

OCR_EXTRA_HINT = (
    "reading text from images needs the 'ocr' extra: pip install 'memeguard[ocr]' (or give the meme's text)"
)
# Two boxes share a row when they overlap vertically by at least this share of the shorter one's height:
# stacked caption lines touch or overlap a little (outlined text), boxes of one line overlap by far more.
ROW_OVERLAP = 0.5


# Memes are upright: the 180-degree text classifier only costs time. The detector sees the image at its
# own size (shrunk only above 960 px): the default upscaling to a 736-px short side is slower and, on the
# rendered test memes, lost a caption word on a busy background that this setting reads. Quiet logging:
# rapidocr prints a line per call otherwise.
ENGINE_PARAMS = {
    "Global.use_cls": False,
    "Global.log_level": "error",
    "Det.limit_type": "max",
    "Det.limit_side_len": 960,
}


@dataclass(frozen=True)
class OcrLine:
    """One detected piece of text and its axis-aligned box (x0, y0, x1, y1) in image pixels."""

    text: str
    box: tuple[float, float, float, float]
    confidence: float


def normalise_caption(text: str) -> str:
    """Hateful Memes caption style: lower case, whitespace collapsed to single spaces, no outer spaces."""
    return " ".join(text.lower().split())


def _foreign_script(word: str) -> bool:
    """A word of letters outside ASCII only: the bundled recogniser also knows Chinese, and reads picture
    texture as a stray CJK character now and then; an English caption word always has an ASCII letter."""
    has_ascii = any(char.isascii() and char.isalnum() for char in word)
    return not has_ascii and any(char.isalpha() for char in word)


def _shares_row(box: tuple[float, ...], row_box: tuple[float, ...]) -> bool:
    overlap = min(box[3], row_box[3]) - max(box[1], row_box[1])
    shorter = min(box[3] - box[1], row_box[3] - row_box[1])
    return shorter > 0 and overlap >= ROW_OVERLAP * shorter


def reading_order(lines: Sequence[OcrLine]) -> list[list[OcrLine]]:
    """Rows top to bottom, each left to right; a row is anchored on its top box so rows do not chain."""
    rows: list[list[OcrLine]] = []
    for line in sorted(lines, key=lambda item: (item.box[1], item.box[0])):
        row = next((row for row in rows if _shares_row(line.box, row[0].box)), None)
        if row is None:
            rows.append([line])
        else:
            row.append(line)
    return [sorted(row, key=lambda item: item.box[0]) for row in rows]


def join_lines(lines: Sequence[OcrLine]) -> str:
    """The caption as one normalised string, in reading order."""
    text = normalise_caption(" ".join(line.text for row in reading_order(lines) for line in row))
    return " ".join(word for word in text.split() if not _foreign_script(word))


@functools.lru_cache(maxsize=1)
def get_engine() -> Any:
    """The process's one rapidocr engine (loading its ONNX sessions takes about a second)."""
    try:
        from rapidocr import RapidOCR
    except ImportError as exc:
        raise ConfigError(OCR_EXTRA_HINT) from exc
    engine = RapidOCR(params=ENGINE_PARAMS)
    logging.getLogger("RapidOCR").setLevel(logging.ERROR)
    return engine


def read_lines(image: Image.Image, context: str = "image") -> list[OcrLine]:
    """The text boxes rapidocr finds in an RGB image, with text and confidence (unordered; lone characters
    beside real lines are dropped, see :func:`drop_shapes`)."""
    pixels = np.asarray(image.convert("RGB") if image.mode != "RGB" else image)
    engine = get_engine()
    try:
        result = engine(pixels)
    except Exception as exc:  # onnxruntime/opencv failures carry no file name: add it
        raise DataError(f"{context}: OCR failed ({type(exc).__name__}: {exc})") from exc
    if result is None or result.txts is None or result.boxes is None:
        return []
    lines = []
    for text, quad, confidence in zip(result.txts, result.boxes, result.scores, strict=True):
        if not any(char.isalnum() for char in text):
            continue  # texture read as a lone bullet or dash: no caption has a line without a word
        points = np.asarray(quad, dtype=np.float64)
        box = (points[:, 0].min(), points[:, 1].min(), points[:, 0].max(), points[:, 1].max())
        lines.append(OcrLine(str(text), tuple(float(v) for v in box), float(confidence)))  # type: ignore[arg-type]
    return drop_shapes(lines)


def drop_shapes(lines: Sequence[OcrLine]) -> list[OcrLine]:
    """Without detections of one character when longer ones exist: the detector finds a caption line as
    one box, so a box holding a lone "o" or "a" is a circle or a triangle of the picture read as a letter
    (seen on the synthetic set). A caption of one character is kept."""
    if all(len(line.text.strip()) <= 1 for line in lines):
        return list(lines)
    return [line for line in lines if len(line.text.strip()) > 1]


def read_caption(image: Image.Image, context: str = "image") -> str:
    """The meme's caption as the Hateful Memes annotators would have typed it ('' when there is none)."""
    return join_lines(read_lines(image, context))
