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
    import shutil

    from memeguard.errors import ConfigError

    with pytest.raises(ConfigError, match="the clip extractor's params: resize"):
        ClipExtractor(clip_dir, resize="stretch")
    broken = shutil.copytree(clip_dir, tmp_path / "broken")
    with open(broken / "model.safetensors", "r+b") as weights:
        weights.truncate(5000)  # an interrupted download
    with pytest.raises(CheckpointError, match="broken: cannot load CLIP model/tokenizer") as error:
        ClipExtractor(broken)
    assert "\n" not in str(error.value)


# ------------------------------------------------------------------ the CLIP-family contract (issue 13)


def towers(clip_dir, images, texts):
    """Reference outputs computed straight from the towers, with the checkpoint's own processor."""
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    model = CLIPModel.from_pretrained(clip_dir).eval()
    pixels = AutoImageProcessor.from_pretrained(clip_dir)(images=images, return_tensors="pt")["pixel_values"]
    tokens = AutoTokenizer.from_pretrained(clip_dir)(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        vision = model.vision_model(pixel_values=pixels).pooler_output
        text = model.text_model(**tokens).pooler_output
    return model, vision, text


def test_default_record_is_one_pooled_row_with_fp16_extras(clip_dir):
    imgs, texts = meme_images(), ["hate that", "a cat", ""]
    model, vision, text = towers(clip_dir, imgs, texts)
    recs = ClipExtractor(clip_dir, batch_size=2).extract(imgs, [5, 6, 7], texts)["default"]
    half = 2e-3  # float16 keeps 11 significant bits: 1e-3 relative, values here are O(1)
    for i, (rec, image) in enumerate(zip(recs, imgs, strict=True)):
        # The region is the whole image, its feature the pooled output itself (float32, not rounded).
        np.testing.assert_array_equal(rec.boxes, [[0, 0, image.width, image.height]])
        np.testing.assert_allclose(rec.features[0], vision[i].numpy(), atol=1e-5)
        assert {k: v.dtype for k, v in rec.extras.items()} == dict.fromkeys(
            ("image_embeds", "text_embeds", "image_pooled", "text_pooled"), np.float16
        )
        pooled = rec.extras["image_pooled"].astype(np.float32)
        np.testing.assert_allclose(pooled, vision[i].numpy(), atol=half * np.abs(pooled).max())
        np.testing.assert_allclose(rec.extras["text_pooled"], text[i].numpy(), atol=half * 4)
        with torch.no_grad():
            projected = model.visual_projection(torch.from_numpy(pooled))
            projected_text = model.text_projection(
                torch.from_numpy(rec.extras["text_pooled"].astype(np.float32))
            )
        expect = torch.nn.functional.normalize(projected, dim=-1).numpy()
        np.testing.assert_allclose(rec.extras["image_embeds"], expect, atol=half)
        expect_text = torch.nn.functional.normalize(projected_text, dim=-1).numpy()
        np.testing.assert_allclose(rec.extras["text_embeds"], expect_text, atol=half)


def normalised(extractor, array):
    proc = extractor.processor
    return ((array / 255.0 - np.array(proc.image_mean)) / np.array(proc.image_std)).transpose(2, 0, 1)


def test_square_and_crop_pixels_match_a_pil_reference(clip_dir):
    crop, square = ClipExtractor(clip_dir), ClipExtractor(clip_dir, resize="square", patches=True)
    for image in meme_images():
        # square: the whole image to 32x32 with PIL's bicubic (Hate-CLIPper's image.resize), then mean/std.
        stretched = np.asarray(image.resize((32, 32), Image.Resampling.BICUBIC), dtype=np.float64)
        np.testing.assert_allclose(
            square.pixel_values([image])[0].numpy(), normalised(square, stretched), atol=1e-5
        )
        # crop: the short side to 32, then the centre 32x32.
        new_h, new_w = crop.geometry.resized_size(image.height, image.width)
        resized = np.asarray(image.resize((new_w, new_h), Image.Resampling.BICUBIC), dtype=np.float64)
        top, left = (new_h - 32) // 2, (new_w - 32) // 2
        reference = normalised(crop, resized[top : top + 32, left : left + 32])
        # The processor's own resize rounds to 8 bits its own way: a few pixels differ by one grey level.
        difference = np.abs(crop.pixel_values([image])[0].numpy() - reference)
        assert difference.max() < 1.01 / 255 / min(crop.processor.image_std)
        assert (difference < 1e-5).mean() > 0.95
    # Square patches cover the whole 64x128 meme: patch 0 is its top-left 32x16 pixels, patch 15 the last.
    rec = square.extract(meme_images()[:1], [1], ["x"])["default"][0]
    assert rec.features.shape == (16, 48)
    np.testing.assert_allclose(rec.boxes[[0, 15]], [[0, 0, 32, 16], [96, 48, 128, 64]])


def test_long_caption_keeps_its_first_75_tokens_and_is_counted(clip_dir):
    extractor = ClipExtractor(clip_dir, dtype="float32")
    tokenizer, model = extractor.tokenizer, extractor.model
    long_caption = " ".join(["hat", "cat"] * 100)  # 200 words, each one BPE token or more
    full = tokenizer(long_caption)["input_ids"]
    assert len(full) > 77
    cut = [full[0], *full[1:76], tokenizer.eos_token_id]  # BOS, the first 75 tokens, EOS
    assert extractor.tokens([long_caption])["input_ids"][0].tolist() == cut
    with torch.no_grad():
        expect = model.text_model(input_ids=torch.tensor([cut])).pooler_output[0].numpy()
    rec = extractor.extract(meme_images()[:1], [1], [long_caption])["default"][0]
    np.testing.assert_allclose(rec.extras["text_pooled"], expect, atol=1e-5)
    fits = " ".join(["hat"] * 75)  # 75 tokens + BOS + EOS = 77: not cut
    assert extractor.truncated([long_caption, fits, fits + " hat", ""]) == [True, False, True, False]
    assert extractor.dataset_meta([long_caption, fits, "a cat"]) == {"text_truncated": 1, "text_count": 3}


class Killed(ClipExtractor):
    """The real extractor, killed (KeyboardInterrupt) before its second batch."""

    calls = 0

    def extract(self, images, meme_ids, texts):
        Killed.calls += 1
        if Killed.calls > 1:
            raise KeyboardInterrupt("simulated kill")
        return super().extract(images, meme_ids, texts)


def test_store_resumes_holds_fp16_extras_and_the_scorer_repeats_it(clip_dir, hm_dir, tmp_path):
    from memeguard.features.extract import extract_features
    from memeguard.features.store import FeatureStore
    from memeguard.serving.scorer import build_extractor, round_to_dtype, spec_from_meta

    whole = FeatureStore.open(
        extract_features(hm_dir, tmp_path / "whole", ClipExtractor(clip_dir), batch_size=3, progress=False)[
            "default"
        ]
    )
    with pytest.raises(KeyboardInterrupt):
        extract_features(hm_dir, tmp_path / "resumed", Killed(clip_dir), batch_size=3, progress=False)
    resumed = FeatureStore.open(
        extract_features(hm_dir, tmp_path / "resumed", ClipExtractor(clip_dir), batch_size=3, progress=False)[
            "default"
        ]
    )
    assert sorted(resumed.ids()) == sorted(whole.ids()) == list(range(100, 107))
    assert resumed.extras_dtype == "float16" and resumed.extras == dict(
        image_embeds=24, text_embeds=24, image_pooled=48, text_pooled=32
    )
    assert (tmp_path / "resumed" / "extra.text_pooled.bin").stat().st_size == 7 * 32 * 2
    meta = resumed.meta
    assert (meta["patches"], meta["resize"], meta["dtype"], meta["num_regions"]) == (
        False,
        "crop",
        "float16",
        1,
    )
    assert (meta["text_truncated"], meta["text_count"], meta["max_text_tokens"]) == (0, 7, 77)
    assert meta["model"] == str(clip_dir) and len(meta["weights_sha256"]) == 64
    image = Image.open(hm_dir / "img" / "00104.png").convert("RGB")
    spec = spec_from_meta(meta, "resumed/meta.json")
    fresh = round_to_dtype(
        build_extractor(spec, ["default"], "cpu").extract([image], [104], ["meme 4"])["default"][0],
        spec.dtype,
    )
    for store in (whole, resumed):
        stored = store[104]
        np.testing.assert_array_equal(stored.features, fresh.features)
        # float16 on both sides; the store's batch of 3 pads the captions to another length than one
        # caption alone, which moves float32 sums in their last bits: at most one float16 step apart.
        for name, value in fresh.extras.items():
            np.testing.assert_allclose(stored.extras[name], value.astype(np.float32), rtol=1e-3, atol=1e-7)


def test_float32_extras_keep_the_old_layout_and_a_mismatch_is_refused(tmp_path):
    import json

    from memeguard.errors import FeatureStoreError
    from memeguard.features.record import RegionRecord
    from memeguard.features.store import FeatureStore, FeatureStoreWriter

    def record(meme_id, dtype):
        extras = {"image_embeds": np.linspace(-1, 1, 5).astype(dtype)}
        return RegionRecord(
            meme_id, np.ones((1, 3), np.float32), np.array([[0, 0, 4, 4]], np.float32), (4, 4), extras=extras
        )

    with FeatureStoreWriter(tmp_path / "f32") as writer:
        writer.add(record(1, np.float32))
    layout = json.loads((tmp_path / "f32" / "layout.json").read_text())
    assert (
        "extras_dtype" not in layout
        and "extras_dtype" not in json.loads((tmp_path / "f32" / "meta.json").read_text())["store"]
    )
    old = FeatureStore.open(tmp_path / "f32")
    assert (
        old.extras_dtype == "float32" and (tmp_path / "f32" / "extra.image_embeds.bin").stat().st_size == 20
    )
    np.testing.assert_array_equal(old[1].extras["image_embeds"], np.linspace(-1, 1, 5).astype(np.float32))
    # float16 extras: the exact float16 values come back (as float32), half the bytes.
    with FeatureStoreWriter(tmp_path / "f16") as writer:
        writer.add(record(1, np.float16))
        writer.add(record(2, np.float32))  # later records are cast to the store's dtype
    new = FeatureStore.open(tmp_path / "f16")
    assert (
        new.extras_dtype == "float16" and (tmp_path / "f16" / "extra.image_embeds.bin").stat().st_size == 20
    )
    for meme_id in (1, 2):
        np.testing.assert_array_equal(
            new[meme_id].extras["image_embeds"], np.linspace(-1, 1, 5).astype(np.float16)
        )
    with pytest.raises(FeatureStoreError, match="holds float16 extras, asked for float32"):
        FeatureStoreWriter(tmp_path / "f16", extras_dtype="float32")
    with (
        FeatureStoreWriter(tmp_path / "big", extras_dtype="float16") as writer,
        pytest.raises(
            FeatureStoreError, match="meme id 1: extra 'image_embeds' holds NaN/inf or overflows float16"
        ),
    ):
        writer.add(
            RegionRecord(
                1,
                np.ones((1, 3), np.float32),
                np.zeros((1, 4), np.float32),
                (4, 4),
                extras={"image_embeds": np.full(5, 1e6, np.float32)},
            )
        )


def hub_cache(root, repo_id, folder):
    """``folder`` laid out as huggingface_hub caches a download of ``repo_id`` (refs/main -> a snapshot)."""
    import shutil

    commit = "0123456789abcdef0123456789abcdef01234567"
    storage = root / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(folder, storage / "snapshots" / commit)
    (storage / "refs").mkdir()
    (storage / "refs" / "main").write_text(commit)
    return storage / "snapshots" / commit


def test_hub_ids_resolve_offline_from_the_cache_only(clip_dir, tmp_path, monkeypatch):
    from huggingface_hub import constants

    from memeguard.features.clip import resolve_checkpoint

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(CheckpointError) as error:
        ClipExtractor("openai/clip-vit-large-patch14")
    message = str(error.value)
    assert (
        "\n" not in message
        and message.startswith("openai/clip-vit-large-patch14: ")
        and "HF_HUB_OFFLINE" in message
    )
    snapshot = hub_cache(tmp_path / "cache", "tiny/clip", clip_dir)
    assert resolve_checkpoint("tiny/clip") == snapshot
    extractor = ClipExtractor("tiny/clip")
    meta = extractor.meta()
    assert (meta["model"], meta["model_dir"]) == ("tiny/clip", str(snapshot))
    # A store made on another machine: its snapshot folder is not here, the hub id is (cached).
    moved = {**meta, "model_dir": str(tmp_path / "elsewhere")}
    assert ClipExtractor.from_meta(moved, "m", "cpu")["weights"] == "tiny/clip"
    from memeguard.features.factory import make_extractor

    rebuilt = make_extractor("clip", **ClipExtractor.from_meta(meta, "m", "cpu"))
    # Rebuilt from the snapshot folder (here): the same settings and weights; only "model" names the folder.
    assert {**rebuilt.meta(), "model": "tiny/clip"} == meta
    with pytest.raises(CheckpointError, match="no config.json"):
        ClipExtractor(tmp_path / "not" / "there")


def test_cli_params_reach_the_extractor_and_its_meta(clip_dir, hm_dir, tmp_path):
    from typer.testing import CliRunner

    from memeguard.cli import app
    from memeguard.features.store import FeatureStore

    runner = CliRunner()
    base = [
        "features",
        "extract",
        str(hm_dir),
        str(tmp_path / "sq"),
        "--extractor",
        "clip",
        "--weights",
        str(clip_dir),
    ]
    result = runner.invoke(
        app, [*base, "--param", "resize=square", "--param", "patches=true", "--splits", "test_unseen"]
    )
    assert result.exit_code == 0, result.output
    store = FeatureStore.open(tmp_path / "sq")
    assert (store.meta["resize"], store.meta["patches"], store.num_boxes(106)) == ("square", True, 16)
    # 120x50 stretched to 32x32: patch 0 covers the top-left 120/4 x 50/4 pixels.
    np.testing.assert_allclose(store[106].boxes[0], [0, 0, 30, 12.5])
    for bad, message in (
        (["--param", "resize"], "expected KEY=VALUE"),
        (["--param", "resize=round"], "resize"),
    ):
        result = runner.invoke(app, [*base[:3], str(tmp_path / "bad"), *base[4:], *bad])
        assert result.exit_code != 0 and message in str(result.exception or result.output)
