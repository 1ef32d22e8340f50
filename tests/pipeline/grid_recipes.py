"""Recipe texts for the pipeline tests: grid features plus tiny models, written as a user would.

The tests edit these texts with ``str.replace`` (a seed, a method, ``model:`` -> ``architecture:``), so
the helpers return the exact YAML rather than a parsed recipe; one writer keeps the layout the same in
every test file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

QUICK_TRAIN = "{lr: 0.001, epochs: 1}"

# One model with two seeds, one key a line: the recipe-checking tests assert ``file:line`` positions in it.
TWO_SEED_RECIPE = """\
name: t
features:
  grid:
    extractor: grid
models:
  - name: V
    model: visualbert-tiny
    features: grid
    seeds: [1, 2]
    train: {lr: 0.001, epochs: 1}
"""


def model_entry(name: str, model: str, seeds: str | None = None, train: str = QUICK_TRAIN) -> str:
    """One ``models:`` item on grid features; ``seeds`` as written in YAML (``"[1, 2]"``), None to omit."""
    seeds_line = "" if seeds is None else f"    seeds: {seeds}\n"
    return f"  - name: {name}\n    model: {model}\n    features: grid\n{seeds_line}    train: {train}\n"


def grid_recipe(name: str, models: Sequence[str], ensemble: str | None = None) -> str:
    """A recipe named ``name`` with one grid feature set, the ``model_entry`` items, and ``ensemble``."""
    ensemble_line = "" if ensemble is None else f"ensemble: {{method: {ensemble}}}\n"
    return f"name: {name}\nfeatures:\n  grid: {{extractor: grid}}\nmodels:\n{''.join(models)}{ensemble_line}"


def write_recipe(tmp_path: Path, text: str, file_name: str = "small.yaml") -> Path:
    """``text`` written to ``tmp_path / file_name``; the path, for ``load_recipe``."""
    path = tmp_path / file_name
    path.write_text(text, encoding="utf-8")
    return path
