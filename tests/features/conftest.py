"""Fixtures shared by the feature tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

COLOURS = [
    (200, 30, 30),
    (30, 200, 30),
    (30, 30, 200),
    (200, 200, 30),
    (30, 200, 200),
    (200, 30, 200),
    (90, 90, 90),
]


@pytest.fixture
def hm_dir(tmp_path: Path) -> Path:
    """A tiny HM folder: 7 images, train (4) + dev_seen (3, one id shared with train) + test_unseen (1)."""
    root = tmp_path / "hm"
    (root / "img").mkdir(parents=True)
    for i, colour in enumerate(COLOURS):
        image = Image.new("RGB", (60 + 10 * i, 50), (128, 128, 128))
        image.paste(colour, (5, 5, 30, 30))
        image.save(root / "img" / f"{i + 100:05d}.png")

    def line(i: int, label: int | None = 0) -> str:
        record = {"id": i + 100, "img": f"img/{i + 100:05d}.png", "text": f"meme {i}"}
        if label is not None:
            record["label"] = label
        return json.dumps(record) + "\n"

    (root / "train.jsonl").write_text("".join(line(i, i % 2) for i in range(4)))
    (root / "dev_seen.jsonl").write_text(line(3, 1) + line(4) + line(5))
    (root / "test_unseen.jsonl").write_text(line(6, None))
    return root
