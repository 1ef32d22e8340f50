"""OSCAR: processor (incl. optional object tags), original checkpoints (OSCAR pytorch_model.bin, vilio
LAST_BO.pth, vilio LASTtrain.pth) and parity with a plain per-example reference forward that reads the
original key names."""

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
from memeguard.errors import CheckpointError, ConfigError
from memeguard.features.record import RegionRecord
from memeguard.models import create_model, get_config
from memeguard.models.oscar import OscarModel

FEAT_DIM = 40
HIDDEN = 64
HEADS = 2


def make_records(
    counts: list[int], seed: int = 0, object_ids: list[list[int]] | None = None
) -> list[RegionRecord]:
    return random_records(counts, FEAT_DIM, seed, object_ids)


MEMES = [
    Meme(1, "img/00001.png", "look   at this", 1),
    Meme(2, "img/00002.png", "a much longer caption with more words than the others", 0),
    Meme(3, "img/00003.png", "ok", None),
]


def tiny(**overrides) -> OscarModel:
    model = create_model("oscar-tiny", **{"visual_feat_dim": FEAT_DIM, **overrides})
    assert isinstance(model, OscarModel)
    return model.eval()


# ---------------------------------------------------------------------------------------------
# Original layouts, written from our tiny shapes through the inverse of the converter
# ---------------------------------------------------------------------------------------------
def pretraining_heads(vocab: int, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    shapes = {
        "cls.predictions.bias": (vocab,),
        "cls.predictions.transform.dense.weight": (HIDDEN, HIDDEN),
        "cls.predictions.transform.dense.bias": (HIDDEN,),
        "cls.predictions.transform.LayerNorm.weight": (HIDDEN,),
        "cls.predictions.transform.LayerNorm.bias": (HIDDEN,),
        "cls.predictions.decoder.weight": (vocab, HIDDEN),
        "cls.seq_relationship.weight": (2, HIDDEN),
        "cls.seq_relationship.bias": (2,),
    }
    return {k: torch.randn(shape, generator=gen) for k, shape in shapes.items()}


def oscar_release(state: dict[str, torch.Tensor], seed: int = 1) -> dict[str, torch.Tensor]:
    """BertImgForPreTraining: ``bert.`` + backbone with a (D + 6)-column img_embedding, plus ``cls.*``."""
    gen = torch.Generator().manual_seed(seed)
    out = {f"bert.{k}": v for k, v in state.items() if not k.startswith("classifier.")}
    extra_columns = torch.randn(HIDDEN, 2, generator=gen)  # OSCAR's 5th/6th position values (w, h)
    out["bert.img_embedding.weight"] = torch.cat([state["img_embedding.weight"], extra_columns], dim=1)
    out.update(pretraining_heads(state["embeddings.word_embeddings.weight"].shape[0], seed))
    return out


def vilio_pretrained(state: dict[str, torch.Tensor], seed: int = 2) -> dict[str, torch.Tensor]:
    """vilio's LAST_BO.pth (BertOPretraining): ``bert.*`` (2052-wide img_embedding, position_ids) +
    ``cls.*``."""
    out = {f"bert.{k}": v for k, v in state.items() if not k.startswith("classifier.")}
    out["bert.embeddings.position_ids"] = torch.arange(512).expand(1, -1)
    out.update(pretraining_heads(state["embeddings.word_embeddings.weight"].shape[0], seed))
    return out


LITERAL_RELEASE_KEYS = {
    "bert.embeddings.word_embeddings.weight": (30522, HIDDEN),
    "bert.embeddings.position_embeddings.weight": (512, HIDDEN),
    "bert.embeddings.token_type_embeddings.weight": (2, HIDDEN),
    "bert.embeddings.LayerNorm.bias": (HIDDEN,),
    "bert.encoder.layer.0.attention.self.key.weight": (HIDDEN, HIDDEN),
    "bert.encoder.layer.0.attention.output.LayerNorm.weight": (HIDDEN,),
    "bert.encoder.layer.1.intermediate.dense.bias": (128,),
    "bert.encoder.layer.1.output.dense.weight": (HIDDEN, 128),
    "bert.pooler.dense.weight": (HIDDEN, HIDDEN),
    "bert.img_embedding.weight": (HIDDEN, FEAT_DIM + 6),
    "bert.img_embedding.bias": (HIDDEN,),
    "cls.predictions.decoder.weight": (30522, HIDDEN),
    "cls.seq_relationship.weight": (2, HIDDEN),
}
LITERAL_VILIO_KEYS = {
    "model.embeddings.position_ids": (1, 512),
    "model.img_embedding.weight": (HIDDEN, FEAT_DIM + 4),
    "model.encoder.layer.1.attention.self.query.bias": (HIDDEN,),
    "classifier.0.weight": (2 * HIDDEN, HIDDEN),
    "classifier.2.bias": (2 * HIDDEN,),
    "classifier.3.weight": (2, 2 * HIDDEN),
}


# ---------------------------------------------------------------------------------------------
# Plain reference forward (one example, no padding), reading vilio's original key names
# ---------------------------------------------------------------------------------------------
def reference_oscar(sd, ids, segments, feats, boxes, num_layers=2):
    """vilio ModelO on one example: [text ; Linear([feats, boxes])] -> (hidden [L, H], hateful logit)."""
    m = "model."
    text = (
        sd[m + "embeddings.word_embeddings.weight"][ids]
        + sd[m + "embeddings.position_embeddings.weight"][torch.arange(len(ids))]
        + sd[m + "embeddings.token_type_embeddings.weight"][segments]
    )
    text = ln(text, sd, m + "embeddings.LayerNorm")
    image = lin(torch.cat([feats, boxes], dim=1), sd, m + "img_embedding")
    hidden = torch.cat([text, image], dim=0)
    for i in range(num_layers):
        hidden = reference_layer(hidden, sd, f"{m}encoder.layer.{i}")
    pooled = torch.tanh(lin(hidden[0], sd, m + "pooler.dense"))
    logits = lin(ln(gelu(lin(pooled, sd, "classifier.0")), sd, "classifier.2"), sd, "classifier.3")
    return hidden, logits[1] - logits[0]


def check_parity(
    model: OscarModel, original: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]
) -> None:
    with torch.no_grad():
        logits = model(batch)
        encoded = model.encode(batch)
    for i in range(batch["input_ids"].shape[0]):
        t = int(batch["attention_mask"][i].sum())
        n = int(batch["visual_mask"][i].sum())
        hidden, logit = reference_oscar(
            original,
            batch["input_ids"][i, :t],
            batch["token_type_ids"][i, :t],
            batch["visual_feats"][i, :n],
            batch["visual_boxes"][i, :n],
        )
        assert abs(float(logits[i]) - float(logit)) <= 1e-5
        assert (encoded.text_hidden[i, :t] - hidden[:t]).abs().max() <= 1e-5
        assert (encoded.visual_hidden[i, :n] - hidden[t:]).abs().max() <= 1e-5


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------
def test_named_configs():
    large = get_config("oscar-large")
    assert bert_sizes(large) == (1024, 24, 16, 4096)
    assert large.vocab_size == 30522 and large.tokenizer == "bert-large-uncased"
    assert large.hidden_dropout_prob == 0.3 and large.attention_probs_dropout_prob == 0.1  # vilio's BertO
    assert large.object_tags is False
    base = get_config("oscar-base")
    assert (base.hidden_size, base.num_hidden_layers) == (768, 12)
    assert tiny(visual_feat_dim=100).img_embedding.weight.shape == (64, 104)


def test_processor_batch_scores_and_boxes_are_xyxy():
    model = tiny()
    records = make_records([4, 2, 6])
    batch = model.build_processor()(MEMES, records)
    assert batch["visual_boxes"].shape == (3, 6, 4)
    np.testing.assert_allclose(
        batch["visual_boxes"][2, 5].numpy(), records[2].boxes[5] / np.array([320, 160, 320, 160]), rtol=1e-6
    )
    assert "labels" not in batch  # meme 3 has no label
    assert batch["token_type_ids"].eq(0).all()
    logits = model(batch)
    assert logits.shape == (3,) and torch.isfinite(logits).all()
    torch.testing.assert_close(model(batch), logits)


def test_text_truncated_to_128_tokens_as_vilio():
    model = tiny()
    long_meme = Meme(9, "img/00009.png", "word " * 300, 0)
    batch = model.build_processor()([long_meme], make_records([2]))
    assert batch["input_ids"].shape == (1, 128)
    assert batch["input_ids"][0, -1] == 102  # [SEP] kept after truncation


def test_finetuned_checkpoint_parity_with_reference(tmp_path):
    model = tiny()
    original = vilio_finetuned(random_state(model, seed=3))
    for key, shape in LITERAL_VILIO_KEYS.items():
        assert tuple(original[key].shape) == shape, key
    assert_vilio_finetuned_loads_exactly(model, original, tmp_path / "LASTtrain.pth")
    check_parity(model, original, model.build_processor()(MEMES, make_records([4, 2, 6], seed=5)))


def test_oscar_release_slices_img_embedding_to_feature_plus_four_columns(tmp_path):
    model = tiny()
    original = oscar_release(random_state(model, seed=6))
    for key, shape in LITERAL_RELEASE_KEYS.items():
        assert tuple(original[key].shape) == shape, key
    torch.save(original, tmp_path / "pytorch_model.bin")
    missing, unexpected = model.load_original(tmp_path)
    assert missing == VILIO_CLASSIFIER_KEYS
    assert sorted(unexpected) == sorted(k for k in original if k.startswith("cls."))
    own = model.state_dict()
    torch.testing.assert_close(
        own["img_embedding.weight"], original["bert.img_embedding.weight"][:, : FEAT_DIM + 4]
    )
    for key, value in original.items():
        if key.startswith("bert.") and key != "bert.img_embedding.weight":
            torch.testing.assert_close(own[key.removeprefix("bert.")], value, rtol=0, atol=0)


def test_vilio_task_pretrained_checkpoint_and_image_layernorm(tmp_path):
    model = tiny()
    original = vilio_pretrained(random_state(model, seed=7))
    original["bert.LayerNorm.weight"] = torch.full((HIDDEN,), 2.0)  # OSCAR's optional image LayerNorm
    original["bert.LayerNorm.bias"] = torch.full((HIDDEN,), 0.5)
    torch.save(original, tmp_path / "LAST_BO.pth")
    _, unexpected = model.load_original(tmp_path / "LAST_BO.pth")
    assert {"LayerNorm.weight", "LayerNorm.bias", "embeddings.position_ids"} <= set(unexpected)
    torch.testing.assert_close(model.img_embedding.weight.detach(), original["bert.img_embedding.weight"])

    with_norm = tiny(use_img_layernorm=True)
    _, unexpected = with_norm.load_original(tmp_path / "LAST_BO.pth")
    assert "LayerNorm.weight" not in unexpected
    assert with_norm.LayerNorm.weight.eq(2.0).all() and with_norm.LayerNorm.bias.eq(0.5).all()
    # the LayerNorm is applied: identical backbone weights, different region states
    batch = model.build_processor()(MEMES[:1], make_records([3]))
    assert not torch.allclose(with_norm.encode(batch).visual_hidden, model.encode(batch).visual_hidden)


def test_unexplained_keys_and_wrong_widths_fail(tmp_path):
    model = tiny()
    original = oscar_release(random_state(model, seed=8))
    original["bert.img_projection.weight"] = torch.zeros(2, 2)
    torch.save(original, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="img_projection.weight"):
        model.load_original(tmp_path / "pytorch_model.bin")

    original = oscar_release(random_state(model, seed=8))
    original["bert.img_embedding.weight"] = torch.zeros(HIDDEN, FEAT_DIM + 5)
    torch.save(original, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="img_embedding.weight"):
        model.load_original(tmp_path / "pytorch_model.bin")

    finetuned = vilio_finetuned(random_state(model, seed=9))
    del finetuned["classifier.3.bias"]
    torch.save(finetuned, tmp_path / "LASTtrain.pth")
    with pytest.raises(CheckpointError, match=r"classifier\.3\.bias"):
        model.load_original(tmp_path / "LASTtrain.pth")

    (tmp_path / "two").mkdir()
    torch.save(finetuned, tmp_path / "two" / "a.pt")
    torch.save(finetuned, tmp_path / "two" / "b.pt")
    with pytest.raises(CheckpointError, match="a.pt"):
        model.load_original(tmp_path / "two")


def test_object_tags_become_second_segment(tmp_path):
    vocab = tmp_path / "objects_vocab.txt"
    vocab.write_text("cat,kitty\ndog\ntree\n")
    model = tiny(object_tags=True, object_tag_vocab=str(vocab))
    processor = model.build_processor()
    memes = [Meme(1, "img/00001.png", "hello  world", 0), Meme(2, "img/00002.png", "hello", 1)]
    records = make_records([3, 2], object_ids=[[1, 0, 2], [2, 2]])
    batch = processor(memes, records)
    tok = processor.tokenizer
    first = tok.convert_tokens_to_ids(["[CLS]", "hello", "world", "[SEP]", "dog", "cat", "tree", "[SEP]"])
    second = tok.convert_tokens_to_ids(["[CLS]", "hello", "[SEP]", "tree", "tree", "[SEP]"]) + [0, 0]
    assert batch["input_ids"].tolist() == [first, second]
    assert batch["token_type_ids"].tolist() == [[0, 0, 0, 0, 1, 1, 1, 1], [0, 0, 0, 1, 1, 1, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1] * 8, [1] * 6 + [0, 0]]

    original = vilio_finetuned(random_state(model, seed=10))
    torch.save(original, tmp_path / "LASTtrain.pth")
    model.load_original(tmp_path / "LASTtrain.pth")
    check_parity(model, original, batch)  # segment-1 tag embeddings reach the encoder

    # off by default (vilio): the same records give plain text
    plain = tiny().build_processor()(memes, records)
    assert plain["input_ids"][1].tolist()[:3] == tok.convert_tokens_to_ids(["[CLS]", "hello", "[SEP]"])
    assert plain["input_ids"].shape == (2, 4)

    bad = make_records([1], object_ids=[[7]])
    with pytest.raises(ConfigError, match="meme 1"):
        processor(memes[:1], bad)
