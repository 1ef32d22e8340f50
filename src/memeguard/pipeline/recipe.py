"""The recipe: one YAML file that lists feature sets, model families and the ensemble (torchtune-style).

A recipe is validated completely at load time: an unknown key, a wrong type, a missing file or an
impossible combination (a model on an undefined feature set, inference-only without checkpoints ...)
is a :class:`ConfigError` that names the recipe file and the offending line.

Shape::

    name: demo
    clean: true                      # run vilio's cleaning first (train_clean / traindev / pretrain)
    features:                        # feature set name -> how to get it (exactly one source)
      grid: {extractor: grid}
      vgattr36: {extractor: butd, weights: weights/faster_rcnn_from_caffe_attr.pkl, boxes: "36"}
      vg50: {import_tsv: features/hm_vg5050.tsv}
      lmdb: {import_lmdb: features/detectron.lmdb}
    models:                          # one entry per family; its runs are seed-averaged
      - name: V
        model: visualbert-base       # a registered model name (``architecture:``, its old name, still works)
        init: weights/model.pth      # original checkpoint or our model dir (optional)
        pretrain: {epochs: 8, lr: 0.5e-5, itm: false}   # task pretraining per run (optional)
        train: {lr: 1e-5, epochs: 5, swa: torch, head_lr_mult: 500}
        runs:                        # or the shorthand `seeds: [...]` + `features: name`
          - {seed: 45, features: lmdb}
          - {seed: 90, features: lmdb, checkpoints: {train: LASTtrain.pth, traindev: LASTtraindev.pth}}
    ensemble: {method: loop}         # or mean, power, rank, simplex, coordinate (vilio's sa, pa, ra, sx)

Relative paths are resolved against the recipe's folder, then the working directory. Any field can be
overridden from the command line (``memeguard run RECIPE models.V.train.lr=1e-4``): see
:func:`apply_overrides`.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from memeguard.data.text import check_text
from memeguard.ensemble.method_names import COORDINATE, LOOP, METHODS, SIMPLEX, canonical_method
from memeguard.errors import ConfigError, DataError

# ``ENSEMBLE_METHODS`` (0.1's name) lists the readable names; vilio's aliases are accepted too.
ENSEMBLE_METHODS = METHODS
# The blends whose final scores are a weighted mean of the families: the only teachers a student can
# distil from (rank, power and loop blends score a meme against a whole split).
WEIGHTED_MEAN_METHODS: tuple[str, ...] = (SIMPLEX, COORDINATE)
DEPRECATED_MODEL_KEY = "architecture"  # ``models[].model``'s name in memeguard 0.1

# The one pattern for every recipe name that becomes a path component (the recipe, feature sets, model
# families, runs): no separator, no leading dot, so no name can lead outside ``--out``.
PATH_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def _path_name(name: str) -> str:
    if not PATH_NAME_PATTERN.fullmatch(name):
        raise ValueError(
            f"{name!r} is used as a folder name: give 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


PathName = Annotated[str, AfterValidator(_path_name)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class FeatureSetSpec(_Strict):
    """One feature store: extracted by a registered extractor (``memeguard.features.factory``) or imported.

    The extractor's own class checks its options here, at load time: whether it takes weights and box
    variants, and its typed ``params``.
    """

    extractor: str | None = None  # a registered extractor name: grid, butd, clip ...
    weights: str | None = None  # the extractor's weights: BUTD weight file, CLIP model folder ...
    boxes: str | None = None  # one variant of an extractor whose variants share a pass: BUTD "36", "10-100"
    params: dict[str, Any] = Field(default_factory=dict)  # the extractor's typed parameters
    import_tsv: str | None = None
    import_lmdb: str | None = None
    store: str | None = None  # an existing memeguard feature store
    dtype: Literal["float16", "float32"] = "float16"

    @field_validator("extractor")
    @classmethod
    def _registered(cls, name: str | None) -> str | None:
        from memeguard.features.factory import extractor_names, is_registered

        if name is not None and not is_registered(name):
            raise ValueError(f"unknown extractor {name!r}; choose one of {', '.join(extractor_names())}")
        return name

    @model_validator(mode="after")
    def _one_source(self) -> FeatureSetSpec:
        sources = [s for s in (self.extractor, self.import_tsv, self.import_lmdb, self.store) if s]
        if len(sources) != 1:
            raise ValueError("give exactly one of extractor, import_tsv, import_lmdb, store")
        if self.extractor:
            self._check_extractor_options()
        elif self.weights or self.boxes or self.params:
            raise ValueError("weights, boxes and params go with extractor")
        return self

    def _check_extractor_options(self) -> None:
        from memeguard.features.factory import extractor_class

        try:
            variants, _ = extractor_class(self.extractor).check_options(self.weights, self.boxes, self.params)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        if variants is not None:
            if len(variants) != 1:
                raise ValueError(
                    f"a feature set is one store: give one box variant, not {self.boxes!r} (list one feature "
                    "set per variant; those with the same weights share one pass)"
                )
            self.boxes = variants[0]

    @property
    def source(self) -> str:
        return (
            "extract"
            if self.extractor
            else "tsv"
            if self.import_tsv
            else "lmdb"
            if self.import_lmdb
            else "store"
        )


class CheckpointPair(_Strict):
    """Fine-tuned weights of one run: ``train`` predicts dev_seen, ``traindev`` predicts the test splits."""

    train: str
    traindev: str


class RunSpec(_Strict):
    seed: int = 42
    features: str | None = None  # defaults to the family's
    name: PathName | None = None  # defaults to <family><seed>
    checkpoints: CheckpointPair | None = None


class ModelSpec(_Strict):
    name: PathName
    model: str  # a registered model name (``memeguard.models.list_models()``)
    features: str | None = None
    seeds: list[int] | None = None
    runs: list[RunSpec] | None = None
    init: str | None = None
    overrides: dict[str, Any] = Field(default_factory=dict)
    pretrain: dict[str, Any] | None = None
    train: dict[str, Any] = Field(default_factory=dict)
    enabled: bool = True  # vilio's "additional models not used" (D, X) ship disabled

    @model_validator(mode="before")
    @classmethod
    def _deprecated_key(cls, data: Any) -> Any:
        """``architecture:`` is accepted as the deprecated name of ``model:`` (recipes written for 0.1)."""
        if isinstance(data, dict) and DEPRECATED_MODEL_KEY in data:
            if "model" in data:
                raise ValueError(f"give model or {DEPRECATED_MODEL_KEY} (its deprecated name), not both")
            data = {("model" if key == DEPRECATED_MODEL_KEY else key): value for key, value in data.items()}
        return data

    @property
    def architecture(self) -> str:
        """Deprecated name of :attr:`model`, kept for code written against memeguard 0.1."""
        return self.model

    @model_validator(mode="after")
    def _runs(self) -> ModelSpec:
        if self.runs and self.seeds:
            raise ValueError("give either runs or seeds, not both")
        if not self.runs:
            if not self.features:
                raise ValueError("features is required when runs are not listed")
            self.runs = [RunSpec(seed=seed) for seed in (self.seeds or [42])]
        for run in self.runs:
            run.features = run.features or self.features
            if not run.features:
                raise ValueError(f"run with seed {run.seed} has no features")
            run.name = run.name or _path_name(f"{self.name}{run.seed}")
        names = [run.name for run in self.runs]
        if len(set(names)) != len(names):
            raise ValueError(f"run names must be unique within a model, got {names}")
        return self


class EnsembleSpec(_Strict):
    method: str = LOOP  # one of ``ENSEMBLE_METHODS``; vilio's sa, pa, ra, sx and 0.1's opt are aliases
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("method")
    @classmethod
    def _readable_name(cls, method: str) -> str:
        try:
            return canonical_method(method)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None


class DistillSpec(_Strict):
    """The optional ``distill:`` stage after the ensemble: one student trained on the ensemble's
    probabilities (``pipeline/distill.py``). ``train`` holds ``TrainConfig`` fields (``distill_temperature``,
    ``distill_alpha``, ``lr``, ``epochs`` ...); ``extra`` lists Hateful-Memes-layout folders of unlabelled
    memes whose features are in the feature set's store."""

    name: PathName = "student"
    model: str
    features: str
    seed: int = 42
    overrides: dict[str, Any] = Field(default_factory=dict)
    train: dict[str, Any] = Field(default_factory=dict)
    extra: list[str] = Field(default_factory=list)
    enabled: bool = True


class Recipe(_Strict):
    name: PathName = "recipe"
    clean: bool = True
    features: dict[PathName, FeatureSetSpec]
    models: list[ModelSpec]
    ensemble: EnsembleSpec = Field(default_factory=EnsembleSpec)
    distill: DistillSpec | None = None
    source: str | None = None  # filled by load_recipe
    command_line: list[str] = Field(default_factory=list)  # filled by load_recipe: the key=value overrides

    @model_validator(mode="after")
    def _references(self) -> Recipe:
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique, got {names}")
        for index, model in enumerate(self.models):
            for run in model.runs or []:
                if run.features not in self.features:
                    raise ValueError(
                        f"models[{index}] ({model.name}): feature set {run.features!r} is not defined "
                        f"(defined: {', '.join(self.features)})"
                    )
        if not any(m.enabled for m in self.models):
            raise ValueError("no enabled model")
        if self.distill is not None and self.distill.enabled:
            self._check_distill(self.distill)
        return self

    def _check_distill(self, spec: DistillSpec) -> None:
        if spec.features not in self.features:
            raise ValueError(
                f"distill: feature set {spec.features!r} is not defined (defined: {', '.join(self.features)})"
            )
        if self.ensemble.method not in WEIGHTED_MEAN_METHODS:
            raise ValueError(
                f"distill: the teacher must score single memes, so ensemble.method must be one of "
                f"{', '.join(WEIGHTED_MEAN_METHODS)} (a weighted mean), not {self.ensemble.method!r}"
            )

    @property
    def enabled_models(self) -> list[ModelSpec]:
        return [m for m in self.models if m.enabled]


def _line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the YAML node at pydantic location ``loc`` (deepest node found)."""
    line = None
    for part in loc:
        if node is None:
            break
        line = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            node = next((value for key, value in node.value if key.value == part), None)
            if node is None:
                # an unknown key: point at the key itself
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            break
    if node is not None:
        line = node.start_mark.line + 1
    return line


def _key_line(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """For an 'extra key' error the last loc part is the unknown key: find its line."""
    parent = node
    for part in loc[:-1]:
        if isinstance(parent, yaml.MappingNode):
            parent = next((v for k, v in parent.value if k.value == part), None)
        elif isinstance(parent, yaml.SequenceNode) and isinstance(part, int) and part < len(parent.value):
            parent = parent.value[part]
        else:
            return None
    if isinstance(parent, yaml.MappingNode):
        for key, _ in parent.value:
            if key.value == loc[-1]:
                return key.start_mark.line + 1
    return None


def _resolve(path: str, base: Path) -> str:
    candidate = Path(os.path.expandvars(os.path.expanduser(path)))
    if candidate.is_absolute():
        return str(candidate)
    near_recipe = base / candidate
    return str(near_recipe if near_recipe.exists() or not candidate.exists() else candidate.resolve())


def _check_paths(recipe: Recipe, base: Path, inference_only: bool, where: str) -> None:
    """Resolve relative paths and require every referenced file to exist."""
    problems: list[str] = []

    def need(label: str, value: str | None) -> str | None:
        if value is None:
            return None
        resolved = _resolve(value, base)
        if not Path(resolved).exists():
            problems.append(f"{label}: {value} does not exist")
        return resolved

    for name, spec in recipe.features.items():
        spec.weights = need(f"features.{name}.weights", spec.weights) if spec.weights else None
        spec.import_tsv = need(f"features.{name}.import_tsv", spec.import_tsv)
        spec.import_lmdb = need(f"features.{name}.import_lmdb", spec.import_lmdb)
        spec.store = need(f"features.{name}.store", spec.store)
    for model in recipe.enabled_models:
        if not inference_only:
            model.init = need(f"model {model.name}: init", model.init)
        for run in model.runs or []:
            if inference_only:
                if run.checkpoints is None:
                    problems.append(f"model {model.name}, run {run.name}: --inference-only needs checkpoints")
                    continue
                run.checkpoints.train = need(f"{run.name}: checkpoints.train", run.checkpoints.train) or ""
                run.checkpoints.traindev = (
                    need(f"{run.name}: checkpoints.traindev", run.checkpoints.traindev) or ""
                )
    if recipe.distill is not None and recipe.distill.enabled:
        recipe.distill.extra = [need("distill.extra", extra) or "" for extra in recipe.distill.extra]
    if problems:
        raise ConfigError(f"{where}: " + "; ".join(problems))


def _check_model_names(recipe: Recipe, document: yaml.Node, where: str) -> None:
    from memeguard.models.registry import list_models

    known = set(list_models())
    for index, model in enumerate(recipe.models):
        if model.model not in known:
            key = "model" if _key_line(document, ("models", index, "model")) else DEPRECATED_MODEL_KEY
            line = _line_of(document, ("models", index, key))
            raise ConfigError(
                f"{where}:{line}: unknown architecture {model.model!r} in models[{index}].{key} "
                f"(known: {', '.join(sorted(known))})"
            )


# Keys the runner sets itself for each run; in a recipe's train/pretrain section they would collide.
_RUNNER_KEYS = {"model", "features", "data_dir", "out_dir", "seed", "init", "model_overrides"}
_RUNNER_TRAIN_KEYS = {"train_split", "predict_splits", "device", "limit", "progress"}
_RUNNER_PRETRAIN_KEYS = {"device", "limit", "progress"}


def _check_stage_params(recipe: Recipe, document: yaml.Node, where: str) -> None:
    """Every stage's config is built now, as the runner will build it, so a bad value fails at load
    time with its line, not after the clean and feature stages have run for hours."""
    from memeguard.training.config import PretrainConfig, TrainConfig

    sections = (
        ("train", TrainConfig, TrainConfig.accepted_keys() - _RUNNER_KEYS - _RUNNER_TRAIN_KEYS),
        ("pretrain", PretrainConfig, PretrainConfig.accepted_keys() - _RUNNER_KEYS - _RUNNER_PRETRAIN_KEYS),
    )
    for index, model in enumerate(recipe.models):
        for section, config_cls, allowed in sections:
            params = getattr(model, section)
            if params is None:
                continue
            for key in params:
                if key not in allowed:
                    line = _key_line(document, ("models", index, section, key))
                    raise ConfigError(f"{where}:{line}: models[{index}].{section}: unknown key {key!r}")
            placeholders = {"model": model.model, "features": ".", "data_dir": ".", "out_dir": "."}
            if section == "train":
                placeholders["eval_split"] = "dev_seen"  # what the runner passes unless train sets it
            _check_run_config(config_cls, placeholders, params, ("models", index, section), document, where)
        _check_model_overrides(model, index, document, where)
    if recipe.distill is not None and recipe.distill.enabled:
        _check_distill_params(recipe.distill, document, where)


# Keys the distill stage sets itself (the distillation set and the teacher's targets).
_DISTILL_KEYS = {"train_split", "unlabelled", "soft_targets", "device", "limit", "progress"}


def _check_distill_params(spec: DistillSpec, document: yaml.Node, where: str) -> None:
    """The student's model name, train keys and overrides, checked like a model entry's."""
    from memeguard.models.registry import get_config, list_models
    from memeguard.training.config import TrainConfig

    if spec.model not in set(list_models()):
        line = _line_of(document, ("distill", "model"))
        raise ConfigError(f"{where}:{line}: unknown architecture {spec.model!r} in distill.model")
    allowed = TrainConfig.accepted_keys() - _RUNNER_KEYS - _DISTILL_KEYS
    for key in spec.train:
        if key not in allowed:
            line = _key_line(document, ("distill", "train", key))
            raise ConfigError(f"{where}:{line}: distill.train: unknown key {key!r}")
    placeholders = {
        "model": spec.model,
        "features": ".",
        "data_dir": ".",
        "out_dir": ".",
        "soft_targets": "t.csv",
    }
    try:
        TrainConfig(**{**placeholders, **spec.train})
    except ConfigError as exc:
        raise ConfigError(
            f"{where}:{_line_of(document, ('distill', 'train'))}: distill.train: {exc}"
        ) from None
    for key, value in spec.overrides.items():
        try:
            get_config(spec.model, **{key: value})
        except ConfigError as exc:
            line = _line_of(document, ("distill", "overrides", key))
            raise ConfigError(f"{where}:{line}: distill.overrides.{key}: {exc}") from None


def _check_run_config(
    config_cls: Any,
    placeholders: dict[str, Any],
    params: dict[str, Any],
    loc: tuple[Any, ...],
    document: yaml.Node,
    where: str,
) -> None:
    """Build ``config_cls`` from placeholder paths + ``params``; an error names the first bad key's line."""
    try:
        config_cls(**{**placeholders, **params})
    except ConfigError as exc:
        bad_key = next(
            (key for key in params if not _accepts(config_cls, placeholders, key, params[key])), None
        )
        line = _line_of(document, (*loc, bad_key) if bad_key is not None else loc)
        raise ConfigError(f"{where}:{line}: {loc[0]}[{loc[1]}].{loc[2]}: {exc}") from None


def _accepts(config_cls: Any, placeholders: dict[str, Any], key: str, value: Any) -> bool:
    try:
        config_cls(**{**placeholders, key: value})
    except ConfigError:
        return False
    return True


def _check_model_overrides(model: ModelSpec, index: int, document: yaml.Node, where: str) -> None:
    """Each override against the model's own config (type and name), as ``build_model`` applies it."""
    from memeguard.models.registry import get_config

    for key, value in model.overrides.items():
        try:
            get_config(model.model, **{key: value})
        except ConfigError as exc:
            line = _line_of(document, ("models", index, "overrides", key))
            raise ConfigError(f"{where}:{line}: models[{index}].overrides.{key}: {exc}") from None


def _check_text(document: yaml.Node, where: str) -> None:
    """Refuse a lone surrogate (``"\\ud800"``, valid YAML) in any string: it cannot be written as UTF-8."""
    pending = [document]
    while pending:
        node = pending.pop()
        if isinstance(node, yaml.ScalarNode):
            if isinstance(node.value, str) and _has_lone_surrogate(node.value):
                raise ConfigError(
                    f"{where}:{node.start_mark.line + 1}: {node.value!r} contains a lone surrogate "
                    "(not encodable text)"
                )
        elif isinstance(node, yaml.MappingNode):
            pending.extend(part for pair in node.value for part in pair)
        elif isinstance(node, yaml.SequenceNode):
            pending.extend(node.value)


def _strings_in(value: Any) -> list[str]:
    """Every string in a parsed YAML value (keys included)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [text for pair in value.items() for part in pair for text in _strings_in(part)]
    if isinstance(value, list):
        return [text for part in value for text in _strings_in(part)]
    return []


def _has_lone_surrogate(text: str) -> bool:
    """The rule of :func:`memeguard.data.text.check_text`, the gate every user text passes."""
    try:
        check_text(text, "recipe", max_chars=len(text))
    except DataError:
        return True
    return False


# -- command-line overrides ---------------------------------------------------------------------------
_EXPONENT_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)[eE][-+]?[0-9]+")


def _parse_override(item: str) -> tuple[list[str], Any]:
    """``"models.V.train.lr=1e-4"`` -> (``["models", "V", "train", "lr"]``, ``1e-4``): the value is YAML."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip() or any(not part for part in key.strip().split(".")):
        raise ConfigError(
            f"command line: {item!r}: an override is key.path=value, e.g. models.0.train.epochs=3"
        )
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", exc)
        raise ConfigError(f"command line: {key}: invalid YAML value {text!r} ({problem})") from None
    if any(_has_lone_surrogate(text) for text in (item, *_strings_in(value))):
        raise ConfigError(f"command line: {key}: the value contains a lone surrogate (not encodable text)")
    if isinstance(value, str) and value == text.strip() and _EXPONENT_FLOAT.fullmatch(value):
        value = float(value)  # PyYAML reads YAML 1.1, where 1e-4 (no dot) is a string; YAML 1.2 a number
    return key.strip().split("."), value


def _child(node: Any, part: str, key: str) -> tuple[Any, Any]:
    """The container ``node`` and the index in it that ``part`` names (a list entry by position or name)."""
    if isinstance(node, dict):
        return node, part
    if isinstance(node, list):
        if re.fullmatch(r"-?\d+", part):
            if not -len(node) <= int(part) < len(node):
                raise ConfigError(f"command line: {key}: index {part} out of range ({len(node)} entries)")
            return node, int(part)
        names = [entry.get("name") for entry in node if isinstance(entry, dict)]
        if part not in names:
            known = ", ".join(map(str, names))
            raise ConfigError(f"command line: {key}: no entry named {part!r} (names: {known})")
        return node, names.index(part)
    raise ConfigError(f"command line: {key}: {part!r} is inside a value that is not a mapping or a list")


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of the parsed recipe ``data`` with each ``key.path=value`` set (torchtune's overrides).

    Parts are mapping keys, list positions (``models.0``) or, in a list of named entries, a name
    (``models.V``); missing mappings on the way are created (``ensemble.params.test_labels=rate``).
    ``models.<m>.architecture`` sets ``model``, its new name. The result is validated like the file.
    """
    data = copy.deepcopy(data)
    for item in overrides:
        parts, value = _parse_override(item)
        key = ".".join(parts)
        if len(parts) == 3 and parts[0] == "models" and parts[2] == DEPRECATED_MODEL_KEY:
            parts[2] = "model"
        node: Any = data
        for depth, part in enumerate(parts):
            container, index = _child(node, part, key)
            if depth == len(parts) - 1:
                container[index] = value
            else:
                if isinstance(container, dict) and container.get(index) is None:
                    container[index] = {}
                node = container[index]
    return data


def _rename_deprecated_keys(data: dict[str, Any], document: yaml.Node, where: str) -> None:
    """``architecture:`` -> ``model:`` in every model entry; both in one entry is an error at its line."""
    for index, entry in enumerate(data.get("models") or []):
        if isinstance(entry, dict) and DEPRECATED_MODEL_KEY in entry:
            if "model" in entry:
                line = _key_line(document, ("models", index, DEPRECATED_MODEL_KEY))
                raise ConfigError(
                    f"{where}:{line}: models[{index}]: give model or {DEPRECATED_MODEL_KEY} "
                    f"(its deprecated name), not both"
                )
            entry["model"] = entry.pop(DEPRECATED_MODEL_KEY)


def _read_recipe_file(path: Path) -> tuple[yaml.Node, dict[str, Any]]:
    if not path.is_file():
        raise ConfigError(f"{path}: recipe not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); save the recipe as UTF-8") from None
    try:
        document = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{line}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe is a YAML mapping")
    _check_text(document, str(path))
    return document, data


def _validate(
    data: dict[str, Any], document: yaml.Node, path: Path, *, inference_only: bool, check_models: bool
) -> Recipe:
    """Build the recipe from parsed ``data``; every error names the file and the line in ``document``."""
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = tuple(first["loc"])
        if first["type"] == "extra_forbidden":
            line = _key_line(document, loc)
        elif loc and loc[-1] == "[key]":  # a mapping key that fails its own check (a feature set name)
            line = _key_line(document, loc[:-1])
        else:
            line = _line_of(document, loc)
        field = ".".join(str(p) for p in loc) or "recipe"
        raise ConfigError(f"{path}:{line}: {field}: {first['msg']}") from None
    recipe.source = str(path)
    if check_models:
        _check_model_names(recipe, document, str(path))
        _check_stage_params(recipe, document, str(path))
    _check_paths(recipe, path.parent.resolve(), inference_only, str(path))
    return recipe


def load_recipe(
    path: str | os.PathLike[str],
    *,
    inference_only: bool = False,
    check_models: bool = True,
    overrides: Sequence[str] = (),
) -> Recipe:
    """Parse and validate a recipe file, with ``key.path=value`` ``overrides`` (see ``apply_overrides``).

    Every error names the file and line; an error that only the overrides cause says so instead (the
    file's line numbers would point at a value that is no longer used).
    """
    path = Path(path)
    document, data = _read_recipe_file(path)
    _rename_deprecated_keys(data, document, str(path))
    options = {"inference_only": inference_only, "check_models": check_models}
    if not overrides:
        return _validate(data, document, path, **options)
    try:
        recipe = _validate(apply_overrides(data, overrides), document, path, **options)
    except ConfigError as exc:
        _validate(data, document, path, **options)  # the file's own error, with its line, comes first
        detail = re.sub(rf"^{re.escape(str(path))}(:(\d+|None))?: ", "", str(exc))
        given = " ".join(overrides)
        raise ConfigError(f"{path}, overridden from the command line by {given}: {detail}") from None
    recipe.command_line = list(overrides)
    return recipe
