"""The distillation benchmark's recipes (benchmarks/distill.py): every candidate student's recipe passes the
recipe validation, the student trains with the plateau settings, and the teacher's stages stay the ones the
benchmark has always cached (a changed teacher entry would retrain 6 runs)."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest

from memeguard.pipeline.recipe import load_recipe

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "distill.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("distill_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _args(student: str) -> argparse.Namespace:
    return argparse.Namespace(
        epochs=6, seeds="43, 44", student=student, student_epochs=8, temperature=2.0, alpha=0.5
    )


@pytest.mark.parametrize("student", ["whole-8px", "whole-8px-2l", "quad-16px", "quad-16px-2l"])
def test_every_student_recipe_loads_with_early_stopping(bench, student: str, tmp_path: Path) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text(bench.recipe_text(_args(student), 11))
    recipe = load_recipe(path)
    assert recipe.distill.seed == 11 and recipe.distill.name == student
    train = recipe.distill.train
    assert (train["head_lr_mult"], train["early_stop_patience"], train["eval_every"]) == (3, 2, 44)
    assert train["backbone_keywords"] == ["encoder", "pooler"]
    assert (train["epochs"], train["distill_temperature"], train["distill_alpha"]) == (8, 2.0, 0.5)


def test_the_teacher_is_unchanged(bench, tmp_path: Path) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text(bench.recipe_text(_args("whole-8px"), 7))
    recipe = load_recipe(path)
    assert [(m.name, m.model) for m in recipe.models] == [
        ("V", "visualbert-tiny"),
        ("U", "uniter-tiny"),
        ("O", "oscar-tiny"),
    ]
    teacher_train = {
        "lr": 1.5e-3, "epochs": 6, "batch_size": 16, "sum_loss": False, "clip": 1.0, "swa": "none",
        "eval_every": 0,
    }  # fmt: skip
    assert all(m.train == teacher_train for m in recipe.models)
