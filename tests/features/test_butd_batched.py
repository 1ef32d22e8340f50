"""The GPU path of the BUTD detector on the CPU: preprocessing on the device and one NMS per batch give
the per-image path's boxes and features (tiny random-weight detector, as tests/features/test_butd.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from test_butd import tiny_config

from memeguard.features.butd import ButdExtractor

VARIANTS = ("36", "10-100")


def unresized_images(seed: int) -> list[Image.Image]:
    """Sizes the tiny config (short side 96, long side <= 160) does not resize, of different shapes."""
    rng = np.random.default_rng(seed)
    shapes = [(96, 128), (128, 96), (96, 96)]
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in shapes]


def smooth_images(seed: int) -> list[Image.Image]:
    """Images that need a resize (so the resampling filters meet), smooth enough to resample stably."""
    rng = np.random.default_rng(seed)
    out = []
    for h, w in [(150, 200), (61, 45), (300, 120)]:
        small = rng.integers(0, 256, (h // 8 + 2, w // 8 + 2, 3), dtype=np.uint8)
        out.append(Image.fromarray(small).resize((w, h), Image.BILINEAR))
    return out


def extract(batched: bool, images: list[Image.Image]) -> dict:
    extractor = ButdExtractor(config=tiny_config(), box_variants=VARIANTS, batch_size=3, batched=batched)
    return extractor.extract(images, list(range(len(images))), [""] * len(images))


def test_batched_path_gives_the_same_records_without_a_resize():
    images = unresized_images(0)
    per_image, batched = extract(False, images), extract(True, images)
    for variant in VARIANTS:
        for a, b in zip(per_image[variant], batched[variant], strict=True):
            assert a.num_boxes == b.num_boxes
            np.testing.assert_allclose(b.boxes, a.boxes, rtol=0, atol=1e-4)
            np.testing.assert_allclose(b.features, a.features, rtol=1e-5, atol=1e-5)
            np.testing.assert_array_equal(b.object_ids, a.object_ids)
            np.testing.assert_allclose(b.object_conf, a.object_conf, rtol=1e-5, atol=1e-6)
            np.testing.assert_array_equal(b.attr_ids, a.attr_ids)


def test_batched_rpn_proposals_equal_the_per_image_loop():
    model = ButdExtractor(config=tiny_config(rpn_post_nms_topk=50)).model
    batch, sizes = model.preprocess(smooth_images(1))
    with torch.no_grad():
        features = model.backbone(batch)
        loop = model.proposal_generator(features, sizes)
        batched = model.proposal_generator(features, sizes, batched=True)
    assert [p.shape for p in loop] == [p.shape for p in batched]
    for a, b in zip(loop, batched, strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-5)


@pytest.mark.parametrize("seed", [2, 3])
def test_device_preprocessing_is_within_one_level_of_pil(seed):
    model = ButdExtractor(config=tiny_config()).model
    images = smooth_images(seed)
    pil, pil_sizes = model.preprocess(images)
    device, device_sizes = model.preprocess_on_device(images)
    assert device_sizes == pil_sizes and device.shape == pil.shape
    difference = (device - pil).abs()
    assert difference.max() <= 1.0 + 1e-4  # rounding of the two filters' weights
    assert (difference > 0.5).float().mean() < 0.25  # most pixels are the same level
    # the padding is zero in both
    for i, (h, w) in enumerate(pil_sizes):
        assert not device[i, :, h:, :].any() and not device[i, :, :, w:].any()


def test_batched_is_recorded_and_rebuilt_from_the_store_meta():
    extractor = ButdExtractor(config=tiny_config(), batched=True)
    meta = extractor.meta()
    assert meta["batched"] is True
    assert ButdExtractor.from_meta(meta, "store", "cpu")["batched"] is True
