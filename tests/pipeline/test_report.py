"""``write_report``: valid HTML, every referenced PNG exists, table numbers equal scikit-learn's."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import accuracy_score, roc_auc_score

from memeguard.data.predictions import Predictions
from memeguard.errors import DataError
from memeguard.pipeline.report import write_report

VOID = {"meta", "img", "br", "hr", "link", "input"}


class PageParser(HTMLParser):
    """Checks that tags nest properly; collects image sources and table rows per preceding heading."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.images: list[str] = []
        self.tables: dict[str, list[list[str]]] = {}
        self.heading = ""
        self._text: list[str] | None = None
        self._row: list[str] | None = None
        self._in_heading = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.images.append(dict(attrs)["src"] or "")
        if tag not in VOID:
            self.stack.append(tag)
        if tag in ("h2", "h3"):
            self._in_heading, self.heading = True, ""
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._text = []

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unexpected </{tag}> with open {self.stack[-3:]}")
            return
        self.stack.pop()
        if tag in ("h2", "h3"):
            self._in_heading = False
        elif tag in ("td", "th") and self._row is not None and self._text is not None:
            self._row.append("".join(self._text).strip())
            self._text = None
        elif tag == "tr" and self._row is not None:
            self.tables.setdefault(self.heading, []).append(self._row)
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._in_heading:
            self.heading += data
        if self._text is not None:
            self._text.append(data)


def _case(seed: int = 0) -> tuple[dict[str, dict[str, Predictions]], dict[str, dict[int, int]]]:
    rng = np.random.default_rng(seed)
    ids = {
        "dev_seen": np.arange(100, 160),
        "test_seen": np.arange(500, 540),
        "test_unseen": np.arange(900, 950),
    }
    truth = {s: rng.integers(0, 2, len(i)) for s, i in ids.items()}
    predictions: dict[str, dict[str, Predictions]] = {}
    for name, signal in (("O36", 1.0), ("U72", 2.0), ("V45", 0.5), ("ENSEMBLE", 2.5)):
        predictions[name] = {}
        for split, split_ids in ids.items():
            proba = 1 / (1 + np.exp(-(signal * (truth[split] - 0.5) + rng.normal(0, 1, len(split_ids)))))
            order = rng.permutation(len(split_ids))  # rows in a different order than the labels
            predictions[name][split] = Predictions(
                split_ids[order], proba[order], (proba[order] >= rng.uniform(0.4, 0.6)).astype(np.int64)
            )
    labels = {
        s: dict(zip(ids[s].tolist(), truth[s].tolist(), strict=True)) for s in ("dev_seen", "test_seen")
    }
    return predictions, labels


def test_report_is_valid_html_with_existing_pngs_and_sklearn_numbers(tmp_path: Path) -> None:
    predictions, labels = _case()
    weights = {
        "method": "loop",
        "final": {"weights": {"U72": 0.7, "O36": 0.3, "V45": 0.0}},
        "passes": [
            {
                "index": 1,
                "candidates": {"O36": 0.7, "U72": 0.8},
                "kept": ["O36", "U72"],
                "blends": {"SA": 0.81},
            }
        ],
    }
    path = write_report(
        tmp_path / "rep", predictions, labels, weights, {"train": 12.5, "ensemble": 0.4}, title="t<1>"
    )

    page = path.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and "<title>t&lt;1&gt;</title>" in page
    parser = PageParser()
    parser.feed(page)
    parser.close()
    assert parser.errors == [] and parser.stack == []
    assert set(parser.images) == {
        "metrics.png",
        "roc_dev_seen.png",
        "roc_test_seen.png",
        "spearman.png",
        "weights.png",
        "stage_times.png",
    }
    for src in parser.images:
        with Image.open(path.parent / src) as image:
            assert image.format == "PNG" and image.width > 200 and image.height > 100

    for split in ("dev_seen", "test_seen"):
        rows = parser.tables[split]
        assert rows[0] == ["model", "memes", "AUROC", "accuracy"]
        assert [r[0] for r in rows[1:]] == ["ENSEMBLE", "O36", "U72", "V45"]
        for name, memes, auroc, acc in rows[1:]:
            pred = predictions[name][split]
            y = [labels[split][int(i)] for i in pred.ids]
            assert int(memes) == len(pred)
            assert float(auroc) == pytest.approx(roc_auc_score(y, pred.proba), abs=5e-5)
            assert float(acc) == pytest.approx(accuracy_score(y, pred.label), abs=5e-5)
    assert "test_unseen" not in parser.tables  # unlabelled: no score table
    assert parser.tables["Ensemble weights"][1:] == [["U72", "0.7000"], ["O36", "0.3000"], ["V45", "0.0000"]]
    assert parser.tables["Time per stage"][-1] == ["total", "12.9"]


def test_report_without_weights_or_times_and_flat_weights(tmp_path: Path) -> None:
    predictions, labels = _case(1)
    path = write_report(tmp_path / "a", predictions, labels)
    assert not (path.parent / "weights.png").exists() and not (path.parent / "stage_times.png").exists()
    path = write_report(tmp_path / "b", predictions, labels, weights={"O36": 1.0, "U72": 3.0})
    assert (path.parent / "weights.png").is_file()


def test_report_rejects_predictions_without_labels(tmp_path: Path) -> None:
    predictions, labels = _case()
    labels["dev_seen"].pop(100)
    with pytest.raises(DataError, match="on dev_seen: 1 predicted ids have no label"):
        write_report(tmp_path, predictions, labels)
