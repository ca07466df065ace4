"""Kill a tiny training run with SIGKILL at random moments, resume it, and check that nothing
was lost or mixed.

Each trial starts ``tokenmixers train`` in a fresh process, waits until the run folder has
its ``config.yaml``, sleeps a random time drawn uniformly from the training's length, and
sends ``kill -9``. It then continues the run with ``--resume`` (or, when the kill came
before the first checkpoint, starts it again with ``--overwrite``, as the error message
says) and checks against an uninterrupted run of the same command:

- ``last/`` and ``best/``: weights bit-identical, same epoch, step, best epoch and records;
- ``metrics.jsonl``: every epoch once, in order, with the uninterrupted run's numbers;
- TensorBoard: one ``epoch/top1`` point per epoch, at the uninterrupted run's steps;
- no temporary folder (``.last.*``, ``.best.*``) and no lock file left behind.

    python benchmarks/fault_injection.py                 # 20 trials, about 4 minutes here
    python benchmarks/fault_injection.py --trials 100 --seed 1

It prints one line per trial (when the kill came, what the resume found) and a summary, and
exits 1 if any trial failed. The result is recorded in docs/reliability.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from tokenmixers.train.checkpoint import WEIGHTS, load_state
from tokenmixers.train.progress import CLOCK_FIELDS

# A tiny run (0.01M parameters): 32 steps per epoch, 6 epochs, about half a second each.
RUN = ["--model", "mixer_s16_224", "--model-kwargs", "patch_size=4", "embed_dim=32",
       "num_blocks=1", "--data", "mnist5k", "--limit-train", "1024", "--limit-val", "64",
       "--batch-size", "32", "--epochs", "6", "--lr", "5e-3", "--warmup-epochs", "0",
       "--smoothing", "0", "--threads", "1", "--progress", "plain", "--log-interval", "8"]
STRIP = CLOCK_FIELDS  # wall-clock fields differ between runs


def tokenmixers(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "tokenmixers_launch", *args]


def env() -> dict[str, str]:
    out = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    out.pop("TOKENMIXERS_FAULT", None)
    return out


def records(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [{k: v for k, v in json.loads(line).items() if k not in STRIP} for line in lines]


def tensorboard_steps(run: Path) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # It reports each purge after a restart (expected here) as a warning.
    logging.getLogger("tensorboard").setLevel(logging.ERROR)
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    return [e.step for e in sorted(acc.Scalars("epoch/top1"), key=lambda e: e.step)]


def differences(run: Path, reference: Path) -> list[str]:
    """What differs between ``run`` and the uninterrupted ``reference`` (empty: nothing)."""
    found: list[str] = []
    for name in ("last", "best"):
        a, b = run / name, reference / name
        if not (a / WEIGHTS).is_file():
            found.append(f"{name}/ is missing")
            continue
        wa, wb = load_file(str(a / WEIGHTS)), load_file(str(b / WEIGHTS))
        if wa.keys() != wb.keys() or any(not torch.equal(wa[k], wb[k]) for k in wa):
            found.append(f"{name}/ weights differ")
        sa, sb = load_state(a), load_state(b)
        for key in ("epoch", "global_step", "best_epoch", "best_top1"):
            if sa.get(key) != sb.get(key):
                found.append(f"{name}/ {key} is {sa.get(key)}, expected {sb.get(key)}")
        strip = [[{k: v for k, v in r.items() if k not in STRIP} for r in s["history"]]
                 for s in (sa, sb)]
        if strip[0] != strip[1]:
            found.append(f"{name}/ holds different epoch records")
    got, want = records(run), records(reference)
    if got != want:
        found.append(f"metrics.jsonl has epochs {[r.get('epoch') for r in got]}, expected "
                     f"{[r['epoch'] for r in want]}" if [r.get("epoch") for r in got] !=
                     [r["epoch"] for r in want] else "metrics.jsonl values differ")
    if tensorboard_steps(run) != [r["step"] for r in want]:
        found.append(f"TensorBoard epoch/top1 at steps {tensorboard_steps(run)}, expected "
                     f"{[r['step'] for r in want]}")
    left = sorted(p.name for p in run.iterdir() if p.name.startswith("."))
    if left:
        found.append(f"left behind: {', '.join(left)}")
    return found


def wait_for_config(proc: subprocess.Popen, run: Path) -> float:
    """Wait until the run's config.yaml exists (set-up done, training starts); its time."""
    while not (run / "config.yaml").exists() and proc.poll() is None:
        time.sleep(0.005)
    return time.perf_counter()


def run_to_end(run: Path, log: Path) -> tuple[int, str]:
    """Resume ``run`` (or start it again when it has no checkpoint) until it finishes."""
    with open(log, "a") as f:
        code = subprocess.call(tokenmixers(["train", "--resume", str(run)]), env=env(),
                               stdout=f, stderr=subprocess.STDOUT)
        if code == 0:
            return code, "resumed"
        code = subprocess.call(tokenmixers(["train", *RUN, "--output", str(run),
                                            "--overwrite"]), env=env(), stdout=f,
                               stderr=subprocess.STDOUT)
        return code, "started again"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0, help="draws the kill moments")
    parser.add_argument("--keep", type=Path, help="keep the runs in this folder")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    root = args.keep or Path(tempfile.mkdtemp(prefix="tokenmixers-faults-"))
    root.mkdir(parents=True, exist_ok=True)
    reference = root / "uninterrupted"
    shutil.rmtree(reference, ignore_errors=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(tokenmixers(["train", *RUN, "--output", str(reference)]),
                            env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t_config = wait_for_config(proc, reference)
    if proc.wait() != 0:
        raise SystemExit("the uninterrupted run failed; run its command by hand to see why")
    length = time.perf_counter() - t_config
    print(f"uninterrupted run: {time.perf_counter() - t0:.1f}s, {length:.1f}s of it after "
          f"config.yaml appeared; {args.trials} trials, kill moments drawn uniformly from "
          f"[0, {length:.1f}]s after config.yaml appears", flush=True)
    failures = 0
    for trial in range(1, args.trials + 1):
        run = root / f"trial-{trial:03d}"
        shutil.rmtree(run, ignore_errors=True)
        log = root / f"trial-{trial:03d}.log"
        delay = rng.uniform(0, length)
        with open(log, "w") as f:
            proc = subprocess.Popen(tokenmixers(["train", *RUN, "--output", str(run)]),
                                    env=env(), stdout=f, stderr=subprocess.STDOUT)
            wait_for_config(proc, run)
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
            killed = proc.wait() == -signal.SIGKILL
        state = None
        if (run / "last" / WEIGHTS).is_file():
            s = load_state(run / "last")
            state = f"epoch {s['epoch']} + {s['update_in_epoch']} steps"
        temporary = sorted(p.name for p in run.iterdir() if p.name.startswith(".")) \
            if run.exists() else []
        logged = len(records(run)) if run.exists() else 0
        code, how = run_to_end(run, log)
        problems = differences(run, reference) if code == 0 else [f"exit status {code}"]
        failures += bool(problems)
        what = "killed" if killed else "finished before the kill"
        print(f"trial {trial:3d}: {what} {delay:5.2f}s in (last/: {state or 'none'}; "
              f"{logged} record(s) logged; found {', '.join(temporary) or 'nothing else'}); "
              f"{how}: "
              f"{'OK' if not problems else 'FAILED: ' + '; '.join(problems)}", flush=True)
    print(f"{args.trials} trials, {failures} failure(s); runs and logs in {root}")
    if not args.keep and not failures:
        shutil.rmtree(root, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
