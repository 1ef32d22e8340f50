"""Helpers for the serving tests (a module with a unique name: ``conftest`` names clash across test dirs)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

# Non-default grid settings: a scorer that ignored the stored parameters would get other features.
GRID_LEVELS = (3, 1)
GRID_CELL_PX = 8
TEXTS = [
    "look at this dog",
    "when you see a bus on a monday morning",
    "nobody expects the cat",
    "my friend the truck",
    "just a normal horse doing normal horse things",
    "",
]


def synthetic_image(seed: int, size: tuple[int, int]) -> Image.Image:
    """A noisy gradient with one coloured shape: cheap, but different per seed in colour, edges and layout."""
    rng = np.random.default_rng(seed)
    width, height = size
    ramp = np.linspace(0, 1, width)[None, :, None] * rng.uniform(40, 200, size=3)
    pixels = np.clip(ramp + rng.normal(0, 12, size=(height, width, 3)) + 30, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(image)
    x, y = int(rng.integers(0, width // 2)), int(rng.integers(0, height // 2))
    colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
    draw.ellipse((x, y, x + width // 3, y + height // 3), fill=colour)
    return image


@dataclass
class ServingFixture:
    data_dir: Path
    store: Path
    runs: list[Path]
    ids: list[int]
    texts: list[str]

    def image(self, meme_id: int) -> Path:
        return self.data_dir / "img" / f"{meme_id:05d}.png"


def save_run(run_dir: Path, store: Path, seed: int, feature_dim: int, **config: object) -> Path:
    """A run dir as ``memeguard train`` leaves it: model/ (save_pretrained) + train_config.json."""
    import torch

    from memeguard.models import create_model

    torch.manual_seed(seed)
    model = create_model("visualbert-tiny", visual_feat_dim=feature_dim)
    with torch.no_grad():  # far from the 0.02-std init, so that scores clearly depend on the input
        for parameter in model.parameters():
            if parameter.ndim >= 2:
                parameter.normal_(0.0, 0.15)
    model.save_pretrained(run_dir / "model")
    record = {
        "model": "visualbert-tiny",
        "features": str(store),
        "data_dir": "unused",
        "seed": seed,
        **config,
    }
    (run_dir / "train_config.json").write_text(json.dumps(record))
    return run_dir


def png_bytes(image: Image.Image) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def runs_with_dev_predictions(runs: list[Path], ids: list[int], results: list, root: Path) -> list[Path]:
    """Copies of ``runs`` under ``root``, each with the dev_seen.csv ``memeguard train`` would have written
    (its member probabilities from the scorer's ``results``): what ``export`` needs to pick a threshold."""
    import shutil

    from memeguard.data.predictions import write_predictions

    copies = []
    for run in runs:
        copy = root / run.name
        shutil.copytree(run, copy)
        write_predictions(copy / "dev_seen.csv", ids, [r.per_model[run.name] for r in results])
        copies.append(copy)
    return copies
