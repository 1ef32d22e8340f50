"""A broken model folder is one line naming the file, for every command (they all load it here).

Written as the attacks of issue #11: each test damages one file of a saved tiny model and expects the
exact one-line error from ``load_model_dir`` (what predict, score, serve and ``train --init`` call).
"""

from __future__ import annotations

import json
import os
import re

import pytest
import torch
from safetensors.torch import load_file, save_file

from memeguard.errors import CheckpointError, ConfigError
from memeguard.models.registry import create_model
from memeguard.names import MODEL_CONFIG_FILE, MODEL_WEIGHTS_FILE
from memeguard.training.build import load_model_dir


@pytest.fixture
def model_dir(tmp_path):
    torch.manual_seed(0)
    model = create_model("visualbert-tiny", visual_feat_dim=8)
    model.save_pretrained(tmp_path / "m")
    return tmp_path / "m"


def _config(directory):
    return json.loads((directory / MODEL_CONFIG_FILE).read_text())


def _write_config(directory, data):
    (directory / MODEL_CONFIG_FILE).write_text(json.dumps(data))


def test_valid_folder_round_trips(model_dir):
    model = load_model_dir(model_dir)
    stored = load_file(str(model_dir / MODEL_WEIGHTS_FILE))
    for name, tensor in stored.items():
        assert torch.equal(model.state_dict()[name], tensor), name


def test_invalid_json_config(model_dir):
    (model_dir / MODEL_CONFIG_FILE).write_text('{"model_type": "visualbert",')
    with pytest.raises(
        ConfigError, match=rf"^{re.escape(str(model_dir / MODEL_CONFIG_FILE))}: not valid JSON"
    ):
        load_model_dir(model_dir)


def test_list_as_config(model_dir):
    _write_config(model_dir, [1, 2])
    with pytest.raises(ConfigError) as info:
        load_model_dir(model_dir)
    assert (
        str(info.value) == f"{model_dir / MODEL_CONFIG_FILE}: a model config is a JSON object, found a list"
    )


def test_hidden_size_as_a_word(model_dir):
    data = _config(model_dir)
    data["hidden_size"] = "sixty-four"
    _write_config(model_dir, data)
    with pytest.raises(ConfigError) as info:
        load_model_dir(model_dir)
    assert str(info.value) == (
        f"{model_dir / MODEL_CONFIG_FILE}: VisualBertConfig: hidden_size must be a valid integer, "
        "got 'sixty-four'"
    )


def test_impossible_size_is_refused_without_allocating(model_dir):
    data = _config(model_dir)
    data["hidden_size"] = -5
    _write_config(model_dir, data)
    with pytest.raises(ConfigError, match=r"config\.json: cannot build a visualbert model from it"):
        load_model_dir(model_dir)


def test_huge_config_fails_on_the_header_not_on_memory(model_dir):
    data = _config(model_dir)
    data["intermediate_size"] = 10**9  # 4 GB per layer if it were allocated
    _write_config(model_dir, data)
    with pytest.raises(CheckpointError, match=r"has shape \[\d+\], the model.s is \[1000000000\]"):
        load_model_dir(model_dir)


def test_missing_weights(model_dir):
    (model_dir / MODEL_WEIGHTS_FILE).unlink()
    with pytest.raises(CheckpointError) as info:
        load_model_dir(model_dir)
    assert str(info.value) == f"{model_dir / MODEL_WEIGHTS_FILE}: weight file not found"


def test_truncated_weights(model_dir):
    path = model_dir / MODEL_WEIGHTS_FILE
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(path))}: not a readable safetensors file"):
        load_model_dir(model_dir)


def test_wrong_shape_tensor(model_dir):
    path = model_dir / MODEL_WEIGHTS_FILE
    state = load_file(str(path))
    name = "classifier.weight" if "classifier.weight" in state else sorted(state)[-1]
    expected = list(state[name].shape)
    state[name] = torch.zeros(3, 3)
    save_file(state, str(path))
    with pytest.raises(CheckpointError) as info:
        load_model_dir(model_dir)
    assert str(info.value) == f"{path}: tensor {name} has shape [3, 3], the model's is {expected}"


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.bool, torch.uint8])
def test_non_float_tensor_is_refused(model_dir, dtype):
    path = model_dir / MODEL_WEIGHTS_FILE
    state = load_file(str(path))
    name = sorted(key for key, value in state.items() if value.is_floating_point())[0]
    state[name] = state[name].to(dtype)
    save_file(state, str(path))
    with pytest.raises(CheckpointError) as info:
        load_model_dir(model_dir)
    message = str(info.value)
    assert message.startswith(f"{path}: tensor {name} is ")
    assert message.endswith("which cannot hold the model's torch.float32 values")


def test_missing_and_unexpected_tensors(model_dir):
    path = model_dir / MODEL_WEIGHTS_FILE
    state = load_file(str(path))
    dropped = sorted(state)[0]
    del state[dropped]
    state["extra.weight"] = torch.zeros(1)
    save_file(state, str(path))
    with pytest.raises(CheckpointError) as info:
        load_model_dir(model_dir)
    assert str(info.value) == f"{path}: missing keys ['{dropped}'], unexpected keys ['extra.weight']"


def test_weights_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        create_model("visualbert-tiny", visual_feat_dim=8).save_pretrained(tmp_path / "m")
    finally:
        os.umask(old)
    for name in (MODEL_WEIGHTS_FILE, MODEL_CONFIG_FILE):
        assert (tmp_path / "m" / name).stat().st_mode & 0o777 == 0o644, name
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == sorted(
        [MODEL_CONFIG_FILE, MODEL_WEIGHTS_FILE]
    )


def test_override_of_the_wrong_type_is_refused():
    from memeguard.models.registry import get_config

    with pytest.raises(ConfigError) as info:
        get_config("visualbert-tiny", max_regions=[1, 2])
    assert str(info.value) == "VisualBertConfig: max_regions must be a valid integer, got [1, 2]"


def test_predict_reports_a_bad_model_folder_as_one_line(
    model_dir, tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    from memeguard.cli import main

    path = model_dir / MODEL_WEIGHTS_FILE
    state = load_file(str(path))
    name = sorted(state)[0]
    state[name] = state[name].to(torch.int32)
    save_file(state, str(path))
    out = tmp_path / "preds" / "dev_seen.csv"
    args = ["predict", "--checkpoint", str(model_dir), "--features", str(tmp_path / "store")]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--data", str(tmp_path), "--split", "dev_seen", "--out", str(out)])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err == f"error: {path}: tensor {name} is I32, which cannot hold the model's torch.float32 values\n"
    assert not out.parent.exists()


def test_python_api_values_keep_working_and_are_kept_as_given():
    import numpy as np

    from memeguard.models.registry import get_config

    config = get_config("devlbert-tiny", max_regions=np.int64(5), v_biattention_id=(0, 1))
    assert config.max_regions == 5 and type(config.max_regions) is np.int64
    assert config.v_biattention_id == (0, 1)
    with pytest.raises(
        ConfigError, match=r"^VisualBertConfig: max_regions must be a valid integer, got True$"
    ):
        get_config("visualbert-tiny", max_regions=True)
