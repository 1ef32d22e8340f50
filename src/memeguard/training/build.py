"""Building the model a run starts from: new, from our format, from a run dir, or from an original
checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from memeguard.errors import ConfigError
from memeguard.models.base import MemeModel
from memeguard.names import MODEL_CONFIG_FILE, MODEL_DIR

# Overrides that only matter for a freshly initialised model (or are re-read anyway): ignored, not refused,
# when the weights come from a checkpoint (e.g. TINY_DEFAULTS' init std with ``--init``). Dropout rates are
# built into the modules, so a model loaded from a checkpoint keeps the rates its config was saved with.
INIT_ONLY_KEYS = ("initializer_range", "tokenizer", "hidden_dropout_prob", "attention_probs_dropout_prob")


def model_dir_of(path: str | Path) -> Path | None:
    """Our ``save_pretrained`` dir at ``path`` or at ``path/model`` (a train or pretrain run dir), else None.

    Only the presence of ``config.json`` decides; :meth:`MemeModel.from_pretrained` then checks the folder.
    """
    path = Path(path)
    for candidate in (path, path / MODEL_DIR):
        if (candidate / MODEL_CONFIG_FILE).is_file():
            return candidate
    return None


def load_model_dir(path: str | Path) -> MemeModel:
    directory = model_dir_of(path)
    if directory is None:
        raise ConfigError(
            f"{path}: neither a memeguard model dir nor a run dir with {MODEL_DIR}/{MODEL_CONFIG_FILE}"
        )
    return MemeModel.from_pretrained(directory)


def build_model(
    name: str,
    *,
    feature_dim: int,
    init: str | None = None,
    overrides: dict[str, Any] | None = None,
    tokenizer: str | None = None,
) -> MemeModel:
    """The model a run trains; its ``visual_feat_dim`` must equal the feature store's."""
    from memeguard.models.registry import create_model, get_config

    overrides = dict(overrides or {})
    if tokenizer:
        overrides["tokenizer"] = tokenizer
    asked = overrides.pop("visual_feat_dim", feature_dim)
    if asked != feature_dim:
        raise ConfigError(
            f"the feature store has {feature_dim}-d region features but the model expects {asked}-d"
        )
    expected = get_config(
        name, **{**overrides, "visual_feat_dim": feature_dim}
    )  # unknown name -> ConfigError
    if init is None:
        model = create_model(name, **{**overrides, "visual_feat_dim": feature_dim})
    elif model_dir_of(init) is not None:
        model = load_model_dir(init)
        if model.config.model_type != expected.model_type:
            raise ConfigError(
                f"{init}: holds a {model.config.model_type!r} model, "
                f"but --model {name} is {expected.model_type!r}"
            )
        for key, value in overrides.items():
            if key not in INIT_ONLY_KEYS and getattr(model.config, key, value) != value:
                raise ConfigError(
                    f"{init}: model config has {key}={getattr(model.config, key)!r}, asked for {value!r}"
                )
        if tokenizer:
            model.config.tokenizer = tokenizer
    else:
        if not Path(init).exists():
            raise ConfigError(f"{init}: init checkpoint not found")
        model = create_model(name, **{**overrides, "visual_feat_dim": feature_dim})
        loader = getattr(model, "load_original", None)
        if loader is None:
            raise ConfigError(f"{name}: cannot load original checkpoints (no load_original)")
        loader(init)
    if model.config.visual_feat_dim != feature_dim:
        raise ConfigError(
            f"the feature store has {feature_dim}-d region features but the model "
            f"({init or name}) expects {model.config.visual_feat_dim}-d"
        )
    return model


def train_defaults(name: str) -> dict[str, Any]:
    """The training settings of ``name``'s family (its class's ``train_defaults``; {} for the BERT-style
    models, whose defaults are TrainConfig's own: vilio's)."""
    from memeguard.models.registry import architecture_for, get_config

    return dict(getattr(architecture_for(get_config(name).model_type), "train_defaults", {}))


def require_pretrainable(name: str) -> None:
    """Task pretraining (MLM/ITM) needs a text encoder; the heads on CLIP embeddings have none."""
    from memeguard.models.registry import architecture_for, get_config

    if not getattr(architecture_for(get_config(name).model_type), "pretrainable", True):
        raise ConfigError(f"{name}: has no text encoder to pretrain (MLM/ITM); fine-tune it with `train`")


def reads_region_features(name: str) -> bool:
    """Whether ``name``'s model reads the store's region features (the CLIP heads read only the per-meme
    vectors, so there is nothing to standardise for them)."""
    from memeguard.models.registry import architecture_for, get_config

    return bool(getattr(architecture_for(get_config(name).model_type), "reads_region_features", True))


def store_overrides(
    name: str, overrides: dict[str, Any], record: Any, meta: dict[str, Any] | None = None
) -> dict[str, Any]:
    """``overrides`` plus the input sizes the architecture reads from the store (a model class's
    ``store_overrides(config, record, meta)``: the CLIP heads' embedding sizes, and with unfrozen CLIP layers
    the CLIP folder from the store's ``meta``), as ``visual_feat_dim`` is set.
    An override that contradicts the store is a ConfigError."""
    from memeguard.models.registry import architecture_for, get_config

    config = get_config(name, **overrides)
    hook = getattr(architecture_for(config.model_type), "store_overrides", None)
    if hook is None:
        return overrides
    found = hook(config, record, meta)
    for key, value in found.items():
        if key in overrides and overrides[key] != value:
            raise ConfigError(
                f"the feature store gives {key}={value}, but the model overrides ask for {overrides[key]}"
            )
    return {**overrides, **found}


def standardization_overrides(
    mode: str, init: str | None, overrides: dict[str, Any] | None, source: Any, meme_ids: list[int]
) -> dict[str, Any]:
    """``overrides`` plus the region-feature statistics when the features should be standardised.

    A backbone trained from scratch on hand-made features (grid) learns far faster on standardised inputs:
    raw offsets (colour means near 0.5) otherwise dominate the projected input after LayerNorm. A pretrained
    backbone expects its own raw features, so ``auto`` standardises only when ``init`` is None. The statistics
    go into the model config, so prediction and serving apply the same transform.
    """
    out = dict(overrides or {})
    wanted = mode == "always" or (mode == "auto" and init is None)
    if wanted and "feature_mean" not in out:
        from memeguard.features.store import feature_statistics

        out["feature_mean"], out["feature_std"] = feature_statistics(source, meme_ids)
    return out
