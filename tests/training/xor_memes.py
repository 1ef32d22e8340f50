"""A tiny XOR meme set written in the HM layout, with region features made directly (no images needed).

Label = colour family of the regions XOR noun group of the text, so neither modality alone predicts it.
Regions: 6 boxes of 32-d features; the colour family shifts the mean of the first 8 dims of every box.
Imported by name from the training tests (a uniquely named module: every test folder has a conftest).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from memeguard.features.record import RegionRecord

ANIMALS = ["dog", "cat", "horse", "cow", "bird"]
VEHICLES = ["car", "bus", "truck", "train", "boat"]
FILLER = ["look at this", "when you see a", "nobody expects the", "my friend the", "just a normal"]
DIM = 32
MODEL = "visualbert-tiny"
Config = TypeVar("Config")


def make_meme_set(n: int, seed: int, start_id: int = 1, labelled: bool = True) -> tuple[list[dict], dict]:
    rng = np.random.default_rng(seed)
    lines, regions = [], {}
    for i in range(n):
        meme_id = start_id + i
        visual, text_group = int(rng.integers(2)), int(rng.integers(2))
        noun = (VEHICLES if text_group else ANIMALS)[int(rng.integers(5))]
        text = f"{FILLER[int(rng.integers(5))]} {noun}"
        feats = rng.normal(0.0, 0.5, size=(6, DIM)).astype(np.float32)
        feats[:, :8] += 1.5 if visual else -1.5
        boxes = np.array(
            [
                [0, 0, 50, 50],
                [50, 0, 100, 50],
                [0, 50, 50, 100],
                [50, 50, 100, 100],
                [0, 0, 100, 100],
                [25, 25, 75, 75],
            ],
            dtype=np.float32,
        )
        regions[meme_id] = RegionRecord(meme_id, feats, boxes, (100, 100))
        line = {"id": meme_id, "img": f"img/{meme_id:05d}.png", "text": text}
        if labelled:
            line["label"] = visual ^ text_group
        lines.append(line)
    return lines, regions


def write_jsonl(path: Path, lines: list[dict]) -> None:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


def toy_config(config_class: type[Config], data: Path, out: Path, **options: Any) -> Config:
    """A ``TrainConfig`` or ``PretrainConfig`` for a run on this set: the tiny model on the CPU without a
    progress bar, batches of 8, unless ``options`` says otherwise (what every test shares)."""
    shared = dict(
        model=MODEL, features="toy", data_dir=data, out_dir=out, batch_size=8, device="cpu", progress=False
    )
    return config_class(**{**shared, **options})


def cli_args(*words: str, **options: Any) -> list[str]:
    """``words`` (the command, args already spelled out) then ``options`` as a command line, in the given
    order: ``train_split="traindev"`` -> ``--train-split traindev``, a list or tuple repeats the option,
    True is a bare flag and False its ``--no-`` form (the tests read as the command a user would type)."""
    args = list(words)
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            args.append(flag)
        elif value is False:
            args.append("--no-" + flag[2:])
        else:
            for each in value if isinstance(value, (list, tuple)) else [value]:
                args += [flag, str(each)]
    return args
