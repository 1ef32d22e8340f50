"""Bundles: export, hash-checked loading (folder and offline Hub cache), ensemble weights, operating point."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from serving_helpers import runs_with_dev_predictions
from typer.testing import CliRunner

from memeguard.cli import app
from memeguard.data.predictions import read_predictions, write_predictions
from memeguard.errors import CheckpointError, ConfigError
from memeguard.serving.bundle import (
    MANIFEST_FILE,
    export_bundle,
    file_sha256,
    load_scorer,
    read_manifest,
    resolve_bundle,
)
from memeguard.serving.operating_point import choose_operating_point
from memeguard.serving.scorer import MemeScorer


def items(served):
    return [(served.image(i), t) for i, t in zip(served.ids, served.texts, strict=True)]


@pytest.fixture(scope="module")
def trained(served, scorer, tmp_path_factory):
    """Copies of the two runs, each with the dev_seen.csv that ``memeguard train`` would have written."""
    root = tmp_path_factory.mktemp("bundle_runs")
    results = scorer.score_batch(items(served))
    return runs_with_dev_predictions(served.runs, served.ids, results, root), results


@pytest.fixture(scope="module")
def bundle(served, trained, tmp_path_factory):
    runs, _ = trained
    out = tmp_path_factory.mktemp("bundles") / "b1"
    export_bundle(runs, out, data_dir=served.data_dir)
    return out


def dev_labels(served):
    return [
        json.loads(line)["label"] for line in (served.data_dir / "dev_seen.jsonl").read_text().splitlines()
    ]


def test_export_writes_a_self_contained_bundle(served, trained, bundle):
    runs, results = trained
    manifest = read_manifest(bundle)
    assert [m.name for m in manifest.members] == ["run_1", "run_2"]
    assert [m.weight for m in manifest.members] == [1.0, 1.0]
    listed = {f.path: f for f in manifest.files}
    for name in ("run_1", "run_2"):
        for rel in (
            "model/config.json",
            "model/model.safetensors",
            "train_config.json",
            "features_meta.json",
        ):
            assert f"members/{name}/{rel}" in listed
    assert "README.md" in listed and MANIFEST_FILE not in listed
    for rel, entry in listed.items():
        assert file_sha256(bundle / rel) == entry.sha256 and (bundle / rel).stat().st_size == entry.bytes
    run_weights = runs[0] / "model" / "model.safetensors"
    assert listed["members/run_1/model/model.safetensors"].sha256 == file_sha256(run_weights)
    meta = json.loads((bundle / "members/run_1/features_meta.json").read_text())
    assert meta == json.loads((served.store / "meta.json").read_text())
    # The operating point is the accuracy rule on the mean of the runs' dev scores.
    mean = [r.proba for r in results]
    expected = choose_operating_point(dev_labels(served), mean, "accuracy")
    assert manifest.operating_point.threshold == pytest.approx(expected.threshold, abs=1e-12)
    assert manifest.metrics["dev_seen"]["memes"] == 6
    assert str(runs[0].parent) not in (bundle / MANIFEST_FILE).read_text()  # no exporter paths
    card = (bundle / "README.md").read_text()
    for heading in ("## Metrics", "## Training data", "## Intended use", "## Limitations"):
        assert heading in card
    assert f"{manifest.operating_point.threshold:.6f}" in card
    assert not [p for p in bundle.parent.iterdir() if p.name.startswith(".")]  # no staging left


def test_bundle_scores_like_the_runs_and_labels_at_its_operating_point(served, trained, bundle):
    _, results = trained
    loaded = MemeScorer.from_bundle(bundle, device="cpu")
    threshold = read_manifest(bundle).operating_point.threshold
    assert loaded.threshold == threshold
    scores = loaded.score_batch(items(served))
    np.testing.assert_allclose([s.proba for s in scores], [r.proba for r in results], atol=1e-9)
    assert [s.label for s in scores] == [int(r.proba >= threshold) for r in results]
    described = loaded.describe()["operating_point"]
    assert described["rule"] == "accuracy" and described["threshold"] == threshold
    overridden = MemeScorer.from_bundle(bundle, device="cpu", threshold=0.5)
    assert overridden.threshold == 0.5 and overridden.describe()["operating_point"]["rule"] == "fixed"


def test_load_scorer_takes_runs_or_a_bundle(served, trained, bundle):
    runs, _ = trained
    from_runs = load_scorer([str(r) for r in runs], device="cpu")
    assert from_runs.threshold == 0.5 and len(from_runs.members) == 2
    assert load_scorer(bundle, device="cpu").threshold == read_manifest(bundle).operating_point.threshold
    with pytest.raises(ConfigError, match="a bundle is scored on its own"):
        load_scorer([bundle, runs[0]], device="cpu")
    with pytest.raises(ConfigError, match="records its own ensemble weights"):
        load_scorer([bundle], device="cpu", weights=[1.0])


def tampered_copy(bundle: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    return copy


def test_a_changed_weight_file_is_named(bundle, tmp_path):
    copy = tampered_copy(bundle, tmp_path)
    weights = copy / "members/run_2/model/model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # same size, one flipped byte
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as raised:
        MemeScorer.from_bundle(copy, device="cpu")
    assert str(raised.value).startswith(f"{weights}: sha256 ") and "\n" not in str(raised.value)
    weights.unlink()
    with pytest.raises(CheckpointError, match="listed in the bundle's manifest.json but missing"):
        MemeScorer.from_bundle(copy, device="cpu")


def test_a_bad_manifest_is_one_line(bundle, tmp_path):
    copy = tampered_copy(bundle, tmp_path)
    manifest = json.loads((copy / MANIFEST_FILE).read_text())
    manifest["files"][0]["path"] = "../../etc/passwd"
    (copy / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match=r"manifest.json: invalid manifest at files\.0\.path"):
        read_manifest(copy)
    manifest = json.loads((bundle / MANIFEST_FILE).read_text())
    manifest["files"] = [f for f in manifest["files"] if not f["path"].startswith("members/run_2/model/")]
    (copy / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match="member 'run_2' lists no model/config.json"):
        MemeScorer.from_bundle(copy, device="cpu")
    (copy / MANIFEST_FILE).write_text("{")
    with pytest.raises(ConfigError, match="invalid manifest"):
        read_manifest(copy)
    (copy / MANIFEST_FILE).unlink()
    with pytest.raises(ConfigError, match="not a memeguard bundle"):
        read_manifest(copy)


def test_export_refuses_foreign_folders_and_keeps_an_old_bundle_on_failure(served, trained, bundle, tmp_path):
    runs, _ = trained
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty and not a memeguard bundle"):
        export_bundle(runs, foreign, data_dir=served.data_dir)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    copy = tampered_copy(bundle, tmp_path)
    before = (copy / MANIFEST_FILE).read_bytes()
    with pytest.raises(ConfigError, match="no threshold reaches precision 1.01|needs a target"):
        export_bundle(runs, copy, data_dir=served.data_dir, rule="precision", target=1.01)
    assert (copy / MANIFEST_FILE).read_bytes() == before
    export_bundle(runs[:1], copy, data_dir=served.data_dir, rule="recall", target=1.0)  # replaces a bundle
    manifest = read_manifest(copy)
    assert [m.name for m in manifest.members] == ["run_1"] and manifest.operating_point.rule == "recall"
    assert manifest.operating_point.dev.recall == 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy", "foreign"]
    empty = tmp_path / "empty"
    empty.mkdir()
    export_bundle(runs[:1], empty, data_dir=served.data_dir)
    assert read_manifest(empty).members[0].name == "run_1"


def write_ensemble(ens_dir: Path, record: dict, dev_ids, dev_proba) -> Path:
    ens_dir.mkdir()
    (ens_dir / "weights.json").write_text(json.dumps(record))
    write_predictions(ens_dir / "FIN_dev_seen.csv", dev_ids, dev_proba)
    return ens_dir


def test_export_maps_a_weighted_ensemble_onto_the_runs(served, trained, tmp_path):
    runs, results = trained
    p1 = np.array([r.per_model["run_1"] for r in results])
    p2 = np.array([r.per_model["run_2"] for r in results])
    blended = 0.75 * p1 + 0.25 * p2
    record = {
        "method": "simplex",
        "families": {"A": ["run_1"], "B": ["run_2"]},
        "final": {"blend": "SX", "weights": {"A": 0.75, "B": 0.25}},
    }
    ens = write_ensemble(tmp_path / "ens", record, served.ids, blended)
    out = tmp_path / "weighted"
    manifest = export_bundle(runs, out, ensemble=ens, data_dir=served.data_dir, rule="recall", target=0.5)
    assert [m.weight for m in manifest.members] == [0.75, 0.25]
    assert manifest.ensemble.method == "simplex" and (out / "ensemble/weights.json").is_file()
    expected = choose_operating_point(
        dev_labels(served), read_predictions(ens / "FIN_dev_seen.csv").proba, "recall", 0.5
    )
    assert manifest.operating_point.threshold == expected.threshold
    scores = MemeScorer.from_bundle(out, device="cpu").score_batch(items(served))
    np.testing.assert_allclose([s.proba for s in scores], blended, atol=1e-6)


def test_export_refuses_blends_that_need_a_whole_split(served, trained, tmp_path):
    runs, results = trained
    record = {"method": "loop", "families": {"run_1": ["run_1"]}, "final": {"blend": "SX2", "weights": {}}}
    ens = write_ensemble(tmp_path / "loop", record, served.ids, [r.proba for r in results])
    with pytest.raises(ConfigError, match="method 'loop' .* cannot score a single meme"):
        export_bundle(runs, tmp_path / "out", ensemble=ens, data_dir=served.data_dir)
    assert not (tmp_path / "out").exists()
    record = {"method": "simplex", "families": {"Z": ["z"]}, "final": {"blend": "SX", "weights": {"Z": 1.0}}}
    ens = write_ensemble(tmp_path / "other", record, served.ids, [r.proba for r in results])
    with pytest.raises(ConfigError, match=r"runs \['run_1', 'run_2'\] belong to none of its families"):
        export_bundle(runs, tmp_path / "out", ensemble=ens, data_dir=served.data_dir)


def hub_cache(bundle: Path, cache: Path, repo_id: str) -> Path:
    """A bundle laid out as ``huggingface_hub`` caches a downloaded model repository."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(bundle, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return repo / "snapshots" / commit


def test_a_hub_id_resolves_from_the_offline_cache(served, trained, bundle, tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)  # "memeorg/hateful" must not exist as a local folder
    snapshot = hub_cache(bundle, tmp_path / "cache", "memeorg/hateful")
    assert resolve_bundle("memeorg/hateful", cache_dir=tmp_path / "cache") == snapshot
    loaded = MemeScorer.from_bundle("memeorg/hateful", device="cpu", cache_dir=tmp_path / "cache")
    _, results = trained
    np.testing.assert_allclose(
        [s.proba for s in loaded.score_batch(items(served))], [r.proba for r in results], atol=1e-9
    )
    with pytest.raises(ConfigError) as raised:
        resolve_bundle("memeorg/absent", cache_dir=tmp_path / "cache")
    message = str(raised.value)
    assert message.startswith(
        "memeorg/absent: not a local folder, and the Hugging Face Hub could not provide it"
    )
    assert "\n" not in message
    with pytest.raises(ConfigError, match="no such bundle folder"):
        resolve_bundle(tmp_path / "a" / "b" / "c")


def test_export_command(served, trained, tmp_path):
    runs, _ = trained
    out = tmp_path / "cli_bundle"
    args = ["export", *map(str, runs), "--out", str(out), "--data-dir", str(served.data_dir)]
    result = CliRunner().invoke(app, [*args, "--target-precision", "0.5"])
    assert result.exit_code == 0, result.output
    assert f"exported 2 model(s) -> {out}" in result.output and "by precision" in result.output
    assert read_manifest(out).operating_point.rule == "precision"
    result = CliRunner().invoke(app, [*args, "--target-precision", "0.5", "--target-recall", "0.5"])
    assert isinstance(result.exception, ConfigError) and "give one of" in str(result.exception)
    result = CliRunner().invoke(app, [*args, "--threshold", "0.3"])
    assert result.exit_code == 0 and read_manifest(out).operating_point.threshold == 0.3
    result = CliRunner().invoke(app, [*args, "--threshold", "best"])
    assert isinstance(result.exception, ConfigError) and "'accuracy' or a number" in str(result.exception)
    assert "Hateful Memes (Kiela" in (out / "README.md").read_text()


def test_the_card_says_when_the_labels_are_synthetic(served, trained, tmp_path):
    runs, _ = trained
    synthetic, cleaned = tmp_path / "synthetic", tmp_path / "cleaned"
    synthetic.mkdir()
    (synthetic / "synth_meta.json").write_text("{}")
    shutil.copytree(served.data_dir, cleaned)
    (cleaned / "cleaning_report.json").write_text(json.dumps({"data_dir": str(synthetic)}))
    export_bundle(runs[:1], tmp_path / "b", data_dir=cleaned)
    assert "Synthetic memes from `memeguard data synth`" in (tmp_path / "b" / "README.md").read_text()
