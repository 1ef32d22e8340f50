"""What each pipeline stage does: thin adapters from recipe entries to the stage packages' APIs.

Kept apart from the runner so that the stage graph (runner) and the work (here) can be read and tested
separately; nothing here knows about caching.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memeguard.data.hm import read_split, split_path
from memeguard.data.predictions import Predictions, read_predictions, write_predictions
from memeguard.errors import ConfigError
from memeguard.names import (
    DEV_SEEN,
    ENSEMBLE_WEIGHTS_FILE,
    MODEL_DIR,
    PREDICTED_SPLITS,
    family_file,
    fin_file,
    prediction_file,
)
from memeguard.pipeline.recipe import DistillSpec, EnsembleSpec, FeatureSetSpec, ModelSpec, RunSpec

if TYPE_CHECKING:  # pragma: no cover
    from memeguard.pipeline.report import Explainer


def show_progress() -> bool:
    """Progress bars, unless this stage runs in a parallel worker."""
    import os

    return os.environ.get("MEMEGUARD_NO_PROGRESS") != "1"


def prepare_data(data_dir: Path, out: Path, *, clean: bool) -> None:
    """vilio's cleaning into ``out`` (or the same derived splits without removals)."""
    from memeguard.data.cleaning import clean_dataset

    clean_dataset(data_dir, out, progress=True, remove_duplicates=clean)


def extract_store(
    spec: FeatureSetSpec, data_dir: Path, out: Path, *, variants: list[str] | None, device: str
) -> None:
    """Extract ``spec``'s store into ``out``; ``variants`` (several feature sets sharing one pass) puts one
    store per variant under ``out``."""
    from memeguard.features.extract import extract_features
    from memeguard.features.factory import make_extractor

    extractor = make_extractor(
        spec.extractor or "",
        weights=spec.weights,
        boxes=variants or spec.boxes,
        device=None if device == "auto" else device,
        **spec.params,
    )
    extract_features(data_dir, out, extractor, dtype=spec.dtype)


def import_store(spec: FeatureSetSpec, out: Path) -> None:
    if spec.import_tsv:
        from memeguard.features.tsv import import_tsv

        import_tsv(spec.import_tsv, out, dtype=spec.dtype, progress=True)
    elif spec.import_lmdb:
        from memeguard.features.lmdb_import import import_lmdb

        import_lmdb(spec.import_lmdb, out, dtype=spec.dtype, progress=True)
    # an existing store is used in place


def run_pretrain(
    model: ModelSpec, run: RunSpec, store: Path, data_dir: Path, out: Path, *, device: str, limit: int | None
) -> Path:
    from memeguard.training import PretrainConfig, pretrain

    cfg = PretrainConfig(
        model=model.model,
        features=str(store),
        data_dir=str(data_dir),
        out_dir=str(out),
        seed=run.seed,
        init=model.init,
        model_overrides=dict(model.overrides),
        device=device,
        limit=limit,
        progress=show_progress(),
        **(model.pretrain or {}),
    )
    return pretrain(cfg)


# What a traindev run that does not pick its length on dev_seen (it trains on it) sets: no early stop, no
# periodic evaluation (its final evaluation of dev_seen is only logged).
NO_EARLY_STOP = {
    "early_stop_patience": 0,
    "early_stop_give_up_after": None,
    "select_best": False,
    "eval_every": 0,
}


def traindev_start(train: Mapping[str, Any]) -> str:
    """Where a model's traindev run starts: ``scratch`` (vilio) or ``train`` (its train run's weights)."""
    from memeguard.training.config import TrainConfig

    return str(train.get("traindev_init", TrainConfig.model_fields["traindev_init"].default))


def run_settings(train: Mapping[str, Any]) -> dict[str, Any]:
    """A recipe model's ``train:`` settings without the ``traindev_*`` keys, which the pipeline reads."""
    from memeguard.training.config import TRAINDEV_KEYS

    return {key: value for key, value in train.items() if key not in TRAINDEV_KEYS}


def warm_traindev_settings(train: Mapping[str, Any]) -> dict[str, Any]:
    """A traindev run started from its train run's weights: ``traindev_epochs`` over traindev at
    ``traindev_lr`` (default: the train run's lr), the lr schedule spanning just those epochs (its warmup
    ramps the lr up again: the optimizer starts afresh), no early stop. Region features stay standardised
    with the train run's statistics, which its model config holds."""
    from memeguard.training.config import DEFAULT_TRAINDEV_EPOCHS, TrainConfig

    lr = train.get("traindev_lr") or train.get("lr", TrainConfig.model_fields["lr"].default)
    epochs = train.get("traindev_epochs") or DEFAULT_TRAINDEV_EPOCHS
    return {
        **NO_EARLY_STOP,
        "max_updates": None,
        "epochs": epochs,
        "lr": lr,
        "standardize_features": "never",
    }


def run_finetune(
    model: ModelSpec,
    run: RunSpec,
    store: Path,
    data_dir: Path,
    out: Path,
    *,
    train_split: str,
    splits: tuple[str, ...],
    init: str | None,
    device: str,
    limit: int | None,
    length_from: Path | None = None,
    start_from: Path | None = None,
) -> None:
    """One fine-tune of ``run``. ``length_from`` (a traindev run whose train run stopped early): train for
    the updates that run's kept weights had, with no early stop and no periodic evaluation, since the
    evaluated split is part of traindev. ``start_from`` (a traindev run with ``traindev_init: train``): the
    finished train run whose final weights it starts from, trained as :func:`warm_traindev_settings` says."""
    from memeguard.training import TrainConfig, finetune

    params = {"eval_split": "dev_seen", **run_settings(model.train)}
    if length_from is not None:
        from memeguard.training.loop import updates_taken

        params = {**params, **NO_EARLY_STOP, "max_updates": updates_taken(length_from)}
    if start_from is not None:
        params = {**params, **warm_traindev_settings(model.train)}
        init = str(start_from)
    cfg = TrainConfig(
        model=model.model,
        features=str(store),
        data_dir=str(data_dir),
        out_dir=str(out),
        train_split=train_split,
        predict_splits=tuple(splits),
        seed=run.seed,
        init=init,
        model_overrides=dict(model.overrides),
        device=device,
        limit=limit,
        progress=show_progress(),
        **params,
    )
    finetune(cfg)


def predict_from_checkpoint(
    model: ModelSpec,
    checkpoint: str,
    store: Path,
    data_dir: Path,
    out: Path,
    *,
    splits: tuple[str, ...],
    device: str,
    limit: int | None,
) -> None:
    """Inference only: load fine-tuned weights (ours, vilio's LASTtrain*.pth, ERNIE step_* folders),
    predict."""
    from memeguard.features.store import FeatureStore
    from memeguard.training import predict
    from memeguard.training.build import build_model

    feature_dim = FeatureStore.open(store).feature_dim
    built = build_model(
        model.model, feature_dim=feature_dim, init=checkpoint, overrides=dict(model.overrides)
    )
    model_dir = out / MODEL_DIR
    built.save_pretrained(model_dir)
    for split in splits:
        predict(model_dir, store, data_dir, split, out / prediction_file(split), device=device, limit=limit)


def run_distill(
    spec: DistillSpec,
    store: Path,
    data_dir: Path,
    ens_dir: Path,
    out: Path,
    *,
    device: str,
    limit: int | None,
) -> None:
    """The student (``pipeline/distill.py``) on the distillation set of ``data_dir``, taught by the
    ensemble in ``ens_dir`` (the pipeline's output folder, just written), trained in ``out``."""
    from memeguard.pipeline.distill import distill, ensemble_scores, ensemble_teacher, student_config

    options = {"eval_split": DEV_SEEN, **spec.train}
    cfg = student_config(
        spec.model,
        store,
        data_dir,
        out,
        spec.extra,
        seed=spec.seed,
        model_overrides=dict(spec.overrides),
        device=device,
        limit=limit,
        progress=show_progress(),
        **options,
    )
    distill(cfg, ensemble_scores(ensemble_teacher(ens_dir), device=device))


def average_seeds(
    run_predictions: Mapping[str, Mapping[str, Mapping[str, Path]]], out_dir: Path
) -> dict[str, dict[str, Path]]:
    """Per family and split: the mean probability over its runs, matched by id (vilio's ``--enstype sa``).

    The ensemble's own seed averaging (:func:`memeguard.ensemble.seed_average`) does the work, so the
    pipeline's ``predictions/<family>_<split>.csv`` and ``memeguard ensemble`` on the runs' CSVs agree.
    vilio averaged log-probabilities (PyTorch) or logits (ERNIE); we average probabilities.
    """
    from memeguard.ensemble.table import stack_predictions
    from memeguard.ensemble.vilio_loop import seed_average

    out_dir.mkdir(parents=True, exist_ok=True)
    family_files: dict[str, dict[str, Path]] = {}
    for family, runs in run_predictions.items():
        family_files[family] = {}
        for split in PREDICTED_SPLITS:
            files = {run: outputs[split] for run, outputs in runs.items() if split in outputs}
            if not files:
                continue
            # Runs aligned to the first run's ids and row order: (memes, runs) -> (memes, 1 family).
            runs_table = stack_predictions(
                split,
                {run: read_predictions(path) for run, path in files.items()},
                {run: str(path) for run, path in files.items()},
            )
            averaged = seed_average({split: runs_table}, {family: list(files)})[split]
            path = out_dir / family_file(family, split)
            write_predictions(path, averaged.ids, averaged.column(family))
            family_files[family][split] = path
    return family_files


def run_ensemble(pred_dir: Path, data_dir: Path, out_dir: Path, spec: EnsembleSpec) -> dict[str, Path]:
    """FIN_<split>.csv from the family CSVs (a single family works too: its blend is itself)."""
    from memeguard.ensemble import ensemble_folder

    if not any(pred_dir.glob(family_file("*", DEV_SEEN))):
        raise ConfigError(f"{pred_dir}: no {family_file('<model>', DEV_SEEN)} predictions to ensemble")
    gt = split_path(data_dir, DEV_SEEN)
    ensemble_folder(pred_dir, gt, out_dir, method=spec.method, **spec.params)
    written = {split: out_dir / fin_file(split) for split in PREDICTED_SPLITS}
    return {split: path for split, path in written.items() if path.is_file()}


def split_labels(data_dir: Path) -> dict[str, dict[int, int]]:
    """Labels of the predicted splits that carry them (the synthetic and the labelled real release do)."""
    labels: dict[str, dict[int, int]] = {}
    for split in PREDICTED_SPLITS:
        if split_path(data_dir, split).is_file():
            memes = read_split(data_dir, split)
            if memes and all(m.label is not None for m in memes):
                labels[split] = {m.id: int(m.label) for m in memes}  # type: ignore[arg-type]
    return labels


def training_logs(
    run_predictions: Mapping[str, Mapping[str, Mapping[str, Path]]],
) -> dict[str, dict[str, Path]]:
    """family -> stage label (``V43-train``, ``V43-traindev``) -> run dir: the folders of the prediction
    CSVs, whose ``metrics.jsonl`` the report draws (an inference-only stage has none and is skipped)."""
    logs: dict[str, dict[str, Path]] = {}
    for family, runs in run_predictions.items():
        for csv in (path for outputs in runs.values() for path in outputs.values()):
            logs.setdefault(family, {})[csv.parent.name.rsplit("-", 1)[0]] = csv.parent
    return logs


def write_run_report(
    out_dir: Path,
    family_files: Mapping[str, Mapping[str, Path]],
    fin_files: Mapping[str, Path],
    data_dir: Path,
    timings: Mapping[str, Mapping[str, Any]],
    title: str,
    run_predictions: Mapping[str, Mapping[str, Mapping[str, Path]]] | None = None,
    explain: Explainer | None = None,
) -> Path:
    """``OUT/report.html`` from the run's outputs; ``explain`` adds attributions to the gallery."""
    from memeguard.pipeline.report import write_report

    predictions: dict[str, dict[str, Predictions]] = {
        family: {split: read_predictions(path) for split, path in files.items()}
        for family, files in family_files.items()
    }
    predictions["ENSEMBLE"] = {split: read_predictions(path) for split, path in fin_files.items()}
    weights_path = out_dir / ENSEMBLE_WEIGHTS_FILE
    weights = json.loads(weights_path.read_text()) if weights_path.is_file() else None
    stage_times = {name: float(entry["seconds"]) for name, entry in timings.items()}
    return write_report(
        out_dir,
        predictions,
        split_labels(data_dir),
        weights=weights,
        stage_times=stage_times,
        title=f"memeguard report: {title}",
        training_logs=training_logs(run_predictions or {}),
        data_dir=data_dir,
        explain=explain,
    )
