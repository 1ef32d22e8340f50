"""Memes rendered the way meme generators draw them (white bold text, black outline), on photo-like
pictures and on flat backgrounds, for the OCR and bulk-scoring tests (a module with a unique name)."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

CAPTIONS = [
    "when you finally get the dog to sit still",
    "nobody expects the truck on a monday morning",
    "me and the boys going to the beach",
    "look at this cat he thinks he is a lion",
    "that moment when the bus is late again",
    "my face when someone says pizza is not food",
]


def photo(seed: int, size: tuple[int, int]) -> Image.Image:
    """A busy picture: a noisy colour gradient with a few large soft shapes (no real photos ship here)."""
    rng = np.random.default_rng(seed)
    width, height = size
    ramp = np.linspace(0, 1, width)[None, :, None] * rng.uniform(40, 220, size=3)
    fall = np.linspace(0, 1, height)[:, None, None] * rng.uniform(-60, 60, size=3)
    pixels = np.clip(ramp + fall + rng.normal(0, 18, size=(height, width, 3)) + 20, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        radius = int(rng.integers(width // 8, width // 3))
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=colour)
    return image


def render_meme(caption: str, seed: int, flat: bool, size: tuple[int, int] = (360, 300)) -> Image.Image:
    """``caption`` drawn by the synthetic set's own caption painter (DejaVu Sans Bold, a real font)."""
    from memeguard.data.synth import draw_caption, find_font

    rng = np.random.default_rng(seed)
    if flat:
        image = Image.new("RGB", size, tuple(int(c) for c in rng.integers(0, 256, size=3)))
    else:
        image = photo(seed, size)
    draw_caption(image, caption, seed, str(find_font()))
    return image


def word_recall(truth: str, read: str) -> float:
    """Share of the true caption's words found in the OCR text (counted with multiplicity)."""
    from collections import Counter

    want, got = Counter(truth.split()), Counter(read.split())
    return sum(min(n, got[word]) for word, n in want.items()) / max(1, sum(want.values()))
