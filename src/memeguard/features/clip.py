"""CLIP features: a Hugging Face ``CLIPModel`` (local folder or hub id) as a frozen per-meme encoder.

What the CLIP-family heads (clip-concat, Hate-CLIPper, RGCL) read is stored per meme in
``RegionRecord.extras`` (names are a contract with :mod:`memeguard.models`):

- ``image_embeds``, ``text_embeds``: the projected embeddings, L2-normalised (``CLIPModel``'s
  ``get_image_features``/``get_text_features`` then normalised: what the contrastive score uses and what
  clip-concat takes);
- ``image_pooled``, ``text_pooled``: the PRE-projection pooled outputs, not normalised:
  ``vision_model(...).pooler_output`` (``post_layernorm`` of [CLS]) and ``text_model(...).pooler_output``
  (the EOS token after ``final_layer_norm``). Hate-CLIPper feeds these to its own trainable projections;
  RGCL does too (``CLIPVisionModel``/``CLIPTextModel`` ``pooler_output``, ``JingbiaoMei/RGCL``
  ``src/utils/extract_CLIP_features.py``).

The regions (``RegionRecord.features``/``boxes``) are, with ``patches=False`` (the default), ONE row per
meme: the pooled image output (the same vector as ``image_pooled``) with the whole-image box, so region
models and store tools still see a valid store. With ``patches=True`` each ViT patch is a region: its
last-layer hidden state through ``post_layernorm`` (the pooled [CLS] token's normalisation, so patch and
pooled features share one scale), its box the patch's square mapped back to ORIGINAL image pixels.

Preprocessing is the checkpoint's own (``preprocessor_config.json``; without one ``CLIPImageProcessor`` at
the tower's image size), in one of two geometries (``resize``):

- ``"crop"``: the processor as is: shortest side resized, centre crop; on a wide meme the left and right
  edges are not seen, as for any CLIP user of that checkpoint (:class:`CropGeometry`);
- ``"square"``: the whole meme resized to image_size x image_size (PIL, the processor's resampling), then
  the processor's rescale and mean/std only: what Hate-CLIPper (``image.resize((224, 224))``) and RGCL
  (``resize((336, 336))`` before the processor) feed CLIP; nothing is cut, the aspect ratio is not kept.

Text goes through the checkpoint's own tokenizer, at most ``text_config.max_position_embeddings`` tokens
(77 for OpenAI CLIP): a longer caption keeps its start (BOS, the first 75 BPE tokens, EOS); the store's
meta counts the memes so cut (``text_truncated``). The towers run in float32; what is stored (the
extras) is rounded to ``dtype`` (float16 by default), and the store keeps the extras in that dtype.

``unfreeze_layers=k`` (default 0: nothing below changes) stores, for a head that fine-tunes the last k
layers of each tower (``unfreeze_clip_layers``), the INPUTS of those layers instead of only the outputs:

- the regions are the vision tower's hidden states entering layer L-k: every token, [CLS] first
  (grid*grid + 1 rows of the vision width), each with the whole-image box (a patch box would describe
  only the input patch, not a mixed hidden state); ``patches`` must then be False;
- extras ``text_hidden`` (the text tower's hidden states entering layer L-k, zero-padded to
  ``max_text_length`` tokens, flattened row-major), ``text_mask`` (the tokenizer's attention mask, padded
  likewise), ``text_eos`` (the token CLIP pools: the first EOS, or the largest id for old configs whose
  eos_token_id is 2, as transformers does) and ``unfreeze_layers`` (k, so a model can refuse another k);
- the four usual extras are still stored, so frozen heads read such a store too.

A ViT-L/14 store with k > 0 holds 257 x 1024 region values and 77 x 768 text values per meme (about
0.65 MB in float16): the price of training CLIP layers without pixels in the batch.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image
from pydantic import Field

from memeguard.errors import CheckpointError, ConfigError, DataError
from memeguard.features.extractor import BaseExtractor, ExtractorOptions, ExtractorParams
from memeguard.features.record import RegionRecord


class CropGeometry:
    """Where each crop pixel came from: the resize + centre-crop rule of ``CLIPImageProcessor``.

    The pixels themselves come from the checkpoint's own image processor; this class only
    reproduces its geometry (short side to ``shortest_edge`` with the long side truncated, then a
    centre crop at ``int((size - crop) / 2)``) so patch squares can be mapped back to the image.
    """

    def __init__(self, shortest_edge: int, crop_size: tuple[int, int]) -> None:
        self.shortest_edge = shortest_edge
        self.crop_h, self.crop_w = crop_size

    @classmethod
    def from_processor(cls, processor: Any, image_size: int, source: str) -> CropGeometry:
        size, crop = dict(processor.size or {}), dict(processor.crop_size or {})
        if not processor.do_resize or "shortest_edge" not in size or not processor.do_center_crop:
            raise CheckpointError(
                f"{source}: image processor must resize the shortest edge and centre-crop "
                f"(size={size}, do_center_crop={processor.do_center_crop})"
            )
        crop_hw = (int(crop["height"]), int(crop["width"]))
        if crop_hw != (image_size, image_size):
            raise CheckpointError(
                f"{source}: crop_size {crop_hw} differs from the vision tower's image_size {image_size}"
            )
        return cls(int(size["shortest_edge"]), crop_hw)

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        if width <= height:
            return int(self.shortest_edge * height / width), self.shortest_edge
        return self.shortest_edge, int(self.shortest_edge * width / height)

    def __call__(self, height: int, width: int) -> tuple[float, float, float, float]:
        """-> (scale_x, scale_y, left, top): original pixel = (crop pixel + offset) / scale."""
        new_h, new_w = self.resized_size(height, width)
        top = int((new_h - self.crop_h) / 2.0)
        left = int((new_w - self.crop_w) / 2.0)
        return new_w / width, new_h / height, left, top


def patch_boxes(
    grid: int, patch: int, geometry: tuple[float, float, float, float], image_size: tuple[int, int]
) -> np.ndarray:
    """Row-major patch squares of the crop, mapped back to original pixels and clipped: [grid*grid, 4]."""
    scale_x, scale_y, left, top = geometry
    rows, cols = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
    x1 = (cols.reshape(-1) * patch + left) / scale_x
    y1 = (rows.reshape(-1) * patch + top) / scale_y
    x2 = ((cols.reshape(-1) + 1) * patch + left) / scale_x
    y2 = ((rows.reshape(-1) + 1) * patch + top) / scale_y
    height, width = image_size
    boxes = np.stack(
        [np.clip(x1, 0, width), np.clip(y1, 0, height), np.clip(x2, 0, width), np.clip(y2, 0, height)], 1
    )
    return boxes.astype(np.float32)


def square_geometry(image_size: int, height: int, width: int) -> tuple[float, float, float, float]:
    """``resize="square"``: the whole image stretched to ``image_size`` x ``image_size``, nothing cut;
    -> (scale_x, scale_y, left, top) as :class:`CropGeometry` gives them."""
    return image_size / width, image_size / height, 0.0, 0.0


# ---------------------------------------------------------------------------------- the checkpoint

# "openai/clip-vit-large-patch14": a hub repo id (owner/name); anything else that is not a folder is refused.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
# What a CLIP snapshot needs: configs, tokenizer files, safetensors weights (never pickled .bin files).
HUB_FILES = ["*.json", "*.txt", "*.safetensors"]


def is_hub_id(name: str) -> bool:
    return bool(_HUB_ID.match(name)) and not Path(name).exists()


def _hub_offline() -> bool:
    """HF_HUB_OFFLINE as set now (huggingface_hub reads it once, at import)."""
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE", "")
    return constants.HF_HUB_OFFLINE or value.strip().upper() in {"1", "ON", "YES", "TRUE"}


def resolve_checkpoint(name: str | os.PathLike[str]) -> Path:
    """A local CLIP folder as is, or a hub id's snapshot folder (``huggingface_hub.snapshot_download``:
    the cache, and the network unless HF_HUB_OFFLINE is set); CheckpointError as one line otherwise."""
    from transformers.utils import CONFIG_NAME

    text = str(name)
    if not is_hub_id(text):
        folder = Path(text)
        if not (folder / CONFIG_NAME).is_file():
            raise CheckpointError(f"{folder}: not a Hugging Face CLIP folder (no {CONFIG_NAME})")
        return folder
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    offline = _hub_offline()
    try:
        return Path(snapshot_download(text, allow_patterns=HUB_FILES, local_files_only=offline))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as exc:
        if offline:
            why = "it is not in the Hugging Face cache and HF_HUB_OFFLINE is set; download it once online"
        else:
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            why = f"the hub did not give it ({type(exc).__name__}: {first})"
        raise CheckpointError(
            f"{text}: no such local folder, and {why} (or pass a local CLIP folder)"
        ) from None


def weights_sha256(folder: Path) -> str | None:
    """sha256 of the weights file (``model.safetensors``, else ``pytorch_model.bin``); a sharded
    checkpoint: sha256 over its shards' digests in name order. None when no weights file is found."""
    import hashlib

    from transformers.utils import SAFE_WEIGHTS_NAME, WEIGHTS_NAME

    from memeguard.records import file_sha256

    single = next((folder / n for n in (SAFE_WEIGHTS_NAME, WEIGHTS_NAME) if (folder / n).is_file()), None)
    if single is not None:
        return file_sha256(single)
    shards = sorted(folder.glob("*.safetensors"))
    if not shards:
        return None
    digest = hashlib.sha256()
    for shard in shards:
        digest.update(f"{shard.name}:{file_sha256(shard)}\n".encode())
    return digest.hexdigest()


# ---------------------------------------------------------------------------------- the extractor


class ClipParams(ExtractorParams):
    """``make_extractor("clip", **params)`` / recipe ``params:`` (``weights``: the folder or hub id)."""

    batch_size: int = Field(8, ge=1)
    resize: Literal["crop", "square"] = "crop"  # see the module docstring
    patches: bool = False  # True: the ViT patch tokens are the regions; False: one whole-image row
    dtype: Literal["float16", "float32"] = "float16"  # what the extras are rounded to and stored as
    unfreeze_layers: int = Field(0, ge=0)  # > 0: store the inputs of the last k layers (module docstring)


class ClipExtractor(BaseExtractor):
    """The `Extractor` for CLIP: pooled/projected image and text embeddings (+ patch tokens), variant
    "default"."""

    name = "clip"
    Params = ClipParams
    weights_kind = "a Hugging Face CLIP folder, or a hub id such as openai/clip-vit-large-patch14"
    weights_required = True

    def __init__(
        self,
        model_dir: str | os.PathLike[str],
        device: str = "cpu",
        batch_size: int = 8,
        resize: str = "crop",
        patches: bool = False,
        dtype: str = "float16",
        unfreeze_layers: int = 0,
    ) -> None:
        import torch

        settings = self.validate_params(
            dict(
                batch_size=batch_size,
                resize=resize,
                patches=patches,
                dtype=dtype,
                unfreeze_layers=unfreeze_layers,
            )
        )
        assert isinstance(settings, ClipParams)
        self.model_id = str(model_dir)  # as given: a folder or a hub id
        self.model_dir = resolve_checkpoint(model_dir)
        self.batch_size, self.resize = settings.batch_size, settings.resize
        self.patches, self.dtype = settings.patches, settings.dtype
        self.device = torch.device(device)
        self.model, self.tokenizer = self._load()
        vision = self.model.config.vision_config
        self.image_size = int(vision.image_size)
        self.patch_size = int(vision.patch_size)
        self.grid = self.image_size // self.patch_size
        self.max_text_length = int(self.model.config.text_config.max_position_embeddings)
        self.processor = self._image_processor(self.image_size)
        self.geometry = CropGeometry.from_processor(self.processor, self.image_size, str(self.model_dir))
        self.unfreeze_layers = settings.unfreeze_layers
        self._check_unfreeze()

    def _check_unfreeze(self) -> None:
        """``unfreeze_layers`` must fit both towers and excludes patch regions (both would be the regions)."""
        k = self.unfreeze_layers
        if k == 0:
            return
        depth = min(
            int(self.model.config.vision_config.num_hidden_layers),
            int(self.model.config.text_config.num_hidden_layers),
        )
        if k > depth:
            raise ConfigError(
                f"{self.model_dir}: unfreeze_layers={k}, but the CLIP towers have {depth} layers"
            )
        if self.patches:
            raise ConfigError(
                "clip extractor: unfreeze_layers > 0 stores the layer inputs as regions; use patches=false"
            )

    def _load(self) -> tuple[Any, Any]:
        from safetensors import SafetensorError
        from transformers import AutoTokenizer, CLIPModel

        try:
            model = CLIPModel.from_pretrained(self.model_dir, local_files_only=True).eval().to(self.device)
            tokenizer = AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True)
        except (OSError, ValueError, SafetensorError) as exc:  # a truncated download: SafetensorError
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            raise CheckpointError(f"{self.model_dir}: cannot load CLIP model/tokenizer ({first})") from None
        return model, tokenizer

    @classmethod
    def create(cls, options: ExtractorOptions) -> ClipExtractor:
        assert options.weights is not None  # check_options requires it
        return cls(model_dir=options.weights, device=options.device or "cpu", **dict(options.params))

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any], source: str, device: str) -> dict[str, Any]:
        """The recorded folder when it is here, else the recorded hub id (the cache, or online). Stores
        written before ``patches``/``dtype``/``resize`` existed held patch regions, float32 extras and the
        processor's centre crop: those are the defaults for a meta without the keys."""
        model_dir, model_id = meta.get("model_dir"), str(meta.get("model") or "")
        if model_dir and Path(model_dir).exists():
            weights = str(model_dir)
        elif model_id and is_hub_id(model_id):
            weights = model_id
        else:
            raise ConfigError(
                f"{source}: CLIP model folder {model_dir} is not here; pass the extractor explicitly"
            )
        return {
            "weights": weights,
            "resize": meta.get("resize", "crop"),
            "patches": bool(meta.get("patches", True)),
            "dtype": meta.get("dtype", "float32"),
            **({"unfreeze_layers": int(meta["unfreeze_layers"])} if meta.get("unfreeze_layers") else {}),
        }

    def _image_processor(self, image_size: int) -> Any:
        from transformers import AutoImageProcessor, CLIPImageProcessor
        from transformers.utils import IMAGE_PROCESSOR_NAME

        if (self.model_dir / IMAGE_PROCESSOR_NAME).is_file():
            try:
                return AutoImageProcessor.from_pretrained(self.model_dir, local_files_only=True)
            except (OSError, ValueError) as exc:
                raise CheckpointError(f"{self.model_dir}: cannot load the image processor ({exc})") from exc
        return CLIPImageProcessor(
            size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
        )

    def variants(self) -> list[str]:
        return ["default"]

    def pixel_values(self, images: Sequence[Image.Image]) -> Any:
        """[n, 3, S, S] float32 pixels as the tower sees them, in this extractor's ``resize`` mode."""
        rgb = [image.convert("RGB") for image in images]
        if self.resize == "crop":
            return self.processor(images=rgb, return_tensors="pt")["pixel_values"]
        side = (self.image_size, self.image_size)
        resample = Image.Resampling(int(getattr(self.processor, "resample", Image.Resampling.BICUBIC)))
        squares = [image.resize(side, resample=resample) for image in rgb]
        return self.processor(images=squares, do_resize=False, do_center_crop=False, return_tensors="pt")[
            "pixel_values"
        ]

    def geometry_of(self, height: int, width: int) -> tuple[float, float, float, float]:
        """(scale_x, scale_y, left, top) mapping tower pixels back to the image, per ``resize`` mode."""
        if self.resize == "crop":
            return self.geometry(height, width)
        return square_geometry(self.image_size, height, width)

    def tokens(self, texts: Sequence[str]) -> Any:
        """The captions as the text tower reads them: padded, cut to ``max_text_length`` tokens."""
        return self.tokenizer(
            [str(t) for t in texts],
            padding=True,
            truncation=True,
            max_length=self.max_text_length,
            return_tensors="pt",
        )

    def truncated(self, texts: Sequence[str]) -> list[bool]:
        """Whether each caption is longer than the text tower takes (tokenised one token past the limit,
        so a huge caption costs no more than a long one)."""
        ids = self.tokenizer([str(t) for t in texts], truncation=True, max_length=self.max_text_length + 1)[
            "input_ids"
        ]
        return [len(row) > self.max_text_length for row in ids]

    def dataset_meta(self, texts: Sequence[str]) -> dict[str, Any]:
        """Store meta about every caption of the dataset (``extract_features`` asks once per store)."""
        return {"text_truncated": sum(self.truncated(texts)), "text_count": len(texts)}

    def extract(
        self, images: Sequence[Image.Image], meme_ids: Sequence[int], texts: Sequence[str]
    ) -> dict[str, list[RegionRecord]]:
        if not (len(images) == len(meme_ids) == len(texts)):
            raise DataError(f"CLIP extractor: {len(images)} images, {len(meme_ids)} ids, {len(texts)} texts")
        records: list[RegionRecord] = []
        for start in range(0, len(images), self.batch_size):
            stop = start + self.batch_size
            records.extend(self._batch(images[start:stop], meme_ids[start:stop], texts[start:stop]))
        return {"default": records}

    def encode(self, images: Sequence[Image.Image], texts: Sequence[str]) -> dict[str, Any]:
        """One batch through both towers -> float32 tensors: the four extras and ``patch_tokens``."""
        import torch
        from torch.nn import functional as F

        pixels = self.pixel_values(images).to(self.device)
        tokens = self.tokens(texts).to(self.device)
        with torch.no_grad():
            vision = self.model.vision_model(pixel_values=pixels)
            text = self.model.text_model(
                input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
            )
            out = {
                "image_pooled": vision.pooler_output,
                "text_pooled": text.pooler_output,
                "image_embeds": F.normalize(self.model.visual_projection(vision.pooler_output), dim=-1),
                "text_embeds": F.normalize(self.model.text_projection(text.pooler_output), dim=-1),
            }
            if self.patches:
                out["patch_tokens"] = self.model.vision_model.post_layernorm(vision.last_hidden_state[:, 1:])
            if self.unfreeze_layers:
                out.update(self.layer_inputs(pixels, tokens))
        return {key: value.float().cpu().numpy() for key, value in out.items()}

    def layer_inputs(self, pixels: Any, tokens: Any) -> dict[str, Any]:
        """The hidden states entering layer L-k of each tower (``hidden_states[L-k]``: index 0 is the
        encoder's input), the text padded to ``max_text_length``, its mask, and CLIP's pooled position."""
        import torch
        from torch.nn import functional as F

        k = self.unfreeze_layers
        vision = self.model.vision_model(pixel_values=pixels, output_hidden_states=True).hidden_states
        ids, mask = tokens["input_ids"], tokens["attention_mask"]
        text = self.model.text_model(
            input_ids=ids, attention_mask=mask, output_hidden_states=True
        ).hidden_states
        pad = self.max_text_length - ids.shape[1]
        eos_id = self.model.text_model.eos_token_id
        eos = ids.argmax(-1) if eos_id == 2 else (ids == eos_id).int().argmax(-1)
        return {
            "vision_in": vision[len(vision) - 1 - k],
            "text_hidden": F.pad(text[len(text) - 1 - k], (0, 0, 0, pad)).flatten(1),
            "text_mask": F.pad(mask, (0, pad)).float(),
            "text_eos": eos.float()[:, None],
            "unfreeze_layers": torch.full((ids.shape[0], 1), float(k)),
        }

    def _batch(
        self, images: Sequence[Image.Image], ids: Sequence[int], texts: Sequence[str]
    ) -> list[RegionRecord]:
        encoded = self.encode(images, texts)
        out = []
        for i, (image, meme_id) in enumerate(zip(images, ids, strict=True)):
            size = (image.height, image.width)
            if self.patches:
                features = encoded["patch_tokens"][i]
                boxes = patch_boxes(self.grid, self.patch_size, self.geometry_of(*size), size)
            elif self.unfreeze_layers:
                features = encoded["vision_in"][i]
                boxes = np.tile(np.array([[0, 0, image.width, image.height]], np.float32), (len(features), 1))
            else:
                features = encoded["image_pooled"][i][None]
                boxes = np.array([[0, 0, image.width, image.height]], dtype=np.float32)
            names = EXTRA_NAMES + (UNFREEZE_EXTRA_NAMES if self.unfreeze_layers else ())
            extras = {name: encoded[name][i].astype(self.dtype) for name in names}
            out.append(RegionRecord(int(meme_id), features, boxes, size, extras=extras))
        return out

    def meta(self) -> dict[str, Any]:
        geometry = self.geometry
        crop = (
            f"shortest side {geometry.shortest_edge}, centre crop {geometry.crop_h}x{geometry.crop_w}"
            if self.resize == "crop"
            else f"whole image resized to {self.image_size}x{self.image_size} (aspect not kept)"
        )
        return {
            "extractor": self.name,
            "model": self.model_id,
            "model_dir": str(self.model_dir),
            "weights_sha256": weights_sha256(self.model_dir),
            "feature_dim": int(self.model.config.vision_config.hidden_size),
            "num_regions": self.grid * self.grid + 1
            if self.unfreeze_layers
            else self.grid * self.grid
            if self.patches
            else 1,
            "patch_size": self.patch_size,
            "image_size": self.image_size,
            "projection_dim": int(self.model.config.projection_dim),
            "resize": self.resize,
            "patches": self.patches,
            "dtype": self.dtype,
            "max_text_tokens": self.max_text_length,
            "features": (
                "last layer patch tokens after post_layernorm"
                if self.patches
                else "one row: the pooled image output (= image_pooled), whole-image box"
            ),
            "embeddings": (
                "image_embeds/text_embeds projected and L2-normalised; image_pooled/text_pooled the "
                "pre-projection pooler outputs"
            ),
            "text_truncation": f"captions cut to their first {self.max_text_length} tokens (BOS ... EOS)",
            "crop": crop,
            "box_format": "xyxy pixels of the original image",
            **self._unfreeze_meta(),
        }

    def _unfreeze_meta(self) -> dict[str, Any]:
        """Only for ``unfreeze_layers`` > 0 (a default store's meta stays what it was)."""
        if not self.unfreeze_layers:
            return {}
        k = self.unfreeze_layers
        return {
            "unfreeze_layers": k,
            "features": f"vision hidden states entering layer L-{k}: [CLS] + patch tokens, whole-image boxes",
            "text_layer_inputs": f"text_hidden/text_mask/text_eos: text hidden states entering layer L-{k}, "
            f"padded to {self.max_text_length} tokens",
        }


# The per-meme vectors every CLIP store holds (a contract with the CLIP-family models).
EXTRA_NAMES = ("image_embeds", "text_embeds", "image_pooled", "text_pooled")
# What ``unfreeze_layers`` > 0 adds (the inputs of the last k text layers; the vision ones are the regions).
UNFREEZE_EXTRA_NAMES = ("text_hidden", "text_mask", "text_eos", "unfreeze_layers")
