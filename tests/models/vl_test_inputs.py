"""Random inputs and state dicts shared by the model tests (tests/models/test_<architecture>.py).

Each helper draws its random numbers in one fixed order from its own seeded generator, so a test that
calls it gets the same tensors the test's former local copy drew; the architectures differ only in the
arguments (feature width, vocabulary, which rows are padded).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from memeguard.features.record import RegionRecord
from memeguard.models.base import MemeModel

# vilio's fine-tuned models keep HF BertEmbeddings' position_ids buffer (512 positions) in their state.
VILIO_POSITION_IDS = 512


def randomize(
    module: torch.nn.Module, seed: int = 1, norm_suffixes: tuple[str, ...] = ("LayerNorm.weight",)
) -> None:
    """Non-trivial values everywhere (norm gains ~1, the rest ~0) so a misplaced tensor changes the output.

    ``norm_suffixes`` names the 1-D parameters that are gains of a norm layer under each architecture's
    naming.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            noise = torch.randn(param.shape, generator=gen) * 0.1
            is_norm = name.endswith(norm_suffixes)
            param.copy_(noise + 1.0 if is_norm and param.dim() == 1 else noise)


def random_batch(
    vocab_size: int,
    feat_dim: int,
    batch_size: int = 3,
    text_len: int = 9,
    regions: int = 6,
    seed: int = 2,
    *,
    text_padding: tuple[int, int],
    region_padding: tuple[int, int],
) -> dict[str, torch.Tensor]:
    """A model batch with one padded text row and one padded region row: ``(row, first padded index)``."""
    gen = torch.Generator().manual_seed(seed)
    attention_mask = torch.ones(batch_size, text_len, dtype=torch.long)
    attention_mask[text_padding[0], text_padding[1] :] = 0
    visual_mask = torch.ones(batch_size, regions, dtype=torch.long)
    visual_mask[region_padding[0], region_padding[1] :] = 0
    return {
        "input_ids": torch.randint(1, vocab_size, (batch_size, text_len), generator=gen) * attention_mask,
        "attention_mask": attention_mask,
        "token_type_ids": torch.zeros(batch_size, text_len, dtype=torch.long),
        "visual_feats": torch.randn(batch_size, regions, feat_dim, generator=gen),
        "visual_boxes": torch.rand(batch_size, regions, 4, generator=gen),
        "visual_mask": visual_mask,
    }


def random_records(
    counts: list[int], feat_dim: int, seed: int = 0, object_ids: list[list[int]] | None = None
) -> list[RegionRecord]:
    """One RegionRecord per entry of ``counts`` (its number of regions) for memes 1, 2, ...; boxes inside
    a 160x320 image; ``object_ids`` gives each meme's region tags (OSCAR), None for none."""
    rng = np.random.default_rng(seed)
    records = []
    for meme_id, n in enumerate(counts, start=1):
        x1 = rng.uniform(0, 200, n)
        y1 = rng.uniform(0, 100, n)
        boxes = np.stack([x1, y1, x1 + rng.uniform(5, 100, n), y1 + rng.uniform(5, 50, n)], axis=1)
        records.append(
            RegionRecord(
                meme_id=meme_id,
                features=rng.normal(size=(n, feat_dim)).astype(np.float32),
                boxes=boxes.astype(np.float32),
                image_size=(160, 320),
                object_ids=None
                if object_ids is None
                else np.asarray(object_ids[meme_id - 1], dtype=np.int64),
            )
        )
    return records


def random_state(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """The model's state dict with every tensor replaced by N(0, 0.25) noise, in state-dict order."""
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=gen) * 0.5 for k, v in model.state_dict().items()}


def vilio_finetuned(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """vilio's fine-tuned ``Model*.state_dict()``: ``model.`` + backbone keys (with HF's position_ids
    buffer) and ``classifier.*`` as they are."""
    out = {(k if k.startswith("classifier.") else f"model.{k}"): v for k, v in state.items()}
    out["model.embeddings.position_ids"] = torch.arange(VILIO_POSITION_IDS).expand(1, -1)
    return out


# vilio's classifier head (Linear, GELU, LayerNorm, Linear): what a pre-training release lacks, sorted.
VILIO_CLASSIFIER_KEYS = [
    "classifier.0.bias",
    "classifier.0.weight",
    "classifier.2.bias",
    "classifier.2.weight",
    "classifier.3.bias",
    "classifier.3.weight",
]


def bert_sizes(config: Any) -> tuple[int, int, int, int]:
    """(hidden size, layers, heads, FFN size) of a BERT-shaped config, to compare a named size in one line."""
    return (
        config.hidden_size,
        config.num_hidden_layers,
        config.num_attention_heads,
        config.intermediate_size,
    )


def assert_vilio_finetuned_loads_exactly(
    model: MemeModel, original: dict[str, torch.Tensor], path: Path
) -> None:
    """Save ``original`` (a :func:`vilio_finetuned` state) at ``path`` and load it: nothing missing, HF's
    position_ids buffer the only extra key, every other tensor copied bit for bit."""
    torch.save(original, path)
    missing, unexpected = model.load_original(path)
    assert missing == [] and unexpected == ["embeddings.position_ids"]
    own = model.state_dict()
    for key, value in original.items():
        if key != "model.embeddings.position_ids":
            torch.testing.assert_close(own[key.removeprefix("model.")], value, rtol=0, atol=0)


def square_region_record(meme_id: int, boxes: int, seed: int, feat_dim: int) -> RegionRecord:
    """``boxes`` random 20x20 regions in a 150x200 image: a record for the processor tests."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 100, size=(boxes, 2)).astype(np.float32)
    return RegionRecord(
        meme_id=meme_id,
        features=rng.normal(size=(boxes, feat_dim)).astype(np.float32),
        boxes=np.concatenate([xy, xy + 20], axis=1),
        image_size=(150, 200),
    )
