"""Issue #11 attacks on recipes: every stage's config, every override and every name is checked when the
recipe loads, with file:line, before any stage runs or any folder is made."""

from __future__ import annotations

from pathlib import Path

import pytest
from grid_recipes import TWO_SEED_RECIPE, write_recipe

from memeguard.cli import main
from memeguard.errors import ConfigError
from memeguard.pipeline.recipe import load_recipe

GOOD = TWO_SEED_RECIPE + "    pretrain: {epochs: 1}\n    overrides: {max_regions: 10}\n"


def write(tmp_path: Path, text: str) -> Path:
    """``text`` as ``r.yaml``, the file name the expected errors quote."""
    return write_recipe(tmp_path, text, "r.yaml")


def load_error(tmp_path: Path, text: str, overrides: tuple[str, ...] = ()) -> str:
    with pytest.raises(ConfigError) as info:
        load_recipe(write(tmp_path, text), overrides=overrides)
    return str(info.value)


def test_the_good_recipe_loads(tmp_path: Path) -> None:
    recipe = load_recipe(write(tmp_path, GOOD))
    assert recipe.models[0].overrides == {"max_regions": 10}


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "epochs: 1}\n    pre",
            "epochs: two}\n    pre",
            "r.yaml:10: models[0].train: TrainConfig: epochs must be a valid integer, "
            "unable to parse string as an integer, got 'two'",
        ),
        (
            "{lr: 0.001,",
            "{lr: [1, 2],",
            "r.yaml:10: models[0].train: TrainConfig: lr must be a valid number, got [1, 2]",
        ),
        (
            "epochs: 1}\n    pre",
            "epochs: -3}\n    pre",
            "r.yaml:10: models[0].train: TrainConfig: epochs must be greater than 0, got -3",
        ),
        (
            "pretrain: {epochs: 1}",
            "pretrain: {word_mask_rate: 2}",
            "r.yaml:11: models[0].pretrain: PretrainConfig: word_mask_rate must be less than 1, got 2",
        ),
        (
            "pretrain: {epochs: 1}",
            "pretrain: {mlm: false, itm: false}",
            "r.yaml:11: models[0].pretrain: PretrainConfig: pretraining needs at least one of mlm, itm",
        ),
        (
            "{max_regions: 10}",
            "{max_regions: ten}",
            "r.yaml:12: models[0].overrides.max_regions: VisualBertConfig: max_regions must be a valid "
            "integer, got 'ten'",
        ),
        (
            "{max_regions: 10}",
            "{max_region: 10}",
            "r.yaml:12: models[0].overrides.max_region: VisualBertConfig: unknown config keys ['max_region']",
        ),
        (
            "{lr: 0.001,",
            "{device: cpu, lr: 0.001,",
            "r.yaml:10: models[0].train: unknown key 'device'",
        ),
        (
            "    extractor: grid\n",
            "    extractor: grid\n    params: {colour: red}\n",
            "r.yaml:4: features.grid: Value error, the grid extractor's params: colour: "
            "Extra inputs are not permitted",
        ),
    ],
)
def test_stage_configs_are_checked_at_load_time(tmp_path: Path, old: str, new: str, expected: str) -> None:
    assert old in GOOD
    message = load_error(tmp_path, GOOD.replace(old, new, 1))
    assert message == f"{tmp_path / 'r.yaml'}:{expected.removeprefix('r.yaml:')}"


@pytest.mark.parametrize(
    ("old", "new", "line", "field"),
    [
        ("name: t", "name: ../../escaped", 1, "name"),
        ("    seeds: [1, 2]", "    runs: [{seed: 1, name: ../../../escaped}]", 9, "models.0.runs.0.name"),
        ("  grid:\n    extractor: grid", "  ../g:\n    extractor: grid", 3, "features.../g.[key]"),
        ("  - name: V\n", "  - name: /abs\n", 6, "models.0.name"),
        ("name: t", "name: .hidden", 1, "name"),
    ],
)
def test_names_that_become_folders_match_one_pattern(
    tmp_path: Path, old: str, new: str, line: int, field: str
) -> None:
    text = GOOD.replace(old, new, 1).replace(
        "features: grid", "features: ../g" if "../g" in new else "features: grid"
    )
    message = load_error(tmp_path, text)
    assert message.startswith(f"{tmp_path / 'r.yaml'}:{line}: {field}: Value error, ")
    assert message.endswith(
        "is used as a folder name: give 1-64 letters, digits, '.', '_' or '-', "
        "starting with a letter or digit"
    )


def test_overrides_are_validated_like_the_file(tmp_path: Path) -> None:
    message = load_error(tmp_path, GOOD, ("models.V.train.epochs=two",))
    assert message == (
        f"{tmp_path / 'r.yaml'}, overridden from the command line by models.V.train.epochs=two: "
        "models[0].train: TrainConfig: epochs must be a valid integer, unable to parse string as an integer, "
        "got 'two'"
    )
    message = load_error(tmp_path, GOOD, ("models.V.overrides.hidden_size=[1]",))
    assert message.endswith(
        "models[0].overrides.hidden_size: VisualBertConfig: hidden_size must be a valid integer, got [1]"
    )
    message = load_error(tmp_path, GOOD, ("name=../x",))
    assert message.endswith(
        "by name=../x: name: Value error, '../x' is used as a folder name: give 1-64 "
        "letters, digits, '.', '_' or '-', starting with a letter or digit"
    )


def test_a_lone_surrogate_is_refused_with_its_line(tmp_path: Path) -> None:
    message = load_error(tmp_path, GOOD.replace("name: t", 'name: "a\\ud800b"'))
    assert message == f"{tmp_path / 'r.yaml'}:1: 'a\\ud800b' contains a lone surrogate (not encodable text)"
    message = load_error(tmp_path, GOOD, ('name="a\\ud800b"',))
    assert message.endswith("command line: name: the value contains a lone surrogate (not encodable text)")


def test_a_recipe_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_bytes(GOOD.encode("utf-16"))
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    assert str(info.value) == f"{path}: not UTF-8 text (byte 0); save the recipe as UTF-8"


def test_run_with_an_escaping_name_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    work = tmp_path / "work"
    (work / "data").mkdir(parents=True)
    recipe = write(work, GOOD.replace("    seeds: [1, 2]", "    runs: [{seed: 1, name: ../../../escaped}]"))
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(SystemExit) as exit_info:
        main(["run", str(recipe), "--data", str(work / "data"), "--out", str(work / "out")])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {recipe}:9: models.0.runs.0.name: ") and err.count("\n") == 1
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
