"""Training configurations: vilio's fine-tuning (``hm.py``) and task pretraining (``pretrain_bert*.py``) flags
as two pydantic models (the recipe's config system) that round-trip through ``train_config.json``.

The defaults are vilio's (lr 1e-5, batch 8, 5 epochs, eps 1e-6, clip 5.0, warmup 10%, summed loss, SWA from
75%); ``TINY_DEFAULTS`` holds the settings that make the ``*-tiny`` models learn on the synthetic set in a few
CPU minutes. Each field's ``description`` is also its ``--help`` text in ``memeguard train`` / ``pretrain``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, model_validator

from memeguard.errors import ConfigError
from memeguard.names import DEV_SEEN, DEV_UNSEEN, PRETRAIN, TRAIN_CLEAN, TRAINDEV

SwaMode = Literal["none", "torch", "contrib"]
Precision = Literal["fp32", "bf16", "fp16"]
Schedule = Literal["linear", "cosine"]
StandardizeMode = Literal["auto", "always", "never"]
TraindevInit = Literal["scratch", "train"]
# Knowledge distillation defaults (training/distill.py): T = 2 softens a confident teacher enough to pass on
# its ranking of the memes it is unsure about; alpha = 0.5 weighs labels and teacher alike.
DEFAULT_TEMPERATURE = 2.0
DEFAULT_ALPHA = 0.5
# A recipe model's traindev run (vilio's run b) starts from scratch unless ``traindev_init: train``; the
# pipeline reads these keys (pipeline/stages.py) and passes the runs the settings they make instead.
TRAINDEV_KEYS = ("traindev_init", "traindev_epochs", "traindev_lr")
DEFAULT_TRAINDEV_EPOCHS = 1
# Splits whose labels pick thresholds and weights: never distillation targets (phase-1 "dev" too).
DEV_SPLITS = frozenset({DEV_SEEN, DEV_UNSEEN, "dev", TRAINDEV})

# vilio's settings leave the from-scratch *-tiny models on the XOR plateau (measured: benchmarks/learning.py).
# ``model_overrides`` go to the model config; the rest are TrainConfig fields.
TINY_DEFAULTS: dict[str, Any] = {
    "lr": 1.5e-3,
    "epochs": 20,
    "batch_size": 16,
    "sum_loss": False,
    "clip": 1.0,
    "warmup_ratio": 0.1,
    "swa": "none",
    "eval_every": 0,
    "model_overrides": {
        "initializer_range": 0.1,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
    },
}


def _describe(config: type[RunConfig], error: Any) -> str:
    """One pydantic error as ``Config: key must be ...`` (pydantic says "Input should be ...")."""
    owner = config.__name__
    key = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        new_name = config.aliases().get(key)
        if new_name is not None:
            return f"{owner}: {key} is the old name of {new_name}; give only one of them"
        return f"{owner}: unknown key {key!r}"
    if error["type"] == "missing":
        return f"{owner}: {key} is required"
    message = str(error["msg"]).removeprefix("Value error, ").replace("Input should be", "must be")
    if error["type"] == "literal_error":
        message = f"must be one of {error['ctx']['expected']}"
    shown = f", got {error['input']!r}" if key else ""
    return f"{owner}: {key + ' ' if key else ''}{message}{shown}"


class RunConfig(BaseModel):
    """What both configs share: validation errors as one ``ConfigError`` line, the JSON round trip."""

    model_config = ConfigDict(extra="forbid")

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ConfigError(_describe(type(self), exc.errors()[0])) from None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values by field name (Path -> str, tuple -> list), in field order."""
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]):  # type: ignore[no-untyped-def]
        """``to_dict``'s inverse; also reads files that use the fields' old names (see :meth:`aliases`)."""
        return cls(**dict(data))

    def replace(self, **changes: Any):  # type: ignore[no-untyped-def]
        """A validated copy with ``changes`` (``dataclasses.replace`` of the former dataclasses)."""
        return type(self)(**{**dict(self), **self.canonical(changes)})

    @classmethod
    def aliases(cls) -> dict[str, str]:
        """Old key -> field name: keys still accepted from recipes, the CLI and saved configs."""
        out: dict[str, str] = {}
        for name, field in cls.model_fields.items():
            if isinstance(field.validation_alias, AliasChoices):
                out.update({str(c): name for c in field.validation_alias.choices if c != name})
        return out

    @classmethod
    def accepted_keys(cls) -> set[str]:
        return set(cls.model_fields) | set(cls.aliases())

    @classmethod
    def canonical(cls, data: Mapping[str, Any]) -> dict[str, Any]:
        """``data`` with old key names replaced by field names (to compare a saved config with a new one)."""
        aliases = cls.aliases()
        return {aliases.get(key, key): value for key, value in data.items()}


class TrainConfig(RunConfig):
    """One fine-tuning run (vilio's ``hm.py`` invocation).

    Run (a) of a vilio model: ``train_split="train_clean", predict_splits=("dev_seen",)``;
    run (b): ``train_split="traindev", predict_splits=("test_seen", "test_unseen")``.
    """

    model: str = Field(description="Registered model name, e.g. uniter-large or visualbert-tiny.")
    features: str | Path = Field(description="Feature store directory.")
    data_dir: str | Path = Field(description="Dataset directory (img/ + *.jsonl).")
    out_dir: str | Path = Field(description="Run directory.")
    train_split: str = Field(TRAIN_CLEAN, description="Training split (run a: train_clean, run b: traindev).")
    predict_splits: tuple[str, ...] = Field((DEV_SEEN,), description="Splits to predict (repeat the option).")
    eval_split: str | None = Field(
        DEV_SEEN, description="Evaluated every eval_every updates and at the end; 'none' to skip."
    )
    seed: int = Field(42, description="Seeds the model's init, dropout and the data order.")
    init: str | None = Field(
        None, description="Our model dir, a (pre)train run dir, or an original checkpoint."
    )
    model_overrides: dict[str, Any] = Field(
        default_factory=dict, description="Model config overrides, e.g. {'max_regions': 50}."
    )
    tokenizer: str | None = Field(None, description="Tokenizer; defaults to the model config's.")
    # optimisation (vilio's hm.py)
    epochs: int = Field(5, gt=0, description="Passes over the training split.")
    lr: float = Field(1e-5, gt=0, description="Peak learning rate of the backbone.")
    batch_size: int = Field(8, gt=0, description="Memes per batch (per rank under torchrun).")
    eval_batch_size: int = Field(50, gt=0, description="Memes per batch when evaluating and predicting.")
    grad_accum_steps: int = Field(
        1,
        gt=0,
        validation_alias=AliasChoices("grad_accum_steps", "acc"),
        description="Gradient accumulation: one update every N batches (old name: acc).",
    )
    clip: float = Field(5.0, description="Grad-norm clip (<= 0: off).")
    weight_decay: float = Field(0.0, description="AdamW weight decay (not on biases and LayerNorm weights).")
    adam_eps: float = Field(1e-6, gt=0, description="AdamW epsilon.")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="Share of the updates with a linear lr warmup.")
    sum_loss: bool = Field(
        True, description="vilio's loss x batch size / accumulation steps (--no-sum-loss: the mean)."
    )
    head_lr_mult: float = Field(
        1.0, gt=0, description="lr multiplier outside backbone_keywords (vilio's --reg: 500)."
    )
    backbone_keywords: tuple[str, ...] = Field(
        ("encoder", "embeddings", "pooler"), description="Parameter-name parts of the backbone."
    )
    swa: SwaMode = Field(
        "none",
        description="Weight averaging: torch (AveragedModel + SWALR) or contrib (torchcontrib's auto mode).",
    )
    swa_start: float = Field(0.75, ge=0, lt=1, description="Share of the updates before averaging starts.")
    swa_freq: int = Field(5, gt=0, description="contrib: average every N updates.")
    swa_lr: float | None = Field(None, description="SWA lr; default: the base lr, as vilio.")
    swa_anneal_steps: int = Field(
        10, description="torch: SWALR's anneal_epochs (stepped per update, as vilio)."
    )
    # bookkeeping
    eval_every: int = Field(250, ge=0, description="Updates between evaluations (0: only at the end).")
    select_best: bool = Field(False, description="Keep the weights with the best eval AUROC (off in vilio).")
    # early stopping (not in vilio): see training/loop.py's module docstring
    early_stop_patience: int = Field(
        0,
        ge=0,
        description="Stop after N evaluations (every eval_every updates) without an eval AUROC gain of "
        "early_stop_min_delta (0: off). The last weights are kept (select_best: the best).",
    )
    early_stop_min_delta: float = Field(
        0.0, ge=0, description="Smallest eval AUROC gain over the best so far that resets the patience."
    )
    early_stop_after_auroc: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Evaluations count towards the patience only once eval AUROC has reached this "
        "(a run on a learning plateau is not stopped before it leaves it).",
    )
    early_stop_give_up_after: int | None = Field(
        None,
        gt=0,
        description="With early_stop_patience: stop at the first evaluation from update N on if eval AUROC "
        "has never reached early_stop_after_auroc (a run still on its plateau rarely leaves it late).",
    )
    max_updates: int | None = Field(
        None,
        gt=0,
        description="Stop after N updates; the lr schedule still spans all epochs (the pipeline sets it "
        "on a traindev run: the updates its early-stopped train run took).",
    )
    # the pipeline's traindev run (memeguard run): see TRAINDEV_KEYS
    traindev_init: TraindevInit = Field(
        "scratch",
        description="memeguard run: where each traindev run (vilio's run b) starts: scratch (vilio: the "
        "model's init, trained as long as its train run) or train (its train run's final weights, trained "
        "traindev_epochs at traindev_lr: it does not walk the learning plateau again).",
    )
    traindev_epochs: int | None = Field(
        None,
        gt=0,
        description=f"With traindev_init train: passes over traindev (default {DEFAULT_TRAINDEV_EPOCHS}).",
    )
    traindev_lr: float | None = Field(
        None, gt=0, description="With traindev_init train: its peak learning rate (default: lr)."
    )
    checkpoint_every: int = Field(
        0, ge=0, description="Updates between mid-epoch checkpoints (0: epoch ends only)."
    )
    limit: int | None = Field(
        None, gt=0, description="Only the first N memes of every split (vilio's --topk)."
    )
    standardize_features: StandardizeMode = Field(
        "auto",
        description="auto: standardise region features when the model starts from scratch "
        "(see build.standardization_overrides); always; never.",
    )
    device: str = Field("auto", description="auto, cpu, cuda, cuda:1 ...")
    precision: Precision = Field("fp32", description="Autocast precision (fp16 on CUDA only).")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes.")
    zero_visual: bool = Field(False, description="Text-only control: zero the visual input.")
    progress: bool = Field(True, description="Show a progress bar.")
    # knowledge distillation (training/distill.py); None-defaults keep configs saved before these fields
    # equal to new ones, so finished runs are still recognised
    soft_targets: str | None = Field(
        None, description="Teacher probabilities (an id,proba,label CSV) to distil; see `memeguard distill`."
    )
    distill_temperature: float | None = Field(
        None, gt=0, description=f"KD temperature T (default {DEFAULT_TEMPERATURE} with soft targets)."
    )
    distill_alpha: float | None = Field(
        None,
        ge=0,
        le=1,
        description=f"Weight of the hard label on labelled memes, 1 - alpha on the soft term "
        f"(default {DEFAULT_ALPHA}).",
    )
    unlabelled: tuple[str, ...] | None = Field(
        None,
        description="Memes trained on the soft targets alone: splits of the dataset (labels ignored) or "
        ".jsonl files; never a dev split (repeat the option).",
    )

    @model_validator(mode="after")
    def _distillation(self) -> TrainConfig:
        if self.soft_targets is None and (
            self.unlabelled or self.distill_temperature is not None or self.distill_alpha is not None
        ):
            raise ValueError("unlabelled, distill_temperature and distill_alpha need soft_targets")
        if self.soft_targets is not None and self.train_split in DEV_SPLITS:
            raise ValueError(
                f"train_split {self.train_split!r} holds dev memes; dev labels are never distillation targets"
            )
        for entry in self.unlabelled or ():
            if Path(entry).stem in DEV_SPLITS:
                raise ValueError(
                    f"unlabelled: {entry!r} is a dev split; dev memes are never distillation targets"
                )
        return self

    @property
    def temperature(self) -> float:
        return DEFAULT_TEMPERATURE if self.distill_temperature is None else self.distill_temperature

    @property
    def alpha(self) -> float:
        return DEFAULT_ALPHA if self.distill_alpha is None else self.distill_alpha

    @model_validator(mode="after")
    def _best_needs_eval(self) -> TrainConfig:
        if self.select_best and not self.eval_split:
            raise ValueError("select_best needs an eval_split")
        if self.early_stop_patience and not (self.eval_split and self.eval_every):
            raise ValueError("early_stop_patience needs an eval_split and eval_every > 0")
        if self.early_stop_give_up_after and not self.early_stop_patience:
            raise ValueError("early_stop_give_up_after needs early_stop_patience")
        return self

    @model_validator(mode="after")
    def _traindev_start(self) -> TrainConfig:
        if self.traindev_init == "scratch" and (self.traindev_epochs or self.traindev_lr):
            raise ValueError("traindev_epochs and traindev_lr need traindev_init: train")
        if self.traindev_init == "train" and self.soft_targets is not None:
            raise ValueError(
                "traindev_init applies to a recipe model's traindev run; a distilled student has none"
            )
        return self

    def refuse_traindev_keys(self) -> None:
        """A single run never reads the ``traindev_*`` keys (the pipeline turns them into ``init``, ``epochs``
        and ``lr``): refuse them rather than ignore them."""
        if self.traindev_init != "scratch" or self.traindev_epochs or self.traindev_lr:
            raise ConfigError(
                "traindev_init, traindev_epochs and traindev_lr are recipe options of `memeguard run`; a "
                "single run starts from its train run with --init TRAIN_RUN_DIR --train-split traindev"
            )


class PretrainConfig(RunConfig):
    """Task pretraining (vilio's ``pretrain_bert{O,V,X}.py``): MLM (+ ITM) on the ``pretrain`` split."""

    model: str = Field(description="Registered model name, e.g. oscar-large or lxmert-tiny.")
    features: str | Path = Field(description="Feature store directory.")
    data_dir: str | Path = Field(description="Dataset directory (img/ + *.jsonl).")
    out_dir: str | Path = Field(description="Run directory (pass it to `train --init`).")
    split: str = Field(PRETRAIN, description="Split to pretrain on (labels unused).")
    seed: int = Field(42, description="Seeds the heads' init, dropout, masking and the data order.")
    init: str | None = Field(None, description="Our model dir, a run dir, or an original checkpoint.")
    model_overrides: dict[str, Any] = Field(default_factory=dict, description="Model config overrides.")
    tokenizer: str | None = Field(None, description="Tokenizer; defaults to the model config's.")
    mlm: bool = Field(True, description="Masked language modelling.")
    itm: bool = Field(True, description="Image-text matching (vilio's O --taskMatched; V and X: --no-itm).")
    word_mask_rate: float = Field(0.15, ge=0, lt=1, description="Share of word pieces masked for MLM.")
    obj_mask_rate: float = Field(
        0.15,
        ge=0,
        lt=1,
        description="Share of boxes masked (vilio masks features even without a visual loss).",
    )
    epochs: int = Field(8, gt=0, description="Passes over the split.")
    lr: float = Field(5e-6, gt=0, description="Peak learning rate.")
    batch_size: int = Field(16, gt=0, description="Memes per batch (per rank under torchrun).")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Share of the updates with a linear lr warmup.")
    schedule: Schedule = Field("cosine", description="lr decay after the warmup: cosine (O, V), linear (X).")
    clip: float = Field(1.0, description="Grad-norm clip (<= 0: off).")
    adam_eps: float = Field(1e-6, description="AdamW epsilon.")
    limit: int | None = Field(None, gt=0, description="Only the first N memes of the split.")
    standardize_features: StandardizeMode = Field(
        "auto",
        description="auto: standardise region features when the model starts from scratch; always; never.",
    )
    device: str = Field("auto", description="auto, cpu, cuda, cuda:1 ...")
    precision: Precision = Field("fp32", description="Autocast precision (fp16 on CUDA only).")
    progress: bool = Field(True, description="Show a progress bar.")

    @model_validator(mode="after")
    def _one_task(self) -> PretrainConfig:
        if not (self.mlm or self.itm):
            raise ValueError("pretraining needs at least one of mlm, itm")
        return self
