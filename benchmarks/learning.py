"""Learning proof: tiny models learn the synthetic set's image-XOR-text rule; the text-only control cannot.

Generates the synthetic set, extracts grid features, then fine-tunes each tiny model twice with the same
trainer and ``TINY_DEFAULTS``: once with the image input, once with it zeroed (the baseline, same run).
Prints dev_seen AUROC / accuracy / wall time and checks the targets of issue 5:
multimodal AUROC >= 0.95 within 3 minutes on 2 CPU cores, text-only <= 0.60.

The set is generated with ``--label-noise 0`` by default: the same memes and pictures as the usual set, but
every noun follows the rule. With the usual 3 % of rule-breaking memes, a model that applies the rule with
full confidence scores 0.951 on the default dev split (2 rule-breaking memes of 82, each ranked below the 41
of the other class), so the 0.95 target would measure the noise as much as the model. ``--label-noise 0.03``
runs the usual set (measured 2026-11-27: visualbert-tiny 0.973, lxmert-tiny 0.974).

What ``TINY_DEFAULTS`` (memeguard/training/config.py) holds and why, as measured with this benchmark and
tests/training/test_training_learning.py: the hidden-64 ``*-tiny`` models learn the image-XOR-text rule in a
few CPU minutes with a 150x larger lr than vilio's 1e-5, more epochs, the mean loss, no SWA, and a larger init
std than BERT's 0.02 (at 0.02 a 64-d model starts with near-uniform attention and escapes the XOR saddle far
later); the wider init and no dropout shorten the plateau of a model trained from scratch to ~600 updates.
lr 1.5e-3 rather than 2e-3: on the noise-free synthetic set (n=2000) lxmert-tiny then finds the rule with 8 of
8 seeds (2e-3: 5 of 6), visualbert-tiny with 4 of 4.

``--recipe`` trains each model of a recipe with its own settings and seeds instead, and prints the update at
which dev AUROC first reached 0.9 (the rule found; the plateau sits near 0.5) and the updates run.

The demo's plateau (issue 14), measured 2026-12-02 on the demo's own data (``memeguard demo``: n=3000, seed 0,
train_clean -> dev_seen, evaluated every 33 updates, 1 thread; 6 epochs = 798 updates; the demo recipe's
width-128 models, lr 1.5e-3, init std 0.1). First update with dev AUROC >= 0.9 ("-": not by the update shown):

    setting                                        V43       U43        O43
    demo before (lr 1.5e-3, patience 3)            495       - (798)    - (798)
    lr 3e-3, warmup 5 %                                      - (462)
    lr 5e-3, warmup 2 %, frozen word embedding               - (798)
    init std 0.2, frozen word embedding                      - (495)
    head lr x5, frozen word embedding                        - (660)
    batch 32, lr 3e-3, warmup 5 %, frozen emb.               - (255 = 510 at batch 16)
    8 attention heads, frozen word embedding                 - (429)
    grid levels (2, 1): 5 regions, -40 % CPU/run   - (726)   - (798)    - (798)     U44 - (759; was ~500)
    frozen word embedding alone                    - (561)                          (0.59 at 495: slower)
    embeddings + head at 3x lr                     363       561        528
    the same, seed 45 (the demo's settings)        V45 330   U45 - (gave up at 627)   O45 627

"embeddings + head at 3x lr" is ``head_lr_mult: 3, backbone_keywords: [encoder, pooler]``: the word-piece,
position and region embeddings and the classifier learn at 4.5e-3, the transformer layers at 1.5e-3. The
frozen-embedding rows show why it works: the noun's embedding rows have to move for a model to leave the
plateau (frozen, V43 is at 0.59 where it is at 0.92 unfrozen), and a faster embedding lr moves them sooner.
The demo recipe uses it, with patience 2 and ``early_stop_give_up_after: 627``. The whole demo with it
(2026-12-02, shared machine at load 8-19): rule found at V43 363, V44 330, U43 561, U44 495, O43 528, O44 gave
up at 627; 7062 updates over the 12 runs; 445 s CPU (user+sys; 515 s before); ENSEMBLE AUROC dev_seen 0.976,
test_seen 0.972, test_unseen 0.968.

The traindev runs (issue 14, 2026-12-02): each from-scratch traindev run (vilio's run b) walked the plateau
again for as many updates as its train run took (half the demo's training time), and 2 of 6 never left it.
``traindev_init: train`` starts it from its train run's final weights instead. test_unseen AUROC of each
traindev run, all from the train runs of one demo run (test_seen tells the same story; O44's train run gave
up on its plateau at dev AUROC 0.52):

    traindev run                                   updates   V43    V44    U43    U44    O43    O44
    from scratch, as long as its train run (before) 462-726  0.968  0.964  0.517  0.963  0.603  0.967
    none (the train run's weights predict)            0      0.976  0.972  0.970  0.966  0.970  0.525
    warm, 1 epoch, lr 1.5e-3                         140     0.972         0.965         0.969  0.845
    warm, 1 epoch, lr 1.5e-3, no warmup              140     0.970  0.964  0.972  0.967  0.964  0.504
    warm, 1 epoch, lr 1e-3                           140     0.969  0.970  0.969  0.969  0.965  0.934
    warm, 1 epoch, lr 5e-4 (the demo)                140     0.968  0.966  0.971  0.965  0.966  0.963
    warm, 1 epoch, lr 3e-4                           140     0.969  0.966  0.974  0.962  0.965  0.762
    warm, half an epoch, lr 1.5e-3                    70     0.973  0.966  0.839  0.942  0.966  0.583
    warm, half an epoch, lr 5e-4                      70     0.970  0.967  0.972  0.966  0.967  0.717

A run whose train run found the rule keeps it at any lr for a whole epoch (half an epoch at 1.5e-3 leaves it
mid-disruption: U43); 1 epoch at 5e-4 also took O44 off its plateau (a lottery: 3e-4 and 1e-3 did less). The
demo with it (``traindev_init: train, traindev_lr: 5e-4``; the train runs unchanged), ``memeguard demo`` on
the shared 2-core machine, 2026-12-02 12:39-12:50: 137 s by its clock (load 3.7 at the start; 217 s CPU,
user+sys) and 186 s (load 7.5; 233 s CPU); main in between, 257 s (load 4.7 rising to 7.5; 332 s CPU). Each
traindev run takes 140 updates, about 5 s (were 3531 over the six, 14-45 s each); family test_unseen AUROC
V 0.967, U 0.966, O 0.965 (before 0.968, 0.966, 0.960), ENSEMBLE dev_seen 0.976, test_seen 0.977,
test_unseen 0.967 (before 0.976, 0.972, 0.968). Tried with it and not kept: early_stop_patience 1 (the
train runs stop one evaluation sooner: 3201 updates instead of 3531, about 15 s CPU less) gave ENSEMBLE
0.981, 0.968, 0.972, but stopped U43's train run at dev AUROC 0.905, just after it found the rule: too close
a call.

The same comparison on another 2-core machine (Intel Xeon, family 6 model 207), idle, 2026-12-02 13:05-13:46:
the demo before traindev_init (d21e8ee) 333 s by its clock (573 s user), with it 233 s (412 s user, 22 s
sys; twice, the same AUROCs each time): ENSEMBLE dev_seen 0.975 / 0.975, test_seen 0.971 / 0.976,
test_unseen 0.966 / 0.969. Every CPU stage there costs about twice as much (the test suite 482 s against
265 s), so the 3-minute goal holds on the EPYC and not there. Where the 233 s go: synthesis 27 s, check 5 s,
clean 11.5 s, grid features 46 s, the 12 runs 127-131 s per worker (the 6 train runs 31-40 s each, the 6
traindev runs 7-9 s), seed averaging, ensemble and report ~15 s. In one train update (64 ms, 1 thread,
torch.profiler) about a quarter goes to the 30522-row word embedding: its dense gradient's zero fill,
its AdamW update and its share of the clipping norm, though the synthetic captions (every split) use 165
of its rows.

    .venv/bin/python benchmarks/learning.py --work /tmp/learning [--n 2000]
        [--models visualbert-tiny lxmert-tiny] [--train-seeds 0 1 2 3] [--label-noise 0.03]
    .venv/bin/python benchmarks/learning.py --recipe src/memeguard/pipeline/recipes/demo.yaml --n 3000 \
        --label-noise 0.03 --no-control
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

from memeguard.names import METRICS_FILE

TARGET_AUROC = 0.95
CONTROL_MAX = 0.60
TIME_BUDGET_S = 180.0
# The plateau of a from-scratch model sits near 0.5; a dev AUROC of 0.9 means it has found the rule.
RULE_FOUND_AUROC = 0.9


def prepare(
    work: Path, n: int, seed: int, label_noise: float, tinted_light: bool = True
) -> tuple[Path, Path]:
    """The synthetic set (regenerated when its label noise or light differs) and its grid features;
    ``tinted_light=False``: only the salient object carries the colour family (``benchmarks/explain.py``)."""
    from memeguard.data.synth import generate_synthetic
    from memeguard.features.extract import extract_features
    from memeguard.features.grid import GridExtractor
    from memeguard.names import SYNTH_META_FILE

    data, features = work / "data", work / "grid"
    meta = data / SYNTH_META_FILE
    recorded = json.loads(meta.read_text()) if meta.is_file() else {}
    wanted = (label_noise, tinted_light)
    if not recorded or (recorded.get("label_noise"), recorded.get("tinted_light", True)) != wanted:
        generate_synthetic(
            data, n=n, seed=seed, progress=False, label_noise=label_noise, tinted_light=tinted_light
        )
        shutil.rmtree(features, ignore_errors=True)  # the store resumes by meme id: new pixels, same ids
    paths = extract_features(data, features, GridExtractor(), progress=False, dtype="float32")
    return data, next(iter(paths.values()))


def planned_runs(args: argparse.Namespace) -> list[tuple[str, int, dict[str, Any]]]:
    """(model, seed, TrainConfig settings) per run: ``--models`` x seeds with ``TINY_DEFAULTS``, or each
    model of ``--recipe`` with its own settings and seeds."""
    from memeguard.training import TINY_DEFAULTS

    if args.recipe is None:
        seeds = args.train_seeds or [args.seed]
        return [(model, seed, dict(TINY_DEFAULTS)) for model in args.models for seed in seeds]
    from memeguard.pipeline.recipe import load_recipe
    from memeguard.pipeline.stages import run_settings

    runs = []
    for spec in load_recipe(args.recipe).models:  # the train runs (the traindev_* keys are the pipeline's)
        settings = {**run_settings(spec.train), "model_overrides": dict(spec.overrides)}
        seeds = args.train_seeds or [run.seed for run in spec.runs or []]
        runs += [(spec.model, seed, settings) for seed in seeds]
    return runs


def rule_found_at(run_dir: Path) -> tuple[int | None, int]:
    """The first evaluated update with dev AUROC >= RULE_FOUND_AUROC (None: never) and the updates run."""
    records = [json.loads(line) for line in (run_dir / METRICS_FILE).read_text().splitlines()]
    found = next((r["update"] for r in records if r.get("auroc", 0.0) >= RULE_FOUND_AUROC), None)
    return found, max((r["update"] for r in records), default=0)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/memeguard-learning"))
    parser.add_argument("--n", type=int, default=2000, help="synthetic memes (train is 70%%)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--label-noise",
        type=float,
        default=0.0,
        help="synthetic label noise (default 0; the usual set has 0.03, see above)",
    )
    parser.add_argument(
        "--train-seeds",
        type=int,
        nargs="+",
        help="training seeds, one run pair each (default: --seed); every seed must pass",
    )
    parser.add_argument("--models", nargs="+", default=["visualbert-tiny", "lxmert-tiny"])
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 is fastest for tiny models on shared cores)"
    )
    parser.add_argument("--train-split", default="train")
    parser.add_argument(
        "--recipe",
        type=Path,
        help="train each model of this recipe (its model, overrides and train settings) instead of "
        "--models with TINY_DEFAULTS, e.g. src/memeguard/pipeline/recipes/demo.yaml; its models' seeds "
        "unless --train-seeds",
    )
    parser.add_argument("--no-control", action="store_true", help="skip the text-only runs")
    args = parser.parse_args()

    import torch

    from memeguard.training import TINY_DEFAULTS, TrainConfig, finetune

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    data, store = prepare(args.work, args.n, args.seed, args.label_noise)
    print(f"data + grid features: {time.perf_counter() - t0:.1f} s ({store})")
    rows, curves = [], []
    for model, seed, settings in planned_runs(args):
        for zero_visual in (False,) if args.no_control else (False, True):
            out = args.work / "runs" / f"{model}{'-textonly' if zero_visual else ''}-seed{seed}"
            shutil.rmtree(out, ignore_errors=True)
            cfg = TrainConfig(
                model=model,
                features=store,
                data_dir=data,
                out_dir=out,
                train_split=args.train_split,
                predict_splits=("dev_seen",),
                eval_split="dev_seen",
                seed=seed,
                device="cpu",
                progress=False,
                zero_visual=zero_visual,
                **settings,
            )
            start = time.perf_counter()
            result = finetune(cfg)
            seconds = time.perf_counter() - start
            found, updates = rule_found_at(out)
            kind = "text only" if zero_visual else "image+text"
            rows.append((model, seed, kind, result.metrics["auroc"], result.metrics["accuracy"], seconds))
            curves.append((model, seed, kind, found, updates))
    print()
    print(f"{'model':<18}{'seed':>5}  {'input':<12}{'dev AUROC':>10}{'dev acc':>9}{'time s':>8}  target")
    ok = True
    for model, seed, kind, auroc, acc, seconds in rows:
        if kind == "text only":
            passed, target = auroc <= CONTROL_MAX, f"<= {CONTROL_MAX}"
        else:
            passed = auroc >= TARGET_AUROC and seconds <= TIME_BUDGET_S
            target = f">= {TARGET_AUROC} in {TIME_BUDGET_S:.0f} s"
        ok &= passed
        print(
            f"{model:<18}{seed:>5}  {kind:<12}{auroc:>10.4f}{acc:>9.4f}{seconds:>8.1f}  {target} "
            f"{'ok' if passed else 'FAIL'}"
        )
    print(f"\n{'model':<18}{'seed':>5}  {'input':<12}{'rule found at update':>21}{'updates':>9}")
    for model, seed, kind, found, updates in curves:
        shown = "-" if found is None else str(found)
        print(f"{model:<18}{seed:>5}  {kind:<12}{shown:>21}{updates:>9}")
    for model in sorted({row[0] for row in rows}):
        hits = sum(
            1
            for m, _, kind, auroc, _, _ in rows
            if m == model and kind == "image+text" and auroc >= TARGET_AUROC
        )
        seeds = sum(1 for m, _, kind, *_ in rows if m == model and kind == "image+text")
        print(f"{model}: image+text reached {TARGET_AUROC} with {hits} of {seeds} training seeds")
    shown = args.recipe if args.recipe else f"TINY_DEFAULTS = {TINY_DEFAULTS}"
    print(f"\nsettings: {shown}, torch threads {args.threads}")
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
