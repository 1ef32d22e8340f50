"""DDP on 2 CPU processes (gloo): both ranks must end with the same weights, and only rank 0 writes files."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from xor_memes import cli_args, toy_config

from memeguard.training import TrainConfig, finetune


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, cfg: TrainConfig, regions: dict, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE=str(world_size),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    result = finetune(cfg, regions=regions)
    torch.save(
        {k: v.detach().clone() for k, v in result.model.state_dict().items()}, Path(out) / f"rank{rank}.pt"
    )


@pytest.mark.slow
def test_two_gloo_ranks_end_with_identical_weights(toy_data, tmp_path):
    data, regions = toy_data
    options = dict(epochs=1, batch_size=4, lr=1e-3, eval_every=2, swa="torch", swa_start=0.5)
    cfg = toy_config(TrainConfig, data, tmp_path / "run", **options)
    mp.spawn(_worker, args=(2, _free_port(), cfg, regions, str(tmp_path)), nprocs=2, join=True)
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    # the weights moved (the ranks did train), and rank 0 wrote the run dir once
    from memeguard.models.registry import create_model

    torch.manual_seed(cfg.seed)
    initial = create_model("visualbert-tiny", visual_feat_dim=32).state_dict()
    assert not torch.equal(initial["classifier.weight"], rank0["classifier.weight"])
    run = tmp_path / "run"
    assert (run / "DONE").is_file() and (run / "dev_seen.csv").is_file()
    # 48 memes, 2 ranks x batch 4 -> 6 updates; evaluations at 2, 4, 6 and the final one, logged once each
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 4


@pytest.mark.slow
def test_torchrun_runs_the_train_command_unchanged(toy_data, toy_store, tmp_path):
    import subprocess
    import sys

    data, _ = toy_data
    out = tmp_path / "run"
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_PORT": str(_free_port())}
    launcher = [str(torchrun), *f"--nproc_per_node 2 --master_port {env['MASTER_PORT']} -m memeguard".split()]
    options = dict(epochs=1, batch_size=4, lr="1e-3", device="cpu", progress=False)
    train = cli_args("train", model="visualbert-tiny", features=toy_store, data=data, out=out, **options)
    proc = subprocess.run(launcher + train, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count(": done;") == 1  # rank 0 reports, rank 1 stays quiet
    assert (out / "DONE").is_file() and (out / "dev_seen.csv").is_file()
