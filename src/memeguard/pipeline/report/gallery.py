"""The gallery: the dev memes the model got most confidently wrong, with their explanation when given.

Error analysis starts from examples: a moderator or a researcher learns more from the twelve worst
mistakes than from another decimal of AUROC. "Wrong" is judged at the operating point; "confident" is
``|proba - label|``. Images are decoded with the project's checked opener (bombs and truncated files
become a one-line note on the card), shrunk to at most :data:`THUMBNAIL_PX` and embedded as JPEG, so the
gallery's size is bounded whatever the images are.

An explanation provider (``explain(meme) -> (overlay_png | None, word_scores | None)``, e.g. the
integrated-gradients attributions of ``memeguard explain``) adds its overlay beside the meme and colours
the caption's words by their attribution (red: towards hateful, blue: away from it).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from memeguard.data.hm import image_path
from memeguard.data.images import open_image, open_image_bytes
from memeguard.data.meme import Meme
from memeguard.errors import MemeguardError
from memeguard.pipeline.report.page import esc, img

THUMBNAIL_PX = 256
JPEG_QUALITY = 82
GALLERY_SIZE = 12
MAX_GALLERY_SIZE = 100  # a caller's k is capped: each card embeds up to two images
MAX_WORDS = 200  # words coloured per meme; a caption is a sentence, not a book

WordScores = Mapping[str, float] | Sequence[tuple[str, float]]
Explainer = Callable[[Meme], tuple[bytes | None, WordScores | None]]


def most_confidently_wrong(
    ids: np.ndarray, y: np.ndarray, proba: np.ndarray, threshold: float, k: int
) -> list[tuple[int, int, float]]:
    """``(id, label, proba)`` of the ``k`` misclassified memes with the largest ``|proba - label|``;
    ties by id, so the gallery is the same on every run."""
    wrong = np.flatnonzero((proba >= threshold) != (y == 1))
    order = sorted(wrong.tolist(), key=lambda i: (-abs(float(proba[i]) - int(y[i])), int(ids[i])))
    return [(int(ids[i]), int(y[i]), float(proba[i])) for i in order[: min(max(0, k), MAX_GALLERY_SIZE)]]


def _jpeg(image: Image.Image) -> bytes:
    image = image.convert("RGB")
    image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY, optimize=True)
    return buffer.getvalue()


def thumbnail(path: Path, context: str) -> bytes:
    """A JPEG of at most 256 px a side; DataError (one line) for a missing, huge or broken image."""
    return _jpeg(open_image(path, context))


def _word_pairs(scores: WordScores) -> list[tuple[str, float]]:
    items = scores.items() if isinstance(scores, Mapping) else scores
    pairs = []
    for item in list(items)[:MAX_WORDS]:
        word, value = item
        value = float(value)
        pairs.append((str(word), value if math.isfinite(value) else 0.0))
    return pairs


def words_html(scores: WordScores) -> str:
    """Words as highlighted spans: red pushes towards hateful, blue away; opacity is |score| / max."""
    pairs = _word_pairs(scores)
    peak = max((abs(v) for _, v in pairs), default=0.0) or 1.0
    spans = []
    for word, value in pairs:
        alpha = min(1.0, abs(value) / peak) * 0.75
        rgb = "209,73,91" if value > 0 else "46,134,171"
        spans.append(
            f'<mark class="w" style="background: rgba({rgb},{alpha:.2f})" title="{value:+.3f}">'
            f"{esc(word)}</mark>"
        )
    return " ".join(spans)


def _explanation(explain: Explainer | None, meme: Meme) -> tuple[bytes | None, WordScores | None, str]:
    """(overlay JPEG, word scores, note): a failing provider is a note on the card, not a lost report."""
    if explain is None:
        return None, None, ""
    try:
        overlay, words = explain(meme)
        jpeg = _jpeg(open_image_bytes(overlay, f"explanation of meme {meme.id}")) if overlay else None
    except (MemeguardError, OSError, ValueError) as exc:
        return None, None, f"no explanation: {exc}"
    return jpeg, words, ""


def card(meme: Meme, label: int, proba: float, data_dir: Path | None, explain: Explainer | None) -> str:
    pictures, notes = [], []
    if data_dir is not None:
        try:
            pictures.append(
                img(thumbnail(image_path(data_dir, meme), f"meme {meme.id}"), f"meme {meme.id}", "image/jpeg")
            )
        except MemeguardError as exc:
            notes.append(str(exc))
    overlay, words, problem = _explanation(explain, meme)
    if overlay:
        pictures.append(img(overlay, f"attribution overlay of meme {meme.id}", "image/jpeg"))
    if problem:
        notes.append(problem)
    if not pictures:
        pictures.append('<div class="noimg">image not available</div>')
    kind, badge = ("fp", "false flag") if label == 0 else ("fn", "missed")
    text = words_html(words) if words else esc(meme.text)
    return (
        '<div class="meme">'
        f'<div class="pics{" two" if len(pictures) > 1 else ""}">{"".join(pictures)}</div>'
        f'<div class="body"><span class="badge {kind}">{badge}</span> '
        f"<b>score {proba:.3f}</b>, truth: {'hateful' if label else 'not hateful'}"
        f'<div class="text">{text}</div>'
        f'<div class="meta">id {meme.id}' + "".join(f"<br>{esc(n)}" for n in notes) + "</div></div></div>"
    )


def gallery_html(
    worst: list[tuple[int, int, float]],
    memes: Mapping[int, Meme],
    data_dir: Path | None,
    explain: Explainer | None,
) -> str:
    cards = []
    for meme_id, label, proba in worst:
        meme = memes.get(meme_id) or Meme(id=meme_id, img="", text="")
        cards.append(card(meme, label, proba, data_dir if meme.img else None, explain))
    return '<div class="gallery">' + "\n".join(cards) + "</div>"
