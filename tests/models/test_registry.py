"""Cross-architecture checks over whatever names are registered: build, score a batch, save/load round trip.

Full-size configs are built on the meta device (no memory, no init cost) so every name is covered
in well under a second; tiny configs are built for real, fed a processor batch and round-tripped.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from memeguard.data.meme import Meme
from memeguard.errors import ConfigError
from memeguard.features.record import RegionRecord
from memeguard.models import MemeModel, create_model, get_config, list_models
from memeguard.models.registry import architecture_for
from memeguard.models.tokenization import default_uncased_vocab, load_tokenizer, read_wordpiece_vocab

# Heads on CLIP embeddings read neither regions nor words: tests/models/test_clip_heads.py covers them.
CLIP_HEAD_TYPES = ("hateclipper", "rgcl")
NAMES = [name for name in list_models() if get_config(name).model_type not in CLIP_HEAD_TYPES]
TINY = [name for name in NAMES if name.endswith("-tiny")]
BASE = [name for name in NAMES if name.endswith("-base")]  # -large ones only add depth/width
EXPECTED_ARCHS = ("visualbert", "uniter", "oscar", "lxmert", "devlbert", "ernie-vil")


def tokenizer_for(config):
    """The model's own tokenizer when it is available offline; else uncased WordPiece cut to its vocabulary.

    (Cased vocabularies need a local file; token ids are all that matters for these checks.)
    """
    try:
        return load_tokenizer(config.tokenizer)
    except ConfigError:
        from transformers import BertTokenizer

        vocab = {
            token: index
            for token, index in read_wordpiece_vocab(default_uncased_vocab()).items()
            if index < config.vocab_size
        }
        return BertTokenizer(vocab=vocab, do_lower_case=True)


def memes_and_regions(feature_dim: int, box_counts=(3, 5)) -> tuple[list[Meme], list[RegionRecord]]:
    rng = np.random.default_rng(0)
    texts = ["when  you see it", "a completely normal meme about cats and dogs", "ok"]
    memes, regions = [], []
    for index, boxes in enumerate(box_counts):
        meme_id = 100 + index
        xy = rng.uniform(0, 200, size=(boxes, 2)).astype(np.float32)
        memes.append(Meme(meme_id, f"img/{meme_id:05d}.png", texts[index % len(texts)], index % 2))
        regions.append(
            RegionRecord(
                meme_id=meme_id,
                features=rng.normal(size=(boxes, feature_dim)).astype(np.float32),
                boxes=np.concatenate([xy, xy + rng.uniform(10, 100, size=(boxes, 2))], axis=1).astype(
                    np.float32
                ),
                image_size=(320, 400),
            )
        )
    return memes, regions


def test_expected_architectures_are_registered():
    """At least the models whose files exist are registered; report which contract names are still absent."""
    types = {get_config(name).model_type for name in NAMES}
    assert {"visualbert", "lxmert"} <= types
    assert all(f"{arch}-tiny" in NAMES for arch in types if arch in EXPECTED_ARCHS)


@pytest.mark.parametrize("name", NAMES)
def test_every_name_builds(name):
    config = get_config(name)
    assert type(config).from_dict(config.to_dict()) == config
    with torch.device("meta"):
        model = create_model(name, visual_feat_dim=64)
    assert isinstance(model, MemeModel)
    assert type(model) is architecture_for(config.model_type)
    assert model.config.visual_feat_dim == 64
    assert model.get_input_embeddings().num_embeddings == config.vocab_size
    head = model.head_parameter_names()
    params = dict(model.named_parameters())
    assert head and set(head) <= set(params)
    if name.endswith("-tiny"):
        assert (
            config.hidden_size == 64 and config.num_attention_heads == 2 and config.intermediate_size == 128
        )


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("feature_dim", [40])
def test_tiny_model_scores_a_processor_batch(name, feature_dim):
    torch.manual_seed(0)
    model = create_model(name, visual_feat_dim=feature_dim).eval()
    processor = model.build_processor(tokenizer_for(model.config))
    memes, regions = memes_and_regions(feature_dim)
    batch = processor(memes, regions)
    assert batch["ids"].tolist() == [100, 101]
    with torch.no_grad():
        logits = model(batch)
        proba = model.predict_proba(batch)
        encoded = model.encode(batch)
        shifted = dict(batch, visual_feats=batch["visual_feats"] * 3.0 + 1.0)
        logits_shifted = model(shifted)
    assert logits.shape == (2,) and torch.isfinite(logits).all()
    torch.testing.assert_close(proba, torch.sigmoid(logits))
    assert encoded.text_hidden.shape[:2] == batch["input_ids"].shape
    assert encoded.pooled.shape[0] == 2
    assert not torch.allclose(logits, logits_shifted), "the score ignores the image"


@pytest.mark.parametrize("name", TINY)
def test_tiny_model_round_trips_save_and_load(name, tmp_path):
    torch.manual_seed(1)
    model = create_model(name, visual_feat_dim=32).eval()
    model.save_pretrained(tmp_path / name)
    loaded = MemeModel.from_pretrained(tmp_path / name).eval()
    assert type(loaded) is type(model)
    assert loaded.config == model.config
    own, other = model.state_dict(), loaded.state_dict()
    assert own.keys() == other.keys()
    for key in own:
        assert torch.equal(own[key], other[key]), key
    memes, regions = memes_and_regions(32, box_counts=(4, 2))
    batch = model.build_processor(tokenizer_for(model.config))(memes, regions)
    with torch.no_grad():
        torch.testing.assert_close(model(batch), loaded(batch), atol=0, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("name", BASE)
def test_base_size_model_scores_a_processor_batch(name):
    model = create_model(name).eval()
    memes, regions = memes_and_regions(model.config.visual_feat_dim)
    batch = model.build_processor(tokenizer_for(model.config))(memes, regions)
    with torch.no_grad():
        logits = model(batch)
    assert logits.shape == (2,) and torch.isfinite(logits).all()


def test_feature_standardisation_is_applied_by_every_processor() -> None:
    """Config-level feature_mean/std reach the batch of every architecture, and survive save/load."""
    import numpy as np

    from memeguard.data.meme import Meme
    from memeguard.features.record import RegionRecord
    from memeguard.models import create_model

    rng = np.random.default_rng(0)
    features = rng.random((5, 8)).astype(np.float32)
    boxes = np.array([[0, 0, 10, 10]] * 5, dtype=np.float32)
    record = RegionRecord(1, features, boxes, (20, 20))
    mean = features.mean(0).tolist()
    std = (features.std(0) + 0.5).tolist()
    for name in TINY:
        model = create_model(name, visual_feat_dim=8, feature_mean=mean, feature_std=std)
        processor = model.build_processor()
        batch = processor([Meme(1, "img/00001.png", "a dog", 1)], [record])
        expected = (features - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
        got = batch["visual_feats"][0].numpy()
        assert any(np.allclose(got[k : k + 5], expected, atol=1e-6) for k in range(got.shape[0] - 4)), name
