"""Hateful Memes data: the Meme record, split reading and validation, vilio's cleaning, the synthetic set,
prediction CSVs and metrics."""

from memeguard.data.hm import SPLITS, available_splits, image_path, load_dataset, load_jsonl, read_split
from memeguard.data.meme import Meme
from memeguard.data.text import check_text

__all__ = [
    "SPLITS",
    "Meme",
    "available_splits",
    "check_text",
    "image_path",
    "load_dataset",
    "load_jsonl",
    "read_split",
]
