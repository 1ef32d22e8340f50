"""CLIP extractor on a tiny random CLIP saved with save_pretrained (model, tokenizer, processor)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from memeguard.errors import CheckpointError, DataError
from memeguard.features.clip import ClipExtractor
from memeguard.features.extractor import Extractor


def tower(hidden_size: int) -> dict[str, int]:
    """One tiny CLIP tower's sizes: two layers of two heads and a 64-wide FFN (text and vision alike)."""
    return dict(hidden_size=hidden_size, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    # A byte-level BPE vocabulary in CLIP's shape: bytes, bytes + "</w>", a few merges, specials.
    alphabet = sorted(ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    vocab.update({ch + "</w>": len(alphabet) + i for i, ch in enumerate(alphabet)})
    merges = [("h", "a"), ("ha", "t</w>")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    bos, eos = len(vocab), len(vocab) + 1
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = bos, eos
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges)

    special_tokens = dict(bos_token_id=bos, eos_token_id=eos, pad_token_id=eos)
    config = CLIPConfig(
        text_config=dict(**tower(32), **special_tokens, vocab_size=len(vocab), max_position_embeddings=77),
        vision_config=dict(**tower(48), image_size=32, patch_size=8),
        projection_dim=24,
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-clip")
    CLIPModel(config).eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        path
    )
    return path


def meme_images():
    rng = np.random.default_rng(0)
    return [
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8))
        for shape in ((64, 128, 3), (90, 60, 3), (32, 32, 3))
    ]


def test_crop_geometry_matches_the_processor(clip_dir):
    # Encode each original pixel's x in red and y in green, push it through the checkpoint's image
    # processor, undo the normalisation and read back where each crop pixel came from.
    extractor = ClipExtractor(clip_dir)
    proc = extractor.processor
    mean, std = np.array(proc.image_mean)[:, None, None], np.array(proc.image_std)[:, None, None]
    for height, width in ((64, 128), (96, 40), (32, 32)):
        ys, xs = np.mgrid[0:height, 0:width]
        img = np.stack([xs * 255 // (width - 1), ys * 255 // (height - 1), np.zeros_like(xs)], -1).astype(
            np.uint8
        )
        pixels = proc(images=Image.fromarray(img), return_tensors="np")["pixel_values"][0]
        values = (pixels * std + mean) * 255
        scale_x, scale_y, left, top = extractor.geometry(height, width)
        centres = np.arange(32) + 0.5
        expect_x = ((centres + left) / scale_x) * 255 / (width - 1)
        expect_y = ((centres + top) / scale_y) * 255 / (height - 1)
        assert np.abs(values[0].mean(axis=0) - expect_x).max() < 255 / (width - 1) + 3
        assert np.abs(values[1].mean(axis=1) - expect_y).max() < 255 / (height - 1) + 3


def test_records_shapes_boxes_and_extras(clip_dir):
    extractor = ClipExtractor(clip_dir, batch_size=2, patches=True, dtype="float32")
    assert isinstance(extractor, Extractor) and extractor.variants() == ["default"]
    imgs = meme_images()
    out = extractor.extract(imgs, [5, 6, 7], ["hate that", "a cat", ""])
    recs = out["default"]
    assert [r.meme_id for r in recs] == [5, 6, 7]
    for rec, image in zip(recs, imgs, strict=True):
        assert rec.features.shape == (16, 48) and rec.features.dtype == np.float32
        assert rec.boxes.shape == (16, 4) and rec.boxes.dtype == np.float32
        assert rec.image_size == (image.height, image.width)
        assert rec.object_ids is None and rec.attr_ids is None
        for key in ("image_embeds", "text_embeds"):
            assert rec.extras[key].shape == (24,) and rec.extras[key].dtype == np.float32
            assert np.linalg.norm(rec.extras[key]) == pytest.approx(1.0, abs=1e-5)
    # 64x128 (h x w): resized to 32x64, centre crop starts at x=16 -> first patch covers x 32..48, y 0..16.
    np.testing.assert_allclose(recs[0].boxes[0], [32, 0, 48, 16])
    np.testing.assert_allclose(recs[0].boxes[15], [80, 48, 96, 64])
    # A 32x32 image is its own crop: an exact 8-pixel grid, row-major.
    np.testing.assert_allclose(recs[2].boxes[1], [8, 0, 16, 8])
    np.testing.assert_allclose(recs[2].boxes[4], [0, 8, 8, 16])
    assert not np.allclose(recs[0].extras["text_embeds"], recs[1].extras["text_embeds"])
    assert meta_ok(extractor.meta())


def meta_ok(meta) -> bool:
    return meta["feature_dim"] == 48 and meta["num_regions"] == 16 and len(meta["weights_sha256"]) == 64


def test_embeddings_equal_clipmodel_forward(clip_dir):
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    model = CLIPModel.from_pretrained(clip_dir).eval()
    processor = AutoImageProcessor.from_pretrained(clip_dir)
    tokenizer = AutoTokenizer.from_pretrained(clip_dir)
    imgs, texts = meme_images()[:2], ["hate that", "the cat"]
    with torch.no_grad():
        ref = model(
            input_ids=tokenizer(texts, padding=True, return_tensors="pt")["input_ids"],
            attention_mask=tokenizer(texts, padding=True, return_tensors="pt")["attention_mask"],
            pixel_values=processor(images=imgs, return_tensors="pt")["pixel_values"],
            output_hidden_states=True,
        )
    extractor = ClipExtractor(clip_dir, batch_size=1, patches=True, dtype="float32")
    recs = extractor.extract(imgs, [1, 2], texts)["default"]
    for i, rec in enumerate(recs):
        np.testing.assert_allclose(rec.extras["image_embeds"], ref.image_embeds[i].numpy(), atol=1e-5)
        np.testing.assert_allclose(rec.extras["text_embeds"], ref.text_embeds[i].numpy(), atol=1e-5)
        last = ref.vision_model_output.hidden_states[-1][i, 1:]
        expected = torch.nn.functional.layer_norm(
            last,
            (48,),
            model.vision_model.post_layernorm.weight,
            model.vision_model.post_layernorm.bias,
            eps=1e-5,
        )
        np.testing.assert_allclose(rec.features, expected.detach().numpy(), atol=1e-4)


def test_errors(clip_dir, tmp_path):
    with pytest.raises(CheckpointError):
        ClipExtractor(tmp_path)
    with pytest.raises(DataError):
        ClipExtractor(clip_dir).extract(meme_images()[:2], [1, 2], ["only one text"])
