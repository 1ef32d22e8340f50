"""Fast CPU inference for every registered model: int8 feed-forward Linear layers, or an ONNX graph run by
onnxruntime.

Why: on a CPU a vision-language transformer spends ~90 % of its forward in the Linear layers' fp32 GEMMs
(``torch.profiler``, ``uniter-base``, batch 8, 50 boxes, one thread), so no rearrangement of the fp32 graph
can halve its time; doing the same GEMMs in int8 (VNNI) or through onnxruntime's fused kernels can.
Three ways to run a model, chosen per bundle (``memeguard export --optimize``):

* ``fp32``: the PyTorch model as trained (the default; the only one for GPUs);
* ``int8``: the feed-forward Linear layers as int8 GEMMs (fbgemm) with int8 weights (one scale per output
  channel) and activations quantised per token at run time (:class:`Int8Linear`); attention blocks,
  input projections and head stay fp32. Applied when the model loads, from the fp32 weights, so the
  bundle stores nothing extra and the result is deterministic;
* ``onnx``: the forward exported once (``model.onnx`` next to the safetensors, hash-checked with them)
  with fixed input names and dynamic batch, text and region axes, run by onnxruntime's CPU provider.

The exported graph is checked against PyTorch on two batches of different shapes before it is kept,
so a shape the tracer froze into the graph is an export error, not a silently wrong score.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from memeguard.errors import CheckpointError, ConfigError
from memeguard.names import MODEL_CONFIG_FILE, ONNX_MODEL_FILE

if TYPE_CHECKING:  # pragma: no cover
    from memeguard.models.base import MemeModel, RegionTextProcessor, VLConfig

FP32, INT8, ONNX = "fp32", "int8", "onnx"
OPTIMIZATIONS: tuple[str, ...] = (FP32, INT8, ONNX)

# The batch keys a model's forward reads, in the exported graph's input order (every processor makes them).
MODEL_INPUTS: tuple[str, ...] = (
    "input_ids",
    "attention_mask",
    "token_type_ids",
    "visual_feats",
    "visual_boxes",
    "visual_mask",
)
_AXES = {"input_ids": "text", "attention_mask": "text", "token_type_ids": "text"}
DYNAMIC_AXES: dict[str, dict[int, str]] = {
    **{name: {0: "batch", 1: _AXES.get(name, "regions")} for name in MODEL_INPUTS},
    "logit": {0: "batch"},
}
ONNX_OPSET = 17  # LayerNormalization is one op from 17 on
MAX_BOX_FEATURES = 8  # box encodings are 4-7 numbers: a Linear this narrow reads coordinates
TINY = torch.finfo(torch.float32).tiny  # a scale floor: all-zero rows and channels stay zero
# The extra row's values: fbgemm's uint8 scale is then exactly 1/127 with zero point 128, so the rows, in
# [-1, 1] after division by their largest magnitude, are quantised like symmetric int8 (1 is a level).
PINNED_RANGE = torch.tensor([-128.0 / 127.0, 1.0])
# An attention block's Linear layers (query/key/value and output projections) by their names in every
# architecture: BERT's ``attention.output.dense``, LXMERT's ``*_att.output.dense``, DeVLBERT's numbered
# co-attention ``query1``...``biOutput.dense2``.
ATTENTION_LAYER = re.compile(r"(\.(query|key|value)\d*|att(ention)?\.output\.dense|biOutput\.dense\d*)$")
EXPORT_TOLERANCE = 1e-4  # |logit| difference ONNX vs PyTorch that an export may show (fp32 reordering)


def check_optimization(name: str) -> str:
    """``name`` when it is one of :data:`OPTIMIZATIONS`; else one ConfigError line listing them."""
    if name not in OPTIMIZATIONS:
        raise ConfigError(f"unknown optimization {name!r}; expected one of {', '.join(OPTIMIZATIONS)}")
    return name


# ------------------------------------------------------------------------------------------ int8


def quantize_int8(model: MemeModel, inplace: bool = False) -> MemeModel:
    """``model`` (a copy unless ``inplace``) with its transformer ``nn.Linear`` layers as :class:`Int8Linear`.

    Kept in fp32: the layers that read the raw inputs (region features, box coordinates), the task head,
    and the attention blocks (query/key/value and output projections). The last are the costly exception
    (a third of an encoder layer's multiply-adds) but they are where int8's error comes from on trained
    models: q and k meet in ``softmax(q k^T)``, whose peaked rows turn a small error into a jump on a few
    memes, and the output projection reads that softmax's mixture; the FFN (two thirds) is converted (see
    ``benchmarks/model_forward.py`` for the per-layer-kind measurements).
    """
    import copy

    if not inplace:
        model = copy.deepcopy(model)
    full_range = _full_range_activations()
    for name in int8_layer_names(model):
        parent, _, child = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        setattr(owner, child, Int8Linear(getattr(owner, child), full_range))
    return model.eval()


def int8_layer_names(model: MemeModel) -> list[str]:
    """The ``nn.Linear`` layers :func:`quantize_int8` converts: all but input projections, attention
    blocks and the head."""
    heads = tuple(name.rsplit(".", 1)[0] + "." for name in model.head_parameter_names())
    feat_dim = model.config.visual_feat_dim
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        if (
            module.in_features <= MAX_BOX_FEATURES
            or feat_dim <= module.in_features <= feat_dim + MAX_BOX_FEATURES
        ):
            continue  # region features (OSCAR appends the box to them) or box coordinates
        if (name + ".").startswith(heads) or ATTENTION_LAYER.search(name):
            continue
        names.append(name)
    return names


def _full_range_activations() -> bool:
    """Whether activations may use all 8 bits: fbgemm's kernels without VNNI sum pairs of u8*s8 products
    in saturating int16 and need 7-bit activations (``reduce_range``); with VNNI they accumulate in int32.
    Other engines (qnnpack, onednn) take the argument and stay exact either way."""
    if torch.backends.quantized.engine not in ("x86", "fbgemm"):
        return True
    return bool(getattr(torch.cpu, "_is_vnni_supported", lambda: False)())


class Int8Linear(nn.Module):
    """A Linear layer run as an int8 GEMM with one activation scale per token (row).

    torch's dynamic int8 Linear quantises each activation tensor with ONE scale for the whole batch, so a
    meme's score depends on its batch-mates and the tokens with small activations keep few levels. Per-token
    scales are not in torch.ao's dynamic path, but the GEMM is linear in each row: dividing every row by its
    largest magnitude before fbgemm's per-tensor quantisation and multiplying the output rows back gives
    each token its own full-range scale for two elementwise passes. One extra row (:data:`PINNED_RANGE`) fixes
    the range fbgemm derives its per-tensor scale from, so a token's int8 values never depend on the other
    rows (the int32 GEMM is exact): a meme scores the same whatever it is batched with. Weights are int8
    with one scale per output channel; the bias is added in fp32 after the rows are rescaled.
    """

    def __init__(self, linear: nn.Linear, full_range: bool = True) -> None:
        super().__init__()
        from torch.ao.nn.quantized.modules.linear import LinearPackedParams

        weight = linear.weight.detach().float()
        scale = (weight.abs().amax(dim=1) / 127.0).clamp_min(TINY).double()
        with warnings.catch_warnings():  # quantized tensors are deprecated for torchao, not a dependency
            warnings.simplefilter("ignore")
            zero = torch.zeros_like(scale).long()
            qweight = torch.quantize_per_channel(weight, scale, zero, 0, torch.qint8)
            self.packed = LinearPackedParams(dtype=torch.qint8)
            self.packed.set_weight_bias(qweight, None)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.reduce_range = not full_range
        bias = None if linear.bias is None else linear.bias.detach().float().clone()
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        scale = rows.abs().amax(dim=1, keepdim=True).clamp_min(TINY)
        scaled = rows.new_zeros(rows.shape[0] + 1, self.in_features)
        torch.div(rows, scale, out=scaled[:-1])
        scaled[-1, :2] = PINNED_RANGE  # the range fbgemm reads, in every batch
        y = torch.ops.quantized.linear_dynamic(scaled, self.packed._packed_params, self.reduce_range)[:-1]
        y = y * scale if self.bias is None else torch.addcmul(self.bias, y, scale)
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, per-token int8"


# ------------------------------------------------------------------------------------------ ONNX


class _PositionalForward(nn.Module):
    """``model(batch)`` as a function of the :data:`MODEL_INPUTS` tensors (what the exporter traces)."""

    def __init__(self, model: MemeModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(dict(zip(MODEL_INPUTS, inputs, strict=True)))


def sample_batch(model: MemeModel, batch_size: int, text_length: int, regions: int, seed: int) -> dict:
    """A batch as the model's processor lays it out (its box encoding, its extra tokens), with random
    features and token ids and ragged masks, so that export traces every masking path."""
    from memeguard.data.meme import Meme
    from memeguard.features.record import RegionRecord

    config = model.config
    rng = np.random.default_rng(seed)
    processor = model.processor_class(None, config)
    records = []
    for row in range(batch_size):
        n = max(1, regions - row)  # ragged: every row but the first is padded
        xy = rng.uniform(0, 200, size=(n, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(10, 100, size=(n, 2))], axis=1).astype(np.float32)
        features = np.abs(rng.normal(size=(n, config.visual_feat_dim))).astype(np.float32)
        records.append(RegionRecord(row, features, boxes, (320, 320)))
    memes = [Meme(row, "", "") for row in range(batch_size)]
    encoded = [processor.encode_regions(record) for record in processor.normalize_regions(records)]
    lengths = [max(2, text_length - row) for row in range(batch_size)]
    ids = torch.as_tensor(rng.integers(1000, min(config.vocab_size, 2000), size=(batch_size, text_length)))
    mask = (torch.arange(text_length)[None, :] < torch.tensor(lengths)[:, None]).long()
    text = {"input_ids": ids * mask, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    return processor.add_regions(text, memes, encoded)


def export_onnx(model: MemeModel, path: str | os.PathLike[str]) -> Path:
    """Write ``model``'s forward as an ONNX graph at ``path`` (temp file, renamed when verified).

    Traced by the TorchScript exporter (every architecture's forward is one straight path), with dynamic
    batch/text/region axes; then run by onnxruntime on a batch of other shapes and compared with PyTorch.
    """
    import importlib.util

    path = Path(path)
    if importlib.util.find_spec("onnx") is None:
        raise ConfigError(f"{path}: writing an ONNX model needs onnx (pip install 'memeguard[fast]')")
    model = model.eval()
    example = _example_batch(model, path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer notices about Python values; the check below decides
            torch.onnx.export(  # the wrapper in eval mode too: export restores each module's own mode
                _PositionalForward(model).eval(),
                tuple(example[name] for name in MODEL_INPUTS),
                str(tmp),
                dynamo=False,
                input_names=list(MODEL_INPUTS),
                output_names=["logit"],
                dynamic_axes=DYNAMIC_AXES,
                opset_version=ONNX_OPSET,
                external_data=False,
            )
        check = sample_batch(model, batch_size=3, text_length=11, regions=9, seed=1)
        _verify_export(model, OnnxMemeModel(tmp, model.config, threads=1), check, path)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _example_batch(model: MemeModel, path: Path) -> dict:
    """The batch the export traces; a model that does not read the region-feature inputs is refused."""
    try:
        example = sample_batch(model, batch_size=2, text_length=7, regions=5, seed=0)
        with torch.no_grad():
            model(example)  # a model that reads other keys fails here, before the tracer sees it
    except (ConfigError, KeyError, ValueError, AttributeError, RuntimeError):
        raise ConfigError(
            f"{path}: ONNX export covers the models that read {', '.join(MODEL_INPUTS)}; a "
            f"{model.config.model_type} model reads other inputs (score it in fp32 or int8)"
        ) from None
    return example


def _verify_export(model: MemeModel, exported: OnnxMemeModel, batch: dict, path: Path) -> None:
    with torch.inference_mode():
        expected = model(batch).float()
    got = exported(batch)
    worst = float((got - expected).abs().max())
    if not worst <= EXPORT_TOLERANCE:
        raise CheckpointError(
            f"{path}: the exported {model.config.model_type} graph disagrees with PyTorch on a batch of "
            f"other shapes (max |logit difference| {worst:.3g}); not written"
        )


class OnnxMemeModel:
    """An exported model run by onnxruntime, standing in for a :class:`MemeModel` where the scorer uses
    one: ``config``, ``build_processor``, ``predict_proba``, ``model(batch)`` (the logits), ``to``/``eval``.

    ``threads``: onnxruntime's intra-op threads (default: ``torch.get_num_threads()``, so one setting,
    ``OMP_NUM_THREADS`` or ``torch.set_num_threads``, governs both paths).
    """

    def __init__(self, path: str | os.PathLike[str], config: VLConfig, threads: int | None = None) -> None:
        self.path = Path(path)
        self.config = config
        self.session = _open_session(self.path, threads or torch.get_num_threads())
        self.input_names = [i.name for i in self.session.get_inputs()]  # unused inputs are pruned away
        unknown = sorted(set(self.input_names) - set(MODEL_INPUTS))
        if unknown:
            raise CheckpointError(f"{self.path}: inputs {unknown} are not memeguard model inputs")

    def __call__(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        feeds = {name: batch[name].detach().cpu().numpy() for name in self.input_names}
        (logit,) = self.session.run(["logit"], feeds)
        return torch.from_numpy(np.asarray(logit, dtype=np.float32))

    def predict_proba(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return torch.sigmoid(self(batch))

    def build_processor(self, tokenizer: Any | None = None) -> RegionTextProcessor:
        from memeguard.models.registry import architecture_for

        if tokenizer is None:
            from memeguard.models.tokenization import load_tokenizer

            tokenizer = load_tokenizer(self.config.tokenizer)
        return architecture_for(self.config.model_type).processor_class(tokenizer, self.config)

    def to(self, device: torch.device | str) -> OnnxMemeModel:
        if torch.device(device).type != "cpu":
            raise ConfigError(f"{self.path}: an ONNX model runs on the CPU, not on {device}")
        return self

    def eval(self) -> OnnxMemeModel:
        return self


def _open_session(path: Path, threads: int) -> Any:
    """An onnxruntime CPU session; a missing, truncated or foreign file is one CheckpointError line."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ConfigError(
            f"{path}: running an ONNX model needs onnxruntime (pip install 'memeguard[fast]')"
        ) from None
    if not path.is_file():
        raise CheckpointError(f"{path}: ONNX model file not found")
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, int(threads))
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: its graph-optimisation notices are not the user's business
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable models
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable ONNX model ({first[:200]})") from None


# ------------------------------------------------------------------------------------------ loading


def load_optimized(model_dir: str | os.PathLike[str], optimization: str) -> MemeModel | OnnxMemeModel:
    """The model in ``model_dir`` (``save_pretrained``) ready to score the way ``optimization`` says."""
    from memeguard.models.base import MemeModel, read_model_config

    check_optimization(optimization)
    directory = Path(model_dir)
    if optimization == ONNX:
        return OnnxMemeModel(directory / ONNX_MODEL_FILE, read_model_config(directory / MODEL_CONFIG_FILE))
    model = MemeModel.from_pretrained(directory).eval()
    return quantize_int8(model, inplace=True) if optimization == INT8 else model
