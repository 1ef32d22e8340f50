"""``write_report``: one self-contained page whose numbers equal scikit-learn's on the same predictions.

Checked here: nothing is loaded from outside the page; every section is present; the score tables, the
operating point, the confusion matrices and the reliability bins equal an independent computation;
hostile meme text is escaped; the gallery holds the right memes at a bounded size; training logs are read
defensively; the page is replaced atomically. The headless-Chromium check (slow) renders the page.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.calibration import calibration_curve
from sklearn.metrics import accuracy_score, average_precision_score, confusion_matrix, roc_auc_score

from memeguard.data.hm import write_jsonl
from memeguard.data.meme import Meme
from memeguard.data.predictions import Predictions
from memeguard.ensemble.operating_point import choose_operating_point
from memeguard.errors import DataError
from memeguard.pipeline.report import write_report
from memeguard.pipeline.report.common import MAX_CURVE_POINTS, downsample
from memeguard.pipeline.report.gallery import THUMBNAIL_PX
from memeguard.pipeline.report.training import MAX_LINE_BYTES, read_curve

VOID = {"meta", "img", "br", "hr", "link", "input"}
SECTIONS = ("summary", "training", "scores", "calibration", "threshold", "ensemble", "gallery", "time")
HOSTILE = '<script>alert(1)</script><img src=x onerror="alert(2)"> & "quotes"'


class PageParser(HTMLParser):
    """Checks nesting; collects every tag's attributes, section ids, and table rows per preceding heading."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.tables: dict[str, list[list[str]]] = {}
        self.heading = ""
        self.text: list[str] = []
        self._cell: list[str] | None = None
        self._row: list[str] | None = None
        self._in_heading = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))
        if tag not in VOID:
            self.stack.append(tag)
        if tag in ("h2", "h3"):
            self._in_heading, self.heading = True, ""
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unexpected </{tag}> with open {self.stack[-3:]}")
            return
        self.stack.pop()
        if tag in ("h2", "h3"):
            self._in_heading = False
        elif tag in ("td", "th") and self._row is not None and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.tables.setdefault(self.heading, []).append(self._row)
            self._row = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._in_heading:
            self.heading += data
        if self._cell is not None:
            self._cell.append(data)

    def images(self, alt_prefix: str = "") -> list[bytes]:
        found = []
        for tag, attrs in self.tags:
            if tag == "img" and attrs.get("alt", "").startswith(alt_prefix):
                found.append(base64.b64decode(attrs["src"].split(",", 1)[1]))
        return found


def _case(
    seed: int = 0, dev_only: bool = False
) -> tuple[dict[str, dict[str, Predictions]], dict[str, dict[int, int]]]:
    """Four prediction sets on three splits (test_unseen unlabelled); ``dev_only``: dev_seen alone
    (fewer figures, for the tests about the gallery)."""
    rng = np.random.default_rng(seed)
    ids = {
        "dev_seen": np.arange(100, 160),
        "test_seen": np.arange(500, 540),
        "test_unseen": np.arange(900, 950),
    }
    if dev_only:
        ids = {"dev_seen": ids["dev_seen"]}
    truth = {s: rng.integers(0, 2, len(i)) for s, i in ids.items()}
    predictions: dict[str, dict[str, Predictions]] = {}
    for name, signal in (("O36", 1.0), ("U72", 2.0), ("V45", 0.5), ("ENSEMBLE", 1.5)):
        predictions[name] = {}
        for split, split_ids in ids.items():
            proba = 1 / (1 + np.exp(-(signal * (truth[split] - 0.5) + rng.normal(0, 1, len(split_ids)))))
            order = rng.permutation(len(split_ids))  # rows in a different order than the labels
            predictions[name][split] = Predictions(
                split_ids[order], proba[order], (proba[order] >= rng.uniform(0.4, 0.6)).astype(np.int64)
            )
    labels = {
        s: dict(zip(ids[s].tolist(), truth[s].tolist(), strict=True)) for s in ids if s != "test_unseen"
    }
    return predictions, labels


WEIGHTS = {
    "method": "loop",
    "final": {"weights": {"U72": 0.7, "O36": 0.3, "V45": 0.0}},
    "passes": [
        {"index": 1, "candidates": {"O36": 0.7, "U72": 0.8}, "kept": ["O36", "U72"], "blends": {"SA": 0.81}}
    ],
}


def _dataset(root: Path, labels: dict[int, int], size: tuple[int, int] = (600, 400)) -> Path:
    """dev_seen.jsonl with a picture per meme (and the hostile caption on the first one)."""
    (root / "img").mkdir(parents=True)
    memes = []
    for k, (meme_id, label) in enumerate(sorted(labels.items())):
        Image.new("RGB", size, (40 + k * 3 % 200, 90, 160)).save(root / "img" / f"{meme_id}.png")
        text = HOSTILE if k == 0 else f"caption of meme {meme_id}"
        memes.append(Meme(id=meme_id, img=f"img/{meme_id}.png", text=text, label=label))
    write_jsonl(root / "dev_seen.jsonl", memes)
    return root


def _run_dir(root: Path, train_split: str, updates: int, every: int, seed: int) -> Path:
    """A run dir as training writes it: train_config.json and metrics.jsonl (evaluations, then final)."""
    root.mkdir(parents=True)
    (root / "train_config.json").write_text(json.dumps({"train_split": train_split, "seed": seed}))
    lines = [
        json.dumps(
            {"update": u, "epoch": u // 100, "split": "dev_seen", "train_loss": 1 / u, "auroc": 1 - 1 / u}
        )
        for u in range(every, updates + 1, every)
    ]
    lines.append(
        json.dumps({"update": updates, "split": "dev_seen", "final": True, "auroc": 0.9, "accuracy": 0.8})
    )
    (root / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def full_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, PageParser, dict, dict]:
    """Every input given; built once for the tests that read it (none of them writes)."""
    tmp_path = tmp_path_factory.mktemp("full")
    predictions, labels = _case()
    data = _dataset(tmp_path / "data", labels["dev_seen"])
    logs = {
        "O36": {
            "O36-train": _run_dir(tmp_path / "runs" / "a", "train_clean", 400, 50, 1),
            "O36-traindev": _run_dir(tmp_path / "runs" / "b", "traindev", 420, 50, 1),
        }
    }
    path = write_report(
        tmp_path / "rep",
        predictions,
        labels,
        WEIGHTS,
        {"train": 12.5, "ensemble": 0.4},
        title="t<1>",
        training_logs=logs,
        data_dir=data,
        gallery_size=5,
    )
    parser = PageParser()
    parser.feed(path.read_text(encoding="utf-8"))
    parser.close()
    return path, parser, predictions, labels


def test_report_is_one_self_contained_file_with_every_section(full_report) -> None:
    path, parser, _, _ = full_report
    page = path.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and "<title>t&lt;1&gt;</title>" in page
    assert parser.errors == [] and parser.stack == []
    assert sorted(p.name for p in path.parent.iterdir()) == ["report.html"]  # no PNG beside it
    assert 'src="http' not in page and "<link" not in page and "<script" not in page.lower()
    for tag, attrs in parser.tags:
        for key in ("src", "href", "srcset", "action", "data"):
            value = attrs.get(key)
            if value is not None:
                assert value.startswith(("data:image/", "#")), f"<{tag} {key}={value[:40]}>"
    assert not re.search(r"url\(|@import|https?://", page.split("<body>")[0].split("</title>")[1])
    ids = [attrs["id"] for tag, attrs in parser.tags if tag == "section"]
    assert ids == list(SECTIONS)
    figures = parser.images()
    assert len(figures) >= 10 and all(f.startswith(b"\x89PNG") or f.startswith(b"\xff\xd8") for f in figures)


def test_score_tables_equal_sklearn(full_report) -> None:
    _, parser, predictions, labels = full_report
    for split in ("dev_seen", "test_seen"):
        rows = parser.tables[split]
        assert rows[0] == ["model", "memes", "AUROC", "AP", "accuracy"]
        assert [r[0] for r in rows[1:]] == ["ENSEMBLE", "O36", "U72", "V45"]
        for name, memes, auroc, ap, acc in rows[1:]:
            pred = predictions[name][split]
            y = [labels[split][int(i)] for i in pred.ids]
            assert int(memes) == len(pred)
            assert float(auroc) == pytest.approx(roc_auc_score(y, pred.proba), abs=5e-5)
            assert float(ap) == pytest.approx(average_precision_score(y, pred.proba), abs=5e-5)
            assert float(acc) == pytest.approx(accuracy_score(y, pred.label), abs=5e-5)
    assert "test_unseen" not in parser.tables  # unlabelled: no score table
    assert parser.tables["final blend weights (loop)"][1:] == [
        ["U72", "0.7000"],
        ["O36", "0.3000"],
        ["V45", "0.0000"],
    ]
    assert parser.tables["pass 1: dev AUROC"][1:] == [
        ["O36", "0.7000", "kept"],
        ["U72", "0.8000", "kept"],
        ["SA1", "0.8100", "blend"],
    ]
    assert parser.tables["Time per stage"][-1] == ["total", "12.9"]


def _arrays(predictions: dict, labels: dict, split: str) -> tuple[np.ndarray, np.ndarray]:
    pred = predictions["ENSEMBLE"][split]
    return np.asarray([labels[split][int(i)] for i in pred.ids]), pred.proba


def _brute_force_threshold(y: np.ndarray, proba: np.ndarray) -> float:
    """The accuracy-maximising threshold by trying every score (ties: the higher threshold, as the
    ROC-curve search visits thresholds from high to low and keeps the first maximum)."""
    candidates = sorted(set(proba.tolist()), reverse=True)
    accuracies = [float(((proba >= t) == (y == 1)).mean()) for t in candidates]
    return candidates[int(np.argmax(accuracies))]


def test_operating_point_and_confusion_matrices_equal_sklearn(full_report) -> None:
    _, parser, predictions, labels = full_report
    y_dev, p_dev = _arrays(predictions, labels, "dev_seen")
    threshold = _brute_force_threshold(y_dev, p_dev)
    page_text = "".join(parser.text)
    assert f"threshold {threshold:.4f} (the highest accuracy on dev_seen)" in page_text
    for split in ("dev_seen", "test_seen"):
        y, proba = _arrays(predictions, labels, split)
        (tn, fp), (fn, tp) = confusion_matrix(y, (proba >= threshold).astype(int), labels=[0, 1])
        rows = parser.tables[f"confusion matrix, {split}"]
        assert rows[1:] == [["not hateful", str(tn), str(fp)], ["hateful", str(fn), str(tp)]]
        summary = next(r for r in parser.tables["Summary"] if r[0] == split)
        assert float(summary[5]) == pytest.approx(accuracy_score(y, proba >= threshold), abs=5e-5)
    assert "confusion matrix, test_unseen" not in parser.tables


def test_other_operating_point_rules_are_the_bundles(tmp_path: Path) -> None:
    predictions, labels = _case(3)
    path = write_report(tmp_path, predictions, labels, rule="recall", target=0.8)
    y, proba = _arrays(predictions, labels, "dev_seen")
    expected = choose_operating_point(y, proba, "recall", 0.8).threshold
    page = html.unescape(path.read_text(encoding="utf-8"))
    assert f"threshold {expected:.4f} (the highest precision at recall >= 0.8 on dev_seen)" in page


def test_reliability_bins_match_an_independent_count(full_report) -> None:
    _, parser, predictions, labels = full_report
    for split in ("dev_seen", "test_seen"):
        y, proba = _arrays(predictions, labels, split)
        rows = parser.tables[f"reliability bins, {split}"][1:]
        assert len(rows) == 10
        counts = [sum(1 for p in proba if (k / 10 < p or k == 0) and p <= (k + 1) / 10) for k in range(10)]
        assert [int(r[1]) for r in rows] == counts
        share, mean = calibration_curve(y, proba, n_bins=10, strategy="uniform")
        filled = [r for r in rows if int(r[1]) > 0]
        assert [float(r[2]) for r in filled] == pytest.approx(mean, abs=5e-4)
        assert [float(r[3]) for r in filled] == pytest.approx(share, abs=5e-4)
        assert all(r[2] == r[3] == "–" for r in rows if int(r[1]) == 0)


def test_hostile_text_is_escaped_everywhere(tmp_path: Path) -> None:
    predictions, labels = _case(dev_only=True)
    # Make the meme with the hostile caption the most confidently wrong one.
    first = min(labels["dev_seen"])
    pred = predictions["ENSEMBLE"]["dev_seen"]
    pred.proba[pred.ids == first] = 1.0 - labels["dev_seen"][first]
    data = _dataset(tmp_path / "data", labels["dev_seen"])

    def explain(meme: Meme) -> tuple[bytes | None, list[tuple[str, float]]]:
        return None, [(word, 0.5) for word in meme.text.split()]

    path = write_report(tmp_path / "rep", predictions, labels, title=HOSTILE, data_dir=data, explain=explain)
    page = path.read_text(encoding="utf-8")
    assert "<script" not in page.lower() and "onerror=" not in page.replace("onerror=&quot;", "")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # the caption, shown as text
    assert page.count("&lt;script&gt;") >= 2  # title and the gallery card
    parser = PageParser()
    parser.feed(page)
    assert parser.errors == [] and [t for t, _ in parser.tags if t == "script"] == []


def test_gallery_shows_the_most_confidently_wrong_memes_bounded(tmp_path: Path) -> None:
    predictions, labels = _case(2, dev_only=True)
    data = _dataset(tmp_path / "data", labels["dev_seen"], size=(900, 640))
    seen: list[int] = []

    def explain(meme: Meme) -> tuple[bytes | None, dict[str, float] | None]:
        seen.append(meme.id)
        if meme.id % 3 == 0:
            raise DataError(f"meme {meme.id}: no attributions")
        overlay = io.BytesIO()
        Image.new("RGB", (900, 700), (200, 30, 30)).save(overlay, format="PNG")
        return overlay.getvalue(), {"caption": 0.9, "of": -0.2}

    y, proba = _arrays(predictions, labels, "dev_seen")
    ids = predictions["ENSEMBLE"]["dev_seen"].ids
    threshold = _brute_force_threshold(y, proba)
    wrong = [i for i in range(len(y)) if (proba[i] >= threshold) != (y[i] == 1)]
    expected = [int(ids[i]) for i in sorted(wrong, key=lambda i: (-abs(proba[i] - y[i]), ids[i]))[:7]]
    (data / "img" / f"{expected[1]}.png").unlink()  # a missing image is a note on its card

    path = write_report(tmp_path / "rep", predictions, labels, data_dir=data, explain=explain, gallery_size=7)
    assert seen == expected
    page = path.read_text(encoding="utf-8")
    assert re.findall(r"<div class=\"meta\">id (\d+)", page) == [str(i) for i in expected]
    parser = PageParser()
    parser.feed(page)
    thumbs = parser.images("meme ") + parser.images("attribution overlay")
    assert len(thumbs) >= 7
    for data_bytes in thumbs:
        with Image.open(io.BytesIO(data_bytes)) as image:
            assert image.format == "JPEG" and max(image.size) <= THUMBNAIL_PX
    assert ("no explanation: meme" in page) == any(i % 3 == 0 for i in expected)
    assert '<mark class="w"' in page
    assert f"meme {expected[1]}: image {data / 'img'}" in page and "does not exist" in page
    assert len(page) < 3_000_000


def test_training_logs_are_read_defensively_and_thinned(tmp_path: Path) -> None:
    run = _run_dir(tmp_path / "run", "train_clean", 30_000, 5, 7)
    with open(run / "metrics.jsonl", "a", encoding="utf-8") as handle:
        handle.write('{"update": 1, "train_loss": ' + "1" * (MAX_LINE_BYTES + 10) + "}\n")  # overlong
        handle.write("not json\n")
        handle.write('{"update": 30001, "train_lo')  # a kill mid-append
    curve = read_curve(run)
    assert curve is not None and curve.train_split == "train_clean" and not curve.eval_in_train
    assert len(curve.loss) == len(curve.auroc) == 6000 and curve.final_auroc == (30000.0, 0.9)
    assert curve.skipped == 3
    x, y = downsample(*np.asarray(curve.loss).T)
    assert len(x) <= MAX_CURVE_POINTS and x[0] == 5 and x[-1] == 30000
    assert np.allclose(y, 1 / x)
    assert read_curve(tmp_path / "nothing") is None


def test_runs_without_curves_get_a_table_of_final_evaluations(tmp_path: Path) -> None:
    predictions, labels = _case(dev_only=True)
    run = _run_dir(tmp_path / "run", "traindev", 840, 10_000, 1)  # eval_every 0: the final line only
    path = write_report(tmp_path / "rep", predictions, labels, training_logs={"V45": {"V45-traindev": run}})
    parser = PageParser()
    parser.feed(path.read_text(encoding="utf-8"))
    assert parser.tables["Training curves"][1:] == [["V45", "V45-traindev", "traindev", "840", "0.9000"]]


def test_report_rejects_predictions_without_labels(tmp_path: Path) -> None:
    predictions, labels = _case()
    labels["dev_seen"].pop(100)
    with pytest.raises(DataError, match="on dev_seen: 1 predicted ids have no label"):
        write_report(tmp_path, predictions, labels)


def test_a_failed_rewrite_leaves_the_previous_report(tmp_path: Path) -> None:
    predictions, labels = _case(dev_only=True)
    data = _dataset(tmp_path / "data", labels["dev_seen"])
    path = write_report(tmp_path / "rep", predictions, labels)
    before = path.read_bytes()

    def broken(meme: Meme) -> tuple[bytes | None, None]:
        raise RuntimeError("a bug in the provider")

    with pytest.raises(RuntimeError):
        write_report(tmp_path / "rep", predictions, labels, data_dir=data, explain=broken)
    assert path.read_bytes() == before and sorted(p.name for p in path.parent.iterdir()) == ["report.html"]


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_chromium_renders_the_report(full_report, tmp_path: Path) -> None:
    path = full_report[0]
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            *(
                CHROMIUM,
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--hide-scrollbars",
            ),
            *(f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,3000", f"--screenshot={shot}"),
            path.resolve().as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=np.int16)
    assert pixels.shape[:2] == (3000, 1280)
    header = pixels[:80].reshape(-1, 3).mean(0)
    assert header[2] > header[0] + 60  # the blue header band was drawn (styles applied)
    ink = (pixels.sum(-1) < 600).mean()  # non-white pixels: text, tables, figures
    assert 0.05 < ink < 0.9
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 500  # figures, not a flat page


def test_the_runner_hands_each_family_its_run_dirs(tmp_path: Path) -> None:
    from memeguard.pipeline.stages import training_logs

    a = tmp_path / "stages" / "finetune" / "V1-train-0123456789ab"
    b = tmp_path / "stages" / "finetune" / "V1-traindev-ba9876543210"
    run_predictions = {
        "V": {
            "1": {
                "dev_seen": a / "dev_seen.csv",
                "test_seen": b / "test_seen.csv",
                "test_unseen": b / "x.csv",
            }
        },
        "O": {},
    }
    assert training_logs(run_predictions) == {"V": {"V1-train": a, "V1-traindev": b}}


def test_a_huge_log_keeps_a_bounded_number_of_records_and_its_final_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from memeguard.pipeline.report import training

    monkeypatch.setattr(training, "MAX_RECORDS", 100)
    curve = read_curve(_run_dir(tmp_path / "run", "train_clean", 1000, 1, 3))
    assert curve is not None and len(curve.loss) == len(curve.auroc) == 100
    assert curve.skipped == 900 and curve.final_auroc == (1000.0, 0.9)
