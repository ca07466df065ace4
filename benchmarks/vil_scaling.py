"""Vision-LSTM's cost against the number of tokens: ViL-T at 224, 448 and 672 (196, 784 and
1764 tokens), batch 8, eval, 2 threads, with the mLSTM cell in its ``parallel`` (quadratic,
the authors' form) and ``chunkwise`` (linear) backends.

Method. Every (resolution, backend) runs in a fresh subprocess, so one measurement's memory
cannot leak into another's: it builds the model, runs a warm-up forward with one image,
resets the kernel's peak-RSS mark (``echo 5 > /proc/self/clear_refs``), then times
forwards of the batch. Peak memory is the rise of the peak RSS (``VmHWM``) over the RSS
just before the first timed forward: what the forward pass itself allocates. Timing: the
median over up to ``--rounds`` forwards, stopping once ``--budget`` seconds are spent (a
single forward of the parallel form at 672 takes minutes). The two backends run back to
back at each resolution and ``--repeats`` alternates them again, keeping the best of each,
so the machine's drift hits both alike: read the ratios, not the absolute times.

    python benchmarks/vil_scaling.py [--sizes 224,448,672] [--threads 2] [--repeats 1]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def worker(size: int, backend: str, batch: int, threads: int, rounds: int, budget: float) -> dict:
    import torch

    import tokenmixers

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = tokenmixers.create_model("vil_tiny", img_size=size, backend=backend).eval()
    x = torch.randn(batch, 3, size, size)
    with torch.inference_mode():
        model(x[:1])  # warm-up: first-call allocations, thread pool
        rss_before = _status_kb("VmRSS")
        try:
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
            reset = True
        except OSError:
            reset = False
        times = []
        start = time.perf_counter()
        while len(times) < rounds and (not times or time.perf_counter() - start < budget):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
            if len(times) == 1:
                peak = _status_kb("VmHWM")
    return {
        "size": size, "backend": backend, "tokens": model.patch_embed.grid_size((size, size)),
        "seconds": statistics.median(times), "rounds": len(times),
        "peak_mb": (peak - rss_before) / 1024 if reset else float("nan"),
    }


def measure(args: argparse.Namespace, size: int, backend: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", f"{size},{backend}", "--batch", str(args.batch),
           "--threads", str(args.threads), "--rounds", str(args.rounds),
           "--budget", str(args.budget)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


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
    parser.add_argument("--budget", type=float, default=30.0, help="seconds per measurement")
    parser.add_argument("--repeats", type=int, default=1, help="alternate the backends again")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        size, backend = args.worker.split(",")
        result = worker(int(size), backend, args.batch, args.threads, args.rounds, args.budget)
        print(json.dumps(result))
        return

    import torch

    print(f"torch {torch.__version__}, {cpu_name()}, {os.cpu_count()} cores, "
          f"{args.threads} threads, batch {args.batch}, eval; load average "
          f"{os.getloadavg()[0]:.1f} at start", flush=True)
    sizes = [int(s) for s in args.sizes.split(",")]
    best: dict[tuple[int, str], dict] = {}
    for _ in range(args.repeats):
        for size in sizes:
            for backend in ("chunkwise", "parallel"):
                r = measure(args, size, backend)
                key = (size, backend)
                if key not in best or r["seconds"] < best[key]["seconds"]:
                    best[key] = r
                print(f"  {size}px {backend:9s} {args.batch / r['seconds']:7.2f} img/s "
                      f"({r['rounds']} rounds)  peak +{r['peak_mb']:7.0f} MB", flush=True)

    print(f"\nload average {os.getloadavg()[0]:.1f} at end\n")
    header = (f"{'size':>5} {'tokens':>6} | {'parallel img/s':>14} {'chunkwise img/s':>15} "
              f"{'speed-up':>8} | {'parallel MB':>11} {'chunkwise MB':>12} {'mem ratio':>9}")
    print(header)
    print("-" * len(header))
    per_token = {}
    for size in sizes:
        p, c = best[(size, "parallel")], best[(size, "chunkwise")]
        n = p["tokens"][0] * p["tokens"][1]
        per_token[size] = c["seconds"] / n
        print(f"{size:>5} {n:>6} | {args.batch / p['seconds']:>14.2f} "
              f"{args.batch / c['seconds']:>15.2f} {p['seconds'] / c['seconds']:>7.2f}x | "
              f"{p['peak_mb']:>11.0f} {c['peak_mb']:>12.0f} "
              f"{p['peak_mb'] / c['peak_mb']:>8.2f}x")
    for a, b in itertools.pairwise(sizes):
        print(f"chunkwise per-token time ratio {a}->{b}: {per_token[b] / per_token[a]:.2f} "
              "(1.0 = linear in tokens)")


if __name__ == "__main__":
    main()
