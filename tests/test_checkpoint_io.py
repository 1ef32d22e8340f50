"""Reading weight files (torch, safetensors, folders) and strict key accounting."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from memeguard.checkpoint_io import (
    load_mapped_state_dict,
    read_any_checkpoint,
    read_torch_checkpoint,
    resolve_checkpoint_file,
)
from memeguard.errors import CheckpointError

STATE = {"layer.weight": torch.arange(6.0).reshape(2, 3), "layer.bias": torch.tensor([1.0, -1.0])}


def assert_same(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert sorted(got) == sorted(expected)
    for key, value in expected.items():
        assert torch.equal(got[key], value), key


@pytest.mark.parametrize("wrapper", [None, "model", "state_dict"])
def test_torch_file_plain_or_wrapped(tmp_path, wrapper):
    obj = dict(STATE) if wrapper is None else {wrapper: dict(STATE), "epoch": 3}
    torch.save(obj, tmp_path / "w.pth")
    assert_same(read_torch_checkpoint(tmp_path / "w.pth"), STATE)


def test_folders_prefer_known_names_then_standard_names_then_a_single_file(tmp_path):
    save_file(STATE, str(tmp_path / "model.safetensors"))
    assert_same(read_any_checkpoint(tmp_path), STATE)
    torch.save({"other": torch.zeros(1)}, tmp_path / "LASTtrain.pth")
    assert list(read_any_checkpoint(tmp_path, known_names=("LASTtrain.pth",))) == ["other"]
    single = tmp_path / "single"
    single.mkdir()
    torch.save(STATE, single / "anything.bin")
    assert resolve_checkpoint_file(single) == single / "anything.bin"


def test_unreadable_inputs_are_one_line_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint file or folder"):
        read_any_checkpoint(tmp_path / "absent.pth")
    (tmp_path / "bad.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        read_any_checkpoint(tmp_path / "bad.safetensors")
    torch.save({"step": 3}, tmp_path / "empty.pth")
    with pytest.raises(CheckpointError, match="contains no tensors"):
        read_torch_checkpoint(tmp_path / "empty.pth")
    torch.save(STATE, tmp_path / "a.pt")
    torch.save(STATE, tmp_path / "b.pt")
    with pytest.raises(CheckpointError, match=r"found \['a.pt', 'b.pt'"):
        resolve_checkpoint_file(tmp_path)


class _OpensAFile:
    """Pickles as a call of builtins.open: what a booby-trapped checkpoint would run on load."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_a_checkpoint_that_asks_to_run_code_is_refused_in_one_line_and_runs_nothing(tmp_path):
    target = tmp_path / "pwned"
    torch.save({"layer.weight": torch.zeros(1), "trap": _OpensAFile(str(target))}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError) as caught:
        read_torch_checkpoint(tmp_path / "evil.pth")
    message = str(caught.value)
    refused = "refused to unpickle (Unsupported global: GLOBAL io.open); only weights are loaded"
    assert message == f"{tmp_path / 'evil.pth'}: {refused}"
    assert not target.exists()


def test_strict_loading_accounts_for_every_key():
    model = nn.Sequential()
    model.add_module("layer", nn.Linear(3, 2))
    model.add_module("head", nn.Linear(2, 1))
    state = {**STATE, "pretraining.bias": torch.zeros(1)}
    with pytest.raises(CheckpointError, match=r"missing \['head.bias', 'head.weight'\].*'pretraining.bias'"):
        load_mapped_state_dict(model, state, source="src")
    missing, unexpected = load_mapped_state_dict(
        model,
        state,
        source="src",
        allowed_missing=lambda key: key.startswith("head."),
        allowed_unexpected={"pretraining.bias"},
    )
    assert (missing, unexpected) == (["head.bias", "head.weight"], ["pretraining.bias"])
    assert torch.equal(model.layer.weight.detach(), STATE["layer.weight"])
    with pytest.raises(
        CheckpointError, match=r"src: shape mismatch: layer.bias: checkpoint \(3,\) vs model \(2,\)"
    ):
        load_mapped_state_dict(model, {**STATE, "layer.bias": torch.zeros(3)}, source="src")
