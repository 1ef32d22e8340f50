"""Heads on CLIP embeddings (clip-concat, Hate-CLIPper align/cross): forward parity against references
written another way, the processor's contract, sizes, save/load, and train + predict from the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from clip_memes import IMAGE_DIM, PROJ_DIM, TEXT_DIM, make_clip_memes, write_clip_dataset, write_clip_store
from typer.testing import CliRunner

from memeguard.data.meme import Meme
from memeguard.errors import CheckpointError, ConfigError, DataError
from memeguard.models.base import MemeModel
from memeguard.models.registry import create_model, get_config


def _memes_and_regions(n: int = 5, seed: int = 7):
    lines, regions = make_clip_memes(n, seed=seed, start_id=100)
    memes = [Meme(id=line["id"], img=line["img"], text=line["text"], label=line["label"]) for line in lines]
    return memes, [regions[m.id] for m in memes]


def _model(name: str, **overrides) -> MemeModel:
    torch.manual_seed(0)
    model = create_model(name, **{"image_dim": IMAGE_DIM, "text_dim": TEXT_DIM, **overrides})
    return model.eval()


def _linear(layer: torch.nn.Linear, x: list[float]) -> list[float]:
    """y = W x + b with Python floats, row by row."""
    w, b = layer.weight.tolist(), layer.bias.tolist()
    rows = zip(w, b, strict=True)
    return [sum(wi * xi for wi, xi in zip(row, x, strict=True)) + bias for row, bias in rows]


def _unit(x: list[float]) -> list[float]:
    norm = math.sqrt(sum(v * v for v in x))
    return [v / norm for v in x]


def _reference_logit(model: MemeModel, image: list[float], text: list[float]) -> float:
    """The head in eval mode, written with loops over Python floats (no tensor op of the model reused)."""
    cfg = model.config
    i = _unit(_linear(model.image_map[0], image))
    t = _unit(_linear(model.text_map[0], text))
    n = cfg.map_dim
    if cfg.fusion == "cross":
        x = [0.0] * (n * n)
        for a in range(n):
            for b in range(n):
                x[a * n + b] = i[a] * t[b]
    elif cfg.fusion == "align":
        x = [i[a] * t[a] for a in range(n)]
    else:
        x = i + t
    linears = [m for m in model.pre_output if isinstance(m, torch.nn.Linear)]
    assert len(linears) == cfg.num_pre_output_layers
    for layer in linears:
        x = [max(0.0, v) for v in _linear(layer, x)]
    return _linear(model.output, x)[0]


@pytest.mark.parametrize("name", ["hateclipper-cross-tiny", "hateclipper-align-tiny", "clip-concat-tiny"])
def test_forward_matches_a_loop_reference(name):
    model = _model(name)
    memes, regions = _memes_and_regions()
    batch = model.build_processor()(memes, regions)
    with torch.no_grad():
        logits = model(batch)
    assert logits.shape == (len(memes),)
    for row, record in enumerate(regions):
        expected = _reference_logit(
            model, record.extras["image_pooled"].tolist(), record.extras["text_pooled"].tolist()
        )
        assert logits[row].item() == pytest.approx(expected, rel=1e-4, abs=1e-5)


def test_the_fusions_have_the_papers_sizes():
    """Parameter counts from the layer sizes (n = map_dim, m = pre-output dim, ViT-L/14 widths 1024/768)."""

    def count(name: str) -> int:
        with torch.device("meta"):
            return sum(p.numel() for p in create_model(name).parameters())

    def expected(fused: int, n: int, layers: int, m: int = 1024) -> int:
        maps = (1024 + 1) * n + (768 + 1) * n
        pre = (fused + 1) * m + (layers - 1) * (m + 1) * m
        return maps + pre + m + 1

    assert count("hateclipper-cross") == expected(1024 * 1024, 1024, 1)  # ~1.08 B: the paper's "~1.1 B"
    assert count("hateclipper-cross") > 1.07e9
    assert count("hateclipper-align") == expected(1024, 1024, 3)  # ~5 M, the paper's figure
    assert count("clip-concat") == expected(2048, 1024, 1)
    assert count("hateclipper-cross-32") == expected(32 * 32, 32, 1, m=32)
    assert get_config("hateclipper-cross").drop_probs == [0.2, 0.4, 0.1]
    for name in ("hateclipper-cross", "hateclipper-align", "clip-concat", "rgcl", "hateclipper-cross-32"):
        assert get_config(name).parameter_count() == count(name)


def test_dropout_is_active_only_in_training():
    model = _model("hateclipper-align-tiny")
    memes, regions = _memes_and_regions()
    batch = model.build_processor()(memes, regions)
    with torch.no_grad():
        assert torch.equal(model(batch), model(batch))
        model.train()
        assert not torch.equal(model(batch), model(batch))


def test_processor_reads_the_chosen_extras_only():
    memes, regions = _memes_and_regions(3)
    pooled = _model("hateclipper-align-tiny").build_processor()(memes, regions)
    projected = _model(
        "hateclipper-align-tiny", inputs="projected", image_dim=PROJ_DIM, text_dim=PROJ_DIM
    ).build_processor()(memes, regions)
    assert set(pooled) == {"ids", "labels", "image_feats", "text_feats"}
    assert np.array_equal(pooled["image_feats"][1].numpy(), regions[1].extras["image_pooled"])
    assert np.array_equal(projected["text_feats"][2].numpy(), regions[2].extras["text_embeds"])
    assert pooled["ids"].tolist() == [m.id for m in memes]
    assert pooled["labels"].tolist() == [float(m.label) for m in memes]


def test_processor_errors_name_the_meme():
    memes, regions = _memes_and_regions(2)
    processor = _model("hateclipper-align-tiny").build_processor()
    del regions[1].extras["text_pooled"]
    with pytest.raises(ConfigError, match=rf"meme {memes[1].id}: .*'text_pooled'.*clip extractor"):
        processor(memes, regions)
    regions[1].extras["text_pooled"] = np.zeros(TEXT_DIM + 1, np.float32)
    with pytest.raises(ConfigError, match=rf"meme {memes[1].id}: text_pooled has {TEXT_DIM + 1} dims"):
        processor(memes, regions)
    regions[1].extras["text_pooled"] = np.full(TEXT_DIM, np.nan, np.float32)
    with pytest.raises(DataError, match=rf"meme {memes[1].id}: text_pooled holds NaN"):
        processor(memes, regions)


def test_bad_configs_are_config_errors():
    from memeguard.training.build import require_pretrainable

    require_pretrainable("visualbert-tiny")
    with pytest.raises(ConfigError, match="rgcl-tiny: has no text encoder to pretrain"):
        require_pretrainable("rgcl-tiny")
    with pytest.raises(ConfigError, match="unfreeze_clip_layers=2 needs clip_model"):
        create_model("hateclipper-align-tiny", unfreeze_clip_layers=2)
    with pytest.raises(ConfigError, match="drop_probs needs 3 values"):
        create_model("hateclipper-align-tiny", drop_probs=[0.1])
    with pytest.raises(ConfigError, match=r"drop_probs needs 3 values in \[0, 1\)"):
        create_model("hateclipper-align-tiny", drop_probs=[0.1, 1.5, 0.1])
    with pytest.raises(ConfigError, match="sizes must be >= 1"):
        get_config("clip-concat-tiny", map_dim=0)
    with pytest.raises(ConfigError, match="cross fusion of map_dim 2048 makes a head of 4,29"):
        get_config("hateclipper-cross", map_dim=2048)  # refused before a byte is allocated
    with pytest.raises(ConfigError, match="align fusion of map_dim 1024 makes a head of"):
        get_config("hateclipper-align", num_pre_output_layers=3000)
    with pytest.raises(ConfigError, match="ce_weight must be in"):
        get_config("rgcl-tiny", ce_weight=2.0)
    with pytest.raises(ConfigError, match="retrieval_pool, knn_top_k >= 1"):
        get_config("rgcl-tiny", knn_top_k=0)
    with pytest.raises(ConfigError, match="fusion"):
        get_config("hateclipper-align-tiny", fusion="outer")


def test_save_and_load_round_trip(tmp_path):
    model = _model("hateclipper-cross-tiny")
    memes, regions = _memes_and_regions()
    batch = model.build_processor()(memes, regions)
    model.save_pretrained(tmp_path / "m")
    loaded = MemeModel.from_pretrained(tmp_path / "m").eval()
    assert type(loaded) is type(model) and loaded.config == model.config
    with torch.no_grad():
        assert torch.equal(loaded(batch), model(batch))


@pytest.mark.slow
def test_train_then_predict_from_the_command_line(tmp_path):
    """``memeguard train --model hateclipper-align-tiny --family-defaults`` learns the XOR rule (dev AUROC
    near 1), takes its input sizes from the store, and ``predict`` reproduces the run's predictions."""
    from memeguard.cli import app
    from memeguard.data.predictions import read_predictions

    data, regions = write_clip_dataset(tmp_path, n_train=96, n_dev=40)
    store = write_clip_store(tmp_path / "store", regions)
    out = tmp_path / "run"
    args = ["train", "--model", "hateclipper-align-tiny", "--features", str(store), "--data", str(data)]
    args += ["--out", str(out), "--train-split", "train", "--predict", "dev_seen", "--predict", "test_unseen"]
    args += ["--family-defaults", "--lr", "3e-3", "--batch-size", "16", "--epochs", "4"]
    args += ["--device", "cpu", "--no-progress"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "train_config.json").read_text())
    # the paper's settings where no option was given, the options where one was
    assert (saved["weight_decay"], saved["clip"], saved["sum_loss"], saved["select_best"]) == (
        1e-4,
        0.1,
        False,
        True,
    )
    assert (saved["lr"], saved["batch_size"], saved["epochs"]) == (3e-3, 16, 4)
    config = json.loads((out / "model" / "config.json").read_text())
    assert (config["image_dim"], config["text_dim"]) == (IMAGE_DIM, TEXT_DIM)
    assert config["feature_mean"] is None  # the patch features are never read, so never standardised
    dev = read_predictions(out / "dev_seen.csv")
    labels = {line["id"]: line["label"] for line in map(json.loads, (data / "dev_seen.jsonl").open())}
    from memeguard.data.metrics import auroc

    assert auroc(np.array([labels[i] for i in dev.ids]), dev.proba) > 0.9
    csv = tmp_path / "pred.csv"
    args = ["predict", "--checkpoint", str(out), "--features", str(store), "--data", str(data)]
    result = CliRunner().invoke(app, [*args, "--split", "test_unseen", "--out", str(csv), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert np.allclose(read_predictions(csv).proba, read_predictions(out / "test_unseen.csv").proba)


@pytest.mark.slow
def test_a_run_on_a_clip_store_is_served_and_bundled_as_it_predicted(tmp_path):
    """Extract a CLIP store from images (tiny random CLIP), train a head on its pooled outputs, then
    ``MemeScorer`` (images + texts, features extracted on the fly) and the exported bundle reproduce the
    run's dev predictions."""
    from clip_memes import save_tiny_clip
    from PIL import Image

    from memeguard.data.predictions import read_predictions
    from memeguard.features.clip import ClipExtractor
    from memeguard.features.extract import extract_features
    from memeguard.serving.bundle import export_bundle
    from memeguard.serving.scorer import MemeScorer
    from memeguard.training.config import TrainConfig
    from memeguard.training.loop import finetune

    clip_dir = save_tiny_clip(tmp_path / "clip")
    data = tmp_path / "data"
    (data / "img").mkdir(parents=True)
    rng = np.random.default_rng(0)
    texts = ["look at this", "a dog", "when you see it", "nobody expects", "hat hat", "just normal"]
    lines = []
    for k, text in enumerate(texts * 2):
        meme_id = 101 + k
        pixels = rng.integers(0, 256, (40 + 4 * k, 56, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(data / "img" / f"{meme_id:05d}.png")
        lines.append({"id": meme_id, "img": f"img/{meme_id:05d}.png", "label": k % 2, "text": text})
    for split, part in (("train", lines), ("dev_seen", lines[:6])):
        (data / f"{split}.jsonl").write_text("".join(json.dumps(line) + "\n" for line in part))
    store = extract_features(
        data, tmp_path / "store", ClipExtractor(clip_dir), progress=False, dtype="float32"
    )
    store = next(iter(store.values()))
    cfg = TrainConfig(
        model="hateclipper-align-tiny", features=store, data_dir=data, out_dir=tmp_path / "run",
        train_split="train", predict_splits=("dev_seen",),
        epochs=1, lr=1e-3, batch_size=4, eval_every=0, device="cpu", progress=False,
    )  # fmt: skip
    run = finetune(cfg).run_dir
    expected = read_predictions(run / "dev_seen.csv").as_dict()
    items = [(data / line["img"], line["text"]) for line in lines[:6]]
    served = [s.proba for s in MemeScorer.from_runs([run], device="cpu").score_batch(items)]
    assert np.allclose(served, [expected[line["id"]] for line in lines[:6]], atol=1e-5)
    export_bundle([run], tmp_path / "bundle", data_dir=data)
    bundled = [s.proba for s in MemeScorer.from_bundle(tmp_path / "bundle", device="cpu").score_batch(items)]
    assert np.allclose(bundled, served, atol=1e-6)


def test_the_authors_lightning_checkpoint_loads_without_the_clip_towers(tmp_path):
    """Hate-CLIPper's ModelCheckpoint file: the head under ``state_dict`` beside the frozen CLIP towers
    (not used: the embeddings come from the store) and an auxiliary image head."""
    source = _model("hateclipper-cross-tiny")
    state = {key: value.clone() for key, value in source.state_dict().items()}
    state["image_encoder.embeddings.patch_embedding.weight"] = torch.randn(48, 3, 8, 8)
    state["text_encoder.final_layer_norm.weight"] = torch.randn(32)
    state["output_image.weight"] = torch.randn(1, 8)
    ckpt = {"epoch": 7, "global_step": 1064, "pytorch-lightning_version": "1.6.5", "state_dict": state}
    torch.save(ckpt, tmp_path / "hateclipper-epoch=07.ckpt")
    torch.manual_seed(1)
    model = create_model("hateclipper-cross-tiny", image_dim=IMAGE_DIM, text_dim=TEXT_DIM).eval()
    missing, unexpected = model.load_original(tmp_path / "hateclipper-epoch=07.ckpt")
    assert missing == [] and sorted(unexpected) == sorted(k for k in state if k not in source.state_dict())
    memes, regions = _memes_and_regions()
    batch = model.build_processor()(memes, regions)
    with torch.no_grad():
        assert torch.equal(model(batch), source(batch))
    with pytest.raises(CheckpointError, match="not a Hate-CLIPper checkpoint in a known layout"):
        torch.save({"state_dict": {"classifier.weight": torch.zeros(1, 2)}}, tmp_path / "other.ckpt")
        model.load_original(tmp_path / "other.ckpt")


def test_the_text_only_control_zeroes_the_image_vector():
    from memeguard.training.data import Collator

    memes, regions = _memes_and_regions(3)
    processor = _model("hateclipper-align-tiny").build_processor()
    plain = Collator(processor)(list(zip(memes, regions, strict=True)))
    control = Collator(processor, zero_visual=True)(list(zip(memes, regions, strict=True)))
    assert plain["image_feats"].abs().sum() > 0 and control["image_feats"].abs().sum() == 0
    assert torch.equal(control["text_feats"], plain["text_feats"])


def test_the_trainer_takes_the_input_sizes_from_the_store_and_refuses_what_it_lacks(tmp_path):
    from memeguard.training.config import TrainConfig
    from memeguard.training.loop import prepare

    data, regions = write_clip_dataset(tmp_path, n_train=8, n_dev=4)
    shared = dict(model="hateclipper-cross-tiny", features="mem", data_dir=data, out_dir=tmp_path / "r")
    shared.update(train_split="train", predict_splits=("dev_seen",), device="cpu", progress=False)
    model = prepare(TrainConfig(**shared), regions).model
    assert (model.config.image_dim, model.config.text_dim, model.config.feature_mean) == (
        IMAGE_DIM,
        TEXT_DIM,
        None,
    )
    with pytest.raises(
        ConfigError, match=f"store gives image_dim={IMAGE_DIM}, but the model overrides ask for 7"
    ):
        prepare(TrainConfig(**shared, model_overrides={"image_dim": 7}), regions)
    for record in regions.values():
        del record.extras["image_pooled"]
    with pytest.raises(
        ConfigError, match=r"meme 1: the feature store has no 'image_pooled' vectors .*projected"
    ):
        prepare(TrainConfig(**shared), regions)
    projected = prepare(TrainConfig(**shared, model_overrides={"inputs": "projected"}), regions).model
    assert (projected.config.image_dim, projected.config.text_dim) == (PROJ_DIM, PROJ_DIM)
