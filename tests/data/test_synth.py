"""The synthetic meme set: layout, determinism, split structure, and the multimodal-only rule.

Attribute checks recover the hidden attributes *independently* (hue statistics from the pixels, word lists
written here), never from the generator's own helpers; ``synth_meta.json`` is only used for grouping."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path

import imagehash
import numpy as np
import pytest
from PIL import Image
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GroupKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from memeguard.data import synth
from memeguard.data.synth import generate_synthetic
from memeguard.errors import ConfigError, DataError
from memeguard.names import SYNTH_META_FILE

SPLITS = ("train", "dev_seen", "dev_unseen", "test_seen", "test_unseen")
ANIMALS = {"dog", "cat", "horse", "cow", "pig", "sheep", "duck", "goat", "bear", "monkey"}
VEHICLES = {"car", "truck", "bus", "train", "bike", "boat", "plane", "ship", "van", "taxi"}
N = 600


def read_split(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, synth.SynthSummary]:
    out = tmp_path_factory.mktemp("synth") / "hm"
    return out, generate_synthetic(out, n=N, seed=3, progress=False)


@pytest.fixture(scope="module")
def memes(dataset) -> dict[str, list[dict]]:
    out, _ = dataset
    return {split: read_split(out / f"{split}.jsonl") for split in SPLITS}


@pytest.fixture(scope="module")
def meta(dataset) -> dict[int, dict]:
    out, _ = dataset
    return {int(k): v for k, v in json.loads((out / SYNTH_META_FILE).read_text())["memes"].items()}


@pytest.fixture(scope="module")
def unique(memes) -> list[dict]:
    by_id = {}
    for split in SPLITS:
        for meme in memes[split]:
            by_id.setdefault(meme["id"], meme)
    return [by_id[k] for k in sorted(by_id)]


@pytest.fixture(scope="module")
def pixels(dataset, unique) -> dict[int, np.ndarray]:
    out, _ = dataset
    return {m["id"]: np.asarray(Image.open(out / m["img"]).convert("RGB")) for m in unique}


def test_layout_and_schema(dataset, memes, pixels):
    out, summary = dataset
    assert sorted(p.name for p in out.glob("*.jsonl")) == sorted(f"{s}.jsonl" for s in SPLITS)
    for split, rows in memes.items():
        for row in rows:
            assert list(row) == ["id", "img", "label", "text"], split
            assert isinstance(row["id"], int) and 0 < row["id"] < 100_000
            assert row["img"] == f"img/{row['id']:05d}.png"
            assert row["label"] in (0, 1) and row["text"].strip()
    png_ids = {int(p.stem) for p in (out / "img").glob("*.png")}
    assert png_ids == set(pixels)  # one image per unique id, nothing else
    sizes = {arr.shape[:2] for arr in pixels.values()}
    assert len(sizes) > 50
    assert all(160 <= h <= 400 and 160 <= w <= 400 for h, w in sizes)
    # ids look random: spread over the 5-digit range, some with leading zeros
    ids = np.array(sorted(pixels))
    assert ids.min() < 10_000 and ids.max() > 90_000
    words = [len(m["text"].split()) for m in memes["train"]]
    assert 8 <= np.mean(words) <= 13 and max(words) >= 16 and min(words) <= 6
    assert summary.split_sizes == {s: len(memes[s]) for s in SPLITS}


def test_split_proportions_and_overlaps(memes, unique):
    ids = {s: [m["id"] for m in rows] for s, rows in memes.items()}
    assert len(unique) == N
    for split, rows in ids.items():
        assert len(rows) == len(set(rows)), f"repeated id in {split}"
    real = {"train": 8500, "dev_seen": 500, "dev_unseen": 540, "test_seen": 1000, "test_unseen": 2000}
    for split, size in real.items():
        assert abs(len(ids[split]) - size * N / 12140) <= 1.5, split
    shared = set(ids["dev_seen"]) & set(ids["dev_unseen"])
    assert abs(len(shared) - 400 * N / 12140) <= 1.5
    for a in SPLITS:
        for b in SPLITS:
            if a < b and {a, b} != {"dev_seen", "dev_unseen"}:
                assert not set(ids[a]) & set(ids[b]), (a, b)
    seen = {m["id"]: m for m in memes["dev_seen"]}
    assert all(seen[m["id"]] == m for m in memes["dev_unseen"] if m["id"] in shared)
    rates = {"train": 0.355, "dev_seen": 0.494, "dev_unseen": 0.370, "test_seen": 0.49, "test_unseen": 0.375}
    for split, rate in rates.items():
        labels = [m["label"] for m in memes[split]]
        assert abs(sum(labels) - rate * len(labels)) <= 2, split


def _colour_features(arr: np.ndarray) -> tuple[np.ndarray, int]:
    """6x6 grid of mean RGB and saturation, a 12-bin hue histogram of saturated pixels; and the test's own
    reading of the salient colour family: 1 if strongly saturated cool pixels outnumber warm ones."""
    image = Image.fromarray(arr)
    hsv_image = image.convert("HSV")
    hsv = np.asarray(hsv_image).astype(np.float32)
    hue, sat, val = hsv[..., 0] * 360 / 255, hsv[..., 1] / 255, hsv[..., 2] / 255
    grid_rgb = np.asarray(image.resize((6, 6), Image.Resampling.BOX), dtype=np.float32) / 255
    grid_sat = np.asarray(hsv_image.resize((6, 6), Image.Resampling.BOX), dtype=np.float32)[..., 1:2] / 255
    cells = np.concatenate([grid_rgb, grid_sat], axis=-1).ravel()
    strong = (sat > 0.6) & (val > 0.5)
    hist = np.histogram(hue[strong], bins=12, range=(0, 360))[0] / strong.size
    warm = strong & ((hue < 40) | (hue > 305))
    cool = strong & (hue > 95) & (hue < 240)
    return np.concatenate([cells, hist]), int(cool.sum() > warm.sum())


def _text_attribute(text: str) -> int:
    words = set(text.replace(":", " ").split())
    assert len(words & (ANIMALS | VEHICLES)) == 1, text
    return int(bool(words & VEHICLES))


def _oof_auroc(features, target, groups, model=None) -> float:
    """Out-of-fold AUROC; folds keep confounder groups together, as real train/test splits do."""
    model = model or make_pipeline(
        StandardScaler(with_mean=False), LogisticRegression(C=0.1, solver="liblinear")
    )
    scores = cross_val_predict(
        model, features, target, groups=groups, cv=GroupKFold(5), method="predict_proba"
    )
    return roc_auc_score(target, scores[:, 1])


def test_unimodal_chance_joint_separable(unique, pixels, meta):
    # One BLAS/OpenMP thread: torch's runtime (loaded by conftest) and sklearn's otherwise spin against
    # each other on 2 busy cores and make this test 20x slower.
    with threadpool_limits(1):
        _check_unimodal_chance_joint_separable(unique, pixels, meta)


def _check_unimodal_chance_joint_separable(unique, pixels, meta):
    labels = np.array([m["label"] for m in unique])
    groups = np.array([meta[m["id"]]["group"] for m in unique])
    image_feats, visual = zip(*(_colour_features(pixels[m["id"]]) for m in unique), strict=True)
    image_feats, visual = np.array(image_feats), np.array(visual)
    text_attr = np.array([_text_attribute(m["text"]) for m in unique])
    # the recovered attributes are the hidden ones (so the chance results below are not vacuous)
    assert (visual == np.array([meta[m["id"]]["visual"] for m in unique])).mean() >= 0.98
    assert (text_attr == np.array([meta[m["id"]]["text_attr"] for m in unique])).all()

    bow = CountVectorizer(token_pattern=r"[^\s]+").fit_transform([m["text"] for m in unique])
    text_auc = _oof_auroc(bow, labels, groups)
    image_auc = _oof_auroc(image_feats, labels, groups)
    assert 0.4 <= text_auc <= 0.6, text_auc
    assert 0.4 <= image_auc <= 0.6, image_auc
    boosted_auc = _oof_auroc(
        image_feats, labels, groups, HistGradientBoostingClassifier(max_iter=60, max_depth=3)
    )
    assert 0.4 <= boosted_auc <= 0.6, boosted_auc
    # the same features do carry their own attribute
    assert _oof_auroc(bow, text_attr, groups) >= 0.95
    assert _oof_auroc(image_feats, visual, groups) >= 0.9
    joint = visual ^ text_attr
    assert roc_auc_score(labels, joint) >= 0.9
    assert 0.93 <= (joint == labels).mean() <= 0.995  # ~3 % label noise


def test_twins_flip_labels(dataset, unique, pixels, meta):
    by_group = defaultdict(list)
    for m in unique:
        by_group[meta[m["id"]]["group"]].append(m)
    n_image = n_text = 0
    for members in by_group.values():
        roles = {meta[m["id"]]["role"]: m for m in members}
        base = roles.get("base")
        if "image_twin" in roles:
            twin = roles["image_twin"]
            n_image += 1
            assert twin["label"] != base["label"]
            diff = [(a, b) for a, b in zip(base["text"].split(), twin["text"].split(), strict=True) if a != b]
            assert len(diff) == 1 and _text_attribute(diff[0][0]) != _text_attribute(diff[0][1])
            a, b = pixels[base["id"]], pixels[twin["id"]]
            assert a.shape == b.shape
            keep = np.ones(a.shape[:2], bool)
            for x0, y0, x1, y1 in meta[base["id"]]["caption_boxes"] + meta[twin["id"]]["caption_boxes"]:
                keep[max(0, y0) : y1, max(0, x0) : x1] = False
            assert keep.mean() > 0.3 and (a[keep] == b[keep]).all()
        if "text_twin" in roles:
            twin = roles["text_twin"]
            n_text += 1
            assert twin["text"] == base["text"] and twin["label"] != base["label"]
            assert (
                pixels[base["id"]].shape != pixels[twin["id"]].shape
                or (pixels[base["id"]] != pixels[twin["id"]]).mean() > 0.5
            )
    assert n_image >= 0.1 * N / 2 and n_text >= 0.1 * N / 2


def test_captions_are_visible(unique, pixels, meta):
    for m in unique:
        arr = pixels[m["id"]]
        white = (arr >= 250).all(-1)
        black = (arr <= 5).all(-1)
        inside = np.zeros(arr.shape[:2], bool)
        for x0, y0, x1, y1 in meta[m["id"]]["caption_boxes"]:
            inside[max(0, y0) : y1, max(0, x0) : x1] = True
        assert white[inside].sum() >= 30 and black[inside].sum() >= 30, m["id"]
        assert not white[~inside].any() and not black[~inside].any(), m["id"]  # picture never looks like text
        rows = np.flatnonzero(inside.any(1))
        assert rows.min() < arr.shape[0] * 0.25 or rows.max() > arr.shape[0] * 0.75  # top and/or bottom


def _crude_hash(arr: np.ndarray) -> str:
    """vilio's crude hash: walk the anti-diagonal from the top-right corner to the first 'coloured' pixel."""
    h, w, _ = arr.shape
    for k in range(min(h, w)):
        r, g, b = (int(v) for v in arr[k, w - 1 - k])
        if 1 < r < 255 and r != g != b:
            return f"{h}{w}{r}{g}{b}"
    raise AssertionError("no coloured pixel on the anti-diagonal")


def test_planted_duplicates_found_by_vilio_rule(dataset, memes, pixels):
    out, summary = dataset
    assert len(summary.duplicate_pairs) == round(0.01 * len(memes["train"]))
    train_ids = {m["id"] for m in memes["train"]}
    seen = {m["id"] for m in memes["dev_seen"]}
    rows = memes["train"] + memes["dev_seen"] + [m for m in memes["dev_unseen"] if m["id"] not in seen]
    by_phash = defaultdict(list)
    for m in rows:
        by_phash[str(imagehash.phash(Image.open(out / m["img"])))].append(m)
    found = set()
    for group in by_phash.values():
        texts = Counter(m["text"] for m in group)
        crude = Counter(_crude_hash(pixels[m["id"]]) for m in group)
        if (
            len(group) == 2
            and max(texts.values()) > 1
            and max(crude.values()) > 1
            and group[0]["label"] == group[1]["label"]
        ):
            found.add(frozenset(m["id"] for m in group))
    planted = {frozenset(pair) for pair in summary.duplicate_pairs}
    assert found == planted
    for a, b in summary.duplicate_pairs:
        assert {a, b} <= train_ids
        assert (out / f"img/{a:05d}.png").read_bytes() == (out / f"img/{b:05d}.png").read_bytes()


def test_target_nouns_are_single_wordpieces():
    from memeguard.models.tokenization import default_uncased_vocab, read_wordpiece_vocab

    vocab = read_wordpiece_vocab(default_uncased_vocab())
    assert set(synth.TARGET_NOUNS[0]) == ANIMALS and set(synth.TARGET_NOUNS[1]) == VEHICLES
    assert all(noun in vocab for noun in ANIMALS | VEHICLES)


def test_deterministic_by_seed_and_worker_count(tmp_path):
    def snapshot(path: Path) -> dict[str, bytes]:
        return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}

    generate_synthetic(tmp_path / "a", n=120, seed=7, progress=False, workers=1)
    generate_synthetic(tmp_path / "b", n=120, seed=7, progress=False, workers=2)
    generate_synthetic(tmp_path / "c", n=50, seed=8, progress=False)
    a, b = snapshot(tmp_path / "a"), snapshot(tmp_path / "b")
    assert a == b
    c = snapshot(tmp_path / "c")
    assert (tmp_path / "a/train.jsonl").read_text() != (tmp_path / "c/train.jsonl").read_text()
    assert len(c) < len(a)


def test_killed_run_never_looks_complete_and_can_rerun(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = synth._png_bytes

    def dying(image):
        calls["n"] += 1
        if calls["n"] > 20:
            raise KeyboardInterrupt
        return real(image)

    monkeypatch.setattr(synth, "_png_bytes", dying)
    with pytest.raises(KeyboardInterrupt):
        generate_synthetic(tmp_path / "d", n=50, seed=1, progress=False, workers=1)
    assert list((tmp_path / "d").glob("*.jsonl")) == []
    assert not list((tmp_path / "d/img").glob(".*.tmp"))
    monkeypatch.setattr(synth, "_png_bytes", real)
    summary = generate_synthetic(tmp_path / "d", n=50, seed=1, progress=False)
    assert sum(len(read_split(tmp_path / f"d/{s}.jsonl")) for s in SPLITS) >= 50
    assert len(list((tmp_path / "d/img").glob("*.png"))) == summary.n


def test_bad_arguments_raise_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="n=10"):
        generate_synthetic(tmp_path / "e", n=10)
    with pytest.raises(ConfigError, match="seed"):
        generate_synthetic(tmp_path / "e", n=100, seed=-1)
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "mine.txt").write_text("keep me")
    with pytest.raises(DataError, match="not empty"):
        generate_synthetic(tmp_path / "f", n=50, progress=False)
    assert (tmp_path / "f" / "mine.txt").read_text() == "keep me"


def test_vilio_cleaning_removes_exactly_one_of_each_planted_pair(dataset, unique, tmp_path):
    cleaning = pytest.importorskip("memeguard.data.cleaning")
    listed = set(cleaning.ISIS_DUPS) | set(cleaning.ADD_DUPS) | set(cleaning.DIM_ERROR_IDS)
    assert listed == synth.VILIO_LISTED_IDS
    assert not listed & {m["id"] for m in unique}  # no synthetic id is dropped for being on vilio's lists
    out, summary = dataset
    report = cleaning.clean_dataset(out, tmp_path / "clean", progress=False).report
    removed = {int(c["id"]) for c in report["removed"]}
    assert len(removed) == len(summary.duplicate_pairs)
    assert all(len(removed & set(pair)) == 1 for pair in summary.duplicate_pairs)
    assert report["conflicting_label_pairs"] == []


def _noun_group(text: str) -> int:
    words = set(text.split())
    assert len(words & (ANIMALS | VEHICLES)) == 1, text
    return int(bool(words & VEHICLES))


def test_lower_label_noise_keeps_every_meme_and_only_unflips_nouns():
    def by_id(label_noise):
        splits, images = synth.plan_dataset(2000, seed=5, label_noise=label_noise)
        return {(split, p.meme_id): p for split, plans in splits.items() for p in plans}, images

    noisy, noisy_images = by_id(synth.LABEL_NOISE)
    half, _ = by_id(synth.LABEL_NOISE / 2)
    clean, clean_images = by_id(0.0)
    assert noisy.keys() == clean.keys() == half.keys()
    assert [i.seed for i in noisy_images] == [i.seed for i in clean_images]  # the same pictures
    flipped = {key for key, p in noisy.items() if _noun_group(p.text) != p.visual ^ p.label}
    assert 20 <= len(flipped) <= 0.05 * len(noisy)  # ~3 % of the memes disagree with the rule
    assert {key for key, p in noisy.items() if p.noisy} == flipped  # the flag names exactly those
    half_flipped = {key for key, p in half.items() if _noun_group(p.text) != p.visual ^ p.label}
    assert half_flipped < flipped and abs(len(half_flipped) - len(flipped) / 2) <= 5
    for key, p in clean.items():
        q = noisy[key]
        assert (p.label, p.visual, p.image, p.role) == (q.label, q.visual, q.image, q.role)
        assert _noun_group(p.text) == p.visual ^ p.label and not p.noisy  # every label follows the rule
        if key not in flipped:
            assert p.text == q.text
        else:  # same caption with the noun of the other group
            assert len(p.text.split()) == len(q.text.split()) and p.text != q.text


def test_label_noise_out_of_range_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="label noise"):
        generate_synthetic(tmp_path / "g", n=50, label_noise=0.1)
    assert not (tmp_path / "g").exists()


def _background_family_score(image: Image.Image, objects: list[dict]) -> float:
    """Share of cool minus share of warm chromatic pixels outside the salient objects' boxes (hues read
    from the pixels with PIL's HSV, ranges written here)."""
    hsv = np.asarray(image.convert("HSV"), dtype=np.float64)
    hue, sat = hsv[..., 0] * 360 / 255, hsv[..., 1] / 255
    outside = np.ones(hue.shape, dtype=bool)
    for obj in objects:
        (cx, cy), reach = obj["centre"], obj["radius"] * 1.3
        outside[
            max(0, int(cy - reach)) : int(cy + reach) + 1, max(0, int(cx - reach)) : int(cx + reach) + 1
        ] = 0
    chromatic = outside & (sat > 0.25)
    warm = chromatic & ((hue >= 340) | (hue <= 40) | ((hue >= 305) & (hue <= 340)))
    cool = chromatic & (hue >= 100) & (hue <= 240)
    return float((cool.sum() - warm.sum()) / outside.sum())


def test_untinted_light_leaves_the_colour_family_to_the_object_alone():
    _, images = synth.plan_dataset(200, seed=3)
    images = images[:60]
    scores: dict[bool, list[float]] = {True: [], False: []}
    for plan in images:
        tinted_picture, tinted_info = synth.render_picture(plan)
        picture, info = synth.render_picture(replace(plan, tinted_light=False))
        assert info == tinted_info  # same objects, shapes and places: only the light changes
        scores[True].append(_background_family_score(tinted_picture, tinted_info["objects"]))
        scores[False].append(_background_family_score(picture, info["objects"]))
    visual = [plan.visual for plan in images]
    assert 0.3 < sum(visual) / len(visual) < 0.7
    assert roc_auc_score(visual, scores[True]) > 0.9  # the default light tells the class
    assert 0.25 < roc_auc_score(visual, scores[False]) < 0.75  # untinted, the background does not


def test_untinted_set_keeps_the_memes_and_says_so(tmp_path):
    generate_synthetic(tmp_path / "tinted", n=50, seed=2, progress=False, workers=1)
    generate_synthetic(tmp_path / "plain", n=50, seed=2, progress=False, workers=1, tinted_light=False)
    for split in SPLITS:
        assert (tmp_path / "tinted" / f"{split}.jsonl").read_bytes() == (
            tmp_path / "plain" / f"{split}.jsonl"
        ).read_bytes()
    tinted = json.loads((tmp_path / "tinted" / SYNTH_META_FILE).read_text())
    plain = json.loads((tmp_path / "plain" / SYNTH_META_FILE).read_text())
    assert "tinted_light" not in tinted and plain.pop("tinted_light") is False
    assert plain == tinted
    differ = [
        path.name
        for path in (tmp_path / "tinted" / "img").glob("*.png")
        if path.read_bytes() != (tmp_path / "plain" / "img" / path.name).read_bytes()
    ]
    assert len(differ) == len(list((tmp_path / "tinted" / "img").glob("*.png")))
