"""Integrated gradients over every family's input embeddings (memeguard.models.attribution).

Completeness (attributions sum to f(x) - f(baseline)) is checked against two separate forward passes of
the original and the baseline inputs; the captum path integral against a hand-written Gauss-Legendre sum
of autograd gradients. Weights are random with non-zero biases, as in a trained model: with BERT's zero
biases a zero region vector meets LayerNorm's singularity at 0 (LN(a x) is one value for every a > 0,
another at a = 0).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from vl_test_inputs import random_records

from memeguard.data.meme import Meme
from memeguard.errors import ConfigError
from memeguard.models.attribution import (
    integrated_gradients,
    keep_mask,
    logit_from,
    reference_baselines,
    tile_batch,
)
from memeguard.models.registry import create_model
from memeguard.models.tokenization import load_tokenizer

pytest.importorskip("captum")

# (steps, tolerance on |sum - change| / |change|). Smooth families: 64 steps, 1 %. The two-stream ViLBERT
# family pools with ReLUs (and ERNIE-ViL multiplies the two pools): their kinks along the path slow the
# quadrature down to ~1/steps, so 256 steps leave a few percent (the explanation JSON reports the delta).
FAMILY_STEPS = {
    "visualbert-tiny": (64, 1e-2),
    "uniter-tiny": (64, 1e-2),
    "oscar-tiny": (64, 1e-2),
    "lxmert-tiny": (64, 1e-2),
    "devlbert-tiny": (256, 5e-2),
    "ernie-vil-tiny": (256, 5e-2),
}
TEXTS = ("a dog on a red boat", "hello there")


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("bert-base-uncased")


def _random_biases(model: torch.nn.Module, seed: int) -> None:
    """Non-zero biases, as a trained model has (BERT's init zeroes them)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") and "norm" not in name.lower():
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)


def _model_and_batch(name: str, tokenizer, seed: int = 3):
    torch.manual_seed(0)
    model = create_model(name, initializer_range=0.1).eval()
    _random_biases(model, seed)
    processor = model.build_processor(tokenizer)
    records = random_records([5, 3], model.config.visual_feat_dim)
    memes = [Meme(id=k + 1, img="", text=text) for k, text in enumerate(TEXTS)]
    return model, processor, records, processor(memes, records)


@pytest.mark.parametrize("name", sorted(FAMILY_STEPS))
def test_forward_from_own_inputs_is_the_forward(name, tokenizer):
    model, _, _, batch = _model_and_batch(name, tokenizer)
    inputs = model.attribution_inputs(batch)
    assert set(inputs) == {"text", "regions"}
    torch.testing.assert_close(logit_from(model, batch, inputs), model(batch).detach(), rtol=0, atol=0)
    # ... and really reads them: other word embeddings change the logit (a random change: LayerNorm
    # removes a constant shift).
    other = {**inputs, "text": inputs["text"] + torch.randn(inputs["text"].shape)}
    assert not torch.allclose(logit_from(model, batch, other), model(batch).detach())


@pytest.mark.parametrize("name", sorted(FAMILY_STEPS))
def test_completeness(name, tokenizer):
    model, _, _, batch = _model_and_batch(name, tokenizer)
    keep = keep_mask(batch, tokenizer.all_special_ids)
    inputs = model.attribution_inputs(batch)
    baselines = model.attribution_baselines(batch, inputs, keep)
    change = (logit_from(model, batch, inputs) - logit_from(model, batch, baselines)).numpy()
    steps, tolerance = FAMILY_STEPS[name]
    results = integrated_gradients(model, batch, keep, steps=steps)
    for row, result in enumerate(results):
        total = float(result.text.sum() + result.regions.sum())
        assert abs(change[row]) > 1e-3  # the test means something
        assert abs(total - change[row]) < tolerance * abs(change[row]), (total, change[row])
        assert result.logit - result.baseline_logit == pytest.approx(change[row], abs=1e-6)
        assert result.delta == pytest.approx(total - change[row], abs=1e-5)
        # Special tokens and padding are their own baseline: exactly zero attribution.
        assert np.all(result.text[keep[row].numpy()] == 0)
        assert result.text.shape == (batch["input_ids"].shape[1],)
        assert result.regions.shape == (batch["visual_feats"].shape[1],)


def test_matches_a_hand_written_path_integral(tokenizer):
    """captum's Gauss-Legendre IG == sum_k w_k * grad f(b + a_k (x - b)) * (x - b), by autograd."""
    model, _, _, batch = _model_and_batch("visualbert-tiny", tokenizer)
    keep = keep_mask(batch, tokenizer.all_special_ids)
    steps = 16
    results = integrated_gradients(model, batch, keep, steps=steps)
    inputs = model.attribution_inputs(batch)
    base = model.attribution_baselines(batch, inputs, keep)
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    alphas, weights = (nodes + 1) / 2, weights / 2
    total = {name: torch.zeros_like(value) for name, value in inputs.items()}
    for alpha, weight in zip(alphas, weights, strict=True):
        point = {k: (base[k] + float(alpha) * (inputs[k] - base[k])).requires_grad_() for k in inputs}
        with torch.enable_grad():
            logit = model.forward_from_inputs(batch, **point).sum()
            grads = torch.autograd.grad(logit, list(point.values()))
        for name, grad in zip(point, grads, strict=True):
            total[name] += float(weight) * grad * (inputs[name] - base[name])
    for row, result in enumerate(results):
        np.testing.assert_allclose(result.text, total["text"][row].sum(-1).numpy(), atol=1e-5, rtol=1e-4)
        expected = total["regions"][row].sum(-1).numpy()
        np.testing.assert_allclose(result.regions, expected, atol=1e-5, rtol=1e-4)


def test_baselines_keep_special_tokens_and_boxes(tokenizer):
    model, _, _, batch = _model_and_batch("uniter-tiny", tokenizer)
    keep = keep_mask(batch, tokenizer.all_special_ids)
    ids = batch["input_ids"]
    assert keep[:, 0].all()  # [CLS]
    assert keep[0, ids.shape[1] - 1]  # the longest row ends with [SEP]
    assert keep[1][batch["attention_mask"][1] == 0].all()  # padding
    inputs = model.attribution_inputs(batch)
    base = model.attribution_baselines(batch, inputs, keep)
    pad = model.get_input_embeddings().weight[model.config.pad_token_id].detach()
    torch.testing.assert_close(base["text"][0, 1], pad)
    torch.testing.assert_close(base["text"][0, 0], inputs["text"][0, 0])
    assert torch.count_nonzero(base["regions"]) == 0


def test_tile_batch_is_captums_layout():
    batch = {"a": torch.tensor([[1, 2], [3, 4]]), "ids": torch.tensor([7, 8])}
    tiled = tile_batch(batch, 3)
    assert tiled["a"].tolist() == [[1, 2], [3, 4]] * 3
    assert tiled["ids"].tolist() == [7, 8] * 3


def test_region_boxes_follow_the_region_rows(tokenizer):
    """Each row of the region input has its pixel box; ERNIE-ViL's global token is the whole image."""
    _, processor, records, batch = _model_and_batch("ernie-vil-tiny", tokenizer)
    boxes = processor.region_boxes(records[0])
    height, width = records[0].image_size
    assert boxes.shape == (records[0].num_boxes + 1, 4)
    np.testing.assert_array_equal(boxes[0], [0, 0, width, height])
    np.testing.assert_array_equal(boxes[1:], records[0].boxes)
    _, processor, records, batch = _model_and_batch("lxmert-tiny", tokenizer)
    assert processor.region_boxes(records[1]).shape == (3, 4)
    assert int(batch["visual_mask"][1].sum()) == 3


def test_steps_are_bounded_and_eval_mode_required(tokenizer):
    model, _, _, batch = _model_and_batch("visualbert-tiny", tokenizer)
    keep = keep_mask(batch, tokenizer.all_special_ids)
    with pytest.raises(ConfigError, match="steps"):
        integrated_gradients(model, batch, keep, steps=100_000)
    model.train()
    with pytest.raises(ConfigError, match="eval mode"):
        integrated_gradients(model, batch, keep, steps=4)


def test_a_model_without_word_pieces_or_regions_is_one_line(tokenizer):
    """A model on the default hook given a batch with neither word pieces nor regions (e.g. pooled CLIP
    vectors, which only the CLIP heads' own hook reads) is a clear refusal."""
    model = create_model("visualbert-tiny").eval()
    batch = {"ids": torch.tensor([1]), "image_feats": torch.randn(1, 32), "text_feats": torch.randn(1, 24)}
    with pytest.raises(ConfigError, match="visualbert models cannot be explained yet"):
        integrated_gradients(model, batch, torch.zeros(1, 1, dtype=torch.bool), steps=4)


def _references(model, processor, tokenizer):
    """Two reference memes of another length than the explained ones, as reference_baselines takes them."""
    records = random_records([4, 6], model.config.visual_feat_dim, seed=11)
    texts = ("a cat", "the big blue truck goes to the city at night")
    memes = [Meme(id=k + 10, img="", text=text) for k, text in enumerate(texts)]
    batch = processor(memes, records)
    return model.attribution_inputs(batch), keep_mask(batch, tokenizer.all_special_ids)


def test_reference_baselines_put_the_references_words_and_regions_in_place(tokenizer):
    model, processor, _, batch = _model_and_batch("visualbert-tiny", tokenizer)
    keep = keep_mask(batch, tokenizer.all_special_ids)
    inputs = model.attribution_inputs(batch)
    absent = model.attribution_baselines(batch, inputs, keep)
    references, reference_keep = _references(model, processor, tokenizer)
    baselines = reference_baselines(model, batch, keep, references, reference_keep)
    assert len(baselines) == 2
    for k, base in enumerate(baselines):
        pieces = references["text"][k][~reference_keep[k]]
        for row in range(batch["input_ids"].shape[0]):
            slots = torch.nonzero(~keep[row]).flatten().tolist()
            used = min(len(slots), pieces.shape[0])
            torch.testing.assert_close(base["text"][row, slots[:used]], pieces[:used])
            torch.testing.assert_close(base["text"][row, slots[used:]], absent["text"][row, slots[used:]])
            torch.testing.assert_close(base["text"][row, keep[row]], inputs["text"][row, keep[row]])
        rows = min(inputs["regions"].shape[1], references["regions"].shape[1])
        torch.testing.assert_close(
            base["regions"][:, :rows], references["regions"][k, :rows].expand(2, -1, -1)
        )
        assert torch.count_nonzero(base["regions"][:, rows:]) == 0


@pytest.mark.parametrize("name", ["visualbert-tiny", "lxmert-tiny"])
def test_reference_paths_average_the_single_paths_and_stay_complete(name, tokenizer):
    """Attributions from K baselines are the mean of K separate IG runs, and they sum to the logit minus
    the mean of the baselines' logits (computed by separate forward passes)."""
    model, processor, _, batch = _model_and_batch(name, tokenizer)
    keep = keep_mask(batch, tokenizer.all_special_ids)
    baselines = reference_baselines(model, batch, keep, *_references(model, processor, tokenizer))
    steps, tolerance = 32, FAMILY_STEPS[name][1]
    joint = integrated_gradients(model, batch, keep, steps=2 * steps, baselines=baselines)
    single = [integrated_gradients(model, batch, keep, steps=steps, baselines=base) for base in baselines]
    inputs = model.attribution_inputs(batch)
    mean_base = np.mean([logit_from(model, batch, base).numpy() for base in baselines], axis=0)
    change = logit_from(model, batch, inputs).numpy() - mean_base
    for row, result in enumerate(joint):
        expected_text = np.mean([paths[row].text for paths in single], axis=0)
        np.testing.assert_allclose(result.text, expected_text, atol=1e-5, rtol=1e-4)
        expected_regions = np.mean([paths[row].regions for paths in single], axis=0)
        np.testing.assert_allclose(result.regions, expected_regions, atol=1e-5, rtol=1e-4)
        assert result.baseline_logit == pytest.approx(float(mean_base[row]), abs=1e-5)
        total = float(result.text.sum() + result.regions.sum())
        assert abs(change[row]) > 1e-3
        assert abs(total - change[row]) < tolerance * abs(change[row]), (total, change[row])
        assert result.delta == pytest.approx(total - change[row], abs=1e-4)
        assert np.all(result.text[keep[row].numpy()] == 0)
        assert result.steps == 2 * steps


def test_an_empty_list_of_baselines_is_refused(tokenizer):
    model, _, _, batch = _model_and_batch("visualbert-tiny", tokenizer)
    with pytest.raises(ConfigError, match="at least one"):
        integrated_gradients(model, batch, keep_mask(batch, tokenizer.all_special_ids), baselines=[])


def _gauss_legendre_ig(model, batch, start, end, steps):
    """sum_k w_k * grad f(start + a_k (end - start)) * (end - start) by autograd, summed per row vector."""
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    total = {name: torch.zeros_like(value) for name, value in end.items()}
    for alpha, weight in zip((nodes + 1) / 2, weights / 2, strict=True):
        point = {k: (start[k] + float(alpha) * (end[k] - start[k])).requires_grad_() for k in end}
        with torch.enable_grad():
            grads = torch.autograd.grad(model.forward_from_inputs(batch, **point).sum(), list(point.values()))
        for name, grad in zip(point, grads, strict=True):
            total[name] += float(weight) * grad * (end[name] - start[name])
    return {name: value.sum(-1).numpy() for name, value in total.items()}


def test_modality_paths_are_the_mean_of_both_orders_and_split_by_shapley(tokenizer):
    """path="modalities": words then regions and regions then words from the joint baseline, averaged;
    each modality's total is its Shapley value in the two-player game of forward passes."""
    model, _, _, batch = _model_and_batch("visualbert-tiny", tokenizer)
    keep = keep_mask(batch, tokenizer.all_special_ids)
    inputs = model.attribution_inputs(batch)
    base = model.attribution_baselines(batch, inputs, keep)
    steps = 16
    results = integrated_gradients(model, batch, keep, steps=4 * steps, path="modalities")
    text_only, image_only = {**base, "text": inputs["text"]}, {**base, "regions": inputs["regions"]}
    segments = [(base, text_only), (text_only, inputs), (base, image_only), (image_only, inputs)]
    parts = [_gauss_legendre_ig(model, batch, start, end, steps) for start, end in segments]
    f = {
        key: logit_from(model, batch, point).numpy()
        for key, point in (("x", inputs), ("b", base), ("t", text_only), ("i", image_only))
    }
    for row, result in enumerate(results):
        for name, got in (("text", result.text), ("regions", result.regions)):
            expected = sum(part[name][row] for part in parts) / 2
            np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-4)
        shapley_text = ((f["t"] - f["b"]) + (f["x"] - f["i"]))[row] / 2
        shapley_image = ((f["i"] - f["b"]) + (f["x"] - f["t"]))[row] / 2
        change = float((f["x"] - f["b"])[row])
        assert abs(shapley_text - shapley_image) > 1e-3  # the split is not trivially even
        assert float(result.text.sum()) == pytest.approx(shapley_text, abs=1e-2 * abs(change))
        assert float(result.regions.sum()) == pytest.approx(shapley_image, abs=1e-2 * abs(change))
        assert result.logit - result.baseline_logit == pytest.approx(change, abs=1e-5)
        assert result.delta == pytest.approx(result.text.sum() + result.regions.sum() - change, abs=1e-5)
        assert np.all(result.text[keep[row].numpy()] == 0)


def test_an_unknown_path_is_refused(tokenizer):
    model, _, _, batch = _model_and_batch("visualbert-tiny", tokenizer)
    with pytest.raises(ConfigError, match="path 'curved'"):
        integrated_gradients(model, batch, keep_mask(batch, tokenizer.all_special_ids), path="curved")


def test_the_modalities_path_refuses_a_list_of_baselines(tokenizer):
    """It restores one modality at a time from one joint baseline; a list would be silently ignored."""
    model, _, _, batch = _model_and_batch("visualbert-tiny", tokenizer)
    keep = keep_mask(batch, tokenizer.all_special_ids)
    base = model.attribution_baselines(batch, model.attribution_inputs(batch), keep)
    with pytest.raises(ConfigError, match="one baseline, not a list"):
        integrated_gradients(model, batch, keep, baselines=[base, base], path="modalities")
