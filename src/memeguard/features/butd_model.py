"""The Visual Genome Faster R-CNN (ResNet-101 C4, caffe max-pool) that vilio's BUTD features came from.

This is the detectron2 model of airsplay/py-bottom-up-attention (configs/VG-Detection/
``faster_rcnn_R_101_C4{_attr,}_caffemaxpool.yaml``) rewritten with torch + torchvision.ops only.
Module names follow detectron2's exactly, so the original state dicts load without renaming:

    backbone.stem.conv1[.norm]                      7x7/2 conv + FrozenBN, then caffe max-pool
    backbone.res{2,3,4}.<i>.{conv1,conv2,conv3,shortcut}[.norm]
    proposal_generator.rpn_head.{conv,objectness_logits,anchor_deltas}
    roi_heads.res5.<i>....                           res5 run per RoI (C4 head)
    roi_heads.box_predictor.{cls_score,bbox_pred}    1601-way classes (background LAST), 1600x4 deltas
    roi_heads.box_predictor.{cls_embedding,fc_attr,attr_score}   only for the attribute weights

Two VG-specific changes from a stock C4 model are kept because the caffe weights need them:
the stem max-pool uses pad 0 + ceil mode (CAFFE_MAXPOOL), and RES5HALVE=False turns the first
res5 block's stride 2 into stride 1 with dilation 2 in every res5 3x3 conv, so a 14x14 RoIPool
crop stays 14x14 through res5 and the region feature is the mean over those 196 positions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F
from torchvision.ops import FrozenBatchNorm2d, batched_nms, nms, roi_pool

# np.arange(0.3, 1.0, 0.1) exactly as the extraction script iterates it (0.30000000000000004, ...):
# the float values matter for boxes whose IoU sits right at a threshold.
FIXED_NMS_THRESHOLDS: tuple[float, ...] = tuple(float(t) for t in np.arange(0.3, 1.0, 0.1))


@dataclass
class ButdConfig:
    """Architecture and inference settings; the defaults are vilio's `vgattr` extraction settings."""

    num_classes: int = 1600  # VG objects; the classifier has one more (background, last column)
    num_attrs: int = 400  # 0 = no attribute head (the `vg` weights, faster_rcnn_from_caffe.pkl)
    stage_blocks: tuple[int, int, int, int] = (3, 4, 23, 3)  # ResNet-101; tests may shrink it
    stem_channels: int = 64
    res2_channels: int = 256  # output channels of res2; res3/4/5 double it each stage
    bottleneck_channels: int = 64  # NUM_GROUPS * WIDTH_PER_GROUP
    rpn_hidden_channels: int = 512  # PROPOSAL_GENERATOR.HID_CHANNELS for VG (stock C4: 1024)
    anchor_sizes: tuple[float, ...] = (64.0, 128.0, 256.0, 512.0)
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    pixel_mean_bgr: tuple[float, float, float] = (102.9801, 115.9465, 122.7717)
    min_size: int = 600  # INPUT.MIN_SIZE_TEST
    max_size: int = 1000  # INPUT.MAX_SIZE_TEST
    rpn_pre_nms_topk: int = 6000
    rpn_post_nms_topk: int = 300
    rpn_nms_thresh: float = 0.7
    pooler_resolution: int = 14
    bbox_reg_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)
    res5_halve: bool = False  # False = the VG head (stride 1, dilation 2 in res5)
    roi_chunk: int = 512  # RoIs per res5 call: bounds memory (res5 on 14x14 crops is the heavy part)

    @property
    def res4_channels(self) -> int:
        return self.res2_channels * 4

    @property
    def res5_channels(self) -> int:
        return self.res2_channels * 8

    @property
    def num_anchors(self) -> int:
        return len(self.anchor_sizes) * len(self.aspect_ratios)


# --------------------------------------------------------------------------------------------
# Backbone
# --------------------------------------------------------------------------------------------


class ConvNorm(nn.Conv2d):
    """A bias-free conv with its FrozenBN as child ``norm`` (detectron2's ``Conv2d(norm=...)`` keys)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            bias=False,
        )
        self.norm = FrozenBatchNorm2d(out_channels, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(super().forward(x))


class BottleneckBlock(nn.Module):
    """MSRA bottleneck: the stride sits in the first 1x1 conv (STRIDE_IN_1X1=True, as in caffe)."""

    def __init__(
        self, in_channels: int, bottleneck: int, out_channels: int, stride: int, dilation: int = 1
    ) -> None:
        super().__init__()
        self.shortcut = (
            ConvNorm(in_channels, out_channels, 1, stride=stride) if in_channels != out_channels else None
        )
        self.conv1 = ConvNorm(in_channels, bottleneck, 1, stride=stride)
        self.conv2 = ConvNorm(bottleneck, bottleneck, 3, padding=dilation, dilation=dilation)
        self.conv3 = ConvNorm(bottleneck, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.conv1(x))
        out = F.relu(self.conv2(out))
        out = self.conv3(out)
        shortcut = self.shortcut(x) if self.shortcut is not None else x
        return F.relu(out + shortcut)


def make_stage(
    num_blocks: int,
    in_channels: int,
    bottleneck: int,
    out_channels: int,
    first_stride: int,
    dilation: int = 1,
) -> nn.Sequential:
    blocks = []
    for index in range(num_blocks):
        blocks.append(
            BottleneckBlock(
                in_channels,
                bottleneck,
                out_channels,
                stride=first_stride if index == 0 else 1,
                dilation=dilation,
            )
        )
        in_channels = out_channels
    return nn.Sequential(*blocks)


class BasicStem(nn.Module):
    def __init__(self, out_channels: int) -> None:
        super().__init__()
        self.conv1 = ConvNorm(3, out_channels, 7, stride=2, padding=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        # caffe's pooling: no padding, round the output size up (CAFFE_MAXPOOL=True)
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=0, ceil_mode=True)


class ResNetC4(nn.Module):
    """Stem + res2..res4; output stride 16 (the RPN and the RoI pooler both read res4)."""

    def __init__(self, config: ButdConfig) -> None:
        super().__init__()
        self.stem = BasicStem(config.stem_channels)
        in_ch, bott, out_ch = config.stem_channels, config.bottleneck_channels, config.res2_channels
        for stage_index, name in enumerate(("res2", "res3", "res4")):
            stride = 1 if stage_index == 0 else 2
            self.add_module(name, make_stage(config.stage_blocks[stage_index], in_ch, bott, out_ch, stride))
            in_ch, bott, out_ch = out_ch, bott * 2, out_ch * 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res4(self.res3(self.res2(self.stem(x))))


# --------------------------------------------------------------------------------------------
# Boxes, anchors, RPN
# --------------------------------------------------------------------------------------------


def apply_deltas(
    deltas: torch.Tensor, boxes: torch.Tensor, weights: tuple[float, float, float, float]
) -> torch.Tensor:
    """detectron2's Box2BoxTransform.apply_deltas: deltas [R, K*4] on boxes [R, 4] -> [R, K*4]."""
    deltas = deltas.float()
    boxes = boxes.float()
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    ctr_x = boxes[:, 0] + 0.5 * widths
    ctr_y = boxes[:, 1] + 0.5 * heights
    wx, wy, ww, wh = weights
    clamp = math.log(1000.0 / 16)  # no box may grow more than 16px -> 1000px
    dx = deltas[:, 0::4] / wx
    dy = deltas[:, 1::4] / wy
    dw = (deltas[:, 2::4] / ww).clamp(max=clamp)
    dh = (deltas[:, 3::4] / wh).clamp(max=clamp)
    pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
    pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
    pred_w = torch.exp(dw) * widths[:, None]
    pred_h = torch.exp(dh) * heights[:, None]
    out = torch.stack(
        (
            pred_ctr_x - 0.5 * pred_w,
            pred_ctr_y - 0.5 * pred_h,
            pred_ctr_x + 0.5 * pred_w,
            pred_ctr_y + 0.5 * pred_h,
        ),
        dim=2,
    )
    return out.reshape(deltas.shape)


def clip_boxes(boxes: torch.Tensor, height: float, width: float) -> torch.Tensor:
    """Clamp x to [0, width] and y to [0, height] (detectron2 ``Boxes.clip``); boxes [..., 4]."""
    x = boxes[..., 0::2].clamp(min=0, max=width)
    y = boxes[..., 1::2].clamp(min=0, max=height)
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), dim=-1)


def cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> torch.Tensor:
    """Anchors centred on (0, 0), size-major then ratio (detectron2 DefaultAnchorGenerator order)."""
    anchors = []
    for size in sizes:
        area = float(size) ** 2
        for ratio in aspect_ratios:
            w = math.sqrt(area / ratio)
            h = ratio * w
            anchors.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
    return torch.tensor(anchors, dtype=torch.float32)


def grid_anchors(base: torch.Tensor, grid_h: int, grid_w: int, stride: int) -> torch.Tensor:
    """All anchors of a feature map, [H*W*A, 4], location-major (row, column), anchor-minor."""
    shifts_x = torch.arange(0, grid_w * stride, step=stride, dtype=torch.float32, device=base.device)
    shifts_y = torch.arange(0, grid_h * stride, step=stride, dtype=torch.float32, device=base.device)
    shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
    shifts = torch.stack((shift_x.reshape(-1), shift_y.reshape(-1)) * 2, dim=1)
    return (shifts[:, None, :] + base[None, :, :]).reshape(-1, 4)


class RPNHead(nn.Module):
    def __init__(self, in_channels: int, hidden: int, num_anchors: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, hidden, 3, padding=1)
        self.objectness_logits = nn.Conv2d(hidden, num_anchors, 1)
        self.anchor_deltas = nn.Conv2d(hidden, num_anchors * 4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = F.relu(self.conv(x))
        return self.objectness_logits(t), self.anchor_deltas(t)


class RPN(nn.Module):
    """Single-level RPN on res4: top-k by objectness, clip, drop empty boxes, NMS, keep top-k."""

    def __init__(self, config: ButdConfig) -> None:
        super().__init__()
        self.config = config
        self.rpn_head = RPNHead(config.res4_channels, config.rpn_hidden_channels, config.num_anchors)
        # Not a buffer: recomputed from the config, so checkpoints with or without a stored
        # ``anchor_generator.cell_anchors.0`` load the same (the loader checks stored values).
        self._cell_anchors = cell_anchors(config.anchor_sizes, config.aspect_ratios)

    def forward(
        self, features: torch.Tensor, image_sizes: Sequence[tuple[int, int]], batched: bool = False
    ) -> list[torch.Tensor]:
        """Per image: proposals [R, 4], best objectness first. ``batched``: one top-k, one box decode and
        one ``batched_nms`` for the whole batch (what a GPU needs: no per-image launches); the same
        proposals as the per-image loop."""
        cfg = self.config
        logits, deltas = self.rpn_head(features)
        n, a, fh, fw = logits.shape
        logits = logits.permute(0, 2, 3, 1).reshape(n, -1).float()  # [N, H*W*A]
        deltas = deltas.view(n, a, 4, fh, fw).permute(0, 3, 4, 1, 2).reshape(n, -1, 4)
        anchors = grid_anchors(self._cell_anchors.to(features.device), fh, fw, stride=16)
        if batched:
            return self._batched_proposals(logits, deltas, anchors, image_sizes)
        proposals = []
        topk = min(cfg.rpn_pre_nms_topk, logits.shape[1])
        for i, (height, width) in enumerate(image_sizes):
            scores, order = logits[i].sort(descending=True)
            scores, order = scores[:topk], order[:topk]
            boxes = apply_deltas(deltas[i, order], anchors[order], (1.0, 1.0, 1.0, 1.0))
            boxes = clip_boxes(boxes, height, width)
            nonempty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            boxes, scores = boxes[nonempty], scores[nonempty]
            keep = nms(boxes, scores, cfg.rpn_nms_thresh)[: cfg.rpn_post_nms_topk]
            proposals.append(boxes[keep])
        return proposals

    def _batched_proposals(
        self,
        logits: torch.Tensor,
        deltas: torch.Tensor,
        anchors: torch.Tensor,
        image_sizes: Sequence[tuple[int, int]],
    ) -> list[torch.Tensor]:
        cfg = self.config
        n = logits.shape[0]
        topk = min(cfg.rpn_pre_nms_topk, logits.shape[1])
        scores, order = logits.sort(dim=1, descending=True)  # a stable order, as the per-image sort
        scores, order = scores[:, :topk], order[:, :topk]
        picked = torch.gather(deltas, 1, order[..., None].expand(-1, -1, 4)).reshape(-1, 4)
        boxes = apply_deltas(picked, anchors[order.reshape(-1)], (1.0, 1.0, 1.0, 1.0)).view(n, topk, 4)
        limits = boxes.new_tensor([[w, h, w, h] for h, w in image_sizes])[:, None, :]  # [N, 1, 4]
        boxes = torch.minimum(boxes.clamp(min=0), limits)
        image = torch.arange(n, device=boxes.device)[:, None].expand(n, topk)
        nonempty = (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])
        boxes, scores, image = boxes[nonempty], scores[nonempty], image[nonempty]
        keep = batched_nms(boxes, scores, image, cfg.rpn_nms_thresh)  # best score first, all images
        kept_image = image[keep]
        return [boxes[keep[kept_image == i]][: cfg.rpn_post_nms_topk] for i in range(n)]


# --------------------------------------------------------------------------------------------
# RoI head
# --------------------------------------------------------------------------------------------


class FastRCNNOutputLayers(nn.Module):
    """Class scores, class-specific box deltas and (attribute weights only) the attribute head."""

    def __init__(self, in_channels: int, num_classes: int, num_attrs: int) -> None:
        super().__init__()
        self.cls_score = nn.Linear(in_channels, num_classes + 1)
        self.bbox_pred = nn.Linear(in_channels, num_classes * 4)
        self.num_attrs = num_attrs
        if num_attrs > 0:
            self.cls_embedding = nn.Embedding(num_classes + 1, in_channels // 8)
            self.fc_attr = nn.Linear(in_channels + in_channels // 8, in_channels // 4)
            self.attr_score = nn.Linear(in_channels // 4, num_attrs + 1)

    def forward(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        scores = self.cls_score(pooled)
        deltas = self.bbox_pred(pooled)
        if self.num_attrs <= 0:
            return scores, deltas, None
        # The attribute head is conditioned on the argmax over ALL 1601 logits (background included).
        embedded = self.cls_embedding(scores.argmax(dim=-1))
        hidden = F.relu(self.fc_attr(torch.cat([pooled, embedded], dim=-1)))
        return scores, deltas, self.attr_score(hidden)


class Res5ROIHeads(nn.Module):
    def __init__(self, config: ButdConfig) -> None:
        super().__init__()
        self.config = config
        dilation = 1 if config.res5_halve else 2
        self.res5 = make_stage(
            config.stage_blocks[3],
            config.res4_channels,
            config.bottleneck_channels * 8,
            config.res5_channels,
            first_stride=2 if config.res5_halve else 1,
            dilation=dilation,
        )
        self.box_predictor = FastRCNNOutputLayers(config.res5_channels, config.num_classes, config.num_attrs)

    def pooled_features(self, features: torch.Tensor, proposals: list[torch.Tensor]) -> torch.Tensor:
        """RoIPool 14x14 on res4 (stride 16) -> res5 -> spatial mean: the 2048-d region feature."""
        rois = torch.cat(
            [torch.cat([torch.full_like(b[:, :1], i), b], dim=1) for i, b in enumerate(proposals)]
        )
        # RoIs stay float32: under CUDA autocast torchvision runs roi_pool in float32 anyway, and fp16
        # box coordinates would be off by up to half a pixel at 1000 px.
        size = self.config.pooler_resolution
        chunks = []
        for start in range(0, rois.shape[0], self.config.roi_chunk):
            crops = roi_pool(features, rois[start : start + self.config.roi_chunk], (size, size), 1.0 / 16)
            chunks.append(self.res5(crops).mean(dim=(2, 3)))
        if not chunks:
            return features.new_zeros((0, self.config.res5_channels))
        return torch.cat(chunks)


# --------------------------------------------------------------------------------------------
# The whole detector
# --------------------------------------------------------------------------------------------


@dataclass
class Detections:
    """Everything the fixed-number selection needs for ONE image, in the resized image's pixels."""

    proposals: torch.Tensor  # [R, 4]
    features: torch.Tensor  # [R, 2048] float32
    max_boxes: torch.Tensor  # [R, 4] the box of each proposal's best class, clipped
    max_scores: torch.Tensor  # [R]  best non-background class probability
    max_classes: torch.Tensor  # [R]  its index in 0..num_classes-1
    attr_conf: torch.Tensor | None  # [R]
    attr_ids: torch.Tensor | None  # [R]
    input_size: tuple[int, int]  # (h, w) the detector saw
    original_size: tuple[int, int]  # (h, w) of the image as given


def resized_shape(height: int, width: int, min_size: int, max_size: int) -> tuple[int, int]:
    """detectron2 ResizeShortestEdge: short side to min_size unless the long side passes max_size."""
    scale = min_size / min(height, width)
    new_h, new_w = (min_size, scale * width) if height < width else (scale * height, min_size)
    if max(new_h, new_w) > max_size:
        shrink = max_size / max(new_h, new_w)
        new_h, new_w = new_h * shrink, new_w * shrink
    return int(new_h + 0.5), int(new_w + 0.5)


class GeneralizedRCNN(nn.Module):
    """Backbone -> RPN -> Res5 RoI head; ``detect`` returns per-image :class:`Detections`."""

    def __init__(self, config: ButdConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = ResNetC4(config)
        self.proposal_generator = RPN(config)
        self.roi_heads = Res5ROIHeads(config)
        self.register_buffer(
            "pixel_mean", torch.tensor(config.pixel_mean_bgr).view(3, 1, 1), persistent=False
        )

    def preprocess(self, images: Sequence[Image.Image]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """RGB PIL images -> zero-padded BGR batch minus the caffe mean, and each resized (h, w).

        The resize is PIL bilinear on uint8, as detectron2's ResizeTransform did on the
        cv2-read image (the channel order does not change a per-channel resize).
        """
        cfg = self.config
        tensors, sizes = [], []
        for image in images:
            rgb = image.convert("RGB")
            new_h, new_w = resized_shape(rgb.height, rgb.width, cfg.min_size, cfg.max_size)
            if (new_h, new_w) != (rgb.height, rgb.width):
                rgb = rgb.resize((new_w, new_h), Image.BILINEAR)
            bgr = np.ascontiguousarray(np.asarray(rgb, dtype=np.float32)[:, :, ::-1].transpose(2, 0, 1))
            tensors.append(torch.from_numpy(bgr).to(self.pixel_mean.device) - self.pixel_mean)
            sizes.append((new_h, new_w))
        max_h = max(t.shape[1] for t in tensors)
        max_w = max(t.shape[2] for t in tensors)
        batch = tensors[0].new_zeros((len(tensors), 3, max_h, max_w))
        for i, t in enumerate(tensors):
            batch[i, :, : t.shape[1], : t.shape[2]] = t
        return batch, sizes

    def preprocess_on_device(
        self, images: Sequence[Image.Image]
    ) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """:meth:`preprocess` with the per-pixel work on the model's device: only the uint8 pixels
        cross over; the resize (bilinear with antialiasing, PIL's filter, rounded back to uint8 levels
        as PIL does), the BGR flip, the mean and the padding run there. The CPU does no per-pixel work,
        so a GPU is no longer bound by it. Pixels may differ from PIL's by one level (its fixed-point
        weights); with no resize the batches are identical."""
        cfg = self.config
        device = self.pixel_mean.device
        sizes = []
        tensors = []
        for image in images:
            rgb = image.convert("RGB")
            pixels = torch.from_numpy(np.array(rgb)).to(device, non_blocking=True)  # a writable copy
            new_h, new_w = resized_shape(rgb.height, rgb.width, cfg.min_size, cfg.max_size)
            chw = pixels.permute(2, 0, 1).float()
            if (new_h, new_w) != (rgb.height, rgb.width):
                chw = F.interpolate(chw[None], (new_h, new_w), mode="bilinear", antialias=True)[0]
                chw = chw.round().clamp(0, 255)
            tensors.append(chw.flip(0) - self.pixel_mean)
            sizes.append((new_h, new_w))
        batch = tensors[0].new_zeros((len(tensors), 3, max(h for h, _ in sizes), max(w for _, w in sizes)))
        for i, t in enumerate(tensors):
            batch[i, :, : t.shape[1], : t.shape[2]] = t
        return batch, sizes

    @torch.no_grad()
    def detect(
        self, images: Sequence[Image.Image], fp16: bool = False, batched: bool = False
    ) -> list[Detections]:
        """Detections per image. ``batched``: preprocessing on the device and one NMS for the batch
        (:meth:`preprocess_on_device`, ``RPN(batched=True)``), the GPU path."""
        cfg = self.config
        batch, sizes = self.preprocess_on_device(images) if batched else self.preprocess(images)
        use_amp = fp16 and batch.device.type == "cuda"
        with torch.autocast(device_type=batch.device.type, dtype=torch.float16, enabled=use_amp):
            features = self.backbone(batch)
            proposals = self.proposal_generator(features, sizes, batched=batched)
            pooled = self.roi_heads.pooled_features(features, proposals).float()
        logits, deltas, attr_logits = self.roi_heads.box_predictor(pooled)  # fp32: scores decide the boxes
        results = []
        start = 0
        for image, props, (height, width) in zip(images, proposals, sizes, strict=True):
            count = props.shape[0]
            part = slice(start, start + count)
            start += count
            probs = F.softmax(logits[part], dim=-1)[:, :-1]  # background is the last column
            boxes = apply_deltas(deltas[part], props, cfg.bbox_reg_weights).view(count, -1, 4)
            boxes = clip_boxes(boxes, height, width)
            max_scores, max_classes = probs.max(dim=1)
            max_boxes = boxes[torch.arange(count, device=boxes.device), max_classes]
            attr_conf = attr_ids = None
            if attr_logits is not None:
                attr_conf, attr_ids = F.softmax(attr_logits[part, :-1], dim=-1).max(dim=-1)
            results.append(
                Detections(
                    proposals=props,
                    features=pooled[part],
                    max_boxes=max_boxes,
                    max_scores=max_scores,
                    max_classes=max_classes,
                    attr_conf=attr_conf,
                    attr_ids=attr_ids,
                    input_size=(height, width),
                    original_size=(image.height, image.width),
                )
            )
        return results


def fixed_number_select(
    boxes: torch.Tensor, scores: torch.Tensor, min_boxes: int, max_boxes: int
) -> torch.Tensor:
    """Vilio's "fixed-number NMS": indices of the kept boxes, best score first.

    For nms_thresh in 0.3, 0.4, ..., 0.9: class-agnostic NMS, keep the top ``max_boxes``;
    stop at the first threshold that keeps at least ``min_boxes`` (else the 0.9 result stands).
    """
    keep = boxes.new_zeros((0,), dtype=torch.int64)
    for threshold in FIXED_NMS_THRESHOLDS:
        keep = nms(boxes.float(), scores.float(), threshold)[:max_boxes]
        if keep.numel() >= min_boxes:
            break
    return keep


def rescale_boxes(
    boxes: torch.Tensor, input_size: tuple[int, int], original_size: tuple[int, int]
) -> torch.Tensor:
    """Boxes in the resized image -> original pixels, clipped (detectron2 ``detector_postprocess``)."""
    (in_h, in_w), (out_h, out_w) = input_size, original_size
    scale = boxes.new_tensor([out_w / in_w, out_h / in_h, out_w / in_w, out_h / in_h])
    return clip_boxes(boxes * scale, out_h, out_w)
