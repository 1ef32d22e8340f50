"""Fine-tuning end to end on the toy XOR set: vilio's two runs, resume, errors, DONE, best selection."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from xor_memes import MODEL, toy_config

from memeguard.data.predictions import read_predictions
from memeguard.errors import ConfigError
from memeguard.training import TrainConfig, finetune

pytestmark = pytest.mark.usefixtures("one_thread")


def config(data: Path, out: Path, **kw) -> TrainConfig:
    """vilio's fine-tuning shape in miniature: two epochs, an evaluation every 3 updates, mean loss."""
    defaults = dict(features="toy-regions", epochs=2, lr=1e-3, eval_every=3, sum_loss=False)
    return toy_config(TrainConfig, data, out, **{**defaults, **kw})


def test_two_vilio_runs_write_the_three_csvs(toy_data, tmp_path):
    data, regions = toy_data
    run_a = finetune(config(data, tmp_path / "a"), regions=regions)
    run_b = finetune(
        config(data, tmp_path / "b", train_split="traindev", predict_splits=("test_seen", "test_unseen")),
        regions=regions,
    )
    expected_ids = {
        "dev_seen": [json.loads(x)["id"] for x in (data / "dev_seen.jsonl").read_text().splitlines()],
        "test_seen": [json.loads(x)["id"] for x in (data / "test_seen.jsonl").read_text().splitlines()],
        "test_unseen": [json.loads(x)["id"] for x in (data / "test_unseen.jsonl").read_text().splitlines()],
    }
    for result, splits in ((run_a, ["dev_seen"]), (run_b, ["test_seen", "test_unseen"])):
        for split in splits:
            preds = read_predictions(result.run_dir / f"{split}.csv")
            assert preds.ids.tolist() == expected_ids[split]
            assert ((preds.proba >= 0) & (preds.proba <= 1)).all()
            assert (preds.label == (preds.proba >= 0.5)).all()
        for name in (
            "model/config.json",
            "model/model.safetensors",
            "train_config.json",
            "DONE",
            "checkpoints/last.pt",
            "metrics.jsonl",
        ):
            assert (result.run_dir / name).is_file(), name
    # the written dev predictions are the final model's: recompute them from the saved model
    from memeguard.training import predict

    again = predict(run_a.run_dir, regions, data, "dev_seen", tmp_path / "again.csv", device="cpu")
    np.testing.assert_allclose(
        read_predictions(again).proba,
        read_predictions(run_a.predictions["dev_seen"]).proba,
        rtol=0,
        atol=1e-6,
    )
    # 48 memes / batch 8 = 6 updates per epoch, 12 in all; evaluation every 3 plus the final one
    log = [json.loads(line) for line in (run_a.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [entry["update"] for entry in log] == [3, 6, 9, 12, 12]
    assert log[-1]["final"] and log[-1]["auroc"] == pytest.approx(run_a.metrics["auroc"])


def test_finished_run_is_not_retrained(toy_data, tmp_path):
    data, regions = toy_data
    cfg = config(data, tmp_path / "run", epochs=1, eval_every=0)
    first = finetune(cfg, regions=regions)
    stamp = (first.run_dir / "model" / "model.safetensors").stat().st_mtime_ns
    again = finetune(cfg, regions=regions)
    assert again.skipped and not first.skipped
    assert (first.run_dir / "model" / "model.safetensors").stat().st_mtime_ns == stamp
    with pytest.raises(ConfigError, match="different configuration"):
        finetune(cfg.replace(lr=2e-3), regions=regions)


class Killed(RuntimeError):
    pass


def kill_after(n: int):
    def callback(update: int) -> None:
        if update == n:
            raise Killed(f"killed after update {n}")

    return callback


def state_of(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "model" / "model.safetensors"))


@pytest.mark.parametrize(
    "options",
    [
        pytest.param(dict(swa="torch", swa_start=0.3, acc=2), id="torch-swa-acc2-epoch-checkpoint"),
        pytest.param(
            dict(swa="contrib", swa_start=0.3, swa_freq=2, checkpoint_every=2), id="contrib-mid-epoch"
        ),
    ],
)
def test_killed_run_resumes_to_identical_weights(toy_data, tmp_path, options):
    data, regions = toy_data
    # dropout stays on (the tiny config's 0.1): resuming must also restore the RNG stream
    reference = finetune(config(data, tmp_path / "ref", epochs=3, **options), regions=regions)
    cfg = config(data, tmp_path / "killed", epochs=3, **options)
    updates_per_epoch = 3 if options.get("acc") == 2 else 6
    with pytest.raises(Killed):
        finetune(cfg, regions=regions, on_update=kill_after(updates_per_epoch + 3))
    assert not (cfg_dir := Path(cfg.out_dir) / "DONE").exists(), cfg_dir
    resumed = finetune(cfg, regions=regions)
    assert resumed.resumed
    ref_state, new_state = state_of(reference.run_dir), state_of(resumed.run_dir)
    assert ref_state.keys() == new_state.keys()
    for key in ref_state:
        assert torch.equal(ref_state[key], new_state[key]), key
    assert (reference.run_dir / "dev_seen.csv").read_text() == (resumed.run_dir / "dev_seen.csv").read_text()
    ref_log = [json.loads(x) for x in (reference.run_dir / "metrics.jsonl").read_text().splitlines()]
    new_log = [json.loads(x) for x in (resumed.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(e["update"], e["auroc"]) for e in ref_log] == [(e["update"], e["auroc"]) for e in new_log]


def test_swa_changes_the_final_weights(toy_data, tmp_path):
    """The averaged weights are what gets saved, not the last iterate."""
    data, regions = toy_data
    plain = finetune(config(data, tmp_path / "plain", eval_every=0), regions=regions)
    swa = finetune(config(data, tmp_path / "swa", eval_every=0, swa="torch", swa_start=0.5), regions=regions)
    a, b = state_of(plain.run_dir), state_of(swa.run_dir)
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_select_best_keeps_the_best_evaluation(toy_data, tmp_path):
    data, regions = toy_data
    result = finetune(config(data, tmp_path / "best", eval_every=1, select_best=True), regions=regions)
    log = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    best = max(entry["auroc"] for entry in log)
    assert result.metrics["auroc"] == pytest.approx(best)


def write_labels_removed(data: Path, split: str) -> None:
    lines = [json.loads(x) for x in (data / f"{split}.jsonl").read_text().splitlines()]
    (data / f"{split}.jsonl").write_text(
        "".join(json.dumps({k: v for k, v in x.items() if k != "label"}) + "\n" for x in lines)
    )


def test_bad_configurations_fail_before_training(toy_data, tmp_path):
    data, regions = toy_data
    out = tmp_path / "bad"
    cases = [
        (dict(model="no-such-model"), "unknown model"),
        (dict(train_split="nope"), "no split 'nope'"),
        (dict(features=str(tmp_path / "missing-store")), "feature store not found"),
    ]
    for overrides, message in cases:
        source = None if "features" in overrides else regions
        with pytest.raises(ConfigError, match=message):
            finetune(config(data, out, **overrides), regions=source)
    with pytest.raises(ConfigError, match="model expects|expects 16-d"):
        finetune(config(data, out, init=None, model_overrides={"visual_feat_dim": 16}), regions=regions)
    partial = dict(regions)
    del partial[1001]
    with pytest.raises(
        ConfigError, match=r"1 memes of split 'dev_seen' have no region features \(ids 1001\)"
    ):
        finetune(config(data, out), regions=partial)
    write_labels_removed(data, "dev_seen")
    with pytest.raises(ConfigError, match="'dev_seen' has 16 memes without a label"):
        finetune(config(data, out), regions=regions)
    with pytest.raises(ConfigError, match="swa must be one of"):
        config(data, out, swa="yes")
    assert not out.exists() or not any(out.iterdir())  # nothing was trained or written


def test_init_from_a_model_dir_with_a_different_feature_dim_is_refused(toy_data, tmp_path):
    data, regions = toy_data
    first = finetune(config(data, tmp_path / "first", epochs=1, eval_every=0), regions=regions)
    cut = {k: type(r)(r.meme_id, r.features[:, :16], r.boxes, r.image_size) for k, r in regions.items()}
    with pytest.raises(ConfigError, match="16-d region features but the model"):
        finetune(config(data, tmp_path / "second", init=str(first.run_dir)), regions=cut)


def test_init_from_an_original_vilio_checkpoint_file(toy_data, tmp_path):
    """A vilio ``LASTtrain.pth`` (torch SWA layout: n_averaged + module.model.* / module.classifier.*)."""
    from memeguard.models.registry import create_model
    from memeguard.training.build import build_model

    source = create_model(MODEL, visual_feat_dim=32).state_dict()
    vilio = {"n_averaged": torch.tensor(7)}
    for key, value in source.items():
        if key == "layer_weights":
            vilio["module.model.layer_weights"] = value
        elif key.startswith("bert."):
            vilio["module.model." + key.removeprefix("bert.")] = value
        else:
            vilio["module." + key] = value
    path = tmp_path / "LASTtrain.pth"
    torch.save(vilio, path)
    loaded = build_model(MODEL, feature_dim=32, init=str(path)).state_dict()
    for key in source:
        assert torch.equal(loaded[key], source[key]), key
    data, regions = toy_data
    result = finetune(
        config(data, tmp_path / "from-vilio", init=str(path), epochs=1, eval_every=0), regions=regions
    )
    assert (result.run_dir / "dev_seen.csv").is_file()
    with pytest.raises(ConfigError, match="init checkpoint not found"):
        finetune(config(data, tmp_path / "x", init=str(tmp_path / "nope.pth")), regions=regions)


def test_bf16_autocast_runs_on_cpu_and_fp16_needs_cuda(toy_data, tmp_path):
    data, regions = toy_data
    result = finetune(
        config(data, tmp_path / "bf16", epochs=1, eval_every=0, precision="bf16"), regions=regions
    )
    proba = read_predictions(result.predictions["dev_seen"]).proba
    assert np.isfinite(proba).all() and result.metrics["auroc"] == result.metrics["auroc"]
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        finetune(config(data, tmp_path / "fp16", precision="fp16"), regions=regions)


def test_a_run_dir_saved_with_the_old_key_acc_resumes(toy_data, tmp_path):
    """Run dirs written before the rename hold ``"acc"`` in train_config.json: same configuration."""
    data, regions = toy_data
    cfg = config(data, tmp_path / "run", epochs=2, grad_accum_steps=2, checkpoint_every=1, eval_every=0)
    with pytest.raises(Killed):
        finetune(cfg, regions=regions, on_update=kill_after(2))
    path = Path(cfg.out_dir) / "train_config.json"
    saved = json.loads(path.read_text())
    path.write_text(json.dumps({("acc" if k == "grad_accum_steps" else k): v for k, v in saved.items()}))
    with pytest.raises(ConfigError, match=r"differs in \['grad_accum_steps'\]"):
        finetune(cfg.replace(grad_accum_steps=3), regions=regions)
    assert TrainConfig.from_dict(json.loads(path.read_text())).to_dict() == cfg.to_dict()
    assert finetune(cfg, regions=regions).resumed
