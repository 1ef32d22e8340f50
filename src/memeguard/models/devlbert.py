"""DeVLBERT (ViLBERT-style two-stream model), as vilio's ``D`` runs it (``src/vilio/modeling_bertD.py``,
``entryD.py``, ``src/vilio/config_bertD.json``).

Two transformer streams — text (BERT-base) and vision (1024-wide, 6 layers) — exchange information
only through co-attention layers (``c_layer.k``) placed by ``v_biattention_id`` / ``t_biattention_id``.
The pooled text and image states (ReLU poolers to ``bi_hidden_size``) are multiplied and fed to vilio's
weight-normed MLP head ``vil_prediction``.

Parameter names equal the original's (``bert.embeddings``, ``bert.v_embeddings``, ``bert.encoder.{layer,
v_layer,c_layer}``, ``bert.{t,v}_pooler``, ``vil_prediction.main.{0,3}.{weight_g,weight_v,bias}``), so both
the DeVLBERT release ``pytorch_model_11.bin`` and vilio's fine-tuned ``LASTtrain.pth`` load by name;
its ``DEVLBERT_LAYOUTS`` only handle prefixes, the 5-column location weight and the documented extra keys.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from memeguard.errors import ConfigError
from memeguard.models.base import EncoderOutput, MemeModel, RegionTextProcessor, VLConfig
from memeguard.models.blocks import (
    BertIntermediate,
    BertLayer,
    DenseResidualNorm,
    RegionEmbeddings,
    ReluPooler,
    batch_masks,
    extended_attention_mask,
    layer_kwargs_from_config,
    text_embeddings_from_config,
    two_class_to_logit,
)
from memeguard.models.checkpoints import OriginalLayout, StateDict, unwrap_vilio, vilio_finetuned_layout
from memeguard.models.registry import register_architecture, register_config

# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------


@dataclass
class DevlbertConfig(VLConfig):
    """vilio's ``src/vilio/config_bertD.json`` plus the ViLBERT ``BertConfig`` defaults it relies on."""

    model_type: ClassVar[str] = "devlbert"

    v_hidden_size: int = 1024
    v_num_hidden_layers: int = 6
    v_num_attention_heads: int = 8
    v_intermediate_size: int = 1024
    v_hidden_act: str = "gelu"
    v_hidden_dropout_prob: float = 0.1
    v_attention_probs_dropout_prob: float = 0.1
    bi_hidden_size: int = 1024
    bi_num_attention_heads: int = 8
    v_biattention_id: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4, 5])
    t_biattention_id: list[int] = field(default_factory=lambda: [6, 7, 8, 9, 10, 11])
    fusion_method: str = "mul"
    # vilio hard-codes 4 location columns (x1, y1, x2, y2); the DeVLBERT release was trained with 5.
    num_locations: int = 4
    num_labels: int = 2
    fusion_dropout_prob: float = 0.1
    head_dropout_prob: float = 0.5

    def __post_init__(self) -> None:
        if len(self.v_biattention_id) != len(self.t_biattention_id):
            raise ConfigError("devlbert: v_biattention_id and t_biattention_id must have the same length")
        if self.v_biattention_id and max(self.v_biattention_id) >= self.v_num_hidden_layers:
            raise ConfigError("devlbert: a v_biattention_id is beyond v_num_hidden_layers")
        if self.t_biattention_id and max(self.t_biattention_id) >= self.num_hidden_layers:
            raise ConfigError("devlbert: a t_biattention_id is beyond num_hidden_layers")
        if self.fusion_method not in ("mul", "sum"):
            raise ConfigError(f"devlbert: fusion_method must be 'mul' or 'sum', not {self.fusion_method!r}")
        if self.num_locations not in (4, 5):
            raise ConfigError(f"devlbert: num_locations must be 4 or 5, not {self.num_locations}")


# --------------------------------------------------------------------------------------------
# Processor
# --------------------------------------------------------------------------------------------


class DevlbertProcessor(RegionTextProcessor):
    """``[CLS] text [SEP]`` (segment 0, 128 tokens) and normalised boxes, 4 or 5 columns (+ area)."""

    def __init__(self, tokenizer: Any, config: VLConfig, box_encoding: Any = None) -> None:
        if box_encoding is None:
            box_encoding = "xyxy" if getattr(config, "num_locations", 4) == 4 else "xyxya"
        super().__init__(tokenizer, config, box_encoding)


# --------------------------------------------------------------------------------------------
# Blocks specific to ViLBERT
# --------------------------------------------------------------------------------------------


class DevlbertImageEmbeddings(RegionEmbeddings):
    """Region feature + location projections, summed, LayerNorm, dropout (no global image token)."""

    def __init__(self, config: DevlbertConfig) -> None:
        super().__init__(
            config.visual_feat_dim,
            config.v_hidden_size,
            config.num_locations,
            config.hidden_dropout_prob,
            config.layer_norm_eps,
        )


class DevlbertBiAttention(nn.Module):
    """Co-attention: text queries read vision keys/values and vision queries read text ones.

    ``*1`` projections act on the vision stream, ``*2`` on the text stream (original names).
    Returns (text-length context, vision-length context), both ``bi_hidden_size`` wide.
    """

    def __init__(self, config: DevlbertConfig) -> None:
        super().__init__()
        if config.bi_hidden_size % config.bi_num_attention_heads:
            raise ConfigError("devlbert: bi_hidden_size is not a multiple of bi_num_attention_heads")
        self.num_heads = config.bi_num_attention_heads
        self.head_dim = config.bi_hidden_size // self.num_heads
        self.query1 = nn.Linear(config.v_hidden_size, config.bi_hidden_size)
        self.key1 = nn.Linear(config.v_hidden_size, config.bi_hidden_size)
        self.value1 = nn.Linear(config.v_hidden_size, config.bi_hidden_size)
        self.query2 = nn.Linear(config.hidden_size, config.bi_hidden_size)
        self.key2 = nn.Linear(config.hidden_size, config.bi_hidden_size)
        self.value2 = nn.Linear(config.hidden_size, config.bi_hidden_size)
        self.dropout1_p = config.v_attention_probs_dropout_prob
        self.dropout2_p = config.attention_probs_dropout_prob

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

    def _attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, dropout: float
    ) -> torch.Tensor:
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask.to(q.dtype), dropout_p=dropout if self.training else 0.0
        )
        batch, _, length, _ = out.shape
        return out.transpose(1, 2).reshape(batch, length, self.num_heads * self.head_dim)

    def forward(
        self,
        vision: torch.Tensor,
        vision_mask: torch.Tensor,
        text: torch.Tensor,
        text_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        q1, k1, v1 = (
            self._split(self.query1(vision)),
            self._split(self.key1(vision)),
            self._split(self.value1(vision)),
        )
        q2, k2, v2 = (
            self._split(self.query2(text)),
            self._split(self.key2(text)),
            self._split(self.value2(text)),
        )
        text_context = self._attend(q2, k1, v1, vision_mask, self.dropout1_p)
        vision_context = self._attend(q1, k2, v2, text_mask, self.dropout2_p)
        return text_context, vision_context


class DevlbertBiOutput(nn.Module):
    """``dense1``/``LayerNorm1`` close the vision residual, ``dense2``/``LayerNorm2`` the text one."""

    def __init__(self, config: DevlbertConfig) -> None:
        super().__init__()
        eps = config.layer_norm_eps
        self.dense1 = nn.Linear(config.bi_hidden_size, config.v_hidden_size)
        self.LayerNorm1 = nn.LayerNorm(config.v_hidden_size, eps=eps)
        self.dropout1 = nn.Dropout(config.v_hidden_dropout_prob)
        self.dense2 = nn.Linear(config.bi_hidden_size, config.hidden_size)
        self.LayerNorm2 = nn.LayerNorm(config.hidden_size, eps=eps)
        self.dropout2 = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self,
        vision_context: torch.Tensor,
        vision: torch.Tensor,
        text_context: torch.Tensor,
        text: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        vision = self.LayerNorm1(self.dropout1(self.dense1(vision_context)) + vision)
        text = self.LayerNorm2(self.dropout2(self.dense2(text_context)) + text)
        return vision, text


class DevlbertConnectionLayer(nn.Module):
    """One co-attention layer: bi-attention, residual+LN per stream, then a separate FFN per stream."""

    def __init__(self, config: DevlbertConfig) -> None:
        super().__init__()
        eps = config.layer_norm_eps
        self.biattention = DevlbertBiAttention(config)
        self.biOutput = DevlbertBiOutput(config)
        self.v_intermediate = BertIntermediate(
            config.v_hidden_size, config.v_intermediate_size, config.v_hidden_act
        )
        self.v_output = DenseResidualNorm(
            config.v_intermediate_size, config.v_hidden_size, config.v_hidden_dropout_prob, eps
        )
        self.t_intermediate = BertIntermediate(
            config.hidden_size, config.intermediate_size, config.hidden_act
        )
        self.t_output = DenseResidualNorm(
            config.intermediate_size, config.hidden_size, config.hidden_dropout_prob, eps
        )

    def forward(
        self, vision: torch.Tensor, vision_mask: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        text_context, vision_context = self.biattention(vision, vision_mask, text, text_mask)
        vision, text = self.biOutput(vision_context, vision, text_context, text)
        vision = self.v_output(self.v_intermediate(vision), vision)
        text = self.t_output(self.t_intermediate(text), text)
        return vision, text


class VisionLayerSettings(NamedTuple):
    """What a two-stream model's vision layers take besides their sizes (DeVLBERT has its own ``v_``
    values, ERNIE-ViL reuses the text stream's)."""

    act: str
    attention_dropout: float
    hidden_dropout: float


class TwoStreamEncoder(nn.Module):
    """Text layers ``layer``, vision layers ``v_layer`` and co-attention layers ``c_layer``, built in that
    order (it fixes the state-dict keys and the init draws), plus the co-layer schedule ids. DeVLBERT and
    ERNIE-ViL build them alike; each subclass runs its own schedule in ``forward``."""

    def __init__(self, config: Any, vision: VisionLayerSettings, co_layer: Callable[[], nn.Module]) -> None:
        super().__init__()
        eps = config.layer_norm_eps
        self.v_biattention_id = list(config.v_biattention_id)
        self.t_biattention_id = list(config.t_biattention_id)
        self.layer = nn.ModuleList(
            BertLayer(**layer_kwargs_from_config(config)) for _ in range(config.num_hidden_layers)
        )
        self.v_layer = nn.ModuleList(
            BertLayer(
                config.v_hidden_size, config.v_num_attention_heads, config.v_intermediate_size, *vision, eps
            )
            for _ in range(config.v_num_hidden_layers)
        )
        self.c_layer = nn.ModuleList(co_layer() for _ in self.v_biattention_id)


class DevlbertEncoder(TwoStreamEncoder):
    """Schedule (ViLBERT): for each pair (v_id, t_id) run the vision layers up to v_id and the text
    layers up to t_id that have not run yet, then the next co-layer; finally the remaining layers.
    """

    def __init__(self, config: DevlbertConfig) -> None:
        vision = VisionLayerSettings(
            config.v_hidden_act, config.v_attention_probs_dropout_prob, config.v_hidden_dropout_prob
        )
        super().__init__(config, vision, lambda: DevlbertConnectionLayer(config))

    def forward(
        self, text: torch.Tensor, vision: torch.Tensor, text_mask: torch.Tensor, vision_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        v_start = t_start = 0
        for co_layer, v_end, t_end in zip(
            self.c_layer, self.v_biattention_id, self.t_biattention_id, strict=True
        ):
            for index in range(v_start, v_end):
                vision = self.v_layer[index](vision, vision_mask)
            for index in range(t_start, t_end):
                text = self.layer[index](text, text_mask)
            vision, text = co_layer(vision, vision_mask, text, text_mask)
            v_start, t_start = v_end, t_end
        for index in range(v_start, len(self.v_layer)):
            vision = self.v_layer[index](vision, vision_mask)
        for index in range(t_start, len(self.layer)):
            text = self.layer[index](text, text_mask)
        return text, vision


class DevlbertBackbone(nn.Module):
    """The original ``bert`` module (``BertModel`` of ViLBERT): embeddings, encoder, poolers."""

    def __init__(self, config: DevlbertConfig) -> None:
        super().__init__()
        self.embeddings = text_embeddings_from_config(config)
        self.v_embeddings = DevlbertImageEmbeddings(config)
        self.encoder = DevlbertEncoder(config)
        self.t_pooler = ReluPooler(config.hidden_size, config.bi_hidden_size)
        self.v_pooler = ReluPooler(config.v_hidden_size, config.bi_hidden_size)


class WeightNormLinear(nn.Module):
    """Linear layer with ``weight = weight_g * weight_v / ||weight_v||`` (``weight_norm(dim=None)``).

    Written out because ``torch.nn.utils.weight_norm`` is deprecated and its replacement
    (``parametrizations.weight_norm``) renames the keys to ``parametrizations.weight.original{0,1}``;
    vilio's checkpoints store ``weight_g`` (a 0-d scalar) and ``weight_v``.
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight_g = nn.Parameter(torch.empty(()))
        self.weight_v = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # As the original: PyTorch's default Linear init for v, g = ||v|| (BERT init cannot reach v).
        nn.init.kaiming_uniform_(self.weight_v, a=math.sqrt(5))
        with torch.no_grad():
            self.weight_g.copy_(self.weight_v.norm())
        nn.init.zeros_(self.bias)

    @property
    def weight(self) -> torch.Tensor:
        return self.weight_v * (self.weight_g / self.weight_v.norm())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class WeightNormClassifier(nn.Module):
    """vilio's ``SimpleClassifier``: ``main`` = WN-Linear(bi, 2bi) -> ReLU -> Dropout(0.5) ->
    WN-Linear(2bi, 2)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, dropout: float) -> None:
        super().__init__()
        self.main = nn.Sequential(
            WeightNormLinear(in_dim, hidden_dim),
            nn.ReLU(),
            nn.Dropout(dropout),
            WeightNormLinear(hidden_dim, out_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


# --------------------------------------------------------------------------------------------
# Original checkpoints
# --------------------------------------------------------------------------------------------

LOCATION_KEY = "bert.v_embeddings.image_location_embeddings.weight"
# Pretraining-only modules of DeVLBERT's BertForMultiModalPreTraining (MLM / region / ITM heads and
# the deconfounding "causal" projections); the fine-tuning model does not use them.
DEVLBERT_PRETRAINING_PREFIXES = ("cls.", "causal_v.", "causal_t.", "causal_t2v.", "causal_v2t.")
# vilio's ModelD builds a 4-module MLP ``classifier`` that forward() never uses (without --reg).
VILIO_UNUSED_PREFIXES = ("classifier.",)


def convert_devlbert_pretrained(state: Mapping[str, torch.Tensor], config: Any) -> StateDict:
    """``pytorch_model_11.bin`` -> our keys: names already agree once a DataParallel ``module.`` is stripped;
    the location projection was trained on 5 columns (+ area) and vilio keeps the first ``num_locations``."""
    converted = unwrap_vilio(state)
    num_locations = getattr(config, "num_locations", 4)
    if LOCATION_KEY in converted and converted[LOCATION_KEY].shape[1] != num_locations:
        converted[LOCATION_KEY] = converted[LOCATION_KEY][:, :num_locations].clone()
    return converted


DEVLBERT_LAYOUTS = (
    # vilio's LASTtrain.pth: ``model.<BertD key>``, plus the ``classifier.*`` vilio never uses.
    vilio_finetuned_layout("model.bert.", unexpected=lambda key: key.startswith(VILIO_UNUSED_PREFIXES)),
    OriginalLayout(
        "pretrained",
        lambda state: any(key.startswith("bert.") for key in unwrap_vilio(state)),
        convert_devlbert_pretrained,
        lambda key: key.startswith(DEVLBERT_PRETRAINING_PREFIXES),
        hint="DeVLBERT pytorch_model_11.bin: bert.*",
    ),
)


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------


@register_architecture
class DevlbertModel(MemeModel):
    """vilio's ``BertD``: two-stream backbone, product fusion, weight-normed two-class head."""

    config_class = DevlbertConfig
    processor_class = DevlbertProcessor
    original_name = "DeVLBERT"
    original_layouts = DEVLBERT_LAYOUTS
    config: DevlbertConfig

    def __init__(self, config: DevlbertConfig) -> None:
        super().__init__(config)
        self.bert = DevlbertBackbone(config)
        self.dropout = nn.Dropout(config.fusion_dropout_prob)
        self.vil_prediction = WeightNormClassifier(
            config.bi_hidden_size, 2 * config.bi_hidden_size, config.num_labels, config.head_dropout_prob
        )
        self.init_weights()  # BERT init; WeightNormLinear keeps its own (as the original)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.bert.embeddings.word_embeddings

    def head_parameter_names(self) -> list[str]:
        return [name for name, _ in self.named_parameters() if name.startswith("vil_prediction.")]

    def encode(self, batch: Mapping[str, torch.Tensor]) -> EncoderOutput:
        bert = self.bert
        input_ids, feats = batch["input_ids"], batch["visual_feats"]
        text_mask, vision_mask = batch_masks(batch)
        dtype = feats.dtype
        text = bert.embeddings(input_ids, batch.get("token_type_ids"))
        vision = bert.v_embeddings(feats, batch["visual_boxes"].to(dtype))
        text, vision = bert.encoder(
            text,
            vision,
            extended_attention_mask(text_mask, dtype),
            extended_attention_mask(vision_mask, dtype),
        )
        pooled_t, pooled_v = bert.t_pooler(text), bert.v_pooler(vision)
        fused = pooled_t * pooled_v if self.config.fusion_method == "mul" else pooled_t + pooled_v
        return EncoderOutput(text_hidden=text, visual_hidden=vision, pooled=fused)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        pooled = self.encode(batch).pooled
        return two_class_to_logit(self.vil_prediction(self.dropout(pooled)))


# The class's name before every architecture's class was called ``*Model``; kept for existing imports.
DevlbertForMemes = DevlbertModel


# --------------------------------------------------------------------------------------------
# Named configs
# --------------------------------------------------------------------------------------------

register_config("devlbert-base", "devlbert")
register_config(
    "devlbert-tiny",
    "devlbert",
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=128,
    v_hidden_size=64,
    v_num_hidden_layers=2,
    v_num_attention_heads=2,
    v_intermediate_size=128,
    bi_hidden_size=64,
    bi_num_attention_heads=2,
    v_biattention_id=[0, 1],
    t_biattention_id=[0, 1],
)
