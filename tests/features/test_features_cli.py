"""extract_features (dedup, resume, variants), make_extractor and the ``memeguard features`` CLI."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from memeguard.cli import app, main
from memeguard.errors import ConfigError, FeatureStoreError
from memeguard.features.extract import extract_features
from memeguard.features.factory import make_extractor, parse_box_variants
from memeguard.features.grid import GridExtractor
from memeguard.features.record import RegionRecord
from memeguard.features.store import FeatureStore, FeatureStoreWriter


class CountingExtractor:
    """Wraps the grid extractor, records which ids it was asked for, can fail after N batches."""

    name = "grid"

    def __init__(
        self, fail_after_batches: int | None = None, variants: tuple[str, ...] = ("default",)
    ) -> None:
        self.inner = GridExtractor(levels=(2,))
        self.seen: list[int] = []
        self.fail_after = fail_after_batches
        self._variants = list(variants)
        self.batch_size = 2

    def variants(self) -> list[str]:
        return self._variants

    def extract(self, images, meme_ids, texts) -> dict[str, list[RegionRecord]]:
        if self.fail_after is not None and len(self.seen) >= self.fail_after * self.batch_size:
            raise KeyboardInterrupt("simulated kill")
        self.seen.extend(meme_ids)
        records = self.inner.extract(images, meme_ids, texts)["default"]
        return {variant: records for variant in self._variants}

    def meta(self) -> dict[str, Any]:
        return {"extractor": "grid", "parameters": {"levels": [2]}}


def test_extract_dedups_and_matches_direct_extraction(hm_dir: Path, tmp_path: Path) -> None:
    extractor = CountingExtractor()
    paths = extract_features(hm_dir, tmp_path / "grid", extractor, progress=False)
    assert paths == {"default": tmp_path / "grid"}
    assert sorted(extractor.seen) == list(range(100, 107))  # id 103 is in two splits, opened once
    store = FeatureStore.open(tmp_path / "grid")
    assert sorted(store.ids()) == list(range(100, 107))
    assert store.meta["extractor"] == "grid" and store.meta["variant"] == "default"
    direct = GridExtractor(levels=(2,)).extract_one(
        Image.open(hm_dir / "img" / "00104.png").convert("RGB"), 104
    )
    np.testing.assert_array_equal(store[104].features, direct.features.astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(store[104].boxes, direct.boxes)
    assert store[104].image_size == (50, 100)


def test_killed_extraction_resumes_without_duplicates(hm_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "grid"
    first = CountingExtractor(fail_after_batches=2)
    with pytest.raises(KeyboardInterrupt):
        extract_features(hm_dir, out, first, progress=False)
    assert len(first.seen) == 4
    with pytest.raises(FeatureStoreError, match="never finalised"):
        FeatureStore.open(out)
    second = CountingExtractor()
    extract_features(hm_dir, out, second, progress=False)
    assert sorted(second.seen) == sorted(set(range(100, 107)) - set(first.seen))
    store = FeatureStore.open(out)
    assert sorted(store.ids()) == list(range(100, 107)) and len(store.ids()) == 7
    # A third run has nothing to do and leaves the finalised store as it was.
    third = CountingExtractor()
    extract_features(hm_dir, out, third, progress=False)
    assert third.seen == [] and len(FeatureStore.open(out)) == 7


def test_several_variants_get_one_store_each_and_fill_only_gaps(hm_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "butd"
    # Variant "36" already has id 100 (e.g. from an earlier run with --boxes 36).
    with FeatureStoreWriter(out / "36") as writer:
        writer.add(GridExtractor(levels=(2,)).extract_one(Image.new("RGB", (9, 9)), 100))
    extractor = CountingExtractor(variants=("36", "10-100"))
    paths = extract_features(hm_dir, out, extractor, splits=["train"], progress=False)
    assert paths == {"36": out / "36", "10-100": out / "10-100"}
    assert sorted(extractor.seen) == [100, 101, 102, 103]  # 100 is missing from "10-100"
    short, long = FeatureStore.open(out / "36"), FeatureStore.open(out / "10-100")
    assert sorted(short.ids()) == sorted(long.ids()) == [100, 101, 102, 103]
    assert short[100].image_size == (9, 9) and long[100].image_size == (50, 60)  # the old record was kept


def test_factory() -> None:
    assert isinstance(make_extractor("grid"), GridExtractor)
    assert make_extractor("grid", levels=(3,)).num_regions == 9
    assert parse_box_variants("36, 50,72,10-100") == ("36", "50", "72", "10-100")
    for bad in ("", "36,36", "100-10", "abc", "0"):
        with pytest.raises(ConfigError):
            parse_box_variants(bad)
    with pytest.raises(ConfigError, match="no weights"):
        make_extractor("grid", weights="w.pkl")
    with pytest.raises(ConfigError, match="needs --weights"):
        make_extractor("clip")
    with pytest.raises(ConfigError, match="unknown extractor 'resnet'"):
        make_extractor("resnet")


def _tsv_line(meme_id: int, n: int, dim: int, rng: np.random.Generator) -> str:
    def b64(a: np.ndarray) -> str:
        return base64.b64encode(a.tobytes()).decode()

    cols = [
        f"{meme_id:05d}",
        "480",
        "640",
        b64(np.arange(n, dtype=np.int64)),
        b64(np.ones(n, np.float32)),
        b64(np.zeros(n, np.int64)),
        b64(np.zeros(n, np.float32)),
        str(n),
        b64(np.tile(np.array([1, 2, 30, 40], np.float32), (n, 1))),
        b64(rng.random((n, dim), dtype=np.float32)),
    ]
    return "\t".join(cols) + "\n"


def test_cli_extract_import_and_info(hm_dir: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(
        app, ["features", "extract", "--extractor", "grid", str(hm_dir), str(tmp_path / "g")]
    )
    assert result.exit_code == 0, result.output
    store = FeatureStore.open(tmp_path / "g")
    assert len(store) == 7 and store.feature_dim == 42 and store.num_boxes(100) == 41

    rng = np.random.default_rng(0)
    tsv = tmp_path / "hm_vgattr3636.tsv"
    tsv.write_text(_tsv_line(1, 36, 8, rng) + _tsv_line(2, 10, 8, rng) + _tsv_line(1, 36, 8, rng))
    result = runner.invoke(
        app, ["features", "import-tsv", str(tsv), str(tmp_path / "t"), "--dtype", "float32"]
    )
    assert result.exit_code == 0, result.output
    assert "imported 2 images" in result.output and f"{tsv}:3: id 1" in result.output

    result = runner.invoke(app, ["features", "info", str(tmp_path / "t")])
    assert result.exit_code == 0, result.output
    for expected in ("images", "2", "feature dim", "8", "10 / 23.0 / 36", "float32", "import-tsv"):
        assert expected in result.output


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "s").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        main(["features", "info", str(tmp_path / "s")])
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 's'}: not a feature store (no meta.json)"
    with pytest.raises(SystemExit):
        main(
            [
                "features",
                "extract",
                "--extractor",
                "grid",
                "--boxes",
                "36",
                str(tmp_path),
                str(tmp_path / "o"),
            ]
        )
    assert "drop --boxes" in capsys.readouterr().err
