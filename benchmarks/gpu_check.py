"""What only a CUDA device shows: mixed-precision paths and GPU speed. Never part of the test suite.

Four tables, each with its baseline timed in the same run on the same device:

1. forward: every ``*-base`` model (random weights) on a batch of memes with 50 regions, fp32 vs bf16 vs fp16
   autocast: memes/s and the largest |P(hateful) - P_fp32| (the half-precision paths must agree with fp32);
2. fine-tune: ``visualbert-tiny`` / ``lxmert-tiny`` on the synthetic set's grid features with
   ``TINY_DEFAULTS`` in fp32, bf16 and fp16 (GradScaler): dev AUROC, whether every logged loss is finite,
   seconds;
3. pretrain: one epoch of MLM + ITM in each precision: final loss finite;
4. BUTD: the full-size ResNet-101 C4 detector (random weights) on 600 px images: fp32, fp16, and fp16 with
   the batched path (preprocessing on the device, one NMS per batch; goal >= 100 images/s on an H200);
5. end to end (``--end-to-end``), the figure vilio measured in hours (~5 h on a P100): N synthetic memes
   through BUTD extraction (vgattr 36/50/72 and 100 boxes, the stand-in for the MMF LMDB features, from one
   pass; vg 50 from the detector without attributes), the 19 runs of ``recipes/vilio_inference.yaml`` at
   their real sizes with random weights (each predicts dev_seen, test_seen and test_unseen; one model
   stands for a run's two checkpoints), seed averaging and the ensemble loop, in the chosen precision.
   Goal: <= 5 minutes for 2,000 memes on one H200. ``--tiny`` runs the same code on the CPU in seconds
   (tiny detector, ``*-tiny`` models): a check of the script, not a figure.

    python benchmarks/gpu_check.py --data DIR --features STORE [--skip-butd] [--out report.json]
    python benchmarks/gpu_check.py --end-to-end --memes 2000 --precision fp16 [--out report.json]
    python benchmarks/gpu_check.py --end-to-end --tiny --device cpu --precision bf16

``--data``/``--features``: a synthetic set and its grid store (``memeguard data synth`` + ``memeguard features
extract --extractor grid``); without them the check makes a small set itself.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from learning import prepare  # noqa: E402
from model_forward import median_seconds, synthetic_inputs, tokenizer_for  # noqa: E402

PRECISIONS = ("fp32", "bf16", "fp16")


def timed(fn, warmup: int, repeats: int) -> float:
    """Median seconds of ``repeats`` calls, each waiting for the GPU (model_forward's timer plus a sync)."""

    def call_and_sync() -> None:
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    return statistics.median(median_seconds(call_and_sync, warmup, repeats))


def precisions_for(device: torch.device) -> tuple[str, ...]:
    """fp16 autocast needs CUDA; the CPU rows (a dry run of the script) skip it."""
    return PRECISIONS if device.type == "cuda" else tuple(p for p in PRECISIONS if p != "fp16")


def forward_table(device: torch.device, batch_size: int, boxes: int, names: list[str]) -> list[dict]:
    from memeguard.models import create_model, list_models
    from memeguard.training.data import to_device
    from memeguard.training.runlog import autocast

    names = names or [n for n in list_models() if n.endswith("-base")]
    rows = []
    print(f"\n## forward: batch {batch_size}, {boxes} boxes, random weights, inference_mode")
    print(f"{'model':<18}{'precision':>10}{'ms/batch':>10}{'memes/s':>10}{'x fp32':>8}{'max |dP|':>10}")
    for name in names:
        torch.manual_seed(0)
        model = create_model(name).to(device).eval()
        memes, regions = synthetic_inputs(batch_size, boxes, model.config.visual_feat_dim)
        batch = to_device(model.build_processor(tokenizer_for(model.config))(memes, regions), device)
        reference = None
        base_seconds = None
        for precision in precisions_for(device):

            def run(precision=precision, model=model, batch=batch):
                with torch.inference_mode(), autocast(device, precision):
                    return model(batch)

            proba = torch.sigmoid(run().float()).cpu()
            seconds = timed(run, warmup=2, repeats=10)
            if reference is None:
                reference, base_seconds = proba, seconds
            diff = float((proba - reference).abs().max())
            row = {
                "model": name,
                "precision": precision,
                "ms": seconds * 1e3,
                "memes_per_s": batch_size / seconds,
                "speedup": base_seconds / seconds,
                "max_abs_dprob": diff,
                "finite": bool(torch.isfinite(proba).all()),
            }
            rows.append(row)
            print(
                f"{name:<18}{precision:>10}{row['ms']:>10.1f}{row['memes_per_s']:>10.0f}{row['speedup']:>8.2f}"
                f"{diff:>10.1e}",
                flush=True,
            )
        del model, batch
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def run_options(
    model: str, features: Path, data: Path, out: Path, device: torch.device, precision: str
) -> dict[str, Any]:
    """The options the fine-tune and pre-train configs share here: one model on one device at one
    precision, writing to ``out``, without progress bars (the tables print one line a run)."""
    return {
        "model": model,
        "features": features,
        "data_dir": data,
        "out_dir": out,
        "device": str(device),
        "precision": precision,
        "progress": False,
    }


def run_timed(run: Callable[[Any], Any], config: Any) -> tuple[Any, float]:
    """``run(config)``'s result and the wall-clock seconds it took."""
    start = time.perf_counter()
    result = run(config)
    return result, time.perf_counter() - start


def finetune_table(
    device: torch.device, data: Path, features: Path, work: Path, models: list[str], epochs: int
) -> list[dict]:
    from memeguard.training import TINY_DEFAULTS, TrainConfig, finetune

    rows = []
    print(f"\n## fine-tune on {device}: TINY_DEFAULTS, {epochs} epochs, train -> dev_seen")
    print(f"{'model':<18}{'precision':>10}{'dev AUROC':>10}{'losses finite':>15}{'seconds':>9}")
    for model in models:
        for precision in precisions_for(device):
            out = work / f"ft-{model}-{precision}"
            settings = {**TINY_DEFAULTS, "epochs": epochs, "eval_every": 200}
            cfg = TrainConfig(
                **run_options(model, features, data, out, device, precision),
                train_split="train",
                predict_splits=("dev_seen",),
                seed=0,
                **settings,
            )
            result, seconds = run_timed(finetune, cfg)
            losses = [
                json.loads(line).get("train_loss")
                for line in (out / "metrics.jsonl").read_text().splitlines()
            ]
            finite = all(math.isfinite(x) for x in losses if x is not None)
            row = {
                "model": model,
                "precision": precision,
                "auroc": result.metrics["auroc"],
                "finite": finite,
                "seconds": seconds,
            }
            rows.append(row)
            print(
                f"{model:<18}{precision:>10}{row['auroc']:>10.4f}{str(finite):>15}{seconds:>9.1f}", flush=True
            )
    return rows


def pretrain_table(device: torch.device, data: Path, features: Path, work: Path, model: str) -> list[dict]:
    from memeguard.training import PretrainConfig, pretrain

    rows = []
    print(f"\n## pretrain on {device}: {model}, MLM + ITM, 1 epoch on train")
    print(f"{'precision':>10}{'final loss':>12}{'seconds':>9}")
    for precision in precisions_for(device):
        out = work / f"pt-{model}-{precision}"
        cfg = PretrainConfig(
            **run_options(model, features, data, out, device, precision), split="train", epochs=1, lr=1e-4
        )
        run_dir, seconds = run_timed(pretrain, cfg)
        last = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()[-1]
        loss = float(json.loads(last).get("loss", float("nan")))
        rows.append(
            {
                "model": model,
                "precision": precision,
                "loss": loss,
                "finite": math.isfinite(loss),
                "seconds": seconds,
            }
        )
        print(f"{precision:>10}{loss:>12.4f}{seconds:>9.1f}", flush=True)
    return rows


def butd_table(image_size: int, n_images: int, batch_size: int) -> list[dict]:
    from PIL import Image

    from memeguard.features.butd import ButdExtractor

    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8))
        for _ in range(n_images)
    ]
    rows = []
    print(
        f"\n## BUTD ResNet-101 C4, random weights, {n_images} images of {image_size} px, batch {batch_size}, "
        "variants 36/50/72/100 from one pass"
    )
    print(f"{'precision':>10}{'path':>10}{'images/s':>10}{'x fp32':>8}")
    base = None
    for fp16, batched in ((False, False), (True, False), (True, True)):
        extractor = ButdExtractor(
            weights=None,
            box_variants=("36", "50", "72", "100"),
            device="cuda",
            fp16=fp16,
            batch_size=batch_size,
            batched=batched,
        )
        extractor.extract(images[:batch_size], list(range(batch_size)), [""] * batch_size)  # warm-up
        seconds = timed(lambda e=extractor: e.extract(images, list(range(n_images)), [""] * n_images), 0, 1)
        rate = n_images / seconds
        base = base or rate
        path = "batched" if batched else "per-image"
        precision = "fp16" if fp16 else "fp32"
        rows.append({"precision": precision, "path": path, "images_per_s": rate, "speedup": rate / base})
        print(f"{precision:>10}{path:>10}{rate:>10.2f}{rate / base:>8.2f}", flush=True)
        del extractor
        torch.cuda.empty_cache()
    return rows


# The tiny detector of tests/features/test_butd.py: the same code paths in seconds on a CPU.
TINY_BUTD = dict(
    stage_blocks=(1, 1, 2, 1),
    stem_channels=8,
    bottleneck_channels=8,
    res2_channels=32,
    rpn_hidden_channels=16,
    num_classes=20,
    num_attrs=6,
    min_size=96,
    max_size=160,
    rpn_pre_nms_topk=1000,
    rpn_post_nms_topk=100,  # the largest variant's count: fewer RoIs through res5 on the CPU
)
# vilio_inference.yaml's feature sets -> the box variant each reads; "mmf" (an LMDB import of MMF's
# detectron features, 100 boxes) is stood in for by the attribute detector's 100-box variant.
ATTR_VARIANTS = {"vgattr36": "36", "vgattr50": "50", "vgattr72": "72", "mmf": "100"}
PLAIN_VARIANTS = {"vg50": "50"}


def vilio_runs(tiny: bool) -> list[tuple[str, str, str]]:
    """(family, model, feature set) of every enabled run of recipes/vilio_inference.yaml (read as YAML:
    its weight paths need not exist here); ``tiny``: each model's ``*-tiny`` variant."""
    import yaml

    from memeguard.pipeline.cli import RECIPES_DIR

    recipe = yaml.safe_load((RECIPES_DIR / "vilio_inference.yaml").read_text(encoding="utf-8"))
    runs = []
    for entry in recipe["models"]:
        if entry.get("enabled", True) is False:
            continue
        model = entry["model"].rsplit("-", 1)[0] + "-tiny" if tiny else entry["model"]
        runs += [(entry["name"], model, run["features"]) for run in entry["runs"]]
    return runs


def extract_butd(data: Path, work: Path, device: str, precision: str, tiny: bool) -> dict[str, Path]:
    """Both detectors over every meme (batched path): feature set name -> its store."""
    from memeguard.features.butd import ButdExtractor
    from memeguard.features.butd_model import ButdConfig
    from memeguard.features.extract import extract_features

    stores: dict[str, Path] = {}
    for name, variants, attrs in (("vgattr", ATTR_VARIANTS, True), ("vg", PLAIN_VARIANTS, False)):
        config = (
            ButdConfig(**{**TINY_BUTD, "num_attrs": TINY_BUTD["num_attrs"] if attrs else 0}) if tiny else None
        )
        if not tiny and not attrs:
            config = ButdConfig(num_attrs=0)
        extractor = ButdExtractor(
            weights=None,
            box_variants=sorted(set(variants.values()), key=int),
            device=device,
            fp16=precision == "fp16",
            batch_size=8,
            config=config,
            batched=True,
        )
        paths = extract_features(data, work / name, extractor, progress=False)
        stores.update({feature_set: paths[variant] for feature_set, variant in variants.items()})
    return stores


def predict_runs(
    runs: list[tuple[str, str, str]],
    stores: dict[str, Path],
    data: Path,
    work: Path,
    device: torch.device,
    precision: str,
) -> dict[str, dict[str, dict[str, Path]]]:
    """Every run's three prediction CSVs, random weights: family -> run -> split -> csv."""
    from memeguard.data.predictions import write_predictions
    from memeguard.features.store import FeatureStore
    from memeguard.names import PREDICTED_SPLITS, prediction_file
    from memeguard.training.build import build_model
    from memeguard.training.data import Collator, read_memes
    from memeguard.training.loop import predict_memes

    out: dict[str, dict[str, dict[str, Path]]] = {}
    for number, (family, model_name, feature_set) in enumerate(runs):
        store = FeatureStore.open(stores[feature_set])
        torch.manual_seed(number)
        model = build_model(model_name, feature_dim=store.feature_dim).to(device).eval()
        collate = Collator(model.build_processor())
        run_dir = work / "runs" / f"{family}{number}"
        run_dir.mkdir(parents=True, exist_ok=True)
        files = {}
        for split in PREDICTED_SPLITS:
            memes = read_memes(data, split)
            ids, proba = predict_memes(
                model, collate, memes, store, batch_size=64, device=device, precision=precision
            )
            files[split] = run_dir / prediction_file(split)
            write_predictions(files[split], ids, proba)
        out.setdefault(family, {})[f"{family}{number}"] = files
        del model
    return out


def end_to_end_table(device: torch.device, memes: int, precision: str, tiny: bool, work: Path) -> list[dict]:
    """N memes through extraction, the 19 inference runs and the ensemble; seconds per part."""
    from memeguard.data.synth import generate_synthetic
    from memeguard.pipeline.recipe import EnsembleSpec
    from memeguard.pipeline.stages import average_seeds, run_ensemble

    data = work / "e2e-data"
    if not (data / "test_unseen.jsonl").is_file():
        generate_synthetic(data, n=memes, seed=0, progress=False)
    runs = vilio_runs(tiny)
    print(
        f"\n## end to end on {device}, {precision}: {memes} memes, {len(runs)} runs of vilio_inference.yaml"
        f"{' (tiny sizes: a check of the script, not a figure)' if tiny else ''}"
    )
    seconds: dict[str, float] = {}

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    start = time.perf_counter()
    stores = extract_butd(data, work / "e2e-features", str(device), precision, tiny)
    sync()
    seconds["BUTD extraction (2 detectors, 5 variants)"] = time.perf_counter() - start
    start = time.perf_counter()
    predictions = predict_runs(runs, stores, data, work / "e2e", device, precision)
    sync()
    seconds[f"{len(runs)} runs x 3 splits"] = time.perf_counter() - start
    start = time.perf_counter()
    families = average_seeds(predictions, work / "e2e" / "predictions")
    fin = run_ensemble(work / "e2e" / "predictions", data, work / "e2e", EnsembleSpec(method="loop"))
    seconds["seed averaging + ensemble loop"] = time.perf_counter() - start
    seconds["total"] = sum(seconds.values())
    assert set(families) == {family for family, _, _ in runs} and fin, "the ensemble wrote no FIN files"
    print(f"{'part':<45}{'seconds':>9}")
    for part, value in seconds.items():
        print(f"{part:<45}{value:>9.1f}")
    budget = 300.0
    if not tiny:
        print(f"goal: total <= {budget:.0f} s for 2,000 memes on one H200 (vilio: ~5 h on a P100)")
    return [
        {"part": part, "seconds": value, "memes": memes, "precision": precision, "tiny": tiny}
        for part, value in seconds.items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path)
    parser.add_argument("--features", type=Path)
    parser.add_argument("--work", type=Path)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--boxes", type=int, default=50)
    parser.add_argument(
        "--names", default="", help="comma-separated models for the forward table (default *-base)"
    )
    parser.add_argument("--train-models", default="visualbert-tiny,lxmert-tiny")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--skip-butd", action="store_true")
    parser.add_argument("--butd-images", type=int, default=32)
    parser.add_argument("--out", type=Path, help="write every row as JSON here")
    parser.add_argument("--device", default="cuda", help="cpu only to try the script itself")
    parser.add_argument("--end-to-end", action="store_true", help="only the end-to-end table (5.)")
    parser.add_argument("--memes", type=int, default=2000, help="memes in the end-to-end table")
    parser.add_argument("--precision", default="fp16", choices=PRECISIONS, help="end-to-end precision")
    parser.add_argument("--tiny", action="store_true", help="end to end at tiny sizes (CPU, seconds)")
    args = parser.parse_args()
    if args.tiny and not args.end_to_end:
        parser.error("--tiny goes with --end-to-end")
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("gpu_check: no CUDA device")
        torch.backends.cuda.matmul.allow_tf32 = False  # true fp32 rows: the reference for the others
        print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, CUDA {torch.version.cuda}")

    work = args.work or Path(tempfile.mkdtemp(prefix="gpu-check-"))
    report: dict[str, list[dict]] = {}
    if args.end_to_end:
        memes = min(args.memes, 50) if args.tiny else args.memes  # synth makes at least 50
        report["end_to_end"] = end_to_end_table(device, memes, args.precision, args.tiny, work)
        if args.out:
            args.out.write_text(json.dumps(report, indent=1))
        return
    report["forward"] = forward_table(
        device, args.batch_size, args.boxes, [n for n in args.names.split(",") if n]
    )
    data, features = (args.data, args.features) if args.data else prepare(work, 1000, 0, 0.0)
    train_models = [m for m in args.train_models.split(",") if m]
    report["finetune"] = finetune_table(device, data, features, work, train_models, args.epochs)
    report["pretrain"] = pretrain_table(device, data, features, work, train_models[0])
    if not args.skip_butd and device.type == "cuda":
        report["butd"] = butd_table(600, args.butd_images, 8)
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
