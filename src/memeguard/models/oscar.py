"""OSCAR (vilio's "O"): a single-stream BERT over ``[text ; regions]``.

Layout follows ``microsoft/Oscar`` ``oscar/modeling/modeling_bert.py`` (``BertImgModel``) and vilio's
``src/vilio/modeling_bertO.py`` / ``entryO.py``:

* text: BERT embeddings of ``[CLS] tokens [SEP]`` (optionally ``[CLS] tokens [SEP] object tags [SEP]`` with
  the tags as segment 1, OSCAR's "word-tag-image" triple; vilio leaves tags off, and so do we by default);
* regions: ``img_embedding`` = Linear(D + 4 -> hidden) over ``[features ; x1 y1 x2 y2]`` then dropout; no
  position or type embedding for regions and no image LayerNorm (``use_img_layernorm`` absent in vilio);
* the sequence ``[text (padded to the batch maximum) ; regions]`` runs through a BERT encoder; BERT pooler;
  vilio's head ``Linear(h, 2h) -> GELU -> LayerNorm -> Linear(2h, 2)`` (keys ``classifier.{0,2,3}``).

vilio forces every hidden dropout to 0.3 for OSCAR (attention dropout stays 0.1); the named configs do too.
Our parameter names are ``BertImgModel``'s without ``bert.`` (= vilio's ``ModelO`` without ``model.``).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from memeguard.errors import ConfigError
from memeguard.features.boxes import BOX_ENCODING_DIMS
from memeguard.features.record import RegionRecord
from memeguard.models.base import EncoderOutput, MemeLike, MemeModel, RegionTextProcessor, VLConfig
from memeguard.models.blocks import (
    BertPooler,
    VilioClassifier,
    encoder_from_config,
    extended_attention_mask,
    text_embeddings_from_config,
    two_class_to_logit,
)
from memeguard.models.checkpoints import (
    KeyPredicate,
    OriginalLayout,
    StateDict,
    rename_unique,
    vilio_finetuned_layout,
)
from memeguard.models.registry import register_architecture, register_config

OSCAR_BOX_DIM = BOX_ENCODING_DIMS["xyxy"]
# OSCAR's released checkpoints were trained with 6 position values per region; vilio keeps the first 4
# columns.
OSCAR_RELEASE_BOX_DIM = 6


# --------------------------------------------------------------------------------------------
# Config and processor
# --------------------------------------------------------------------------------------------
@dataclass
class OscarConfig(VLConfig):
    """OSCAR sizes follow BERT (uncased vocabulary).

    ``object_tags``: append the detector's object labels as a second text segment (OSCAR's tags). Labels come
    from ``RegionRecord.object_ids`` mapped through ``object_tag_vocab`` (a Visual Genome
    ``objects_vocab.txt``: line i names class i, synonyms after a comma are dropped); without that file, or
    without object ids in a record, tags are skipped. ``use_img_layernorm`` adds OSCAR's optional LayerNorm
    (key ``LayerNorm``) after ``img_embedding``.
    """

    model_type: ClassVar[str] = "oscar"

    hidden_dropout_prob: float = 0.3
    tokenizer: str = "bert-base-uncased"
    object_tags: bool = False
    object_tag_vocab: str | None = None
    use_img_layernorm: bool = False
    img_layer_norm_eps: float = 1e-12


@functools.lru_cache(maxsize=4)
def read_object_vocab(path: str) -> tuple[str, ...]:
    """Visual Genome ``objects_vocab.txt`` -> class names by id (first synonym of each line)."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{file}: object-tag vocabulary not found")
    names = []
    for line_no, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        name = line.split(",")[0].strip()
        if not name:
            raise ConfigError(f"{file}:{line_no}: empty object class name")
        names.append(name)
    return tuple(names)


class OscarProcessor(RegionTextProcessor):
    """Standard batch (4-d boxes); with ``object_tags`` the text becomes the pair (text, tags)."""

    box_encoding = "xyxy"

    def object_tags(self, record: RegionRecord) -> str:
        """Labels of the regions the model sees, in region order (OSCAR repeats duplicates)."""
        vocab_path = getattr(self.config, "object_tag_vocab", None)
        if record.object_ids is None or vocab_path is None:
            return ""
        vocab = read_object_vocab(vocab_path)
        ids = np.asarray(record.object_ids[: min(record.num_boxes, self.config.max_regions)], dtype=np.int64)
        bad = ids[(ids < 0) | (ids >= len(vocab))]
        if bad.size:
            raise ConfigError(
                f"meme {record.meme_id}: object id {int(bad[0])} outside the {len(vocab)}-class "
                f"vocabulary {vocab_path}"
            )
        return " ".join(vocab[i] for i in ids)

    def tokenize_with_tags(self, texts: Sequence[str], tags: Sequence[str]) -> dict[str, torch.Tensor]:
        cleaned = [" ".join(str(text).split()) for text in texts]
        encoded = self.tokenizer(
            cleaned,
            list(tags),
            padding="longest",
            truncation="longest_first",  # OSCAR's _truncate_seq_pair
            max_length=self.config.max_text_length,
            return_tensors="pt",
            return_token_type_ids=True,
        )
        return {
            "input_ids": encoded["input_ids"].long(),
            "attention_mask": encoded["attention_mask"].long(),
            "token_type_ids": encoded["token_type_ids"].long(),
        }

    def __call__(self, memes: Sequence[MemeLike], regions: Sequence[RegionRecord]) -> dict[str, torch.Tensor]:
        batch = super().__call__(memes, regions)
        if getattr(self.config, "object_tags", False):
            tags = [self.object_tags(record) for record in regions]
            if any(tags):
                batch.update(self.tokenize_with_tags([meme.text for meme in memes], tags))
        return batch


# --------------------------------------------------------------------------------------------
# Original checkpoints
# --------------------------------------------------------------------------------------------
OSCAR_CHECKPOINT_NAMES = ("LASTtrain.pth", "LASTtraindev.pth", "LAST_BO.pth", "pytorch_model.bin")
# BertImgForPreTraining's heads: MLM (``cls.predictions``) and contrastive/ITM (``cls.seq_relationship``).
OSCAR_PRETRAINING_HEADS = ("cls.",)
IMAGE_NORM_KEYS = ("LayerNorm.weight", "LayerNorm.bias")
POSITION_IDS_KEY = "embeddings.position_ids"


def _pretrained_key(key: str) -> str:
    """vilio's ``ModelO.load``: strip one leading ``bert.`` or ``module.``."""
    for prefix in ("bert.", "module."):
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


def convert_pretrained(state: Mapping[str, torch.Tensor], config: Any) -> StateDict:
    """OSCAR's ``pytorch_model.bin`` or vilio's ``LAST_BO.pth`` -> our keys.

    ``img_embedding.weight`` with ``D + 6`` input columns (OSCAR's 6 position values) keeps its first
    ``D + 4`` (features + x1 y1 x2 y2), as vilio does.
    """
    converted = rename_unique(state, _pretrained_key)
    weight = converted.get("img_embedding.weight")
    if weight is not None and weight.shape[-1] == config.visual_feat_dim + OSCAR_RELEASE_BOX_DIM:
        converted["img_embedding.weight"] = weight[:, : config.visual_feat_dim + OSCAR_BOX_DIM].clone()
    return converted


OSCAR_LAYOUTS = (
    vilio_finetuned_layout("model.", "classifier.", unexpected=lambda key: key == POSITION_IDS_KEY),
    OriginalLayout(
        "pretrained",
        lambda state: True,
        convert_pretrained,
        # Without use_img_layernorm a checkpoint's image LayerNorm has no place in the model.
        lambda key: (
            key.startswith(OSCAR_PRETRAINING_HEADS) or key == POSITION_IDS_KEY or key in IMAGE_NORM_KEYS
        ),
        hint="OSCAR pytorch_model.bin / vilio LAST_BO.pth: bert.*",
    ),
)


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------
@register_architecture
class OscarModel(MemeModel):
    """OSCAR backbone (``BertImgModel``) + vilio's classifier; ``forward`` returns the hateful logit [B]."""

    config_class = OscarConfig
    processor_class = OscarProcessor
    original_name = "OSCAR"
    original_layouts = OSCAR_LAYOUTS
    original_file_names = OSCAR_CHECKPOINT_NAMES
    config: OscarConfig

    def __init__(self, config: OscarConfig) -> None:
        super().__init__(config)
        self.embeddings = text_embeddings_from_config(config)
        self.encoder = encoder_from_config(config)
        self.pooler = BertPooler(config.hidden_size)
        self.img_embedding = nn.Linear(config.visual_feat_dim + OSCAR_BOX_DIM, config.hidden_size)
        if config.use_img_layernorm:
            self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.img_layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = VilioClassifier(config.hidden_size, num_labels=2, eps=config.layer_norm_eps)
        self.init_weights()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def embed_regions(self, visual_feats: torch.Tensor, visual_boxes: torch.Tensor) -> torch.Tensor:
        embedded = self.img_embedding(torch.cat([visual_feats, visual_boxes], dim=-1))
        if self.config.use_img_layernorm:
            embedded = self.LayerNorm(embedded)
        return self.dropout(embedded)

    def encode(self, batch: Mapping[str, torch.Tensor]) -> EncoderOutput:
        input_ids = batch["input_ids"]
        text_emb = self.embeddings(input_ids, batch.get("token_type_ids"))
        image_emb = self.embed_regions(batch["visual_feats"], batch["visual_boxes"])
        mask = torch.cat([batch["attention_mask"], batch["visual_mask"]], dim=1)
        hidden = self.encoder(
            torch.cat([text_emb, image_emb], dim=1), extended_attention_mask(mask, text_emb.dtype)
        )
        assert isinstance(hidden, torch.Tensor)
        text_width = input_ids.shape[1]
        return EncoderOutput(
            text_hidden=hidden[:, :text_width],
            visual_hidden=hidden[:, text_width:],
            pooled=self.pooler(hidden),
        )

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return two_class_to_logit(self.classifier(self.encode(batch).pooled))

    def original_key_rules(
        self, layout: OriginalLayout, state: Mapping[str, torch.Tensor]
    ) -> tuple[KeyPredicate, KeyPredicate]:
        """A pretrained file without the optional image LayerNorm leaves ours at its (1, 0) initialisation."""
        head_missing, documented = super().original_key_rules(layout, state)
        norm_may_miss = self.config.use_img_layernorm and not layout.has_head
        return (lambda key: head_missing(key) or (norm_may_miss and key in IMAGE_NORM_KEYS)), documented


# --------------------------------------------------------------------------------------------
# Named configs
# --------------------------------------------------------------------------------------------
register_config("oscar-base", "oscar", tokenizer="bert-base-uncased")
register_config(
    "oscar-large",
    "oscar",
    hidden_size=1024,
    num_hidden_layers=24,
    num_attention_heads=16,
    intermediate_size=4096,
    tokenizer="bert-large-uncased",
)
register_config(
    "oscar-tiny",
    "oscar",
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=128,
    tokenizer="bert-base-uncased",
)
