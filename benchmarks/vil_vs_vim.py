"""Vision-LSTM against Vision Mamba at matched parameters: ViL-T+ (``vil_tiny_plus``,
7.28 M) and Vim-T (``vim_tiny``, 7.15 M), inference and a training step, at 224 and 448,
in one run; and Vim's scan against the sequence length (is the fast form linear?).

The ViL paper's claim (arXiv 2406.04303): ViL is 69% faster than Vim because a ViL block
scans the sequence once, in one direction (alternating between blocks), where a Vim block
scans it twice, forwards and backwards. The paper measured on GPUs with Vim's CUDA kernels;
here both models are plain PyTorch, on whatever device this runs.

Method. Each (resolution, mode) runs in a fresh subprocess that builds both models, warms
each up, and times them alternately in ABBA order (ViL Vim, Vim ViL, ...), so drift on a
shared machine hits both alike; the table gives the median of the rounds and the spread
(max/min over the rounds) of each, and "ViL faster by" = t(Vim) / t(ViL) - 1 from the
medians. A training step is forward, backward and an SGD update.

``--linear``: Vim-T's time per token at 448, 896 (784 and 3,136 patch tokens) with the
``recurrent`` scan (the CPU default) and, for the record, the others; the issue's target is
a per-token ratio within 1.3x from 784 to 3,136 tokens.

    python benchmarks/vil_vs_vim.py [--sizes 224,448] [--batch 8] [--threads 2] [--rounds 5]
    python benchmarks/vil_vs_vim.py --linear [--sizes 448,896] [--batch 1]
    python benchmarks/vil_vs_vim.py --device cuda        # on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from vil_scaling import cpu_name  # this directory is the script's sys.path[0]

MODELS = {"ViL-T+": "vil_tiny_plus", "Vim-T": "vim_tiny"}


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def pair_worker(size: int, mode: str, batch: int, threads: int, rounds: int, budget: float,
                device: str) -> dict:
    import torch

    import tokenmixers

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    models = {k: tokenmixers.create_model(n, img_size=size, drop_path_rate=0.0).to(device)
              for k, n in MODELS.items()}
    x = torch.randn(batch, 3, size, size, device=device)
    target = torch.randint(0, 1000, (batch,), device=device)
    optims = {k: torch.optim.SGD(m.parameters(), lr=1e-4) for k, m in models.items()}

    def step(key: str) -> None:
        model = models[key]
        if mode == "infer":
            with torch.inference_mode():
                model(x)
        else:
            loss = torch.nn.functional.cross_entropy(model(x), target)
            loss.backward()
            optims[key].step()
            optims[key].zero_grad(set_to_none=True)

    for key, model in models.items():
        model.train(mode == "train")
        step(key)  # warm-up: first-call allocations, thread pool, kernels
    _sync(device)
    times: dict[str, list[float]] = {k: [] for k in models}
    keys = list(models)
    start = time.perf_counter()
    while len(times[keys[0]]) < rounds and (
        len(times[keys[0]]) < 2 or time.perf_counter() - start < budget
    ):
        order = keys if len(times[keys[0]]) % 2 == 0 else keys[::-1]
        for key in order:
            t0 = time.perf_counter()
            step(key)
            _sync(device)
            times[key].append(time.perf_counter() - t0)
    return {
        "params": {k: sum(p.numel() for p in m.parameters()) for k, m in models.items()},
        "tokens": {k: m.patch_embed.grid_size((size, size))[0]
                   * m.patch_embed.grid_size((size, size))[1] + m.num_prefix_tokens
                   for k, m in models.items()},
        "times": times,
    }


def linear_worker(size: int, batch: int, threads: int, rounds: int, device: str) -> dict:
    import torch

    import tokenmixers
    from tokenmixers.mixers.bimamba import set_scan

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = tokenmixers.create_model("vim_tiny", img_size=size).to(device).eval()
    x = torch.randn(batch, 3, size, size, device=device)
    scans = ("recurrent", "chunked", "reference")
    times: dict[str, list[float]] = {s: [] for s in scans}
    with torch.inference_mode():
        for scan in scans:
            set_scan(model, scan)
            model(x)
        for r in range(rounds):
            for scan in scans if r % 2 == 0 else scans[::-1]:
                set_scan(model, scan)
                t0 = time.perf_counter()
                model(x)
                _sync(device)
                times[scan].append(time.perf_counter() - t0)
    grid = model.patch_embed.grid_size((size, size))
    return {"tokens": grid[0] * grid[1] + 1, "times": times}


def _run(args: argparse.Namespace, job: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", job, "--batch", str(args.batch),
           "--threads", str(args.threads), "--rounds", str(args.rounds),
           "--budget", str(args.budget), "--device", args.device]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _spread(ts: list[float]) -> float:
    return max(ts) / min(ts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="224,448")
    parser.add_argument("--modes", default="infer,train")
    parser.add_argument("--batch", type=int, default=None,
                        help="images per step (default 8; 1 with --linear)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=6, help="timed runs of each model")
    parser.add_argument("--budget", type=float, default=90.0,
                        help="start no new round after this many seconds per job")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--linear", action="store_true",
                        help="Vim-T's per-token time against the sequence length")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.batch is None:
        args.batch = 1 if args.linear else 8
    if args.worker:
        kind, size, *rest = args.worker.split(",")
        if kind == "pair":
            result = pair_worker(int(size), rest[0], args.batch, args.threads, args.rounds,
                                 args.budget, args.device)
        else:
            result = linear_worker(int(size), args.batch, args.threads, args.rounds,
                                   args.device)
        print(json.dumps(result))
        return

    import torch

    where = (torch.cuda.get_device_name() if args.device.startswith("cuda")
             else f"{cpu_name()}, {os.cpu_count()} cores, {args.threads} threads")
    print(f"torch {torch.__version__}, {where}, batch {args.batch}; load average "
          f"{os.getloadavg()[0]:.1f} at start", flush=True)
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.linear:
        sizes = [int(s) for s in args.sizes.split(",")] if args.sizes != "224,448" else [448, 896]
        rows = {s: _run(args, f"linear,{s}") for s in sizes}
        scans = list(rows[sizes[0]]["times"])
        print(f"\n{'size':>5} {'tokens':>6} | " + " ".join(
            f"{scan + ' ms':>14} {'us/token':>8} {'spread':>6}" for scan in scans))
        for s, r in rows.items():
            cells = []
            for ts in r["times"].values():
                med = statistics.median(ts)
                cells.append(f"{med * 1e3:>14.1f} {med / r['tokens'] / args.batch * 1e6:>8.1f} "
                             f"{_spread(ts):>6.2f}")
            print(f"{s:>5} {r['tokens']:>6} | " + " ".join(cells))
        first, last = rows[sizes[0]], rows[sizes[-1]]
        for scan in first["times"]:
            a = statistics.median(first["times"][scan]) / first["tokens"]
            b = statistics.median(last["times"][scan]) / last["tokens"]
            print(f"{scan}: per-token time {first['tokens']} -> {last['tokens']} tokens: "
                  f"{b / a:.2f}x (1.0 = linear)")
        return

    modes = args.modes.split(",")
    results = {}
    for size in sizes:
        for mode in modes:
            results[size, mode] = _run(args, f"pair,{size},{mode}")
            print(f"  {size}px {mode}: {len(results[size, mode]['times']['Vim-T'])} rounds, "
                  f"load average {os.getloadavg()[0]:.1f}", flush=True)
    params = results[sizes[0], modes[0]]["params"]
    print("\nparameters: " + ", ".join(f"{k} {v:,}" for k, v in params.items()))
    header = (f"{'size':>5} {'mode':>5} {'tokens (ViL/Vim)':>17} | {'ViL-T+ ms':>10} "
              f"{'spread':>6} | {'Vim-T ms':>9} {'spread':>6} | {'ViL faster by':>13}")
    print(header)
    print("-" * len(header))
    for (size, mode), r in results.items():
        tv, tm = (statistics.median(r["times"][k]) for k in MODELS)
        tok = r["tokens"]
        print(f"{size:>5} {mode:>5} {tok['ViL-T+']:>8}/{tok['Vim-T']:<8} | {tv * 1e3:>10.1f} "
              f"{_spread(r['times']['ViL-T+']):>6.2f} | {tm * 1e3:>9.1f} "
              f"{_spread(r['times']['Vim-T']):>6.2f} | {100 * (tm / tv - 1):>12.0f}%")
    print(f"load average at the end {os.getloadavg()[0]:.1f}; the paper claims ViL is 69% "
          "faster (GPU, Vim's CUDA kernels)")


if __name__ == "__main__":
    main()
