"""Seconds the report gallery's explanations add to a pipeline run (``memeguard.pipeline.explain``).

Given a finished run (``memeguard demo --out OUT``, or ``memeguard run RECIPE --data DATA --out OUT``), the
runner is rebuilt from the recipe (its stages are all cached, nothing trains) and ``report.html`` is
written into a scratch folder: without explanations (the baseline, measured in the same run), then with
them for each ``--steps`` value, with every run behind the ensemble and with one run per family. Each row
gives wall and CPU seconds (CPU seconds of this process: on idle cores the wall time is at most this, and
about this divided by the threads used) and what the explanations add to the baseline.

    .venv/bin/python benchmarks/gallery_explain.py --out memeguard_demo \\
        [--recipe src/memeguard/pipeline/recipes/demo.yaml] [--data OUT/synthetic] [--steps 8 16 32]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch

from memeguard.names import (
    DEV_SEEN,
    ENSEMBLE_WEIGHTS_FILE,
    PREDICTED_SPLITS,
    PREDICTIONS_DIR,
    family_file,
    fin_file,
)
from memeguard.pipeline.explain import GalleryExplainer, ensemble_weights, member_weights
from memeguard.pipeline.recipe import load_recipe
from memeguard.pipeline.runner import RecipeRunner
from memeguard.pipeline.stages import write_run_report

DEMO_RECIPE = Path(__file__).resolve().parent.parent / "src/memeguard/pipeline/recipes/demo.yaml"


def _report(runner: RecipeRunner, out: Path, scratch: Path, explain: GalleryExplainer | None) -> None:
    scratch.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(out / ENSEMBLE_WEIGHTS_FILE, scratch / ENSEMBLE_WEIGHTS_FILE)
    families = {
        family: {
            split: out / PREDICTIONS_DIR / family_file(family, split)
            for split in PREDICTED_SPLITS
            if (out / PREDICTIONS_DIR / family_file(family, split)).is_file()
        }
        for family in runner.run_predictions
    }
    fins = {split: out / fin_file(split) for split in PREDICTED_SPLITS if (out / fin_file(split)).is_file()}
    write_run_report(
        scratch, families, fins, runner.clean_dir, {}, "benchmark", runner.run_predictions, explain
    )


def _timed(
    runner: RecipeRunner, out: Path, scratch: Path, explain: GalleryExplainer | None
) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    _report(runner, out, scratch, explain)
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="a finished run's output folder")
    parser.add_argument("--recipe", type=Path, default=DEMO_RECIPE)
    parser.add_argument("--data", type=Path, help="the run's dataset (default: OUT/synthetic, the demo's)")
    parser.add_argument("--steps", type=int, nargs="+", default=[8, 16, 32])
    args = parser.parse_args()
    runner = RecipeRunner(load_recipe(args.recipe), args.data or args.out / "synthetic", args.out)
    runner.build()
    if not all(stage.done for stage in runner.stages):
        raise SystemExit(f"{args.out}: the run is not finished (run it first)")
    everyone = runner.gallery_explainer()
    assert everyone is not None
    members = everyone.members
    first_seed = [m for k, m in enumerate(members) if all(o.family != m.family for o in members[:k])]
    weights = ensemble_weights(args.out)
    print(f"{len(members)} runs behind dev_seen, {torch.get_num_threads()} torch threads")
    with tempfile.TemporaryDirectory() as tmp:
        base_wall, base_cpu = _timed(runner, args.out, Path(tmp) / "base", None)
        print(f"{'report':<34}{'wall s':>9}{'cpu s':>9}{'added wall':>12}{'added cpu':>11}")
        print(f"{'no explanations (baseline)':<34}{base_wall:9.1f}{base_cpu:9.1f}{'':>12}{'':>11}")
        for steps in args.steps:
            for label, chosen in (("every run", members), ("one run per family", first_seed)):
                explainer = GalleryExplainer(
                    chosen, member_weights(chosen, weights), runner.clean_dir, steps=steps
                )
                wall, cpu = _timed(runner, args.out, Path(tmp) / f"{label}-{steps}", explainer)
                name = f"{steps} steps, {label} ({len(chosen)})"
                print(f"{name:<34}{wall:9.1f}{cpu:9.1f}{wall - base_wall:12.1f}{cpu - base_cpu:11.1f}")
    print(f"(the gallery's {DEV_SEEN} memes x models x steps forward + backward passes)")


if __name__ == "__main__":
    main()
