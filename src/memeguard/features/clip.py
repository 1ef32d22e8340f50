"""CLIP patch features: the vision tower of a local Hugging Face ``CLIPModel`` as a region extractor.

Each ViT patch is one "region": its feature is the last encoder layer's hidden state passed through
the vision tower's ``post_layernorm`` (the same normalisation the pooled [CLS] token gets before the
projection, so patch and pooled features live on one scale); its box is the patch's square in the
ORIGINAL image's pixels. The [CLS] token is not a region. Per image we also store, in
``RegionRecord.extras``:

- ``image_embeds``: the projected pooled image embedding, L2-normalised (as ``CLIPModel.forward``
  returns it for the contrastive score),
- ``text_embeds``: the projected embedding of the meme text, L2-normalised, truncated to the text
  tower's maximum length.

Pixels come from the checkpoint's own image processor (``preprocessor_config.json``; without one,
``CLIPImageProcessor`` at the tower's image size): shortest side resized, centre crop. Patches
therefore cover the centre crop only: on a wide meme the left and right edges are not seen, exactly
as for any CLIP user of that checkpoint. :class:`CropGeometry` maps patch squares back to pixels.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

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


class ClipParams(ExtractorParams):
    """``make_extractor("clip", **params)`` / recipe ``params:`` (the model folder is ``weights``)."""

    batch_size: int = Field(8, ge=1)


class ClipExtractor(BaseExtractor):
    """The `Extractor` for CLIP patch tokens + pooled image/text embeddings (one variant, "default")."""

    name = "clip"
    Params = ClipParams
    weights_kind = "a local Hugging Face CLIP folder"
    weights_required = True

    def __init__(self, model_dir: str | os.PathLike[str], device: str = "cpu", batch_size: int = 8) -> None:
        import torch
        from transformers import AutoTokenizer, CLIPModel
        from transformers.utils import CONFIG_NAME

        self.model_dir = Path(model_dir)
        if not (self.model_dir / CONFIG_NAME).is_file():
            raise CheckpointError(f"{self.model_dir}: not a Hugging Face CLIP folder (no config.json)")
        if batch_size < 1:
            raise ConfigError(f"CLIP extractor: batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.device = torch.device(device)
        try:
            self.model = (
                CLIPModel.from_pretrained(self.model_dir, local_files_only=True).eval().to(self.device)
            )
            self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{self.model_dir}: cannot load CLIP model/tokenizer ({exc})") from exc
        vision = self.model.config.vision_config
        self.patch_size = int(vision.patch_size)
        self.grid = int(vision.image_size) // self.patch_size
        self.max_text_length = int(self.model.config.text_config.max_position_embeddings)
        self.processor = self._image_processor(int(vision.image_size))
        self.geometry = CropGeometry.from_processor(
            self.processor, int(vision.image_size), str(self.model_dir)
        )

    @classmethod
    def create(cls, options: ExtractorOptions) -> ClipExtractor:
        assert options.weights is not None  # check_options requires it
        return cls(model_dir=options.weights, device=options.device or "cpu", **dict(options.params))

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any], source: str, device: str) -> dict[str, Any]:
        model_dir = meta.get("model_dir")
        if not model_dir or not Path(model_dir).exists():
            raise ConfigError(
                f"{source}: CLIP model folder {model_dir} is not here; pass the extractor explicitly"
            )
        return {"weights": model_dir}

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

    def _batch(
        self, images: Sequence[Image.Image], ids: Sequence[int], texts: Sequence[str]
    ) -> list[RegionRecord]:
        import torch
        from torch.nn import functional as F

        rgb = [image.convert("RGB") for image in images]
        pixels = self.processor(images=rgb, return_tensors="pt")["pixel_values"].to(self.device)
        tokens = self.tokenizer(
            [str(t) for t in texts],
            padding=True,
            truncation=True,
            max_length=self.max_text_length,
            return_tensors="pt",
        ).to(self.device)
        with torch.no_grad():
            vision = self.model.vision_model(pixel_values=pixels)
            patches = self.model.vision_model.post_layernorm(vision.last_hidden_state[:, 1:])
            image_embeds = F.normalize(self.model.visual_projection(vision.pooler_output), dim=-1)
            text = self.model.text_model(
                input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
            )
            text_embeds = F.normalize(self.model.text_projection(text.pooler_output), dim=-1)
        out = []
        for i, (image, meme_id) in enumerate(zip(images, ids, strict=True)):
            size = (image.height, image.width)
            out.append(
                RegionRecord(
                    meme_id=int(meme_id),
                    features=patches[i].float().cpu().numpy(),
                    boxes=patch_boxes(self.grid, self.patch_size, self.geometry(*size), size),
                    image_size=size,
                    extras={
                        "image_embeds": image_embeds[i].float().cpu().numpy(),
                        "text_embeds": text_embeds[i].float().cpu().numpy(),
                    },
                )
            )
        return out

    def meta(self) -> dict[str, Any]:
        from transformers.utils import SAFE_WEIGHTS_NAME, WEIGHTS_NAME

        from memeguard.features.butd import file_sha256

        weights = next(
            (self.model_dir / n for n in (SAFE_WEIGHTS_NAME, WEIGHTS_NAME) if (self.model_dir / n).is_file()),
            None,
        )
        return {
            "extractor": self.name,
            "model_dir": str(self.model_dir),
            "weights_sha256": file_sha256(weights) if weights is not None else None,
            "feature_dim": int(self.model.config.vision_config.hidden_size),
            "num_regions": self.grid * self.grid,
            "patch_size": self.patch_size,
            "projection_dim": int(self.model.config.projection_dim),
            "features": "last layer patch tokens after post_layernorm",
            "embeddings": "image_embeds/text_embeds projected and L2-normalised",
            "crop": (
                f"shortest side {self.geometry.shortest_edge}, "
                f"centre crop {self.geometry.crop_h}x{self.geometry.crop_w}"
            ),
            "box_format": "xyxy pixels of the original image",
        }
