"""Integrated gradients of the CLIP-embedding heads over their two pooled vectors (the MemeModel hook of
clip_heads.py / rgcl.py): completeness against two forward passes, the explanation's one token and one
whole-image region, and the kNN classifier's refusal."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from clip_memes import IMAGE_DIM, TEXT_DIM, make_clip_memes

from memeguard.data.meme import Meme
from memeguard.errors import ConfigError
from memeguard.models.attribution import integrated_gradients, logit_from
from memeguard.models.explanation import MemberInput, explain_members
from memeguard.models.registry import create_model

pytest.importorskip("captum")

# The heads are ReLU MLPs: kinks along the path make the quadrature converge as ~1/steps (measured on these
# heads: up to 40 % off at 16 steps, 4 % at 64, 1.8 % at 256, under 1 % at 1024; the JSON reports the delta).
HEADS = ("clip-concat-tiny", "hateclipper-align-tiny", "hateclipper-cross-tiny", "rgcl-tiny")
STEPS, TOLERANCE = 256, 3e-2
SIZES = {"image_dim": IMAGE_DIM, "text_dim": TEXT_DIM}


def _head_and_batch(name: str, seed: int = 0):
    torch.manual_seed(seed)
    model = create_model(name, **SIZES).eval()
    with torch.no_grad():  # larger weights than PyTorch's init, as a trained head: logits of a few units
        for param in model.parameters():
            param.normal_(0.0, 0.5)
    processor = model.build_processor()
    lines, regions = make_clip_memes(3, seed=5, start_id=1)
    memes = [Meme(id=line["id"], img="", text=line["text"]) for line in lines]
    records = [regions[m.id] for m in memes]
    return model, processor, records, processor(memes, records)


@pytest.mark.parametrize("name", HEADS)
def test_forward_from_own_inputs_is_the_forward_and_reads_both_vectors(name):
    model, _, _, batch = _head_and_batch(name)
    inputs = model.attribution_inputs(batch)
    assert {k: tuple(v.shape) for k, v in inputs.items()} == {
        "text": (3, 1, TEXT_DIM),
        "regions": (3, 1, IMAGE_DIM),
    }
    torch.testing.assert_close(logit_from(model, batch, inputs), model(batch).detach(), rtol=0, atol=0)
    for key in inputs:  # each vector really reaches the logit
        other = {**inputs, key: inputs[key] + torch.randn(inputs[key].shape)}
        assert not torch.allclose(logit_from(model, batch, other), model(batch).detach())


@pytest.mark.parametrize("name", HEADS)
def test_completeness(name):
    model, _, _, batch = _head_and_batch(name)
    keep = torch.zeros(3, 1, dtype=torch.bool)
    inputs = model.attribution_inputs(batch)
    baselines = model.attribution_baselines(batch, inputs, keep)
    assert all(torch.count_nonzero(b) == 0 for b in baselines.values())
    change = (logit_from(model, batch, inputs) - logit_from(model, batch, baselines)).numpy()
    for row, result in enumerate(integrated_gradients(model, batch, keep, steps=STEPS)):
        assert result.text.shape == (1,) and result.regions.shape == (1,)
        total = float(result.text.sum() + result.regions.sum())
        assert abs(change[row]) > 1e-3  # the test means something
        assert abs(total - change[row]) < TOLERANCE * abs(change[row]), (total, change[row])
        assert result.delta == pytest.approx(total - change[row], abs=1e-5)


def test_explanation_has_one_text_token_spread_over_the_words_and_the_whole_image():
    model, processor, records, batch = _head_and_batch("hateclipper-align-tiny")
    one = {k: v[:1] for k, v in batch.items()}
    text = "  a   meme about 1 "
    member = MemberInput("clip", model, processor, records[0], one, weight=2.0)
    explanation = explain_members([member], text, (10, 10), steps=64)
    (explained,) = explanation.models
    (token,) = explained.tokens
    assert token.token == "a meme about 1" and token.word is None
    assert [w.word for w in explained.words] == ["a", "meme", "about", "1"]
    np.testing.assert_allclose([w.attribution for w in explained.words], [token.attribution / 4] * 4)
    (region,) = explained.regions
    height, width = records[0].image_size
    assert region.box == [0.0, 0.0, float(width), float(height)]
    total = token.attribution + region.attribution
    assert total - (explained.logit - explained.baseline_logit) == pytest.approx(explained.delta, abs=1e-5)
    assert explained.weight == 1.0 and explanation.words == explained.words


def test_the_knn_classifier_is_refused_in_one_line():
    torch.manual_seed(0)
    model = create_model("rgcl-tiny", classifier="knn", **SIZES).eval()
    batch = {
        "ids": torch.tensor([1]),
        "image_feats": torch.randn(1, IMAGE_DIM),
        "text_feats": torch.randn(1, TEXT_DIM),
    }
    with pytest.raises(ConfigError, match="classifier=knn cannot be explained") as caught:
        integrated_gradients(model, batch, torch.zeros(1, 1, dtype=torch.bool), steps=4)
    assert "\n" not in str(caught.value)
