"""Seconds the report gallery's explanations add to a pipeline run (``memeguard.pipeline.explain``).

Given a finished run (``memeguard demo --out OUT``, or ``memeguard run RECIPE --data DATA --out OUT``), the
runner is rebuilt from the recipe (its stages are all cached, nothing trains) and ``report.html`` is
written into a scratch folder: without explanations (the baseline, measured in the same run), then with
them for each ``--steps`` value, with every run behind the ensemble and with one run per family. A
warm-up report with explanations comes first, so every row finds imports and the file cache warm (the
first explainer of a fresh process also pays captum's import and loading each member's tokenizer: a few
CPU seconds more, measured apart). Each row gives wall and CPU seconds (CPU seconds of this process: on
idle cores the wall time is at most this) and what the explanations add to the baseline.

    .venv/bin/python benchmarks/gallery_explain.py --out memeguard_demo \\
        [--recipe src/memeguard/pipeline/recipes/demo.yaml] [--data OUT/synthetic] [--steps 8 16 32] \\
        [--threads 1]

Measured 2026-12-02 on ``memeguard demo --n 600`` (6 runs of 3 tiny families, 10 gallery memes), 2 CPU
cores shared with other jobs (load ~20), ``--threads 1``:

    report                               wall s    cpu s  added wall  added cpu
    no explanations (baseline)              3.5      1.7
    16 steps, every run (6)                 9.9      4.9         6.4        3.2
    16 steps, one run per family (3)        6.2      3.1         2.7        1.4
    8 steps, every run (6)                  7.4      3.7         3.9        2.1

A fresh process's first explained meme also loads captum and the six tokenizers: 3.8 CPU s for that meme
against 0.24 for each next one (16 steps, six models). So the default (16 steps, every run) adds about
3 + 3.5 = 7 CPU seconds to the demo, under the 10 s budget on 2 idle cores; the 2-thread rows of a busy
machine are not comparable (OpenMP threads spin while they wait for a core).
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
    parser.add_argument(
        "--threads", type=int, help="torch threads (1 keeps CPU seconds honest on busy cores)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
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
        _timed(runner, args.out, Path(tmp) / "warm-up", everyone)  # imports, tokenizers, file cache
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
