"""The MemeModel contract itself: our own file format (tied tensors included), the load_original
contract of a model without original checkpoints, the old class and module names, the import layering."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from safetensors.torch import load_file, save_file

from memeguard.errors import CheckpointError
from memeguard.models import MemeModel, create_model, register_architecture
from memeguard.models.visualbert import VisualBertConfig, VisualBertModel
from memeguard.names import MODEL_WEIGHTS_FILE


@dataclass
class TiedConfig(VisualBertConfig):
    model_type: ClassVar[str] = "test-tied-visualbert"


@register_architecture
class TiedVisualBert(VisualBertModel):
    """A VisualBERT whose visual position table is the text one (a tie made in __init__, as MLM decoders)."""

    config_class = TiedConfig
    original_layouts = ()

    def __init__(self, config: TiedConfig) -> None:
        super().__init__(config)
        self.bert.embeddings.position_embeddings_visual.weight = (
            self.bert.embeddings.position_embeddings.weight
        )


def tiny_tied() -> TiedVisualBert:
    torch.manual_seed(0)
    return TiedVisualBert(
        TiedConfig(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            visual_feat_dim=8,
        )
    ).eval()


def test_tied_model_is_saved_once_and_round_trips(tmp_path):
    model = tiny_tied()
    model.save_pretrained(tmp_path)
    stored = load_file(str(tmp_path / MODEL_WEIGHTS_FILE))
    tied = {"bert.embeddings.position_embeddings.weight", "bert.embeddings.position_embeddings_visual.weight"}
    assert len(tied & set(stored)) == 1
    again = MemeModel.from_pretrained(tmp_path).eval()
    assert type(again) is TiedVisualBert
    for key, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key
    embeddings = again.bert.embeddings
    assert embeddings.position_embeddings_visual.weight is embeddings.position_embeddings.weight


def test_untied_file_is_the_plain_safetensors_file(tmp_path):
    """save_model writes what save_file of the state dict writes (the format before it was used)."""
    model = create_model("visualbert-tiny", visual_feat_dim=8, hidden_size=128, num_attention_heads=4)
    model.save_pretrained(tmp_path / "ours")
    state = {name: tensor.detach().contiguous().cpu() for name, tensor in model.state_dict().items()}
    save_file(state, str(tmp_path / "plain.safetensors"), metadata={"format": "pt"})
    assert (tmp_path / "ours" / MODEL_WEIGHTS_FILE).read_bytes() == (
        tmp_path / "plain.safetensors"
    ).read_bytes()


def test_model_without_original_layouts_says_so(tmp_path):
    torch.save({"a": torch.zeros(1)}, tmp_path / "x.pth")
    with pytest.raises(CheckpointError, match="TiedVisualBert loads no original checkpoints"):
        tiny_tied().load_original(tmp_path / "x.pth")


def test_every_registered_architecture_lists_its_original_layouts():
    from memeguard.models.ernie_vil import ErnieVilModel
    from memeguard.models.registry import _ARCHITECTURES, list_models

    list_models()  # imports every architecture module
    for model_type, model_cls in _ARCHITECTURES.items():
        if model_type.startswith("test-") or model_cls is ErnieVilModel:  # ERNIE-ViL reads Paddle folders
            continue
        if model_type in ("hateclipper", "rgcl"):  # not vilio's models: their authors' files only
            assert model_cls.original_layouts, model_type
            continue
        names = [layout.name for layout in model_cls.original_layouts]
        assert "vilio-finetuned" in names and len(names) == len(set(names)), model_type


def test_old_class_and_module_names_still_import():
    from memeguard.models.devlbert import DevlbertForMemes, DevlbertModel
    from memeguard.models.ernie_vil import ErnieVilForMemes, ErnieVilModel
    from memeguard.models.vilbert import DevlbertForMemes as OldPath

    assert DevlbertForMemes is DevlbertModel is OldPath
    assert ErnieVilForMemes is ErnieVilModel
    assert type(create_model("devlbert-tiny", visual_feat_dim=8)) is DevlbertModel


def runtime_imports(module: str) -> set[str]:
    """Modules ``module`` imports outside ``if TYPE_CHECKING:`` blocks, at any depth (function bodies too)."""
    import importlib.util

    tree = ast.parse(Path(importlib.util.find_spec(module).origin).read_text(encoding="utf-8"))
    type_checking = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and getattr(block.test, "id", None) == "TYPE_CHECKING"
        for node in ast.walk(block)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in type_checking:
            continue
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_import_layering():
    """registry never imports base (no cycle); features and checkpoint_io never import models."""
    assert not {m for m in runtime_imports("memeguard.models.registry") if m.startswith("memeguard.models")}
    assert "memeguard.models.registry" in runtime_imports("memeguard.models.base")
    for module in ("memeguard.features.butd", "memeguard.checkpoint_io"):
        assert not {m for m in runtime_imports(module) if m.startswith("memeguard.models")}, module
