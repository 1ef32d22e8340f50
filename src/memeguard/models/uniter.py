"""UNITER (vilio's "U"): a single-stream BERT over text tokens followed by region features.

Layout follows ``ChenRocks/UNITER`` ``model/model.py`` and vilio's ``src/vilio/modeling_bertU.py`` /
``entryU.py``:

* text: BERT embeddings (word + position + type 0) of ``[CLS] tokens [SEP]``;
* regions: ``LayerNorm(img_layer_norm(img_linear(f)) + pos_layer_norm(pos_linear(p)) + type_emb[1])`` with
  UNITER's 7-d box encoding ``p = [x1, y1, x2, y2, w, h, w*h]`` (vilio's ``--num_pos 6``) or the 4-d
  ``[x1, y1, x2, y2]`` of vilio's default ``--num_pos 4`` (``visual_pos_dim``); regions get no position
  embedding;
* **packing**: each example's sequence is ``text_i, regions_i, padding`` (UNITER's ``gather_index``). Text and
  regions are embedded as two padded blocks and then gathered so no padding sits between them;
* a BERT encoder, BERT pooler on the first token, and vilio's head
  ``Linear(h, 2h) -> GELU -> LayerNorm -> Linear(2h, 2)`` (keys ``classifier.{0,2,3}``).

Our parameter names are UNITER's without the ``uniter.`` prefix (= vilio's ``ModelU`` without ``model.``),
so both original layouts map onto ours by prefix handling only (see ``UNITER_LAYOUTS``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from memeguard.errors import ConfigError
from memeguard.features.boxes import BoxEncoding
from memeguard.models.base import EncoderOutput, MemeModel, RegionTextProcessor, VLConfig
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

# Box encodings by number of position features: UNITER's 7 (vilio --num_pos 6) and vilio's default 4.
UNITER_BOX_ENCODINGS: dict[int, BoxEncoding] = {7: "uniter7", 4: "xyxy"}


# --------------------------------------------------------------------------------------------
# Config and processor
# --------------------------------------------------------------------------------------------
@dataclass
class UniterConfig(VLConfig):
    """UNITER sizes follow BERT; the released checkpoints use the cased BERT vocabulary (28,996 tokens).

    ``max_text_length`` defaults to the position table size because vilio does not truncate UNITER's text.
    ``use_mask_embedding`` adds UNITER's ``img_embeddings.mask_embedding`` (masked-region pretraining only;
    vilio's BertU has none, so it is off by default and the released weight is then a documented extra key).
    ``visual_pos_dim``: 7 box features as UNITER (vilio ``--num_pos 6``) or 4 as vilio's default
    ``--num_pos 4``, whose runs cannot be loaded into a 7-feature model.
    """

    model_type: ClassVar[str] = "uniter"

    vocab_size: int = 28996
    max_text_length: int = 512
    tokenizer: str = "bert-base-cased"
    use_mask_embedding: bool = False
    visual_pos_dim: int = 7

    def __post_init__(self) -> None:
        if self.visual_pos_dim not in UNITER_BOX_ENCODINGS:
            raise ConfigError(
                f"uniter: visual_pos_dim must be one of {sorted(UNITER_BOX_ENCODINGS)}, "
                f"got {self.visual_pos_dim}"
            )


class UniterProcessor(RegionTextProcessor):
    """Standard batch with UNITER's box positions (7 or 4 columns); the model packs text and regions."""

    def __init__(self, tokenizer: Any, config: VLConfig, box_encoding: BoxEncoding | None = None) -> None:
        if box_encoding is None:
            box_encoding = UNITER_BOX_ENCODINGS[getattr(config, "visual_pos_dim", 7)]
        super().__init__(tokenizer, config, box_encoding)


# --------------------------------------------------------------------------------------------
# Original checkpoints
# --------------------------------------------------------------------------------------------
UNITER_CHECKPOINT_NAMES = ("LASTtrain.pth", "LASTtraindev.pth", "uniter-large.pt", "uniter-base.pt")
# Heads of UniterForPretraining (MLM, MRFR, MRC, ITM): saved beside the backbone, unused for classification.
UNITER_PRETRAINING_HEADS = ("cls.", "feat_regress.", "region_classifier.", "itm_output.")
MASK_EMBEDDING_KEY = "img_embeddings.mask_embedding.weight"
POS_LINEAR_KEY = "img_embeddings.pos_linear.weight"
POSITION_IDS_KEY = "embeddings.position_ids"


def _release_key(key: str) -> str:
    """UNITER's own loader renames TF-style ``gamma``/``beta``; vilio's ``ModelU.load`` deletes the substring
    ``uniter.`` and strips ``module.``/``bert.``."""
    key = key.replace("uniter.", "")
    if key.endswith(".gamma"):
        key = key[: -len("gamma")] + "weight"
    elif key.endswith(".beta"):
        key = key[: -len("beta")] + "bias"
    for prefix in ("module.", "bert."):
        key = key.removeprefix(prefix)
    return key


def convert_release(state: Mapping[str, torch.Tensor], config: Any) -> StateDict:
    """A UNITER release (or a bert-prefixed pretrained file) -> our keys.

    ``pos_linear`` has UNITER's 7 columns; a 4-feature model keeps the first 4 (x1, y1, x2, y2), as vilio's
    ``ModelU.load`` does for ``--num_pos 4``.
    """
    converted = rename_unique(state, _release_key)
    weight = converted.get(POS_LINEAR_KEY)
    pos_dim = getattr(config, "visual_pos_dim", 7)
    if weight is not None and weight.ndim == 2 and weight.shape[1] == 7 and pos_dim < 7:
        converted[POS_LINEAR_KEY] = weight[:, :pos_dim].clone()
    return converted


UNITER_LAYOUTS = (
    vilio_finetuned_layout("model.", "classifier.", unexpected=lambda key: key == POSITION_IDS_KEY),
    OriginalLayout(
        "pretrained",
        lambda state: True,
        convert_release,
        lambda key: key.startswith(UNITER_PRETRAINING_HEADS) or key in {POSITION_IDS_KEY, MASK_EMBEDDING_KEY},
        hint="UNITER uniter-base.pt / uniter-large.pt",
    ),
)


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------
class UniterImageEmbeddings(nn.Module):
    """UNITER's region embedding: features and positions each projected and normalised, then summed."""

    def __init__(self, config: UniterConfig) -> None:
        super().__init__()
        hidden, eps = config.hidden_size, config.layer_norm_eps
        self.img_linear = nn.Linear(config.visual_feat_dim, hidden)
        self.img_layer_norm = nn.LayerNorm(hidden, eps=eps)
        self.pos_linear = nn.Linear(config.visual_pos_dim, hidden)
        self.pos_layer_norm = nn.LayerNorm(hidden, eps=eps)
        if config.use_mask_embedding:
            # Row 1 is added to masked regions' features (MRM/MRFR pretraining); row 0 acts as zero.
            self.mask_embedding = nn.Embedding(2, config.visual_feat_dim, padding_idx=0)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self,
        features: torch.Tensor,
        positions: torch.Tensor,
        type_embeddings: torch.Tensor,
        masked_regions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if masked_regions is not None and hasattr(self, "mask_embedding"):
            # UNITER zeroes row 0 before the lookup, so only row 1 ever contributes.
            features = features + masked_regions[..., None].to(features.dtype) * self.mask_embedding.weight[1]
        transformed_features = self.img_layer_norm(self.img_linear(features))
        transformed_positions = self.pos_layer_norm(self.pos_linear(positions))
        embeddings = transformed_features + transformed_positions + type_embeddings
        return self.dropout(self.LayerNorm(embeddings))


def pack_text_and_regions(
    text_mask: torch.Tensor, visual_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """UNITER's ``gather_index``: where each packed position reads from in
    ``cat([text [B,T], regions [B,N]])``.

    Example i's packed sequence is ``text (len t_i), regions (len n_i), padding`` with length
    ``L = max_i(t_i + n_i)``; padding positions read an arbitrary (masked) slot, as in UNITER.
    Both masks must be left-aligned (real entries first), as the processors build them.
    Returns (gather_index long [B, L], packed attention mask long [B, L]).
    """
    batch, text_width = text_mask.shape
    text_len = text_mask.long().sum(dim=1, keepdim=True)  # [B, 1]
    total_len = text_len + visual_mask.long().sum(dim=1, keepdim=True)
    length = int(total_len.max()) if batch else 0
    if torch.jit.is_tracing():  # ONNX export: a length read from the data would be frozen into the graph;
        length = text_width + visual_mask.shape[1]  # the full width adds only masked positions
    positions = torch.arange(length, device=text_mask.device).expand(batch, length)
    from_regions = text_width + positions - text_len
    in_text, in_regions = positions < text_len, positions < total_len
    gather_index = torch.where(in_text, positions, torch.where(in_regions, from_regions, positions))
    return gather_index, in_regions.long()


def _gather_rows(hidden: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """hidden [B, L, H], index [B, M] -> [B, M, H] (indices clamped into range)."""
    index = index.clamp(0, max(hidden.shape[1] - 1, 0))
    return torch.gather(hidden, 1, index[..., None].expand(-1, -1, hidden.shape[-1]))


@register_architecture
class UniterModel(MemeModel):
    """UNITER backbone + vilio's classifier; ``forward`` returns the hateful logit [B]."""

    config_class = UniterConfig
    processor_class = UniterProcessor
    original_name = "UNITER"
    original_layouts = UNITER_LAYOUTS
    original_file_names = UNITER_CHECKPOINT_NAMES
    config: UniterConfig

    def __init__(self, config: UniterConfig) -> None:
        super().__init__(config)
        self.embeddings = text_embeddings_from_config(config)
        self.img_embeddings = UniterImageEmbeddings(config)
        self.encoder = encoder_from_config(config)
        self.pooler = BertPooler(config.hidden_size)
        self.classifier = VilioClassifier(config.hidden_size, num_labels=2, eps=config.layer_norm_eps)
        self.init_weights()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def encode(self, batch: Mapping[str, torch.Tensor]) -> EncoderOutput:
        input_ids = batch["input_ids"]
        text_mask = batch["attention_mask"]
        visual_feats = batch["visual_feats"]
        visual_mask = batch["visual_mask"]

        text_emb = self.embeddings(input_ids, batch.get("token_type_ids"))
        image_type = torch.ones(visual_feats.shape[:2], dtype=torch.long, device=visual_feats.device)
        image_emb = self.img_embeddings(
            visual_feats,
            batch["visual_boxes"],
            self.embeddings.token_type_embeddings(image_type),
            batch.get("visual_masked"),
        )

        gather_index, packed_mask = pack_text_and_regions(text_mask, visual_mask)
        packed = _gather_rows(torch.cat([text_emb, image_emb], dim=1), gather_index)
        hidden = self.encoder(packed, extended_attention_mask(packed_mask, packed.dtype))
        assert isinstance(hidden, torch.Tensor)

        # Un-pack: text token t of example i sits at t, its region j at t_i + j.
        text_len = text_mask.long().sum(dim=1, keepdim=True)
        text_positions = torch.arange(input_ids.shape[1], device=hidden.device).expand_as(input_ids)
        region_positions = text_len + torch.arange(visual_mask.shape[1], device=hidden.device)[None, :]
        text_hidden = _gather_rows(hidden, text_positions) * text_mask[..., None].to(hidden.dtype)
        visual_hidden = _gather_rows(hidden, region_positions) * visual_mask[..., None].to(hidden.dtype)
        return EncoderOutput(text_hidden=text_hidden, visual_hidden=visual_hidden, pooled=self.pooler(hidden))

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return two_class_to_logit(self.classifier(self.encode(batch).pooled))

    def adapt_to_original(self, layout: OriginalLayout, state: Mapping[str, torch.Tensor]) -> None:
        """A vilio fine-tuned file fixes the number of box features (4 with vilio's default
        ``--num_pos 4``, 7 with ``--num_pos 6``): take it from its ``pos_linear``, so that the
        processor emits the matching columns."""
        weight = state.get(POS_LINEAR_KEY)
        if not layout.has_head or weight is None or weight.ndim != 2:
            return
        in_features = int(weight.shape[1])
        if in_features == self.config.visual_pos_dim or in_features not in UNITER_BOX_ENCODINGS:
            return  # the same, or unknown: load_mapped_state_dict reports the shape mismatch
        old = self.img_embeddings.pos_linear
        self.config = self.config.replace(visual_pos_dim=in_features)
        # skip_init: every weight comes from the file, so no random numbers are drawn for it.
        self.img_embeddings.pos_linear = torch.nn.utils.skip_init(
            nn.Linear, in_features, old.out_features, device=old.weight.device, dtype=old.weight.dtype
        )

    def original_key_rules(
        self, layout: OriginalLayout, state: Mapping[str, torch.Tensor]
    ) -> tuple[KeyPredicate, KeyPredicate]:
        """With ``use_mask_embedding`` the mask embedding may be missing (vilio's BertU has none)."""
        head_missing, documented = super().original_key_rules(layout, state)
        has_mask = self.config.use_mask_embedding
        return (lambda key: head_missing(key) or (has_mask and key == MASK_EMBEDDING_KEY)), documented


# --------------------------------------------------------------------------------------------
# Named configs
# --------------------------------------------------------------------------------------------
register_config("uniter-base", "uniter", tokenizer="bert-base-cased")
register_config(
    "uniter-large",
    "uniter",
    hidden_size=1024,
    num_hidden_layers=24,
    num_attention_heads=16,
    intermediate_size=4096,
    tokenizer="bert-large-cased",
)
# Tiny: offline-testable with the uncased vocabulary shipped in memeguard/assets.
register_config(
    "uniter-tiny",
    "uniter",
    vocab_size=30522,
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=128,
    tokenizer="bert-base-uncased",
)
