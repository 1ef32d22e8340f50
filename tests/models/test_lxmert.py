"""LXMERT: Hugging Face parity, vilio's head, original checkpoint layouts, depth differences, processor."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch
from vl_test_inputs import random_batch as shared_random_batch
from vl_test_inputs import randomize as shared_randomize
from vl_test_inputs import square_region_record

from memeguard.data.meme import Meme
from memeguard.errors import CheckpointError, ConfigError
from memeguard.models import create_model, get_config
from memeguard.models.lxmert import LxmertModel, convert_huggingface

FEAT_DIM = 24
VOCAB = 120
HIDDEN = 64


def tiny(**overrides) -> LxmertModel:
    torch.manual_seed(0)
    # lxmert-tiny has cross layers only; the tests want every stack, so they ask for 2/2/2.
    kwargs = dict(
        visual_feat_dim=FEAT_DIM,
        vocab_size=VOCAB,
        max_position_embeddings=64,
        num_hidden_layers=2,
        r_layers=2,
        x_layers=2,
    )
    return create_model("lxmert-tiny", **{**kwargs, **overrides}).eval()


# LXMERT's norm gains: BERT-style LayerNorms, the visual feature/box layer_norms, the answer head's "2".
LXMERT_NORM_GAINS = ("LayerNorm.weight", "layer_norm.weight", "2.weight")


def randomize(module: torch.nn.Module, seed: int = 1) -> None:
    shared_randomize(module, seed, LXMERT_NORM_GAINS)


# Keyword defaults as before: batch_size=3, text_len=9, regions=6, seed=2.
random_batch = partial(shared_random_batch, VOCAB, FEAT_DIM, text_padding=(1, 5), region_padding=(0, 3))


def hf_model(cls_name: str = "LxmertModel", l_layers: int = 2, r_layers: int = 2, x_layers: int = 2):
    transformers = pytest.importorskip("transformers")
    config = transformers.LxmertConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=64,
        l_layers=l_layers,
        r_layers=r_layers,
        x_layers=x_layers,
        visual_feat_dim=FEAT_DIM,
        visual_pos_dim=4,
        num_qa_labels=3,
        visual_obj_loss=True,
        visual_attr_loss=True,
        visual_feat_loss=True,
    )
    model = getattr(transformers, cls_name)(config).eval()
    randomize(model)
    return model


def hf_forward(hf, batch):
    return hf(
        input_ids=batch["input_ids"],
        visual_feats=batch["visual_feats"],
        visual_pos=batch["visual_boxes"],
        attention_mask=batch["attention_mask"],
        visual_attention_mask=batch["visual_mask"],
        token_type_ids=batch["token_type_ids"],
        return_dict=True,
    )


# -- Hugging Face parity ----------------------------------------------------------------------


def test_matches_huggingface_lxmert_model():
    hf = hf_model()
    ours = tiny()
    missing, unexpected = ours.load_state_dict(convert_huggingface(hf.state_dict()), strict=False)
    assert all(key.startswith("classifier.") for key in missing) and len(missing) == 6
    assert unexpected == []
    batch = random_batch()
    with torch.no_grad():
        expected = hf_forward(hf, batch)
        encoded = ours.encode(batch)
    torch.testing.assert_close(encoded.text_hidden, expected.language_output, atol=1e-5, rtol=0)
    torch.testing.assert_close(encoded.visual_hidden, expected.vision_output, atol=1e-5, rtol=0)
    torch.testing.assert_close(encoded.pooled, expected.pooled_output, atol=1e-5, rtol=0)


def test_cross_attention_is_shared_and_both_directions_matter():
    """One ``visual_attention`` module serves text->regions and regions->text (no second copy)."""
    model = tiny()
    names = [name for name, _ in model.named_parameters() if "x_layers.0." in name and ".att." in name]
    assert sorted({name.split(".att.")[1] for name in names}) == sorted(
        f"{proj}.{kind}" for proj in ("query", "key", "value") for kind in ("weight", "bias")
    )
    batch = random_batch()
    with torch.no_grad():
        before = model.encode(batch)
        other = dict(batch, visual_feats=batch["visual_feats"] + 1.0)
        after = model.encode(other)
    assert not torch.allclose(before.text_hidden, after.text_hidden)  # text sees the regions


def test_head_is_vilio_mlp_on_pooled_output():
    model = tiny()
    randomize(model)
    batch = random_batch()
    c = model.classifier
    assert [name for name, _ in c.named_parameters()] == [
        "0.weight",
        "0.bias",
        "2.weight",
        "2.bias",
        "3.weight",
        "3.bias",
    ]
    assert c[0].weight.shape == (2 * HIDDEN, HIDDEN) and c[3].weight.shape == (2, 2 * HIDDEN)
    with torch.no_grad():
        pooled = model.encode(batch).pooled
        hidden = torch.nn.functional.layer_norm(
            torch.nn.functional.gelu(pooled @ c[0].weight.T + c[0].bias),
            (2 * HIDDEN,),
            c[2].weight,
            c[2].bias,
            1e-12,
        )
        logits = hidden @ c[3].weight.T + c[3].bias
        torch.testing.assert_close(model(batch), logits[:, 1] - logits[:, 0], atol=1e-5, rtol=0)


def test_depths_are_configurable():
    model = create_model("lxmert-tiny", num_hidden_layers=3, r_layers=1, x_layers=4, visual_feat_dim=32)
    encoder = model.bert.encoder
    assert (len(encoder.layer), len(encoder.r_layers), len(encoder.x_layers)) == (3, 1, 4)
    base = get_config("lxmert-base")
    assert (base.num_hidden_layers, base.r_layers, base.x_layers, base.hidden_size) == (12, 2, 5, 768)
    with pytest.raises(ConfigError):
        create_model("lxmert-tiny", visual_pos_dim=5)


# -- original checkpoints ---------------------------------------------------------------------


def epoch18_state(l_layers: int, r_layers: int, x_layers: int, seed: int = 3) -> dict[str, torch.Tensor]:
    """``LXRTPretraining`` under DataParallel, as airsplay's ``Epoch18_LXRT.pth`` (names from HF =
    original)."""
    hf = hf_model("LxmertForPreTraining", l_layers, r_layers, x_layers)
    randomize(hf, seed)
    state = {}
    for key, value in hf.state_dict().items():
        original = key.replace("lxmert.", "bert.", 1) if key.startswith("lxmert.") else key
        state[f"module.{original}"] = value.clone()
    return state


EPOCH18_LITERAL = {
    "module.bert.embeddings.word_embeddings.weight": "bert.embeddings.word_embeddings.weight",
    "module.bert.embeddings.token_type_embeddings.weight": "bert.embeddings.token_type_embeddings.weight",
    "module.bert.encoder.visn_fc.visn_fc.weight": "bert.encoder.visn_fc.visn_fc.weight",
    "module.bert.encoder.visn_fc.box_layer_norm.bias": "bert.encoder.visn_fc.box_layer_norm.bias",
    "module.bert.encoder.layer.1.attention.self.query.weight": (
        "bert.encoder.layer.1.attention.self.query.weight"
    ),
    "module.bert.encoder.r_layers.0.output.LayerNorm.weight": (
        "bert.encoder.r_layers.0.output.LayerNorm.weight"
    ),
    "module.bert.encoder.x_layers.1.visual_attention.att.key.weight": (
        "bert.encoder.x_layers.1.visual_attention.att.key.weight"
    ),
    "module.bert.encoder.x_layers.0.visual_attention.output.dense.bias": (
        "bert.encoder.x_layers.0.visual_attention.output.dense.bias"
    ),
    "module.bert.encoder.x_layers.0.lang_self_att.self.value.weight": (
        "bert.encoder.x_layers.0.lang_self_att.self.value.weight"
    ),
    "module.bert.encoder.x_layers.1.visn_output.LayerNorm.bias": (
        "bert.encoder.x_layers.1.visn_output.LayerNorm.bias"
    ),
    "module.bert.encoder.x_layers.1.lang_inter.dense.weight": (
        "bert.encoder.x_layers.1.lang_inter.dense.weight"
    ),
    "module.bert.pooler.dense.weight": "bert.pooler.dense.weight",
}


def assert_landed(model, file_state, mapping):
    own = model.state_dict()
    for original, ours in mapping.items():
        assert torch.equal(own[ours], file_state[original]), f"{original} did not land in {ours}"


def test_load_epoch18_with_depth_differences(tmp_path):
    """Checkpoint L=2/R=3/X=2 into a model with L=3/R=1/X=2: like Epoch18 (9/5/5) into vilio's 12/2/5."""
    state = epoch18_state(l_layers=2, r_layers=3, x_layers=2)
    assert set(EPOCH18_LITERAL) <= set(state)
    for prefix in (
        "module.cls.predictions.",
        "module.obj_predict_head.decoder_dict.obj.",
        "module.answer_head.",
    ):
        assert any(key.startswith(prefix) for key in state), prefix
    path = tmp_path / "Epoch18_LXRT.pth"
    torch.save(state, path)

    model = tiny(num_hidden_layers=3, r_layers=1)
    layer2_before = model.bert.encoder.layer[2].output.dense.weight.clone()
    missing, unexpected = model.load_original(path)

    assert {key.split(".")[0] for key in missing} == {"bert", "classifier"}
    assert {key for key in missing if key.startswith("bert.")} == {
        key for key in model.state_dict() if key.startswith("bert.encoder.layer.2.")
    }
    assert all(
        key.startswith(("bert.encoder.r_layers.1.", "bert.encoder.r_layers.2.", "cls.", "obj_predict_head."))
        for key in unexpected
    )
    assert any(key.startswith("bert.encoder.r_layers.2.") for key in unexpected)
    assert any(key.startswith("obj_predict_head.") for key in unexpected)
    assert not any("answer" in key for key in unexpected)
    assert_landed(model, state, EPOCH18_LITERAL)
    assert_landed(
        model,
        state,
        {f"module.{key}": key for key in model.state_dict() if f"module.{key}" in state},
    )
    assert torch.equal(model.bert.encoder.layer[2].output.dense.weight, layer2_before)


def test_epoch18_with_a_half_missing_layer_fails(tmp_path):
    state = epoch18_state(2, 2, 2)
    del state["module.bert.encoder.x_layers.1.visn_inter.dense.weight"]
    torch.save(state, tmp_path / "Epoch18_LXRT.pth")
    with pytest.raises(CheckpointError, match="x_layers.1.visn_inter.dense.weight"):
        tiny().load_original(tmp_path / "Epoch18_LXRT.pth")


def bert_checkpoint(model: LxmertModel, layers: int) -> dict[str, torch.Tensor]:
    """An original ``bert-base-uncased`` ``pytorch_model.bin`` at tiny size (TF-style LayerNorm
    gamma/beta)."""
    gen = torch.Generator().manual_seed(11)
    own = model.state_dict()
    state = {}
    for key, value in own.items():
        if key.startswith(("bert.embeddings.", "bert.pooler.")) or (
            key.startswith("bert.encoder.layer.") and int(key.split(".")[3]) < layers
        ):
            original = key.replace("LayerNorm.weight", "LayerNorm.gamma").replace(
                "LayerNorm.bias", "LayerNorm.beta"
            )
            state[original] = torch.randn(value.shape, generator=gen)
    state["cls.predictions.bias"] = torch.randn(VOCAB, generator=gen)
    state["cls.seq_relationship.weight"] = torch.randn(2, HIDDEN, generator=gen)
    return state


def test_bert_then_epoch18_fills_the_layers_the_checkpoint_lacks(tmp_path):
    """vilio's X recipe: bert-base-uncased first, Epoch18 on top; text layers beyond Epoch18 keep BERT's."""
    model = tiny(num_hidden_layers=3)
    bert = bert_checkpoint(model, layers=3)
    literal = {
        "bert.embeddings.LayerNorm.gamma": "bert.embeddings.LayerNorm.weight",
        "bert.encoder.layer.2.attention.output.LayerNorm.beta": (
            "bert.encoder.layer.2.attention.output.LayerNorm.bias"
        ),
        "bert.encoder.layer.2.intermediate.dense.weight": "bert.encoder.layer.2.intermediate.dense.weight",
    }
    assert set(literal) <= set(bert)
    torch.save(bert, tmp_path / "pytorch_model.bin")
    visn_before = model.bert.encoder.visn_fc.visn_fc.weight.clone()
    missing, unexpected = model.load_original(tmp_path / "pytorch_model.bin")
    assert sorted(unexpected) == ["cls.predictions.bias", "cls.seq_relationship.weight"]
    assert any(key.startswith("bert.encoder.x_layers.") for key in missing)
    assert not any(key.startswith(("bert.embeddings.", "bert.encoder.layer.")) for key in missing)
    assert_landed(model, bert, literal)
    assert torch.equal(model.bert.encoder.visn_fc.visn_fc.weight, visn_before)

    epoch18 = epoch18_state(l_layers=2, r_layers=2, x_layers=2)
    torch.save(epoch18, tmp_path / "Epoch18_LXRT.pth")
    model.load_original(tmp_path / "Epoch18_LXRT.pth")
    assert_landed(model, epoch18, EPOCH18_LITERAL)
    assert_landed(
        model,
        bert,
        {"bert.encoder.layer.2.intermediate.dense.weight": "bert.encoder.layer.2.intermediate.dense.weight"},
    )


def vilio_finetuned_state(model: LxmertModel) -> dict[str, torch.Tensor]:
    """``AveragedModel(ModelX).state_dict()``: n_averaged, module.model.bert.*,
    module.classifier.{0,2,3}.*."""
    gen = torch.Generator().manual_seed(7)
    state = {"n_averaged": torch.tensor(12)}
    for key, value in model.state_dict().items():
        prefix = "module.model." if key.startswith("bert.") else "module."
        state[prefix + key] = torch.randn(value.shape, generator=gen)
    state["module.model.bert.embeddings.position_ids"] = torch.arange(64)[None]
    return state


def test_load_vilio_finetuned_swa_strictly(tmp_path):
    model = tiny()
    state = vilio_finetuned_state(model)
    literal = {
        "module.classifier.0.weight": "classifier.0.weight",
        "module.classifier.2.bias": "classifier.2.bias",
        "module.classifier.3.weight": "classifier.3.weight",
        "module.model.bert.encoder.x_layers.0.visn_self_att.output.dense.weight": (
            "bert.encoder.x_layers.0.visn_self_att.output.dense.weight"
        ),
        "module.model.bert.encoder.r_layers.1.intermediate.dense.bias": (
            "bert.encoder.r_layers.1.intermediate.dense.bias"
        ),
        "module.model.bert.pooler.dense.bias": "bert.pooler.dense.bias",
    }
    assert set(literal) <= set(state)
    torch.save(state, tmp_path / "LASTtrain.pth")
    missing, unexpected = model.load_original(tmp_path / "LASTtrain.pth")
    assert missing == [] and unexpected == ["bert.embeddings.position_ids"]
    assert_landed(model, state, literal)
    assert_landed(
        model,
        state,
        {f"module.model.{k}" if k.startswith("bert.") else f"module.{k}": k for k in model.state_dict()},
    )


def test_unexplained_key_fails_listing_it(tmp_path):
    model = tiny()
    state = vilio_finetuned_state(model)
    state["module.model.bert.encoder.extra_fc.weight"] = torch.zeros(2)
    torch.save(state, tmp_path / "LASTtraindev.pth")
    with pytest.raises(CheckpointError, match="bert.encoder.extra_fc.weight"):
        model.load_original(tmp_path / "LASTtraindev.pth")


def test_load_huggingface_folder_matches_hf_outputs(tmp_path):
    hf = hf_model("LxmertForPreTraining")
    hf.save_pretrained(tmp_path)
    model = tiny()
    missing, unexpected = model.load_original(tmp_path)
    assert all(key.startswith("classifier.") for key in missing)
    assert unexpected and all(
        key.startswith(("cls.", "obj_predict_head.", "answer_head.")) for key in unexpected
    )
    batch = random_batch()
    with torch.no_grad():
        expected = hf_forward(hf.lxmert, batch)
        encoded = model.encode(batch)
    torch.testing.assert_close(encoded.pooled, expected.pooled_output, atol=1e-5, rtol=0)
    torch.testing.assert_close(encoded.visual_hidden, expected.vision_output, atol=1e-5, rtol=0)


# -- processor --------------------------------------------------------------------------------


region_record = partial(square_region_record, feat_dim=FEAT_DIM)


def test_processor_batch_scores_and_padding_does_not_change_scores():
    model = tiny(vocab_size=30522)
    processor = model.build_processor()
    memes = [Meme(7, "img/00007.png", "look at  this", None), Meme(8, "img/00008.png", "so true", None)]
    regions = [region_record(7, 2, 0), region_record(8, 4, 1)]
    batch = processor(memes, regions)
    assert "labels" not in batch
    assert batch["visual_boxes"].shape == (2, 4, 4)
    record = regions[0]
    expected_boxes = record.boxes / np.array([200, 150, 200, 150], dtype=np.float32)
    np.testing.assert_allclose(batch["visual_boxes"][0, :2].numpy(), expected_boxes, rtol=1e-6)
    with torch.no_grad():
        together = model(batch)
        alone = model(processor(memes[:1], regions[:1]))
    assert together.shape == (2,) and torch.isfinite(together).all()
    torch.testing.assert_close(together[:1], alone, atol=1e-5, rtol=0)
