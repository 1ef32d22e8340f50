"""Attacks on training's inputs and run dirs: NaN in a store or a batch, outputs deleted after DONE, a
corrupt DONE or config, ``--out`` pointed at another kind of memeguard folder.

Each test writes the bad file (or makes the bad call), then checks the exact one-line error and that
nothing else changed; the repaired run must then end exactly like an undisturbed one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from xor_memes import DIM, MODEL, toy_config

from memeguard.cli import main
from memeguard.errors import ConfigError, FeatureStoreError
from memeguard.features.record import RegionRecord
from memeguard.records import RecordError
from memeguard.training import PretrainConfig, TrainConfig, finetune, pretrain
from memeguard.training.data import epoch_batches
from memeguard.training.run import RunError

REDO_HINT = (
    "delete its DONE to redo the outputs from checkpoints/last.pt (the final state), or use another --out"
)


pytestmark = pytest.mark.usefixtures("one_thread")


def config(data: Path, out: Path, **kw) -> TrainConfig:
    """One quick epoch on 16 memes, no evaluation in between."""
    defaults = dict(features="toy-regions", epochs=1, lr=1e-3, eval_every=0, limit=16)
    return toy_config(TrainConfig, data, out, **{**defaults, **kw})


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes): to show that a refused call changed nothing."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def cli_error(args: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err  # one line, no traceback
    return err.strip()


def train_args(store: Path, data: Path, out: Path) -> list[str]:
    return [
        "train",
        "--model",
        MODEL,
        "--features",
        str(store),
        "--data",
        str(data),
        "--out",
        str(out),
        "--tiny",
    ]


def test_nan_in_the_store_stops_train_before_any_update(toy_data, toy_store, tmp_path, capsys):
    data, _ = toy_data
    out = tmp_path / "run"
    # the toy store holds train ids 1..48 first, 6 rows each: meme 5's first row is row 24
    features = np.fromfile(toy_store / "features.bin", dtype="<f4")
    features[24 * DIM + 3] = np.nan
    features.tofile(toy_store / "features.bin")
    store_before = tree(toy_store)
    args = [*train_args(toy_store, data, out), "--epochs", "1", "--device", "cpu", "--no-progress"]
    assert cli_error([*args, "--limit", "8"], capsys) == (
        f"error: {toy_store / 'features.bin'}: meme id 5 holds NaN or inf; "
        "the store is corrupt (re-extract it, or re-import it, into a new folder)"
    )
    assert not out.exists() and tree(toy_store) == store_before
    # only the memes the run reads are checked: the first 4 of each split do not include meme 5
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--limit", "4"])
    assert exit_info.value.code == 0 and (out / "DONE").is_file()
    # predicting a split that holds meme 5 is refused the same way, before the CSV is written
    csv = tmp_path / "pred.csv"
    predict = ["predict", "--checkpoint", str(out), "--features", str(toy_store), "--data", str(data)]
    predict += ["--split", "train_clean", "--out", str(csv), "--device", "cpu", "--limit", "8"]
    assert cli_error(predict, capsys) == (
        f"error: {toy_store / 'features.bin'}: meme id 5 holds NaN or inf; "
        "the store is corrupt (re-extract it, or re-import it, into a new folder)"
    )
    assert not csv.exists()


def test_non_finite_loss_stops_at_that_update_and_the_run_resumes_exactly(toy_data, tmp_path):
    data, regions = toy_data
    # standardisation off: its statistics over all memes would carry the inf into every batch (and are
    # refused themselves, below)
    options = dict(epochs=2, checkpoint_every=1, standardize_features="never")
    cfg = config(data, tmp_path / "run", **options)
    reference = finetune(config(data, tmp_path / "ref", **options), regions=regions)
    # the second batch of epoch 0 (train_clean's first 16 memes are ids 1..16, in file order)
    second = epoch_batches(16, 8, seed=cfg.seed, epoch=0)[1]
    batch_ids = [index + 1 for index in second]
    good = regions[batch_ids[2]]
    poisoned = dict(regions)
    poisoned[good.meme_id] = RegionRecord(
        good.meme_id, np.full_like(good.features, np.inf), good.boxes, good.image_size
    )
    with pytest.raises(RunError) as error:
        finetune(cfg, regions=poisoned)
    shown = ", ".join(map(str, batch_ids))
    assert str(error.value) == (
        f"{cfg.out_dir}: loss is nan at update 2 (batch of meme ids {shown}); stopped before the update, "
        "the run resumes from checkpoints/last.pt (check the features with "
        "`memeguard features info --verify`, or lower --lr)"
    )
    assert not (Path(cfg.out_dir) / "DONE").exists()
    with pytest.raises(FeatureStoreError) as error:
        finetune(config(data, tmp_path / "std", standardize_features="always"), regions=poisoned)
    assert str(error.value) == f"meme id {good.meme_id}: region features hold NaN or inf (feature statistics)"
    resumed = finetune(cfg, regions=regions)  # the features repaired: resume from update 1
    assert resumed.resumed
    assert tree(Path(cfg.out_dir) / "model") == tree(reference.run_dir / "model")
    assert (Path(cfg.out_dir) / "dev_seen.csv").read_bytes() == (
        reference.run_dir / "dev_seen.csv"
    ).read_bytes()


def without_time(path: Path) -> list[dict]:
    return [
        {k: v for k, v in json.loads(line).items() if k != "time"} for line in path.read_text().splitlines()
    ]


def test_finished_run_with_a_deleted_or_changed_output_is_refused_then_redone(toy_data, tmp_path):
    data, regions = toy_data
    cfg = config(data, tmp_path / "run")
    first = finetune(cfg, regions=regions)
    run_dir = first.run_dir
    done = json.loads((run_dir / "DONE").read_text())
    assert sorted(done["outputs"]) == ["dev_seen.csv", "model/config.json", "model/model.safetensors"]
    outputs, log = tree(run_dir), without_time(run_dir / "metrics.jsonl")

    (run_dir / "dev_seen.csv").unlink()
    with pytest.raises(RunError) as error:
        finetune(cfg, regions=regions)
    assert str(error.value) == f"{run_dir}: finished run is incomplete (dev_seen.csv is missing); {REDO_HINT}"

    weights = run_dir / "model" / "model.safetensors"
    changed = bytearray(weights.read_bytes())
    changed[-1] ^= 0xFF
    weights.write_bytes(bytes(changed))
    with pytest.raises(RunError) as error:
        finetune(cfg, regions=regions)
    assert str(error.value) == (
        f"{run_dir}: finished run is incomplete (dev_seen.csv is missing; model/model.safetensors changed "
        f"since the run finished (sha256 differs from DONE)); {REDO_HINT}"
    )

    # the hint works: without DONE the run resumes from its final checkpoint and rewrites the same outputs
    (run_dir / "DONE").unlink()
    redone = finetune(cfg, regions=regions)
    assert redone.resumed and not redone.skipped
    logs = ("DONE", "metrics.jsonl")  # a new finish time; the log is compared without times below
    after = {k: v for k, v in tree(run_dir).items() if k not in logs}
    assert after == {k: v for k, v in outputs.items() if k not in logs}
    assert without_time(run_dir / "metrics.jsonl") == log  # the final evaluation is logged once
    assert finetune(cfg, regions=regions).skipped


def test_a_done_file_from_before_outputs_were_recorded_is_still_read(toy_data, tmp_path):
    data, regions = toy_data
    cfg = config(data, tmp_path / "run")
    run_dir = finetune(cfg, regions=regions).run_dir
    (run_dir / "DONE").write_text(json.dumps({"metrics": {"auroc": 0.5}, "finished": 1.0}))
    again = finetune(cfg, regions=regions)
    assert again.skipped and again.metrics == {"auroc": 0.5}
    (run_dir / "model" / "config.json").unlink()
    with pytest.raises(RunError) as error:
        finetune(cfg, regions=regions)
    assert (
        str(error.value)
        == f"{run_dir}: finished run is incomplete (model/config.json is missing); {REDO_HINT}"
    )
    shutil.rmtree(run_dir / "checkpoints")
    with pytest.raises(RunError) as error:
        finetune(cfg, regions=regions)
    assert str(error.value) == (
        f"{run_dir}: finished run is incomplete (model/config.json is missing); "
        "delete its DONE to train the run again (it has no checkpoint), or use another --out"
    )


@pytest.mark.parametrize(
    ("name", "text", "problem"),
    [
        (
            "DONE",
            '{"metrics": {',
            "corrupt JSON (Expecting property name enclosed in double quotes at line 1)",
        ),
        ("DONE", '{"metrics": [1, 2]}', "invalid DoneRecord: metrics: Input should be a valid dictionary"),
        (
            "DONE",
            '{"outputs": {"dev_seen.csv": {"size": "big"}}}',
            "invalid DoneRecord: outputs.dev_seen.csv.size",
        ),
        ("train_config.json", "[1, 2]", "invalid contents: (top level): Input should be a valid dictionary"),
        (
            "train_config.json",
            "\ufeff{}",
            "corrupt JSON (Unexpected UTF-8 BOM (decode using utf-8-sig) at line 1)",
        ),
    ],
)
def test_corrupt_run_records_are_one_line_naming_the_file(
    toy_data, toy_store, tmp_path, capsys, name, text, problem
):
    data, _ = toy_data
    out = tmp_path / "run"
    out.mkdir()
    (out / name).write_text(text, encoding="utf-8")
    before = tree(out)
    assert cli_error(train_args(toy_store, data, out), capsys).startswith(f"error: {out / name}: {problem}")
    assert tree(out) == before


@pytest.mark.parametrize(
    ("make", "kind", "marker"),
    [
        (lambda tmp, store, data: store, "feature store", "layout.json"),
        (lambda tmp, store, data: data, "dataset folder", "train.jsonl"),
        (
            lambda tmp, store, data: (tmp / "pipe" / "stages").mkdir(parents=True) or tmp / "pipe",
            "pipeline output",
            "stages",
        ),
        (
            lambda tmp, store, data: (
                (tmp / "ens").mkdir() or (tmp / "ens" / "weights.json").write_text("{}") and tmp / "ens"
            ),
            "ensemble output",
            "weights.json",
        ),
    ],
)
def test_train_refuses_an_out_folder_of_another_kind(
    toy_data, toy_store, tmp_path, capsys, make, kind, marker
):
    data, _ = toy_data
    out = make(tmp_path, toy_store, data)
    before = tree(tmp_path)
    assert cli_error(train_args(toy_store, data, out), capsys) == (
        f"error: {out}: is a {kind} (it holds {marker}), not a fine-tuning run dir; "
        "choose another --out folder"
    )
    assert tree(tmp_path) == before


def test_pretrain_records_its_outputs_and_refuses_a_fine_tuning_run_dir(toy_data, tmp_path):
    data, regions = toy_data
    tuned = finetune(config(data, tmp_path / "tuned"), regions=regions).run_dir
    cfg = toy_config(PretrainConfig, data, tuned, epochs=1, limit=8)
    before = tree(tuned)
    with pytest.raises(RunError) as error:
        pretrain(cfg, regions=regions)
    assert str(error.value) == (
        f"{tuned}: is a fine-tuning run dir (it holds train_config.json), not a pretraining run dir; "
        "choose another --out folder"
    )
    assert tree(tuned) == before
    run_dir = pretrain(cfg.replace(out_dir=tmp_path / "pre"), regions=regions)
    recorded = json.loads((run_dir / "DONE").read_text())["outputs"]
    assert sorted(recorded) == ["model/config.json", "model/model.safetensors", "pretrain_heads.safetensors"]
    (run_dir / "pretrain_heads.safetensors").unlink()
    with pytest.raises(RunError, match=r"incomplete \(pretrain_heads.safetensors is missing\)"):
        pretrain(cfg.replace(out_dir=tmp_path / "pre"), regions=regions)


def test_read_record_is_one_line_for_a_missing_or_binary_file(tmp_path):
    from memeguard.records import DoneRecord, read_record

    with pytest.raises(RecordError) as error:
        read_record(tmp_path / "DONE", DoneRecord)
    assert str(error.value) == f"{tmp_path / 'DONE'}: file not found"
    (tmp_path / "DONE").write_bytes(b"\xff\xfe{}")
    with pytest.raises(ConfigError) as error:
        read_record(tmp_path / "DONE", DoneRecord, ConfigError)
    assert str(error.value) == f"{tmp_path / 'DONE'}: not UTF-8 text (byte 0)"
