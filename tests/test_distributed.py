"""Multi-process training on CPU: torchrun with 2 processes (gloo, DDP with device_ids=None,
DistributedSampler) ends with the weights of one process at the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tokenmixers.cli import main

# 256 images, global batch 32: 8 AdamW steps of the default recipe. No augmentation, so
# both set-ups see the same pixels; DistributedSampler splits each global batch between the
# two processes, DDP averages their gradients.
ARGS = ["--model", "mixer_s16_224", "--model-kwargs", "patch_size=4", "embed_dim=32",
        "num_blocks=1", "--data", "mnist5k", "--limit-train", "256", "--limit-val", "100",
        "--epochs", "1", "--lr", "2e-3", "--no-aug", "--progress", "plain", "--threads", "1"]


pytestmark = pytest.mark.usefixtures("one_thread")


def test_torchrun_two_processes_match_one_process(tmp_path: Path) -> None:
    single = tmp_path / "single"
    assert main(["train", *ARGS, "--batch-size", "32", "--output", str(single)]) == 0

    ddp = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "tokenmixers", "train", *ARGS, "--batch-size", "16", "--output", str(ddp)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Only rank 0 logs: one header line.
    assert proc.stderr.count("2 process(es) on cpu") == 1
    assert "global batch 32" in proc.stderr

    a = load_file(str(single / "last" / "model.safetensors"))
    b = load_file(str(ddp / "last" / "model.safetensors"))
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    assert diff <= 1e-5, diff
    moved = (a["head.weight"]).abs().max().item()  # the head starts at zero
    assert moved > 1e-3
    state = torch.load(ddp / "last" / "trainer_state.pt", weights_only=True)
    assert state["global_step"] == 8 and state["world_size"] == 2 and len(state["rng"]) == 2
    m1 = json.loads((single / "metrics.jsonl").read_text())
    m2 = json.loads((ddp / "metrics.jsonl").read_text())
    # Validation is sharded across the processes and the counts summed: same 100 images.
    assert abs(m1["top1"] - m2["top1"]) <= 1.0 and abs(m1["val_loss"] - m2["val_loss"]) < 1e-3
    assert abs(m1["train_loss"] - m2["train_loss"]) < 1e-4


def test_nproc_launches_torch_distributed_run(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []

    def fake_call(cmd: list[str]) -> int:
        seen.append(cmd)
        return 0

    monkeypatch.setattr("tokenmixers.train.distributed.subprocess.call", fake_call)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    argv = ["train", "--model", "vit_tiny_patch16_224", "--output", "runs/x", "--nproc", "2"]
    assert main(argv) == 0
    (cmd,) = seen
    assert cmd[:5] == [sys.executable, "-m", "torch.distributed.run", "--standalone",
                       "--nproc_per_node=2"]
    assert cmd[5:] == ["-m", "tokenmixers", *argv[:-2]]  # the workers get no --nproc
