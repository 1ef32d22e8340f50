"""BUTD extractor: original weight layouts, the fixed-number box selection, outputs, determinism."""

from __future__ import annotations

import itertools
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from memeguard.errors import CheckpointError, ConfigError, UnsafePickleError
from memeguard.features.butd import ButdExtractor, parse_variant, read_butd_state_dict
from memeguard.features.butd_model import ButdConfig, fixed_number_select, resized_shape
from memeguard.features.extractor import Extractor

# ---------------------------------------------------------------------------------------------
# The original state-dict layout, written out independently of the model code: detectron2 names
# of the VG R101-C4 model (py-bottom-up-attention configs/VG-Detection/*_caffemaxpool.yaml).
# ---------------------------------------------------------------------------------------------

REAL = dict(blocks=(3, 4, 23, 3), stem=64, bottleneck=64, res2=256, rpn_hidden=512, classes=1600, attrs=400)
TINY = dict(blocks=(1, 1, 2, 1), stem=8, bottleneck=8, res2=32, rpn_hidden=16, classes=20, attrs=6)


def d2_layout(blocks, stem, bottleneck, res2, rpn_hidden, classes, attrs) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}

    def conv_bn(prefix: str, out_ch: int, in_ch: int, k: int) -> None:
        shapes[f"{prefix}.weight"] = (out_ch, in_ch, k, k)
        for buf in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.norm.{buf}"] = (out_ch,)

    conv_bn("backbone.stem.conv1", stem, 3, 7)
    in_ch, bott, out_ch = stem, bottleneck, res2
    for stage, n in zip(
        ("backbone.res2", "backbone.res3", "backbone.res4", "roi_heads.res5"), blocks, strict=True
    ):
        for b in range(n):
            block_in = in_ch if b == 0 else out_ch
            if b == 0:
                conv_bn(f"{stage}.{b}.shortcut", out_ch, in_ch, 1)
            conv_bn(f"{stage}.{b}.conv1", bott, block_in, 1)
            conv_bn(f"{stage}.{b}.conv2", bott, bott, 3)
            conv_bn(f"{stage}.{b}.conv3", out_ch, bott, 1)
        in_ch, bott, out_ch = out_ch, bott * 2, out_ch * 2
    res4, res5 = res2 * 4, res2 * 8
    rpn = "proposal_generator.rpn_head"
    shapes[f"{rpn}.conv.weight"], shapes[f"{rpn}.conv.bias"] = (rpn_hidden, res4, 3, 3), (rpn_hidden,)
    shapes[f"{rpn}.objectness_logits.weight"], shapes[f"{rpn}.objectness_logits.bias"] = (
        (12, rpn_hidden, 1, 1),
        (12,),
    )
    shapes[f"{rpn}.anchor_deltas.weight"], shapes[f"{rpn}.anchor_deltas.bias"] = (48, rpn_hidden, 1, 1), (48,)
    bp = "roi_heads.box_predictor"
    shapes[f"{bp}.cls_score.weight"], shapes[f"{bp}.cls_score.bias"] = (classes + 1, res5), (classes + 1,)
    shapes[f"{bp}.bbox_pred.weight"], shapes[f"{bp}.bbox_pred.bias"] = (classes * 4, res5), (classes * 4,)
    if attrs:
        shapes[f"{bp}.cls_embedding.weight"] = (classes + 1, res5 // 8)
        shapes[f"{bp}.fc_attr.weight"], shapes[f"{bp}.fc_attr.bias"] = (
            (res5 // 4, res5 + res5 // 8),
            (res5 // 4,),
        )
        shapes[f"{bp}.attr_score.weight"], shapes[f"{bp}.attr_score.bias"] = (
            (attrs + 1, res5 // 4),
            (attrs + 1,),
        )
    return shapes


def random_state(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, np.ndarray]:
    """Plausible random weights: unit FrozenBN, He-scaled convs, so a forward pass stays finite."""
    rng = np.random.default_rng(seed)
    state = {}
    for key, shape in shapes.items():
        if key.endswith(("norm.weight", "norm.running_var")):
            state[key] = np.ones(shape, np.float32)
        elif key.endswith(("norm.bias", "norm.running_mean")) or key.endswith(".bias"):
            state[key] = np.zeros(shape, np.float32)
        else:
            fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
            state[key] = rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(1.0 / fan_in))
    return state


def write_d2_pkl(path, state: dict[str, np.ndarray]) -> None:
    """The form of faster_rcnn_from_caffe{_attr}.pkl: a detectron2 checkpoint dict of numpy arrays."""
    with open(path, "wb") as handle:
        pickle.dump({"model": state, "__author__": "airsplay"}, handle, protocol=pickle.HIGHEST_PROTOCOL)


def hf_state(state: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """unc-nlp/frcnn-vg-finetuned's pytorch_model.bin: BatchNorm counters and the anchor table too."""
    out = {k: torch.from_numpy(v) for k, v in state.items()}
    for key in list(out):
        if key.endswith(".norm.running_var"):
            out[key.replace("running_var", "num_batches_tracked")] = torch.tensor(0)
    anchors = []
    for size in (64, 128, 256, 512):
        for ratio in (0.5, 1.0, 2.0):
            w = np.sqrt(size * size / ratio)
            h = ratio * w
            anchors.append([-w / 2, -h / 2, w / 2, h / 2])
    out["proposal_generator.anchor_generator.cell_anchors.0"] = torch.tensor(anchors, dtype=torch.float32)
    return out


def tiny_config(**kw) -> ButdConfig:
    base = dict(
        stage_blocks=TINY["blocks"],
        stem_channels=TINY["stem"],
        bottleneck_channels=TINY["bottleneck"],
        res2_channels=TINY["res2"],
        rpn_hidden_channels=TINY["rpn_hidden"],
        num_classes=TINY["classes"],
        num_attrs=TINY["attrs"],
        min_size=96,
        max_size=160,
    )
    base.update(kw)
    return ButdConfig(**base)


def images(seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [
        Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)),
        Image.fromarray(rng.integers(0, 256, (110, 80, 3), dtype=np.uint8)),
    ]


# ---------------------------------------------------------------------------------------------
# Real-size layouts
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_attr_state() -> dict[str, np.ndarray]:
    return random_state(d2_layout(**REAL))


def test_real_layout_size_matches_the_published_file(real_attr_state):
    # faster_rcnn_from_caffe_attr.pkl downloads as "262MB" (demo_feature_extraction_attr.ipynb).
    total = sum(v.nbytes for v in real_attr_state.values())
    assert 261e6 < total < 263e6


def test_vgattr_pkl_loads_and_runs_at_full_size(tmp_path, real_attr_state):
    path = tmp_path / "faster_rcnn_from_caffe_attr.pkl"
    write_d2_pkl(path, real_attr_state)
    # Inference knobs shrink the work (few proposals, small input); the architecture is the real one.
    config = ButdConfig(min_size=64, max_size=100, rpn_post_nms_topk=4)
    extractor = ButdExtractor(weights=path, box_variants=("3", "2-4"), config=config)
    model_state = extractor.model.state_dict()
    for key in (
        "backbone.res4.22.conv2.weight",
        "roi_heads.box_predictor.attr_score.weight",
        "backbone.stem.conv1.norm.running_var",
    ):
        np.testing.assert_array_equal(model_state[key].numpy(), real_attr_state[key])
    assert extractor.config.stage_blocks == (3, 4, 23, 3) and extractor.config.num_attrs == 400
    out = extractor.extract([images()[0]], [7], ["text"])
    rec = out["3"][0]
    assert rec.features.shape[1] == 2048 and rec.features.dtype == np.float32
    assert np.isfinite(rec.features).all()
    assert rec.object_ids.max() < 1600 and rec.attr_ids.max() < 400
    meta = extractor.meta()
    assert (
        meta["layout"] == "detectron2-pkl"
        and meta["attributes"] is True
        and len(meta["weights_sha256"]) == 64
    )


def test_vg_pkl_without_attribute_head_loads(tmp_path, real_attr_state):
    state = {
        k: v
        for k, v in real_attr_state.items()
        if not k.startswith(
            (
                "roi_heads.box_predictor.cls_embedding",
                "roi_heads.box_predictor.fc_attr",
                "roi_heads.box_predictor.attr_score",
            )
        )
    }
    assert set(state) == set(d2_layout(**{**REAL, "attrs": 0}))
    path = tmp_path / "faster_rcnn_from_caffe.pkl"
    write_d2_pkl(path, state)
    extractor = ButdExtractor(weights=path)
    assert extractor.config.num_attrs == 0
    assert extractor.meta()["attributes"] is False


def test_hf_frcnn_bin_loads(tmp_path, real_attr_state):
    folder = tmp_path / "frcnn-vg-finetuned"
    folder.mkdir()
    torch.save(hf_state(real_attr_state), folder / "pytorch_model.bin")
    extractor = ButdExtractor(weights=folder)
    assert extractor.meta()["layout"] == "hf-frcnn"
    np.testing.assert_array_equal(
        extractor.model.state_dict()["roi_heads.res5.2.conv3.weight"].numpy(),
        real_attr_state["roi_heads.res5.2.conv3.weight"],
    )


# ---------------------------------------------------------------------------------------------
# Key accounting (tiny widths, the same names)
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def tiny_state() -> dict[str, np.ndarray]:
    return random_state(d2_layout(**TINY), seed=1)


def test_missing_key_is_an_error_naming_it(tmp_path, tiny_state):
    del tiny_state["backbone.res3.0.conv2.norm.running_mean"]
    path = tmp_path / "w.pkl"
    write_d2_pkl(path, tiny_state)
    with pytest.raises(CheckpointError, match=r"backbone\.res3\.0\.conv2\.norm\.running_mean"):
        ButdExtractor(weights=path, config=tiny_config())


def test_unexpected_key_is_an_error_naming_it(tmp_path, tiny_state):
    tiny_state["roi_heads.mask_head.predictor.weight"] = np.zeros((2, 2), np.float32)
    path = tmp_path / "w.pkl"
    write_d2_pkl(path, tiny_state)
    with pytest.raises(CheckpointError, match=r"roi_heads\.mask_head\.predictor\.weight"):
        ButdExtractor(weights=path, config=tiny_config())


def test_hf_extra_keys_are_only_the_documented_ones(tmp_path, tiny_state):
    bad = hf_state(tiny_state)
    bad["proposal_generator.anchor_generator.cell_anchors.0"] *= 2  # different anchors -> refuse
    torch.save(bad, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="anchors"):
        ButdExtractor(weights=tmp_path / "pytorch_model.bin", config=tiny_config())


def test_refuses_pickles_with_code(tmp_path):
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as handle:
        pickle.dump({"model": {"x": itertools.count}}, handle)
    with pytest.raises(UnsafePickleError):
        read_butd_state_dict(path)


# ---------------------------------------------------------------------------------------------
# The fixed-number selection against a brute-force reference
# ---------------------------------------------------------------------------------------------


def reference_select(boxes: np.ndarray, scores: np.ndarray, low: int, high: int) -> list[int]:
    def iou(a, b):
        iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = iw * ih
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
        return inter / union

    kept: list[int] = []
    for step in range(7):
        threshold = 0.3 + 0.1 * step
        kept = []
        for i in sorted(range(len(scores)), key=lambda j: -scores[j]):
            if all(iou(boxes[i], boxes[k]) <= threshold for k in kept):
                kept.append(i)
        kept = kept[:high]
        if len(kept) >= low:
            break
    return kept


@pytest.mark.parametrize("low,high", [(36, 36), (10, 100), (5, 8), (50, 50)])
def test_fixed_number_select_matches_brute_force(low, high):
    rng = np.random.default_rng(low * 1000 + high)
    # Clusters of heavily overlapping boxes force the schedule to climb thresholds.
    centres = rng.uniform(50, 550, (6, 2))
    boxes = []
    for c in centres:
        for _ in range(12):
            x, y = c + rng.normal(0, 12, 2)
            w, h = rng.uniform(40, 90, 2)
            boxes.append([x - w / 2, y - h / 2, x + w / 2, y + h / 2])
    boxes_np = np.array(boxes, dtype=np.float32)
    scores_np = rng.permutation(len(boxes)).astype(np.float32) / len(boxes)  # distinct scores
    got = fixed_number_select(torch.from_numpy(boxes_np), torch.from_numpy(scores_np), low, high).tolist()
    assert got == reference_select(boxes_np.astype(np.float64), scores_np, low, high)
    assert len(got) <= high


def test_fixed_number_select_climbs_thresholds():
    # Two boxes with IoU 0.5: kept together only from threshold 0.5 on.
    boxes = torch.tensor([[0.0, 0.0, 30.0, 10.0], [10.0, 0.0, 40.0, 10.0]])
    scores = torch.tensor([0.9, 0.8])
    assert fixed_number_select(boxes, scores, 2, 2).tolist() == [0, 1]
    assert fixed_number_select(boxes, scores, 1, 2).tolist() == [0]


# ---------------------------------------------------------------------------------------------
# Outputs, one pass for all variants, determinism
# ---------------------------------------------------------------------------------------------


def test_variants_parse():
    assert parse_variant("36") == (36, 36) and parse_variant("10-100") == (10, 100)
    with pytest.raises(ConfigError):
        parse_variant("100-10")


def test_resize_rule_matches_detectron2():
    assert resized_shape(90, 120, 600, 1000) == (600, 800)
    assert resized_shape(500, 2000, 600, 1000) == (250, 1000)
    assert resized_shape(333, 333, 600, 1000) == (600, 600)


def test_preprocess_is_bgr_minus_caffe_mean():
    extractor = ButdExtractor(config=tiny_config())
    image = Image.new("RGB", (120, 90), (10, 20, 30))
    batch, sizes = extractor.model.preprocess([image])
    assert sizes == [(96, 128)]
    np.testing.assert_allclose(
        batch[0, :, 5, 5].numpy(), [30 - 102.9801, 20 - 115.9465, 10 - 122.7717], rtol=1e-6
    )


def test_outputs_shapes_dtypes_and_one_pass(monkeypatch):
    extractor = ButdExtractor(config=tiny_config(), box_variants=("36", "50", "10-100"), batch_size=2)
    assert isinstance(extractor, Extractor)
    calls = []
    detect = extractor.model.detect
    monkeypatch.setattr(
        extractor.model,
        "detect",
        lambda imgs, fp16=False, batched=False: calls.append(len(imgs)) or detect(imgs, fp16, batched),
    )
    imgs = images()
    out = extractor.extract(imgs, [11, 12], ["a", "b"])
    assert calls == [2]  # one detector pass for three variants
    assert set(out) == {"36", "50", "10-100"}
    for variant, recs in out.items():
        low, high = parse_variant(variant)
        for rec, img in zip(recs, imgs, strict=True):
            n = rec.num_boxes
            assert n <= high
            assert rec.features.shape == (n, 256) and rec.features.dtype == np.float32
            assert rec.boxes.shape == (n, 4) and rec.boxes.dtype == np.float32
            assert rec.object_ids.dtype == np.int64 and rec.attr_ids.dtype == np.int64
            assert rec.object_conf.dtype == np.float32 and rec.attr_conf.dtype == np.float32
            assert rec.image_size == (img.height, img.width)
            assert (rec.boxes[:, [0, 2]] <= img.width).all() and (rec.boxes[:, [1, 3]] <= img.height).all()
            assert (rec.boxes >= 0).all() and (rec.boxes[:, 2] >= rec.boxes[:, 0]).all()
            assert np.all(np.diff(rec.object_conf) <= 0)  # best first
    assert out["36"][0].num_boxes == 36 and out["50"][0].num_boxes == 50


def test_shared_pass_equals_separate_runs_and_is_deterministic():
    imgs = images(3)
    together = ButdExtractor(config=tiny_config(), box_variants=("36", "10-100")).extract(
        imgs, [1, 2], ["", ""]
    )
    alone = ButdExtractor(config=tiny_config(), box_variants=("10-100",)).extract(imgs, [1, 2], ["", ""])
    again = ButdExtractor(config=tiny_config(), box_variants=("36", "10-100")).extract(imgs, [1, 2], ["", ""])
    for a, b, c in zip(together["10-100"], alone["10-100"], again["10-100"], strict=True):
        np.testing.assert_array_equal(a.features, b.features)
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.features, c.features)
        np.testing.assert_array_equal(a.object_ids, c.object_ids)


def test_vg_weights_give_no_attributes():
    recs = ButdExtractor(config=tiny_config(num_attrs=0)).extract(images()[:1], [1], [""])["36"]
    assert recs[0].attr_ids is None and recs[0].attr_conf is None


def test_fp16_needs_cuda():
    with pytest.raises(ConfigError):
        ButdExtractor(config=tiny_config(), fp16=True, device="cpu")
