"""``ensemble_folder``: a folder of per-model prediction CSVs in, ``FIN_<split>.csv`` + ``weights.json`` out.

Input layout (``PRED_DIR``): ``<model>_<split>.csv`` for ``split`` in dev_seen, test_seen, test_unseen
(``<model>`` may contain underscores; the split suffix is matched exactly). dev_seen is required; the
test splits are those any model predicted (or ``splits=``), and every model must have every one of them,
with the same meme ids per split. Other files are ignored and listed in ``weights.json``.

Families (vilio's seed groups, averaged before blending), chosen by ``families``:

* ``"auto"`` (default): ``PRED_DIR/families.json`` if present; otherwise a model named
  ``<family>__<run>`` (double underscore, e.g. ``U__seed72``) belongs to ``<family>``; any other
  model is a family of its own;
* ``"none"``: every model is its own family;
* ``"regex:PATTERN"``: the family is the first group of ``re.match(PATTERN, model)`` (or the whole
  match), e.g. ``regex:^([A-Z]+)`` puts ``O36``/``O50`` in ``O``; a model that does not match is its
  own family;
* a path to a JSON file, or (Python API) a mapping: ``{"family": ["model", ...]}``; models it does not
  name are families of their own.

Labels. The accuracy-maximising threshold on the dev ROC curve of the final blend, with the real dev class
counts (vilio hard-coded 250/250; pass ``class_counts=(250, 250)`` to reproduce it), labels dev_seen
(vilio left whatever labels the first model's dev file had). Test labels follow ``test_labels``.

Why there is a choice: vilio's recipe scores dev with the models of run (a) and the test splits with those of
run (b), trained on more data, so the blend's scores need not be calibrated alike on the two, and a dev
threshold can label a whole test split one class (seen on the synthetic demo: every test meme lay above a dev
threshold of 0.027). The two share rules label the highest-scored memes of each test split (ties broken by
id), and differ in how many:

* ``"prior"`` (default): as many as the families' mean P(hateful) on that split predicts. Each model's own
  probabilities are trained to be calibrated even where the blend's scores are not, and their mean estimates
  a split's hateful share (Saerens et al., 2002). On the demo it found test_unseen's 37 % where dev has 49 %.
* ``"rate"``: the share the dev threshold labels on dev (assumes every split is as hateful as dev).
* ``"threshold"``: vilio's rule, the dev threshold applied to the test scores as they are.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_curve

from memeguard.data.metrics import accuracy, auroc, best_threshold
from memeguard.data.predictions import Predictions, read_predictions, write_predictions
from memeguard.ensemble.method_names import (
    COORDINATE,
    LOOP,
    MEAN,
    POWER,
    RANK,
    SIMPLEX,
    TEST_LABEL_RULES,
    canonical_method,
)
from memeguard.ensemble.table import ScoreTable, ground_truth_labels, stack_predictions
from memeguard.ensemble.vilio_loop import blend, dev_aurocs, seed_average, vilio_loop
from memeguard.errors import ConfigError, DataError
from memeguard.io import write_json_atomic
from memeguard.names import (
    DEV_SEEN,
    ENSEMBLE_WEIGHTS_FILE,
    FAMILIES_FILE,
    PREDICTED_SPLITS,
    family_file,
    fin_file,
    prediction_file,
)

# ``memeguard.ensemble.SPLITS`` is public: kept as a name for ``names.PREDICTED_SPLITS``.
SPLITS: tuple[str, ...] = PREDICTED_SPLITS
FAMILY_SEPARATOR = "__"
FAMILIES_DIR = "families"  # the per-family seed averages, beside FIN_<split>.csv
# The one SX-style blend each single-blend method is, and the weight search it uses.
_SINGLE_BLENDS: dict[str, tuple[str, str]] = {
    MEAN: ("SA", SIMPLEX),
    POWER: ("PA", SIMPLEX),
    RANK: ("RA", SIMPLEX),
    SIMPLEX: ("SX", SIMPLEX),
    COORDINATE: ("SX", COORDINATE),
}


def scan_folder(
    pred_dir: str | os.PathLike[str], splits: Sequence[str] | None = None
) -> tuple[dict[str, dict[str, Path]], list[str]]:
    """``{model: {split: path}}`` for the ``<model>_<split>.csv`` files, and the names of ignored files.

    ``splits=None`` ensembles dev_seen plus every split that any model has; either way each model
    must have every split, and a missing file is an error that names it.
    """
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise DataError(f"{pred_dir}: prediction folder not found")
    known = tuple(splits) if splits is not None else SPLITS
    if DEV_SEEN not in known:
        raise ConfigError(f"splits must include {DEV_SEEN} (the ensemble is fitted on it), got {list(known)}")
    models: dict[str, dict[str, Path]] = {}
    ignored = []
    for path in sorted(pred_dir.iterdir()):
        if not path.is_file() or path.suffix != ".csv":
            continue
        for split in known:
            suffix = "_" + prediction_file(split)
            if path.name.endswith(suffix) and len(path.name) > len(suffix):
                models.setdefault(path.name[: -len(suffix)], {})[split] = path
                break
        else:
            ignored.append(path.name)
    if not models:
        raise DataError(f"{pred_dir}: no prediction files named <model>_{DEV_SEEN}.csv")
    wanted = (
        known
        if splits is not None
        else tuple(s for s in known if s == DEV_SEEN or any(s in f for f in models.values()))
    )
    for model, files in models.items():
        for split in wanted:
            if split not in files:
                missing = pred_dir / f"{model}_{split}.csv"
                raise DataError(f"{missing}: missing (model {model!r} has {', '.join(sorted(files))})")
    return {model: {s: files[s] for s in wanted} for model, files in models.items()}, ignored


def _family_file(path: Path, models: Sequence[str]) -> dict[str, list[str]]:
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:  # UnicodeDecodeError: not UTF-8
        raise ConfigError(f"{path}: cannot read families ({exc})") from None
    if not isinstance(spec, dict) or not all(
        isinstance(v, list) and all(isinstance(m, str) for m in v) for v in spec.values()
    ):
        raise ConfigError(f'{path}: expected {{"family": ["model", ...]}}')
    return _check_families(spec, models, str(path))


def _check_families(
    spec: Mapping[str, Sequence[str]], models: Sequence[str], source: str
) -> dict[str, list[str]]:
    seen: dict[str, str] = {}
    for family, members in spec.items():
        if not members:
            raise ConfigError(f"{source}: family {family!r} has no models")
        for model in members:
            if model not in models:
                raise ConfigError(
                    f"{source}: family {family!r} names {model!r}, which has no prediction files "
                    f"(models: {', '.join(models)})"
                )
            if model in seen:
                raise ConfigError(f"{source}: model {model!r} is in both {seen[model]!r} and {family!r}")
            seen[model] = family
    families = {family: sorted(members) for family, members in spec.items()}
    for model in models:
        if model not in seen:
            if model in families:
                raise ConfigError(f"{source}: family name {model!r} clashes with an unlisted model")
            families[model] = [model]
    return dict(sorted(families.items()))


def resolve_families(
    models: Sequence[str],
    spec: str | Mapping[str, Sequence[str]] | None = "auto",
    pred_dir: str | os.PathLike[str] | None = None,
) -> dict[str, list[str]]:
    """Group model names into seed families (see the module docstring for ``spec``)."""
    models = sorted(models)
    if isinstance(spec, Mapping):
        return _check_families(spec, models, "families")
    if spec is None or spec == "none":
        return {model: [model] for model in models}
    if spec == "auto":
        if pred_dir is not None and (Path(pred_dir) / FAMILIES_FILE).is_file():
            return _family_file(Path(pred_dir) / FAMILIES_FILE, models)
        grouped: dict[str, list[str]] = {}
        for model in models:
            family = model.split(FAMILY_SEPARATOR, 1)[0] if FAMILY_SEPARATOR in model.strip("_") else model
            grouped.setdefault(family or model, []).append(model)
        return _check_families(grouped, models, "families")
    if spec.startswith("regex:"):
        try:
            pattern = re.compile(spec[len("regex:") :])
        except re.error as exc:
            raise ConfigError(f"bad family regex {spec!r}: {exc}") from None
        grouped = {}
        for model in models:
            match = pattern.match(model)
            family = (match.group(1) if pattern.groups else match.group(0)) if match else model
            grouped.setdefault(family or model, []).append(model)
        return _check_families(grouped, models, spec)
    path = Path(spec)
    if path.is_file():
        return _family_file(path, models)
    raise ConfigError(f"families must be 'auto', 'none', 'regex:PATTERN' or a JSON file; got {spec!r}")


def decision_threshold(
    labels: np.ndarray, scores: np.ndarray, class_counts: tuple[int, int] | None = None
) -> tuple[float, float]:
    """Accuracy-maximising threshold on the ROC curve and the accuracy it promises.

    ``class_counts=(positives, negatives)`` replaces the real counts in the accuracy formula
    ``(TPR·P + (1−FPR)·N) / (P + N)``, reproducing vilio's hard-coded ``(250, 250)``.
    """
    if class_counts is None:
        return best_threshold(labels, scores)
    positives, negatives = class_counts
    fpr, tpr, thresholds = roc_curve(labels, scores)
    acc = (tpr * positives + (1.0 - fpr) * negatives) / (positives + negatives)
    best = int(np.argmax(acc))
    return float(min(thresholds[best], np.nextafter(np.inf, 0))), float(acc[best])


def top_share_labels(scores: np.ndarray, ids: np.ndarray, share: float) -> np.ndarray:
    """1 for the ``round(share * n)`` highest scores (ties broken by id, so the labels are reproducible)."""
    count = int(round(share * len(scores)))
    order = np.lexsort((ids, -scores))  # by score descending, then id ascending
    labels = np.zeros(len(scores), dtype=np.int64)
    labels[order[:count]] = 1
    return labels


@dataclass
class EnsembleResult:
    method: str
    files: dict[str, Path]  # split -> FIN_<split>.csv
    weights_path: Path
    predictions: dict[str, Predictions]  # split -> final predictions
    dev_auroc: float
    threshold: float
    dev_accuracy: float
    families: dict[str, list[str]]
    record: dict = field(default_factory=dict)  # what weights.json holds


def load_tables(models: Mapping[str, Mapping[str, Path]], splits: Sequence[str]) -> dict[str, ScoreTable]:
    """Read every CSV (validated by ``read_predictions``) and align each split by id."""
    tables = {}
    for split in splits:
        preds = {model: read_predictions(files[split]) for model, files in models.items()}
        tables[split] = stack_predictions(split, preds, {m: str(files[split]) for m, files in models.items()})
    return tables


def _final_scores(
    tables: Mapping[str, ScoreTable], y: np.ndarray, method: str, optimizer: str, passes: int, keep: int
) -> tuple[dict[str, np.ndarray], dict]:
    if method == LOOP:
        loop = vilio_loop(tables, y, passes=passes, keep=keep, optimizer=optimizer)
        record = {
            "optimizer": optimizer,
            "passes": [vars(p) for p in loop.passes],
            "final": {"blend": f"SX{len(loop.passes)}", "weights": loop.weights},
        }
        return loop.scores, record
    name, chosen = _SINGLE_BLENDS[method]
    outcome = blend(tables, y, name, optimizer=chosen)
    record = {
        "optimizer": chosen if name == "SX" else None,
        "final": {"blend": name, "weights": outcome.weights},
    }
    return outcome.scores, record


def ensemble_folder(
    pred_dir: str | os.PathLike[str],
    gt_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    method: str = LOOP,
    families: str | Mapping[str, Sequence[str]] | None = "auto",
    optimizer: str = SIMPLEX,
    splits: Sequence[str] | None = None,
    passes: int = 2,
    keep: int = 5,
    class_counts: tuple[int, int] | None = None,
    test_labels: str = "prior",
) -> EnsembleResult:
    """Seed-average per family, ensemble with ``method``, write ``FIN_<split>.csv`` and ``weights.json``.

    ``optimizer`` ("simplex" = vilio's tuner, or "coordinate") is the SX weight search inside the loop;
    ``method`` is one of ``METHODS`` or vilio's alias (``sa``, ``pa``, ``ra``, ``sx``; ``opt`` for
    ``coordinate``); ``"simplex"``/``"coordinate"`` are one weighted blend of the families.
    ``splits=None``: dev_seen and whichever of test_seen/test_unseen the models predicted.
    """
    method = canonical_method(method)
    if test_labels not in TEST_LABEL_RULES:
        raise ConfigError(
            f"unknown test label rule {test_labels!r}; choose from {', '.join(TEST_LABEL_RULES)}"
        )
    pred_dir, out_dir = Path(pred_dir), Path(out_dir)
    if out_dir.resolve() == pred_dir.resolve():
        raise ConfigError(
            f"{out_dir}: write the ensemble to another folder (FIN_*.csv would be read as a model)"
        )
    models, ignored = scan_folder(pred_dir, splits)
    splits = list(next(iter(models.values())))
    groups = resolve_families(list(models), families, pred_dir)
    runs = load_tables(models, splits)
    first_dev_file = str(models[runs[DEV_SEEN].names[0]][DEV_SEEN])
    y, gt_size = ground_truth_labels(str(gt_path), runs[DEV_SEEN].ids, source=first_dev_file)
    tables = seed_average(runs, groups)

    scores, record = _final_scores(tables, y, method, optimizer, passes, keep)
    scores = {split: np.clip(values, 0.0, 1.0) for split, values in scores.items()}
    threshold, promised = decision_threshold(y, scores[DEV_SEEN], class_counts)

    dev_share = float(np.mean(scores[DEV_SEEN] >= threshold))

    out_dir.mkdir(parents=True, exist_ok=True)
    files, final, hateful_share = {}, {}, {}
    for split in splits:
        table = tables[split]
        if split == DEV_SEEN or test_labels == "threshold":
            labels = (scores[split] >= threshold).astype(np.int64)
        elif test_labels == "rate":
            labels = top_share_labels(scores[split], table.ids, dev_share)
        else:
            labels = top_share_labels(scores[split], table.ids, float(table.scores.mean()))
        final[split] = Predictions(table.ids.copy(), scores[split], labels)
        hateful_share[split] = float(labels.mean()) if len(labels) else 0.0
        files[split] = write_predictions(out_dir / fin_file(split), final[split])
    for family, members in groups.items():  # vilio's per-family SA files, for inspection
        if len(members) > 1:
            for split in splits:
                write_predictions(
                    out_dir / FAMILIES_DIR / family_file(family, split), table_column(tables[split], family)
                )

    dev_auroc = auroc(y, scores[DEV_SEEN])
    dev_acc = accuracy(y, scores[DEV_SEEN], threshold)
    record = {
        "method": method,
        "families": groups,
        "family_dev_auroc": dev_aurocs(tables[DEV_SEEN], y),
        "run_dev_auroc": dev_aurocs(runs[DEV_SEEN], y),
        "splits": splits,
        "dev_coverage": {"predicted": int(len(y)), "ground_truth": gt_size},
        "ignored_files": ignored,
        **record,
    }
    record["final"].update(
        dev_auroc=dev_auroc,
        threshold=threshold,
        dev_accuracy=dev_acc,
        threshold_accuracy=promised,
        test_labels=test_labels,
        hateful_share=hateful_share,
        class_counts={"positive": int(y.sum()), "negative": int(len(y) - y.sum())}
        if class_counts is None
        else {
            "positive": class_counts[0],
            "negative": class_counts[1],
            "note": "fixed counts (vilio: 250/250)",
        },
    )
    weights_path = out_dir / ENSEMBLE_WEIGHTS_FILE
    write_json_atomic(weights_path, record)
    return EnsembleResult(method, files, weights_path, final, dev_auroc, threshold, dev_acc, groups, record)


def table_column(table: ScoreTable, name: str, threshold: float = 0.5) -> Predictions:
    """One column of a table as predictions (labels at ``threshold``)."""
    proba = np.clip(table.column(name), 0.0, 1.0)
    return Predictions(table.ids.copy(), proba, (proba >= threshold).astype(np.int64))
