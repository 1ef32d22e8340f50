"""ERNIE-ViL: Paddle LoDTensor files byte for byte, params/step_* folders, reference forward, processor."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
import torch
from two_stream_sizes import odd_two_stream_sizes

from memeguard.data.meme import Meme
from memeguard.errors import CheckpointError, ConfigError
from memeguard.features.record import RegionRecord
from memeguard.models.ernie_vil import (
    ErnieVilConfig,
    ErnieVilModel,
    mix_gt_regions,
    paddle_name_map,
    read_paddle_params,
    read_paddle_tensor,
)
from memeguard.models.registry import create_model, get_config

# Distinct widths so that a transposed or misplaced tensor cannot have the right shape.
ODD_SIZES = odd_two_stream_sizes("co", vocab_size=60, max_position_embeddings=30)

# Paddle variable names and [in, out] shapes as the ERNIE-ViL code names them (written by hand).
LITERAL_PADDLE_SHAPES = {
    "word_embedding": (60, 32),
    "pos_embedding": (30, 32),
    "sent_embedding": (4, 32),
    "pre_encoder_layer_norm_scale": (32,),
    "vl_pre_encoder_layer_norm_bias": (48,),
    "image_emb.w_0": (24, 48),
    "image_loc.w_0": (5, 48),
    "image_loc.b_0": (48,),
    "encoder_layer_0_multi_head_att_query_fc.w_0": (32, 32),
    "encoder_layer_2_ffn_fc_0.w_0": (32, 56),
    "encoder_layer_1_ffn_fc_1.w_0": (56, 32),
    "encoder_layer_1_post_att_layer_norm_scale": (32,),
    "encoder_vlayer_1_ffn_fc_0.w_0": (48, 72),
    "encoder_vlayer_0_post_ffn_layer_norm_bias": (48,),
    "encoder_colayer_0_multi_head_att_query_fc.w_0": (32, 40),
    "encoder_colayer_0_multi_head_att_key_fc.w_0": (48, 40),
    "encoder_colayer_0_multi_head_att_value_fc.w_0": (48, 40),
    "encoder_colayer_0_multi_head_att_output_fc.w_0": (40, 32),
    "encoder_colayer_1_vl_multi_head_att_query_fc.w_0": (48, 40),
    "encoder_colayer_1_vl_multi_head_att_key_fc.w_0": (32, 40),
    "encoder_colayer_1_vl_multi_head_att_output_fc.w_0": (40, 48),
    "encoder_colayer_1_vl_multi_head_att_output_fc.b_0": (48,),
    "encoder_colayer_0_post_att_layer_norm_scale": (32,),
    "encoder_colayer_0_vl_post_att_layer_norm_scale": (48,),
    "encoder_colayer_1_ffn_fc_0.w_0": (32, 56),
    "encoder_colayer_1_vl_ffn_fc_1.w_0": (72, 48),
    "encoder_colayer_0_vl_post_ffn_layer_norm_bias": (48,),
    "pooled_fc_text.w_0": (32, 40),
    "pooled_fc_image.w_0": (48, 40),
    "hm_fc.w_0": (40, 1),
    "hm_fc.b_0": (1,),
}


# ---------------------------------------------------------------------------------------------
# An independent writer of Paddle's LoDTensor files
# ---------------------------------------------------------------------------------------------

DTYPE_CODES = {
    np.dtype("float32"): 5,
    np.dtype("int64"): 3,
    np.dtype("float16"): 4,
    np.dtype("float64"): 6,
    np.dtype("int32"): 2,
}


def varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def paddle_bytes(array: np.ndarray, lod: list[list[int]] = (), packed: bool = False) -> bytes:
    desc = varint(1 << 3) + varint(DTYPE_CODES[array.dtype])
    if packed:
        body = b"".join(varint(d) for d in array.shape)
        desc += varint(2 << 3 | 2) + varint(len(body)) + body
    else:
        desc += b"".join(varint(2 << 3) + varint(d) for d in array.shape)
    out = struct.pack("<I", 0) + struct.pack("<Q", len(lod))
    for level in lod:
        out += struct.pack("<Q", 8 * len(level)) + np.asarray(level, dtype="<u8").tobytes()
    out += struct.pack("<I", 0) + struct.pack("<i", len(desc)) + desc
    return out + np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()


def write_params_folder(folder, arrays: dict[str, np.ndarray]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for index, (name, array) in enumerate(arrays.items()):
        (folder / name).write_bytes(paddle_bytes(array, packed=index % 2 == 1))


def odd_model() -> ErnieVilModel:
    torch.manual_seed(0)
    return ErnieVilModel(ErnieVilConfig(**ODD_SIZES)).eval()


def random_paddle_params(model: ErnieVilModel, seed: int = 1, head: bool = True) -> dict[str, np.ndarray]:
    """Random float32 arrays under the Paddle names, in Paddle's [in, out] layout."""
    rng = np.random.default_rng(seed)
    own = model.state_dict()
    arrays = {}
    for paddle, (ours, transpose) in paddle_name_map(model.config).items():
        if not head and paddle.startswith("hm_fc"):
            continue
        shape = tuple(own[ours].shape)[::-1] if transpose else tuple(own[ours].shape)
        array = rng.normal(scale=0.2, size=shape).astype(np.float32)
        if paddle.endswith("layer_norm_scale"):
            array += 1.0
        arrays[paddle] = array
    return arrays


# ---------------------------------------------------------------------------------------------
# Reference forward written from vilio's ernie-vil/model/*.py on the Paddle arrays
# ---------------------------------------------------------------------------------------------


def reference_forward(p: dict[str, np.ndarray], cfg: ErnieVilConfig, batch: dict[str, torch.Tensor]):
    w = {k: torch.from_numpy(v).double() for k, v in p.items()}

    def fc(x, name):
        return x @ w[name + ".w_0"] + w[name + ".b_0"]

    def layer_norm(x, name):
        u = x.mean(-1, keepdim=True)
        var = ((x - u) ** 2).mean(-1, keepdim=True)
        return (x - u) / torch.sqrt(var + 1e-5) * w[name + "_layer_norm_scale"] + w[name + "_layer_norm_bias"]

    def gelu(x):
        return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))

    def mha(queries, keys, bias, heads, name):
        q, k, v = fc(queries, name + "_query_fc"), fc(keys, name + "_key_fc"), fc(keys, name + "_value_fc")
        b, lq, width = q.shape
        d = width // heads

        def split(t):
            return t.reshape(b, t.shape[1], heads, d).permute(0, 2, 1, 3)

        product = (split(q) * d**-0.5) @ split(k).transpose(-1, -2) + bias[:, None]
        out = torch.softmax(product, -1) @ split(v)
        return fc(out.permute(0, 2, 1, 3).reshape(b, lq, width), name + "_output_fc")

    def encoder_layer(x, bias, heads, name):
        att = layer_norm(x + mha(x, x, bias, heads, name + "_multi_head_att"), name + "_post_att")
        ffn = fc(gelu(fc(att, name + "_ffn_fc_0")), name + "_ffn_fc_1")
        return layer_norm(att + ffn, name + "_post_ffn")

    def co_layer(txt, img, vl_bias, name):
        att = mha(txt, img, vl_bias.transpose(1, 2), cfg.co_num_attention_heads, name + "_multi_head_att")
        vl_att = mha(img, txt, vl_bias, cfg.co_num_attention_heads, name + "_vl_multi_head_att")
        att = layer_norm(txt + att, name + "_post_att")
        vl_att = layer_norm(img + vl_att, name + "_vl_post_att")
        out = layer_norm(att + fc(gelu(fc(att, name + "_ffn_fc_0")), name + "_ffn_fc_1"), name + "_post_ffn")
        vl_out = layer_norm(
            vl_att + fc(gelu(fc(vl_att, name + "_vl_ffn_fc_0")), name + "_vl_ffn_fc_1"), name + "_vl_post_ffn"
        )
        return out, vl_out

    ids = batch["input_ids"]
    mask = batch["attention_mask"].double()
    img_mask = batch["visual_mask"].double()
    pos = torch.arange(ids.shape[1])[None] * batch["attention_mask"]  # padded with 0 by the batcher
    emb = w["word_embedding"][ids] + w["pos_embedding"][pos] + w["sent_embedding"][batch["token_type_ids"]]
    emb = layer_norm(emb, "pre_encoder")
    self_bias = (mask[:, :, None] * mask[:, None, :] - 1.0) * 10000.0
    img = fc(batch["visual_feats"].double(), "image_emb") + fc(batch["visual_boxes"].double(), "image_loc")
    img = layer_norm(img, "vl_pre_encoder")
    img_bias = (img_mask[:, :, None] * img_mask[:, None, :] - 1.0) * 10000.0
    vl_bias = (img_mask[:, :, None] * mask[:, None, :] - 1.0) * 10000.0  # [B, N_img, N_txt]

    t_start = v_start = 0
    for block, (v_end, t_end) in enumerate(zip(cfg.v_biattention_id, cfg.t_biattention_id, strict=True)):
        for i in range(t_start, t_end):
            emb = encoder_layer(emb, self_bias, cfg.num_attention_heads, f"encoder_layer_{i}")
        for j in range(v_start, v_end):
            img = encoder_layer(img, img_bias, cfg.v_num_attention_heads, f"encoder_vlayer_{j}")
        emb, img = co_layer(emb, img, vl_bias, f"encoder_colayer_{block}")
        t_start, v_start = t_end, v_end
    emb = encoder_layer(emb, self_bias, cfg.num_attention_heads, f"encoder_layer_{t_start}")
    img = encoder_layer(img, img_bias, cfg.v_num_attention_heads, f"encoder_vlayer_{v_start}")
    fused = torch.relu(fc(emb[:, 0], "pooled_fc_text")) * torch.relu(fc(img[:, 0], "pooled_fc_image"))
    return emb, fused, fc(fused, "hm_fc")[:, 0]


def random_batch(cfg: ErnieVilConfig, seed: int = 2) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    text_mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 3 + [0] * 3])
    ids = torch.randint(1, cfg.vocab_size, (3, 6), generator=gen) * text_mask
    vis_mask = torch.tensor([[1] * 5, [1] * 5, [1] * 3 + [0] * 2])
    return {
        "input_ids": ids,
        "attention_mask": text_mask,
        "token_type_ids": torch.zeros_like(ids),
        "visual_feats": torch.randn(3, 5, cfg.visual_feat_dim, generator=gen),
        "visual_boxes": torch.rand(3, 5, 5, generator=gen),
        "visual_mask": vis_mask,
    }


# ---------------------------------------------------------------------------------------------
# Paddle tensor files
# ---------------------------------------------------------------------------------------------


def test_reader_parses_hand_written_bytes(tmp_path) -> None:
    # float32 [2, 3], no LoD, dims not packed: 08 05 | 10 02 | 10 03
    data = np.arange(6, dtype="<f4")
    raw = bytes.fromhex("0000000000000000000000000000000006000000080510021003") + data.tobytes()
    (tmp_path / "w").write_bytes(raw)
    out = read_paddle_tensor(tmp_path / "w")
    assert out.dtype == np.float32 and out.shape == (2, 3)
    assert out.tolist() == [[0, 1, 2], [3, 4, 5]]
    # int64 [4] with packed dims and one LoD level [0, 2, 4]: 08 03 | 12 01 04
    lod = np.array([0, 2, 4], dtype="<u8").tobytes()
    raw = (
        bytes.fromhex("0000000001000000000000001800000000000000")
        + lod
        + bytes.fromhex("00000000050000000803120104")
        + np.array([7, -1, 3, 9], "<i8").tobytes()
    )
    (tmp_path / "ids").write_bytes(raw)
    assert read_paddle_tensor(tmp_path / "ids").tolist() == [7, -1, 3, 9]


@pytest.mark.parametrize("dtype", ["float32", "float16", "float64", "int64", "int32"])
@pytest.mark.parametrize("packed", [False, True])
def test_reader_roundtrips_independent_writer(tmp_path, dtype, packed) -> None:
    array = (np.random.default_rng(0).normal(size=(3, 200, 2)) * 50).astype(
        dtype
    )  # dims > 127: 2-byte varints
    (tmp_path / "x").write_bytes(paddle_bytes(array, lod=[[0, 1, 3]], packed=packed))
    out = read_paddle_tensor(tmp_path / "x")
    assert out.dtype == np.dtype(dtype) and np.array_equal(out, array)


def test_reader_rejects_truncated_and_bad_files(tmp_path) -> None:
    good = paddle_bytes(np.ones((4, 4), np.float32))
    (tmp_path / "cut").write_bytes(good[:-3])
    with pytest.raises(CheckpointError, match="cut.*truncated"):
        read_paddle_tensor(tmp_path / "cut")
    (tmp_path / "short").write_bytes(good[:10])
    with pytest.raises(CheckpointError, match="short"):
        read_paddle_tensor(tmp_path / "short")
    (tmp_path / "ver").write_bytes(struct.pack("<I", 3) + good[4:])
    with pytest.raises(CheckpointError, match="version 3"):
        read_paddle_tensor(tmp_path / "ver")


def test_read_params_skips_optimizer_state(tmp_path) -> None:
    write_params_folder(
        tmp_path, {"a.w_0": np.ones((2, 2), np.float32), "@LR_DECAY_COUNTER@": np.ones(1, np.int64)}
    )
    (tmp_path / "a.w_0_moment1_0").write_bytes(b"not a tensor")  # never parsed
    (tmp_path / "learning_rate_0").write_bytes(b"")
    out = read_paddle_params(tmp_path)
    assert sorted(out) == ["a.w_0"]
    assert sorted(read_paddle_params(tmp_path, names=["a.w_0", "absent"])) == ["a.w_0"]


# ---------------------------------------------------------------------------------------------
# Folders -> model
# ---------------------------------------------------------------------------------------------


def test_literal_paddle_names_and_shapes() -> None:
    model = odd_model()
    table = paddle_name_map(model.config)
    own = model.state_dict()
    for name, shape in LITERAL_PADDLE_SHAPES.items():
        assert name in table, name
        ours, transpose = table[name]
        assert tuple(own[ours].shape)[:: -1 if transpose else 1] == shape, name
    assert len(table) == len(own)  # every parameter has exactly one Paddle name
    assert len({ours for ours, _ in table.values()}) == len(own)


def test_pretrained_params_folder_loads_every_tensor(tmp_path) -> None:
    model = odd_model()
    arrays = random_paddle_params(model, head=False)
    extras = {
        "mask_lm_trans_fc.w_0": np.zeros((32, 32), np.float32),
        "mask_lm_out_fc.b_0": np.zeros(60, np.float32),
    }
    write_params_folder(tmp_path / "params", arrays | extras)

    missing, unexpected = model.load_original(tmp_path / "params")

    assert missing == ["classifier.bias", "classifier.weight"]
    assert unexpected == sorted(extras)
    own = model.state_dict()
    table = paddle_name_map(model.config)
    for name, array in arrays.items():
        ours, transpose = table[name]
        assert np.array_equal(own[ours].numpy(), array.T if transpose else array), name


def test_finetuned_step_folder_matches_reference_forward(tmp_path) -> None:
    model = odd_model()
    cfg = model.config
    arrays = random_paddle_params(model, seed=7)
    folder = tmp_path / "step_2500train"
    write_params_folder(folder, arrays)
    for name in ("hm_fc.w_0", "word_embedding", "encoder_colayer_1_vl_ffn_fc_1.w_0"):
        (folder / f"{name}_moment1_0").write_bytes(b"garbage: must be skipped")
        (folder / f"{name}_beta2_pow_acc_0").write_bytes(b"")
    (folder / "@LR_DECAY_COUNTER@").write_bytes(paddle_bytes(np.array([2500], np.int64)))
    (folder / "scheduled_learning_rate").write_bytes(paddle_bytes(np.array([1e-5], np.float32)))
    (folder / "reduce_mean_0.tmp_0").write_bytes(paddle_bytes(np.array([0.3], np.float32)))

    missing, unexpected = model.load_original(folder)

    assert missing == [] and unexpected == ["reduce_mean_0.tmp_0"]
    assert np.array_equal(model.classifier.weight.detach().numpy(), arrays["hm_fc.w_0"].T)
    batch = random_batch(cfg)
    with torch.no_grad():
        ours = model(batch)
        encoded = model.encode(batch)
    text, fused, expected = reference_forward(arrays, cfg, batch)
    assert ours.shape == (3,)
    assert torch.max(torch.abs(ours.double() - expected)).item() <= 1e-5
    assert torch.max(torch.abs(encoded.pooled.double() - fused)).item() <= 1e-5
    # Padded rows see every key at -10000 (as Paddle): fp32 rounding there is ~1e-4, so compare valid rows.
    valid = batch["attention_mask"].bool()
    assert torch.max(torch.abs(encoded.text_hidden.double()[valid] - text[valid])).item() <= 1e-5
    assert expected.std().item() > 1e-2, expected


def test_folder_for_another_size_fails_listing_variables(tmp_path) -> None:
    model = odd_model()
    arrays = random_paddle_params(model)
    arrays["encoder_layer_7_ffn_fc_0.w_0"] = np.zeros((32, 56), np.float32)
    write_params_folder(tmp_path / "params", arrays)
    with pytest.raises(CheckpointError, match="encoder_layer_7_ffn_fc_0.w_0"):
        model.load_original(tmp_path / "params")


def test_missing_variable_and_wrong_shape_fail(tmp_path) -> None:
    model = odd_model()
    arrays = random_paddle_params(model)
    del arrays["encoder_colayer_0_vl_multi_head_att_key_fc.w_0"]
    write_params_folder(tmp_path / "a", arrays)
    with pytest.raises(CheckpointError, match=r"encoder.c_layer.0.v_attention.self.key.weight"):
        model.load_original(tmp_path / "a")
    arrays = random_paddle_params(model)
    arrays["image_emb.w_0"] = arrays["image_emb.w_0"].T.copy()  # stored the torch way: wrong
    write_params_folder(tmp_path / "b", arrays)
    with pytest.raises(CheckpointError, match="shape mismatch"):
        model.load_original(tmp_path / "b")


# ---------------------------------------------------------------------------------------------
# Processor
# ---------------------------------------------------------------------------------------------


def test_processor_builds_ernie_layout_and_scores() -> None:
    torch.manual_seed(0)
    model = create_model("ernie-vil-tiny", visual_feat_dim=4).eval()
    processor = model.build_processor()
    features = np.array([[1, 2, 3, 4], [3, 2, 1, 0], [5, 5, 5, 5]], np.float32)
    boxes = np.array([[0, 0, 100, 50], [50, 25, 100, 100], [10, 10, 20, 20]], np.float32)
    memes = [Meme(7, "img/00007.png", "its  a trap", 1), Meme(8, "img/00008.png", "ok", 1)]
    regions = [
        RegionRecord(7, features, boxes, (100, 200)),
        RegionRecord(8, features[:1], boxes[:1], (50, 100)),
    ]
    batch = processor(memes, regions)
    assert batch["visual_feats"].shape == (2, 4, 4)
    assert torch.allclose(batch["visual_feats"][0, 0], torch.tensor([3.0, 3.0, 3.0, 3.0]))  # mean token first
    assert torch.allclose(batch["visual_boxes"][0, 0], torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0]))
    assert torch.allclose(batch["visual_boxes"][0, 1], torch.tensor([0.0, 0.0, 0.5, 0.5, 0.25]))
    assert batch["visual_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert batch["input_ids"][1].tolist()[:3] == [101, 7929, 102] and batch["labels"].tolist() == [1.0, 1.0]
    logits = model(batch)
    assert logits.shape == (2,) and torch.isfinite(logits).all()
    alone = model(processor(memes[1:], regions[1:]))
    assert torch.allclose(alone, logits[1:], atol=1e-5)


def test_gt_mixing_follows_vilio() -> None:
    main_f = np.array([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0], [4.0, 0.0]], np.float32)  # global + 3 boxes
    main_l = np.arange(20, dtype=np.float32).reshape(4, 5)
    gt_f = np.array([[0.0, 9.0], [0.0, 1.0], [0.0, 2.0], [0.0, 3.0], [0.0, 4.0]], np.float32)  # global + 4
    gt_l = 100 + np.arange(25, dtype=np.float32).reshape(5, 5)
    feats, locs = mix_gt_regions((main_f, main_l), (gt_f, gt_l), max_regions=4)
    # global = (4 * [1, 0] + 5 * [0, 9]) / 9; 3 gt boxes fill the rest; main keeps only its global token
    assert np.allclose(feats, [[4 / 9, 5.0], [0, 1], [0, 2], [0, 3]])
    assert np.array_equal(locs, np.concatenate([main_l[:1], gt_l[1:4]]))
    feats, _ = mix_gt_regions((main_f, main_l), (gt_f[:2], gt_l[:2]), max_regions=100)
    assert np.allclose(feats, [[4 / 6, 3.0], [2, 0], [3, 0], [4, 0], [0, 1]])


def test_processor_gt_regions_option() -> None:
    model = create_model("ernie-vil-tiny", visual_feat_dim=2).eval()
    processor = model.build_processor()
    main = RegionRecord(
        1,
        np.array([[2.0, 0.0], [4.0, 0.0]], np.float32),
        np.array([[0, 0, 10, 10], [0, 0, 5, 5]], np.float32),
        (10, 10),
    )
    gt = RegionRecord(1, np.array([[0.0, 6.0]], np.float32), np.array([[0, 0, 10, 5]], np.float32), (10, 10))
    batch = processor([Meme(1, "img/00001.png", "x")], [main], gt_regions=[gt])
    # main global [3, 0] (3 rows), gt global [0, 6] (2 rows): (3*[3,0] + 2*[0,6]) / 5
    assert torch.allclose(
        batch["visual_feats"][0], torch.tensor([[1.8, 2.4], [2.0, 0.0], [4.0, 0.0], [0.0, 6.0]])
    )
    assert torch.allclose(batch["visual_boxes"][0, 3], torch.tensor([0.0, 0.0, 1.0, 0.5, 0.5]))
    assert torch.isfinite(model(batch)).all()
    other = RegionRecord(2, gt.features, gt.boxes, gt.image_size)
    with pytest.raises(ConfigError, match="meme 2"):
        processor([Meme(1, "img/00001.png", "x")], [main], gt_regions=[other])


def test_registered_sizes() -> None:
    base, large = get_config("ernie-vil-base"), get_config("ernie-vil-large")
    assert (base.hidden_size, base.num_hidden_layers, base.intermediate_size, base.v_num_attention_heads) == (
        768,
        12,
        3072,
        8,
    )
    assert base.t_biattention_id == [6, 7, 8, 9, 10, 11] and base.layer_norm_eps == 1e-5
    assert base.type_vocab_size == 4
    assert (large.hidden_size, large.num_hidden_layers, large.intermediate_size) == (1024, 24, 4096)
    assert (large.v_num_attention_heads, large.v_intermediate_size, large.co_num_attention_heads) == (
        16,
        4096,
        16,
    )
    assert large.t_biattention_id == [18, 19, 20, 21, 22, 23]
    with pytest.raises(ConfigError):
        ErnieVilConfig(num_hidden_layers=13)


def test_save_pretrained_roundtrip(tmp_path) -> None:
    from memeguard.models.base import MemeModel

    model = create_model("ernie-vil-tiny", visual_feat_dim=8).eval()
    model.save_pretrained(tmp_path / "m")
    again = MemeModel.from_pretrained(tmp_path / "m")
    assert isinstance(again, ErnieVilModel) and again.config == model.config
    for key, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key
