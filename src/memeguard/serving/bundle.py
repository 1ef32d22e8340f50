"""Deployable bundles: trained runs (and their ensemble weights) in one self-contained, hash-checked folder.

Why: a run dir points at a feature store, a data folder and sibling runs by path, so it only scores on the
machine that trained it. ``memeguard export`` copies what scoring needs into one folder that can be copied,
published on the Hugging Face Hub and loaded with :meth:`MemeScorer.from_bundle`::

    BUNDLE/
      manifest.json                 format, members and weights, operating point, sha256 of every file
      README.md                     model card: dev/test metrics, training data, intended use, limitations
      members/<name>/model/         config.json + model.safetensors (``save_pretrained``)
      members/<name>/train_config.json
      members/<name>/features_meta.json   the training store's meta.json: extractor settings, weights sha256
      ensemble/weights.json         the ensemble's record, when exported with --ensemble

Each ``members/<name>`` is laid out as a run dir whose features are described by a snapshot, so loading is
:meth:`MemeScorer.from_runs` on those folders with the stored weights and threshold. Every file is checked
against its sha256 before anything is loaded: a corrupted download or an edited weight file is an error
naming the file, not a silently different score.

Ensembles. The scorer scores one meme as the weighted mean of its models' probabilities. An ensemble whose
final blend is such a mean (``memeguard ensemble --method simplex`` or ``coordinate``: the SX blend of the
families' raw probabilities) is exported exactly: each run gets its family's weight divided by the family's
exported runs (a family is the seed average of its runs). Min-max, power and rank blends, and vilio's loop
built from them, are defined over a whole split (they normalise or rank every meme against the others), so
they cannot score a single new meme: export refuses them and says so, rather than ship something else
under their name. Export the runs without ``--ensemble`` (equal weights) or refit with ``--method simplex``.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from memeguard import __version__
from memeguard.data.predictions import Predictions, align_predictions, read_predictions
from memeguard.errors import CheckpointError, ConfigError
from memeguard.io import write_json_atomic, write_text_atomic
from memeguard.names import (
    CLEANING_REPORT_FILE,
    DEV_SEEN,
    ENSEMBLE_WEIGHTS_FILE,
    FEATURES_META_FILE,
    MODEL_CONFIG_FILE,
    MODEL_DIR,
    MODEL_WEIGHTS_FILE,
    ONNX_MODEL_FILE,
    REPORT_SPLITS,
    SYNTH_META_FILE,
    TRAIN_CONFIG_FILE,
    fin_file,
    prediction_file,
    split_file,
)
from memeguard.records import file_sha256
from memeguard.serving.operating_point import OperatingPoint, choose_operating_point, dev_metrics

if TYPE_CHECKING:  # pragma: no cover
    from memeguard.features.extractor import Extractor
    from memeguard.serving.scorer import MemeScorer

# -- the bundle's on-disk names (a contract with published bundles: never rename one) -----------------
BUNDLE_FORMAT = "memeguard-bundle"
BUNDLE_VERSION = 1
MANIFEST_FILE = "manifest.json"
MODEL_CARD_FILE = "README.md"
MEMBERS_DIR = "members"
ENSEMBLE_DIR = "ensemble"

MAX_MANIFEST_BYTES = 1 << 20  # a manifest lists a few dozen files; anything bigger is not one
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._#-]{0,127}$")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_BLENDABLE = "SX"  # the one final blend that is a weighted mean of probabilities


# ------------------------------------------------------------------------------------------ manifest


def _matching(pattern: re.Pattern[str], value: str, what: str) -> str:
    """``value`` when ``pattern`` matches it; else the ValueError that pydantic reports as ``not <what>``
    (one wording for every pattern-checked manifest field)."""
    if not pattern.match(value):
        raise ValueError(f"{value!r} is not {what}")
    return value


class BundleFile(BaseModel):
    """One file of the bundle, relative to its root, with its size and digest."""

    model_config = ConfigDict(extra="forbid")

    path: str
    bytes: int = Field(ge=0)
    sha256: str

    @field_validator("path")
    @classmethod
    def _inside_bundle(cls, value: str) -> str:
        parts = value.split("/")
        if value.startswith("/") or "\\" in value or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"{value!r} is not a plain relative path inside the bundle")
        return value

    @field_validator("sha256")
    @classmethod
    def _hex_digest(cls, value: str) -> str:
        return _matching(_SHA256, value, "a lowercase sha256 hex digest")


class BundleMember(BaseModel):
    """One model of the bundle: its folder under ``members/``, its weight, and the run it came from."""

    model_config = ConfigDict(extra="forbid")

    name: str
    weight: float = Field(ge=0.0, allow_inf_nan=False)
    architecture: str
    source_run: str  # the run dir's name at export time (no path: a bundle does not leak the exporter's tree)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        return _matching(_SAFE_NAME, value, "a safe folder name")


class EnsembleRecord(BaseModel):
    """Where the member weights came from, when the bundle was exported with ``--ensemble``."""

    model_config = ConfigDict(extra="forbid")

    method: str
    families: dict[str, list[str]]
    family_weights: dict[str, float]


class BundleManifest(BaseModel):
    """``manifest.json``: validated before any file of the bundle is trusted."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["memeguard-bundle"]
    version: Literal[1]
    memeguard_version: str
    members: list[BundleMember] = Field(min_length=1)
    operating_point: OperatingPoint
    ensemble: EnsembleRecord | None = None
    metrics: dict[str, dict[str, float | int | None]] = Field(default_factory=dict)
    files: list[BundleFile] = Field(default_factory=list)  # verify_files requires each member's model
    # How score/serve run the members (``export --optimize``; models.fast): fp32, int8 or onnx.
    optimize: str = "fp32"

    @field_validator("optimize")
    @classmethod
    def _known_optimization(cls, value: str) -> str:
        from memeguard.models.fast import OPTIMIZATIONS

        if value not in OPTIMIZATIONS:
            raise ValueError(f"{value!r} is not one of {', '.join(OPTIMIZATIONS)}")
        return value


def member_dir(bundle: Path, member: BundleMember) -> Path:
    return bundle / MEMBERS_DIR / member.name


def is_bundle(path: str | os.PathLike[str]) -> bool:
    """A folder with a ``manifest.json``: what :func:`load_bundle` accepts (it validates the rest)."""
    return (Path(path) / MANIFEST_FILE).is_file()


def read_manifest(bundle: Path) -> BundleManifest:
    """The bundle's manifest, validated; any problem is one line naming the file."""
    path = bundle / MANIFEST_FILE
    if not path.is_file():
        raise ConfigError(f"{bundle}: not a memeguard bundle (no {MANIFEST_FILE})")
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise ConfigError(f"{path}: {path.stat().st_size:,} bytes, too large for a bundle manifest")
    try:
        return BundleManifest.model_validate_json(path.read_bytes())
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(top level)"
        raise ConfigError(f"{path}: invalid manifest at {where}: {first['msg']}") from None


def verify_files(bundle: Path, manifest: BundleManifest) -> None:
    """Every listed file is there with its recorded size and sha256, and every member has its model."""
    listed = {entry.path for entry in manifest.files}
    needs = [f"{MODEL_DIR}/{MODEL_CONFIG_FILE}", f"{MODEL_DIR}/{MODEL_WEIGHTS_FILE}"]
    if manifest.optimize == "onnx":
        needs.append(f"{MODEL_DIR}/{ONNX_MODEL_FILE}")
    for member in manifest.members:
        for needed in needs:
            if f"{MEMBERS_DIR}/{member.name}/{needed}" not in listed:
                raise ConfigError(
                    f"{bundle / MANIFEST_FILE}: member {member.name!r} lists no {needed} (nothing to load)"
                )
    for entry in manifest.files:
        path = bundle / entry.path
        if not path.is_file():
            raise CheckpointError(f"{path}: listed in the bundle's {MANIFEST_FILE} but missing")
        if path.stat().st_size != entry.bytes:
            raise CheckpointError(
                f"{path}: {path.stat().st_size:,} bytes, the manifest records {entry.bytes:,} "
                "(damaged or edited)"
            )
        actual = file_sha256(path)
        if actual != entry.sha256:
            raise CheckpointError(
                f"{path}: sha256 {actual[:12]}... does not match the manifest's {entry.sha256[:12]}... "
                "(damaged or edited)"
            )


# --------------------------------------------------------------------------------------- resolving


def looks_like_hub_id(source: str) -> bool:
    return bool(_HUB_ID.match(source))


def resolve_bundle(source: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """A local bundle folder, or a Hub id (``org/name``) fetched with ``huggingface_hub.snapshot_download``.

    A local folder always wins. Offline (``HF_HUB_OFFLINE=1``) the Hub library answers from its cache only,
    and a bundle it never downloaded is one clear error.
    """
    path = Path(source)
    if path.is_dir():
        return path
    text = str(source)
    if not looks_like_hub_id(text):
        raise ConfigError(f"{text}: no such bundle folder (and not a Hugging Face Hub id org/name)")
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(
            text, cache_dir=cache_dir, library_name="memeguard", library_version=__version__
        )
    except Exception as exc:  # the hub library raises many types (offline, not found, HTTP, auth)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ConfigError(
            f"{text}: not a local folder, and the Hugging Face Hub could not provide it "
            f"({type(exc).__name__}{': ' + reason if reason else ''})"
        ) from None
    return Path(local)


def load_bundle(
    source: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None
) -> tuple[Path, BundleManifest]:
    """Resolve, validate and hash-check a bundle; nothing of it is loaded before this succeeds."""
    bundle = resolve_bundle(source, cache_dir)
    manifest = read_manifest(bundle)
    verify_files(bundle, manifest)
    return bundle, manifest


def load_scorer(
    models: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    device: str = "auto",
    threshold: float | None = None,
    weights: Sequence[float] | None = None,
    batch_size: int = 16,
    extractor: Extractor | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    optimize: str | None = None,
) -> MemeScorer:
    """One entry point for ``score``/``serve``: a run dir, a list of run dirs, a bundle folder or a Hub id.

    ``optimize=None``: a bundle's own fast path, fp32 for runs; a value overrides both.

    ``threshold=None``: a bundle's operating point, or 0.5 for runs. A bundle carries its own members,
    weights and extractor settings, so it is loaded alone and ``weights``/``extractor`` must be unset.
    """
    from memeguard.serving.scorer import MemeScorer

    sources = [models] if isinstance(models, (str, os.PathLike)) else list(models)
    bundles = [s for s in sources if is_bundle(s) or (not Path(s).exists() and looks_like_hub_id(str(s)))]
    if bundles:
        if len(sources) != 1:
            raise ConfigError(f"{bundles[0]}: a bundle is scored on its own, not with other models")
        if weights or extractor is not None:
            raise ConfigError(f"{bundles[0]}: a bundle records its own ensemble weights and extractor")
        return MemeScorer.from_bundle(
            bundles[0],
            device=device,
            threshold=threshold,
            batch_size=batch_size,
            cache_dir=cache_dir,
            optimize=optimize,
        )
    return MemeScorer.from_runs(
        sources,
        device=device,
        extractor=extractor,
        threshold=0.5 if threshold is None else threshold,
        weights=weights,
        batch_size=batch_size,
        optimize=optimize or "fp32",
    )


# ------------------------------------------------------------------------------------------ export


class _Run:
    """What export needs of one run dir: its model, config and the features snapshot."""

    def __init__(self, run_dir: Path) -> None:
        from memeguard.serving.scorer import read_features_meta, read_json_object

        self.dir = run_dir
        self.model_dir = run_dir / MODEL_DIR
        for needed in (self.model_dir / MODEL_CONFIG_FILE, self.model_dir / MODEL_WEIGHTS_FILE):
            if not needed.is_file():
                raise ConfigError(f"{run_dir}: not a trained run dir ({needed} is missing)")
        if not (run_dir / TRAIN_CONFIG_FILE).is_file():
            raise ConfigError(
                f"{run_dir}: no {TRAIN_CONFIG_FILE}; a bundle must say how its features were made"
            )
        self.config = read_json_object(run_dir / TRAIN_CONFIG_FILE)
        found = read_features_meta(run_dir)
        assert found is not None  # train_config.json exists, so it names a store or raises
        self.features_meta = found[0]
        self.architecture = str(
            read_json_object(self.model_dir / MODEL_CONFIG_FILE).get("model_type", "unknown")
        )


def _member_names(runs: Sequence[Path]) -> list[str]:
    """Run dir names made safe for a folder and unique (``run``, ``run-2``, ...)."""
    names: list[str] = []
    for run in runs:
        base = re.sub(r"[^A-Za-z0-9._#-]", "_", run.resolve().name).lstrip("._-#")[:100] or "run"
        name, k = base, 2
        while name in names:
            name, k = f"{base}-{k}", k + 1
        names.append(name)
    return names


def _family_of(run_name: str, families: dict[str, list[str]]) -> str | None:
    """The family listing a model named like the run, else the family named like it, else the longest
    family name the run's name starts with (pipeline runs are ``<family><seed>-<split>-<hash>``)."""
    for family, models in families.items():
        if run_name in models:
            return family
    if run_name in families:
        return run_name
    prefixes = [family for family in families if run_name.startswith(family)]
    return max(prefixes, key=len) if prefixes else None


def ensemble_weights(ens_dir: Path, run_names: Sequence[str]) -> tuple[list[float], EnsembleRecord]:
    """Each run's weight under the ensemble in ``ens_dir``; only weighted-mean (SX) blends can be exported."""
    path = ens_dir / ENSEMBLE_WEIGHTS_FILE
    if not path.is_file():
        raise ConfigError(f"{ens_dir}: no {ENSEMBLE_WEIGHTS_FILE} (not a `memeguard ensemble` output)")
    from memeguard.serving.scorer import read_json_object

    record = read_json_object(path)
    final = record.get("final") if isinstance(record.get("final"), dict) else {}
    method, blend = record.get("method"), final.get("blend")
    if blend != _BLENDABLE:
        raise ConfigError(
            f"{path}: method {method!r} (final blend {blend!r}) normalises or ranks a whole split, so it "
            "cannot score a single meme; export without --ensemble (equal weights) or refit it with "
            "`memeguard ensemble --method simplex`"
        )
    families, family_weights = record.get("families"), final.get("weights")
    if not isinstance(families, dict) or not isinstance(family_weights, dict):
        raise ConfigError(f"{path}: expected 'families' and 'final.weights' objects")
    owner = {name: _family_of(name, families) for name in run_names}
    unmatched = [name for name, family in owner.items() if family is None]
    if unmatched:
        raise ConfigError(f"{path}: runs {unmatched} belong to none of its families {sorted(families)}")
    counts = {family: list(owner.values()).count(family) for family in families}
    missing = [f for f, w in family_weights.items() if float(w) > 0 and counts.get(f, 0) == 0]
    if missing:
        raise ConfigError(f"{path}: families {missing} carry weight but none of the given runs is theirs")
    weights = [float(family_weights.get(owner[name], 0.0)) / counts[owner[name]] for name in run_names]
    if sum(weights) <= 0:
        raise ConfigError(f"{path}: the given runs all have weight 0 in this ensemble")
    kept = {f: [str(m) for m in models] for f, models in families.items()}
    return weights, EnsembleRecord(
        method=str(method), families=kept, family_weights={f: float(w) for f, w in family_weights.items()}
    )


def _mean_predictions(files: Sequence[Path], weights: Sequence[float]) -> Predictions:
    """The weighted mean of several runs' predictions of one split, aligned on the first file's ids."""
    first = read_predictions(files[0])
    total = np.zeros(len(first), dtype=np.float64)
    for path, weight in zip(files, weights, strict=True):
        total += weight * align_predictions(read_predictions(path), first.ids, str(path)).proba
    proba = total / float(sum(weights))
    return Predictions(first.ids, proba, (proba >= 0.5).astype(np.int64))


def _split_predictions(
    split: str, runs: Sequence[_Run], weights: Sequence[float], ens_dir: Path | None
) -> Predictions | None:
    """``split``'s scores: the ensemble's FIN file or the runs' weighted mean; None when they are absent."""
    if ens_dir is not None:
        path = ens_dir / fin_file(split)
        return read_predictions(path) if path.is_file() else None
    files = [run.dir / prediction_file(split) for run in runs]
    if not all(path.is_file() for path in files):
        return None
    return _mean_predictions(files, weights)


def _resolve_data_dir(run: _Run) -> Path | None:
    """The data folder the run's config records, tried relative to the cwd, the run dir and its parent."""
    recorded = run.config.get("data_dir")
    if not recorded:
        return None
    path = Path(str(recorded))
    candidates = [path] if path.is_absolute() else [path, run.dir / path, run.dir.parent / path]
    return next((c for c in candidates if (c / split_file(DEV_SEEN)).is_file()), None)


def _labelled(data_dir: Path, split: str, preds: Predictions) -> np.ndarray | None:
    """Ground-truth labels of ``preds``' ids from ``data_dir/<split>.jsonl``, or None if not all labelled."""
    from memeguard.data.hm import load_jsonl

    path = data_dir / split_file(split)
    if not path.is_file():
        return None
    labels = {meme.id: meme.label for meme in load_jsonl(path)}
    values = [labels.get(int(i)) for i in preds.ids]
    if any(v is None for v in values) or len(set(values)) < 2:
        return None
    return np.asarray(values, dtype=np.int64)


def _is_synthetic(data_dir: Path) -> bool:
    """Labels made by ``memeguard data synth``, directly or via ``data clean`` (whose report names it)."""
    if (data_dir / SYNTH_META_FILE).is_file():
        return True
    from memeguard.serving.scorer import read_json_object

    report = data_dir / CLEANING_REPORT_FILE
    source = read_json_object(report).get("data_dir") if report.is_file() else None
    return bool(source) and (Path(str(source)) / SYNTH_META_FILE).is_file()


def _dev_scores(
    runs: Sequence[_Run], weights: Sequence[float], ens_dir: Path | None, dev_predictions: Path | None
) -> Predictions:
    if dev_predictions is not None:
        return read_predictions(dev_predictions)
    found = _split_predictions(DEV_SEEN, runs, weights, ens_dir)
    if found is None:
        where = (
            ens_dir / fin_file(DEV_SEEN)
            if ens_dir is not None
            else "each RUN_DIR/" + prediction_file(DEV_SEEN)
        )
        raise ConfigError(
            f"no {DEV_SEEN} predictions to choose the operating point on (looked for {where}); "
            "pass --dev-predictions CSV"
        )
    return found


def _prepare_out(out: Path) -> None:
    """Refuse a non-empty ``out`` that is not a bundle (export replaces only what it wrote)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not is_bundle(out):
        raise ConfigError(f"{out}: not empty and not a memeguard bundle; refusing to write into it")


def _copy_member(run: _Run, target: Path) -> None:
    (target / MODEL_DIR).mkdir(parents=True)
    for item in sorted(run.model_dir.iterdir()):
        if item.is_file():
            shutil.copyfile(item, target / MODEL_DIR / item.name)
    shutil.copyfile(run.dir / TRAIN_CONFIG_FILE, target / TRAIN_CONFIG_FILE)
    write_json_atomic(target / FEATURES_META_FILE, run.features_meta)


def _export_member_onnx(model_dir: Path) -> None:
    """``model.onnx`` next to the member's weights: its forward as the graph ``score``/``serve`` will run."""
    from memeguard.models.fast import export_onnx
    from memeguard.training.build import load_model_dir

    export_onnx(load_model_dir(model_dir), model_dir / ONNX_MODEL_FILE)


def _file_list(root: Path) -> list[BundleFile]:
    return [
        BundleFile(
            path=path.relative_to(root).as_posix(), bytes=path.stat().st_size, sha256=file_sha256(path)
        )
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.name != MANIFEST_FILE
    ]


def _swap_into_place(staging: Path, out: Path) -> None:
    """Rename the finished folder onto ``out``; an older bundle there is moved aside first, then removed."""
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    if not out.exists():
        os.rename(staging, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
    old.rmdir()
    os.rename(out, old)
    os.rename(staging, out)
    shutil.rmtree(old, ignore_errors=True)


def _split_metrics(
    runs: Sequence[_Run],
    weights: Sequence[float],
    ens_dir: Path | None,
    data_dir: Path | None,
    threshold: float,
) -> dict[str, dict[str, float | int | None]]:
    """AUROC, accuracy, precision and recall at the operating point on every labelled split with scores."""
    metrics: dict[str, dict[str, float | int | None]] = {}
    if data_dir is None:
        return metrics
    for split in REPORT_SPLITS:
        preds = _split_predictions(split, runs, weights, ens_dir)
        labels = _labelled(data_dir, split, preds) if preds is not None else None
        if preds is not None and labels is not None:
            metrics[split] = dev_metrics(labels, preds.proba, threshold).model_dump()
    return metrics


def _operating_point(
    runs: Sequence[_Run],
    weights: Sequence[float],
    ens_dir: Path | None,
    labels_dir: Path,
    rule: str,
    target: float | None,
    dev_predictions: Path | None,
) -> tuple[OperatingPoint, dict[str, dict[str, float | int | None]]]:
    """The operating point chosen on the dev scores, and the metrics at it on every labelled split."""
    dev = _dev_scores(runs, weights, ens_dir, dev_predictions)
    dev_labels = _labelled(labels_dir, DEV_SEEN, dev)
    if dev_labels is None:
        raise ConfigError(
            f"{labels_dir / split_file(DEV_SEEN)}: missing, or does not label every dev prediction "
            "with both classes present"
        )
    point = choose_operating_point(dev_labels, dev.proba, rule, target)
    metrics = _split_metrics(runs, weights, ens_dir, labels_dir, point.threshold)
    if dev_predictions is not None and point.dev is not None:  # the scores the point was chosen on
        metrics[DEV_SEEN] = point.dev.model_dump()
    return point, metrics


def _write_bundle(
    staging: Path, runs: Sequence[_Run], draft: BundleManifest, ens_dir: Path | None, labels_dir: Path
) -> BundleManifest:
    """Fill ``staging`` with the members, ensemble record and card, then the manifest that hashes them."""
    from memeguard.serving.model_card import model_card

    for member, run in zip(draft.members, runs, strict=True):
        _copy_member(run, member_dir(staging, member))
        if draft.optimize == "onnx":
            _export_member_onnx(member_dir(staging, member) / MODEL_DIR)
    if ens_dir is not None:
        (staging / ENSEMBLE_DIR).mkdir()
        shutil.copyfile(ens_dir / ENSEMBLE_WEIGHTS_FILE, staging / ENSEMBLE_DIR / ENSEMBLE_WEIGHTS_FILE)
    configs, metas = [run.config for run in runs], [run.features_meta for run in runs]
    card = model_card(draft, configs, metas, synthetic=_is_synthetic(labels_dir))
    write_text_atomic(staging / MODEL_CARD_FILE, card)
    manifest = draft.model_copy(update={"files": _file_list(staging)})
    write_json_atomic(staging / MANIFEST_FILE, manifest.model_dump(mode="json"))
    return manifest


def export_bundle(
    run_dirs: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    ensemble: str | os.PathLike[str] | None = None,
    rule: str = "accuracy",
    target: float | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    dev_predictions: str | os.PathLike[str] | None = None,
    optimize: str = "fp32",
) -> BundleManifest:
    """Write a bundle of ``run_dirs`` (weights from ``ensemble``) to ``out``, atomically.

    ``optimize`` (``fp32``, ``int8``, ``onnx``; see :mod:`memeguard.models.fast`) is how ``score``/``serve``
    will run the members; ``onnx`` exports each member's graph into the bundle now.

    The operating point is chosen by ``rule`` (``accuracy``, ``precision``, ``recall`` or ``fixed``) on the
    dev_seen scores (``dev_predictions``, else the ensemble's ``FIN_dev_seen.csv``, else the runs' weighted
    ``dev_seen.csv``) against the labels of ``data_dir/dev_seen.jsonl`` (default: the first run's data dir).
    Everything is checked before the first byte is written; the bundle appears under ``out`` whole or not.
    """
    from memeguard.models.fast import check_optimization

    if not run_dirs:
        raise ConfigError("give at least one RUN_DIR to export")
    check_optimization(optimize)
    out = Path(out)
    _prepare_out(out)
    runs = [_Run(Path(run)) for run in run_dirs]
    names = _member_names([run.dir for run in runs])
    ens_dir = Path(ensemble) if ensemble is not None else None
    weights, ens_record = (
        ensemble_weights(ens_dir, names) if ens_dir is not None else ([1.0] * len(runs), None)
    )
    labels_dir = Path(data_dir) if data_dir is not None else _resolve_data_dir(runs[0])
    if labels_dir is None:
        raise ConfigError(
            f"{runs[0].dir}: its recorded data_dir has no {split_file(DEV_SEEN)} here; pass --data-dir"
        )
    dev_file = Path(dev_predictions) if dev_predictions is not None else None
    point, metrics = _operating_point(runs, weights, ens_dir, labels_dir, rule, target, dev_file)
    draft = BundleManifest(
        format=BUNDLE_FORMAT,
        version=BUNDLE_VERSION,
        memeguard_version=__version__,
        members=[
            BundleMember(
                name=name, weight=w, architecture=run.architecture, source_run=run.dir.resolve().name
            )
            for name, w, run in zip(names, weights, runs, strict=True)
        ],
        operating_point=point,
        ensemble=ens_record,
        metrics=metrics,
        optimize=optimize,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp.", dir=out.parent))
    try:
        manifest = _write_bundle(staging, runs, draft, ens_dir, labels_dir)
        _swap_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest
