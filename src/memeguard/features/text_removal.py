"""Text-removed images: the caption is found by OCR and painted over before an extractor sees the image.

Why: the caption reaches the models as text already; left in the pixels it is read a second time, badly,
by an image encoder that then describes letters instead of the picture. Removing it was one of Zhu's
tricks in the 1st-place Hateful Memes solution. Any extractor can run on cleaned images
(``memeguard features extract --remove-text``; recipe ``params: {remove_text: true}``): the wrapper below
cleans each image and hands it on, and records the setting in the store's meta, from which the scorer's
rebuilt extractor repeats it (see ``BaseExtractor.__init_subclass__``).

How: the caption's boxes come from the OCR step (:func:`memeguard.data.ocr.read_lines`, rapidocr), each
is rasterised as a filled quadrilateral into a mask, the mask grows by ``dilation`` pixels (an elliptical
kernel: a meme's black outline and anti-aliasing reach past the detected box), and ``cv2.inpaint``
(Telea's method) fills it from the surrounding pixels. OpenCV is the build rapidocr brings
(``opencv-python-headless``): installing a second OpenCV build beside it breaks both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from memeguard.errors import ConfigError
from memeguard.features.extractor import DEFAULT_TEXT_DILATION, Extractor
from memeguard.features.record import RegionRecord

REMOVE_TEXT_HINT = (
    "removing text from images needs the 'ocr' extra (rapidocr and its OpenCV): pip install 'memeguard[ocr]'"
)
# Pixels around a masked pixel that Telea's method draws from (OpenCV's examples use 3-5).
INPAINT_RADIUS = 5


def _cv2() -> Any:
    try:
        import cv2
    except ImportError as exc:
        raise ConfigError(REMOVE_TEXT_HINT) from exc
    return cv2


def box_quad(box: Sequence[float]) -> np.ndarray:
    """An axis-aligned (x0, y0, x1, y1) box as its four corners [4, 2], clockwise from the top left."""
    x0, y0, x1, y1 = (float(v) for v in box)
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


def text_mask(size: tuple[int, int], quads: Sequence[np.ndarray], dilation: int) -> np.ndarray:
    """uint8 [height, width] mask, 255 inside any quadrilateral (corners outward-rounded to whole pixels)
    grown by ``dilation`` pixels; 0 elsewhere."""
    cv2 = _cv2()
    height, width = size
    mask = np.zeros((height, width), dtype=np.uint8)
    for quad in quads:
        points = np.asarray(quad, dtype=np.float64).reshape(-1, 2)
        centre = points.mean(axis=0)
        outward = np.where(points >= centre, np.ceil(points), np.floor(points))
        cv2.fillPoly(mask, [outward.astype(np.int32)], 255)
    if dilation > 0 and mask.any():
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * dilation + 1, 2 * dilation + 1))
        mask = cv2.dilate(mask, kernel)
    return mask


def inpaint(image: Image.Image, mask: np.ndarray) -> Image.Image:
    """A new RGB image with the masked pixels filled by Telea's method; the others unchanged."""
    rgb = np.asarray(image.convert("RGB"))
    if not mask.any():
        return Image.fromarray(rgb.copy(), "RGB")
    filled = _cv2().inpaint(np.ascontiguousarray(rgb), mask, INPAINT_RADIUS, _cv2().INPAINT_TELEA)
    return Image.fromarray(filled, "RGB")


def remove_text(
    image: Image.Image, dilation: int = DEFAULT_TEXT_DILATION, context: str = "image"
) -> Image.Image:
    """``image`` with the text OCR finds in it inpainted (a copy as is when it finds none)."""
    from memeguard.data.ocr import read_lines

    lines = read_lines(image, context)
    quads = [box_quad(line.box) for line in lines]
    return inpaint(image, text_mask((image.height, image.width), quads, dilation))


class TextRemovingExtractor:
    """Any extractor, fed text-removed images; its meta says so (``remove_text``, ``remove_text_dilation``).

    Everything else (``name``, ``variants``, ``batch_size``, ``dataset_meta`` ...) is the wrapped
    extractor's, so stores, the pipeline and the scorer treat it as that extractor.
    """

    def __init__(self, inner: Extractor, dilation: int = DEFAULT_TEXT_DILATION) -> None:
        _cv2()  # refuse at build time, not at the first image, when the OCR extra is missing
        self.inner = inner
        self.dilation = int(dilation)

    @property
    def name(self) -> str:
        return self.inner.name

    def variants(self) -> list[str]:
        return self.inner.variants()

    def extract(
        self, images: Sequence[Image.Image], meme_ids: Sequence[int], texts: Sequence[str]
    ) -> dict[str, list[RegionRecord]]:
        cleaned = [
            remove_text(image, self.dilation, context=f"meme id {meme_id}")
            for image, meme_id in zip(images, meme_ids, strict=False)
        ]
        return self.inner.extract(cleaned, meme_ids, texts)

    def meta(self) -> dict[str, Any]:
        return {
            **self.inner.meta(),
            "remove_text": True,
            "remove_text_dilation": self.dilation,
            "remove_text_method": (
                f"rapidocr boxes, dilated {self.dilation} px, cv2.inpaint TELEA radius {INPAINT_RADIUS}"
            ),
        }

    def __getattr__(self, attribute: str) -> Any:
        if attribute == "inner":  # not set yet (during unpickling): no recursion
            raise AttributeError(attribute)
        return getattr(self.inner, attribute)
