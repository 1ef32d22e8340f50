"""Named model configs and the ``create_model`` factory (open_clip / timm style).

Each architecture module registers its model class with ``@register_architecture`` and its named
configs with ``register_config`` at import time; the registry imports those modules on first use.
Adding an architecture is one new module plus its line in ``_ARCHITECTURE_MODULES``.

The registry imports no other ``memeguard.models`` module at import time (``base`` imports it for
``from_pretrained``), so the two never form an import cycle.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from memeguard.errors import ConfigError

if TYPE_CHECKING:
    from memeguard.models.base import MemeModel, VLConfig

# Architecture modules, imported lazily so that `import memeguard.models` stays cheap.
_ARCHITECTURE_MODULES = (
    "memeguard.models.visualbert",
    "memeguard.models.uniter",
    "memeguard.models.oscar",
    "memeguard.models.lxmert",
    "memeguard.models.devlbert",
    "memeguard.models.ernie_vil",
    "memeguard.models.clip_heads",
    "memeguard.models.rgcl",
)

_ARCHITECTURES: dict[str, type[MemeModel]] = {}
_NAMED_CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {}
_loaded = False


def register_architecture(model_cls: type[MemeModel]) -> type[MemeModel]:
    """Class decorator: make ``model_cls`` buildable from its ``config_class.model_type``."""
    _ARCHITECTURES[model_cls.config_class.model_type] = model_cls
    return model_cls


def register_config(name: str, model_type: str, **config_kwargs: Any) -> None:
    """Register a named config, e.g. ``register_config("uniter-base", "uniter", hidden_size=768)``."""
    if name in _NAMED_CONFIGS and _NAMED_CONFIGS[name] != (model_type, config_kwargs):
        raise ValueError(f"model name {name!r} registered twice with different configs")
    _NAMED_CONFIGS[name] = (model_type, dict(config_kwargs))


def _ensure_loaded() -> None:
    global _loaded
    if _loaded:
        return
    for module in _ARCHITECTURE_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:  # a real missing dependency inside the module
                raise
    _loaded = True


def list_models() -> list[str]:
    _ensure_loaded()
    return sorted(_NAMED_CONFIGS)


def architecture_for(model_type: str) -> type[MemeModel]:
    _ensure_loaded()
    try:
        return _ARCHITECTURES[model_type]
    except KeyError:
        raise ConfigError(
            f"unknown model type {model_type!r}; known: {', '.join(sorted(_ARCHITECTURES))}"
        ) from None


def get_config(name: str, **overrides: Any) -> VLConfig:
    """The config registered under ``name`` with ``overrides`` applied."""
    _ensure_loaded()
    if name not in _NAMED_CONFIGS:
        raise ConfigError(f"unknown model {name!r}; known models: {', '.join(sorted(_NAMED_CONFIGS))}")
    model_type, kwargs = _NAMED_CONFIGS[name]
    config_cls = architecture_for(model_type).config_class
    return config_cls.from_dict({**kwargs, **overrides})


def create_model(name: str, **overrides: Any) -> MemeModel:
    """Build a randomly initialised model from a registered name, e.g. ``create_model("uniter-tiny")``."""
    config = get_config(name, **overrides)
    model = architecture_for(config.model_type)(config)
    return model
