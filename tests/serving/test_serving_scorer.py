"""MemeScorer: on-the-fly features and probabilities equal what training saw through the feature store."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from serving_helpers import GRID_CELL_PX, GRID_LEVELS, ServingFixture, png_bytes, save_run, synthetic_image

from memeguard.data.meme import Meme
from memeguard.errors import ConfigError, DataError
from memeguard.features.grid import GRID_FEATURE_DIM, GridExtractor
from memeguard.features.store import FeatureStore
from memeguard.serving.scorer import MemeScorer, load_image, round_to_dtype
from memeguard.training.build import load_model_dir


def stored_probabilities(run: Path, store: FeatureStore, ids: list[int], texts: list[str]) -> np.ndarray:
    """What training/prediction computes: the model's processor over the STORED region records."""
    model = load_model_dir(run).eval()
    memes = [Meme(id=i, img="", text=t) for i, t in zip(ids, texts, strict=True)]
    batch = model.build_processor()(memes, store.records(ids))
    return model.predict_proba(batch).numpy()


def items(fx: ServingFixture) -> list[tuple[Path, str]]:
    return [(fx.image(i), t) for i, t in zip(fx.ids, fx.texts, strict=True)]


def test_extractor_rebuilt_from_store_meta_reproduces_stored_features(served, scorer):
    (extractor,) = scorer.extractors.values()
    assert isinstance(extractor, GridExtractor)
    assert extractor.levels == GRID_LEVELS and extractor.cell_px == GRID_CELL_PX
    store = FeatureStore.open(served.store)
    images = [load_image(served.image(i)) for i in served.ids]
    fresh = extractor.extract(images, served.ids, served.texts)["default"]
    for record, stored in zip(fresh, store.records(served.ids), strict=True):
        # The store holds float16: raw float32 features differ, rounded ones are bit-identical.
        assert not np.array_equal(record.features, stored.features)
        np.testing.assert_array_equal(round_to_dtype(record, "float16").features, stored.features)
        np.testing.assert_array_equal(record.boxes, stored.boxes)
        assert record.image_size == stored.image_size


def test_scores_equal_predict_proba_on_stored_records(served, scorer):
    store = FeatureStore.open(served.store)
    results = scorer.score_batch(items(served))
    for run in served.runs:
        expected = stored_probabilities(run, store, served.ids, served.texts)
        got = np.array([r.per_model[run.name] for r in results])
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    # The test can fail: the default grid (41 regions, not 10) gives the same models other probabilities.
    default = GridExtractor()
    model = load_model_dir(served.runs[0]).eval()
    memes = [Meme(id=i, img="", text=t) for i, t in zip(served.ids, served.texts, strict=True)]
    images = [load_image(served.image(i)) for i in served.ids]
    wrong = model.predict_proba(
        model.build_processor()(memes, default.extract(images, served.ids)["default"])
    )
    assert np.abs(wrong.numpy() - np.array([r.per_model[served.runs[0].name] for r in results])).max() > 1e-3


def test_ensemble_is_mean_and_single_run_matches(served, scorer):
    results = scorer.score_batch(items(served))
    names = [run.name for run in served.runs]
    per_model = np.array([[r.per_model[n] for n in names] for r in results])
    np.testing.assert_allclose([r.proba for r in results], per_model.mean(axis=1), atol=1e-12)
    assert np.abs(per_model[:, 0] - per_model[:, 1]).max() > 1e-3  # two genuinely different models
    solo = MemeScorer.from_runs([served.runs[1]], device="cpu")
    np.testing.assert_allclose([r.proba for r in solo.score_batch(items(served))], per_model[:, 1], atol=1e-7)
    assert [r.label for r in results] == [int(p >= 0.5) for p in per_model.mean(axis=1)]


def test_weights_and_threshold(served, scorer):
    weighted = MemeScorer.from_runs(served.runs, device="cpu", weights=[3, 1], threshold=0.9)
    results = weighted.score_batch(items(served))
    names = [run.name for run in served.runs]
    for r in results:
        expected = 0.75 * r.per_model[names[0]] + 0.25 * r.per_model[names[1]]
        assert r.proba == pytest.approx(expected, abs=1e-12)
        assert r.label == int(expected >= 0.9)
    with pytest.raises(ConfigError, match="weights"):
        MemeScorer.from_runs(served.runs, device="cpu", weights=[1])
    with pytest.raises(ConfigError, match="non-negative"):
        MemeScorer.from_runs(served.runs, device="cpu", weights=[1, -1])


def test_batch_equals_single_and_image_forms_agree(served, scorer):
    batch = scorer.score_batch(items(served), batch_size=4)  # chunks of 4 and 2
    meme_id, text = served.ids[2], served.texts[2]
    path = served.image(meme_id)
    single = scorer.score(path, text)
    assert single.proba == pytest.approx(batch[2].proba, abs=1e-6)
    from_bytes = scorer.score(path.read_bytes(), text)
    from_pil = scorer.score(Image.open(path), text)
    assert from_bytes.proba == pytest.approx(single.proba, abs=1e-12)
    assert from_pil.proba == pytest.approx(single.proba, abs=1e-12)


def test_bad_images_raise_data_errors(tmp_path):
    good = png_bytes(synthetic_image(0, (64, 64)))
    with pytest.raises(DataError, match="item 3: image is unreadable or truncated"):
        load_image(good[: len(good) // 2], "item 3")
    with pytest.raises(DataError, match="unreadable"):
        load_image(b"not an image at all", "item 0")
    with pytest.raises(DataError, match="empty"):
        load_image(b"", "item 0")
    bomb = png_bytes(Image.new("1", (8000, 6000)))  # 48 Mpx in a few KB
    assert len(bomb) < 100_000
    with pytest.raises(DataError, match="decompression bomb"):
        load_image(bomb, "upload")
    with pytest.raises(DataError, match="does not exist"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(DataError, match="text must be a string"):
        from memeguard.serving.scorer import _check_text

        _check_text(None, "item 0")


def test_given_text_passes_the_one_text_gate():
    from memeguard.serving.scorer import _check_text

    assert _check_text("a caption", "item 0") == "a caption"
    with pytest.raises(DataError) as caught:
        _check_text("a\ud800b", "item 2")
    assert str(caught.value) == (
        "item 2: 'text' holds a lone surrogate U+D800 at character 2; text must be valid Unicode"
    )


def _copy_run(src: Path, dst: Path, **config_changes: object) -> Path:
    shutil.copytree(src, dst)
    config = json.loads((dst / "train_config.json").read_text())
    config.update(config_changes)
    (dst / "train_config.json").write_text(json.dumps(config))
    return dst


def test_imported_store_needs_an_explicit_extractor(served, tmp_path):
    imported = tmp_path / "imported"
    shutil.copytree(served.store, imported)
    meta = json.loads((imported / "meta.json").read_text())
    meta.update(extractor="import-tsv", source="/data/hm_vgattr3636.tsv", source_format="vilio-tsv")
    (imported / "meta.json").write_text(json.dumps(meta))
    run = _copy_run(served.runs[0], tmp_path / "run_tsv", features=str(imported))
    with pytest.raises(ConfigError, match=r"'import-tsv'.*pass the matching extractor"):
        MemeScorer.from_runs([run], device="cpu")
    explicit = MemeScorer.from_runs(
        [run], device="cpu", extractor=GridExtractor(levels=GRID_LEVELS, cell_px=GRID_CELL_PX)
    )
    reference = MemeScorer.from_runs([served.runs[0]], device="cpu")
    path, text = served.image(served.ids[0]), served.texts[0]
    # Same features rounded to the same store dtype: the same probability.
    assert explicit.score(path, text).proba == pytest.approx(reference.score(path, text).proba, abs=1e-7)
    assert explicit.members[0].dtype == "float16"
    with pytest.raises(ConfigError, match="expects 42-d regions, the given extractor makes"):

        class Narrow(GridExtractor):
            def meta(self):
                return {**super().meta(), "feature_dim": 8}

        MemeScorer.from_runs([run], device="cpu", extractor=Narrow())


def test_missing_store_and_bare_model_dir(served, tmp_path):
    moved = _copy_run(served.runs[0], tmp_path / "run_moved", features=str(tmp_path / "gone"))
    with pytest.raises(ConfigError, match="is not here"):
        MemeScorer.from_runs([moved], device="cpu")
    # A copy of the store's meta.json beside the run is enough (a serving box without the store).
    shutil.copy(served.store / "meta.json", moved / "features_meta.json")
    snapshot = MemeScorer.from_runs([moved], device="cpu")
    reference = MemeScorer.from_runs([served.runs[0]], device="cpu")
    path, text = served.image(served.ids[1]), served.texts[1]
    assert snapshot.score(path, text).proba == pytest.approx(reference.score(path, text).proba, abs=1e-12)
    relative = _copy_run(served.runs[0], served.store.parent / "run_relative", features=served.store.name)
    try:  # a relative store path is found beside the run (here: in the run dir's parent)
        assert MemeScorer.from_runs([relative], device="cpu").members[0].spec.source == str(
            served.store / "meta.json"
        )
    finally:
        shutil.rmtree(relative)
    with pytest.raises(ConfigError, match="no train_config.json"):
        MemeScorer.from_runs([served.runs[0] / "model"], device="cpu")
    with pytest.raises(ConfigError, match="neither a train run dir"):
        MemeScorer.from_runs([tmp_path], device="cpu")


def test_zero_visual_run_ignores_the_image(served, tmp_path):
    run = save_run(
        tmp_path / "text_only", served.store, seed=5, feature_dim=GRID_FEATURE_DIM, zero_visual=True
    )
    text_only = MemeScorer.from_runs([run], device="cpu")
    a = text_only.score(served.image(served.ids[0]), "same text")
    b = text_only.score(served.image(served.ids[3]), "same text")
    assert a.proba == pytest.approx(b.proba, abs=1e-7)
    normal = save_run(tmp_path / "with_vision", served.store, seed=5, feature_dim=GRID_FEATURE_DIM)
    visual = MemeScorer.from_runs([normal], device="cpu")
    assert (
        abs(
            visual.score(served.image(served.ids[0]), "same text").proba
            - visual.score(served.image(served.ids[3]), "same text").proba
        )
        > 1e-4
    )


def test_runs_on_one_feature_setting_share_one_extractor(served, scorer, tmp_path):
    assert len(scorer.extractors) == 1
    other = tmp_path / "grid_default"
    from memeguard.features.extract import extract_features

    extract_features(served.data_dir, other, GridExtractor(levels=(2,), cell_px=4), progress=False)
    run = save_run(tmp_path / "run_other", other, seed=3, feature_dim=GRID_FEATURE_DIM)
    mixed = MemeScorer.from_runs([*served.runs, run], device="cpu")
    assert len(mixed.extractors) == 2
    health = mixed.describe()
    assert [m["name"] for m in health["models"]] == ["run_1", "run_2", "run_other"]
    assert sorted(e["settings"]["levels"] for e in health["extractors"]) == [[2], [3, 1]]
    store = FeatureStore.open(other)
    expected = stored_probabilities(run, store, served.ids, served.texts)
    got = [r.per_model["run_other"] for r in mixed.score_batch(items(served))]
    np.testing.assert_allclose(got, expected, atol=1e-6)


class StubButd:
    """Stands in for the BUTD detector (whose real weights cannot be had here): grid rows under box-variant
    names."""

    name = "butd"
    builds: list[dict] = []

    def __init__(self, **kwargs):
        StubButd.builds.append(kwargs)
        self.box_variants = list(kwargs["boxes"])
        self.grid = GridExtractor(levels=GRID_LEVELS, cell_px=GRID_CELL_PX)

    def variants(self):
        return self.box_variants

    def extract(self, images, meme_ids, texts):
        records = self.grid.extract(images, meme_ids)["default"]
        return {variant: records for variant in self.box_variants}

    def meta(self):
        return {"extractor": "butd", "weights_sha256": "a" * 64, "feature_dim": GRID_FEATURE_DIM}


def _as_butd_run(served, tmp_path: Path, variant: str, sha: str = "a" * 64) -> Path:
    store = tmp_path / f"butd_{variant}"
    shutil.copytree(served.store, store)
    meta = json.loads((store / "meta.json").read_text())
    weights = tmp_path / "faster_rcnn_from_caffe_attr.pkl"
    weights.write_bytes(b"stub")
    meta.update(extractor="butd", weights=str(weights), weights_sha256=sha, fp16=True, variant=variant)
    (store / "meta.json").write_text(json.dumps(meta))
    return _copy_run(served.runs[0], tmp_path / f"run_butd_{variant}", features=str(store))


def test_butd_runs_share_one_detector_pass_and_weights_are_checked(served, tmp_path, monkeypatch):
    import memeguard.features.factory as factory

    real = factory.make_extractor
    monkeypatch.setattr(
        factory, "make_extractor", lambda name, **kw: StubButd(**kw) if name == "butd" else real(name, **kw)
    )
    StubButd.builds.clear()
    runs = [_as_butd_run(served, tmp_path, "36"), _as_butd_run(served, tmp_path, "50")]
    both = MemeScorer.from_runs(runs, device="cpu")
    assert len(StubButd.builds) == 1  # one detector for both box variants
    build = StubButd.builds[0]
    assert build["boxes"] == ("36", "50") and build["device"] == "cpu"
    assert build["fp16"] is False  # recorded fp16, but fp16 needs CUDA
    assert build["weights"].endswith("faster_rcnn_from_caffe_attr.pkl")
    assert [m.variant for m in both.members] == ["36", "50"]
    result = both.score(served.image(served.ids[0]), served.texts[0])
    reference = MemeScorer.from_runs([served.runs[0]], device="cpu").score(
        served.image(served.ids[0]), served.texts[0]
    )
    assert list(result.per_model.values()) == pytest.approx([reference.proba] * 2, abs=1e-7)
    changed = _as_butd_run(served, tmp_path / "other", "36", sha="b" * 64)
    with pytest.raises(ConfigError, match="weights changed"):
        MemeScorer.from_runs([changed], device="cpu")


def test_scores_equal_the_training_runs_own_predictions(served, tmp_path):
    """End to end: ``finetune`` writes RUN_DIR/dev_seen.csv from the store; the scorer, from the images,
    agrees."""
    from memeguard.data.predictions import read_predictions
    from memeguard.training import TrainConfig, finetune

    cfg = TrainConfig(
        model="visualbert-tiny",
        features=str(served.store),
        data_dir=str(served.data_dir),
        out_dir=str(tmp_path / "trained"),
        train_split="dev_seen",
        eval_split=None,
        predict_splits=("dev_seen",),
        epochs=1,
        batch_size=4,
        lr=5e-4,
        progress=False,
        device="cpu",
    )
    result = finetune(cfg)
    written = read_predictions(result.predictions["dev_seen"])
    scorer = MemeScorer.from_runs([result.run_dir], device="cpu")
    by_id = dict(zip(served.ids, scorer.score_batch(items(served)), strict=True))
    np.testing.assert_allclose(written.proba, [by_id[int(i)].proba for i in written.ids], rtol=0, atol=1e-6)


def test_each_score_carries_its_models_probabilities_and_its_text(served, scorer):
    """score_images builds each Score once (numbers and text together): per-model values are the member
    probabilities bit for bit, in member order, and each meme keeps its own text and source."""
    images = [load_image(served.image(i)) for i in served.ids]
    results = scorer.score_images(images, served.texts, ocr="never")
    probs = scorer.member_probabilities(images, served.texts)
    names = [member.name for member in scorer.members]
    assert len(results) == len(served.ids) and len(names) == 2
    for k, result in enumerate(results):
        assert list(result.per_model) == names
        assert list(result.per_model.values()) == [float(p) for p in probs[:, k]]
        assert result.proba == pytest.approx(probs[:, k].mean(), abs=1e-12)
        assert result.label == int(result.proba >= scorer.threshold)
        assert (result.text, result.text_source) == (served.texts[k], "given")
        assert all(type(v) is float for v in (result.proba, *result.per_model.values()))
