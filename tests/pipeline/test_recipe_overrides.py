"""``model:`` (``architecture:`` still read), readable ensemble names, and ``key.path=value`` overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
from grid_recipes import grid_recipe, model_entry, write_recipe

from memeguard.errors import ConfigError
from memeguard.pipeline.recipe import ModelSpec, load_recipe

TWO_MODELS = grid_recipe(
    "t",
    [model_entry("V", "visualbert-tiny", "[1, 2]"), model_entry("U", "uniter-tiny", train="{epochs: 1}")],
    ensemble="loop",
)


def write(tmp_path: Path, text: str) -> Path:
    return write_recipe(tmp_path, text, "r.yaml")


def test_the_old_key_architecture_still_loads_as_model(tmp_path: Path) -> None:
    old = load_recipe(write(tmp_path, TWO_MODELS.replace("    model:", "    architecture:")))
    new = load_recipe(write(tmp_path, TWO_MODELS))
    assert [m.model for m in old.models] == ["visualbert-tiny", "uniter-tiny"]
    assert [m.model for m in new.models] == ["visualbert-tiny", "uniter-tiny"]
    assert old.models[0].architecture == "visualbert-tiny"  # the deprecated attribute, for 0.1 code
    assert ModelSpec(name="V", architecture="oscar-tiny", features="grid").model == "oscar-tiny"


def test_both_keys_in_one_model_is_an_error_at_the_old_keys_line(tmp_path: Path) -> None:
    both = "    model: uniter-tiny\n    architecture: oscar-tiny\n"
    text = TWO_MODELS.replace("    model: uniter-tiny\n", both)
    with pytest.raises(ConfigError, match=r"r.yaml:12: models\[1\]: give model or architecture .* not both"):
        load_recipe(write(tmp_path, text))
    with pytest.raises(ValueError, match="not both"):
        ModelSpec(name="V", model="a", architecture="b", features="grid")


def test_an_unknown_model_name_points_at_the_key_the_file_uses(tmp_path: Path) -> None:
    text = TWO_MODELS.replace("model: uniter-tiny", "architecture: uniter-huge")
    expected = r"r.yaml:11: unknown architecture 'uniter-huge' in models\[1\].architecture"
    with pytest.raises(ConfigError, match=expected):
        load_recipe(write(tmp_path, text))


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("sa", "mean"),
        ("pa", "power"),
        ("ra", "rank"),
        ("sx", "simplex"),
        ("opt", "coordinate"),
        ("rank", "rank"),
        ("loop", "loop"),
    ],
)
def test_ensemble_methods_are_stored_by_their_readable_name(tmp_path: Path, old: str, new: str) -> None:
    recipe = load_recipe(write(tmp_path, TWO_MODELS.replace("method: loop", f"method: {old}")))
    assert recipe.ensemble.method == new


def test_an_unknown_ensemble_method_names_its_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"r.yaml:14: ensemble.method: .*unknown ensemble method 'median'"):
        load_recipe(write(tmp_path, TWO_MODELS.replace("method: loop", "method: median")))


def test_overrides_address_entries_by_position_or_name_and_parse_yaml(tmp_path: Path) -> None:
    path = write(tmp_path, TWO_MODELS)
    recipe = load_recipe(
        path,
        overrides=[
            "models.0.train.epochs=3",
            "models.U.train.lr=1e-4",
            "ensemble.method=ra",
            "models.V.seeds=[7]",
            "ensemble.params.test_labels=rate",
            "models.U.architecture=oscar-tiny",
            "clean=false",
        ],
    )
    v, u = recipe.models
    assert v.train == {"lr": 0.001, "epochs": 3}
    assert u.train == {"epochs": 1, "lr": 1e-4} and isinstance(u.train["lr"], float)
    assert [r.name for r in v.runs] == ["V7"]
    assert u.model == "oscar-tiny"
    assert recipe.ensemble.method == "rank" and recipe.ensemble.params == {"test_labels": "rate"}
    assert recipe.clean is False
    assert recipe.command_line[0] == "models.0.train.epochs=3"
    assert load_recipe(path).models[0].train == {"lr": 0.001, "epochs": 1}  # the file is not changed
    quoted = load_recipe(path, overrides=['models.V.name="1e-4"', "models.U.train.lr=.5E+2"])
    assert quoted.models[0].name == "1e-4" and quoted.models[1].train["lr"] == 50.0


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("models.0.train.epochs", r"command line: 'models.0.train.epochs': an override is key.path=value"),
        ("models.9.train.epochs=3", r"command line: models.9.train.epochs: index 9 out of range \(2 entri"),
        ("models.W.train.epochs=3", r"command line: models.W.train.epochs: no entry named 'W' \(names: V, U"),
        ("name.x=1", r"command line: name.x: 'x' is inside a value that is not a mapping or a list"),
        ("models.0.seeds=[1", r"command line: models.0.seeds: invalid YAML value"),
        ("models.0.seeds=abc", r"r.yaml, overridden from the command line by models.0.seeds=abc: models.0."),
        ("models.1.colour=blue", r"from the command line by models.1.colour=blue: models.1.colour: Extra"),
        ("models.V.model=visualbert-huge", r"by models.V.model=visualbert-huge: unknown architecture 'visu"),
        ("ensemble.method=median", r"by ensemble.method=median: ensemble.method: .*unknown ensemble method"),
    ],
)
def test_a_bad_override_names_its_key_and_the_command_line(
    tmp_path: Path, override: str, expected: str
) -> None:
    with pytest.raises(ConfigError, match=expected) as info:
        load_recipe(write(tmp_path, TWO_MODELS), overrides=[override])
    assert "\n" not in str(info.value) and "r.yaml:" not in str(info.value)


def test_an_error_in_the_file_itself_still_names_its_line_when_overrides_are_given(tmp_path: Path) -> None:
    path = write(tmp_path, TWO_MODELS.replace("extractor: grid", "extractor: sift"))
    with pytest.raises(ConfigError, match=r"r.yaml:3: features.grid.extractor"):
        load_recipe(path, overrides=["models.0.train.epochs=3"])
