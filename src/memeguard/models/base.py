"""The interface every vision-language model in memeguard shares.

One contract so that training, prediction and ensembling never branch on architecture:

* a **config** dataclass (subclass of :class:`VLConfig`) that round-trips through JSON;
* a **processor** (``model.build_processor(tokenizer)``) that turns memes + region records into a
  batch dict of tensors *outside* ``forward()``;
* ``model(batch)`` returns the *hateful logit*, shape [B]; ``model.predict_proba(batch)`` = sigmoid of it.
  Two-class heads of the original checkpoints are kept as they are and reduced with
  ``blocks.two_class_to_logit`` (logit1 - logit0), so sigmoid(logit) equals their softmax[:, 1];
* ``model.encode(batch)`` exposes the encoder states for task pretraining (MLM / ITM);
* explanations (:mod:`memeguard.models.attribution`): ``attribution_inputs(batch)`` names the continuous
  inputs attributions are computed for (``"text"``: word embeddings [B, T, E] whose rows align with
  ``input_ids``; ``"regions"``: the region features [B, N, D] the model reads, rows aligned with the
  regions' boxes), ``attribution_baselines(batch, inputs, keep)`` their "absent" values, and
  ``forward_from_inputs(batch, **inputs)`` the hateful logit computed from them, differentiable in them.
  The defaults serve every BERT-style family (they swap the output of ``get_input_embeddings()`` and
  pass ``visual_feats`` through); a head on pooled embeddings (CLIP) overrides the three methods and may
  return only the keys it has (e.g. ``"regions"`` = patch embeddings aligned with its patch boxes);
* ``save_pretrained(dir)`` / ``from_pretrained(dir)``: ``config.json`` + ``model.safetensors``;
* ``load_original(path)``: the architecture's original weights (paper release, MMF, Hugging Face, vilio),
  in any layout listed in the class's ``original_layouts`` (see :mod:`memeguard.models.checkpoints`).

Standard batch keys (processors may add their own):
``ids`` long [B]; ``input_ids``, ``attention_mask``, ``token_type_ids`` long [B, T];
``visual_feats`` float [B, N, D]; ``visual_boxes`` float [B, N, P] (the model's box encoding);
``visual_mask`` long [B, N]; ``labels`` float [B] (only when every meme has a label).
Padding goes to the batch maximum, never beyond.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
from torch import nn

from memeguard.checkpoint_io import (
    load_mapped_state_dict,
    read_any_checkpoint,
    read_safetensors_checkpoint,
)
from memeguard.errors import CheckpointError, ConfigError
from memeguard.features.boxes import BoxEncoding, encode_boxes
from memeguard.features.record import RegionRecord
from memeguard.models.checkpoints import KeyPredicate, OriginalLayout, pick_layout
from memeguard.models.registry import architecture_for
from memeguard.names import MODEL_CONFIG_FILE, MODEL_WEIGHTS_FILE

# The names these files had before memeguard.names; kept because other modules import them from here.
CONFIG_NAME = MODEL_CONFIG_FILE
WEIGHTS_NAME = MODEL_WEIGHTS_FILE


class MemeLike(Protocol):
    id: int
    text: str
    label: int | None


@dataclass
class VLConfig:
    """Fields common to all architectures; subclasses add their own and set ``model_type``."""

    model_type: ClassVar[str] = "base"

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    pad_token_id: int = 0
    visual_feat_dim: int = 2048
    max_text_length: int = 128
    max_regions: int = 100
    tokenizer: str = "bert-base-uncased"
    # Per-dimension standardisation of region features, (x - mean) / std, applied by the processor.
    # Set by the trainer for backbones trained from scratch on weak features (grid), where raw feature
    # offsets drown the informative variation after projection + LayerNorm; None for pretrained backbones.
    feature_mean: list[float] | None = None
    feature_std: list[float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"model_type": self.model_type, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VLConfig:
        data = dict(data)
        data.pop("model_type", None)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"{cls.__name__}: unknown config keys {unknown}")
        cls.check_types(data)
        return cls(**data)

    @classmethod
    def check_types(cls, values: Mapping[str, Any]) -> None:
        """Refuse values of the wrong type (``hidden_size: "sixty-four"``) before a model is built of them.

        Each field's annotation is checked by pydantic in strict mode (no "64" -> 64 coercion) and the
        result is discarded: the config keeps the values as given, so a valid file builds exactly the
        model it did before.
        """
        from pydantic import ValidationError

        adapters = _field_adapters(cls)
        for key, value in values.items():
            if key not in adapters:
                continue
            try:
                adapters[key].validate_python(_plain(value), strict=True)
            except ValidationError as exc:
                error = exc.errors()[0]
                where = ".".join(str(part) for part in (key, *error["loc"]))
                message = str(error["msg"]).replace("Input should be", "must be")
                raise ConfigError(f"{cls.__name__}: {where} {message}, got {value!r}") from None

    def replace(self, **overrides: Any) -> VLConfig:
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ConfigError(f"{type(self).__name__}: unknown config keys {unknown}")
        self.check_types({**{f.name: getattr(self, f.name) for f in dataclasses.fields(self)}, **overrides})
        return dataclasses.replace(self, **overrides)


def _plain(value: Any) -> Any:
    """The JSON form of a Python-API value (numpy scalars and arrays, tuples), which strict mode checks."""
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


@functools.cache
def _field_adapters(config_cls: type[VLConfig]) -> dict[str, Any]:
    """Field name -> pydantic ``TypeAdapter`` of its annotation (built once per config class)."""
    from pydantic import TypeAdapter

    hints = typing.get_type_hints(config_cls)
    return {field.name: TypeAdapter(hints[field.name]) for field in dataclasses.fields(config_cls)}


@dataclass
class EncoderOutput:
    """Encoder states for pretraining heads. ``text_hidden`` rows align with ``batch['input_ids']``."""

    text_hidden: torch.Tensor  # [B, T, H]
    visual_hidden: torch.Tensor | None  # [B, N, Hv]
    pooled: torch.Tensor  # [B, Hp]: what the classification head reads


def pad_stack(arrays: Sequence[np.ndarray], length: int, dtype: torch.dtype) -> torch.Tensor:
    """Stack [n_i, ...] arrays into [B, length, ...], zero-padded."""
    first = arrays[0]
    out = np.zeros((len(arrays), length, *first.shape[1:]), dtype=first.dtype)
    for row, array in enumerate(arrays):
        n = min(length, array.shape[0])
        out[row, :n] = array[:n]
    return torch.as_tensor(out, dtype=dtype)


class RegionTextProcessor:
    """Tokenises meme text and pads region features to the batch maximum.

    Text: ``[CLS] wordpieces [SEP]`` truncated to ``max_text_length`` (whitespace collapsed first, as vilio).
    Regions: the first ``max_regions`` boxes, encoded with ``box_encoding``.
    Architectures subclass this and override ``encode_regions`` or ``__call__``.
    """

    box_encoding: BoxEncoding = "xyxy"

    def __init__(self, tokenizer: Any, config: VLConfig, box_encoding: BoxEncoding | None = None) -> None:
        self.tokenizer = tokenizer
        self.config = config
        if box_encoding is not None:
            self.box_encoding = box_encoding

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        cleaned = [" ".join(str(text).split()) for text in texts]
        encoded = self.tokenizer(
            cleaned,
            padding="longest",
            truncation=True,
            max_length=self.config.max_text_length,
            return_tensors="pt",
            return_token_type_ids=True,
        )
        return {
            "input_ids": encoded["input_ids"].long(),
            "attention_mask": encoded["attention_mask"].long(),
            "token_type_ids": encoded["token_type_ids"].long(),
        }

    def encode_regions(self, record: RegionRecord) -> tuple[np.ndarray, np.ndarray]:
        """One image's (features [n, D], position features [n, P]) before padding."""
        n = min(record.num_boxes, self.config.max_regions)
        features = np.asarray(record.features[:n], dtype=np.float32)
        positions = encode_boxes(record.boxes[:n], record.image_size, self.box_encoding)
        return features, positions

    def region_boxes(self, record: RegionRecord) -> np.ndarray:
        """Pixel boxes (x1, y1, x2, y2) of the region rows ``encode_regions`` gives, in order: what an
        explanation draws each region's attribution on."""
        n = min(record.num_boxes, self.config.max_regions)
        return np.asarray(record.boxes[:n], dtype=np.float32).reshape(n, 4)

    def normalize_regions(self, regions: Sequence[RegionRecord]) -> list[RegionRecord]:
        """Standardise features with the config's ``feature_mean`` / ``feature_std`` (a no-op when unset)."""
        mean, std = self.config.feature_mean, self.config.feature_std
        if mean is None or std is None:
            return list(regions)
        mean_arr = np.asarray(mean, dtype=np.float32)
        std_arr = np.asarray(std, dtype=np.float32)
        return [
            dataclasses.replace(
                record, features=(np.asarray(record.features, np.float32) - mean_arr) / std_arr
            )
            for record in regions
        ]

    def check_regions(self, regions: Sequence[RegionRecord]) -> None:
        for record in regions:
            if record.feature_dim != self.config.visual_feat_dim:
                raise ConfigError(
                    f"meme {record.meme_id}: region features have dimension {record.feature_dim}, "
                    f"the model expects {self.config.visual_feat_dim}"
                )

    def __call__(self, memes: Sequence[MemeLike], regions: Sequence[RegionRecord]) -> dict[str, torch.Tensor]:
        if len(memes) != len(regions):
            raise ValueError(f"{len(memes)} memes but {len(regions)} region records")
        self.check_regions(regions)
        regions = self.normalize_regions(regions)
        batch = self.tokenize([meme.text for meme in memes])
        return self.add_regions(batch, memes, [self.encode_regions(record) for record in regions])

    @staticmethod
    def add_regions(
        batch: dict[str, torch.Tensor],
        memes: Sequence[MemeLike],
        encoded: Sequence[tuple[np.ndarray, np.ndarray]],
    ) -> dict[str, torch.Tensor]:
        """``batch`` (the tokenized texts) plus each meme's encoded (features, positions) padded to the
        longest, their mask, the ids and the labels when every meme has one: the batch layout every
        processor returns, however it encoded its regions."""
        length = max(features.shape[0] for features, _ in encoded)
        batch["visual_feats"] = pad_stack([f for f, _ in encoded], length, torch.float32)
        batch["visual_boxes"] = pad_stack([p for _, p in encoded], length, torch.float32)
        batch["visual_mask"] = pad_stack(
            [np.ones(f.shape[0], dtype=np.int64) for f, _ in encoded], length, torch.long
        )
        batch["ids"] = torch.tensor([int(meme.id) for meme in memes], dtype=torch.long)
        if all(meme.label is not None for meme in memes):
            batch["labels"] = torch.tensor([float(meme.label) for meme in memes], dtype=torch.float32)
        return batch


class MemeModel(nn.Module):
    """Base class: see the module docstring for the contract."""

    config_class: ClassVar[type[VLConfig]] = VLConfig
    processor_class: ClassVar[type[RegionTextProcessor]] = RegionTextProcessor
    # Original checkpoints: the architecture's name in messages, the layouts ``load_original`` knows
    # (tried in order) and the file names it looks for first when given a folder.
    original_name: ClassVar[str] = "memeguard"
    original_layouts: ClassVar[tuple[OriginalLayout, ...]] = ()
    original_file_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: VLConfig) -> None:
        super().__init__()
        self.config = config

    # -- the contract -------------------------------------------------------------------------
    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:  # pragma: no cover - abstract
        """Hateful logit, shape [B]."""
        raise NotImplementedError

    def encode(self, batch: Mapping[str, torch.Tensor]) -> EncoderOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def get_input_embeddings(self) -> nn.Embedding:  # pragma: no cover - abstract
        """Word embeddings (for the MLM decoder tied to them)."""
        raise NotImplementedError

    # -- explanations (see the module docstring) ------------------------------------------------
    def attribution_inputs(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``text``: the word embeddings looked up from ``input_ids`` (before position and token-type
        embeddings are added, so a word's attribution is about the word, not its place); ``regions``:
        ``visual_feats`` as the model reads them (after the processor's standardisation)."""
        with torch.no_grad():
            words = self.get_input_embeddings()(batch["input_ids"])
        return {"text": words.detach(), "regions": batch["visual_feats"].detach()}

    def attribution_baselines(
        self, batch: Mapping[str, torch.Tensor], inputs: Mapping[str, torch.Tensor], keep: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The "absent" input integrated gradients start from.

        Text: the ``[PAD]`` embedding at every word piece, while positions where ``keep`` [B, T] is true
        ([CLS], [SEP], padding) keep their own embedding, so the sequence keeps its frame and those
        positions get zero attribution. Regions: zeros in the model's input space, which is the store's
        mean feature for models that standardise their inputs (grid) and "nothing detected" for BUTD's
        post-ReLU features; the boxes stay, so a region's attribution is about what it shows.
        """
        text = inputs["text"]
        pad_id = torch.full_like(batch["input_ids"][:1, :1], self.config.pad_token_id)
        with torch.no_grad():
            pad = self.get_input_embeddings()(pad_id).to(text.dtype)
        return {
            "text": torch.where(keep[..., None].to(text.device), text, pad.expand_as(text)),
            "regions": torch.zeros_like(inputs["regions"]),
        }

    def forward_from_inputs(self, batch: Mapping[str, torch.Tensor], **inputs: torch.Tensor) -> torch.Tensor:
        """The hateful logit [B] with the word embeddings and region features replaced by ``inputs``.

        The word-embedding module's output is swapped for ``inputs["text"]`` by a forward hook, so each
        architecture's own embedding code (positions, token types, LayerNorm) runs unchanged.
        """
        batch = dict(batch)
        if "regions" in inputs:
            batch["visual_feats"] = inputs["regions"]
        if "text" not in inputs:
            return self(batch)
        text = inputs["text"]

        def swap(_module: nn.Module, _args: Any, output: torch.Tensor) -> torch.Tensor:
            if output.shape != text.shape:
                raise ValueError(f"word embeddings of shape {list(output.shape)}, given {list(text.shape)}")
            return text.to(output.dtype)

        handle = self.get_input_embeddings().register_forward_hook(swap)
        try:
            return self(batch)
        finally:
            handle.remove()

    def head_parameter_names(self) -> list[str]:
        """Names of the task-head parameters (new when starting from a pretrained backbone)."""
        return [name for name, _ in self.named_parameters() if name.startswith(("classifier", "head"))]

    @torch.no_grad()
    def predict_proba(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return torch.sigmoid(self(batch).float())

    def build_processor(self, tokenizer: Any | None = None) -> RegionTextProcessor:
        if tokenizer is None:
            from memeguard.models.tokenization import load_tokenizer

            tokenizer = load_tokenizer(self.config.tokenizer)
        return self.processor_class(tokenizer, self.config)

    def init_weights(self) -> None:
        from memeguard.models.blocks import init_bert_weights

        self.apply(lambda module: init_bert_weights(module, self.config.initializer_range))

    # -- original checkpoints -----------------------------------------------------------------
    def load_original(self, path: str | os.PathLike[str]) -> tuple[list[str], list[str]]:
        """Load an original checkpoint of this architecture, its layout detected from the keys.

        Every key must be accounted for: renamed onto ours, or documented as unused by the layout
        (``unexpected``), or absent because the file lacks the task head (``missing``). Anything else,
        or a shape mismatch, is a :class:`CheckpointError`. Returns (missing, unexpected) in our names.
        """
        if not self.original_layouts:
            raise CheckpointError(f"{path}: {type(self).__name__} loads no original checkpoints")
        state = self.read_original(path)
        layout = pick_layout(self.original_layouts, state, source=str(path), what=self.original_name)
        converted = layout.convert(state, self.config)
        self.adapt_to_original(layout, converted)
        allowed_missing, allowed_unexpected = self.original_key_rules(layout, converted)
        return load_mapped_state_dict(
            self,
            converted,
            source=f"{path} ({layout.name} {self.original_name} layout)",
            allowed_missing=allowed_missing,
            allowed_unexpected=allowed_unexpected,
        )

    def read_original(self, path: str | os.PathLike[str]) -> Mapping[str, torch.Tensor]:
        """The raw state dict of a weight file, or of a folder holding one of ``original_file_names``."""
        return read_any_checkpoint(path, self.original_file_names)

    def adapt_to_original(self, layout: OriginalLayout, state: Mapping[str, torch.Tensor]) -> None:
        """Resize what a checkpoint fixes before it is loaded (a fine-tuned file is a whole model).

        Nothing by default; UNITER takes its number of box features from vilio's fine-tuned files.
        """

    def original_key_rules(
        self, layout: OriginalLayout, state: Mapping[str, torch.Tensor]
    ) -> tuple[KeyPredicate, KeyPredicate]:
        """(may be missing, may be unexpected) for ``state`` converted from ``layout``.

        A file without the task head leaves the head at its initialisation; the layout's documented
        extras are skipped. Architectures add config-dependent rules (optional modules, depths).
        """
        head = set() if layout.has_head else set(self.head_parameter_names())
        return head.__contains__, layout.unexpected

    # -- our own format -----------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> None:
        """``config.json`` + ``model.safetensors``; tied tensors are stored once (safetensors.save_model)."""
        from memeguard.io import write_json_atomic

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        _save_weights_atomic(self, directory / MODEL_WEIGHTS_FILE)
        write_json_atomic(directory / MODEL_CONFIG_FILE, self.config.to_dict())

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> MemeModel:
        """Load our model dir; every way the folder can be wrong is a one-line error naming the file.

        The config is type-checked, the model is planned on the meta device (no memory, no random
        draws) and the weight file's header (names, shapes, dtypes) is checked against that plan before
        a single parameter is allocated or read, so a corrupt folder costs neither time nor memory.
        """
        directory = Path(directory)
        config = read_model_config(directory / MODEL_CONFIG_FILE)
        model_cls = architecture_for(config.model_type)
        weights_path = directory / MODEL_WEIGHTS_FILE
        planned = _build(model_cls, config, directory / MODEL_CONFIG_FILE, device="meta")
        check_weights_header(planned, weights_path)
        model = _build(model_cls, config, directory / MODEL_CONFIG_FILE)
        state = read_safetensors_checkpoint(weights_path)
        model.load_state_dict(state, strict=False)
        return model


def _save_weights_atomic(model: nn.Module, target: Path) -> None:
    """``save_model`` into a temporary file, renamed onto ``target`` once complete.

    safetensors creates its files 0600 and writes by file name, so ``io.atomic_write`` (which hands out
    an open handle) cannot host it; the file gets the umask's permissions, as every file we write.
    """
    from safetensors.torch import save_model

    tmp_path = target.with_name(f".{target.name}.tmp")
    try:
        save_model(model, str(tmp_path), metadata={"format": "pt"})
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, target)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def read_model_config(path: Path) -> VLConfig:
    """``config.json`` of a model dir -> its typed config; ConfigError naming the file otherwise."""
    if not path.is_file():
        raise CheckpointError(f"{path.parent}: no {MODEL_CONFIG_FILE} (not a memeguard model directory)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a model config is a JSON object, found a {type(data).__name__}")
    model_type = data.get("model_type")
    if not isinstance(model_type, str):
        raise ConfigError(f"{path}: model_type must be a string naming an architecture, got {model_type!r}")
    try:
        return architecture_for(model_type).config_class.from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


# What building a model from type-correct but impossible sizes raises (negative or zero dimensions,
# a hidden size the heads do not divide ...).
_BUILD_ERRORS = (ValueError, TypeError, RuntimeError, ArithmeticError, IndexError, KeyError)


def _build(
    model_cls: type[MemeModel], config: VLConfig, config_path: Path, device: str | None = None
) -> MemeModel:
    try:
        if device is None:
            return model_cls(config)
        with torch.device(device):
            return model_cls(config)
    except _BUILD_ERRORS as exc:
        raise ConfigError(
            f"{config_path}: cannot build a {config.model_type} model from it ({type(exc).__name__}: {exc})"
        ) from None


def _weights_header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{tensor name: (safetensors dtype, shape)} from the file's header, without reading any tensor."""
    from safetensors import safe_open

    if not path.is_file():
        raise CheckpointError(f"{path}: weight file not found")
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {
                name: (handle.get_slice(name).get_dtype(), tuple(handle.get_slice(name).get_shape()))
                for name in handle.keys()  # noqa: SIM118 - safe_open is not a mapping
            }
    except Exception as exc:  # safetensors raises its own error types for a truncated or corrupt file
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None


def _is_float_dtype(safetensors_dtype: str) -> bool:
    return safetensors_dtype.startswith(("F", "BF"))


def check_weights_header(model: MemeModel, path: Path) -> None:
    """Every tensor of ``model`` present once (tied ones once per group), with its shape and a dtype
    it can take: a float parameter refuses integer or bool tensors (they would load as garbage)."""
    header = _weights_header(path)
    own = model.state_dict(keep_vars=True)
    unexpected = sorted(set(header) - set(own))
    missing = [key for key in own if key not in header and not _tied_to_present(model, key, header)]
    if missing or unexpected:
        raise CheckpointError(f"{path}: missing keys {missing[:20]}, unexpected keys {unexpected[:20]}")
    for name, (dtype, shape) in header.items():
        expected = own[name]
        if shape != tuple(expected.shape):
            raise CheckpointError(
                f"{path}: tensor {name} has shape {list(shape)}, the model's is {list(expected.shape)}"
            )
        if _is_float_dtype(dtype) != expected.dtype.is_floating_point:
            raise CheckpointError(
                f"{path}: tensor {name} is {dtype}, which cannot hold the model's {expected.dtype} values"
            )


def _tied_to_present(model: nn.Module, key: str, present: Mapping[str, Any]) -> bool:
    """A parameter absent from the file because it is the same tensor as one that is present."""
    params = dict(model.named_parameters(remove_duplicate=False))
    tensor = params.get(key)
    if tensor is None:
        return False
    return any(other is tensor and name in present for name, other in params.items())
