"""VisualBERT: Hugging Face parity, vilio's head, original checkpoint layouts, processor batches."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from vl_test_inputs import random_batch as shared_random_batch
from vl_test_inputs import randomize, square_region_record

from memeguard.data.meme import Meme
from memeguard.errors import CheckpointError
from memeguard.models import create_model
from memeguard.models.visualbert import VisualBertModel, convert_huggingface

FEAT_DIM = 24
VOCAB = 120


def tiny(**overrides) -> VisualBertModel:
    torch.manual_seed(0)
    kwargs = dict(visual_feat_dim=FEAT_DIM, vocab_size=VOCAB, max_position_embeddings=64)
    return create_model("visualbert-tiny", **{**kwargs, **overrides}).eval()


# Keyword defaults as before: batch_size=3, text_len=9, regions=6, seed=2.
random_batch = partial(shared_random_batch, VOCAB, FEAT_DIM, text_padding=(1, 6), region_padding=(2, 4))


def hf_model(add_prefix_model: bool = False):
    transformers = pytest.importorskip("transformers")
    config = transformers.VisualBertConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=64,
        visual_embedding_dim=FEAT_DIM,
    )
    cls = transformers.VisualBertForPreTraining if add_prefix_model else transformers.VisualBertModel
    model = cls(config).eval()
    randomize(model)
    return model


def hf_forward(hf, batch):
    return hf(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        token_type_ids=batch["token_type_ids"],
        visual_embeds=batch["visual_feats"],
        visual_attention_mask=batch["visual_mask"],
        output_hidden_states=True,
        return_dict=True,
    )


# -- Hugging Face parity ----------------------------------------------------------------------


def test_matches_huggingface_visualbert_model():
    hf = hf_model()
    ours = tiny()
    missing, unexpected = ours.load_state_dict(convert_huggingface(hf.state_dict()), strict=False)
    assert sorted(missing) == ["classifier.bias", "classifier.weight", "layer_weights"]
    assert unexpected == []
    batch = random_batch()
    with torch.no_grad():
        expected = hf_forward(hf, batch)
        states = ours.bert(batch)
        encoded = ours.encode(batch)
    assert len(states) == len(expected.hidden_states) == 3
    for ours_state, hf_state in zip(states, expected.hidden_states, strict=True):
        torch.testing.assert_close(ours_state, hf_state, atol=1e-5, rtol=0)
    text_len = batch["input_ids"].shape[1]
    torch.testing.assert_close(
        encoded.text_hidden, expected.last_hidden_state[:, :text_len], atol=1e-5, rtol=0
    )
    torch.testing.assert_close(
        encoded.visual_hidden, expected.last_hidden_state[:, text_len:], atol=1e-5, rtol=0
    )
    torch.testing.assert_close(ours.bert.pooler(states[-1]), expected.pooler_output, atol=1e-5, rtol=0)


def test_layer_average_head_matches_independent_computation():
    hf = hf_model()
    ours = tiny()
    ours.load_state_dict(convert_huggingface(hf.state_dict()), strict=False)
    with torch.no_grad():
        ours.layer_weights.copy_(torch.tensor([0.3, -1.0, 2.0]))
        ours.classifier.weight.normal_()
        ours.classifier.bias.normal_()
    batch = random_batch()
    with torch.no_grad():
        cls = torch.stack(
            [state[:, 0] for state in hf_forward(hf, batch).hidden_states], dim=0
        )  # [L+1, B, H]
        weights = torch.exp(ours.layer_weights) / torch.exp(ours.layer_weights).sum()
        pooled = (weights[:, None, None] * cls).sum(0)
        logits = pooled @ ours.classifier.weight.T + ours.classifier.bias
        expected = logits[:, 1] - logits[:, 0]
        torch.testing.assert_close(ours(batch), expected, atol=1e-5, rtol=0)
        # sigmoid of our logit is the original head's softmax[:, 1]
        torch.testing.assert_close(
            ours.predict_proba(batch), torch.softmax(logits, -1)[:, 1], atol=1e-6, rtol=0
        )


def test_layer_weights_init_and_dropout_only_in_training():
    model = tiny()
    assert model.layer_weights.tolist() == [-3.0, -3.0, 0.0]
    batch = random_batch()
    with torch.no_grad():
        assert torch.equal(model(batch), model(batch))
        model.train()
        torch.manual_seed(5)
        first = model(batch)
        second = model(batch)
    assert not torch.allclose(first, second)


def test_mlp_head_reads_pooled_output():
    hf = hf_model()
    model = tiny(head="mlp")
    randomize(model.classifier, seed=9)
    model.load_state_dict(convert_huggingface(hf.state_dict()), strict=False)
    assert [name for name, _ in model.classifier.named_parameters()][:2] == ["0.weight", "0.bias"]
    batch = random_batch()
    with torch.no_grad():
        pooled = hf_forward(hf, batch).pooler_output
        c = model.classifier
        hidden = torch.nn.functional.layer_norm(
            torch.nn.functional.gelu(pooled @ c[0].weight.T + c[0].bias),
            (128,),
            c[2].weight,
            c[2].bias,
            1e-12,
        )
        logits = hidden @ c[3].weight.T + c[3].bias
        torch.testing.assert_close(model(batch), logits[:, 1] - logits[:, 0], atol=1e-5, rtol=0)


# -- original checkpoints ---------------------------------------------------------------------


def backbone_key_to_original(ours: str, prefix: str) -> str:
    """Inverse of the MMF / vilio converters for backbone keys (``bert.x`` -> ``<prefix>x``)."""
    assert ours.startswith("bert.")
    return prefix + ours[len("bert.") :]


def random_like_model(model: VisualBertModel, seed: int = 3) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=gen) for k, v in model.state_dict().items()}


def assert_landed(
    model: VisualBertModel, file_state: dict[str, torch.Tensor], mapping: dict[str, str]
) -> None:
    own = model.state_dict()
    for original, ours in mapping.items():
        assert torch.equal(own[ours], file_state[original]), f"{original} did not land in {ours}"


MMF_LITERAL = {
    "model.bert.embeddings.word_embeddings.weight": "bert.embeddings.word_embeddings.weight",
    "model.bert.embeddings.projection.weight": "bert.embeddings.projection.weight",
    "model.bert.embeddings.token_type_embeddings_visual.weight": (
        "bert.embeddings.token_type_embeddings_visual.weight"
    ),
    "model.bert.embeddings.position_embeddings_visual.weight": (
        "bert.embeddings.position_embeddings_visual.weight"
    ),
    "model.bert.embeddings.LayerNorm.weight": "bert.embeddings.LayerNorm.weight",
    "model.bert.encoder.layer.1.attention.self.query.weight": (
        "bert.encoder.layer.1.attention.self.query.weight"
    ),
    "model.bert.encoder.layer.0.attention.output.LayerNorm.bias": (
        "bert.encoder.layer.0.attention.output.LayerNorm.bias"
    ),
    "model.bert.encoder.layer.1.intermediate.dense.weight": "bert.encoder.layer.1.intermediate.dense.weight",
    "model.bert.encoder.layer.1.output.dense.weight": "bert.encoder.layer.1.output.dense.weight",
    "model.bert.pooler.dense.weight": "bert.pooler.dense.weight",
}


@pytest.mark.parametrize("wrapped", [False, True])
def test_load_mmf_coco_pretrained(tmp_path, wrapped):
    model = tiny()
    source = random_like_model(model)
    state = {
        backbone_key_to_original(k, "model.bert."): v for k, v in source.items() if k.startswith("bert.")
    }
    hidden = 64
    state.update(
        {
            "model.bert.embeddings.position_ids": torch.arange(64)[None],
            "model.cls.predictions.bias": torch.randn(VOCAB),
            "model.cls.predictions.transform.dense.weight": torch.randn(hidden, hidden),
            "model.cls.predictions.transform.dense.bias": torch.randn(hidden),
            "model.cls.predictions.transform.LayerNorm.weight": torch.randn(hidden),
            "model.cls.predictions.transform.LayerNorm.bias": torch.randn(hidden),
            "model.cls.predictions.decoder.weight": torch.randn(VOCAB, hidden),
            "model.cls.seq_relationship.weight": torch.randn(2, hidden),
            "model.cls.seq_relationship.bias": torch.randn(2),
        }
    )
    assert set(MMF_LITERAL) <= set(state)
    path = tmp_path / "model.pth"
    torch.save({"model": state, "optimizer": {"lr": 1e-4}} if wrapped else state, path)

    head_before = model.classifier.weight.clone()
    missing, unexpected = model.load_original(tmp_path if wrapped else path)
    assert sorted(missing) == ["classifier.bias", "classifier.weight", "layer_weights"]
    assert sorted(unexpected) == sorted(
        ["bert.embeddings.position_ids"] + [k for k in state if k.startswith("model.cls.")]
    )
    assert_landed(model, state, MMF_LITERAL)
    assert_landed(
        model, state, {backbone_key_to_original(k, "model.bert."): k for k in source if k.startswith("bert.")}
    )
    assert torch.equal(model.classifier.weight, head_before)


def vilio_finetuned_state(model: VisualBertModel) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``AveragedModel(ModelV).state_dict()``: n_averaged, module.model.* (BertV), module.classifier.*."""
    source = random_like_model(model, seed=4)
    state: dict[str, torch.Tensor] = {"n_averaged": torch.tensor(57)}
    mapping: dict[str, str] = {}
    for key, value in source.items():
        if key.startswith("bert."):
            original = backbone_key_to_original(key, "module.model.")
        elif key == "layer_weights":
            original = "module.model.layer_weights"
        else:
            original = f"module.{key}"
        state[original] = value
        mapping[original] = key
    state["module.model.embeddings.position_ids"] = torch.arange(64)[None]
    return state, mapping


def test_load_vilio_finetuned_swa_strictly(tmp_path):
    model = tiny()
    state, mapping = vilio_finetuned_state(model)
    literal = {
        "module.model.layer_weights": "layer_weights",
        "module.classifier.weight": "classifier.weight",
        "module.classifier.bias": "classifier.bias",
        "module.model.embeddings.projection.bias": "bert.embeddings.projection.bias",
        "module.model.encoder.layer.0.attention.self.value.weight": (
            "bert.encoder.layer.0.attention.self.value.weight"
        ),
    }
    assert set(literal) <= set(state)
    assert state["module.model.layer_weights"].shape == (3,) and state["module.classifier.weight"].shape == (
        2,
        64,
    )
    torch.save(state, tmp_path / "LASTtrain.pth")
    missing, unexpected = model.load_original(tmp_path / "LASTtrain.pth")
    assert missing == [] and unexpected == ["bert.embeddings.position_ids"]
    assert_landed(model, state, literal)
    assert_landed(model, state, mapping)


def test_vilio_finetuned_missing_key_fails(tmp_path):
    model = tiny()
    state, _ = vilio_finetuned_state(model)
    del state["module.model.encoder.layer.1.output.dense.bias"]
    torch.save(state, tmp_path / "LASTtrain.pth")
    with pytest.raises(CheckpointError, match="bert.encoder.layer.1.output.dense.bias"):
        model.load_original(tmp_path / "LASTtrain.pth")


def test_unexplained_key_fails_listing_it(tmp_path):
    model = tiny()
    state, _ = vilio_finetuned_state(model)
    state["module.model.embeddings.mystery.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "LASTtraindev.pth")
    with pytest.raises(CheckpointError, match="bert.embeddings.mystery.weight"):
        model.load_original(tmp_path / "LASTtraindev.pth")


def test_unknown_layout_fails(tmp_path):
    torch.save({"foo.bar": torch.zeros(2)}, tmp_path / "x.pth")
    with pytest.raises(CheckpointError, match="foo.bar"):
        tiny().load_original(tmp_path / "x.pth")


def test_load_huggingface_pretraining_checkpoint_folder(tmp_path):
    hf = hf_model(add_prefix_model=True)
    hf.save_pretrained(tmp_path)  # model.safetensors with visual_bert.* and cls.* keys
    assert (tmp_path / "model.safetensors").is_file()
    model = tiny()
    missing, unexpected = model.load_original(tmp_path)
    assert sorted(missing) == ["classifier.bias", "classifier.weight", "layer_weights"]
    assert unexpected and all(key.startswith("cls.") for key in unexpected)
    hf_state = hf.state_dict()
    assert_landed(
        model,
        hf_state,
        {
            "visual_bert.embeddings.visual_projection.weight": "bert.embeddings.projection.weight",
            "visual_bert.embeddings.visual_token_type_embeddings.weight": (
                "bert.embeddings.token_type_embeddings_visual.weight"
            ),
            "visual_bert.embeddings.visual_position_embeddings.weight": (
                "bert.embeddings.position_embeddings_visual.weight"
            ),
            "visual_bert.encoder.layer.1.output.LayerNorm.weight": (
                "bert.encoder.layer.1.output.LayerNorm.weight"
            ),
            "visual_bert.pooler.dense.bias": "bert.pooler.dense.bias",
        },
    )
    batch = random_batch()
    with torch.no_grad():
        expected = hf.visual_bert(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            token_type_ids=batch["token_type_ids"],
            visual_embeds=batch["visual_feats"],
            visual_attention_mask=batch["visual_mask"],
        ).last_hidden_state
        torch.testing.assert_close(model.bert(batch)[-1], expected, atol=1e-5, rtol=0)


# -- processor --------------------------------------------------------------------------------


region_record = partial(square_region_record, feat_dim=FEAT_DIM)


def test_processor_batch_scores_and_padding_does_not_change_scores():
    model = tiny(vocab_size=30522)
    processor = model.build_processor()
    memes = [
        Meme(1, "img/00001.png", "a  cat   meme", 0),
        Meme(2, "img/00002.png", "when you  go to the store", 1),
    ]
    regions = [region_record(1, 3, 0), region_record(2, 5, 1)]
    batch = processor(memes, regions)
    assert batch["visual_feats"].shape == (2, 5, FEAT_DIM)
    assert batch["visual_mask"].tolist() == [[1, 1, 1, 0, 0], [1] * 5]
    assert batch["labels"].tolist() == [0.0, 1.0]
    with torch.no_grad():
        together = model(batch)
        alone = model(processor(memes[:1], regions[:1]))
    assert together.shape == (2,) and torch.isfinite(together).all()
    torch.testing.assert_close(together[:1], alone, atol=1e-5, rtol=0)
