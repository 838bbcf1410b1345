"""Data-parallel training under torchrun (gloo, CPU): it runs, syncs weights and saves a loadable model."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

import unmask

WORKER = Path(__file__).with_name("ddp_worker.py")


def torchrun(out: Path, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    """ddp_worker.py on two ranks (gloo, one thread each), writing into `out`."""
    paths = [os.environ.get("PYTHONPATH"), str(Path(__file__).parents[2])]  # the repo, after any given path
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(WORKER), str(out), *args], env=env, capture_output=True, text=True, timeout=timeout)


def test_torchrun_two_processes_train_and_save(tmp_path):
    """Two ranks train tiny-sort-ar for 4 steps; weights stay identical across ranks; rank 0 saves."""
    proc = torchrun(tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert [r["steps"] for r in ranks] == [4, 4]
    assert ranks[0]["losses"] != ranks[1]["losses"], "each rank trains on its own shard"
    assert ranks[0]["checksum"] == ranks[1]["checksum"], "DDP keeps the replicas identical"
    model = unmask.load_model(tmp_path)
    assert model.config.kind == "ar" and model.meta["train_steps"] == 4
    saved = [float(p.detach().double().sum()) for p in model.parameters()]
    assert saved == ranks[0]["checksum"]
    log = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4], "only rank 0 logs"
    assert "eval_loss" in log[-1]
    ids = torch.tensor([[5, 6, 7]])
    assert unmask.generate(model, ids, max_new_tokens=3, stop_at_eos=False).token_ids.shape == (1, 3)


def test_torchrun_trains_a_continuous_model(tmp_path):
    """Two ranks train tiny-shakespeare-flow (two passes a step with self-conditioning, the schedule fitted
    outside the forward): the replicas stay identical and rank 0 saves a loadable model."""
    proc = torchrun(tmp_path, "tiny-shakespeare-flow")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["losses"] != ranks[1]["losses"] and ranks[0]["checksum"] == ranks[1]["checksum"]
    model = unmask.load_model(tmp_path)
    assert model.config.kind == "continuous" and model.meta["train_steps"] == 4
    assert [float(p.detach().double().sum()) for p in model.parameters()] == ranks[0]["checksum"]


def test_torchrun_rl_keeps_the_replicas_identical(tmp_path, trained_mdm):
    """Two ranks run 4 RL iterations of trace-grpo (rollouts each on its own prompts, inner updates through
    DDP): their weights stay identical and rank 0 saves a loadable model."""
    proc = torchrun(tmp_path, str(trained_mdm[0]), "trace-grpo", timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world"] for r in ranks] == [2, 2] and [r["steps"] for r in ranks] == [4, 4]
    assert ranks[0]["checksum"] == ranks[1]["checksum"], "DDP keeps the replicas identical"
    log = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4] and "reward" in log[0] and "eval_accuracy" in log[-1]
    assert unmask.load_model(tmp_path).meta["train_steps"] == 4
