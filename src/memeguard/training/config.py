"""Training configurations: vilio's fine-tuning (``hm.py``) and task pretraining (``pretrain_bert*.py``) flags
as two dataclasses that validate themselves and round-trip through ``train_config.json``.

The defaults are vilio's (lr 1e-5, batch 8, 5 epochs, eps 1e-6, clip 5.0, warmup 10%, summed loss, SWA from 75%);
``TINY_DEFAULTS`` holds the settings that make the ``*-tiny`` models learn on the synthetic set in a few CPU minutes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memeguard.errors import ConfigError

SWA_MODES = ("none", "torch", "contrib")
PRECISIONS = ("fp32", "bf16", "fp16")
SCHEDULES = ("linear", "cosine")
# "auto": standardise region features (store statistics -> model config) only for a model built from scratch.
STANDARDIZE_MODES = ("auto", "always", "never")

# What makes the hidden-64 ``*-tiny`` models learn an image-XOR-text rule in a few CPU minutes (measured with
# tests/training/test_training_learning.py and benchmarks/learning.py): a 150x larger lr than vilio's 1e-5, more
# epochs, the mean loss, no SWA, and a larger init std than BERT's 0.02 (at 0.02 a 64-d model starts with
# near-uniform attention and escapes the XOR saddle far later). lr 1.5e-3 rather than 2e-3: on the noise-free
# synthetic set (n=2000) lxmert-tiny then finds the rule with 8 of 8 seeds (2e-3: 5 of 6), visualbert-tiny with
# 4 of 4. ``model_overrides`` go to the model config; the rest are TrainConfig fields.
TINY_DEFAULTS: dict[str, Any] = {
    "lr": 1.5e-3,
    "epochs": 20,
    "batch_size": 16,
    "sum_loss": False,
    "clip": 1.0,
    "warmup_ratio": 0.1,
    "swa": "none",
    "eval_every": 0,
    # A wider init and no dropout shorten the XOR plateau of a model trained from scratch (~600 updates).
    "model_overrides": {"initializer_range": 0.1, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
}


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, not {value!r}")


def _check_positive(owner: str, **values: float | int) -> None:
    for name, value in values.items():
        if value <= 0:
            raise ConfigError(f"{owner}: {name} must be positive, got {value}")


class _JsonConfig:
    """``to_dict`` / ``from_dict`` with Path <-> str and a clear error on unknown keys."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]):  # type: ignore[no-untyped-def]
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"{cls.__name__}: unknown keys {unknown}")
        return cls(**dict(data))

    def replace(self, **changes: Any):  # type: ignore[no-untyped-def]
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


@dataclass
class TrainConfig(_JsonConfig):
    """One fine-tuning run (vilio's ``hm.py`` invocation).

    Run (a) of a vilio model: ``train_split="train_clean", predict_splits=("dev_seen",)``;
    run (b): ``train_split="traindev", predict_splits=("test_seen", "test_unseen")``.
    """

    model: str
    features: str | Path
    data_dir: str | Path
    out_dir: str | Path
    train_split: str = "train_clean"
    predict_splits: tuple[str, ...] = ("dev_seen",)
    eval_split: str | None = "dev_seen"  # evaluated every ``eval_every`` updates and at the end
    seed: int = 42
    init: str | None = None  # our model dir, a (pre)train run dir, or an original checkpoint file
    model_overrides: dict[str, Any] = field(default_factory=dict)  # e.g. {"max_regions": 50}
    tokenizer: str | None = None  # defaults to the model config's tokenizer
    # optimisation (vilio's hm.py)
    epochs: int = 5
    lr: float = 1e-5
    batch_size: int = 8
    eval_batch_size: int = 50
    acc: int = 1  # gradient accumulation: one update every ``acc`` batches
    clip: float = 5.0  # grad-norm clip; <= 0 disables
    weight_decay: float = 0.0
    adam_eps: float = 1e-6
    warmup_ratio: float = 0.1
    sum_loss: bool = True  # vilio: mean loss x batch size / acc (the "summed" loss)
    head_lr_mult: float = 1.0  # vilio --reg: 500 for params outside ``backbone_keywords``
    backbone_keywords: tuple[str, ...] = ("encoder", "embeddings", "pooler")
    swa: str = "none"  # none | torch (AveragedModel + SWALR) | contrib (torchcontrib auto mode)
    swa_start: float = 0.75  # fraction of the total updates
    swa_freq: int = 5  # contrib: average every ``swa_freq`` updates
    swa_lr: float | None = None  # None: the base lr, as vilio
    swa_anneal_steps: int = 10  # torch form: SWALR's anneal_epochs (stepped per update, as vilio)
    # bookkeeping
    eval_every: int = 250  # updates; 0: only at the end
    select_best: bool = False  # keep the weights with the best eval AUROC (off in vilio)
    checkpoint_every: int = 0  # updates between mid-epoch checkpoints; 0: only at epoch ends
    limit: int | None = None  # vilio's --topk: only the first N memes of every split
    standardize_features: str = "auto"  # auto | always | never (see build.standardization_overrides)
    device: str = "auto"
    precision: str = "fp32"
    num_workers: int = 0
    zero_visual: bool = False  # text-only control: zero the visual input
    progress: bool = True

    def __post_init__(self) -> None:
        self.predict_splits = tuple(self.predict_splits)
        self.backbone_keywords = tuple(self.backbone_keywords)
        self.model_overrides = dict(self.model_overrides)
        _check_choice("swa", self.swa, SWA_MODES)
        _check_choice("standardize_features", self.standardize_features, STANDARDIZE_MODES)
        _check_choice("precision", self.precision, PRECISIONS)
        _check_positive(
            "TrainConfig", epochs=self.epochs, lr=self.lr, batch_size=self.batch_size,
            eval_batch_size=self.eval_batch_size, acc=self.acc, swa_freq=self.swa_freq,
            head_lr_mult=self.head_lr_mult, adam_eps=self.adam_eps,
        )
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if not 0.0 <= self.swa_start < 1.0:
            raise ConfigError(f"swa_start must be in [0, 1), got {self.swa_start}")
        if self.limit is not None and self.limit <= 0:
            raise ConfigError(f"limit must be positive, got {self.limit}")
        if self.eval_every < 0 or self.checkpoint_every < 0:
            raise ConfigError("eval_every and checkpoint_every must be >= 0")
        if self.select_best and not self.eval_split:
            raise ConfigError("select_best needs an eval_split")


@dataclass
class PretrainConfig(_JsonConfig):
    """Task pretraining (vilio's ``pretrain_bert{O,V,X}.py``): MLM (+ ITM) on the ``pretrain`` split."""

    model: str
    features: str | Path
    data_dir: str | Path
    out_dir: str | Path
    split: str = "pretrain"
    seed: int = 42
    init: str | None = None
    model_overrides: dict[str, Any] = field(default_factory=dict)
    tokenizer: str | None = None
    mlm: bool = True
    itm: bool = True  # O's --taskMatched; V and X ran MLM only
    word_mask_rate: float = 0.15
    obj_mask_rate: float = 0.15  # vilio masks features even without a visual loss
    epochs: int = 8
    lr: float = 5e-6
    batch_size: int = 16
    warmup_ratio: float = 0.05
    schedule: str = "cosine"  # O and V: cosine; X: linear
    clip: float = 1.0
    adam_eps: float = 1e-6
    limit: int | None = None
    standardize_features: str = "auto"
    device: str = "auto"
    precision: str = "fp32"
    progress: bool = True

    def __post_init__(self) -> None:
        self.model_overrides = dict(self.model_overrides)
        _check_choice("standardize_features", self.standardize_features, STANDARDIZE_MODES)
        _check_choice("schedule", self.schedule, SCHEDULES)
        _check_choice("precision", self.precision, PRECISIONS)
        _check_positive("PretrainConfig", epochs=self.epochs, lr=self.lr, batch_size=self.batch_size)
        if not (self.mlm or self.itm):
            raise ConfigError("pretraining needs at least one of mlm, itm")
        for name in ("word_mask_rate", "obj_mask_rate", "warmup_ratio"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.limit is not None and self.limit <= 0:
            raise ConfigError(f"limit must be positive, got {self.limit}")
