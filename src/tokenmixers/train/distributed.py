"""Multi-process training: the torchrun environment, gloo on CPU and nccl on CUDA, and the
``--nproc N`` shortcut that launches ``torch.distributed.run``."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is available (use --device cpu)")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device(name)


def setup(device: str = "auto") -> DistInfo:
    """Join the process group torchrun describes (if any) and pick this process's device."""
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return DistInfo(device=pick_device(device))
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ["LOCAL_RANK"])
    world = int(os.environ["WORLD_SIZE"])
    dev = pick_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world, device=dev)


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: Sequence[float], info: DistInfo) -> list[float]:
    """Sum a few numbers over all processes (float64 on the process's device)."""
    t = torch.tensor(list(values), dtype=torch.float64, device=info.device)
    if info.enabled:
        dist.all_reduce(t)
    return t.tolist()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def gather_objects(obj: object, info: DistInfo) -> list[object]:
    if not info.enabled:
        return [obj]
    out: list[object] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def launch(nproc: int, argv: Sequence[str]) -> int:
    """``tokenmixers train --nproc N ...`` -> ``python -m torch.distributed.run --standalone
    --nproc_per_node N -m tokenmixers train ...``; returns its exit code."""
    # The workers need no --nproc (torchrun's environment tells them), and torchrun's own
    # parser would take it for an abbreviation of its --nproc-per-node.
    worker_argv: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            worker_argv.append(arg)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", "-m", "tokenmixers", *worker_argv]
    print(f"launching {nproc} processes: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    code = subprocess.call(cmd)
    run_dir = _option(worker_argv, "--resume") or _option(worker_argv, "--output")
    if code != 0 and run_dir:
        # torchrun ends with its own report; the way on is the last thing said.
        print(f"tokenmixers train: the {nproc}-process run ended with exit status {code} "
              "(the first process to fail is torchrun's 'Root Cause' above). Its checkpoints "
              f"in {run_dir} are intact; once the cause is fixed, continue with: tokenmixers "
              f"train --resume {run_dir} --nproc {nproc}", file=sys.stderr, flush=True)
    return code


def _option(argv: Sequence[str], flag: str) -> str | None:
    """The value of ``flag`` in ``argv`` (``--flag VALUE`` or ``--flag=VALUE``), or None."""
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg[len(flag) + 1:]
    return None
