"""Every family against its reference on one CUDA GPU, bf16 autocast: img/s and peak memory
of inference and of a training step at 224 (batch 64 and 1), then ViL-T's mLSTM backends
(chunkwise, ours, against parallel, the authors' quadratic form) at 224, 448 and 672.

The pairs are those of ``benchmarks/vs_reference.py`` (timm for ViT-S/16, Mixer-S/16 and
Sequencer2D-S; the authors' NCHW layout for ShiftViT; ``backend="parallel"`` for ViL and
ViL2), with the same weights on both sides.

Method. Each (model, batch) runs in a fresh subprocess. Memory first: each side alone on
the GPU (the other moved to the CPU), one warm-up step, then
``torch.cuda.reset_peak_memory_stats()`` and one step; the peak is
``torch.cuda.max_memory_allocated()`` (weights, gradients and activations; the input batch
is resident for both). Then both sides on the GPU, timed interleaved in ABBA order after
a warm-up, ``torch.cuda.synchronize()`` before and after each timed call; the rounds stop
after ``--rounds`` or once ``--budget`` seconds are spent (at least 2). Forward and loss
run under ``torch.autocast("cuda", dtype=torch.bfloat16)`` with float32 weights;
``cudnn.benchmark`` is on for both sides. Ratio = reference time / ours time per round,
median [min-max]. No new cell starts after ``--deadline`` seconds (default: the whole run
stays under about 8 minutes on an H200); skipped cells are listed.

    python benchmarks/gpu.py [--models ...] [--batches 64,1] [--modes infer,train]
        [--vil-sizes 224,448,672] [--rounds 15] [--budget 3] [--deadline 450] [--json out.json]
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from vs_reference import (
    MODES,
    REFERENCES,
    build_pair,
    fmt_ratio,
    interleaved,
    make_step,
    parse_list,
    summarize,
)

NO_CUDA = (
    "benchmarks/gpu.py needs a CUDA device; torch.cuda.is_available() is False here "
    "(torch {torch}, built for CUDA {cuda}). Run it on a machine with an NVIDIA GPU; "
    "the CPU comparison is benchmarks/vs_reference.py."
)


def require_cuda(device: str) -> None:
    """Exit with a clear message (status 1) unless ``device`` is usable."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        sys.exit(NO_CUDA.format(torch=torch.__version__, cuda=torch.version.cuda))


def _sync(dev: Any) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize()


def peak_memory_mb(model: Any, x: Any, mode: str, autocast: Any, dev: Any) -> float | None:
    """Peak allocated MiB of one step of ``model`` alone on the GPU (None on the CPU); the
    model goes back to the CPU afterwards."""
    import torch

    if dev.type != "cuda":
        return None
    model.to(dev)
    step = make_step(model, x, mode, autocast)
    step()  # warm-up: cuDNN autotuning, workspaces, gradients allocated
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 2**20
    del step
    model.cpu()
    gc.collect()
    torch.cuda.empty_cache()
    return peak


def time_pair(ref: Any, ours: Any, x: Any, modes: list[str], args: argparse.Namespace,
              dev: Any) -> dict[str, Any]:
    import torch

    def autocast() -> Any:
        return torch.autocast(dev.type, dtype=torch.bfloat16)

    out: dict[str, Any] = {}
    for mode in modes:
        mem = {side: peak_memory_mb(m, x, mode, autocast, dev)
               for side, m in (("ref", ref), ("ours", ours))}
        ref.to(dev)
        ours.to(dev)
        t_ref, t_ours = interleaved(
            make_step(ref, x, mode, autocast), make_step(ours, x, mode, autocast),
            args.rounds, budget=args.budget, sync=lambda: _sync(dev),
        )
        cell = summarize(t_ref, t_ours, x.shape[0])
        cell["ref_peak_mb"], cell["ours_peak_mb"] = mem["ref"], mem["ours"]
        out[mode] = cell
        ref.cpu()
        ours.cpu()
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return out


def worker(job: str, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    import tokenmixers

    require_cuda(args.device)
    dev = torch.device(args.device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    else:
        torch.set_num_threads(2)
    kind, what, batch_ = job.split(",")
    batch = int(batch_)
    if kind == "pair":
        ref, ours = build_pair(what)
        x = torch.randn(batch, 3, 224, 224, device=dev)
        return {"model": what, "reference": REFERENCES[what], "batch": batch,
                **time_pair(ref, ours, x, args.modes, args, dev)}
    size = int(what)
    torch.manual_seed(0)
    ours = tokenmixers.create_model("vil_tiny", img_size=size, backend="chunkwise")
    ref = tokenmixers.create_model("vil_tiny", img_size=size, backend="parallel")
    ref.load_state_dict(ours.state_dict())
    grid = ours.patch_embed.grid_size((size, size))
    x = torch.randn(batch, 3, size, size, device=dev)
    return {"size": size, "tokens": grid[0] * grid[1], "batch": batch,
            **time_pair(ref, ours, x, ["infer"], args, dev)}


def run_job(job: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", job, "--device", args.device,
           "--rounds", str(args.rounds), "--budget", str(args.budget),
           "--modes", ",".join(args.modes)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.cell_timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {args.cell_timeout} s"}
    if proc.returncode:
        lines = proc.stderr.strip().splitlines() or ["(no message)"]
        return {"error": lines[-1][:200], "stderr": proc.stderr[-4000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _mb(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


def pair_table(results: list[dict[str, Any]], modes: list[str]) -> str:
    lines = ["| model | reference | batch | mode | ref img/s | ours img/s | ref/ours time "
             "| ref peak MiB | ours peak MiB |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        for mode in modes:
            c = r.get(mode)
            if c is None:
                lines.append(f"| {r['model']} | {r['reference']} | {r['batch']} | {mode} | "
                             f"{r.get('error', 'skipped')} | | | | |")
                continue
            lines.append(
                f"| {r['model']} | {r['reference']} | {r['batch']} | {mode} "
                f"| {c['ref_img_s']:.1f} | {c['ours_img_s']:.1f} | {fmt_ratio(c)} "
                f"| {_mb(c['ref_peak_mb'])} | {_mb(c['ours_peak_mb'])} |"
            )
    return "\n".join(lines)


def vil_table(results: list[dict[str, Any]]) -> str:
    lines = ["| size | tokens | batch | parallel img/s | chunkwise img/s | speed-up "
             "| parallel peak MiB | chunkwise peak MiB |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        c = r.get("infer")
        if c is None:
            lines.append(f"| {r['size']} | | {r['batch']} | {r.get('error', 'skipped')} "
                         "| | | | |")
            continue
        lines.append(
            f"| {r['size']} | {r['tokens']} | {r['batch']} | {c['ref_img_s']:.1f} "
            f"| {c['ours_img_s']:.1f} | {fmt_ratio(c)} | {_mb(c['ref_peak_mb'])} "
            f"| {_mb(c['ours_peak_mb'])} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(REFERENCES))
    parser.add_argument("--batches", default="64,1")
    parser.add_argument("--modes", default="infer,train")
    parser.add_argument("--vil-sizes", default="224,448,672",
                        help="ViL-T chunkwise vs parallel at these sizes ('none': skip)")
    parser.add_argument("--rounds", type=int, default=15, help="timed rounds at most per cell")
    parser.add_argument("--budget", type=float, default=3.0,
                        help="start no new round after this many seconds per cell and mode")
    parser.add_argument("--deadline", type=float, default=450.0,
                        help="start no new cell after this many seconds in all")
    parser.add_argument("--cell-timeout", type=int, default=300,
                        help="kill a cell's subprocess after this many seconds")
    parser.add_argument("--json", help="also write the results (all timings) to this file")
    parser.add_argument("--device", default="cuda",
                        help="'cpu' is a dry run of the code path only (meaningless timings, "
                             "no memory numbers)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.device not in ("cuda", "cpu"):
        raise SystemExit(f"--device {args.device!r}: expected 'cuda' (or 'cpu' for a dry run)")
    args.modes = parse_list(args.modes, "--modes", MODES)
    if args.worker:
        print(json.dumps(worker(args.worker, args)))
        return
    require_cuda(args.device)
    models = parse_list(args.models, "--models", tuple(REFERENCES))
    try:
        batches = [int(b) for b in parse_list(args.batches, "--batches")]
        sizes = ([] if args.vil_sizes == "none"
                 else [int(s) for s in parse_list(args.vil_sizes, "--vil-sizes")])
    except ValueError:
        raise SystemExit("--batches and --vil-sizes take integers, e.g. --batches 64,1 "
                         "--vil-sizes 224,448,672") from None

    import timm
    import torch

    where = (f"{torch.cuda.get_device_name()}, CUDA {torch.version.cuda}"
             if args.device == "cuda" else "CPU DRY RUN (timings meaningless)")
    header = (f"torch {torch.__version__}, timm {timm.__version__}, {where}, "
              f"{datetime.datetime.now().isoformat(timespec='minutes')}; bf16 autocast, "
              f"ABBA, <= {args.rounds} rounds or {args.budget:g} s per cell; ratio = reference "
              "time / ours time (>= 1: ours no slower), median [min-max] of per-round ratios")
    print(header, flush=True)
    start = time.perf_counter()
    jobs = [("pair", m, b) for m in models for b in batches]
    jobs += [("vil", str(s), b) for s in sizes for b in batches]
    pairs: list[dict[str, Any]] = []
    vil: list[dict[str, Any]] = []
    for kind, what, batch in jobs:
        if time.perf_counter() - start > args.deadline:
            r: dict[str, Any] = {"error": f"skipped (--deadline {args.deadline:g} s reached)"}
        else:
            r = run_job(f"{kind},{what},{batch}", args)
        if kind == "pair":
            r = {"model": what, "reference": REFERENCES[what], "batch": batch, **r}
            pairs.append(r)
        else:
            r = {"size": int(what), "batch": batch, **r}
            vil.append(r)
        status = r.get("error") or ", ".join(
            f"{m} {fmt_ratio(r[m])}" for m in ("infer", "train") if m in r
        )
        print(f"  [{time.perf_counter() - start:5.0f} s] {kind} {what} batch {batch}: {status}",
              flush=True)
    print()
    if pairs:
        print(pair_table(pairs, args.modes))
        print()
    if vil:
        print("ViL-T, inference: chunkwise (ours) against parallel (the authors' form)")
        print(vil_table(vil))
    if args.json:
        Path(args.json).write_text(
            json.dumps({"header": header, "pairs": pairs, "vil": vil}, indent=1)
        )


if __name__ == "__main__":
    main()
