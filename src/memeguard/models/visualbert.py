"""VisualBERT (vilio's model "V"): one BERT stream over [text tokens ; projected region features].

Layout, as in MMF's ``VisualBERTBase`` and vilio's ``BertV`` (``src/vilio/modeling_bertV.py``):

* text embeddings: word + position(0..T-1) + token_type (BERT);
* visual embeddings: ``projection``(region features) + ``position_embeddings_visual``(all ids 0)
  + ``token_type_embeddings_visual``(all ids 1). Box coordinates are *not* used: vilio never passes
  ``image_text_alignment``, so every region gets visual position 0;
* the two sequences are concatenated and go through ONE shared ``LayerNorm`` + dropout, then the
  BERT encoder and pooler.

Heads (``VisualBertConfig.head``):

* ``"layeravg"`` (vilio's ``--reg``, used by every V run): the [CLS] vector of all ``L + 1`` hidden
  states (embeddings + each layer), Dropout(0.2) on each, weighted by softmax(``layer_weights``)
  (init -3 for all but the last, 0 for the last), then "multi-sample dropout": the mean of
  ``classifier(Dropout(0.5)(x))`` over 5 samples, ``classifier`` = Linear(H, 2). The pooler is
  computed by vilio but unused in this head, so we skip it.
* ``"mlp"``: vilio's O/U/X head (``VilioClassifier``) on the pooled output.

Our parameter names: ``bert.{embeddings,encoder,pooler}.*`` (MMF's names under ``model.bert.``),
``layer_weights`` and ``classifier.*`` (vilio's). Padded regions are masked (vilio padded every image
to ``num_features`` boxes and attended to the zero padding; with real boxes only, both agree).

Checkpoints ``load_original`` understands (detected from the keys):

* MMF COCO pre-trained ``model.pth`` (``model.bert.*`` + pre-training head ``model.cls.*``);
* vilio fine-tuned ``LASTtrain.pth`` / ``LASTtraindev.pth``: torch ``AveragedModel`` of ``ModelV``
  (``n_averaged``, ``module.model.*`` incl. ``module.model.layer_weights``, ``module.classifier.*``),
  or the same without SWA (``model.*``, ``classifier.*``);
* vilio task-pretrained ``LAST_BV.pth`` (``bert.*`` + ``cls.*`` / ``obj_predict_head.*``);
* Hugging Face ``VisualBertModel`` / ``VisualBertFor*`` weights (``visual_bert.*`` or bare
  ``embeddings.visual_projection.*``), as ``pytorch_model.bin`` / ``model.safetensors`` or their folder.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from memeguard.errors import ConfigError
from memeguard.models.base import EncoderOutput, MemeModel, RegionTextProcessor, VLConfig
from memeguard.models.blocks import (
    BertPooler,
    VilioClassifier,
    encoder_from_config,
    extended_attention_mask,
    two_class_to_logit,
)
from memeguard.models.checkpoints import OriginalLayout, StateDict, has_prefix, vilio_finetuned_layout
from memeguard.models.registry import register_architecture, register_config

HEADS = ("layeravg", "mlp")


@dataclass
class VisualBertConfig(VLConfig):
    """VisualBERT on bert-base-uncased (vilio's ``--tr bert-base-uncased``, MMF COCO checkpoint)."""

    model_type: ClassVar[str] = "visualbert"

    head: str = "layeravg"  # "layeravg" (vilio --reg) or "mlp"
    layer_dropout: float = 0.2  # dropout on each layer's [CLS] before the weighted sum
    sample_dropout: float = 0.5  # multi-sample dropout before the classifier
    num_dropout_samples: int = 5
    num_labels: int = 2

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise ConfigError(f"visualbert: head must be one of {HEADS}, got {self.head!r}")


# -- embeddings -------------------------------------------------------------------------------


class VisualBertEmbeddings(nn.Module):
    """Text and visual embeddings sharing one LayerNorm (MMF's ``BertVisioLinguisticEmbeddings``)."""

    def __init__(self, config: VisualBertConfig) -> None:
        super().__init__()
        hidden = config.hidden_size
        self.word_embeddings = nn.Embedding(config.vocab_size, hidden, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, hidden)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, hidden)
        self.token_type_embeddings_visual = nn.Embedding(config.type_vocab_size, hidden)
        self.position_embeddings_visual = nn.Embedding(config.max_position_embeddings, hidden)
        self.projection = nn.Linear(config.visual_feat_dim, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, visual_feats: torch.Tensor
    ) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)[None, :]
        text = (
            self.word_embeddings(input_ids)
            + self.position_embeddings(positions)
            + self.token_type_embeddings(token_type_ids)
        )
        # Every region: visual position id 0 and visual token type 1 (vilio never aligns regions to words).
        region_ids = torch.zeros(visual_feats.shape[:2], dtype=torch.long, device=visual_feats.device)
        visual = (
            self.projection(visual_feats)
            + self.position_embeddings_visual(region_ids)
            + self.token_type_embeddings_visual(region_ids + 1)
        )
        return self.dropout(self.LayerNorm(torch.cat([text, visual], dim=1)))


class VisualBertBackbone(nn.Module):
    """``embeddings`` + BERT ``encoder`` + ``pooler``: MMF's ``VisualBERTBase`` without the bypass option."""

    def __init__(self, config: VisualBertConfig) -> None:
        super().__init__()
        self.embeddings = VisualBertEmbeddings(config)
        self.encoder = encoder_from_config(config)
        self.pooler = BertPooler(config.hidden_size)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        """All hidden states: [embedding output, layer 1, ..., layer L], each [B, T + N, H]."""
        input_ids = batch["input_ids"]
        visual_feats = batch["visual_feats"]
        token_type_ids = batch.get("token_type_ids")
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        text_mask = batch.get("attention_mask")
        if text_mask is None:
            text_mask = torch.ones_like(input_ids)
        visual_mask = batch.get("visual_mask")
        if visual_mask is None:
            visual_mask = torch.ones(visual_feats.shape[:2], dtype=torch.long, device=visual_feats.device)
        embedded = self.embeddings(
            input_ids, token_type_ids, visual_feats.to(self.embeddings.word_embeddings.weight.dtype)
        )
        mask = extended_attention_mask(
            torch.cat([text_mask, visual_mask.to(text_mask.dtype)], dim=1), embedded.dtype
        )
        return self.encoder(embedded, mask, return_all=True)  # type: ignore[return-value]


# -- original checkpoints ---------------------------------------------------------------------

HF_RENAMES = {
    "embeddings.visual_projection.": "embeddings.projection.",
    "embeddings.visual_token_type_embeddings.": "embeddings.token_type_embeddings_visual.",
    "embeddings.visual_position_embeddings.": "embeddings.position_embeddings_visual.",
}
# The position_ids buffer of HF >= 3 BertEmbeddings, which every layout may carry.
_POSITION_IDS = "bert.embeddings.position_ids"


def _vilio_model_key(key: str) -> str:
    """A ``ModelV.model`` (BertV) key -> ours: ``layer_weights`` stays at the top, the rest goes under
    ``bert.``."""
    return key if key == "layer_weights" else f"bert.{key}"


def convert_mmf(state: Mapping[str, torch.Tensor], config: Any = None) -> StateDict:
    """MMF ``model.pth``: ``model.bert.*`` -> ``bert.*``; ``model.cls.*`` left as is (unexpected)."""
    return {
        (key.removeprefix("model.") if key.startswith("model.bert.") else key): v for key, v in state.items()
    }


def convert_vilio_pretrained(state: Mapping[str, torch.Tensor], config: Any = None) -> StateDict:
    """vilio ``LAST_BV.pth`` (``BertVPretraining``): ``bert.*`` is already our name."""
    return dict(state)


def convert_huggingface(state: Mapping[str, torch.Tensor], config: Any = None) -> StateDict:
    """Hugging Face ``VisualBertModel`` keys -> ours (three embedding renames, ``bert.`` prefix)."""
    out: StateDict = {}
    for key, value in state.items():
        bare = key.removeprefix("visual_bert.")
        if not bare.startswith(("embeddings.", "encoder.", "pooler.")):
            out[key] = value  # pre-training / task heads: reported as unexpected
            continue
        for old, new in HF_RENAMES.items():
            if bare.startswith(old):
                bare = new + bare[len(old) :]
        out[f"bert.{bare}"] = value
    return out


def _is_hf_visualbert(state: Mapping[str, torch.Tensor]) -> bool:
    hf_projection = "embeddings.visual_projection.weight"
    return any(key.startswith("visual_bert.") for key in state) or hf_projection in state


# Tried in order. Unused keys: the position_ids buffer, the pre-training heads (masked LM
# ``cls.predictions``, ITM ``cls.seq_relationship``, LXMERT-style ``obj_predict_head``) and Hugging
# Face's task heads (``cls.*`` / ``attention.*`` of VisualBertFor*).
VISUALBERT_LAYOUTS = (
    vilio_finetuned_layout(
        "model.embeddings.", backbone_key=_vilio_model_key, unexpected=lambda key: key == _POSITION_IDS
    ),
    OriginalLayout(
        "mmf",
        has_prefix("model.bert."),
        convert_mmf,
        lambda key: key == _POSITION_IDS or key.startswith("model.cls."),
        hint="MMF model.pth: model.bert.*",
    ),
    OriginalLayout(
        "huggingface",
        _is_hf_visualbert,
        convert_huggingface,
        lambda key: key == _POSITION_IDS or key.startswith(("cls.", "attention.")),
        hint="visual_bert.*",
    ),
    OriginalLayout(
        "vilio-pretrained",
        has_prefix("bert.embeddings."),
        convert_vilio_pretrained,
        lambda key: key == _POSITION_IDS or key.startswith(("cls.", "obj_predict_head.")),
        hint="vilio LAST_BV.pth: bert.*",
    ),
)


# -- the model --------------------------------------------------------------------------------


@register_architecture
class VisualBertModel(MemeModel):
    """VisualBERT with vilio's head; ``forward(batch)`` -> hateful logit [B]."""

    config_class: ClassVar[type[VLConfig]] = VisualBertConfig
    processor_class: ClassVar[type[RegionTextProcessor]] = RegionTextProcessor
    original_name = "VisualBERT"
    original_layouts = VISUALBERT_LAYOUTS
    config: VisualBertConfig

    def __init__(self, config: VisualBertConfig) -> None:
        super().__init__(config)
        self.bert = VisualBertBackbone(config)
        if config.head == "layeravg":
            self.layer_dropout = nn.Dropout(config.layer_dropout)
            self.layer_weights = nn.Parameter(torch.zeros(config.num_hidden_layers + 1))
            self.sample_dropout = nn.Dropout(config.sample_dropout)
            self.classifier: nn.Module = nn.Linear(config.hidden_size, config.num_labels)
        else:
            self.classifier = VilioClassifier(config.hidden_size, config.num_labels, config.layer_norm_eps)
        self.init_weights()

    def init_weights(self) -> None:
        super().init_weights()
        if self.config.head == "layeravg":
            with torch.no_grad():
                self.layer_weights.fill_(-3.0)
                self.layer_weights[-1] = 0.0

    def get_input_embeddings(self) -> nn.Embedding:
        return self.bert.embeddings.word_embeddings

    def head_parameter_names(self) -> list[str]:
        # vilio's --reg optimiser gives everything outside encoder/embeddings/pooler lr x 500, layer_weights
        # included.
        return [name for name, _ in self.named_parameters() if not name.startswith("bert.")]

    def _pool(self, states: list[torch.Tensor]) -> torch.Tensor:
        if self.config.head == "mlp":
            return self.bert.pooler(states[-1])
        cls = torch.stack([self.layer_dropout(state[:, 0]) for state in states], dim=-1)  # [B, H, L+1]
        return (torch.softmax(self.layer_weights, dim=0) * cls).sum(-1)

    def encode(self, batch: Mapping[str, torch.Tensor]) -> EncoderOutput:
        states = self.bert(batch)
        text_length = batch["input_ids"].shape[1]
        last = states[-1]
        return EncoderOutput(
            text_hidden=last[:, :text_length], visual_hidden=last[:, text_length:], pooled=self._pool(states)
        )

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        pooled = self._pool(self.bert(batch))
        if self.config.head == "mlp":
            return two_class_to_logit(self.classifier(pooled))
        samples = [
            self.classifier(self.sample_dropout(pooled)) for _ in range(self.config.num_dropout_samples)
        ]
        return two_class_to_logit(torch.stack(samples, dim=0).mean(dim=0))


# -- named configs ----------------------------------------------------------------------------

register_config("visualbert-base", "visualbert")
register_config(
    "visualbert-tiny",
    "visualbert",
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=128,
)
