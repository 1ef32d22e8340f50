"""LXMERT (vilio's model "X"): a language stream, a relation (object) stream and cross-modality layers.

Layout, as airsplay/lxmert ``src/lxrt/modeling.py`` and vilio's ``BertX`` (``src/vilio/modeling_bertX.py``):

* ``embeddings``: BERT text embeddings (word + position + token_type -> LayerNorm -> dropout);
* ``encoder.visn_fc``: regions -> (LayerNorm(``visn_fc``(features)) + LayerNorm(``box_fc``(boxes))) / 2
  -> dropout, boxes as normalised (x1, y1, x2, y2);
* ``encoder.layer.{0..L-1}``: BERT layers on the text; ``encoder.r_layers.{0..R-1}``: BERT layers on
  the regions; ``encoder.x_layers.{0..X-1}``: cross layers. Each cross layer runs ONE cross-attention
  module ``visual_attention`` both ways (text attends to regions, regions attend to text, same
  weights), then ``lang_self_att`` / ``visn_self_att``, then the FFNs ``lang_inter``/``lang_output`` and
  ``visn_inter``/``visn_output``. Post-LN, LayerNorm eps 1e-12;
* ``pooler``: dense + tanh on the text [CLS] after the cross layers.

Depths are configurable: ``num_hidden_layers`` = L, ``r_layers`` = R, ``x_layers`` = X. ``lxmert-base``
uses vilio's bash setting 12/2/5; the released ``Epoch18_LXRT.pth`` is 9/5/5, so loading it into
``lxmert-base`` leaves text layers 9-11 at their (random) init — reported as missing keys — and
skips the checkpoint's relation layers 2-4 — reported as unexpected keys. vilio filled text layers 9-11
from bert-base-uncased: do the same with ``load_original(bert_checkpoint)`` then ``load_original(epoch18)``,
or build ``create_model("lxmert-base", num_hidden_layers=9, r_layers=5)`` to match the checkpoint exactly.

Head: vilio's ``classifier`` = Linear(H, 2H) -> GELU -> LayerNorm -> Linear(2H, 2) on the pooled output.
Padded regions (batch maximum) are masked; vilio gave every image the same box count and no mask.

Checkpoints ``load_original`` understands (detected from the keys):

* the original pre-trained ``Epoch18_LXRT.pth`` (``module.bert.*``; pre-training heads ``module.cls.*``,
  ``module.obj_predict_head.*`` unexpected-but-documented, ``module.answer_head.*`` dropped as vilio does);
* vilio fine-tuned ``LASTtrain.pth`` / ``LASTtraindev.pth``: torch ``AveragedModel`` of ``ModelX``
  (``n_averaged``, ``module.model.bert.*``, ``module.classifier.{0,2,3}.*``) or the same without SWA;
* vilio task-pretrained ``LAST_BX.pth`` (``bert.*``, ``cls.*``, ...);
* a text-only BERT checkpoint (``bert.embeddings/encoder.layer/pooler.*``, old ``LayerNorm.gamma/beta``
  names accepted): fills the text stream, leaves the visual and cross parts and the head as they are;
* Hugging Face ``LxmertModel`` / ``LxmertFor*`` weights (``lxmert.*`` or bare ``encoder.x_layers.*``),
  as ``pytorch_model.bin`` / ``model.safetensors`` or their folder.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from memeguard.errors import ConfigError
from memeguard.models.base import EncoderOutput, MemeModel, RegionTextProcessor, VLConfig
from memeguard.models.blocks import (
    BertAttention,
    BertIntermediate,
    BertLayer,
    BertPooler,
    DenseResidualNorm,
    MultiHeadAttention,
    VilioClassifier,
    extended_attention_mask,
    layer_kwargs_from_config,
    text_embeddings_from_config,
    two_class_to_logit,
)
from memeguard.models.checkpoints import (
    KeyPredicate,
    OriginalLayout,
    StateDict,
    has_prefix,
    vilio_finetuned_layout,
)
from memeguard.models.registry import register_architecture, register_config


@dataclass
class LxmertConfig(VLConfig):
    """LXMERT on bert-base-uncased. ``num_hidden_layers`` is the number of text layers (L)."""

    model_type: ClassVar[str] = "lxmert"

    num_hidden_layers: int = 12  # L: vilio's bash (--llayers 12); the original checkpoint has 9
    r_layers: int = 2  # R: object-relation layers (original 5)
    x_layers: int = 5  # X: cross-modality layers
    visual_pos_dim: int = 4  # normalised (x1, y1, x2, y2)
    num_labels: int = 2

    def __post_init__(self) -> None:
        for name in ("num_hidden_layers", "r_layers", "x_layers"):
            if getattr(self, name) < 0:
                raise ConfigError(f"lxmert: {name} must be >= 0, got {getattr(self, name)}")
        if self.visual_pos_dim != 4:
            raise ConfigError(
                f"lxmert: visual_pos_dim must be 4 (x1, y1, x2, y2 boxes), got {self.visual_pos_dim}"
            )


# -- blocks specific to LXMERT ----------------------------------------------------------------


class VisualFeatEncoder(nn.Module):
    """Region features and boxes, each projected and LayerNorm-ed, averaged."""

    def __init__(self, config: LxmertConfig) -> None:
        super().__init__()
        self.visn_fc = nn.Linear(config.visual_feat_dim, config.hidden_size)
        self.visn_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.box_fc = nn.Linear(config.visual_pos_dim, config.hidden_size)
        self.box_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, feats: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        x = self.visn_layer_norm(self.visn_fc(feats))
        y = self.box_layer_norm(self.box_fc(boxes))
        return self.dropout((x + y) / 2)


class CrossAttentionLayer(nn.Module):
    """``att`` (queries from one stream, keys/values from the other) + ``output`` (dense, residual, LN)."""

    def __init__(self, config: LxmertConfig) -> None:
        super().__init__()
        self.att = MultiHeadAttention(
            config.hidden_size, config.num_attention_heads, config.attention_probs_dropout_prob
        )
        self.output = DenseResidualNorm(
            config.hidden_size, config.hidden_size, config.hidden_dropout_prob, config.layer_norm_eps
        )

    def forward(
        self, hidden: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None
    ) -> torch.Tensor:
        return self.output(self.att(hidden, context_mask, context), hidden)


class CrossModalityLayer(nn.Module):
    """LXMERT's ``LXRTXLayer``: shared cross-attention both ways, then self-attention, then FFNs."""

    def __init__(self, config: LxmertConfig) -> None:
        super().__init__()
        attention_kwargs = dict(
            hidden_size=config.hidden_size,
            num_heads=config.num_attention_heads,
            attention_dropout=config.attention_probs_dropout_prob,
            hidden_dropout=config.hidden_dropout_prob,
            eps=config.layer_norm_eps,
        )
        self.visual_attention = CrossAttentionLayer(config)
        self.lang_self_att = BertAttention(**attention_kwargs)  # type: ignore[arg-type]
        self.visn_self_att = BertAttention(**attention_kwargs)  # type: ignore[arg-type]
        self.lang_inter = BertIntermediate(config.hidden_size, config.intermediate_size, config.hidden_act)
        self.lang_output = DenseResidualNorm(
            config.intermediate_size, config.hidden_size, config.hidden_dropout_prob, config.layer_norm_eps
        )
        self.visn_inter = BertIntermediate(config.hidden_size, config.intermediate_size, config.hidden_act)
        self.visn_output = DenseResidualNorm(
            config.intermediate_size, config.hidden_size, config.hidden_dropout_prob, config.layer_norm_eps
        )

    def forward(
        self,
        lang: torch.Tensor,
        lang_mask: torch.Tensor,
        visn: torch.Tensor,
        visn_mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # Both directions read the inputs of this layer (not each other's outputs).
        lang_att = self.visual_attention(lang, visn, visn_mask)
        visn_att = self.visual_attention(visn, lang, lang_mask)
        lang_att = self.lang_self_att(lang_att, lang_mask)
        visn_att = self.visn_self_att(visn_att, visn_mask)
        return (
            self.lang_output(self.lang_inter(lang_att), lang_att),
            self.visn_output(self.visn_inter(visn_att), visn_att),
        )


class LxmertEncoder(nn.Module):
    """``visn_fc``, then L text layers, R region layers, X cross layers (airsplay's ``LXRTEncoder``)."""

    def __init__(self, config: LxmertConfig) -> None:
        super().__init__()
        layer_kwargs = layer_kwargs_from_config(config)
        self.visn_fc = VisualFeatEncoder(config)
        self.layer = nn.ModuleList([BertLayer(**layer_kwargs) for _ in range(config.num_hidden_layers)])  # type: ignore[arg-type]
        self.x_layers = nn.ModuleList([CrossModalityLayer(config) for _ in range(config.x_layers)])
        self.r_layers = nn.ModuleList([BertLayer(**layer_kwargs) for _ in range(config.r_layers)])  # type: ignore[arg-type]

    def forward(
        self,
        lang: torch.Tensor,
        lang_mask: torch.Tensor,
        visual_feats: torch.Tensor,
        visual_boxes: torch.Tensor,
        visn_mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        visn = self.visn_fc(visual_feats, visual_boxes)
        for layer in self.layer:
            lang = layer(lang, lang_mask)
        for layer in self.r_layers:
            visn = layer(visn, visn_mask)
        for layer in self.x_layers:
            lang, visn = layer(lang, lang_mask, visn, visn_mask)
        return lang, visn


class LxmertBackbone(nn.Module):
    """``embeddings`` + ``encoder`` + ``pooler``: airsplay's ``LXRTModel`` (vilio's ``BertX.bert``)."""

    def __init__(self, config: LxmertConfig) -> None:
        super().__init__()
        self.embeddings = text_embeddings_from_config(config)
        self.encoder = LxmertEncoder(config)
        self.pooler = BertPooler(config.hidden_size)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(text states [B, T, H], region states [B, N, H], pooled [B, H])."""
        input_ids = batch["input_ids"]
        text_mask = batch.get("attention_mask")
        if text_mask is None:
            text_mask = torch.ones_like(input_ids)
        lang = self.embeddings(input_ids, batch.get("token_type_ids"))
        dtype = lang.dtype
        visn_mask = batch.get("visual_mask")
        lang, visn = self.encoder(
            lang,
            extended_attention_mask(text_mask, dtype),
            batch["visual_feats"].to(dtype),
            batch["visual_boxes"].to(dtype),
            None if visn_mask is None else extended_attention_mask(visn_mask, dtype),
        )
        return lang, visn, self.pooler(lang)


# -- original checkpoints ---------------------------------------------------------------------

_LAYER = re.compile(r"^(bert\.encoder\.(?:layer|r_layers|x_layers)\.\d+)\.")


def _layer_of(key: str) -> str | None:
    """``bert.encoder.layer.10.output.dense.weight`` -> ``bert.encoder.layer.10``; None outside the stacks."""
    match = _LAYER.match(key)
    return match.group(1) if match else None


def _layers_absent_from(source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]) -> set[str]:
    """Whole layers that ``source`` has and ``target`` has not a single key of (depth differences)."""
    target_layers = {_layer_of(key) for key in target}
    return {layer for key in source if (layer := _layer_of(key)) is not None and layer not in target_layers}


def convert_lxmert_pretrained(state: Mapping[str, torch.Tensor], config: Any = None) -> StateDict:
    """airsplay ``Epoch18_LXRT.pth`` (DataParallel ``LXRTPretraining``): strip ``module.``, drop
    ``*answer*``."""
    return {key.removeprefix("module."): value for key, value in state.items() if "answer" not in key}


def convert_vilio_pretrained(state: Mapping[str, torch.Tensor], config: Any = None) -> StateDict:
    """vilio ``LAST_BX.pth`` (``BertXPretraining``): ``bert.*`` is already our name; ``*answer*`` dropped."""
    return {key: value for key, value in state.items() if "answer" not in key}


def convert_bert(state: Mapping[str, torch.Tensor], config: Any = None) -> StateDict:
    """A BERT checkpoint (``bert-base-uncased`` ``pytorch_model.bin``): ``bert.*`` is already our name;
    the old TF-style ``LayerNorm.gamma``/``beta`` become ``weight``/``bias``."""
    out: StateDict = {}
    for key, value in state.items():
        key = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", key)
        out[re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", key)] = value
    return out


def convert_huggingface(state: Mapping[str, torch.Tensor], config: Any = None) -> StateDict:
    """Hugging Face LXMERT keys equal the original ones: ``lxmert.`` (or nothing) -> ``bert.``."""
    out: StateDict = {}
    for key, value in state.items():
        bare = key.removeprefix("lxmert.")
        if bare.startswith(("embeddings.", "encoder.", "pooler.")):
            out[f"bert.{bare}"] = value
        else:
            out[key] = value  # pre-training / QA heads: reported as unexpected
    return out


_POSITION_IDS = "bert.embeddings.position_ids"  # buffer of vilio's HF-3.0.2 BertEmbeddings
_PRETRAINING_HEADS = ("cls.", "obj_predict_head.")  # masked LM + ITM, visual feature/label regression


def _pretraining_extra(key: str) -> bool:
    return key == _POSITION_IDS or key.startswith(_PRETRAINING_HEADS)


# Tried in order (a vilio fine-tuned file's ``model.bert.*`` would also pass the looser tests below it).
LXMERT_LAYOUTS = (
    vilio_finetuned_layout("model.bert.", unexpected=lambda key: key == _POSITION_IDS),
    OriginalLayout(
        "lxmert-pretrained",
        has_prefix("module.bert."),
        convert_lxmert_pretrained,
        _pretraining_extra,
        hint="airsplay Epoch18_LXRT.pth: module.bert.*",
    ),
    OriginalLayout(
        "huggingface",
        has_prefix("lxmert.", "encoder.x_layers."),
        convert_huggingface,
        lambda key: _pretraining_extra(key) or key.startswith("answer_head."),
        hint="lxmert.*",
    ),
    OriginalLayout(
        "vilio-pretrained",
        has_prefix("bert.encoder.visn_fc.", "bert.encoder.x_layers."),
        convert_vilio_pretrained,
        _pretraining_extra,
        hint="vilio LAST_BX.pth: bert.encoder.x_layers.*",
    ),
    OriginalLayout(
        "bert",
        has_prefix("bert.encoder.layer."),
        convert_bert,
        lambda key: key == _POSITION_IDS or key.startswith("cls."),
        hint="BERT bert.encoder.layer.*",
    ),
)


# -- the model --------------------------------------------------------------------------------


class LxmertProcessor(RegionTextProcessor):
    """Text as BERT; regions with normalised (x1, y1, x2, y2) boxes (vilio's ``--num_pos 4``)."""

    box_encoding = "xyxy"


@register_architecture
class LxmertModel(MemeModel):
    """LXMERT with vilio's MLP head; ``forward(batch)`` -> hateful logit [B]."""

    config_class: ClassVar[type[VLConfig]] = LxmertConfig
    processor_class: ClassVar[type[RegionTextProcessor]] = LxmertProcessor
    original_name = "LXMERT"
    original_layouts = LXMERT_LAYOUTS
    config: LxmertConfig

    def __init__(self, config: LxmertConfig) -> None:
        super().__init__(config)
        self.bert = LxmertBackbone(config)
        self.classifier = VilioClassifier(config.hidden_size, config.num_labels, config.layer_norm_eps)
        self.init_weights()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.bert.embeddings.word_embeddings

    def encode(self, batch: Mapping[str, torch.Tensor]) -> EncoderOutput:
        lang, visn, pooled = self.bert(batch)
        return EncoderOutput(text_hidden=lang, visual_hidden=visn, pooled=pooled)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        _, _, pooled = self.bert(batch)
        return two_class_to_logit(self.classifier(pooled))

    def original_key_rules(
        self, layout: OriginalLayout, state: Mapping[str, torch.Tensor]
    ) -> tuple[KeyPredicate, KeyPredicate]:
        """Depth differences: layers the checkpoint lacks (``lxmert-base`` has 12 text layers,
        ``Epoch18_LXRT.pth`` 9) keep their init and come back as missing; layers the model lacks come
        back as unexpected. A text-only BERT file leaves the visual and cross parts at their init."""
        head_missing, documented = super().original_key_rules(layout, state)
        own = self.state_dict()
        absent_layers = _layers_absent_from(own, state)  # deeper model: these keep their init
        extra_layers = _layers_absent_from(state, own)  # deeper checkpoint: these are skipped
        text_stream = ("bert.embeddings.", "bert.encoder.layer.", "bert.pooler.")

        def allowed_missing(key: str) -> bool:
            if layout.name == "bert":
                return not key.startswith(text_stream)
            return head_missing(key) or _layer_of(key) in absent_layers

        def allowed_unexpected(key: str) -> bool:
            return documented(key) or _layer_of(key) in extra_layers

        return allowed_missing, allowed_unexpected


# -- named configs ----------------------------------------------------------------------------

register_config("lxmert-base", "lxmert", num_hidden_layers=12, r_layers=2, x_layers=5)
# The tiny config is the cross-modality encoder alone (L = R = 0). Trained from scratch, single-modality
# layers in front of the cross layers let each stream fit the training set on its own, and the model then
# never finds a rule that needs both: on the synthetic set L/R/X = 2/2/2, 1/0/2, 0/1/2, 0/2/2 and 1/1/2
# stayed at dev AUROC 0.39-0.57 (24 runs over seeds, lr 1e-3..5e-3, init std, heads, width, dropout), while
# 0/0/2 reaches 1.0 with 8 of 8 seeds (benchmarks/learning.py). Every layer is then multimodal, as in a
# single-stream model.
register_config(
    "lxmert-tiny",
    "lxmert",
    hidden_size=64,
    num_hidden_layers=0,
    r_layers=0,
    x_layers=2,
    num_attention_heads=2,
    intermediate_size=128,
)
