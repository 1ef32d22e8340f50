"""The small learning proof: the trainer learns an image-XOR-text rule that neither modality predicts alone.

The full-size proof (synthetic images + grid features, both tiny architectures, 3-minute budget) is
``benchmarks/learning.py``; this runs the same trainer on directly generated region features.
"""

from __future__ import annotations

import pytest
from xor_memes import make_meme_set, write_jsonl

from memeguard.training import TINY_DEFAULTS, TrainConfig, finetune

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(
    ("model", "epochs"),
    [("visualbert-tiny", 12), ("lxmert-tiny", 20)],
)
def test_tiny_model_learns_xor_and_text_only_control_does_not(tmp_path, model, epochs):
    data = tmp_path / "data"
    data.mkdir()
    train, regions = make_meme_set(192, seed=11, start_id=1)
    dev, dev_regions = make_meme_set(80, seed=12, start_id=5001)
    regions.update(dev_regions)
    write_jsonl(data / "train_clean.jsonl", train)
    write_jsonl(data / "dev_seen.jsonl", dev)
    # 192 memes give 12 updates an epoch: the toy run needs the faster of the two tiny learning rates that
    # were measured (2e-3; TINY_DEFAULTS' 1.5e-3 is tuned for the full synthetic set, where it is the more
    # reliable).
    settings = {**TINY_DEFAULTS, "lr": 2e-3, "epochs": epochs}
    results = {}
    for zero_visual in (False, True):
        cfg = TrainConfig(
            model=model,
            features="toy",
            data_dir=data,
            out_dir=tmp_path / str(zero_visual),
            device="cpu",
            progress=False,
            zero_visual=zero_visual,
            **settings,
        )
        results[zero_visual] = finetune(cfg, regions=regions).metrics["auroc"]
    assert results[False] >= 0.9, results
    assert results[True] <= 0.65, results
