"""``tokenmixers bench``: parameters, MACs, throughput, peak memory and achieved
GFLOP/s as a fraction of the machine's matrix-multiply peak, per model and resolution.

Each model and mode is measured in a fresh subprocess (its resolutions one after another
in it), so the peak memory of one model is not hidden under another's. Memory on CPU is the
rise of the process's peak resident set (``VmHWM``, reset through
``/proc/self/clear_refs`` just before the timed work) over its size right before it:
activations, workspaces and, in training, gradients and optimizer state — not the
weights, which are counted in ``params``. On CUDA it is ``torch.cuda.max_memory_allocated``
over the allocation before the timed work.

The matrix-multiply peak is measured in the same run, with the same thread count and
dtype: the best of several ``n x n @ n x n`` products (n = 2048 on CPU, 8192 on CUDA).
MFU = (MACs x 2 x images/s, x 3 for a training step) / that peak.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from tokenmixers.mixers.base import MIXERS
from tokenmixers.plugins import worker_env
from tokenmixers.precision import AMP_CHOICES, AMP_DTYPES, autocast, check_amp
from tokenmixers.text import format_table as plain_table
from tokenmixers.text import split_list

__all__ = ["bench", "matmul_peak_gflops", "measure"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def matmul_peak_gflops(device: str = "cpu", dtype: str | None = None, repeats: int = 5) -> float:
    """The best achieved GFLOP/s of a square matrix product on ``device`` in ``dtype`` (an
    ``--amp`` value; ``none`` or ``None``: float32)."""
    dev = torch.device(device)
    n = 8192 if dev.type == "cuda" else 2048
    dt = AMP_DTYPES.get(dtype or "", torch.float32)
    a = torch.randn(n, n, device=dev).to(dt)
    b = torch.randn(n, n, device=dev).to(dt)
    times = _timed(lambda: a @ b, dev, warmup=2, repeats=repeats)
    return 2 * n**3 / min(times) / 1e9


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM (Linux >= 4.0)
        return True
    except OSError:
        return False


def _peak_rss_bytes() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(
    model_name: str,
    *,
    img_size: int,
    batch_size: int = 8,
    mode: str = "infer",
    amp: str | None = "none",
    compile: bool = False,
    threads: int | None = None,
    device: str = "cpu",
    warmup: int = 2,
    repeats: int = 5,
    model_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Measure one (model, resolution, mode) in this process; returns a flat record.
    ``amp`` is an ``--amp`` value (``None`` means ``none``)."""
    from tokenmixers.flops import count_macs
    from tokenmixers.zoo import create_model

    amp = check_amp(amp)
    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    torch.manual_seed(0)
    model = create_model(model_name, **(model_kwargs or {})).to(dev)
    params = sum(p.numel() for p in model.parameters())
    macs = count_macs(model, img_size)
    c = model.pretrained_cfg["input_size"][0]
    x = torch.randn(batch_size, c, img_size, img_size, device=dev)
    # One context for every step, entered again each time, as torch.autocast allows.
    amp_context = autocast(dev, amp)
    run_model = torch.compile(model) if compile else model
    if mode == "infer":
        model.eval()

        def step() -> None:
            with torch.inference_mode(), amp_context:
                run_model(x)
    elif mode == "train":
        model.train()
        target = torch.randint(0, max(model.num_classes, 1), (batch_size,), device=dev)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        scaler = torch.amp.GradScaler(dev.type, enabled=amp == "fp16")

        def step() -> None:
            with amp_context:
                loss = torch.nn.functional.cross_entropy(run_model(x), target)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
    else:
        raise ValueError(f"mode must be 'infer' or 'train', got {mode!r}")

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
    else:
        base = _rss_bytes()
        _reset_peak_rss()
    times = _timed(step, dev, warmup=warmup, repeats=repeats)
    peak = (
        torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else _peak_rss_bytes()
    ) - base
    rates = [batch_size / t for t in times]
    return {
        "model": model_name,
        "img_size": img_size,
        "mode": mode,
        "params": params,
        "macs": macs.total,
        "mixer_macs": macs.mixer,
        "flops": macs.flops,
        "img_s": statistics.median(rates),
        "img_s_min": min(rates),
        "img_s_max": max(rates),
        "peak_mem_mb": max(peak, 0) / 2**20,
        "batch_size": batch_size,
        "threads": torch.get_num_threads(),
        "device": dev.type,
        "amp": amp,
        "compile": compile,
    }


def _measure_one(job: dict[str, Any]) -> dict[str, Any]:
    try:
        return measure(**job)
    except Exception as err:  # reported per job; the other sizes still run
        return {"error": f"{type(err).__name__}: {err}".splitlines()[0]}


def _measure_jobs(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run :func:`measure` for each job in a process of its own, forked from this one
    (which has imported torch but run nothing, so the child starts with a clean heap and
    no thread pool) — fresh-process memory figures without paying the import each time.
    A failing job becomes ``{"error": message}`` (e.g. a Mixer asked for a size it was
    not built for)."""
    import multiprocessing as mp

    if "fork" not in mp.get_all_start_methods():
        return [_measure_one(job) for job in jobs]
    ctx = mp.get_context("fork")
    out = []
    for job in jobs:
        with ctx.Pool(1) as pool:
            out.append(pool.apply(_measure_one, (job,)))
    return out


def _measure_in_subprocess(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-m", "tokenmixers.bench", json.dumps(jobs)],
        # The worker imports the files of mixers registered from outside the package.
        capture_output=True, text=True, env=worker_env(MIXERS.values()),
    )
    if done.returncode != 0:
        job = jobs[0]
        raise RuntimeError(
            f"benchmark of {job['model_name']} ({job['mode']}) failed:\n"
            f"{done.stderr.strip()[-2000:]}"
        )
    return json.loads(done.stdout.strip().splitlines()[-1])


#: bench's counts: option -> (its default, the least valid value, what it counts).
COUNTS: dict[str, tuple[int | None, int, str]] = {
    "batch_size": (8, 1, "images per timed step"),
    "warmup": (2, 0, "untimed runs before the timed ones"),
    "repeats": (5, 1, "timed runs; the median is reported"),
    "threads": (None, 0, "torch threads; 0: torch's default"),
}


def check_counts(img_sizes: Sequence[int] = (), **counts: int | None) -> None:
    """Refuse a count below its least value (:data:`COUNTS`) or an image size below 1, with
    the command line's names: nothing is measured with a batch of 0."""
    for key, value in counts.items():
        default, least, what = COUNTS[key]
        if value is None and default is None:
            continue
        if isinstance(value, int) and not isinstance(value, bool) and value >= least:
            continue
        flag = "--" + key.replace("_", "-")
        fix = (f"e.g. {flag} {default}, the default" if default is not None else
               "leave it out for torch's default")
        raise ValueError(f"{flag} {value}: expected a whole number >= {least} ({what}); {fix}")
    for size in img_sizes:
        if size < 1:
            raise ValueError(f"--img-size {size}: expected sizes of at least 1 pixel; e.g. "
                             "--img-size 224 or --img-size 160,224,288")


@functools.cache
def _peak_in_subprocess(device: str, amp: str | None, threads: int | None) -> float:
    """The matmul peak, measured once per process and setting: every model a process
    benchmarks (``compare`` benchmarks one after another) is divided by the same peak."""
    code = (
        "import json, torch, sys; from tokenmixers.bench import matmul_peak_gflops; "
        f"torch.set_num_threads({threads}) if {bool(threads)} else None; "
        f"print(matmul_peak_gflops({device!r}, {amp!r}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def bench(
    models: Sequence[str],
    img_sizes: Sequence[int],
    *,
    batch_size: int = 8,
    modes: Sequence[str] = ("infer", "train"),
    amp: str | None = "none",
    compile: bool = False,
    threads: int | None = None,
    device: str | None = None,
    warmup: int = 2,
    repeats: int = 5,
    model_kwargs: dict[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """One record per (model, resolution), with inference and training measured in
    separate fresh processes. ``amp`` is an ``--amp`` value (``None`` means ``none``)."""
    check_counts(img_sizes, batch_size=batch_size, warmup=warmup, repeats=repeats,
                 threads=threads)
    amp = check_amp(amp)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    peak = _peak_in_subprocess(device, amp, threads)
    records = []
    for name in models:
        by_size: dict[int, dict[str, Any]] = {
            size: {"model": name, "img_size": size} for size in img_sizes
        }
        for mode in modes:
            if progress:
                progress(f"{name} at {', '.join(map(str, img_sizes))} ({mode})")
            jobs = [
                dict(model_name=name, img_size=size, batch_size=batch_size, mode=mode, amp=amp,
                     compile=compile, threads=threads, device=device, warmup=warmup,
                     repeats=repeats, model_kwargs=model_kwargs)
                for size in img_sizes
            ]
            try:
                results = _measure_in_subprocess(jobs)
            except RuntimeError as err:
                results = [{"error": str(err).splitlines()[-1]}] * len(jobs)
            for size, r in zip(img_sizes, results):
                rec = by_size[size]
                if "error" in r:
                    rec.setdefault("errors", []).append(f"{mode}: {r['error']}")
                    continue
                for key in ("params", "macs", "mixer_macs", "flops", "batch_size", "threads",
                            "device", "amp", "compile"):
                    rec[key] = r[key]
                prefix = "infer" if mode == "infer" else "train"
                rec[f"{prefix}_img_s"] = r["img_s"]
                rec[f"{prefix}_img_s_min"] = r["img_s_min"]
                rec[f"{prefix}_img_s_max"] = r["img_s_max"]
                rec["peak_mem_mb" if mode == "infer" else "train_peak_mem_mb"] = r["peak_mem_mb"]
                # a training step is about 3x the forward pass (forward + 2x in backward)
                work = r["flops"] * (1 if mode == "infer" else 3)
                rec["mfu" if mode == "infer" else "train_mfu"] = work * r["img_s"] / (peak * 1e9)
        for rec in by_size.values():
            rec["matmul_peak_gflops"] = peak
            rec["torch"] = torch.__version__
            records.append(rec)
    return records


def format_table(records: Sequence[dict[str, Any]]) -> str:
    """The records as a plain-text table (drawn by :func:`tokenmixers.text.format_table`,
    imported as ``plain_table`` since this function has its name)."""
    def rate(r: dict[str, Any], p: str) -> str:
        if f"{p}_img_s" not in r:
            return "-"
        return f"{r[f'{p}_img_s']:.1f} ({r[f'{p}_img_s_min']:.1f}-{r[f'{p}_img_s_max']:.1f})"

    def num(r: dict[str, Any], key: str, fmt: str) -> str:
        return format(r[key], fmt) if key in r else "-"

    marks = _footnote_marks(records)
    rows = [
        [r["model"], f"{r['img_size']}{marks.get(i, '')}",
         f"{r['params'] / 1e6:.2f}M" if "params" in r else "-",
         f"{r['macs'] / 1e9:.2f}" if "macs" in r else "-",
         rate(r, "infer"), rate(r, "train"),
         num(r, "peak_mem_mb", ".0f"), num(r, "train_peak_mem_mb", ".0f"),
         f"{100 * r['mfu']:.1f}%" if "mfu" in r else "-",
         f"{100 * r['train_mfu']:.1f}%" if "train_mfu" in r else "-"]
        for i, r in enumerate(records)
    ]
    header = ["model", "img", "params", "GMACs", "infer img/s (min-max)",
              "train img/s (min-max)", "infer MB", "train MB", "MFU", "train MFU"]
    return plain_table(rows, header, "lrrrrrrrrr")


def _footnote_marks(records: Sequence[dict[str, Any]]) -> dict[int, str]:
    """Record index -> `` [n]``, for the records with something not measured."""
    noted = [i for i, r in enumerate(records) if r.get("errors")]
    return {i: f" [{n}]" for n, i in enumerate(noted, 1)}


def footnotes(records: Sequence[dict[str, Any]]) -> list[str]:
    """One line per record with something not measured, numbered as :func:`format_table`
    marks them: which modes, and why (the same reason for both modes is said once)."""
    marks = _footnote_marks(records)
    lines = []
    for i, mark in marks.items():
        r = records[i]
        by_reason: dict[str, list[str]] = {}
        for err in r["errors"]:
            mode, _, reason = err.partition(": ")
            by_reason.setdefault(reason, []).append(mode)
        why = "; ".join(f"{' and '.join(modes)} not measured: {reason}"
                        for reason, modes in by_reason.items())
        lines.append(f"{mark.strip()} {r['model']} at {r['img_size']} px: {why}")
    return lines


_EPILOG = ("Exit status: 0 when at least one model, size and mode was measured (a size a "
           "model cannot take is marked [n] in the table and explained below it); 1 when "
           "nothing could be measured (the reasons are printed); 2 for a bad option.")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="parameters, MACs, throughput, peak memory and MFU per model and resolution",
        description=__doc__.split("\n\n")[0] if __doc__ else None, epilog=_EPILOG,
    )
    p.add_argument("--model", required=True, help="NAME[,NAME...] from `tokenmixers list`")
    p.add_argument("--img-size", default="224", help="comma-separated sizes, e.g. 224,448")
    p.add_argument("--batch-size", type=int, default=COUNTS["batch_size"][0])
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--mode", choices=("infer", "train", "both"), default="both")
    p.add_argument("--amp", choices=AMP_CHOICES, default="none",
                   help="mixed precision (default none: float32)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--warmup", type=int, default=COUNTS["warmup"][0])
    p.add_argument("--repeats", type=int, default=COUNTS["repeats"][0],
                   help="timed runs (median reported)")
    p.add_argument("--model-kwargs", nargs="*", default=[], metavar="KEY=VALUE",
                   help="create_model overrides, e.g. backend=chunkwise")
    p.add_argument("--json", default=None, metavar="PATH", help="also write records as JSON")
    p.set_defaults(func=_cmd_bench)


def _cmd_bench(args: argparse.Namespace) -> int:
    from tokenmixers.train.config import check_model_kwargs, parse_model_kwargs
    from tokenmixers.zoo import get_spec

    models = split_list(args.model, what="--model")
    img_sizes = split_list(args.img_size, int, what="--img-size")
    check_counts(img_sizes, batch_size=args.batch_size, warmup=args.warmup,
                 repeats=args.repeats, threads=args.threads)
    model_kwargs = parse_model_kwargs(args.model_kwargs)
    for name in models:
        get_spec(name)  # unknown names fail now, with suggestions
        check_model_kwargs(name, model_kwargs)
    modes = ("infer", "train") if args.mode == "both" else (args.mode,)
    records = bench(
        models, img_sizes, batch_size=args.batch_size, modes=modes,
        amp=args.amp, compile=args.compile, threads=args.threads, device=args.device,
        warmup=args.warmup, repeats=args.repeats, model_kwargs=model_kwargs,
        progress=lambda s: print(f"  measuring {s}", file=sys.stderr, flush=True),
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=1)
    measured = [r for r in records if "device" in r]
    if not measured:
        reasons = "\n  ".join(footnotes(records))
        written = f" (the records, with these reasons, are in {args.json})" if args.json else ""
        print(f"tokenmixers bench: error: nothing could be measured{written}:\n  {reasons}\n"
              "choose --img-size values these models take (or change --model-kwargs)",
              file=sys.stderr)
        return 1
    print(format_table(records))
    r = measured[0]
    dtype = "fp32" if args.amp == "none" else args.amp
    print(f"\nmatmul peak: {r['matmul_peak_gflops']:.0f} GFLOP/s ({r['device']}, "
          f"{r['threads']} threads, {dtype}); batch {args.batch_size}; "
          f"median of {args.repeats} runs after {args.warmup} warm-up; torch {r['torch']}")
    notes = footnotes(records)
    if notes:
        print("\n" + "\n".join(notes))
    if args.json:
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":  # the worker: a JSON list of jobs in, one JSON line of results out
    print(json.dumps(_measure_jobs(json.loads(sys.argv[1]))))
