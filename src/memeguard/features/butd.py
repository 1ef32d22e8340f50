"""BUTD region features as vilio extracted them (``hm_vgattr3636.tsv`` and friends), without detectron2.

The detector is :mod:`memeguard.features.butd_model`. This module reads the original weight files,
runs the detector once per batch and applies vilio's fixed-number box selection once per requested
variant ("36", "50", "72", "10-100" = at least 10, at most 100 boxes). Vilio re-ran the whole detector
for every variant; proposals, RoI features and class scores do not depend on the box count, so one
pass serves all of them and only the cheap NMS schedule is repeated.

Weight files (``weights=`` path):

- ``faster_rcnn_from_caffe_attr.pkl`` (`vgattr`) / ``faster_rcnn_from_caffe.pkl`` (`vg`): detectron2
  pickles ``{"model": {name: np.ndarray}, "__author__": ...}`` with detectron2 module names (the
  form HF's ``utils.load_checkpoint`` reads too); read with the restricted unpickler.
- ``unc-nlp/frcnn-vg-finetuned``: a folder with ``pytorch_model.bin`` (or the file itself); the same
  names, plus BatchNorm's ``num_batches_tracked`` counters and the anchor table
  ``proposal_generator.anchor_generator.cell_anchors.0`` that the HF port stores as parameters.

Keys we accept without loading them are exactly those counters and the anchor table (whose values are
checked against the anchors we compute). Any other missing or extra key is a CheckpointError.

Attributes: with the `vg` weights (no attribute head) ``attr_ids``/``attr_conf`` are None, not the
zeros vilio's TSV writer put in those columns: zeros would read as "attribute 0 with confidence 0".
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, field_validator

from memeguard.errors import CheckpointError, ConfigError, DataError
from memeguard.features.extractor import BaseExtractor, ExtractorOptions, ExtractorParams
from memeguard.features.record import RegionRecord
from memeguard.records import file_sha256  # re-exported: features.clip imports it from here

VARIANT_PATTERN = re.compile(r"^(\d+)(?:-(\d+))?$")
HF_WEIGHTS_NAME = "pytorch_model.bin"
ANCHOR_KEY = "proposal_generator.anchor_generator.cell_anchors.0"


def parse_variant(name: str) -> tuple[int, int]:
    """ "36" -> (36, 36); "10-100" -> (10, 100): the (MIN_BOXES, MAX_BOXES) of vilio's extraction script
    (``py-bottom-up-attention/demo/detectron2_mscoco_proposal_maxnms.py``)."""
    match = VARIANT_PATTERN.match(str(name).strip())
    if not match:
        raise ConfigError(f"BUTD box variant {name!r}: expected 'N' or 'MIN-MAX', e.g. '36' or '10-100'")
    low = int(match.group(1))
    high = int(match.group(2)) if match.group(2) else low
    if low < 1 or high < low:
        raise ConfigError(f"BUTD box variant {name!r}: need 1 <= MIN <= MAX")
    return low, high


def parse_box_variants(boxes: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """``--boxes``: ``"36,50,72,10-100"`` -> ("36", "50", "72", "10-100"), each item a valid variant."""
    return None if boxes is None else ButdExtractor.parse_variants(boxes)


# --------------------------------------------------------------------------------------------
# Reading the original weight files
# --------------------------------------------------------------------------------------------


def _hf_weights_file(path: Path) -> Path:
    if path.is_dir():
        candidate = path / HF_WEIGHTS_NAME
        if not candidate.is_file():
            raise CheckpointError(
                f"{path}: folder has no {HF_WEIGHTS_NAME} (expected the unc-nlp/frcnn-vg-finetuned layout)"
            )
        return candidate
    return path


def read_butd_state_dict(path: str | os.PathLike[str]) -> tuple[dict[str, Any], str]:
    """Read a weight file into {detectron2 name: tensor} and say which layout it was.

    Layouts: ``"detectron2-pkl"`` (the two vilio .pkl files) or ``"hf-frcnn"`` (pytorch_model.bin).
    """
    import torch

    from memeguard.checkpoint_io import read_torch_checkpoint
    from memeguard.features.safe_pickle import safe_load

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: BUTD weights not found")
    if path.suffix == ".pkl":
        data = safe_load(str(path))
        if not isinstance(data, Mapping):
            raise CheckpointError(f"{path}: expected a dict, found {type(data).__name__}")
        if "blobs" in data and "model" not in data:
            raise CheckpointError(
                f"{path}: a Caffe2/Detectron1 'blobs' pickle; the vilio weights are detectron2 pickles "
                "with a 'model' dict of detectron2 names (faster_rcnn_from_caffe{_attr}.pkl)"
            )
        model = data.get("model")
        if not isinstance(model, Mapping):
            raise CheckpointError(f"{path}: no 'model' dict of arrays (keys: {sorted(map(str, data))[:10]})")
        state = {}
        for key, value in model.items():
            if not isinstance(value, np.ndarray):
                raise CheckpointError(
                    f"{path}: key {key!r} is {type(value).__name__}, expected a numpy array"
                )
            state[str(key)] = torch.from_numpy(np.ascontiguousarray(value))
        return state, "detectron2-pkl"
    state = read_torch_checkpoint(_hf_weights_file(path))
    # The HF port renames caffe-style gamma/beta on load; do the same.
    renamed = {k.replace("gamma", "weight").replace("beta", "bias"): v for k, v in state.items()}
    return renamed, "hf-frcnn"


def config_from_state_dict(state: Mapping[str, Any], base: Any = None, source: str = "<weights>") -> Any:
    """Architecture read off the tensor shapes (classes, attributes, depth, widths); the rest from
    ``base``."""
    from memeguard.features.butd_model import ButdConfig

    base = base or ButdConfig()
    required = [
        "backbone.stem.conv1.weight",
        "backbone.res2.0.conv1.weight",
        "backbone.res2.0.conv3.weight",
        "proposal_generator.rpn_head.conv.weight",
        "proposal_generator.rpn_head.objectness_logits.weight",
        "roi_heads.box_predictor.cls_score.weight",
    ]
    absent = [k for k in required if k not in state]
    if absent:
        raise CheckpointError(f"{source}: not a BUTD Faster R-CNN state dict; missing {absent}")

    def blocks(prefix: str) -> int:
        found = {int(m.group(1)) for k in state if (m := re.match(re.escape(prefix) + r"\.(\d+)\.", k))}
        if not found:
            raise CheckpointError(f"{source}: no blocks under {prefix!r}")
        return max(found) + 1

    num_classes = int(state["roi_heads.box_predictor.cls_score.weight"].shape[0]) - 1
    attr = state.get("roi_heads.box_predictor.attr_score.weight")
    num_attrs = int(attr.shape[0]) - 1 if attr is not None else 0
    num_anchors = int(state["proposal_generator.rpn_head.objectness_logits.weight"].shape[0])
    if num_anchors != len(base.anchor_sizes) * len(base.aspect_ratios):
        raise CheckpointError(
            f"{source}: RPN has {num_anchors} anchors per location, config expects "
            f"{len(base.anchor_sizes)} sizes x {len(base.aspect_ratios)} ratios"
        )
    return dataclasses.replace(
        base,
        num_classes=num_classes,
        num_attrs=num_attrs,
        stage_blocks=(
            blocks("backbone.res2"),
            blocks("backbone.res3"),
            blocks("backbone.res4"),
            blocks("roi_heads.res5"),
        ),
        stem_channels=int(state["backbone.stem.conv1.weight"].shape[0]),
        bottleneck_channels=int(state["backbone.res2.0.conv1.weight"].shape[0]),
        res2_channels=int(state["backbone.res2.0.conv3.weight"].shape[0]),
        rpn_hidden_channels=int(state["proposal_generator.rpn_head.conv.weight"].shape[0]),
    )


def _ignorable(key: str) -> bool:
    return key.endswith(".num_batches_tracked") or key == ANCHOR_KEY


def load_butd_model(path: str | os.PathLike[str], base_config: Any = None) -> tuple[Any, dict[str, Any]]:
    """Build the detector that matches the file and load it strictly.

    Returns (model in eval mode, info with ``layout``, ``attributes``, ``ignored_keys``).
    """
    import torch

    from memeguard.checkpoint_io import load_mapped_state_dict
    from memeguard.features.butd_model import GeneralizedRCNN

    state, layout = read_butd_state_dict(path)
    source = str(path)
    config = config_from_state_dict(state, base_config, source)
    model = GeneralizedRCNN(config)
    if ANCHOR_KEY in state:
        stored = state[ANCHOR_KEY].float()
        ours = model.proposal_generator._cell_anchors
        if stored.shape != ours.shape or not torch.allclose(stored, ours, atol=1e-3):
            raise CheckpointError(
                f"{source}: stored anchors {ANCHOR_KEY} differ from sizes "
                f"{config.anchor_sizes} x ratios {config.aspect_ratios}"
            )
    float_state = {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
    _, unexpected = load_mapped_state_dict(model, float_state, source=source, allowed_unexpected=_ignorable)
    model.eval()
    return model, {"layout": layout, "attributes": config.num_attrs > 0, "ignored_keys": len(unexpected)}


# --------------------------------------------------------------------------------------------
# The extractor
# --------------------------------------------------------------------------------------------


class ButdParams(ExtractorParams):
    """``make_extractor("butd", **params)`` / recipe ``params:`` (weights, boxes, device are options)."""

    fp16: bool = False
    batch_size: int = Field(4, ge=1)
    config: Any = None  # a ButdConfig: inference settings (and, without weights, the architecture)
    seed: int = 0  # of the random-weight detector
    # preprocessing on the device and one NMS per batch (the GPU path; pixels within one level of PIL's)
    batched: bool = False

    @field_validator("config")
    @classmethod
    def _butd_config(cls, value: Any) -> Any:
        if value is None:
            return None
        from memeguard.features.butd_model import ButdConfig  # torch: only when a config is given

        if not isinstance(value, ButdConfig):
            raise ValueError(f"expected a ButdConfig (Python API only), got {type(value).__name__}")
        return value


class ButdExtractor(BaseExtractor):
    """The `Extractor` for BUTD features; one detector pass per batch serves every box variant.

    ``weights=None`` builds the architecture with seeded random weights (benchmarks, tests);
    ``config`` supplies inference settings (and, without weights, the architecture).
    """

    name = "butd"
    Params = ButdParams
    weights_kind = "faster_rcnn_from_caffe{_attr}.pkl or an unc-nlp/frcnn-vg-finetuned folder"
    variants_share_pass = True
    default_variant = "36"

    def __init__(
        self,
        weights: str | os.PathLike[str] | None = None,
        box_variants: Sequence[str] = ("36",),
        device: str = "cpu",
        fp16: bool = False,
        batch_size: int = 4,
        config: Any = None,
        seed: int = 0,
        batched: bool = False,
    ) -> None:
        import torch

        from memeguard.features.butd_model import ButdConfig, GeneralizedRCNN

        if not box_variants:
            raise ConfigError("BUTD extractor: give at least one box variant, e.g. ('36',)")
        self.box_variants = [str(v) for v in box_variants]
        self._limits = {v: parse_variant(v) for v in self.box_variants}
        if batch_size < 1:
            raise ConfigError(f"BUTD extractor: batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        if fp16 and self.device.type != "cuda":
            raise ConfigError(f"BUTD extractor: fp16 needs a CUDA device, got {device!r}")
        self.fp16 = fp16
        self.batched = batched
        self.batch_size = batch_size
        self.weights = Path(weights) if weights is not None else None
        if self.weights is None:
            self.config = config or ButdConfig()
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self.model = GeneralizedRCNN(self.config).eval()
            self._info: dict[str, Any] = {
                "layout": "random",
                "attributes": self.config.num_attrs > 0,
                "seed": seed,
            }
        else:
            self.model, self._info = load_butd_model(self.weights, config)
            self.config = self.model.config
        self.model.to(self.device)
        self._sha256: str | None = None

    @classmethod
    def parse_variants(cls, boxes: str | Sequence[str]) -> tuple[str, ...]:
        variants = super().parse_variants(boxes)
        for variant in variants:
            parse_variant(variant)
        return variants

    @classmethod
    def create(cls, options: ExtractorOptions) -> ButdExtractor:
        return cls(
            weights=options.weights,
            box_variants=options.variants_or(cls.default_variant),
            device=options.device or "cpu",
            **dict(options.params),
        )

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any], source: str, device: str) -> dict[str, Any]:
        """The recorded weights (or the random detector's seed); fp16 only where it can run (CUDA)."""
        weights = meta.get("weights")
        fp16 = bool(meta.get("fp16", False)) and device.startswith("cuda")
        settings: dict[str, Any] = {
            "weights": weights,
            "fp16": fp16,
            "batched": bool(meta.get("batched", False)),
        }
        if weights is None:  # random-weight detector (tests, benchmarks): reproducible from its seed
            settings["seed"] = int(meta.get("seed", 0))
        elif not Path(weights).exists():
            raise ConfigError(f"{source}: BUTD weights {weights} are not here; pass the extractor explicitly")
        return settings

    def variants(self) -> list[str]:
        return list(self.box_variants)

    def extract(
        self, images: Sequence[Any], meme_ids: Sequence[int], texts: Sequence[str]
    ) -> dict[str, list[RegionRecord]]:
        if len(images) != len(meme_ids):
            raise DataError(f"BUTD extractor: {len(images)} images but {len(meme_ids)} meme ids")
        out: dict[str, list[RegionRecord]] = {v: [] for v in self.box_variants}
        for start in range(0, len(images), self.batch_size):
            batch = images[start : start + self.batch_size]
            ids = meme_ids[start : start + self.batch_size]
            detections = self.model.detect(batch, fp16=self.fp16, batched=self.batched)
            for meme_id, det in zip(ids, detections, strict=True):
                for variant, (low, high) in self._limits.items():
                    out[variant].append(self._record(int(meme_id), det, low, high))
        return out

    def _record(self, meme_id: int, det: Any, low: int, high: int) -> RegionRecord:
        from memeguard.features.butd_model import fixed_number_select, rescale_boxes

        keep = fixed_number_select(det.max_boxes, det.max_scores, low, high)
        boxes = rescale_boxes(det.max_boxes[keep], det.input_size, det.original_size)
        has_attr = det.attr_ids is not None
        return RegionRecord(
            meme_id=meme_id,
            features=det.features[keep].cpu().numpy().astype(np.float32),
            boxes=boxes.cpu().numpy().astype(np.float32),
            image_size=det.original_size,
            object_ids=det.max_classes[keep].cpu().numpy().astype(np.int64),
            object_conf=det.max_scores[keep].cpu().numpy().astype(np.float32),
            attr_ids=det.attr_ids[keep].cpu().numpy().astype(np.int64) if has_attr else None,
            attr_conf=det.attr_conf[keep].cpu().numpy().astype(np.float32) if has_attr else None,
        )

    def meta(self) -> dict[str, Any]:
        cfg = self.config
        if self.weights is not None and self._sha256 is None:
            self._sha256 = file_sha256(_hf_weights_file(self.weights))
        return {
            "extractor": self.name,
            "weights": str(self.weights) if self.weights is not None else None,
            "weights_sha256": self._sha256,
            **self._info,
            "variants": self.variants(),
            "feature_dim": cfg.res5_channels,
            "num_classes": cfg.num_classes,
            "num_attrs": cfg.num_attrs,
            "min_size": cfg.min_size,
            "max_size": cfg.max_size,
            "rpn_pre_nms_topk": cfg.rpn_pre_nms_topk,
            "rpn_post_nms_topk": cfg.rpn_post_nms_topk,
            "rpn_nms_thresh": cfg.rpn_nms_thresh,
            "pixel_mean_bgr": list(cfg.pixel_mean_bgr),
            "fp16": self.fp16,
            "batched": self.batched,
            "box_format": "xyxy pixels of the original image",
        }


def butd_throughput(
    image_size: int = 600,
    n_images: int = 4,
    batch_size: int = 4,
    device: str = "cpu",
    box_variants: Sequence[str] = ("36",),
) -> float:
    """Images per second of the full-size detector with random weights on square random images."""
    from PIL import Image

    extractor = ButdExtractor(weights=None, box_variants=box_variants, device=device, batch_size=batch_size)
    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8))
        for _ in range(n_images)
    ]
    started = time.perf_counter()
    extractor.extract(images, list(range(n_images)), [""] * n_images)
    if extractor.device.type == "cuda":
        import torch

        torch.cuda.synchronize()
    return n_images / (time.perf_counter() - started)
