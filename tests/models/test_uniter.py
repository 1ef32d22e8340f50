"""UNITER: processor, packing, original checkpoints (UNITER release, vilio LASTtrain.pth) and parity with a
plain per-example reference forward that reads the original key names."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from bert_reference import gelu, lin, ln, reference_layer
from vl_test_inputs import (
    VILIO_CLASSIFIER_KEYS,
    assert_vilio_finetuned_loads_exactly,
    bert_sizes,
    random_records,
    random_state,
    vilio_finetuned,
)

from memeguard.data.meme import Meme
from memeguard.errors import CheckpointError
from memeguard.features.record import RegionRecord
from memeguard.models import create_model, get_config
from memeguard.models.uniter import UniterModel, pack_text_and_regions

FEAT_DIM = 32
HIDDEN = 64
HEADS = 2


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------
def make_records(counts: list[int], seed: int = 0) -> list[RegionRecord]:
    return random_records(counts, FEAT_DIM, seed)


MEMES = [
    Meme(1, "img/00001.png", "when  you   finally get the joke", 1),
    Meme(2, "img/00002.png", "hi", 0),
    Meme(3, "img/00003.png", "a longer caption with many words in it for padding", 0),
]


def tiny(**overrides) -> UniterModel:
    model = create_model("uniter-tiny", **{"visual_feat_dim": FEAT_DIM, **overrides})
    assert isinstance(model, UniterModel)
    return model.eval()


# ---------------------------------------------------------------------------------------------
# Original layouts, written from our tiny shapes through the inverse of the converter
# ---------------------------------------------------------------------------------------------
def uniter_release(state: dict[str, torch.Tensor], seed: int = 1) -> dict[str, torch.Tensor]:
    """UniterForPretraining's state dict: ``uniter.`` + backbone, plus the pretraining heads."""
    gen = torch.Generator().manual_seed(seed)
    h, vocab = HIDDEN, state["embeddings.word_embeddings.weight"].shape[0]
    out = {f"uniter.{k}": v for k, v in state.items() if not k.startswith("classifier.")}
    out["uniter.img_embeddings.mask_embedding.weight"] = torch.randn(2, FEAT_DIM, generator=gen)
    heads = {
        "cls.predictions.bias": (vocab,),
        "cls.predictions.transform.dense.weight": (h, h),
        "cls.predictions.transform.dense.bias": (h,),
        "cls.predictions.transform.LayerNorm.weight": (h,),
        "cls.predictions.transform.LayerNorm.bias": (h,),
        "feat_regress.weight": (h, FEAT_DIM),
        "feat_regress.bias": (FEAT_DIM,),
        "feat_regress.net.0.weight": (h, h),
        "feat_regress.net.0.bias": (h,),
        "feat_regress.net.2.weight": (h,),
        "feat_regress.net.2.bias": (h,),
        "region_classifier.net.0.weight": (h, h),
        "region_classifier.net.0.bias": (h,),
        "region_classifier.net.2.weight": (h,),
        "region_classifier.net.2.bias": (h,),
        "region_classifier.net.3.weight": (1601, h),
        "region_classifier.net.3.bias": (1601,),
        "itm_output.weight": (2, h),
        "itm_output.bias": (2,),
    }
    out.update({k: torch.randn(shape, generator=gen) for k, shape in heads.items()})
    out["cls.predictions.decoder.weight"] = out[
        "uniter.embeddings.word_embeddings.weight"
    ]  # tied, saved twice
    return out


# Real key names of the original files, written out literally so a wrong name in our mapping cannot pass.
LITERAL_RELEASE_KEYS = {
    "uniter.embeddings.word_embeddings.weight": (30522, HIDDEN),
    "uniter.embeddings.position_embeddings.weight": (512, HIDDEN),
    "uniter.embeddings.token_type_embeddings.weight": (2, HIDDEN),
    "uniter.embeddings.LayerNorm.weight": (HIDDEN,),
    "uniter.img_embeddings.img_linear.weight": (HIDDEN, FEAT_DIM),
    "uniter.img_embeddings.img_layer_norm.bias": (HIDDEN,),
    "uniter.img_embeddings.pos_linear.weight": (HIDDEN, 7),
    "uniter.img_embeddings.pos_layer_norm.weight": (HIDDEN,),
    "uniter.img_embeddings.LayerNorm.bias": (HIDDEN,),
    "uniter.img_embeddings.mask_embedding.weight": (2, FEAT_DIM),
    "uniter.encoder.layer.0.attention.self.query.weight": (HIDDEN, HIDDEN),
    "uniter.encoder.layer.0.attention.self.value.bias": (HIDDEN,),
    "uniter.encoder.layer.0.attention.output.dense.weight": (HIDDEN, HIDDEN),
    "uniter.encoder.layer.1.attention.output.LayerNorm.weight": (HIDDEN,),
    "uniter.encoder.layer.1.intermediate.dense.weight": (128, HIDDEN),
    "uniter.encoder.layer.1.output.dense.weight": (HIDDEN, 128),
    "uniter.encoder.layer.1.output.LayerNorm.bias": (HIDDEN,),
    "uniter.pooler.dense.weight": (HIDDEN, HIDDEN),
}
LITERAL_VILIO_KEYS = {
    "model.embeddings.position_ids": (1, 512),
    "model.img_embeddings.pos_linear.weight": (HIDDEN, 7),
    "model.encoder.layer.1.output.dense.bias": (HIDDEN,),
    "model.pooler.dense.bias": (HIDDEN,),
    "classifier.0.weight": (2 * HIDDEN, HIDDEN),
    "classifier.2.weight": (2 * HIDDEN,),
    "classifier.3.weight": (2, 2 * HIDDEN),
    "classifier.3.bias": (2,),
}


# ---------------------------------------------------------------------------------------------
# Plain reference forward (one example, no padding), reading vilio's original key names
# ---------------------------------------------------------------------------------------------
def reference_uniter(sd, ids, feats, pos7, num_layers=2):
    """vilio ModelU on one example: [text ; regions] (no padding) -> (hidden [L, H], hateful logit)."""
    m = "model."
    positions = torch.arange(len(ids))
    text = (
        sd[m + "embeddings.word_embeddings.weight"][ids]
        + sd[m + "embeddings.position_embeddings.weight"][positions]
        + sd[m + "embeddings.token_type_embeddings.weight"][0]
    )
    text = ln(text, sd, m + "embeddings.LayerNorm")
    image = (
        ln(lin(feats, sd, m + "img_embeddings.img_linear"), sd, m + "img_embeddings.img_layer_norm")
        + ln(lin(pos7, sd, m + "img_embeddings.pos_linear"), sd, m + "img_embeddings.pos_layer_norm")
        + sd[m + "embeddings.token_type_embeddings.weight"][1]
    )
    image = ln(image, sd, m + "img_embeddings.LayerNorm")
    hidden = torch.cat([text, image], dim=0)
    for i in range(num_layers):
        hidden = reference_layer(hidden, sd, f"{m}encoder.layer.{i}")
    pooled = torch.tanh(lin(hidden[0], sd, m + "pooler.dense"))
    head = ln(gelu(lin(pooled, sd, "classifier.0")), sd, "classifier.2")
    logits = lin(head, sd, "classifier.3")
    return hidden, logits[1] - logits[0]


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------
def test_named_configs():
    large = get_config("uniter-large")
    assert bert_sizes(large) == (1024, 24, 16, 4096)
    assert large.vocab_size == 28996 and large.tokenizer == "bert-large-cased"
    base = get_config("uniter-base")
    assert (base.hidden_size, base.num_hidden_layers, base.vocab_size) == (768, 12, 28996)
    t = get_config("uniter-tiny", visual_feat_dim=48)
    assert (t.hidden_size, t.num_hidden_layers, t.num_attention_heads, t.intermediate_size) == (64, 2, 2, 128)
    assert tiny(visual_feat_dim=48).img_embeddings.img_linear.weight.shape == (64, 48)


def test_pack_text_and_regions_matches_hand_layout():
    text_mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    visual_mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0]])
    index, mask = pack_text_and_regions(text_mask, visual_mask)
    # concat slots: text 0..2, regions 3..6. Example 0: t0 t1 t2 r0 r1 ; example 1: t0 r0 r1 r2 + 1 pad.
    assert index.tolist() == [[0, 1, 2, 3, 4], [0, 3, 4, 5, 4]]
    assert mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]


def test_processor_builds_uniter7_boxes_and_scores_batch():
    model = tiny()
    records = make_records([3, 5, 2])
    batch = model.build_processor()(MEMES, records)
    assert batch["visual_boxes"].shape == (3, 5, 7)
    x1, y1, x2, y2 = records[1].boxes[2] / np.array([320, 160, 320, 160])
    expected = [x1, y1, x2, y2, x2 - x1, y2 - y1, (x2 - x1) * (y2 - y1)]
    np.testing.assert_allclose(batch["visual_boxes"][1, 2].numpy(), expected, rtol=1e-5, atol=1e-6)
    assert batch["visual_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert batch["labels"].tolist() == [1.0, 0.0, 0.0]
    logits = model(batch)
    assert logits.shape == (3,) and torch.isfinite(logits).all()
    torch.testing.assert_close(model(batch), logits)  # dropout off in eval
    probs = model.predict_proba(batch)
    assert ((probs > 0) & (probs < 1)).all()


def test_finetuned_checkpoint_parity_with_reference(tmp_path):
    model = tiny()
    original = vilio_finetuned(random_state(model, seed=3))
    for key, shape in LITERAL_VILIO_KEYS.items():
        assert tuple(original[key].shape) == shape, key
    assert_vilio_finetuned_loads_exactly(model, original, tmp_path / "LASTtrain.pth")

    records = make_records([3, 5, 2], seed=4)
    batch = model.build_processor()(MEMES, records)
    with torch.no_grad():
        logits = model(batch)
        encoded = model.encode(batch)
    for i in range(len(MEMES)):
        t = int(batch["attention_mask"][i].sum())
        n = int(batch["visual_mask"][i].sum())
        hidden, logit = reference_uniter(
            original, batch["input_ids"][i, :t], batch["visual_feats"][i, :n], batch["visual_boxes"][i, :n]
        )
        assert abs(float(logits[i]) - float(logit)) <= 1e-5
        assert (encoded.text_hidden[i, :t] - hidden[:t]).abs().max() <= 1e-5
        assert (encoded.visual_hidden[i, :n] - hidden[t:]).abs().max() <= 1e-5
        assert not encoded.text_hidden[i, t:].any()  # padding rows zeroed
        assert not encoded.visual_hidden[i, n:].any()


def test_release_checkpoint_loads_backbone_and_documents_heads(tmp_path):
    model = tiny()
    original = uniter_release(random_state(model, seed=5))
    for key, shape in LITERAL_RELEASE_KEYS.items():
        assert tuple(original[key].shape) == shape, key
    torch.save(original, tmp_path / "uniter-base.pt")
    missing, unexpected = model.load_original(tmp_path)  # a folder holding the release file
    assert missing == VILIO_CLASSIFIER_KEYS
    assert "img_embeddings.mask_embedding.weight" in unexpected
    assert {
        "itm_output.weight",
        "cls.predictions.decoder.weight",
        "feat_regress.weight",
        "region_classifier.net.3.bias",
    } <= set(unexpected)
    own = model.state_dict()
    for key, value in original.items():
        if key.startswith("uniter.") and "mask_embedding" not in key:
            torch.testing.assert_close(own[key.removeprefix("uniter.")], value, rtol=0, atol=0)

    with_mask = tiny(use_mask_embedding=True)
    missing, unexpected = with_mask.load_original(tmp_path / "uniter-base.pt")
    assert "img_embeddings.mask_embedding.weight" not in unexpected
    torch.testing.assert_close(
        with_mask.img_embeddings.mask_embedding.weight.detach(),
        original["uniter.img_embeddings.mask_embedding.weight"],
    )


def test_release_checkpoint_in_half_precision_with_tf_layernorm_names(tmp_path):
    model = tiny()
    original = {k: v.half() for k, v in uniter_release(random_state(model, seed=6)).items()}
    original["uniter.embeddings.LayerNorm.gamma"] = original.pop("uniter.embeddings.LayerNorm.weight")
    torch.save(original, tmp_path / "ok.pt")
    model.load_original(tmp_path / "ok.pt")
    assert model.embeddings.LayerNorm.weight.dtype == torch.float32
    torch.testing.assert_close(
        model.embeddings.LayerNorm.weight.detach(), original["uniter.embeddings.LayerNorm.gamma"].float()
    )


def test_unexplained_or_missing_keys_fail_listing_them(tmp_path):
    model = tiny()
    original = vilio_finetuned(random_state(model, seed=7))
    original["model.img_embeddings.surprise.weight"] = torch.zeros(3)
    torch.save(original, tmp_path / "LASTtrain.pth")
    with pytest.raises(CheckpointError, match="img_embeddings.surprise.weight"):
        model.load_original(tmp_path / "LASTtrain.pth")

    original = vilio_finetuned(random_state(model, seed=7))
    del original["model.encoder.layer.1.output.dense.weight"]
    torch.save(original, tmp_path / "LASTtrain.pth")
    with pytest.raises(CheckpointError, match=r"encoder\.layer\.1\.output\.dense\.weight"):
        model.load_original(tmp_path / "LASTtrain.pth")

    release = uniter_release(random_state(model, seed=8))
    release["uniter.img_embeddings.pos_linear.weight"] = torch.zeros(HIDDEN, 4)  # vilio's num_pos 4 variant
    torch.save(release, tmp_path / "uniter-large.pt")
    with pytest.raises(CheckpointError, match="pos_linear"):
        model.load_original(tmp_path / "uniter-large.pt")


def test_mask_embedding_is_added_to_masked_regions_only():
    model = tiny(use_mask_embedding=True)
    with torch.no_grad():
        model.img_embeddings.mask_embedding.weight.normal_()
    batch = model.build_processor()(MEMES[:1], make_records([4]))
    plain = model.encode(batch).visual_hidden
    masked_nothing = model.encode(
        {**batch, "visual_masked": torch.zeros(1, 4, dtype=torch.long)}
    ).visual_hidden
    torch.testing.assert_close(plain, masked_nothing)
    features = batch["visual_feats"].clone()
    features[0, 2] += model.img_embeddings.mask_embedding.weight[1].detach()
    by_hand = model.encode({**batch, "visual_feats": features}).visual_hidden
    masked = model.encode({**batch, "visual_masked": torch.tensor([[0, 0, 1, 0]])}).visual_hidden
    torch.testing.assert_close(masked, by_hand)


def test_save_and_reload_round_trip(tmp_path):
    from memeguard.models.base import MemeModel

    model = tiny()
    batch = model.build_processor()(MEMES, make_records([2, 3, 1]))
    model.save_pretrained(tmp_path / "m")
    again = MemeModel.from_pretrained(tmp_path / "m").eval()
    assert isinstance(again, UniterModel)
    torch.testing.assert_close(again(batch), model(batch))


def test_swa_wrapped_finetuned_layout_loads(tmp_path):
    """``AveragedModel`` state dicts (``n_averaged`` + ``module.``) unwrap as vilio's HM.load does."""
    model = tiny()
    plain = vilio_finetuned(random_state(model, seed=11))
    wrapped = {f"module.{k}": v for k, v in plain.items()}
    wrapped["n_averaged"] = torch.tensor(12)
    torch.save(wrapped, tmp_path / "LASTtraindev.pth")
    missing, unexpected = model.load_original(tmp_path / "LASTtraindev.pth")
    assert missing == [] and unexpected == ["embeddings.position_ids"]
    torch.testing.assert_close(model.classifier[3].weight.detach(), plain["classifier.3.weight"])
    torch.testing.assert_close(
        model.img_embeddings.pos_linear.weight.detach(), plain["model.img_embeddings.pos_linear.weight"]
    )


# ---------------------------------------------------------------------------------------------
# vilio's default --num_pos 4: four box features (x1, y1, x2, y2)
# ---------------------------------------------------------------------------------------------
def boxes_by_hand(record: RegionRecord, pos_dim: int) -> torch.Tensor:
    """vilio's ``hm_data_tsv.py``: boxes / (w, h, w, h); with --num_pos 6 UNITER adds w, h and w * h."""
    height, width = record.image_size
    x1, y1, x2, y2 = (record.boxes.astype(np.float64) / np.array([width, height, width, height])).T
    columns = [x1, y1, x2, y2] if pos_dim == 4 else [x1, y1, x2, y2, x2 - x1, y2 - y1, (x2 - x1) * (y2 - y1)]
    return torch.tensor(np.stack(columns, axis=1), dtype=torch.float32)


@pytest.mark.parametrize("pos_dim", [7, 4])
def test_vilio_finetuned_file_sets_the_number_of_box_features(tmp_path, pos_dim):
    """A default (7-feature) model loads a vilio run trained with either --num_pos, and then scores as
    a per-example reference forward over boxes encoded by hand."""
    original = vilio_finetuned(random_state(tiny(visual_pos_dim=pos_dim), seed=21))
    assert tuple(original["model.img_embeddings.pos_linear.weight"].shape) == (HIDDEN, pos_dim)
    torch.save(original, tmp_path / "LASTtrain.pth")

    model = tiny()
    rng_before = torch.get_rng_state()
    missing, unexpected = model.load_original(tmp_path / "LASTtrain.pth")
    assert torch.equal(torch.get_rng_state(), rng_before)  # every weight comes from the file
    assert missing == [] and unexpected == ["embeddings.position_ids"]
    assert model.config.visual_pos_dim == pos_dim
    assert list(model.state_dict()) == list(tiny().state_dict())  # key order kept

    records = make_records([3, 5, 2], seed=22)
    batch = model.build_processor()(MEMES, records)
    assert batch["visual_boxes"].shape == (3, 5, pos_dim)
    with torch.no_grad():
        logits = model(batch)
    for i, record in enumerate(records):
        t = int(batch["attention_mask"][i].sum())
        feats = batch["visual_feats"][i, : record.num_boxes]
        _, logit = reference_uniter(
            original, batch["input_ids"][i, :t], feats, boxes_by_hand(record, pos_dim)
        )
        assert abs(float(logits[i]) - float(logit)) <= 1e-5


def test_release_into_a_four_feature_model_keeps_the_first_four_columns(tmp_path):
    """vilio's ModelU.load with --num_pos 4 keeps pos_linear.weight[:, :4] of UNITER's 7-column release."""
    release = uniter_release(random_state(tiny(), seed=23))
    torch.save(release, tmp_path / "uniter-base.pt")
    model = tiny(visual_pos_dim=4)
    missing, _ = model.load_original(tmp_path / "uniter-base.pt")
    assert all(key.startswith("classifier.") for key in missing)
    torch.testing.assert_close(
        model.img_embeddings.pos_linear.weight.detach(),
        release["uniter.img_embeddings.pos_linear.weight"][:, :4],
        rtol=0,
        atol=0,
    )


def test_four_feature_model_round_trips_and_bad_counts_fail(tmp_path):
    from memeguard.errors import ConfigError
    from memeguard.models.base import MemeModel

    model = tiny(visual_pos_dim=4)
    model.save_pretrained(tmp_path / "m")
    again = MemeModel.from_pretrained(tmp_path / "m").eval()
    assert again.config.visual_pos_dim == 4 and again.img_embeddings.pos_linear.in_features == 4
    batch = again.build_processor()(MEMES, make_records([2, 3, 1]))
    torch.testing.assert_close(again(batch), model(batch), rtol=0, atol=0)
    with pytest.raises(ConfigError, match="visual_pos_dim"):
        tiny(visual_pos_dim=6)
