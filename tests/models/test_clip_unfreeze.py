"""``unfreeze_clip_layers = k``: the CLIP extractor stores the inputs of the last k layers of each tower and
the head runs copies of those layers. Parity against transformers' own towers run on pixels / token ids,
gradients, save/load, k mismatches, and a trained run scored by ``MemeScorer``."""

from __future__ import annotations

import dataclasses
import functools
import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from memeguard.data.meme import Meme
from memeguard.errors import ConfigError, DataError
from memeguard.features.clip import EXTRA_NAMES, ClipExtractor
from memeguard.models.base import MemeModel
from memeguard.models.registry import create_model
from tiny_clip import save_tiny_clip

TEXTS = ["look at this", "a dog", "when you see it and nobody expects it at all", ""]
VISION_DIM, TEXT_DIM, PROJ_DIM = 48, 32, 24  # tests/tiny_clip.py


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("clip") / "clip")


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    sizes = [(40, 56), (32, 32), (64, 30), (50, 50)]
    return [Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)) for size in sizes]


def _memes() -> list[Meme]:
    return [Meme(id=100 + i, img=f"img/{i}.png", text=t, label=i % 2) for i, t in enumerate(TEXTS)]


@functools.cache
def _records(clip_dir, k: int):
    """The four memes' records from a float32 store with ``unfreeze_layers=k`` (cached: read only)."""
    extractor = ClipExtractor(clip_dir, dtype="float32", unfreeze_layers=k)
    return extractor.extract(_images(), [m.id for m in _memes()], TEXTS)["default"]


@functools.cache
def _reference(clip_dir, projected: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' towers on the pixels and on each caption's ids alone (no padding at all)."""
    from transformers import AutoTokenizer, CLIPModel

    clip = CLIPModel.from_pretrained(clip_dir, local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(clip_dir, local_files_only=True)
    pixels = ClipExtractor(clip_dir).pixel_values(_images())
    with torch.no_grad():
        image = clip.vision_model(pixel_values=pixels).pooler_output
        ids = [tokenizer([t], truncation=True, max_length=24, return_tensors="pt") for t in TEXTS]
        text = torch.cat([clip.text_model(**one).pooler_output for one in ids])
        if projected:
            image = F.normalize(clip.visual_projection(image), dim=-1)
            text = F.normalize(clip.text_projection(text), dim=-1)
    return image, text


def _head(clip_dir, k: int, inputs: str = "pooled", name: str = "hateclipper-align-tiny") -> MemeModel:
    dims = (VISION_DIM, TEXT_DIM) if inputs == "pooled" else (PROJ_DIM, PROJ_DIM)
    torch.manual_seed(0)
    return create_model(
        name,
        image_dim=dims[0],
        text_dim=dims[1],
        inputs=inputs,
        unfreeze_clip_layers=k,
        clip_model=str(clip_dir),
    )


@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("inputs", ["pooled", "projected"])
def test_the_unfrozen_layers_start_where_the_frozen_towers_end(clip_dir, k, inputs):
    records = _records(clip_dir, k)
    model = _head(clip_dir, k, inputs).eval()
    batch = model.build_processor()(_memes(), records)
    with torch.no_grad():
        image, text = model.clip_encoder(batch)
    want_image, want_text = _reference(clip_dir, projected=inputs == "projected")
    assert torch.allclose(image, want_image, atol=1e-5) and torch.allclose(text, want_text, atol=1e-5)
    # the frozen head on the extractor's own pooled extras gives the same logits
    frozen = {key: value for key, value in batch.items() if key in ("ids", "image_feats", "text_feats")}
    with torch.no_grad():
        model.config.unfreeze_clip_layers = 0
        expected = model(frozen)
        model.config.unfreeze_clip_layers = k
        assert torch.allclose(model(batch), expected, atol=1e-5)


@pytest.mark.parametrize("name", ["hateclipper-align-tiny", "rgcl-tiny"])
def test_gradients_reach_the_unfrozen_layers_and_a_saved_model_keeps_them(clip_dir, tmp_path, name):
    own_clip = shutil.copytree(clip_dir, tmp_path / "clip")
    model = _head(own_clip, 1, name=name).train()
    batch = model.build_processor()(_memes(), _records(clip_dir, 1))
    before = {key: value.clone() for key, value in model.clip_encoder.state_dict().items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    F.binary_cross_entropy_with_logits(model(batch), batch["labels"]).backward()
    optimizer.step()
    after = model.clip_encoder.state_dict()
    for key in (
        "vision_layers.0.self_attn.q_proj.weight",
        "vision_layers.0.mlp.fc2.weight",
        "post_layernorm.weight",
        "text_layers.0.self_attn.v_proj.weight",
        "final_layer_norm.bias",
    ):
        assert not torch.equal(before[key], after[key]), key
    model.eval().save_pretrained(tmp_path / "m")
    shutil.rmtree(own_clip)  # a saved model needs no CLIP folder: the tower configs are in its config
    loaded = MemeModel.from_pretrained(tmp_path / "m").eval()
    assert loaded.config == model.config and loaded.config.clip_towers["text"]["hidden_size"] == TEXT_DIM
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    with torch.no_grad():
        assert torch.equal(loaded(batch), model(batch))


def test_the_stored_layer_inputs_and_a_default_store_unchanged(clip_dir):
    default = ClipExtractor(clip_dir, dtype="float32")
    record = default.extract(_images()[:1], [1], TEXTS[:1])["default"][0]
    assert set(record.extras) == set(EXTRA_NAMES) and record.num_boxes == 1
    assert "unfreeze_layers" not in default.meta()
    assert "unfreeze_layers" not in ClipExtractor.from_meta(default.meta(), "store", "cpu")
    two = ClipExtractor(clip_dir, dtype="float32", unfreeze_layers=2)
    record = two.extract(_images()[:1], [1], TEXTS[:1])["default"][0]
    assert record.features.shape == (17, VISION_DIM) and two.meta()["num_regions"] == 17  # 4x4 patches + CLS
    assert np.array_equal(record.boxes, np.tile([[0, 0, 56, 40]], (17, 1)).astype(np.float32))
    assert record.extras["text_hidden"].shape == (24 * TEXT_DIM,) and record.extras["text_mask"].shape == (
        24,
    )
    length = len(TEXTS[0].replace(" ", "")) + 2  # a token per letter (the tiny vocabulary has no merges)
    assert record.extras["text_mask"].sum() == length and record.extras["text_eos"][0] == length - 1
    assert not record.extras["text_hidden"].reshape(24, TEXT_DIM)[length:].any()
    meta = two.meta()
    assert meta["unfreeze_layers"] == 2 and ClipExtractor.from_meta(meta, "s", "cpu")["unfreeze_layers"] == 2


def test_a_k_mismatch_or_impossible_k_is_one_config_error(clip_dir):
    from memeguard.training.build import store_overrides

    model = _head(clip_dir, 2)
    for stored in (1, 0):
        with pytest.raises(ConfigError, match=f"unfreeze_layers={stored}.*unfreeze_clip_layers=2"):
            model.build_processor()(_memes(), _records(clip_dir, stored))
    record = _records(clip_dir, 1)[0]
    meta = ClipExtractor(clip_dir, unfreeze_layers=1).meta()
    with pytest.raises(ConfigError, match="unfreeze_layers=1.*unfreeze_clip_layers=2"):
        store_overrides("hateclipper-align-tiny", {"unfreeze_clip_layers": 2}, record, meta)
    found = store_overrides("hateclipper-align-tiny", {"unfreeze_clip_layers": 1}, record, meta)
    assert found["clip_model"] == str(clip_dir) and found["image_dim"] == VISION_DIM
    bad = dataclasses.replace(record, extras={**record.extras, "text_eos": np.array([24.0], np.float32)})
    with pytest.raises(DataError, match=f"meme {record.meme_id}: text_eos 24 is outside its 24 text tokens"):
        _head(clip_dir, 1).build_processor()(_memes()[:1], [bad])
    with pytest.raises(ConfigError, match="unfreeze_layers=3, but the CLIP towers have 2 layers"):
        ClipExtractor(clip_dir, unfreeze_layers=3)
    with pytest.raises(ConfigError, match="patches=false"):
        ClipExtractor(clip_dir, unfreeze_layers=1, patches=True)
    with pytest.raises(ConfigError, match="needs clip_model"):
        create_model("hateclipper-align-tiny", unfreeze_clip_layers=1)


@pytest.mark.slow
def test_a_run_with_unfrozen_layers_is_scored_as_it_predicted(clip_dir, tmp_path):
    """Extract a store with unfreeze_layers=1, train a head with unfreeze_clip_layers=1 (the CLIP folder
    taken from the store's meta), then ``MemeScorer`` (features extracted on the fly from the store's
    settings) and the exported bundle reproduce the run's dev predictions."""
    from memeguard.data.predictions import read_predictions
    from memeguard.features.extract import extract_features
    from memeguard.serving.bundle import export_bundle
    from memeguard.serving.scorer import MemeScorer
    from memeguard.training.config import TrainConfig
    from memeguard.training.loop import finetune

    data = tmp_path / "data"
    (data / "img").mkdir(parents=True)
    lines = []
    for i, (image, text) in enumerate(zip(_images() * 2, TEXTS * 2, strict=True)):
        image.save(data / "img" / f"{i:05d}.png")
        lines.append({"id": 101 + i, "img": f"img/{i:05d}.png", "label": i % 2, "text": text})
    for split, part in (("train", lines), ("dev_seen", lines[:4])):
        (data / f"{split}.jsonl").write_text("".join(json.dumps(line) + "\n" for line in part))
    extractor = ClipExtractor(clip_dir, dtype="float32", unfreeze_layers=1)
    store = next(
        iter(extract_features(data, tmp_path / "store", extractor, progress=False, dtype="float32").values())
    )
    cfg = TrainConfig(
        model="hateclipper-align-tiny", features=store, data_dir=data, out_dir=tmp_path / "run",
        train_split="train", predict_splits=("dev_seen",), model_overrides={"unfreeze_clip_layers": 1},
        epochs=1, lr=1e-3, batch_size=4, eval_every=0, device="cpu", progress=False,
    )  # fmt: skip
    run = finetune(cfg).run_dir
    expected = read_predictions(run / "dev_seen.csv").as_dict()
    items = [(data / line["img"], line["text"]) for line in lines[:4]]
    served = [s.proba for s in MemeScorer.from_runs([run], device="cpu").score_batch(items)]
    assert np.allclose(served, [expected[line["id"]] for line in lines[:4]], atol=1e-5)
    export_bundle([run], tmp_path / "bundle", data_dir=data)
    bundled = [s.proba for s in MemeScorer.from_bundle(tmp_path / "bundle", device="cpu").score_batch(items)]
    assert np.allclose(bundled, served, atol=1e-6)


def test_the_head_trains_faster_than_the_clip_layers_and_loads_the_authors_head(clip_dir, tmp_path):
    """``head_lr_mult`` puts ``clip_encoder`` (a backbone name) at lr and the head at lr x mult; the authors'
    head checkpoint (no CLIP layer copies) loads beside the CLIP weights the layers were copied from."""
    from memeguard.training.optim import parameter_groups

    model = _head(clip_dir, 1)
    groups = parameter_groups(model, lr=1e-5, head_lr_mult=10.0)
    lr_of = {name: group["lr"] for group in groups for name in group["param_names"]}
    assert lr_of["clip_encoder.vision_layers.0.self_attn.q_proj.weight"] == 1e-5
    assert lr_of["image_map.0.weight"] == pytest.approx(1e-4)
    assert all(name.startswith("clip_encoder.") for name, lr in lr_of.items() if lr == 1e-5)
    source = _head(clip_dir, 0)
    state = {
        "image_encoder.embeddings.patch_embedding.weight": torch.randn(48, 3, 8, 8),
        **source.state_dict(),
    }
    torch.save({"state_dict": state}, tmp_path / "hateclipper.ckpt")
    clip_weights = {key: value.clone() for key, value in model.clip_encoder.state_dict().items()}
    missing, _ = model.load_original(tmp_path / "hateclipper.ckpt")
    assert missing and all(key.startswith("clip_encoder.") for key in missing)
    assert torch.equal(model.image_map[0].weight, source.image_map[0].weight)
    assert all(
        torch.equal(model.clip_encoder.state_dict()[key], value) for key, value in clip_weights.items()
    )
