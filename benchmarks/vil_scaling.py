"""Vision-LSTM's cost against the number of tokens: ViL-T at 224, 448 and 672 (196, 784 and
1764 tokens), batch 8, eval, 2 threads, with the mLSTM cell in its ``parallel`` (quadratic,
the authors' form) and ``chunkwise`` (linear) backends.

Method. Time: each resolution runs in a fresh subprocess that builds the model once, warms
both backends up at full batch and times them alternately in ABBA order (chunkwise
parallel, parallel chunkwise, ...), so drift on a shared machine hits both alike and
neither always runs in the other's wake; the time is the best of the rounds (the least disturbed
run), and the rounds stop after ``--rounds`` or once ``--budget`` seconds are spent (one
forward of the parallel form at 672 takes minutes). Read the ratios, not the absolute times.
Memory: every (resolution, backend) runs one forward in a fresh subprocess of its own, with
glibc's mmap threshold pinned (``MALLOC_MMAP_THRESHOLD_``) so large buffers are mapped and
unmapped rather than kept in the heap; just before the forward the kernel's peak-RSS mark is
reset (``echo 5 > /proc/self/clear_refs``), and the peak is the rise of ``VmHWM`` over the
RSS at that moment: what the forward itself allocates. (The pinned threshold costs page
faults, which is why the timing runs use the default allocator settings.)

    python benchmarks/vil_scaling.py [--sizes 224,448,672] [--threads 2] [--rounds 5]
    python benchmarks/vil_scaling.py --cell   # the cell alone against S: the "auto" rule
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _model_and_input(size: int, batch: int, threads: int, backend: str = "auto"):
    import torch

    import tokenmixers

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = tokenmixers.create_model("vil_tiny", img_size=size, backend=backend).eval()
    return model, torch.randn(batch, 3, size, size)


def time_worker(size: int, batch: int, threads: int, rounds: int, budget: float) -> dict:
    import torch

    from tokenmixers.mixers.mlstm import set_mlstm_backend

    model, x = _model_and_input(size, batch, threads)
    backends = ("chunkwise", "parallel")
    times: dict[str, list[float]] = {b: [] for b in backends}
    with torch.inference_mode():
        for backend in backends:  # warm-up at full batch: first-call allocations, thread pool
            set_mlstm_backend(model, backend)
            model(x)
        start = time.perf_counter()
        while len(times["parallel"]) < rounds and (
            not times["parallel"] or time.perf_counter() - start < budget
        ):
            # Alternate which backend goes first (A B, B A, ...): run right after the
            # parallel form, whose S x S buffers the allocator has just returned, the
            # chunkwise form pays page faults that have nothing to do with it.
            order = backends if len(times["parallel"]) % 2 == 0 else backends[::-1]
            for backend in order:
                set_mlstm_backend(model, backend)
                t0 = time.perf_counter()
                model(x)
                times[backend].append(time.perf_counter() - t0)
    grid = model.patch_embed.grid_size((size, size))
    return {"tokens": grid[0] * grid[1], "rounds": len(times["parallel"]),
            "seconds": {b: min(t) for b, t in times.items()}}


def memory_worker(size: int, batch: int, threads: int, backend: str) -> dict:
    import torch

    model, x = _model_and_input(size, batch, threads, backend)
    with torch.inference_mode():
        model(x[:1])
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS
        rss = _status_kb("VmRSS")
        model(x)
        return {"peak_mb": (_status_kb("VmHWM") - rss) / 1024}


def _run(args: argparse.Namespace, job: str, env: dict[str, str] | None = None) -> dict:
    cmd = [sys.executable, __file__, "--worker", job, "--batch", str(args.batch),
           "--threads", str(args.threads), "--rounds", str(args.rounds),
           "--budget", str(args.budget)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True,
                         env={**os.environ, **(env or {})}).stdout
    return json.loads(out.strip().splitlines()[-1])


def measure(args: argparse.Namespace, size: int) -> dict:
    result = _run(args, f"time,{size}")
    pinned = {"MALLOC_MMAP_THRESHOLD_": "131072"}
    result["peak_mb"] = {
        b: _run(args, f"memory,{size},{b}", pinned)["peak_mb"] for b in ("chunkwise", "parallel")
    }
    return result


def cell_table(threads: int, rounds: int) -> None:
    """The mLSTM cell alone with ViL-T's shapes (batch 8, 4 heads, head dim 96): parallel
    and chunkwise (chunk 64) timed alternately at each S, best of ``rounds``."""
    import torch

    from tokenmixers.mixers.mlstm import mlstm_chunkwise, mlstm_parallel

    torch.set_num_threads(threads)
    print(f"{'S':>5} | {'parallel ms':>11} {'chunkwise ms':>12} {'speed-up':>8}")
    for s in (49, 64, 96, 128, 196, 400, 784):
        q, k, v = (torch.randn(8, 4, s, 96) for _ in range(3))
        ig, fg = torch.randn(8, 4, s), torch.randn(8, 4, s) + 4
        best = {"p": float("inf"), "c": float("inf")}
        with torch.inference_mode():
            for _ in range(rounds + 1):  # the first round warms up
                for key, fn in (("p", mlstm_parallel), ("c", mlstm_chunkwise)):
                    t0 = time.perf_counter()
                    fn(q, k, v, ig, fg)
                    best[key] = min(best[key], time.perf_counter() - t0)
        print(f"{s:>5} | {best['p'] * 1e3:>11.2f} {best['c'] * 1e3:>12.2f} "
              f"{best['p'] / best['c']:>7.2f}x", flush=True)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="224,448,672")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5, help="timed forwards at most")
    parser.add_argument("--budget", type=float, default=60.0,
                        help="start no new round after this many seconds per size")
    parser.add_argument("--cell", action="store_true", help="time the cell alone against S")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cell:
        cell_table(args.threads, args.rounds)
        return
    if args.worker:
        kind, size, *rest = args.worker.split(",")
        if kind == "time":
            result = time_worker(int(size), args.batch, args.threads, args.rounds, args.budget)
        else:
            result = memory_worker(int(size), args.batch, args.threads, rest[0])
        print(json.dumps(result))
        return

    import torch

    print(f"torch {torch.__version__}, {cpu_name()}, {os.cpu_count()} cores, "
          f"{args.threads} threads, batch {args.batch}, eval; load average "
          f"{os.getloadavg()[0]:.1f} at start", flush=True)
    sizes = [int(s) for s in args.sizes.split(",")]
    results = {}
    for size in sizes:
        r = results[size] = measure(args, size)
        print(f"  {size}px: {r['rounds']} rounds, load average {os.getloadavg()[0]:.1f}",
              flush=True)

    header = (f"{'size':>5} {'tokens':>6} | {'parallel img/s':>14} {'chunkwise img/s':>15} "
              f"{'speed-up':>8} | {'parallel MB':>11} {'chunkwise MB':>12} {'mem ratio':>9}")
    print("\n" + header)
    print("-" * len(header))
    per_token = {}
    for size in sizes:
        r = results[size]
        tc, tp = r["seconds"]["chunkwise"], r["seconds"]["parallel"]
        mc, mp = r["peak_mb"]["chunkwise"], r["peak_mb"]["parallel"]
        per_token[size] = tc / r["tokens"]
        print(f"{size:>5} {r['tokens']:>6} | {args.batch / tp:>14.2f} {args.batch / tc:>15.2f} "
              f"{tp / tc:>7.2f}x | {mp:>11.0f} {mc:>12.0f} {mp / mc:>8.2f}x")
    for a, b in itertools.pairwise(sizes):
        print(f"chunkwise per-token time ratio {a}->{b}: {per_token[b] / per_token[a]:.2f} "
              "(1.0 = linear in tokens)")


if __name__ == "__main__":
    main()
