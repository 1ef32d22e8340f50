"""Task pretraining: masking statistics, ITM swaps, a run that fine-tuning starts from, resume."""

from __future__ import annotations

import json

import pytest
import torch
from xor_memes import toy_config

from memeguard.data.meme import Meme
from memeguard.errors import ConfigError
from memeguard.names import PRETRAIN_HEADS_FILE
from memeguard.training import TINY_DEFAULTS, PretrainConfig, TrainConfig, finetune, pretrain
from memeguard.training.pretraining import IGNORE, itm_texts, mask_features, mask_tokens

pytestmark = pytest.mark.usefixtures("one_thread")


def test_token_masking_is_15_percent_80_10_10_and_spares_special_tokens():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 2000, (400, 50), generator=g)
    ids[:, 0], ids[:, -1] = 101, 102
    attention = torch.ones_like(ids)
    attention[:, 40:] = 0
    masked, labels = mask_tokens(ids, attention, [101, 102, 0], 103, 30522, 0.15, g)
    selected = labels != IGNORE
    candidates = attention.bool().clone()
    candidates[:, 0] = False
    assert not selected[~candidates].any()  # never [CLS], [SEP] or padding
    assert selected.sum() / candidates.sum() == pytest.approx(0.15, abs=0.01)
    assert torch.equal(labels[selected], ids[selected])
    became_mask = (masked == 103) & selected
    unchanged = (masked == ids) & selected
    assert became_mask.sum() / selected.sum() == pytest.approx(0.8, abs=0.03)
    assert unchanged.sum() / selected.sum() == pytest.approx(0.1, abs=0.02)  # (+ rare random == original)
    assert torch.equal(masked[~selected], ids[~selected])


def test_feature_masking_zeroes_swaps_or_keeps_real_boxes_only():
    g = torch.Generator().manual_seed(1)
    feats = torch.rand(300, 20, 8) + 1.0  # never zero
    visual_mask = torch.ones(300, 20, dtype=torch.long)
    visual_mask[:, 15:] = 0
    out = mask_features(feats, visual_mask, 0.15, g)
    zeroed = (out == 0).all(-1)
    changed = (out != feats).any(-1)
    assert not changed[:, 15:].any()
    real = 300 * 15
    assert zeroed.sum() / real == pytest.approx(0.15 * 0.8, abs=0.015)
    swapped = changed & ~zeroed
    assert swapped.sum() / real == pytest.approx(0.15 * 0.1, abs=0.006)
    donors = feats[:, :15].reshape(-1, 8)
    for vector in out[swapped][:20]:  # a swapped box holds some real box's feature
        assert (donors == vector).all(-1).any()


def test_itm_swaps_about_half_the_texts_for_other_memes_texts():
    memes = [Meme(i, f"img/{i}.png", f"text {i}") for i in range(400)]
    texts, matched = itm_texts(memes, [m.text for m in memes], torch.Generator().manual_seed(2))
    assert matched.float().mean().item() == pytest.approx(0.5, abs=0.06)
    for meme, text, is_match in zip(memes, texts, matched.tolist(), strict=True):
        assert (text == meme.text) == bool(is_match)


def test_pretrain_run_feeds_finetuning_and_resumes_identically(toy_data, tmp_path):
    data, regions = toy_data
    cfg = toy_config(PretrainConfig, data, tmp_path / "pre", epochs=2, batch_size=16, lr=1e-3)
    run_dir = pretrain(cfg, regions=regions)
    assert (run_dir / "DONE").is_file() and (run_dir / "model" / "config.json").is_file()
    log = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(log) == 2 and all(entry["loss"] > 0 for entry in log)
    from safetensors.torch import load_file

    heads = load_file(str(run_dir / PRETRAIN_HEADS_FILE))
    assert {"mlm.bias", "mlm.transform.dense.weight", "itm.weight", "itm.bias"} <= set(heads)
    assert "mlm.decoder.weight" not in heads  # tied to the word embeddings saved in model/

    # pretraining changed the backbone, and fine-tuning from the run dir starts from exactly those weights
    pre = load_file(str(run_dir / "model" / "model.safetensors"))
    from memeguard.models.registry import create_model

    torch.manual_seed(cfg.seed)
    fresh = create_model("visualbert-tiny", visual_feat_dim=32).state_dict()
    key = "bert.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(pre[key], fresh[key])
    from memeguard.training.build import build_model

    started = build_model("visualbert-tiny", feature_dim=32, init=str(run_dir)).state_dict()
    assert torch.equal(started[key], pre[key])
    result = finetune(
        TrainConfig(
            model="visualbert-tiny",
            features="toy",
            data_dir=data,
            out_dir=tmp_path / "ft",
            init=str(run_dir),
            epochs=1,
            lr=1e-3,
            eval_every=0,
            device="cpu",
            progress=False,
            model_overrides=TINY_DEFAULTS["model_overrides"],
        ),
        regions=regions,
    )  # an init-only override (TINY_DEFAULTS' init std) is ignored with --init
    assert (result.run_dir / "dev_seen.csv").is_file()

    # kill in epoch 2, resume, compare with the uninterrupted run
    killed_cfg = cfg.replace(out_dir=tmp_path / "pre-killed")

    def kill(update: int) -> None:
        if update == 5:
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        pretrain(killed_cfg, regions=regions, on_update=kill)
    pretrain(killed_cfg, regions=regions)
    again = load_file(str(tmp_path / "pre-killed" / "model" / "model.safetensors"))
    for name in pre:
        assert torch.equal(pre[name], again[name]), name


@pytest.mark.parametrize("model", ["lxmert-tiny", "uniter-tiny", "oscar-tiny"])
def test_pretraining_runs_for_other_architectures(toy_data, tmp_path, model):
    """MLM on the language stream (LXMERT) or the text part of the joint sequence (single-stream) + ITM."""
    data, regions = toy_data
    cfg = toy_config(
        PretrainConfig, data, tmp_path / model, model=model, epochs=1, batch_size=16, lr=1e-3, limit=32
    )
    run_dir = pretrain(cfg, regions=regions)
    loss = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])["loss"]
    # MLM over a 30522-word vocabulary starts near ln(30522) ~ 10.3, ITM near ln 2
    assert 5.0 < loss < 14.0


def test_pretraining_refuses_a_run_dir_written_under_another_configuration(toy_data, tmp_path):
    data, regions = toy_data
    cfg = toy_config(PretrainConfig, data, tmp_path / "pre", epochs=1, lr=1e-3, limit=16)

    def kill(update: int) -> None:
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):  # killed mid-run: a config file, no DONE
        pretrain(cfg, regions=regions, on_update=kill)
    with pytest.raises(ConfigError, match=r"different configuration \(differs in \['lr'\]\)"):
        pretrain(cfg.replace(lr=2e-3), regions=regions)
    run_dir = pretrain(cfg, regions=regions)
    stamp = (run_dir / "DONE").stat().st_mtime_ns
    with pytest.raises(ConfigError, match=r"differs in \['itm', 'word_mask_rate'\]"):
        pretrain(cfg.replace(word_mask_rate=0.3, itm=False), regions=regions)
    pretrain(cfg.replace(progress=True, device="cpu"), regions=regions)  # volatile keys: finished, not redone
    assert (run_dir / "DONE").stat().st_mtime_ns == stamp
