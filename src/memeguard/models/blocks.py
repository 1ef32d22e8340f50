"""Transformer blocks shared by every architecture, with BERT's parameter names.

Parameter names follow the original BERT checkpoints (``attention.self.query``,
``attention.output.LayerNorm``, ``intermediate.dense``, ``output.dense`` ...) so that original
state dicts load by name. Attention runs through ``F.scaled_dot_product_attention``.
Masks are additive float tensors broadcastable to [B, heads, Lq, Lk] (0 = attend, very negative = ignore);
``extended_attention_mask`` builds one from a [B, L] 0/1 mask.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

ACT2FN = {
    "gelu": nn.GELU(),  # exact (erf) form, as BERT, UNITER, LXMERT and Paddle use
    "gelu_new": nn.GELU(approximate="tanh"),
    "relu": nn.ReLU(),
    "tanh": nn.Tanh(),
}


def get_activation(name: str) -> nn.Module:
    try:
        return ACT2FN[name]
    except KeyError as exc:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(ACT2FN)}") from exc


def extended_attention_mask(mask: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[B, L] 0/1 mask -> additive [B, 1, 1, L] mask (0 where attended, dtype-min where masked)."""
    mask = mask[:, None, None, :].to(dtype)
    return (1.0 - mask) * torch.finfo(dtype).min


def init_bert_weights(module: nn.Module, std: float = 0.02) -> None:
    """BERT initialisation: N(0, std) for Linear/Embedding weights, zero bias, LayerNorm (1, 0)."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention with ``query``/``key``/``value`` projections.

    ``ctx_dim`` lets keys/values come from another stream (cross-attention), ``head_dim_total``
    lets the attention width differ from the query width (ViLBERT/ERNIE co-attention).
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        dropout: float = 0.1,
        ctx_dim: int | None = None,
        head_dim_total: int | None = None,
    ) -> None:
        super().__init__()
        all_head = head_dim_total or hidden_size
        if all_head % num_heads:
            raise ValueError(f"attention width {all_head} is not a multiple of {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = all_head // num_heads
        self.query = nn.Linear(hidden_size, all_head)
        self.key = nn.Linear(ctx_dim or hidden_size, all_head)
        self.value = nn.Linear(ctx_dim or hidden_size, all_head)
        self.dropout_p = dropout

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(
        self,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
    ) -> torch.Tensor:
        context = hidden if context is None else context
        q = self._split(self.query(hidden))
        k = self._split(self.key(context))
        v = self._split(self.value(context))
        mask = None if attention_mask is None else attention_mask.to(q.dtype)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout_p if self.training else 0.0
        )
        batch, _, length, _ = out.shape
        return out.transpose(1, 2).reshape(batch, length, self.num_heads * self.head_dim)


class DenseResidualNorm(nn.Module):
    """``dense`` -> dropout -> add residual -> ``LayerNorm`` (BERT's SelfOutput / Output)."""

    def __init__(self, in_size: int, out_size: int, dropout: float, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(in_size, out_size)
        self.LayerNorm = nn.LayerNorm(out_size, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden)) + residual)


class BertAttention(nn.Module):
    """``self`` (attention) + ``output`` (dense, residual, LayerNorm)."""

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        attention_dropout: float = 0.1,
        hidden_dropout: float = 0.1,
        eps: float = 1e-12,
        ctx_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.self = MultiHeadAttention(hidden_size, num_heads, attention_dropout, ctx_dim=ctx_dim)
        self.output = DenseResidualNorm(hidden_size, hidden_size, hidden_dropout, eps)

    def forward(
        self,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.output(self.self(hidden, attention_mask, context), hidden)


class BertIntermediate(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, act: str = "gelu") -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, intermediate_size)
        self.intermediate_act_fn = get_activation(act)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.intermediate_act_fn(self.dense(hidden))


class BertLayer(nn.Module):
    """One post-LN transformer layer: ``attention``, ``intermediate``, ``output``."""

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        intermediate_size: int,
        act: str = "gelu",
        attention_dropout: float = 0.1,
        hidden_dropout: float = 0.1,
        eps: float = 1e-12,
    ) -> None:
        super().__init__()
        self.attention = BertAttention(hidden_size, num_heads, attention_dropout, hidden_dropout, eps)
        self.intermediate = BertIntermediate(hidden_size, intermediate_size, act)
        self.output = DenseResidualNorm(intermediate_size, hidden_size, hidden_dropout, eps)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        attended = self.attention(hidden, attention_mask)
        return self.output(self.intermediate(attended), attended)


class BertEncoder(nn.Module):
    """A stack of ``layer.{i}`` BertLayers."""

    def __init__(self, num_layers: int, **layer_kwargs: object) -> None:
        super().__init__()
        self.layer = nn.ModuleList([BertLayer(**layer_kwargs) for _ in range(num_layers)])  # type: ignore[arg-type]

    def forward(
        self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None, return_all: bool = False
    ) -> torch.Tensor | list[torch.Tensor]:
        states = [hidden]
        for layer in self.layer:
            hidden = layer(hidden, attention_mask)
            states.append(hidden)
        return states if return_all else hidden


class BertTextEmbeddings(nn.Module):
    """Word + position + token-type embeddings -> LayerNorm -> dropout (BERT's ``embeddings``)."""

    def __init__(
        self,
        vocab_size: int,
        hidden_size: int,
        max_position_embeddings: int = 512,
        type_vocab_size: int = 2,
        dropout: float = 0.1,
        eps: float = 1e-12,
        pad_token_id: int = 0,
    ) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, hidden_size, padding_idx=pad_token_id)
        self.position_embeddings = nn.Embedding(max_position_embeddings, hidden_size)
        self.token_type_embeddings = nn.Embedding(type_vocab_size, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if position_ids is None:
            position_ids = torch.arange(input_ids.shape[1], device=input_ids.device)[None, :]
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        embeddings = (
            self.word_embeddings(input_ids)
            + self.position_embeddings(position_ids)
            + self.token_type_embeddings(token_type_ids)
        )
        return self.dropout(self.LayerNorm(embeddings))


class RegionEmbeddings(nn.Module):
    """ViLBERT-style region input: feature and location projections, summed, LayerNorm, dropout.

    No global image token. DeVLBERT and ERNIE-ViL both keep these parameter names (``image_embeddings``,
    ``image_location_embeddings``, ``LayerNorm``), so one module serves both checkpoint layouts.
    """

    def __init__(
        self, feat_dim: int, hidden_size: int, num_locations: int, dropout: float, eps: float
    ) -> None:
        super().__init__()
        self.image_embeddings = nn.Linear(feat_dim, hidden_size)
        self.image_location_embeddings = nn.Linear(num_locations, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, features: torch.Tensor, locations: torch.Tensor) -> torch.Tensor:
        embeddings = self.image_embeddings(features) + self.image_location_embeddings(locations)
        return self.dropout(self.LayerNorm(embeddings))


def batch_masks(batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(text mask, region mask) of a model batch; all ones where the batch has none (every token and
    region real), as the two-stream models' original batchers assume."""
    input_ids = batch["input_ids"]
    text_mask = batch.get("attention_mask", torch.ones_like(input_ids))
    feats = batch["visual_feats"]
    vision_mask = batch.get("visual_mask")
    if vision_mask is None:
        vision_mask = torch.ones(feats.shape[:2], dtype=torch.long, device=feats.device)
    return text_mask, vision_mask


class BertPooler(nn.Module):
    """``dense`` + tanh over the first token."""

    def __init__(self, hidden_size: int, out_size: int | None = None) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, out_size or hidden_size)
        self.activation = nn.Tanh()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(hidden[:, 0]))


class ReluPooler(nn.Module):
    """``dense`` + ReLU over the first token (ViLBERT's and ERNIE-ViL's text and image poolers)."""

    def __init__(self, in_size: int, out_size: int) -> None:
        super().__init__()
        self.dense = nn.Linear(in_size, out_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.dense(hidden[:, 0]))


def layer_kwargs_from_config(config: Any) -> dict[str, Any]:
    """BertLayer arguments from a BERT-style config (``hidden_size``, ``num_attention_heads`` ...)."""
    return {
        "hidden_size": config.hidden_size,
        "num_heads": config.num_attention_heads,
        "intermediate_size": config.intermediate_size,
        "act": config.hidden_act,
        "attention_dropout": config.attention_probs_dropout_prob,
        "hidden_dropout": config.hidden_dropout_prob,
        "eps": config.layer_norm_eps,
    }


def encoder_from_config(config: Any, num_layers: int | None = None) -> BertEncoder:
    """A BertEncoder of ``num_layers`` (default ``config.num_hidden_layers``) BERT-style layers."""
    return BertEncoder(
        config.num_hidden_layers if num_layers is None else num_layers, **layer_kwargs_from_config(config)
    )


def text_embeddings_from_config(config: Any) -> BertTextEmbeddings:
    """BERT's word + position + token-type embeddings sized by a BERT-style config."""
    return BertTextEmbeddings(
        config.vocab_size,
        config.hidden_size,
        config.max_position_embeddings,
        config.type_vocab_size,
        config.hidden_dropout_prob,
        config.layer_norm_eps,
        config.pad_token_id,
    )


class MLMHead(nn.Module):
    """BERT's ``cls.predictions``: transform (dense, act, LayerNorm) then decoder tied to word embeddings."""

    def __init__(
        self, hidden_size: int, word_embeddings: nn.Embedding, act: str = "gelu", eps: float = 1e-12
    ):
        super().__init__()
        self.transform = nn.Module()
        self.transform.dense = nn.Linear(hidden_size, hidden_size)
        self.transform.transform_act_fn = get_activation(act)
        self.transform.LayerNorm = nn.LayerNorm(hidden_size, eps=eps)
        vocab_size, embed_size = word_embeddings.weight.shape
        self.decoder = nn.Linear(embed_size, vocab_size, bias=False)
        self.decoder.weight = word_embeddings.weight
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        t = self.transform
        return self.decoder(t.LayerNorm(t.transform_act_fn(t.dense(hidden)))) + self.bias


class VilioClassifier(nn.Sequential):
    """vilio's head for O/U/X: Linear(h, 2h) -> GELU -> LayerNorm -> Linear(2h, out). Keys ``{0,2,3}``."""

    def __init__(self, hidden_size: int, num_labels: int = 2, eps: float = 1e-12) -> None:
        super().__init__(
            nn.Linear(hidden_size, hidden_size * 2),
            nn.GELU(),
            nn.LayerNorm(hidden_size * 2, eps=eps),
            nn.Linear(hidden_size * 2, num_labels),
        )


def two_class_to_logit(logits: torch.Tensor) -> torch.Tensor:
    """[B, 2] class logits -> [B] hateful logit, so that sigmoid(out) == softmax(logits)[:, 1]."""
    if logits.shape[-1] == 1:
        return logits[..., 0]
    return logits[..., 1] - logits[..., 0]
