"""Distillation: one fast student trained on a teacher ensemble's probabilities (the loss and the soft-target
options are training's: ``training/distill.py``). Used by ``memeguard distill`` and the recipe's ``distill:``
stage.

The distillation set is what the student may learn from without touching dev labels:

* the training split (``train_clean`` when ``data clean`` wrote it, else ``train``), with its labels;
* the dataset's test splits, labels ignored even where the release has them;
* every ``--extra`` folder's memes, labels ignored: a folder in the Hateful Memes layout (its ``train``,
  ``test_seen``, ``test_unseen`` or phase-1 ``test`` jsonl; dev and derived files are skipped). Their
  features must already be in the student's store (``memeguard features extract DIR STORE`` adds them; a
  missing one is an error naming its id), and in every teacher run's store for an ensemble teacher. A bare
  folder of images is not accepted: its memes have neither ids nor texts to train on.

dev_seen and dev_unseen never enter it; the student evaluates on dev_seen and predicts every split like any
run, so ``predict``, ``ensemble``, ``export``, ``score`` and ``serve`` take it unchanged.

The teacher here is an ensemble folder: the pipeline's output (``OUT``, whose ``members.json`` names the run
dirs behind each family) blended with a weighted mean (``ensemble.method: simplex`` or ``coordinate``). Each
member run predicts the distillation set from its own store and the runs are averaged with their family's
weight split over its runs, as ``memeguard export --ensemble`` does. Rank, power, min-max and loop blends
score a meme against a whole split, so they cannot score the train and extra memes: they are refused. A
bundle teacher (``serving/distill_cli.py``) is scored by ``MemeScorer`` from the images.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from memeguard.data.meme import Meme
from memeguard.errors import ConfigError
from memeguard.names import (
    DEV_SEEN,
    ENSEMBLE_MEMBERS_FILE,
    ENSEMBLE_WEIGHTS_FILE,
    MODEL_DIR,
    PHASE1_ALIASES,
    PREDICTED_SPLITS,
    TEST_SPLITS,
    TRAIN,
    TRAIN_CLEAN,
    TRAIN_CONFIG_FILE,
    soft_targets_file,
    split_file,
)
from memeguard.training.config import TrainConfig

# (image folder, meme) of every meme of the distillation set -> its teacher probability by id.
TeacherScores = Callable[[Sequence[tuple[Path, Meme]]], dict[int, float]]
# The final blend of `memeguard ensemble --method simplex|coordinate`: a weighted mean of the families.
WEIGHTED_MEAN_BLEND = "SX"
# The split files an --extra folder contributes (dev and the files derived from it never).
EXTRA_SPLITS: tuple[str, ...] = (TRAIN, *TEST_SPLITS, PHASE1_ALIASES[TEST_SPLITS[0]])


@dataclass(frozen=True)
class EnsembleTeacher:
    """The run dirs of a weighted-mean ensemble and each one's weight."""

    runs: tuple[Path, ...]
    weights: tuple[float, ...]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read ({exc})") from None


def blend_weights(ens_dir: Path) -> dict[str, float]:
    """family -> weight of the ensemble's final blend, refused unless that blend is a weighted mean."""
    path = ens_dir / ENSEMBLE_WEIGHTS_FILE
    if not path.is_file():
        raise ConfigError(
            f"{ens_dir}: no {ENSEMBLE_WEIGHTS_FILE}; --teacher takes an ensemble folder or a bundle"
        )
    record = _read_json(path)
    final = record.get("final") if isinstance(record, dict) else None
    if not isinstance(final, dict) or final.get("blend") != WEIGHTED_MEAN_BLEND:
        method = record.get("method") if isinstance(record, dict) else None
        raise ConfigError(
            f"{path}: method {method!r} scores a meme against a whole split, so it cannot score train or "
            "extra memes; distil from an ensemble fitted with --method simplex or coordinate"
        )
    weights = final.get("weights")
    if not isinstance(weights, dict):
        raise ConfigError(f"{path}: expected a 'final.weights' object")
    return {str(family): float(weight) for family, weight in weights.items()}


def _scoring_runs(family: str, runs: Any, source: Path) -> list[Path]:
    """The run dirs that scored the ensemble's test splits (run (b): the weights are fitted on dev
    predictions of run (a) models, and run (b) models stand in for them on new memes, as in vilio);
    dev_seen's when no test split was predicted."""
    if not isinstance(runs, dict) or not runs:
        raise ConfigError(f"{source}: family {family!r} lists no runs")
    found = []
    for run, files in runs.items():
        split = next((s for s in TEST_SPLITS if s in files), DEV_SEEN)
        if not isinstance(files, dict) or split not in files:
            raise ConfigError(f"{source}: run {run!r} of family {family!r} names no prediction file")
        found.append((source.parent / str(files[split])).parent)  # relative to the ensemble folder
    return found


def ensemble_teacher(ens_dir: str | os.PathLike[str]) -> EnsembleTeacher:
    """The teacher an ensemble folder describes: its members' run dirs with their family's weight split
    evenly over the family's runs (a family is the seed average of its runs)."""
    ens_dir = Path(ens_dir)
    weights = blend_weights(ens_dir)
    members_path = ens_dir / ENSEMBLE_MEMBERS_FILE
    if not members_path.is_file():
        raise ConfigError(
            f"{ens_dir}: no {ENSEMBLE_MEMBERS_FILE} naming its run dirs (a `memeguard run` output has one); "
            "export the runs with `memeguard export RUN... --ensemble ENS_DIR --out BUNDLE` and pass BUNDLE"
        )
    members = _read_json(members_path)
    runs: list[Path] = []
    run_weights: list[float] = []
    for family, weight in weights.items():
        if weight <= 0:
            continue
        if not isinstance(members, dict) or family not in members:
            raise ConfigError(f"{members_path}: no runs for family {family!r}")
        family_runs = _scoring_runs(family, members[family], members_path)
        runs.extend(family_runs)
        run_weights.extend([weight / len(family_runs)] * len(family_runs))
    if not runs:
        raise ConfigError(f"{ens_dir / ENSEMBLE_WEIGHTS_FILE}: every family has weight 0")
    return EnsembleTeacher(tuple(runs), tuple(run_weights))


def run_store(run_dir: Path) -> Path:
    """The feature store a run was trained on (its ``train_config.json``), which it predicts from."""
    path = run_dir / TRAIN_CONFIG_FILE
    if not path.is_file():
        raise ConfigError(
            f"{run_dir}: no {TRAIN_CONFIG_FILE}, so its feature store is unknown; distil from a bundle"
        )
    store = Path(str(_read_json(path).get("features", "")))
    if not store.is_dir():
        raise ConfigError(f"{run_dir}: its feature store {store} is not there")
    return store


def run_probabilities(
    run_dir: Path, memes: Sequence[Meme], *, device: str = "auto", batch_size: int = 64
) -> np.ndarray:
    """One run's P(hateful) of ``memes`` (in their order), from its own store."""
    from memeguard.training.build import load_model_dir
    from memeguard.training.data import Collator, open_regions, require_regions, verify_regions
    from memeguard.training.distributed import resolve_device
    from memeguard.training.loop import predict_memes

    store = run_store(run_dir)
    source = open_regions(store)
    require_regions(memes, source, "distillation set", str(store))
    verify_regions(source, memes)
    torch_device = resolve_device(device)
    model = load_model_dir(run_dir / MODEL_DIR).to(torch_device)
    collate = Collator(model.build_processor())
    _, proba = predict_memes(model, collate, memes, source, batch_size=batch_size, device=torch_device)
    return proba


def ensemble_scores(teacher: EnsembleTeacher, device: str = "auto") -> TeacherScores:
    """The weighted mean of the teacher's runs over the distillation set."""

    def scores(items: Sequence[tuple[Path, Meme]]) -> dict[int, float]:
        memes = [meme for _, meme in items]
        total = np.zeros(len(memes), dtype=np.float64)
        for run, weight in zip(teacher.runs, teacher.weights, strict=True):
            total += weight * run_probabilities(run, memes, device=device)
        proba = total / float(sum(teacher.weights))
        return {meme.id: float(p) for meme, p in zip(memes, proba, strict=True)}

    return scores


def extra_entries(extra_dir: str | os.PathLike[str]) -> list[str]:
    """The split files of an --extra folder that join the distillation set, as ``unlabelled`` entries."""
    folder = Path(extra_dir)
    if not folder.is_dir():
        raise ConfigError(f"{folder}: extra meme folder not found")
    files = [folder / split_file(split) for split in EXTRA_SPLITS if (folder / split_file(split)).is_file()]
    if not files:
        names = ", ".join(split_file(split) for split in EXTRA_SPLITS)
        raise ConfigError(
            f"{folder}: no {names}; an extra folder is in the Hateful Memes layout (jsonl + img/)"
        )
    return [str(path) for path in files]


def student_config(
    student: str,
    features: str | os.PathLike[str],
    data_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    extras: Sequence[str | os.PathLike[str]] = (),
    **options: Any,
) -> TrainConfig:
    """The student's run, before its soft targets exist: the distillation set's splits and files, every
    present split of ``PREDICTED_SPLITS`` predicted, evaluated on dev_seen; ``options`` are any other
    ``TrainConfig`` fields."""
    from memeguard.data.hm import split_path

    data = Path(data_dir)
    train_split = TRAIN_CLEAN if split_path(data, TRAIN_CLEAN).is_file() else TRAIN
    unlabelled = [split for split in TEST_SPLITS if split_path(data, split).is_file()]
    for extra in extras:
        unlabelled.extend(extra_entries(extra))
    predict = tuple(split for split in PREDICTED_SPLITS if split_path(data, split).is_file())
    placeholder = str(Path(out_dir) / soft_targets_file("0" * 12))  # validated now, replaced once scored
    return TrainConfig(
        **{
            "predict_splits": predict,
            **options,
            "model": student,
            "features": str(features),
            "data_dir": str(data_dir),
            "out_dir": str(out_dir),
            "train_split": train_split,
            "unlabelled": tuple(unlabelled),
            "soft_targets": placeholder,
        }
    )


def distillation_items(cfg: TrainConfig) -> list[tuple[Path, Meme]]:
    """(image folder, meme) of the distillation set, in training order; the ids are train + test + extra,
    never dev (``training.distill.distillation_groups``, the very list the student trains on)."""
    from memeguard.training.data import read_memes, require_labels
    from memeguard.training.distill import distillation_groups

    train = read_memes(cfg.data_dir, cfg.train_split, cfg.limit)
    require_labels(train, cfg.train_split)
    return [(folder, meme) for _, folder, memes in distillation_groups(cfg, train) for meme in memes]


def soft_targets_csv(scores: Mapping[int, float]) -> tuple[str, np.ndarray, np.ndarray]:
    """(file name, ids, probabilities) of the teacher's probabilities sorted by id; the name carries their
    sha256, so a rerun with another teacher is another configuration, refused rather than mixed into a
    finished run."""
    ids = np.asarray(sorted(scores), dtype=np.int64)
    proba = np.asarray([scores[int(i)] for i in ids], dtype=np.float64)
    rows = "".join(f"{i},{p!r}\n" for i, p in zip(ids, proba, strict=True))
    return soft_targets_file(hashlib.sha256(rows.encode()).hexdigest()), ids, proba


def distill(cfg: TrainConfig, teacher: TeacherScores) -> Any:
    """Score the distillation set with ``teacher``, write the soft targets into the run dir and train the
    student there (``finetune``'s RunResult): an ordinary run dir plus its soft-target CSV. A run dir of
    another kind or configuration is refused before anything is written into it."""
    from memeguard.data.predictions import write_predictions
    from memeguard.training.loop import finetune
    from memeguard.training.run import check_same_config, refuse_foreign_folder

    out_dir = Path(cfg.out_dir)
    refuse_foreign_folder(out_dir, TRAIN_CONFIG_FILE)
    items = distillation_items(cfg)
    scores = teacher(items)
    missing = [meme.id for _, meme in items if meme.id not in scores]
    if missing:
        raise ConfigError(f"the teacher scored no probability for meme id {missing[0]}")
    name, ids, proba = soft_targets_csv({meme.id: scores[meme.id] for _, meme in items})
    cfg = cfg.replace(soft_targets=str(out_dir / name))
    check_same_config(out_dir, cfg, TRAIN_CONFIG_FILE)
    if not (out_dir / name).is_file():
        write_predictions(out_dir / name, ids, proba)
    return finetune(cfg)


def student_predictions(run_dir: Path) -> dict[str, Path]:
    """split -> the student's prediction CSV, for the splits it predicted."""
    from memeguard.names import prediction_file

    found = {split: run_dir / prediction_file(split) for split in PREDICTED_SPLITS}
    return {split: path for split, path in found.items() if path.is_file()}
