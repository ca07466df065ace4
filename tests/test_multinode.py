"""Multi-node training through torchrun's c10d rendezvous, on this machine: two torchrun
launches with ``--nnodes 2`` (one process each, gloo on CPU) meet at 127.0.0.1 and train as
one run of two processes; the result equals one process at the same global batch. A run
resumed on another world size continues from its checkpoint with the stated semantics
(``_Trainer._load_last``): same lr, the new global batch, the lr schedule in epochs, and
mid-epoch the rest of the epoch's images, each once."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import DistributedSampler

from tokenmixers.cli import main
from tokenmixers.train.checkpoint import STATE, load_state
from tokenmixers.train.progress import Progress
from tokenmixers.train.sampler import ResumableSampler

# The tiny model and data of test_distributed.py: 256 images, 8 steps per epoch at global
# batch 32, no augmentation (both set-ups see the same pixels). Three epochs of cosine, of
# which each run here trains one or two (--stop-after).
ARGS = ["--model", "mixer_s16_224", "--model-kwargs", "patch_size=4", "embed_dim=32",
        "num_blocks=1", "--data", "mnist5k", "--limit-train", "256", "--limit-val", "100",
        "--epochs", "3", "--lr", "2e-3", "--no-aug", "--progress", "plain", "--threads", "1"]
HEADER = "2 process(es) on cpu"

pytestmark = pytest.mark.usefixtures("one_thread")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (torchrun starts its workers in new sessions,
    so killing torchrun's process group would leave them)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def two_nodes(node_args: list[list[str]], logs: Path, timeout: float = 150.0) -> list[str]:
    """Start one ``torchrun --nnodes 2 --nproc-per-node 1`` per entry of ``node_args`` (the
    ``tokenmixers`` arguments of that "node"), concurrently, rendezvous on 127.0.0.1; wait for
    both and return their stderr. Either failing or running past ``timeout`` fails the test
    with both stderrs, after stopping both (and their workers)."""
    port, job = _free_port(), f"tokenmixers-test-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    logs.mkdir(parents=True, exist_ok=True)
    procs, files = [], []
    for node, args in enumerate(node_args):
        err = (logs / f"node{node}.err").open("w+")
        files.append(err)
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
             "--nproc-per-node", "1", "--rdzv-backend", "c10d",
             "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", job,
             "-m", "tokenmixers", *args],
            env=env, stdout=subprocess.DEVNULL, stderr=err, text=True))
    deadline = time.monotonic() + timeout
    failed = ""
    try:
        for node, proc in enumerate(procs):
            code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            if code != 0:
                failed = f"node {node} exited with status {code}"
    except subprocess.TimeoutExpired:
        failed = f"the two nodes ran past {timeout:.0f} s"
    if failed:
        for proc in procs:
            if proc.poll() is None:
                workers = _children(proc.pid)
                proc.send_signal(signal.SIGKILL)
                for pid in workers:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                proc.wait()
    stderrs = []
    for err in files:
        err.seek(0)
        stderrs.append(err.read())
        err.close()
    if failed:
        pytest.fail(f"{failed}\n" + "\n".join(f"--- node {i} stderr:\n{s[-3000:]}"
                                               for i, s in enumerate(stderrs)))
    return stderrs


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def max_diff(a: Path, b: Path) -> float:
    wa, wb = load_file(str(a / "last" / "model.safetensors")), load_file(
        str(b / "last" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    return max((wa[k] - wb[k]).abs().max().item() for k in wa)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Epoch 1 of 3 of one run, trained by one process at batch 32 and by two nodes at 16
    each. The nodes get different --output folders, as on machines that share no disk."""
    root = tmp_path_factory.mktemp("multinode")
    single = root / "single"
    assert main(["train", *ARGS, "--batch-size", "32", "--stop-after", "1",
                 "--output", str(single)]) == 0
    outputs = [root / "node0", root / "node1"]
    stderrs = two_nodes([["train", *ARGS, "--batch-size", "16", "--stop-after", "1",
                          "--output", str(out)] for out in outputs], root / "logs")
    return {"root": root, "single": single, "node0": outputs[0], "node1": outputs[1],
            "stderr0": Path(stderrs[0]), "stderr1": Path(stderrs[1])}


def _written(runs: dict[str, Path]) -> tuple[Path, int]:
    """The run folder the two nodes made (the one of global rank 0) and that node's index."""
    made = [i for i in (0, 1) if runs[f"node{i}"].exists()]
    assert len(made) == 1, made
    return runs[f"node{made[0]}"], made[0]


def test_two_nodes_match_one_process_and_only_rank_0_writes(runs: dict[str, Path]) -> None:
    ddp, node = _written(runs)
    stderrs = [str(runs["stderr0"]), str(runs["stderr1"])]
    # Global rank 0 (on a cluster: the node whose host name sorts first, whichever node holds
    # the rendezvous endpoint) logs and writes; the other node writes nothing, not even the
    # empty folder its own --output names.
    assert stderrs[node].count(HEADER) == 1 and "global batch 32" in stderrs[node]
    assert f"run folder {ddp}" in stderrs[node]
    assert HEADER not in stderrs[1 - node] and "epoch 1/3:" not in stderrs[1 - node]
    assert sorted(p.name for p in ddp.iterdir()) == sorted(
        p.name for p in runs["single"].iterdir())

    single = runs["single"]
    assert max_diff(single, ddp) <= 1e-5
    moved = load_file(str(single / "last" / "model.safetensors"))["head.weight"]
    assert moved.abs().max().item() > 1e-3  # the head starts at zero: training happened
    state = load_state(ddp / "last")
    assert (state["epoch"], state["global_step"], state["world_size"]) == (1, 8, 2)
    assert len(state["rng"]) == 2
    (m1,), (m2,) = metrics(single), metrics(ddp)
    assert abs(m1["top1"] - m2["top1"]) <= 1.0 and abs(m1["val_loss"] - m2["val_loss"]) < 1e-3
    assert abs(m1["train_loss"] - m2["train_loss"]) < 1e-4
    assert m1["lr"] == pytest.approx(m2["lr"], rel=1e-9)


@pytest.fixture(scope="module")
def reference(runs: dict[str, Path]) -> list[dict]:
    """Epochs 1 and 2 of the one-process run, uninterrupted world size: the lr schedule."""
    run = runs["root"] / "reference"
    shutil.copytree(runs["single"], run)
    assert main(["train", "--resume", str(run), "--stop-after", "1"]) == 0
    return metrics(run)


def test_two_nodes_resume_on_one_process(runs: dict[str, Path], reference: list[dict],
                                         capfd: pytest.CaptureFixture) -> None:
    ddp, _ = _written(runs)
    run = runs["root"] / "two-to-one"
    shutil.copytree(ddp, run)
    capfd.readouterr()
    assert main(["train", "--resume", str(run), "--stop-after", "1"]) == 0
    err = capfd.readouterr().err
    # The run continues from its saved step at the new global batch, the run's lr kept.
    assert "resuming" in err and "epoch 2, step 0/16 (global step 8)" in err
    assert ("warning: the run used 2 process(es) (global batch 32) and resumes on 1 (global "
            "batch 16) at the same lr 0.002 (not rescaled)") in err
    assert "16 steps per epoch now" in err and "--nproc 2" in err
    assert "3 epochs x 16 steps, global batch 16, lr 0.002 | 1 process(es)" in err
    state = load_state(run / "last")
    assert (state["epoch"], state["global_step"], state["world_size"]) == (2, 8 + 16, 1)
    m = metrics(run)
    assert [r["step"] for r in m] == [8, 24]
    assert m[0] == metrics(ddp)[0]  # epoch 1's record is kept as it was
    # The lr schedule is in epochs: after epoch 2 of 3 it stands where the uninterrupted
    # run's does (the saved schedule, 8 steps per epoch, would have reached its minimum).
    assert m[1]["lr"] == pytest.approx(reference[1]["lr"], rel=1e-9)
    assert m[1]["lr"] > 1e-4  # (the minimum, 1e-5, is for the end of epoch 3)
    # It learned on: the weights moved on from epoch 1's.
    assert max_diff(run, ddp) > 1e-4


def test_one_process_resumes_on_two_nodes(runs: dict[str, Path], reference: list[dict]
                                          ) -> None:
    run = runs["root"] / "one-to-two"
    shutil.copytree(runs["single"], run)
    # A resumed run reads its folder on every node: here both nodes share this disk.
    args = ["train", "--resume", str(run), "--stop-after", "1"]
    stderrs = two_nodes([args, args], runs["root"] / "logs-resume")
    both = "".join(stderrs)
    assert both.count("warning: the run used 1 process(es) (global batch 32) and resumes on 2 "
                      "(global batch 64) at the same lr 0.002 (not rescaled)") == 1
    assert both.count("3 epochs x 4 steps, global batch 64, lr 0.002 | 2 process(es)") == 1
    assert "epoch 2, step 0/4 (global step 8)" in both
    state = load_state(run / "last")
    assert (state["epoch"], state["global_step"], state["world_size"]) == (2, 8 + 4, 2)
    m = metrics(run)
    assert [r["step"] for r in m] == [8, 12]
    assert m[1]["lr"] == pytest.approx(reference[1]["lr"], rel=1e-9)


def test_mid_epoch_resume_on_another_world_size_sees_each_image_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture
) -> None:
    """A checkpoint saved mid-epoch by 2 processes of batch 16 (step 2 of 8 of epoch 2: 64
    images) resumes on 1 process (global batch 16): it continues at step 4 of 16, and the
    rest of the epoch is every image not yet trained on, once. The 2-process checkpoint is
    made from a 1-process one saved after the same 64 images (the sampler's order does not
    depend on the world size, checked first)."""
    n = 256
    one = DistributedSampler(range(n), num_replicas=1, rank=0, seed=0)
    one.set_epoch(1)
    order = list(one)
    for world in (2, 4):
        shards = []
        for rank in range(world):
            s = DistributedSampler(range(n), num_replicas=world, rank=rank, seed=0)
            s.set_epoch(1)
            shards.append(list(s))
        # After k images per process, the processes together have had the first k * world.
        for k in (16, 32, 64):
            assert sorted(i for sh in shards for i in sh[:k]) == sorted(order[:k * world])

    run = tmp_path / "run"
    original = Progress.step

    def step_then_ctrl_c(self: Progress, values: dict) -> None:
        original(self, values)
        if self.prefix.startswith("epoch 2/") and self.done == 4:
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(Progress, "step", step_then_ctrl_c)
    assert main(["train", *ARGS, "--progress", "none", "--batch-size", "16",
                 "--output", str(run)]) == 130
    monkeypatch.setattr(Progress, "step", original)
    # As two processes of batch 16 would have saved it: step 2 of epoch 2 is 64 images.
    path = run / "last" / STATE
    state = torch.load(path, weights_only=False)
    assert (state["epoch"], state["update_in_epoch"], state["global_step"]) == (1, 4, 20)
    state.update(world_size=2, update_in_epoch=2, global_step=8 + 2,
                 rng=[state["rng"][0], state["rng"][0]],
                 epoch_sums=[state["epoch_sums"][0], [0.0, 0.0, 0]])
    torch.save(state, path)
    seen: list[int] = []
    inner_iter = ResumableSampler.__iter__

    def record(self: ResumableSampler):  # type: ignore[no-untyped-def]
        indices = list(inner_iter(self))
        seen.extend(indices)
        return iter(indices)

    monkeypatch.setattr(ResumableSampler, "__iter__", record)
    capfd.readouterr()
    code = main(["train", "--resume", str(run), "--stop-after", "1", "--progress", "plain"])
    err = capfd.readouterr().err
    assert code == 0, err[-2000:]
    assert ("epoch 2 continues after its first 64 images (step 2 of 2 processes = step 4 of "
            "1)") in err
    assert "trained on again" not in err
    assert "epoch 2, step 4/16 (global step 10)" in err
    # Epoch 2's remaining indices: exactly the images the 2 processes had not had.
    assert seen[:n - 64] == order[64:]
    final = load_state(run / "last")
    assert (final["epoch"], final["global_step"]) == (2, 10 + 12)


def test_a_node_without_the_run_folder_says_it_needs_a_shared_filesystem(
        tmp_path: Path) -> None:
    from tokenmixers.train.distributed import DistInfo
    from tokenmixers.train.loop import _Trainer

    missing = tmp_path / "runs" / "a"  # rank 0's folder, not on this node's disk
    with pytest.raises(FileNotFoundError, match="no run there") as err:
        _Trainer({}, DistInfo(rank=1, local_rank=0, world_size=2), resume=str(missing),
                 overwrite=False)
    assert "process 1 of 2, on host" in str(err.value)
    assert "a filesystem all nodes share" in str(err.value)


def test_run_lock_on_a_filesystem_without_locks_warns_and_goes_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    import fcntl

    from tokenmixers.train.runlock import RunLock

    def no_locks(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    said: list[str] = []
    with RunLock(tmp_path / "run", said.append) as lock:
        assert lock.fd is None
    assert len(said) == 1 and "has no file locks" in said[0] and "on this machine or another" \
        in said[0]

    def broken(fd: int, op: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(fcntl, "flock", broken)
    with pytest.raises(OSError, match="Input/output error"):
        RunLock(tmp_path / "run", said.append).acquire()
