"""The shape every architecture's original-checkpoint conversion takes: a table of layouts.

An architecture's original weights come in several layouts (the paper's release, MMF, Hugging Face,
vilio's task-pretrained ``LAST_B*.pth`` and fine-tuned ``LASTtrain.pth`` with or without SWA). Each
model class lists them as :class:`OriginalLayout` rows beside its code (timm keeps a
``checkpoint_filter_fn`` beside each model the same way); :meth:`MemeModel.load_original
<memeguard.models.base.MemeModel.load_original>` reads the file, takes the first row whose ``detect``
accepts the keys, renames them with ``convert`` and loads them with strict key accounting.

Reading files lives in :mod:`memeguard.checkpoint_io`; its readers are importable here too because
converters written against the old ``memeguard.models.checkpoints`` module import them from here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from memeguard.checkpoint_io import (
    load_mapped_state_dict,
    read_any_checkpoint,
    read_torch_checkpoint,
    resolve_checkpoint_file,
)
from memeguard.errors import CheckpointError

__all__ = [
    "KeyPredicate",
    "OriginalLayout",
    "StateDict",
    "has_prefix",
    "load_mapped_state_dict",
    "pick_layout",
    "read_any_checkpoint",
    "read_torch_checkpoint",
    "rename_unique",
    "resolve_checkpoint_file",
    "unwrap_vilio",
    "vilio_finetuned_layout",
]

StateDict = dict[str, torch.Tensor]
KeyPredicate = Callable[[str], bool]  # says whether a key may be missing / unexpected
# torch.optim.swa_utils.AveragedModel's counter, saved beside the averaged weights.
SWA_COUNTER_KEY = "n_averaged"


def _no_key(key: str) -> bool:
    return False


@dataclass(frozen=True)
class OriginalLayout:
    """One layout of an architecture's original checkpoint files.

    ``detect``: whether a raw state dict is in this layout (a model's rows are tried in order).
    ``convert``: raw state dict + the model's config -> our key names (the config says, e.g., how many
    box columns to keep). ``unexpected``: keys this layout documents that we do not use (pretraining
    heads, HF's ``position_ids`` buffer); they are reported, anything else unexplained fails.
    ``has_head``: the file holds the task head (a vilio fine-tuned model), so no key may be missing;
    otherwise the model's head parameters may be. ``hint``: how to recognise it, for error messages.
    """

    name: str
    detect: Callable[[Mapping[str, torch.Tensor]], bool]
    convert: Callable[[Mapping[str, torch.Tensor], Any], StateDict]
    unexpected: KeyPredicate = _no_key
    has_head: bool = False
    hint: str = ""


def pick_layout(
    layouts: Sequence[OriginalLayout], state: Mapping[str, torch.Tensor], *, source: str, what: str
) -> OriginalLayout:
    """The first layout that accepts ``state``; a one-line error listing the known layouts otherwise."""
    for layout in layouts:
        if layout.detect(state):
            return layout
    known = ", ".join(f"{layout.name} ({layout.hint})" if layout.hint else layout.name for layout in layouts)
    raise CheckpointError(
        f"{source}: not a {what} checkpoint in a known layout ({known}); first keys: {sorted(state)[:5]}"
    )


def has_prefix(*prefixes: str) -> Callable[[Mapping[str, torch.Tensor]], bool]:
    """A ``detect`` predicate: some key starts with one of ``prefixes``."""
    return lambda state: any(key.startswith(prefixes) for key in state)


def unwrap_vilio(state: Mapping[str, torch.Tensor]) -> StateDict:
    """vilio's fine-tuned file -> the keys of its ``Model*`` wrapper (``model.<backbone>``, ``classifier.*``).

    vilio saves ``LASTtrain.pth`` / ``LASTtraindev.pth`` from torch's ``AveragedModel`` when SWA is on
    (its default): an ``n_averaged`` counter and every key under ``module.``; without SWA the keys are
    plain. ``HM.load`` accepts both by dropping the counter and the prefix, as this does.
    """
    return {key.removeprefix("module."): value for key, value in state.items() if key != SWA_COUNTER_KEY}


def vilio_finetuned_layout(
    *markers: str,
    backbone_key: Callable[[str], str] = lambda key: key,
    unexpected: KeyPredicate = _no_key,
) -> OriginalLayout:
    """vilio's fine-tuned ``Model*`` file (plain or SWA), recognised by every prefix in ``markers``.

    ``Model*`` keeps its backbone under ``model.`` and its head under ``classifier.``; ``backbone_key``
    maps a backbone key (``model.`` removed) to ours. The file holds the whole model, head included.
    """

    def detect(state: Mapping[str, torch.Tensor]) -> bool:
        keys = unwrap_vilio(state)
        return all(any(key.startswith(marker) for key in keys) for marker in markers)

    def convert(state: Mapping[str, torch.Tensor], config: Any) -> StateDict:
        return {
            (backbone_key(key.removeprefix("model.")) if key.startswith("model.") else key): value
            for key, value in unwrap_vilio(state).items()
        }

    return OriginalLayout(
        "vilio-finetuned",
        detect,
        convert,
        unexpected,
        has_head=True,
        hint="vilio LASTtrain.pth: " + " + ".join(f"[module.]{marker}*" for marker in markers),
    )


def rename_unique(state: Mapping[str, torch.Tensor], rename: Callable[[str], str]) -> StateDict:
    """Apply ``rename`` to every key; two keys landing on one name is an error, never a silent overwrite."""
    out: StateDict = {}
    for key, value in state.items():
        new_key = rename(key)
        if new_key in out:
            raise CheckpointError(f"two checkpoint keys map to {new_key!r} (second: {key!r})")
        out[new_key] = value
    return out
