"""CPU fast paths (``export --optimize int8|onnx``): agreement with fp32 on the synthetic test split for every
tiny architecture, bundle round trips, and one-line errors for a damaged ONNX file."""

from __future__ import annotations

import json
import shutil
from unittest import mock

import numpy as np
import pytest
import torch
from serving_helpers import runs_with_dev_predictions
from typer.testing import CliRunner

from memeguard.cli import app
from memeguard.data.metrics import auroc
from memeguard.errors import CheckpointError, ConfigError
from memeguard.models import create_model, get_config, list_models
from memeguard.models.fast import (
    OnnxMemeModel,
    export_onnx,
    int8_layer_names,
    load_optimized,
    quantize_int8,
)
from memeguard.names import ONNX_MODEL_FILE, TEST_SEEN, TEST_UNSEEN
from memeguard.serving.bundle import MANIFEST_FILE, export_bundle, load_scorer, read_manifest
from memeguard.serving.scorer import MemeScorer

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

# The region-feature transformers (the CLIP-embedding heads are small MLPs, scored in fp32 or int8).
REGION_TYPES = {"visualbert", "uniter", "oscar", "lxmert", "devlbert", "ernie-vil"}
TINY = sorted(n for n in list_models() if n.endswith("-tiny") and get_config(n).model_type in REGION_TYPES)
PROBA_TOLERANCE = 0.01  # the issue's bounds: probabilities within 0.01 of fp32, AUROC within 0.002
AUROC_TOLERANCE = 0.002
INT8_MAX_DP, INT8_MEAN_DP, INT8_AUROC = 0.04, 0.01, 0.03  # measured on these models: 0.030, 0.008, 0.022


# ----------------------------------------------------------------------- the synthetic test split


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """A small synthetic set's (labelled) test memes with their grid regions (float32 store)."""
    from memeguard.data.synth import generate_synthetic
    from memeguard.features.extract import extract_features
    from memeguard.features.grid import GridExtractor
    from memeguard.training.data import open_regions, read_memes

    root = tmp_path_factory.mktemp("optimize")
    generate_synthetic(root / "data", n=240, seed=3, progress=False)
    splits = [TEST_SEEN, TEST_UNSEEN]
    paths = extract_features(
        root / "data", root / "grid", GridExtractor(), splits=splits, progress=False, dtype="float32"
    )
    store = open_regions(next(iter(paths.values())))

    memes = [meme for split in splits for meme in read_memes(root / "data", split)]
    labels = np.array([meme.label for meme in memes])
    assert len(memes) >= 50 and 0 < labels.sum() < len(memes)
    return memes, [store[meme.id] for meme in memes], labels


def spread_model(name: str, memes, regions) -> tuple[torch.nn.Module, np.ndarray]:
    """A random model whose scores clearly depend on its input, and its fp32 probabilities.

    The 0.02-std init scores every meme ~0.5, which any approximation matches; training each model here
    would cost minutes. Weight matrices are drawn wider instead, at the first scale where P spreads.
    """
    for std in (0.1, 0.15, 0.2, 0.3):
        torch.manual_seed(0)
        model = create_model(name, visual_feat_dim=regions[0].feature_dim)
        with torch.no_grad():
            for parameter in model.parameters():
                if parameter.ndim >= 2:
                    parameter.normal_(0.0, std)
        fp32 = probabilities(model.eval(), memes, regions)
        if fp32.std() > 0.05:
            return model, fp32
    raise AssertionError(f"{name}: scores barely depend on the input; the comparison would be empty")


def probabilities(model, memes, regions, batch_size: int = 16) -> np.ndarray:
    processor = model.build_processor()
    out = []
    with torch.inference_mode():
        for start in range(0, len(memes), batch_size):
            batch = processor(memes[start : start + batch_size], regions[start : start + batch_size])
            out.append(model.predict_proba(batch).float().numpy())
    return np.concatenate(out)


@pytest.mark.slow  # a synthetic set rendered and extracted, one ONNX export per architecture
@pytest.mark.parametrize("name", TINY)
def test_onnx_meets_the_issue_bounds_and_int8_stays_near_fp32(name, synthetic, tmp_path):
    """ONNX: probabilities within 0.01 of fp32 and AUROC within 0.002 on the synthetic test split.

    int8 does not meet those bounds on these random models (weights drawn wide enough that the scores
    spread: measured max |dP| 0.009-0.030, mean 0.002-0.008, AUROC moved by up to 0.022 over ~55 memes,
    where one swapped pair is 0.0016; per-tensor int8 of every transformer Linear: 0.016-0.055): errors of
    unstructured wide layers compound and the small between-meme differences of a random network are
    lost. It is held to those measured bounds, which a broken quantisation (wrong layers, a bad scale)
    exceeds many times over; the issue's bounds hold for trained models (tests/models/test_fast_int8.py).
    """
    memes, regions, labels = synthetic
    model, fp32 = spread_model(name, memes, regions)
    exported = OnnxMemeModel(export_onnx(model, tmp_path / "m.onnx"), model.config)
    onnx = probabilities(exported, memes, regions)
    assert np.abs(onnx - fp32).max() < PROBA_TOLERANCE
    assert abs(auroc(labels, onnx) - auroc(labels, fp32)) < AUROC_TOLERANCE

    converted = set(int8_layer_names(model))
    int8_model = quantize_int8(model)
    still_fp32 = {layer for layer, module in int8_model.named_modules() if type(module) is torch.nn.Linear}
    assert len(converted) >= 4 and not converted & still_fp32
    int8 = probabilities(int8_model, memes, regions)
    worst, mean = np.abs(int8 - fp32).max(), np.abs(int8 - fp32).mean()
    assert 0 < worst < INT8_MAX_DP and mean < INT8_MEAN_DP, f"{name} int8: max {worst:.4f}, mean {mean:.4f}"
    assert abs(auroc(labels, int8) - auroc(labels, fp32)) < INT8_AUROC


def test_export_refuses_a_model_that_reads_other_inputs(tmp_path):
    assert len(TINY) == len(REGION_TYPES)
    others = [n for n in list_models() if n.endswith("-tiny") and n not in TINY]
    for name in others[:1]:
        with pytest.raises(ConfigError, match="ONNX export covers the models that read input_ids"):
            export_onnx(create_model(name), tmp_path / "m.onnx")
    assert not list(tmp_path.iterdir())


def test_export_refuses_a_graph_that_froze_a_shape(tmp_path):
    """UNITER packs text and regions to a length read from the data; without its tracing branch the
    exported graph would keep the example's length, and the check on other shapes must catch that."""
    import memeguard.models.uniter as uniter

    original = uniter.pack_text_and_regions

    def data_length_pack(text_mask, visual_mask):
        with mock.patch.object(torch.jit, "is_tracing", return_value=False):
            return original(text_mask, visual_mask)

    torch.manual_seed(0)
    model = create_model("uniter-tiny", visual_feat_dim=24).eval()
    with mock.patch.object(uniter, "pack_text_and_regions", data_length_pack):
        with pytest.raises(CheckpointError, match="disagrees with PyTorch on a batch of other shapes"):
            export_onnx(model, tmp_path / "m.onnx")
    assert not list(tmp_path.iterdir()), "a rejected export left a file behind"


# ------------------------------------------------------------------------------------------ bundles


def items(served):
    return [(served.image(i), t) for i, t in zip(served.ids, served.texts, strict=True)]


@pytest.fixture(scope="module")
def runs(served, tmp_path_factory):
    """The serving fixture's two runs, each with the dev_seen.csv that ``memeguard train`` writes."""
    root = tmp_path_factory.mktemp("optimize_runs")
    results = MemeScorer.from_runs(served.runs, device="cpu").score_batch(items(served))
    return runs_with_dev_predictions(served.runs, served.ids, results, root)


@pytest.fixture(scope="module")
def onnx_bundle(served, runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("optimize_bundles") / "onnx"
    export_bundle(runs, out, data_dir=served.data_dir, optimize="onnx")
    return out


@pytest.mark.parametrize("optimize", ["int8", "onnx"])
def test_optimized_bundle_scores_like_the_optimized_models_in_memory(
    optimize, served, runs, onnx_bundle, tmp_path
):
    if optimize == "onnx":
        bundle = onnx_bundle
    else:
        bundle = tmp_path / optimize
        args = ["export", *map(str, runs), "--out", str(bundle), "--data-dir", str(served.data_dir)]
        result = CliRunner().invoke(app, [*args, "--optimize", optimize])
        assert result.exit_code == 0 and f"({optimize};" in result.output, result.output
    manifest = read_manifest(bundle)
    assert manifest.optimize == optimize
    listed = {entry.path for entry in manifest.files}
    for member in manifest.members:
        assert (f"members/{member.name}/model/{ONNX_MODEL_FILE}" in listed) == (optimize == "onnx")
    assert f"export --optimize {optimize}" in (bundle / "README.md").read_text()

    loaded = MemeScorer.from_bundle(bundle)
    kinds = {type(member.model).__name__ for member in loaded.members}
    assert kinds == ({"OnnxMemeModel"} if optimize == "onnx" else {"VisualBertModel"})
    in_memory = MemeScorer.from_runs(runs, device="cpu", optimize="int8" if optimize == "int8" else "fp32")
    if optimize == "onnx":  # the in-memory optimised model: the same export, made here
        for member, run in zip(in_memory.members, runs, strict=True):
            path = export_onnx(load_optimized(run / "model", "fp32"), tmp_path / f"{run.name}.onnx")
            member.model = OnnxMemeModel(path, member.model.config)
    in_memory.threshold = loaded.threshold
    got, expected = loaded.score_batch(items(served)), in_memory.score_batch(items(served))
    for a, b in zip(got, expected, strict=True):
        assert a.per_model == pytest.approx(b.per_model, abs=1e-6) and a.label == b.label
    fp32 = MemeScorer.from_runs(runs, device="cpu").score_batch(items(served))
    worst = max(abs(a.proba - b.proba) for a, b in zip(got, fp32, strict=True))
    assert worst < PROBA_TOLERANCE


def test_from_runs_refuses_an_onnx_model_that_was_never_exported(runs):
    with pytest.raises(CheckpointError, match=f"{ONNX_MODEL_FILE}: ONNX model file not found"):
        MemeScorer.from_runs(runs[:1], device="cpu", optimize="onnx")


def test_score_cli_runs_the_onnx_bundle(served, onnx_bundle):
    image, text = items(served)[0]
    result = CliRunner().invoke(app, ["score", str(image), "--model", str(onnx_bundle), "--text", text])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output.strip().splitlines()[-1])
    expected = load_scorer(onnx_bundle).score(image, text)
    assert printed["proba"] == pytest.approx(expected.proba, abs=1e-6)


def test_a_damaged_onnx_file_in_a_bundle_is_one_line_naming_it(served, onnx_bundle, tmp_path):
    bundle = tmp_path / "damaged"
    shutil.copytree(onnx_bundle, bundle)
    member = read_manifest(bundle).members[0].name
    target = bundle / "members" / member / "model" / ONNX_MODEL_FILE
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    image, text = items(served)[0]
    result = CliRunner().invoke(app, ["score", str(image), "--model", str(bundle), "--text", text])
    message = str(result.exception)  # what the CLI prints as its one line
    assert isinstance(result.exception, CheckpointError) and "\n" not in message
    assert str(target) in message and "sha256" in message


def test_an_unreadable_onnx_file_is_one_error_naming_it(runs, tmp_path):
    model_dir = tmp_path / "model"
    shutil.copytree(runs[0] / "model", model_dir)
    (model_dir / ONNX_MODEL_FILE).write_bytes(b"\x08\x07 this is not a protobuf graph")
    with pytest.raises(CheckpointError, match="not a readable ONNX model") as info:
        load_optimized(model_dir, "onnx")
    assert str(model_dir / ONNX_MODEL_FILE) in str(info.value) and "\n" not in str(info.value)


def test_unknown_optimizations_are_refused_at_export_and_in_the_manifest(served, runs, onnx_bundle, tmp_path):
    result = CliRunner().invoke(
        app, ["export", str(runs[0]), "--out", str(tmp_path / "b"), "--optimize", "int4"]
    )
    assert isinstance(result.exception, ConfigError)
    assert "unknown optimization 'int4'" in str(result.exception)
    assert not (tmp_path / "b").exists()
    bundle = tmp_path / "edited"
    shutil.copytree(onnx_bundle, bundle)
    manifest = json.loads((bundle / MANIFEST_FILE).read_text())
    manifest["optimize"] = "int4"
    (bundle / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match="invalid manifest at optimize"):
        read_manifest(bundle)


def test_an_onnx_bundle_without_its_graph_is_refused(onnx_bundle, tmp_path):
    bundle = tmp_path / "no_graph"
    shutil.copytree(onnx_bundle, bundle)
    manifest = json.loads((bundle / MANIFEST_FILE).read_text())
    manifest["files"] = [f for f in manifest["files"] if not f["path"].endswith(ONNX_MODEL_FILE)]
    (bundle / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match=f"lists no model/{ONNX_MODEL_FILE}"):
        MemeScorer.from_bundle(bundle)


def test_fast_paths_run_on_the_cpu_only(runs, onnx_bundle):
    scorer = MemeScorer.from_runs(runs[:1], optimize="int8")  # device auto -> cpu, even with a GPU
    assert scorer.device.type == "cpu"
    member = read_manifest(onnx_bundle).members[0].name
    model_dir = onnx_bundle / "members" / member / "model"
    with pytest.raises(ConfigError, match="runs on the CPU"):
        load_optimized(model_dir, "onnx").to("cuda")


def test_an_optimized_bundle_is_explained_with_its_fp32_weights(served, runs, onnx_bundle):
    """Gradients do not flow through an ONNX graph: explanations load the bundle's fp32 members (as
    ``memeguard explain`` does), and an optimised scorer asked to explain says so in one line."""
    pytest.importorskip("captum")
    from memeguard.serving.explain import explain_image
    from memeguard.serving.scorer import load_image

    image, text = items(served)[0]
    image = load_image(image)
    with pytest.raises(ConfigError, match="onnx fast path"):
        explain_image(load_scorer(onnx_bundle), image, text, steps=4)
    from_bundle = explain_image(load_scorer(onnx_bundle, optimize="fp32"), image, text, steps=4)
    from_runs = explain_image(MemeScorer.from_runs(runs, device="cpu"), image, text, steps=4)
    for mine, theirs in zip(from_bundle.models, from_runs.models, strict=True):
        assert mine.logit == pytest.approx(theirs.logit, abs=1e-6)
        assert [r.attribution for r in mine.regions] == pytest.approx(
            [r.attribution for r in theirs.regions], abs=1e-6
        )
