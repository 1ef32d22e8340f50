"""Heads on frozen CLIP embeddings: the concat-fusion baseline and Hate-CLIPper (align, cross fusion).

Hate-CLIPper (Kumar & Nandakumar 2022, ``gokulkarthik/hateclipper``) trains only a small head on the
pooled outputs of a frozen CLIP ViT-L/14: each modality is projected to ``map_dim`` (= n) dims
(Linear + Dropout p0) and L2-normalised, the two are fused into the *feature interaction matrix*
(align: its diagonal, the elementwise product, n dims; cross: the whole n x n outer product, flattened;
concat: the two vectors side by side, 2n dims), then Dropout p1, ``num_pre_output_layers`` x
(Linear -> ``pre_output_dim``, ReLU, Dropout p2) and one output unit (the hateful logit). Paper best
settings: align with 3 pre-output layers (85.80 test_seen AUROC), cross with 1 (85.12), concat 83.73.

The heads read ONLY the CLIP vectors a CLIP feature store keeps per meme in ``RegionRecord.extras``
(``image_pooled``/``text_pooled``: pre-projection pooled outputs, what the paper feeds its head;
``image_embeds``/``text_embeds``: projected and normalised), chosen by the config's ``inputs``; the patch
features and boxes of the store are never read. The vectors' sizes come from the store (the trainer sets
``image_dim``/``text_dim`` as it sets ``visual_feat_dim``).

:class:`ClipHeadConfig` inherits :class:`VLConfig` so that every tool (registry, ``from_pretrained``,
bundles) handles it as any other model; the BERT fields (``vocab_size`` ... ``tokenizer``,
``max_regions``, ``feature_mean``/``feature_std``) are unused by these heads. ``visual_feat_dim`` only
records the store's patch-feature size so that ``predict`` and ``score`` can refuse a store of another
CLIP model.

Named configs: ``clip-concat``, ``hateclipper-align``, ``hateclipper-cross`` (n = 1024: ~1.08 B
parameters), ``hateclipper-cross-32`` (the authors' ``run.sh``), their ``-tiny`` variants; RGCL lives in
:mod:`memeguard.models.rgcl`. The family's optimiser settings: ``train --family-defaults``
(``train_defaults`` below). The authors' trained heads load with ``train --init their.ckpt``.
Fine-tuning the last k CLIP layers (``unfreeze_clip_layers = k``, default 0) keeps the one store-based
trainer: the store is extracted with ``clip`` ``unfreeze_layers: k`` (the inputs of the last k layers of
each tower, see :mod:`memeguard.features.clip`), and the model holds copies of those k layers of each tower
plus the vision ``post_layernorm`` and text ``final_layer_norm`` (and the projections for
``inputs=projected``), initialised from the CLIP folder ``clip_model`` (the trainer takes it from the
store's meta). It runs them over the stored hidden states (text: causal + padding mask, as CLIP) and pools
as CLIP does ([CLS] -> post_layernorm; the EOS token after final_layer_norm), so at step 0 the head sees
exactly the frozen head's inputs. The tower configs are kept in the model config (``clip_towers``), so a
saved model loads without the CLIP folder. The copied layers live under ``clip_encoder.``: a name with
"encoder", so the trainer's ``head_lr_mult`` (backbone at ``lr``, everything else at ``lr x head_lr_mult``)
gives them a smaller lr than the head: e.g. ``lr 1e-5, head_lr_mult 10`` trains the head at Hate-CLIPper's
1e-4 and the CLIP layers at 1e-5 (no separate field needed).
Explanations (``memeguard explain``, the report's gallery): integrated gradients over the two pooled vectors
(``attribution_inputs`` ... below), from zero vectors; a per-modality attribution, the text as one token
and the image as one region with the whole-image box (the vectors do not say which word or patch
mattered). A model with unfreeze_clip_layers > 0 computes its vectors from stored hidden states and RGCL's
kNN classifier is a vote with no gradient: both are refused in one line.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from memeguard.errors import CheckpointError, ConfigError, DataError
from memeguard.features.record import RegionRecord
from memeguard.models.base import EncoderOutput, MemeLike, MemeModel, RegionTextProcessor, VLConfig
from memeguard.models.checkpoints import OriginalLayout
from memeguard.models.registry import register_architecture, register_config

Fusion = Literal["concat", "align", "cross"]
ClipInputs = Literal["pooled", "projected"]

# The extras each ``inputs`` choice reads: (image key, text key). Fixed names of the CLIP feature store.
INPUT_EXTRAS: dict[str, tuple[str, str]] = {
    "pooled": ("image_pooled", "text_pooled"),
    "projected": ("image_embeds", "text_embeds"),
}

# The largest head a config may ask for: hateclipper-cross (n = 1024) has ~1.08 B weights (4.3 GB in fp32);
# about twice that is allowed, anything beyond is a typo that would exhaust memory.
MAX_HEAD_PARAMETERS = 2 * 1024**3
INPUTS_HINT = "inputs=pooled reads image_pooled/text_pooled, inputs=projected image_embeds/text_embeds"

# Hate-CLIPper's optimisation (paper §4 and ``hateclipper:main.py``): AdamW lr 1e-4, weight decay 1e-4,
# batch 64, at most 20 epochs, grad-norm clip 0.1, the best dev epoch kept. The authors keep the lr
# constant; our one trainer decays it linearly (warmup 0), the closest schedule it offers. Give these to
# ``memeguard train`` (or a recipe's ``train:`` block); the BERT-style defaults stay vilio's.
HATECLIPPER_TRAIN_DEFAULTS: dict[str, Any] = {
    "lr": 1e-4,
    "weight_decay": 1e-4,
    "batch_size": 64,
    "epochs": 20,
    "clip": 0.1,
    "warmup_ratio": 0.0,
    "sum_loss": False,
    "swa": "none",
    "select_best": True,
    "eval_every": 133,  # one epoch of batch 64 on HM's 8,500 training memes: the best epoch is kept
}


# Keys of the authors' Lightning checkpoint we do not use: the frozen CLIP towers the head sits on, and the
# auxiliary heads of their optional losses (image-only, text-only, fine-grained labels).
HATECLIPPER_UNUSED = (
    "image_encoder.",
    "text_encoder.",
    "pre_output_image.",
    "output_image.",
    "pre_output_text.",
    "output_text.",
    "output_pc",
    "output_attack",
    "output_super.",
)


def _is_hateclipper(state: Mapping[str, torch.Tensor]) -> bool:
    prefixes = ("image_map.", "text_map.", "pre_output.")
    return all(any(key.startswith(p) for key in state) for p in prefixes) and "output.weight" in state


# ``hateclipper:engine.py`` (``CLIPClassifier``, ``use_pretrained_map=False``): the head's modules carry
# our names and indices (``image_map.0``, ``pre_output.1/4/7``, ``output``); ``ModelCheckpoint`` saves
# them in a Lightning ``.ckpt`` under ``state_dict`` (read_torch_checkpoint unwraps it).
HATECLIPPER_LIGHTNING = OriginalLayout(
    "hateclipper-lightning",
    _is_hateclipper,
    lambda state, config: dict(state),
    unexpected=lambda key: key.startswith(HATECLIPPER_UNUSED),
    has_head=True,
    hint="Hate-CLIPper's Lightning .ckpt: image_map.*, text_map.*, pre_output.*, output.*",
)


@dataclass
class ClipHeadConfig(VLConfig):
    """Config of a head on CLIP embeddings (see the module docstring for the unused BERT fields)."""

    model_type: ClassVar[str] = "hateclipper"

    fusion: Fusion = "align"  # a registered config's own; overriding it changes the head
    inputs: ClipInputs = "pooled"
    image_dim: int = 1024  # CLIP ViT-L/14 vision width (pooled); set from the store by the trainer
    text_dim: int = 768  # CLIP ViT-L/14 text width (pooled)
    map_dim: int = 1024  # n: the projection size each modality is mapped to before fusion
    pre_output_dim: int = 1024
    num_pre_output_layers: int = 1
    # Dropout after the projections, after the fusion, after each pre-output layer (the paper's order).
    drop_probs: list[float] = field(default_factory=lambda: [0.2, 0.4, 0.1])
    # Fine-tune the last k layers of each CLIP tower (the store must hold their inputs: module docstring).
    unfreeze_clip_layers: int = 0
    clip_model: str = ""  # the CLIP folder (or hub id) the unfrozen layers start from; set by the trainer
    clip_towers: dict[str, Any] = field(default_factory=dict)  # {"vision": ..., "text": ...} tower configs

    def __post_init__(self) -> None:
        """Refuse sizes that cannot build a head, or would build one too large to allocate (a cross
        fusion's first layer grows with map_dim squared)."""
        name = type(self).__name__
        if len(self.drop_probs) != 3 or not all(0 <= p < 1 for p in self.drop_probs):
            raise ConfigError(f"{name}: drop_probs needs 3 values in [0, 1), got {self.drop_probs}")
        sizes = {k: getattr(self, k) for k in ("image_dim", "text_dim", "map_dim", "pre_output_dim")}
        if min(sizes.values()) < 1 or self.num_pre_output_layers < 0 or self.unfreeze_clip_layers < 0:
            raise ConfigError(
                f"{name}: sizes must be >= 1, num_pre_output_layers and unfreeze_clip_layers >= 0, "
                f"got {sizes}"
            )
        total = self.parameter_count()
        if total > MAX_HEAD_PARAMETERS:
            raise ConfigError(
                f"{name}: {self.fusion} fusion of map_dim {self.map_dim} makes a head of {total:,} weights "
                f"(more than {MAX_HEAD_PARAMETERS:,}); use a smaller map_dim, pre_output_dim or depth"
            )

    def parameter_count(self) -> int:
        """The head's trainable parameters, from the sizes alone (checked before anything is allocated)."""
        n, m, layers = self.map_dim, self.pre_output_dim, self.num_pre_output_layers
        width = fused_dim(self.fusion, n)
        maps = (self.image_dim + 1) * n + (self.text_dim + 1) * n
        pre = ((width + 1) * m + (layers - 1) * (m + 1) * m) if layers else 0
        return maps + pre + (m if layers else width) + 1


class ClipEmbeddingProcessor(RegionTextProcessor):
    """Memes + region records -> ``ids``, ``labels``, ``image_feats`` [B, Di], ``text_feats`` [B, Dt].

    Only ``record.extras`` is read; the text was embedded by the extractor, so no tokenizer is needed.
    """

    def __init__(self, tokenizer: Any, config: VLConfig) -> None:
        super().__init__(tokenizer, config)
        assert isinstance(config, ClipHeadConfig)
        self.head_config = config

    def vector(self, record: RegionRecord, key: str, dim: int) -> np.ndarray:
        """One extra as float32 [dim]; a missing, mis-sized or non-finite vector names the meme."""
        if key not in record.extras:
            raise ConfigError(
                f"meme {record.meme_id}: its region record has no {key!r} vector (it has "
                f"{sorted(record.extras)}); {self.head_config.model_type} models read CLIP embeddings: "
                f"extract the features with the clip extractor ({INPUTS_HINT})"
            )
        value = np.asarray(record.extras[key], dtype=np.float32).reshape(-1)
        if value.shape[0] != dim:
            raise ConfigError(
                f"meme {record.meme_id}: {key} has {value.shape[0]} dims, the model expects {dim}"
            )
        if not np.isfinite(value).all():
            raise DataError(f"meme {record.meme_id}: {key} holds NaN or inf")
        return value

    def __call__(self, memes: Sequence[MemeLike], regions: Sequence[RegionRecord]) -> dict[str, torch.Tensor]:
        if len(memes) != len(regions):
            raise ValueError(f"{len(memes)} memes but {len(regions)} region records")
        cfg = self.head_config
        image_key, text_key = INPUT_EXTRAS[cfg.inputs]
        image = np.stack([self.vector(r, image_key, cfg.image_dim) for r in regions])
        text = np.stack([self.vector(r, text_key, cfg.text_dim) for r in regions])
        batch = {
            "ids": torch.tensor([int(m.id) for m in memes], dtype=torch.long),
            "image_feats": torch.from_numpy(image),
            "text_feats": torch.from_numpy(text),
        }
        if cfg.unfreeze_clip_layers:
            batch.update(self.layer_inputs(regions))
        if all(m.label is not None for m in memes):
            batch["labels"] = torch.tensor([float(m.label) for m in memes], dtype=torch.float32)
        return batch

    def region_boxes(self, record: RegionRecord) -> np.ndarray:
        """One box, the whole image: the head reads one pooled image vector, the explanation's one region
        (the patch boxes of the store are never read)."""
        height, width = record.image_size
        return np.asarray([[0.0, 0.0, float(width), float(height)]], dtype=np.float32)

    # -- unfreeze_clip_layers > 0: the stored inputs of the last k layers ------------------------------
    def layer_inputs(self, regions: Sequence[RegionRecord]) -> dict[str, torch.Tensor]:
        """``vision_hidden`` [B, T, Dv] (the regions), ``text_hidden`` [B, L, Dt], ``text_mask`` [B, L],
        ``text_eos`` [B]; a record of a store made for another k (or none) is a ConfigError naming both."""
        cfg = self.head_config
        towers = cfg.clip_towers
        width = int(towers["text"]["hidden_size"])
        for record in regions:
            stored = int(np.asarray(record.extras.get("unfreeze_layers", [0])).reshape(-1)[0])
            if stored != cfg.unfreeze_clip_layers:
                raise ConfigError(
                    f"meme {record.meme_id}: the feature store holds the inputs of the last {stored} CLIP "
                    f"layers (clip extractor unfreeze_layers={stored}), the model has unfreeze_clip_layers="
                    f"{cfg.unfreeze_clip_layers}; extract the store with that unfreeze_layers"
                )
        length = self.vector(regions[0], "text_mask", len(regions[0].extras["text_mask"]))
        size = length.shape[0]
        text = np.stack([self.vector(r, "text_hidden", size * width).reshape(size, width) for r in regions])
        vision = [np.asarray(r.features, dtype=np.float32) for r in regions]
        if len({v.shape for v in vision}) != 1 or not all(np.isfinite(v).all() for v in vision):
            raise DataError(
                f"memes {[r.meme_id for r in regions]}: CLIP layer inputs differ in shape or hold NaN"
            )
        eos = [int(self.vector(r, "text_eos", 1)[0]) for r in regions]
        for record, position in zip(regions, eos, strict=True):
            if not 0 <= position < size:
                raise DataError(
                    f"meme {record.meme_id}: text_eos {position} is outside its {size} text tokens"
                )
        return {
            "vision_hidden": torch.from_numpy(np.stack(vision)),
            "text_hidden": torch.from_numpy(text),
            "text_mask": torch.from_numpy(np.stack([self.vector(r, "text_mask", size) for r in regions])),
            "text_eos": torch.tensor(eos, dtype=torch.long),
        }


def fuse(image: torch.Tensor, text: torch.Tensor, fusion: str) -> torch.Tensor:
    """The feature interaction matrix of two [B, n] batches: align -> [B, n] (its diagonal), cross ->
    [B, n*n] (row i = image_i * text, flattened row-major), concat -> [B, 2n]."""
    if fusion == "align":
        return image * text
    if fusion == "cross":
        return torch.bmm(image.unsqueeze(2), text.unsqueeze(1)).flatten(1)
    if fusion == "concat":
        return torch.cat([image, text], dim=1)
    raise ConfigError(f"unknown fusion {fusion!r}; known: concat, align, cross")


def fused_dim(fusion: str, map_dim: int) -> int:
    sizes = {"align": map_dim, "cross": map_dim * map_dim, "concat": 2 * map_dim}
    if fusion not in sizes:
        raise ConfigError(f"unknown fusion {fusion!r}; known: concat, align, cross")
    return sizes[fusion]


@register_architecture
class ClipFusionModel(MemeModel):
    """Hate-CLIPper's head (and the concat baseline): projections, fusion, pre-output MLP, one logit.

    ``hateclipper-cross`` (n = 1024) holds ~1.08 B trainable parameters, almost all in the first
    pre-output layer (n^2 x 1024): about 4.3 GB in fp32 plus AdamW's two moments. ``hateclipper-cross-32``
    is the authors' ``run.sh`` setting (n = 32, ~1 M parameters).
    """

    config_class: ClassVar[type[VLConfig]] = ClipHeadConfig
    processor_class: ClassVar[type[RegionTextProcessor]] = ClipEmbeddingProcessor
    original_name: ClassVar[str] = "Hate-CLIPper"
    original_layouts: ClassVar[tuple[OriginalLayout, ...]] = (HATECLIPPER_LIGHTNING,)
    train_defaults: ClassVar[dict[str, Any]] = HATECLIPPER_TRAIN_DEFAULTS
    reads_region_features: ClassVar[bool] = False  # only the per-meme CLIP vectors of the extras
    pretrainable: ClassVar[bool] = False  # no text encoder for MLM/ITM

    def __init__(self, config: VLConfig) -> None:
        super().__init__(config)
        assert isinstance(config, ClipHeadConfig)
        p_map, p_fused, p_pre = config.drop_probs
        self.image_map = nn.Sequential(nn.Linear(config.image_dim, config.map_dim), nn.Dropout(p_map))
        self.text_map = nn.Sequential(nn.Linear(config.text_dim, config.map_dim), nn.Dropout(p_map))
        layers: list[nn.Module] = [nn.Dropout(p_fused)]
        width = fused_dim(config.fusion, config.map_dim)
        for _ in range(config.num_pre_output_layers):
            layers += [nn.Linear(width, config.pre_output_dim), nn.ReLU(), nn.Dropout(p_pre)]
            width = config.pre_output_dim
        self.pre_output = nn.Sequential(*layers)
        self.output = nn.Linear(width, 1)
        if config.unfreeze_clip_layers:
            self.clip_encoder = ClipTowerTops.for_config(config)

    def fused(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Projected, L2-normalised, fused features (the input of the pre-output MLP)."""
        batch = self.with_tower_outputs(batch)
        image = F.normalize(self.image_map(batch["image_feats"].float()), p=2, dim=1)
        text = F.normalize(self.text_map(batch["text_feats"].float()), p=2, dim=1)
        return fuse(image, text, self.config.fusion)  # type: ignore[attr-defined]

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.output(self.pre_output(self.fused(batch))).squeeze(-1)

    def with_tower_outputs(self, batch: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
        """With unfrozen CLIP layers: ``image_feats``/``text_feats`` computed by them from the stored layer
        inputs (what the extractor would have stored as the pooled/projected extras); else ``batch``."""
        if not self.config.unfreeze_clip_layers:  # type: ignore[attr-defined]
            return batch
        image, text = self.clip_encoder(batch)
        return {**batch, "image_feats": image, "text_feats": text}

    def build_processor(self, tokenizer: Any | None = None) -> RegionTextProcessor:
        """The text was embedded by the CLIP extractor: no tokenizer to load."""
        return self.processor_class(tokenizer, self.config)

    def head_parameter_names(self) -> list[str]:
        """Every parameter is the head's but the unfrozen CLIP layers (``clip_encoder``, copied from CLIP)."""
        return [name for name, _ in self.named_parameters() if not name.startswith(CLIP_LAYERS_PREFIX)]

    def original_key_rules(
        self, layout: OriginalLayout, state: Mapping[str, torch.Tensor]
    ) -> tuple[Any, Any]:
        """The authors' heads hold no copies of CLIP layers: ``clip_encoder`` keeps the CLIP weights."""
        missing, unexpected = super().original_key_rules(layout, state)
        return (lambda key: key.startswith(CLIP_LAYERS_PREFIX) or missing(key)), unexpected

    def init_weights(self) -> None:
        """PyTorch's default Linear init, as the authors' head (nothing to redo)."""

    # -- explanations: integrated gradients over the two pooled vectors --------------------------------
    def attribution_inputs(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``text``: the text vector as one "token" [B, 1, Dt]; ``regions``: the image vector as one region
        [B, 1, Di] (its box is the whole image). A per-modality attribution: the vectors do not say which
        word or which part of the image mattered. Refused with unfrozen CLIP layers: they recompute the
        vectors from the stored hidden states, so the batch's vectors do not reach the logit."""
        if self.config.unfreeze_clip_layers:  # type: ignore[attr-defined]
            raise ConfigError(
                f"{self.config.model_type} with unfreeze_clip_layers={self.config.unfreeze_clip_layers} "  # type: ignore[attr-defined]
                "cannot be explained yet: its CLIP vectors come from the unfrozen layers, not the batch"
            )
        return {
            "text": batch["text_feats"].detach().float().unsqueeze(1),
            "regions": batch["image_feats"].detach().float().unsqueeze(1),
        }

    def attribution_baselines(
        self, batch: Mapping[str, torch.Tensor], inputs: Mapping[str, torch.Tensor], keep: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Zero vectors: no text, no image (the head then sees its projections' biases); ``keep`` is
        unused, a pooled vector has no special tokens."""
        return {name: torch.zeros_like(value) for name, value in inputs.items()}

    def forward_from_inputs(self, batch: Mapping[str, torch.Tensor], **inputs: torch.Tensor) -> torch.Tensor:
        """The hateful logit [B] with the CLIP vectors replaced by ``inputs`` (shaped as
        :meth:`attribution_inputs` gives them)."""
        batch = dict(batch)
        if "text" in inputs:
            batch["text_feats"] = inputs["text"].squeeze(1)
        if "regions" in inputs:
            batch["image_feats"] = inputs["regions"].squeeze(1)
        return self(batch)

    def encode(self, batch: Mapping[str, torch.Tensor]) -> EncoderOutput:
        raise ConfigError(f"{self.config.model_type} models have no text encoder to pretrain (MLM/ITM)")

    def get_input_embeddings(self) -> nn.Embedding:
        raise ConfigError(f"{self.config.model_type} models have no word embeddings")

    @classmethod
    def store_overrides(
        cls, config: VLConfig, record: RegionRecord, meta: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """``image_dim``/``text_dim`` from a store record's extras (for the config's ``inputs``); with
        ``unfreeze_clip_layers``, the CLIP folder from the store's meta (when the config names none)."""
        assert isinstance(config, ClipHeadConfig)
        found = unfreeze_overrides(config, meta)
        image_key, text_key = INPUT_EXTRAS[config.inputs]
        dims = {}
        for name, key in (("image_dim", image_key), ("text_dim", text_key)):
            if key not in record.extras:
                raise ConfigError(
                    f"meme {record.meme_id}: the feature store has no {key!r} vectors (it has "
                    f"{sorted(record.extras)}); {config.model_type} models need a CLIP feature store "
                    f"({INPUTS_HINT})"
                )
            dims[name] = int(np.asarray(record.extras[key]).size)
        return {**dims, **found}


# ---------------------------------------------------------------- unfreeze_clip_layers > 0


def unfreeze_overrides(config: ClipHeadConfig, meta: Mapping[str, Any] | None) -> dict[str, Any]:
    """The store's k must be the model's (a ConfigError naming both); ``clip_model`` from its meta."""
    k = config.unfreeze_clip_layers
    if not k or meta is None:
        return {}
    stored = int(meta.get("unfreeze_layers", 0) or 0)
    if stored != k:
        raise ConfigError(
            f"the feature store holds the inputs of the last {stored} CLIP layers (clip extractor "
            f"unfreeze_layers={stored}), the model has unfreeze_clip_layers={k}; they must be equal"
        )
    if config.clip_model or config.clip_towers:
        return {}
    model_dir, model_id = meta.get("model_dir"), meta.get("model")
    return {"clip_model": str(model_dir if model_dir and Path(str(model_dir)).exists() else model_id)}


# The unfrozen CLIP layers' module: "encoder" in its name puts it in the trainer's backbone parameter group,
# so ``head_lr_mult`` > 1 trains the head faster than the CLIP layers (vilio's rule, optim.parameter_groups).
CLIP_LAYERS_PREFIX = "clip_encoder."
# What a CLIP encoder layer and the final norms are built from (kept in ``clip_towers``).
TOWER_KEYS = (
    "hidden_size", "intermediate_size", "num_attention_heads", "hidden_act", "layer_norm_eps",
    "attention_dropout",
)  # fmt: skip


def _tower_config(kind: str, values: Mapping[str, Any]) -> Any:
    from transformers import CLIPTextConfig, CLIPVisionConfig

    config = (CLIPVisionConfig if kind == "vision" else CLIPTextConfig)(**dict(values))
    config._attn_implementation = "sdpa"
    return config


class ClipTowerTops(nn.Module):
    """The last k encoder layers of each CLIP tower, their final norms (and projections), run over the
    stored inputs of those layers and pooled as CLIP pools: [CLS] -> ``post_layernorm`` for the image, the
    EOS token after ``final_layer_norm`` for the text (causal + padding mask, as CLIP's text encoder)."""

    def __init__(self, towers: Mapping[str, Mapping[str, Any]], layers: int, projected: bool) -> None:
        from transformers.models.clip.modeling_clip import CLIPEncoderLayer

        super().__init__()
        vision, text = _tower_config("vision", towers["vision"]), _tower_config("text", towers["text"])
        self.vision_layers = nn.ModuleList(CLIPEncoderLayer(vision) for _ in range(layers))
        self.post_layernorm = nn.LayerNorm(vision.hidden_size, eps=vision.layer_norm_eps)
        self.text_layers = nn.ModuleList(CLIPEncoderLayer(text) for _ in range(layers))
        self.final_layer_norm = nn.LayerNorm(text.hidden_size, eps=text.layer_norm_eps)
        self.projected = projected
        if projected:
            dim = int(towers["projection_dim"])
            self.visual_projection = nn.Linear(vision.hidden_size, dim, bias=False)
            self.text_projection = nn.Linear(text.hidden_size, dim, bias=False)

    @classmethod
    def for_config(cls, config: ClipHeadConfig) -> ClipTowerTops:
        """From ``clip_towers`` (a saved model: its weights load next), else copied from ``clip_model``."""
        k, projected = config.unfreeze_clip_layers, config.inputs == "projected"
        if config.clip_towers:
            return cls(config.clip_towers, k, projected)
        clip = load_clip(config)
        depth = min(clip.config.vision_config.num_hidden_layers, clip.config.text_config.num_hidden_layers)
        if k > depth:
            raise ConfigError(
                f"{config.clip_model}: unfreeze_clip_layers={k}, but the CLIP towers have {depth} layers"
            )
        config.clip_towers = {
            "vision": {key: getattr(clip.config.vision_config, key) for key in TOWER_KEYS},
            "text": {key: getattr(clip.config.text_config, key) for key in TOWER_KEYS},
            "projection_dim": int(clip.config.projection_dim),
        }
        tops = cls(config.clip_towers, k, projected)
        tops.copy_from(clip, k)
        return tops

    def copy_from(self, clip: Any, k: int) -> None:
        """The CLIP model's last k layers of each tower, its final norms and projections."""
        self.vision_layers.load_state_dict(clip.vision_model.encoder.layers[-k:].state_dict())
        self.text_layers.load_state_dict(clip.text_model.encoder.layers[-k:].state_dict())
        self.post_layernorm.load_state_dict(clip.vision_model.post_layernorm.state_dict())
        self.final_layer_norm.load_state_dict(clip.text_model.final_layer_norm.state_dict())
        if self.projected:
            self.visual_projection.load_state_dict(clip.visual_projection.state_dict())
            self.text_projection.load_state_dict(clip.text_projection.state_dict())

    def pool_image(self, hidden: torch.Tensor) -> torch.Tensor:
        for layer in self.vision_layers:
            hidden = layer(hidden, None)
        return self.post_layernorm(hidden[:, 0])

    def pool_text(self, hidden: torch.Tensor, mask: torch.Tensor, eos: torch.Tensor) -> torch.Tensor:
        length = hidden.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool, device=hidden.device).tril()
        allowed = causal[None, None] & (mask[:, None, None, :] > 0.5)
        additive = torch.zeros(allowed.shape, dtype=hidden.dtype, device=hidden.device)
        additive = additive.masked_fill(~allowed, torch.finfo(hidden.dtype).min)
        for layer in self.text_layers:
            hidden = layer(hidden, additive)
        hidden = self.final_layer_norm(hidden)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), eos]

    def forward(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(image, text) as the extractor's pooled extras, or its projected + L2-normalised ones."""
        image = self.pool_image(batch["vision_hidden"].float())
        text = self.pool_text(batch["text_hidden"].float(), batch["text_mask"], batch["text_eos"])
        if self.projected:
            image = F.normalize(self.visual_projection(image), dim=-1)
            text = F.normalize(self.text_projection(text), dim=-1)
        return image, text


def load_clip(config: ClipHeadConfig) -> Any:
    """transformers' ``CLIPModel`` from ``clip_model`` (local files only), or a one-line error."""
    from transformers import CLIPModel

    if not config.clip_model:
        raise ConfigError(
            f"{config.model_type}: unfreeze_clip_layers={config.unfreeze_clip_layers} needs clip_model (the "
            "CLIP folder its layers start from; `train` takes it from the feature store's meta)"
        )
    try:
        return CLIPModel.from_pretrained(config.clip_model, local_files_only=True).eval()
    except (OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise CheckpointError(f"{config.clip_model}: cannot load the CLIP model ({first})") from None


_TINY = {"map_dim": 16, "pre_output_dim": 16, "image_dim": 32, "text_dim": 24}

register_config("clip-concat", "hateclipper", fusion="concat", map_dim=1024, pre_output_dim=1024)
register_config(
    "hateclipper-align",
    "hateclipper",
    fusion="align",
    map_dim=1024,
    pre_output_dim=1024,
    num_pre_output_layers=3,
)
register_config("hateclipper-cross", "hateclipper", fusion="cross", map_dim=1024, pre_output_dim=1024)
register_config("hateclipper-cross-32", "hateclipper", fusion="cross", map_dim=32, pre_output_dim=32)
register_config("clip-concat-tiny", "hateclipper", fusion="concat", **_TINY)
register_config("hateclipper-align-tiny", "hateclipper", fusion="align", num_pre_output_layers=3, **_TINY)
register_config("hateclipper-cross-tiny", "hateclipper", fusion="cross", **{**_TINY, "map_dim": 8})
