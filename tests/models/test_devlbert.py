"""DeVLBERT: original checkpoint layouts, a plain reference forward, processor -> model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from two_stream_sizes import odd_two_stream_sizes

from memeguard.data.meme import Meme
from memeguard.errors import CheckpointError, ConfigError
from memeguard.features.record import RegionRecord
from memeguard.models.base import MemeModel
from memeguard.models.devlbert import DevlbertConfig, DevlbertModel
from memeguard.models.registry import create_model, get_config

# Distinct widths so that a transposed or misplaced tensor cannot have the right shape.
ODD_SIZES = odd_two_stream_sizes("bi", vocab_size=50, max_position_embeddings=40)

# Names as they appear in DeVLBERT's pytorch_model_11.bin / vilio's LASTtrain.pth (written out by hand).
LITERAL_ORIGINAL_KEYS = [
    "bert.embeddings.word_embeddings.weight",
    "bert.embeddings.token_type_embeddings.weight",
    "bert.embeddings.LayerNorm.weight",
    "bert.v_embeddings.image_embeddings.weight",
    "bert.v_embeddings.image_location_embeddings.bias",
    "bert.v_embeddings.LayerNorm.bias",
    "bert.encoder.layer.0.attention.self.query.weight",
    "bert.encoder.layer.2.output.LayerNorm.bias",
    "bert.encoder.v_layer.1.attention.output.dense.weight",
    "bert.encoder.v_layer.0.intermediate.dense.bias",
    "bert.encoder.c_layer.0.biattention.query1.weight",
    "bert.encoder.c_layer.1.biattention.value2.bias",
    "bert.encoder.c_layer.0.biOutput.dense1.weight",
    "bert.encoder.c_layer.1.biOutput.LayerNorm2.weight",
    "bert.encoder.c_layer.0.v_intermediate.dense.weight",
    "bert.encoder.c_layer.0.v_output.LayerNorm.bias",
    "bert.encoder.c_layer.1.t_intermediate.dense.bias",
    "bert.encoder.c_layer.1.t_output.dense.weight",
    "bert.t_pooler.dense.weight",
    "bert.v_pooler.dense.bias",
    "vil_prediction.main.0.weight_g",
    "vil_prediction.main.0.weight_v",
    "vil_prediction.main.3.bias",
]
LITERAL_SHAPES = {
    "bert.encoder.c_layer.0.biattention.query1.weight": (40, 48),
    "bert.encoder.c_layer.0.biattention.key2.weight": (40, 32),
    "bert.encoder.c_layer.0.biOutput.dense1.weight": (48, 40),
    "bert.encoder.c_layer.0.biOutput.dense2.weight": (32, 40),
    "bert.encoder.c_layer.0.v_intermediate.dense.weight": (72, 48),
    "bert.encoder.c_layer.0.t_intermediate.dense.weight": (56, 32),
    "bert.t_pooler.dense.weight": (40, 32),
    "bert.v_pooler.dense.weight": (40, 48),
    "vil_prediction.main.0.weight_g": (),
    "vil_prediction.main.0.weight_v": (80, 40),
    "vil_prediction.main.3.weight_v": (2, 80),
}


def odd_model() -> DevlbertModel:
    torch.manual_seed(0)
    return DevlbertModel(DevlbertConfig(**ODD_SIZES)).eval()


def random_original_state(model: DevlbertModel, seed: int = 1) -> dict[str, torch.Tensor]:
    """Random tensors under the original key names (ours, with the release's 5-column location weight)."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, tensor in model.state_dict().items():
        shape = tuple(tensor.shape)
        if key == "bert.v_embeddings.image_location_embeddings.weight":
            shape = (shape[0], 5)
        state[key] = torch.randn(shape, generator=gen) * 0.2
        if "LayerNorm" in key and key.endswith("weight"):  # realistic gains keep the streams informative
            state[key] = 1.0 + state[key]
    for layer in ("vil_prediction.main.0", "vil_prediction.main.3"):  # |W| ~ |v|: an informative head
        state[layer + ".weight_g"] = state[layer + ".weight_v"].norm() * (0.5 + torch.rand((), generator=gen))
    return state


def random_batch(config: DevlbertConfig, seed: int = 3) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, config.vocab_size, (3, 7), generator=gen)
    text_mask = torch.ones(3, 7, dtype=torch.long)
    text_mask[1, 5:] = 0
    text_mask[2, 3:] = 0
    ids = ids * text_mask
    vis_mask = torch.ones(3, 5, dtype=torch.long)
    vis_mask[2, 4:] = 0
    return {
        "input_ids": ids,
        "attention_mask": text_mask,
        "token_type_ids": torch.zeros_like(ids),
        "visual_feats": torch.randn(3, 5, config.visual_feat_dim, generator=gen),
        "visual_boxes": torch.rand(3, 5, config.num_locations, generator=gen),
        "visual_mask": vis_mask,
    }


# ---------------------------------------------------------------------------------------------
# Reference forward written from vilio's modeling_bertD.py, on the original-layout state dict
# ---------------------------------------------------------------------------------------------


def reference_forward(
    sd: dict[str, torch.Tensor], cfg: DevlbertConfig, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(text states, fused pooled vector, hateful logit) of vilio's BertD in eval mode."""

    def lin(x, p):
        return x @ sd[p + ".weight"].T + sd[p + ".bias"]

    def ln(x, p):  # TF-style LayerNorm, epsilon inside the square root
        u = x.mean(-1, keepdim=True)
        s = (x - u).pow(2).mean(-1, keepdim=True)
        return sd[p + ".weight"] * (x - u) / torch.sqrt(s + 1e-12) + sd[p + ".bias"]

    def gelu(x):
        return x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))

    def attend(q, k, v, mask, heads):
        b, lq, width = q.shape
        d = width // heads

        def split(t):
            return t.view(b, t.shape[1], heads, d).permute(0, 2, 1, 3)

        scores = split(q) @ split(k).transpose(-1, -2) / math.sqrt(d) + mask
        probs = torch.softmax(scores, dim=-1)
        return (probs @ split(v)).permute(0, 2, 1, 3).reshape(b, lq, width)

    def attend_proj(q_in, kv_in, q, k, v, mask, heads):
        """Attention of ``q_in``'s projection ``q`` over ``kv_in``'s projections ``k`` and ``v``."""
        return attend(lin(q_in, q), lin(kv_in, k), lin(kv_in, v), mask, heads)

    def ffn(x, inner, outer, norm):
        return ln(lin(gelu(lin(x, inner)), outer) + x, norm)

    def layer(x, p, mask, heads):
        s = p + ".attention.self."
        a = attend_proj(x, x, s + "query", s + "key", s + "value", mask, heads)
        a = ln(lin(a, p + ".attention.output.dense") + x, p + ".attention.output.LayerNorm")
        return ffn(a, p + ".intermediate.dense", p + ".output.dense", p + ".output.LayerNorm")

    def co_layer(vis, vmask, txt, tmask, p):
        b, heads = p + ".biattention", cfg.bi_num_attention_heads
        ctx1 = attend_proj(txt, vis, b + ".query2", b + ".key1", b + ".value1", vmask, heads)  # text-length
        ctx2 = attend_proj(vis, txt, b + ".query1", b + ".key2", b + ".value2", tmask, heads)  # vision-length
        vis = ln(lin(ctx2, p + ".biOutput.dense1") + vis, p + ".biOutput.LayerNorm1")
        txt = ln(lin(ctx1, p + ".biOutput.dense2") + txt, p + ".biOutput.LayerNorm2")
        vis = ffn(vis, p + ".v_intermediate.dense", p + ".v_output.dense", p + ".v_output.LayerNorm")
        txt = ffn(txt, p + ".t_intermediate.dense", p + ".t_output.dense", p + ".t_output.LayerNorm")
        return vis, txt

    def wn_lin(x, p):
        v, g = sd[p + ".weight_v"], sd[p + ".weight_g"]
        return x @ (g * v / torch.sqrt((v * v).sum())).T + sd[p + ".bias"]

    ids = batch["input_ids"]
    tmask = (1.0 - batch["attention_mask"][:, None, None, :].float()) * -10000.0
    vmask = (1.0 - batch["visual_mask"][:, None, None, :].float()) * -10000.0
    pos = torch.arange(ids.shape[1])[None].expand_as(ids)
    e = "bert.embeddings."
    txt = (
        sd[e + "word_embeddings.weight"][ids]
        + sd[e + "position_embeddings.weight"][pos]
        + sd[e + "token_type_embeddings.weight"][batch["token_type_ids"]]
    )
    txt = ln(txt, e + "LayerNorm")
    ve = "bert.v_embeddings."
    loc_w = sd[ve + "image_location_embeddings.weight"][:, : cfg.num_locations]  # vilio's slice
    vis = (
        lin(batch["visual_feats"], ve + "image_embeddings")
        + batch["visual_boxes"] @ loc_w.T
        + sd[ve + "image_location_embeddings.bias"]
    )
    vis = ln(vis, ve + "LayerNorm")
    v_start = t_start = 0
    for k, (v_end, t_end) in enumerate(zip(cfg.v_biattention_id, cfg.t_biattention_id, strict=True)):
        for i in range(v_start, v_end):
            vis = layer(vis, f"bert.encoder.v_layer.{i}", vmask, cfg.v_num_attention_heads)
        for i in range(t_start, t_end):
            txt = layer(txt, f"bert.encoder.layer.{i}", tmask, cfg.num_attention_heads)
        vis, txt = co_layer(vis, vmask, txt, tmask, f"bert.encoder.c_layer.{k}")
        v_start, t_start = v_end, t_end
    for i in range(v_start, cfg.v_num_hidden_layers):
        vis = layer(vis, f"bert.encoder.v_layer.{i}", vmask, cfg.v_num_attention_heads)
    for i in range(t_start, cfg.num_hidden_layers):
        txt = layer(txt, f"bert.encoder.layer.{i}", tmask, cfg.num_attention_heads)
    pooled = torch.relu(lin(txt[:, 0], "bert.t_pooler.dense")) * torch.relu(
        lin(vis[:, 0], "bert.v_pooler.dense")
    )
    hidden = torch.relu(wn_lin(pooled, "vil_prediction.main.0"))
    logits = wn_lin(hidden, "vil_prediction.main.3")
    return txt, pooled, logits[:, 1] - logits[:, 0]


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------


def test_literal_original_names_and_shapes_exist() -> None:
    own = odd_model().state_dict()
    missing = [key for key in LITERAL_ORIGINAL_KEYS if key not in own]
    assert missing == []
    for key, shape in LITERAL_SHAPES.items():
        assert tuple(own[key].shape) == shape, key


def test_pretrained_release_loads_with_location_slice(tmp_path) -> None:
    model = odd_model()
    state = random_original_state(model)
    extras = {
        "cls.predictions.bias": torch.zeros(50),
        "cls.predictions.decoder.weight": state["bert.embeddings.word_embeddings.weight"],
        "cls.bi_seq_relationship.weight": torch.zeros(2, 40),
        "cls.imagePredictions.decoder.weight": torch.zeros(1601, 48),
        "causal_v.Wy.weight": torch.zeros(48, 48),
        "causal_t2v.t2v.bias": torch.zeros(32),
    }
    original = {k: v for k, v in state.items() if not k.startswith("vil_prediction.")} | extras
    path = tmp_path / "pytorch_model_11.bin"
    torch.save({"module." + k: v for k, v in original.items()}, path)

    missing, unexpected = model.load_original(path)

    assert missing == sorted(k for k in state if k.startswith("vil_prediction."))
    assert unexpected == sorted(extras)
    own = model.state_dict()
    for key, value in original.items():
        if key in extras:
            continue
        expected = value[:, :4] if key == "bert.v_embeddings.image_location_embeddings.weight" else value
        assert torch.equal(own[key], expected), key
    assert own["bert.v_embeddings.image_location_embeddings.weight"].shape == (48, 4)


def test_vilio_finetuned_checkpoint_loads_and_matches_reference(tmp_path) -> None:
    model = odd_model()
    cfg = model.config
    state = random_original_state(model, seed=5)
    location = "bert.v_embeddings.image_location_embeddings.weight"
    state[location] = state[location][:, :4].contiguous()  # vilio saved the sliced model
    unused = {
        "classifier.0.weight": torch.zeros(64, 32),
        "classifier.0.bias": torch.zeros(64),
        "classifier.2.weight": torch.ones(64),
        "classifier.2.bias": torch.zeros(64),
        "classifier.3.weight": torch.zeros(2, 64),
        "classifier.3.bias": torch.zeros(2),
    }
    path = tmp_path / "LASTtrain.pth"
    torch.save({"model." + k: v for k, v in state.items()} | unused, path)

    missing, unexpected = model.load_original(path)

    assert missing == []
    assert unexpected == sorted(unused)
    own = model.state_dict()
    for key, value in state.items():
        assert torch.equal(own[key], value), key
    batch = random_batch(cfg)
    with torch.no_grad():
        ours = model(batch)
        encoded = model.encode(batch)
        text, pooled, expected = reference_forward(state, cfg, batch)
    assert ours.shape == (3,)
    assert torch.max(torch.abs(ours - expected)).item() <= 1e-5
    assert torch.max(torch.abs(encoded.pooled - pooled)).item() <= 1e-5
    valid = batch["attention_mask"].bool()
    assert torch.max(torch.abs(encoded.text_hidden[valid] - text[valid])).item() <= 1e-5
    # The comparison is informative: the memes get clearly different scores.
    assert expected.std().item() > 1e-2, expected


def test_unexplained_key_fails_listing_it(tmp_path) -> None:
    model = odd_model()
    state = random_original_state(model)
    state["bert.encoder.layer.0.attention.self.rotary.weight"] = torch.zeros(2)
    path = tmp_path / "pytorch_model_11.bin"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="rotary"):
        model.load_original(path)


def test_missing_backbone_key_fails(tmp_path) -> None:
    model = odd_model()
    state = random_original_state(model)
    state["bert.v_embeddings.image_location_embeddings.weight"] = torch.zeros(48, 4)
    del state["bert.encoder.c_layer.1.biattention.key1.weight"]
    path = tmp_path / "LASTtrain.pth"
    torch.save({"model." + k: v for k, v in state.items()}, path)
    with pytest.raises(CheckpointError, match="c_layer.1.biattention.key1.weight"):
        model.load_original(path)


def test_unknown_layout_fails(tmp_path) -> None:
    path = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="not a DeVLBERT checkpoint"):
        odd_model().load_original(path)


def test_weight_norm_head_matches_definition() -> None:
    head = odd_model().vil_prediction.main[0]
    expected = head.weight_g * head.weight_v / head.weight_v.norm()
    assert torch.allclose(head.weight, expected)
    # g initialised to ||v||: the effective weight equals v at init (as torch's weight_norm).
    fresh = create_model("devlbert-tiny").vil_prediction.main[3]
    assert torch.allclose(fresh.weight, fresh.weight_v, atol=1e-6)


def test_processor_batch_scores_with_tiny_model() -> None:
    torch.manual_seed(0)
    model = create_model("devlbert-tiny", visual_feat_dim=32).eval()
    processor = model.build_processor()
    rng = np.random.default_rng(0)
    memes = [Meme(1, "img/00001.png", "a   cat  on a mat", 1), Meme(2, "img/00002.png", "hello", 0)]
    regions = [
        RegionRecord(
            1,
            rng.normal(size=(4, 32)).astype(np.float32),
            np.array([[0, 0, 50, 40], [10, 10, 100, 80], [5, 5, 20, 20], [0, 0, 200, 100]], np.float32),
            (100, 200),
        ),
        RegionRecord(
            2,
            rng.normal(size=(2, 32)).astype(np.float32),
            np.array([[0, 0, 10, 10], [20, 30, 40, 50]], np.float32),
            (50, 60),
        ),
    ]
    batch = processor(memes, regions)
    assert batch["visual_feats"].shape == (2, 4, 32)
    assert batch["visual_boxes"].shape == (2, 4, 4)
    assert torch.allclose(batch["visual_boxes"][0, 1], torch.tensor([0.05, 0.1, 0.5, 0.8]))
    assert batch["visual_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert (
        batch["input_ids"][0, 0].item() == 101
        and (batch["input_ids"][1, :3] == torch.tensor([101, 7592, 102])).all()
    )
    logits = model(batch)
    assert logits.shape == (2,) and torch.isfinite(logits).all()
    # Padding regions must not change a meme's score: score meme 2 alone.
    alone = model(processor(memes[1:], regions[1:]))
    assert torch.allclose(alone, logits[1:], atol=1e-5)


def test_five_location_columns_use_area() -> None:
    model = create_model("devlbert-tiny", visual_feat_dim=8, num_locations=5)
    processor = model.build_processor()
    record = RegionRecord(1, np.ones((1, 8), np.float32), np.array([[0, 0, 50, 25]], np.float32), (100, 100))
    batch = processor([Meme(1, "img/00001.png", "x")], [record])
    assert torch.allclose(batch["visual_boxes"][0, 0], torch.tensor([0.0, 0.0, 0.5, 0.25, 0.125]))
    assert "labels" not in batch


def test_registered_sizes_and_roundtrip(tmp_path) -> None:
    base = get_config("devlbert-base")
    assert (base.hidden_size, base.num_hidden_layers, base.v_hidden_size, base.v_num_hidden_layers) == (
        768,
        12,
        1024,
        6,
    )
    assert (base.bi_hidden_size, base.bi_num_attention_heads, base.v_intermediate_size) == (1024, 8, 1024)
    assert base.t_biattention_id == [6, 7, 8, 9, 10, 11] and base.num_locations == 4
    model = create_model("devlbert-tiny", visual_feat_dim=16).eval()
    model.save_pretrained(tmp_path / "m")
    again = MemeModel.from_pretrained(tmp_path / "m")
    assert isinstance(again, DevlbertModel)
    for key, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key


def test_bad_config_rejected() -> None:
    with pytest.raises(ConfigError):
        DevlbertConfig(t_biattention_id=[6, 7, 8, 9, 10, 12])
    with pytest.raises(ConfigError):
        DevlbertConfig(num_locations=7)
