"""Vision-language models: one file per architecture, a registry of named configs, checkpoint converters."""

from memeguard.models.base import EncoderOutput, MemeModel, RegionTextProcessor, VLConfig
from memeguard.models.registry import (
    create_model,
    get_config,
    list_models,
    register_architecture,
    register_config,
)

__all__ = [
    "EncoderOutput",
    "MemeModel",
    "RegionTextProcessor",
    "VLConfig",
    "create_model",
    "get_config",
    "list_models",
    "register_architecture",
    "register_config",
]
