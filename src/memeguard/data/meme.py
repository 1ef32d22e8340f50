"""The ``Meme`` record: one line of a Hateful Memes jsonl file."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Meme:
    """One meme. ``id`` is the int id (image files are zero-padded to 5 digits, e.g. ``img/01235.png``);
    ``label`` is 1 for hateful, 0 for not hateful, None when the split carries no labels."""

    id: int
    img: str
    text: str
    label: int | None = None

    def to_json(self) -> dict[str, object]:
        record: dict[str, object] = {"id": self.id, "img": self.img}
        if self.label is not None:
            record["label"] = self.label
        record["text"] = self.text
        return record
