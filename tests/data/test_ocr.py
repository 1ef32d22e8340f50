"""OCR of meme captions: reading order and normalisation against hand-made boxes, then the real engine on
memes rendered with a real font (white text, black outline) on busy and on flat backgrounds."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from PIL import Image, ImageDraw

from memeguard.data import ocr
from memeguard.data.ocr import OcrLine, join_lines, normalise_caption, read_caption, read_lines, reading_order
from memeguard.errors import ConfigError


def line(text: str, x0: float, y0: float, x1: float, y1: float) -> OcrLine:
    return OcrLine(text, (x0, y0, x1, y1), 0.99)


def test_normalise_caption_is_hateful_memes_style():
    assert normalise_caption("  When YOU see\tIT \n coming!  ") == "when you see it coming!"
    assert normalise_caption("") == ""


def test_reading_order_rows_top_to_bottom_and_left_to_right():
    boxes = [
        line("BOTTOM", 40, 250, 200, 280),
        line("on a monday", 9, 29, 288, 63),  # touches the line above by 9 px: still its own row
        line("see a bus", 160, 4, 278, 36),  # same row as "when you", to its right
        line("when you", 20, 2, 150, 38),
    ]
    rows = reading_order(boxes)
    assert [[item.text for item in row] for row in rows] == [
        ["when you", "see a bus"],
        ["on a monday"],
        ["BOTTOM"],
    ]
    assert join_lines(boxes) == "when you see a bus on a monday bottom"
    assert join_lines([]) == ""


def test_missing_extra_is_one_clear_line(monkeypatch):
    ocr.get_engine.cache_clear()
    monkeypatch.setitem(sys.modules, "rapidocr", None)  # what an environment without the extra looks like
    try:
        with pytest.raises(ConfigError, match=r"memeguard\[ocr\]"):
            read_caption(Image.new("RGB", (64, 64)))
    finally:
        ocr.get_engine.cache_clear()


def test_a_blank_picture_has_no_caption():
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(90, 160, size=(120, 160, 3), dtype=np.uint8), "RGB")
    ImageDraw.Draw(noise).ellipse((20, 20, 90, 90), fill=(200, 40, 40))
    assert read_caption(noise) == ""


@pytest.mark.slow
def test_rendered_memes_are_read_back(request, monkeypatch):
    monkeypatch.syspath_prepend(str(request.path.parent.parent / "serving"))
    from ocr_helpers import CAPTIONS, render_meme, word_recall

    cases = [(CAPTIONS[k], k, k % 2 == 1) for k in range(4)]  # two busy pictures, two flat backgrounds
    recalls = []
    for caption, seed, flat in cases:
        image = render_meme(caption, seed, flat)
        lines = read_lines(image, f"meme {seed}")
        assert all(0 <= item.box[0] <= item.box[2] <= image.width + 1 for item in lines)
        recalls.append(word_recall(caption, join_lines(lines)))
    assert np.mean(recalls) >= 0.9, recalls


def test_a_big_round_shape_is_not_a_letter():
    caption = [line("look at this cat", 40, 5, 300, 40), line("he is a lion", 90, 250, 270, 290)]
    circle = line("O", 93, 65, 242, 221)
    triangle = line("a", 100, 120, 120, 150)
    assert ocr.drop_shapes([*caption, circle, triangle]) == caption
    assert ocr.drop_shapes([circle]) == [circle]


def test_stray_foreign_script_is_dropped_but_accents_and_punctuation_stay():
    boxes = [line("send help 唯", 0, 0, 100, 20), line("café? !", 0, 30, 100, 50)]
    assert join_lines(boxes) == "send help café? !"
