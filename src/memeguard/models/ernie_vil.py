"""ERNIE-ViL base / large (two-stream, post-LN) as vilio's PaddlePaddle sub-project runs it
(``ernie-vil/model/ernie_vil.py``, ``ernie-vil/model/vl_transformer_encoder.py``).

Text stream (BERT-like, 4 sentence types), vision stream whose first region is a *global* token (mean of
all region features, location [0, 0, 1, 1, 1]), and co-attention layers placed by
``v_biattention_id`` / ``t_biattention_id``. Pooled text token 0 and image token 0 go through fc+ReLU,
are multiplied (``mul`` fusion) and scored by ``hm_fc`` (one logit, sigmoid loss).

Paddle specifics reproduced: LayerNorm epsilon 1e-5, exact gelu, attention biases built from the
outer product of the masks ((m_i·m_j − 1)·10000), position ids 0 on padding, no final LayerNorm.

Checkpoints are Paddle ``params`` / ``step_*`` folders (one LoDTensor file per variable);
:func:`read_paddle_params` parses them with numpy alone, :func:`paddle_name_map` names every
parameter of ours after its Paddle variable (fc weights are stored [in, out] and are transposed).
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from memeguard.checkpoint_io import load_mapped_state_dict
from memeguard.errors import CheckpointError, ConfigError
from memeguard.features.boxes import ernie_layout
from memeguard.features.record import RegionRecord
from memeguard.models.base import EncoderOutput, MemeLike, MemeModel, RegionTextProcessor, VLConfig
from memeguard.models.blocks import (
    BertIntermediate,
    DenseResidualNorm,
    MultiHeadAttention,
    RegionEmbeddings,
    ReluPooler,
    batch_masks,
    text_embeddings_from_config,
)
from memeguard.models.devlbert import TwoStreamEncoder, VisionLayerSettings
from memeguard.models.registry import register_architecture, register_config

# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------


@dataclass
class ErnieVilConfig(VLConfig):
    """``ernie_vil_config.base.json`` / ``ernie_vil.large.json`` with Paddle's defaults.

    ``type_vocab_size`` is the config's ``sent_type_vocab_size`` (4). ``intermediate_size`` is 4 × hidden
    for the released sizes (the Paddle code derives it; it is not a config key there).
    """

    model_type: ClassVar[str] = "ernie-vil"

    type_vocab_size: int = 4
    layer_norm_eps: float = 1e-5
    v_hidden_size: int = 1024
    v_num_hidden_layers: int = 6
    v_num_attention_heads: int = 8
    v_intermediate_size: int = 1024
    co_hidden_size: int = 1024
    co_num_attention_heads: int = 8
    v_biattention_id: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4, 5])
    t_biattention_id: list[int] = field(default_factory=lambda: [6, 7, 8, 9, 10, 11])
    fusion_method: str = "mul"
    fusion_dropout_prob: float = 0.1
    # Without gt mixing the original reader keeps 37 regions; vilio's HM runs always mix (100).
    max_regions: int = 100

    def __post_init__(self) -> None:
        v_ids, t_ids = list(self.v_biattention_id), list(self.t_biattention_id)
        if not v_ids or len(v_ids) != len(t_ids):
            raise ConfigError(
                "ernie-vil: v_biattention_id and t_biattention_id must be non-empty and of equal length"
            )
        if v_ids != sorted(v_ids) or t_ids != sorted(t_ids):
            raise ConfigError("ernie-vil: co-attention ids must be non-decreasing")
        # The Paddle encoder runs exactly one text/vision layer after the last co-layer, so the layer
        # counts follow from the ids; anything else would leave parameters unused or missing.
        if self.num_hidden_layers != t_ids[-1] + 1:
            raise ConfigError(
                f"ernie-vil: num_hidden_layers must be t_biattention_id[-1] + 1 = {t_ids[-1] + 1}, "
                f"not {self.num_hidden_layers}"
            )
        if self.v_num_hidden_layers != v_ids[-1] + 1:
            raise ConfigError(
                f"ernie-vil: v_num_hidden_layers must be v_biattention_id[-1] + 1 = {v_ids[-1] + 1}, "
                f"not {self.v_num_hidden_layers}"
            )
        if self.fusion_method not in ("mul", "sum"):
            raise ConfigError(f"ernie-vil: fusion_method must be 'mul' or 'sum', not {self.fusion_method!r}")


# --------------------------------------------------------------------------------------------
# Processor
# --------------------------------------------------------------------------------------------


def mix_gt_regions(
    main: tuple[np.ndarray, np.ndarray], gt: tuple[np.ndarray, np.ndarray], max_regions: int = 100
) -> tuple[np.ndarray, np.ndarray]:
    """vilio's ``use_gt_fea`` mixing of two region sets of one image (``ernie-vil/reader/hm_finetuning.py``).

    Both inputs are ERNIE layouts (global token first). The main global token becomes the
    count-weighted mean of both global tokens; the gt regions (without their global token) keep
    their first ``max_regions - 1`` rows and the main set fills what is left, global token first.
    """
    features, locations = main
    gt_features, gt_locations = gt
    n_main, n_gt = features.shape[0], gt_features.shape[0]
    features = features.copy()
    features[0] = (features[0] * n_main + gt_features[0] * n_gt) / (n_main + n_gt)
    kept_gt = min(max_regions - 1, n_gt - 1)
    kept_main = min(max_regions - kept_gt, n_main)
    mixed_features = np.concatenate([features[:kept_main], gt_features[1 : 1 + kept_gt]], axis=0)
    mixed_locations = np.concatenate([locations[:kept_main], gt_locations[1 : 1 + kept_gt]], axis=0)
    return mixed_features[:max_regions], mixed_locations[:max_regions]


class ErnieVilProcessor(RegionTextProcessor):
    """``[CLS] text [SEP]`` (segment 0) and the ERNIE region layout: [global ; regions], 5-d locations.

    Pass ``gt_regions`` (a second region set of the same memes, vilio's ``HM_gt_img.tsv``) to
    reproduce ``use_gt_fea``; without it the first ``max_regions`` rows of one set are used.
    """

    box_encoding = "xyxya"

    def encode_regions(self, record: RegionRecord) -> tuple[np.ndarray, np.ndarray]:
        # The global token averages ALL regions of the file; truncation comes after it.
        features, locations = ernie_layout(record.features, record.boxes, record.image_size)
        n = self.config.max_regions
        return features[:n], locations[:n]

    def region_boxes(self, record: RegionRecord) -> np.ndarray:
        """The global token's box is the whole image (its location is [0, 0, 1, 1, 1]), then the regions."""
        height, width = record.image_size
        whole = np.array([[0.0, 0.0, width, height]], dtype=np.float32)
        boxes = np.asarray(record.boxes, dtype=np.float32).reshape(-1, 4)
        return np.concatenate([whole, boxes], axis=0)[: self.config.max_regions]

    def __call__(
        self,
        memes: Sequence[MemeLike],
        regions: Sequence[RegionRecord],
        gt_regions: Sequence[RegionRecord] | None = None,
    ) -> dict[str, torch.Tensor]:
        if gt_regions is None:
            return super().__call__(memes, regions)
        if not (len(memes) == len(regions) == len(gt_regions)):
            raise ValueError(
                f"{len(memes)} memes, {len(regions)} region records, {len(gt_regions)} gt records"
            )
        self.check_regions(regions)
        self.check_regions(gt_regions)
        regions, gt_regions = self.normalize_regions(regions), self.normalize_regions(gt_regions)
        for main, gt in zip(regions, gt_regions, strict=True):
            if main.meme_id != gt.meme_id:
                raise ConfigError(f"gt region record of meme {gt.meme_id} paired with meme {main.meme_id}")
        batch = self.tokenize([meme.text for meme in memes])
        encoded = [
            mix_gt_regions(
                ernie_layout(main.features, main.boxes, main.image_size),
                ernie_layout(gt.features, gt.boxes, gt.image_size),
                self.config.max_regions,
            )
            for main, gt in zip(regions, gt_regions, strict=True)
        ]
        return self.add_regions(batch, memes, encoded)


# --------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------


def pair_attention_bias(query_mask: torch.Tensor, key_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Paddle's bias ``(m_q · m_kᵀ − 1) · 10000`` as [B, 1, Lq, Lk].

    Unlike a key-only mask, padded *query* rows see every key with the same bias; kept so that
    padded positions match the original too (valid positions are unaffected either way).
    """
    product = query_mask.to(dtype)[:, :, None] * key_mask.to(dtype)[:, None, :]
    return ((product - 1.0) * 10000.0)[:, None]


class ErnieVilImageEmbeddings(RegionEmbeddings):
    """``image_emb`` fc + ``image_loc`` fc (5-d locations), summed, LayerNorm, dropout."""

    def __init__(self, config: ErnieVilConfig) -> None:
        super().__init__(
            config.visual_feat_dim,
            config.v_hidden_size,
            5,  # the release's 5-d box locations
            config.hidden_dropout_prob,
            config.layer_norm_eps,
        )


class CrossAttention(nn.Module):
    """Attention from one stream into the other, ``co_hidden`` wide, projected back to the query width."""

    def __init__(self, query_size: int, context_size: int, config: ErnieVilConfig) -> None:
        super().__init__()
        self.self = MultiHeadAttention(
            query_size,
            config.co_num_attention_heads,
            config.attention_probs_dropout_prob,
            ctx_dim=context_size,
            head_dim_total=config.co_hidden_size,
        )
        self.output = DenseResidualNorm(
            config.co_hidden_size, query_size, config.hidden_dropout_prob, config.layer_norm_eps
        )

    def forward(self, hidden: torch.Tensor, context: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(hidden, bias, context), hidden)


class ErnieVilCoLayer(nn.Module):
    """``encoder_colayer_k``: both cross-attentions read the *input* states, then one FFN per stream."""

    def __init__(self, config: ErnieVilConfig) -> None:
        super().__init__()
        eps, drop = config.layer_norm_eps, config.hidden_dropout_prob
        self.t_attention = CrossAttention(config.hidden_size, config.v_hidden_size, config)
        self.v_attention = CrossAttention(config.v_hidden_size, config.hidden_size, config)
        self.t_intermediate = BertIntermediate(
            config.hidden_size, config.intermediate_size, config.hidden_act
        )
        self.t_output = DenseResidualNorm(config.intermediate_size, config.hidden_size, drop, eps)
        self.v_intermediate = BertIntermediate(
            config.v_hidden_size, config.v_intermediate_size, config.hidden_act
        )
        self.v_output = DenseResidualNorm(config.v_intermediate_size, config.v_hidden_size, drop, eps)

    def forward(
        self,
        text: torch.Tensor,
        vision: torch.Tensor,
        text_to_vision: torch.Tensor,
        vision_to_text: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        new_text = self.t_attention(text, vision, text_to_vision)
        new_vision = self.v_attention(vision, text, vision_to_text)
        new_text = self.t_output(self.t_intermediate(new_text), new_text)
        new_vision = self.v_output(self.v_intermediate(new_vision), new_vision)
        return new_text, new_vision


class ErnieVilEncoder(TwoStreamEncoder):
    """Text ``layer.i``, vision ``v_layer.j``, co-layers ``c_layer.k``, scheduled as vilio's
    ``ernie-vil/model/vl_transformer_encoder.py``."""

    def __init__(self, config: ErnieVilConfig) -> None:
        vision = VisionLayerSettings(
            config.hidden_act, config.attention_probs_dropout_prob, config.hidden_dropout_prob
        )
        super().__init__(config, vision, lambda: ErnieVilCoLayer(config))

    def forward(
        self, text: torch.Tensor, vision: torch.Tensor, text_mask: torch.Tensor, vision_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = text.dtype
        text_bias = pair_attention_bias(text_mask, text_mask, dtype)
        vision_bias = pair_attention_bias(vision_mask, vision_mask, dtype)
        text_to_vision = pair_attention_bias(text_mask, vision_mask, dtype)
        vision_to_text = pair_attention_bias(vision_mask, text_mask, dtype)
        t_start = v_start = 0
        for co_layer, v_end, t_end in zip(
            self.c_layer, self.v_biattention_id, self.t_biattention_id, strict=True
        ):
            for index in range(t_start, t_end):
                text = self.layer[index](text, text_bias)
            for index in range(v_start, v_end):
                vision = self.v_layer[index](vision, vision_bias)
            text, vision = co_layer(text, vision, text_to_vision, vision_to_text)
            t_start, v_start = t_end, v_end
        # Exactly one more layer per stream (index = last id), as the Paddle encoder.
        text = self.layer[t_start](text, text_bias)
        vision = self.v_layer[v_start](vision, vision_bias)
        return text, vision


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------


@register_architecture
class ErnieVilModel(MemeModel):
    """ERNIE-ViL with vilio's HM head ``hm_fc`` (one logit)."""

    config_class = ErnieVilConfig
    processor_class = ErnieVilProcessor
    original_name = "ERNIE-ViL"
    config: ErnieVilConfig

    def __init__(self, config: ErnieVilConfig) -> None:
        super().__init__(config)
        self.embeddings = text_embeddings_from_config(config)
        self.v_embeddings = ErnieVilImageEmbeddings(config)
        self.encoder = ErnieVilEncoder(config)
        self.text_pooler = ReluPooler(config.hidden_size, config.co_hidden_size)
        self.image_pooler = ReluPooler(config.v_hidden_size, config.co_hidden_size)
        self.dropout = nn.Dropout(config.fusion_dropout_prob)
        self.classifier = nn.Linear(config.co_hidden_size, 1)
        self.init_weights()
        # Paddle's TruncatedNormal(0.02) for hm_fc (cut at two standard deviations).
        nn.init.trunc_normal_(
            self.classifier.weight,
            std=config.initializer_range,
            a=-2 * config.initializer_range,
            b=2 * config.initializer_range,
        )

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def encode(self, batch: Mapping[str, torch.Tensor]) -> EncoderOutput:
        input_ids, feats = batch["input_ids"], batch["visual_feats"]
        text_mask, vision_mask = batch_masks(batch)
        # The Paddle batcher pads position ids with 0, like the token ids.
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)[None, :] * text_mask.long()
        text = self.embeddings(input_ids, batch.get("token_type_ids"), positions)
        vision = self.v_embeddings(feats, batch["visual_boxes"].to(feats.dtype))
        text, vision = self.encoder(text, vision, text_mask, vision_mask)
        pooled_t, pooled_v = self.text_pooler(text), self.image_pooler(vision)
        fused = pooled_t * pooled_v if self.config.fusion_method == "mul" else pooled_t + pooled_v
        return EncoderOutput(text_hidden=text, visual_hidden=vision, pooled=fused)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.classifier(self.dropout(self.encode(batch).pooled))[:, 0]

    def load_original(self, path: str | os.PathLike[str]) -> tuple[list[str], list[str]]:
        """Load a Paddle ``params/`` folder (pretrained) or a fine-tuned ``step_*`` folder.

        Paddle saves one file per variable, not a state dict, so this replaces the base class's
        layout table with a name table (:func:`paddle_name_map`); the key accounting is the same.

        Returns (missing, unexpected) in *our* key names for the model's parameters, plus the
        Paddle names of extra variables that were skipped (pretraining heads) in ``unexpected``.
        """
        folder = Path(path)
        if not folder.is_dir():
            raise CheckpointError(f"{folder}: expected a Paddle params folder (one file per variable)")
        names = paddle_name_map(self.config)
        files = {p.name for p in folder.iterdir() if p.is_file()}
        extras = sorted(name for name in files - set(names) if not is_paddle_optimizer_state(name))
        fine_tuned = HEAD_PARAMS[0] in files
        # An extra that looks like one of our variables means the folder is for another config
        # (e.g. a large checkpoint given to a base model). Other extras are pretraining heads
        # (params/) or persistable temporaries of the training program (step_*/): skipped, reported.
        suspicious = [name for name in extras if _MODEL_VARIABLE.match(name)]
        if suspicious:
            raise CheckpointError(
                f"{folder}: unexplained variables {suspicious[:20]} ({len(suspicious)}) for an "
                f"{self.config.model_type} model with {self.config.num_hidden_layers} text / "
                f"{self.config.v_num_hidden_layers} vision layers"
            )
        arrays = read_paddle_params(folder, names=[name for name in names if name in files])
        state = convert_paddle_params(arrays, self.config)
        missing, unexpected = load_mapped_state_dict(
            self,
            state,
            source=str(folder),
            allowed_missing=(lambda key: key.startswith("classifier.")) if not fine_tuned else (),
        )
        return missing, unexpected + extras


# --------------------------------------------------------------------------------------------
# Paddle parameter names
# --------------------------------------------------------------------------------------------

HEAD_PARAMS = ("hm_fc.w_0", "hm_fc.b_0")
_MODEL_VARIABLE = re.compile(
    r"^(encoder_(layer|vlayer|colayer)_\d+_|word_embedding$|pos_embedding$|sent_embedding$|image_emb\.|image_loc\.|"
    r"(vl_)?pre_encoder_layer_norm_|pooled_fc_(text|image)\.|hm_fc\.)"
)
_OPTIMIZER_STATE = re.compile(
    r"(_moment[12]_\d+|_beta[12]_pow_acc_\d+|_velocity_\d+)$|^@LR_DECAY_COUNTER@$|^learning_rate(_\d+)?$"
    r"|^scheduled_learning_rate|^loss_scaling|^num_(good|bad)_steps"
)


def is_paddle_optimizer_state(name: str) -> bool:
    """Adam moments / beta powers and LR-schedule variables that ``save_persistables`` writes."""
    return bool(_OPTIMIZER_STATE.search(name))


def _fc(paddle: str, ours: str) -> dict[str, tuple[str, bool]]:
    """A Paddle fc: ``.w_0`` [in, out] (transposed for nn.Linear) and ``.b_0``."""
    return {f"{paddle}.w_0": (f"{ours}.weight", True), f"{paddle}.b_0": (f"{ours}.bias", False)}


def _norm(paddle: str, ours: str) -> dict[str, tuple[str, bool]]:
    return {
        f"{paddle}_layer_norm_scale": (f"{ours}.weight", False),
        f"{paddle}_layer_norm_bias": (f"{ours}.bias", False),
    }


def _self_layer(paddle: str, ours: str) -> dict[str, tuple[str, bool]]:
    """``encoder_layer_i`` / ``encoder_vlayer_j`` -> a BertLayer."""
    table: dict[str, tuple[str, bool]] = {}
    for part in ("query", "key", "value"):
        table.update(_fc(f"{paddle}_multi_head_att_{part}_fc", f"{ours}.attention.self.{part}"))
    table.update(_fc(f"{paddle}_multi_head_att_output_fc", f"{ours}.attention.output.dense"))
    table.update(_norm(f"{paddle}_post_att", f"{ours}.attention.output.LayerNorm"))
    table.update(_fc(f"{paddle}_ffn_fc_0", f"{ours}.intermediate.dense"))
    table.update(_fc(f"{paddle}_ffn_fc_1", f"{ours}.output.dense"))
    table.update(_norm(f"{paddle}_post_ffn", f"{ours}.output.LayerNorm"))
    return table


def _co_layer(paddle: str, ours: str) -> dict[str, tuple[str, bool]]:
    """``encoder_colayer_k``: text side un-prefixed, vision side ``_vl_``."""
    table: dict[str, tuple[str, bool]] = {}
    for side, stream in (("", "t"), ("_vl", "v")):
        for part in ("query", "key", "value"):
            table.update(
                _fc(f"{paddle}{side}_multi_head_att_{part}_fc", f"{ours}.{stream}_attention.self.{part}")
            )
        table.update(
            _fc(f"{paddle}{side}_multi_head_att_output_fc", f"{ours}.{stream}_attention.output.dense")
        )
        table.update(_norm(f"{paddle}{side}_post_att", f"{ours}.{stream}_attention.output.LayerNorm"))
        table.update(_fc(f"{paddle}{side}_ffn_fc_0", f"{ours}.{stream}_intermediate.dense"))
        table.update(_fc(f"{paddle}{side}_ffn_fc_1", f"{ours}.{stream}_output.dense"))
        table.update(_norm(f"{paddle}{side}_post_ffn", f"{ours}.{stream}_output.LayerNorm"))
    return table


def paddle_name_map(config: ErnieVilConfig) -> dict[str, tuple[str, bool]]:
    """Paddle variable name -> (our parameter name, transpose?) for every parameter of the model."""
    table: dict[str, tuple[str, bool]] = {
        "word_embedding": ("embeddings.word_embeddings.weight", False),
        "pos_embedding": ("embeddings.position_embeddings.weight", False),
        "sent_embedding": ("embeddings.token_type_embeddings.weight", False),
    }
    table.update(_norm("pre_encoder", "embeddings.LayerNorm"))
    table.update(_fc("image_emb", "v_embeddings.image_embeddings"))
    table.update(_fc("image_loc", "v_embeddings.image_location_embeddings"))
    table.update(_norm("vl_pre_encoder", "v_embeddings.LayerNorm"))
    for i in range(config.num_hidden_layers):
        table.update(_self_layer(f"encoder_layer_{i}", f"encoder.layer.{i}"))
    for j in range(config.v_num_hidden_layers):
        table.update(_self_layer(f"encoder_vlayer_{j}", f"encoder.v_layer.{j}"))
    for k in range(len(config.v_biattention_id)):
        table.update(_co_layer(f"encoder_colayer_{k}", f"encoder.c_layer.{k}"))
    table.update(_fc("pooled_fc_text", "text_pooler.dense"))
    table.update(_fc("pooled_fc_image", "image_pooler.dense"))
    table.update(_fc("hm_fc", "classifier"))
    return table


def convert_paddle_params(
    arrays: Mapping[str, np.ndarray], config: ErnieVilConfig
) -> dict[str, torch.Tensor]:
    """Paddle arrays (by variable name) -> our state dict; unknown names are an error."""
    table = paddle_name_map(config)
    unknown = sorted(set(arrays) - set(table))
    if unknown:
        raise CheckpointError(f"no ERNIE-ViL parameter is called {unknown[:20]}")
    state: dict[str, torch.Tensor] = {}
    for name, array in arrays.items():
        ours, transpose = table[name]
        tensor = torch.from_numpy(np.ascontiguousarray(array.T if transpose else array))
        state[ours] = tensor.float() if tensor.is_floating_point() else tensor
    return state


# --------------------------------------------------------------------------------------------
# Paddle LoDTensor files (numpy only)
# --------------------------------------------------------------------------------------------

# framework.proto VarType.Type -> numpy dtype (little-endian)
PADDLE_DTYPES: dict[int, np.dtype] = {
    0: np.dtype("?"),  # BOOL
    1: np.dtype("<i2"),  # INT16
    2: np.dtype("<i4"),  # INT32
    3: np.dtype("<i8"),  # INT64
    4: np.dtype("<f2"),  # FP16
    5: np.dtype("<f4"),  # FP32
    6: np.dtype("<f8"),  # FP64
    19: np.dtype("<u8"),  # SIZE_T
    20: np.dtype("u1"),  # UINT8
    21: np.dtype("i1"),  # INT8
}


def _read_varint(buffer: bytes, pos: int, where: str) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buffer):
            raise CheckpointError(f"{where}: truncated varint in the tensor description")
        byte = buffer[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise CheckpointError(f"{where}: varint longer than 10 bytes in the tensor description")


def _as_int64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def parse_tensor_desc(buffer: bytes, where: str = "tensor") -> tuple[int, list[int]]:
    """``VarType.TensorDesc`` protobuf -> (data_type, dims); dims may be packed or not."""
    data_type: int | None = None
    dims: list[int] = []
    pos = 0
    while pos < len(buffer):
        key, pos = _read_varint(buffer, pos, where)
        field_number, wire_type = key >> 3, key & 7
        if field_number == 1 and wire_type == 0:
            data_type, pos = _read_varint(buffer, pos, where)
        elif field_number == 2 and wire_type == 0:
            value, pos = _read_varint(buffer, pos, where)
            dims.append(_as_int64(value))
        elif field_number == 2 and wire_type == 2:
            length, pos = _read_varint(buffer, pos, where)
            end = pos + length
            while pos < end:
                value, pos = _read_varint(buffer, pos, where)
                dims.append(_as_int64(value))
        elif wire_type == 0:  # unknown varint field: skip
            _, pos = _read_varint(buffer, pos, where)
        elif wire_type == 2:  # unknown length-delimited field: skip
            length, pos = _read_varint(buffer, pos, where)
            pos += length
        else:
            raise CheckpointError(
                f"{where}: unsupported protobuf wire type {wire_type} in the tensor description"
            )
    if data_type is None:
        raise CheckpointError(f"{where}: tensor description has no data_type")
    if any(d < 0 for d in dims):
        raise CheckpointError(f"{where}: negative dimension in {dims}")
    return data_type, dims


def read_paddle_tensor(path: str | os.PathLike[str]) -> np.ndarray:
    """One variable file written by Paddle's ``save``/``save_persistables`` (LoDTensor layout):

    uint32 version | uint64 LoD levels, each: uint64 byte size + offsets | uint32 tensor version |
    int32 desc length | TensorDesc protobuf | raw little-endian row-major data.
    """
    path = Path(path)
    buffer = path.read_bytes()
    where = str(path)

    def take(pos: int, size: int, what: str) -> int:
        if pos + size > len(buffer):
            raise CheckpointError(
                f"{where}: file ends inside the {what} (byte {pos}, {len(buffer)} bytes in all)"
            )
        return pos + size

    pos = take(0, 4, "LoDTensor version")
    (version,) = struct.unpack_from("<I", buffer, 0)
    if version != 0:
        raise CheckpointError(f"{where}: unsupported LoDTensor version {version} (expected 0)")
    start, pos = pos, take(pos, 8, "LoD level count")
    (levels,) = struct.unpack_from("<Q", buffer, start)
    for level in range(levels):
        start, pos = pos, take(pos, 8, f"LoD level {level} size")
        (size,) = struct.unpack_from("<Q", buffer, start)
        pos = take(pos, size, f"LoD level {level} offsets")
    start, pos = pos, take(pos, 4, "tensor version")
    (tensor_version,) = struct.unpack_from("<I", buffer, start)
    if tensor_version != 0:
        raise CheckpointError(f"{where}: unsupported tensor version {tensor_version} (expected 0)")
    start, pos = pos, take(pos, 4, "tensor description length")
    (desc_size,) = struct.unpack_from("<i", buffer, start)
    if desc_size < 0:
        raise CheckpointError(f"{where}: negative tensor description length {desc_size}")
    start, pos = pos, take(pos, desc_size, "tensor description")
    data_type, dims = parse_tensor_desc(buffer[start:pos], where)
    if data_type not in PADDLE_DTYPES:
        raise CheckpointError(f"{where}: unsupported Paddle data type {data_type}")
    dtype = PADDLE_DTYPES[data_type]
    count = int(np.prod(dims, dtype=np.int64)) if dims else 1
    nbytes = count * dtype.itemsize
    if len(buffer) - pos != nbytes:
        raise CheckpointError(
            f"{where}: {len(buffer) - pos} data bytes for a {dtype} tensor of shape {dims} "
            f"(expected {nbytes}): truncated or not a Paddle tensor file"
        )
    return np.frombuffer(buffer, dtype=dtype, count=count, offset=pos).reshape(dims).copy()


def read_paddle_params(
    path: str | os.PathLike[str], names: Iterable[str] | None = None
) -> dict[str, np.ndarray]:
    """A Paddle ``params/`` or ``step_*`` folder -> {variable name: array}.

    With ``names``, only those files are read (missing ones are skipped: the caller accounts for
    them); without, every file except optimizer/LR state (``*_moment1_0``, ``@LR_DECAY_COUNTER@`` ...).
    """
    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a folder of Paddle variables")
    if names is None:
        wanted = sorted(
            p.name for p in folder.iterdir() if p.is_file() and not is_paddle_optimizer_state(p.name)
        )
    else:
        wanted = [name for name in names if (folder / name).is_file()]
    return {name: read_paddle_tensor(folder / name) for name in wanted}


# The class's name before every architecture's class was called ``*Model``; kept for existing imports.
ErnieVilForMemes = ErnieVilModel


# --------------------------------------------------------------------------------------------
# Named configs
# --------------------------------------------------------------------------------------------

register_config("ernie-vil-base", "ernie-vil")
register_config(
    "ernie-vil-large",
    "ernie-vil",
    hidden_size=1024,
    num_hidden_layers=24,
    num_attention_heads=16,
    intermediate_size=4096,
    v_num_attention_heads=16,
    v_intermediate_size=4096,
    co_num_attention_heads=16,
    t_biattention_id=[18, 19, 20, 21, 22, 23],
)
register_config(
    "ernie-vil-tiny",
    "ernie-vil",
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=128,
    v_hidden_size=64,
    v_num_hidden_layers=2,
    v_num_attention_heads=2,
    v_intermediate_size=128,
    co_hidden_size=64,
    co_num_attention_heads=2,
    v_biattention_id=[0, 1],
    t_biattention_id=[0, 1],
)

__all__ = [
    "ErnieVilConfig",
    "ErnieVilForMemes",
    "ErnieVilModel",
    "ErnieVilProcessor",
    "mix_gt_regions",
    "paddle_name_map",
    "read_paddle_params",
    "read_paddle_tensor",
]
