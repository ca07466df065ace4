"""bf16 on the CPU: each model's time in float32 against the same model under bfloat16
autocast (``torch.autocast("cpu", dtype=torch.bfloat16)``, what ``--amp bf16`` does), at
224 px, in one fresh process per (model, batch), ABBA-interleaved.

The ratio is fp32 time / bf16 time (>= 1: bf16 faster), median [min-max] over the rounds,
with the largest logit difference relative to the largest logit on one batch (weights
perturbed, so zero-initialised heads cannot hide a difference). The fp32 matmul and the
bf16 matmul (2048x2048 products, the same rounds) give the ceiling this CPU allows.

    python benchmarks/bf16_cpu.py [--models vit_small_patch16_224,...] [--batches 8]
        [--rounds 7] [--threads 2] [--modes infer,train] [--json out.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
from pathlib import Path
from typing import Any

from vil_scaling import cpu_name  # the sibling scripts (this folder is on sys.path)
from vs_reference import (
    add_timing_options,
    check_timing_options,
    fmt_ratio,
    interleaved,
    make_step,
    parse_list,
    run_worker,
    summarize,
)

MODELS = ("vit_small_patch16_224", "mixer_s16_224", "shiftvit_tiny", "vil_tiny",
          "sequencer2d_s")

def worker(name: str, batch: int, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    import tokenmixers
    from shiftvit_reference import perturb_

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = perturb_(tokenmixers.create_model(name), scale=0.02)
    x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(1))

    def bf16() -> Any:
        return torch.autocast("cpu", dtype=torch.bfloat16)

    model.eval()
    with torch.inference_mode():
        want = model(x)
        with bf16():
            got = model(x).float()
    result: dict[str, Any] = {
        "model": name, "batch": batch,
        "rel_diff": ((got - want).abs().max() / want.abs().max()).item(),
    }
    for mode in args.modes:
        t32, t16 = interleaved(make_step(model, x, mode), make_step(model, x, mode, bf16),
                               args.rounds)
        result[mode] = summarize(t32, t16, batch)
    a = torch.randn(2048, 2048)
    b = torch.randn(2048, 2048)
    a16, b16 = a.bfloat16(), b.bfloat16()
    t32, t16 = interleaved(lambda: a @ b, lambda: a16 @ b16, args.rounds)
    result["matmul"] = summarize(t32, t16, 1)
    result["matmul_gflops"] = [2 * 2048**3 / 1e9 / sorted(t)[len(t) // 2] for t in (t32, t16)]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_timing_options(parser, models=",".join(MODELS), batches="8")
    args = parser.parse_args()
    check_timing_options(args)
    if args.worker:
        name, batch = args.worker.split(",")
        print(json.dumps(worker(name, int(batch), args)))
        return
    import torch

    models = parse_list(args.models, "--models")
    header = (f"torch {torch.__version__}, {cpu_name()}, {os.cpu_count()} cores, "
              f"{args.threads} threads, 224px, "
              f"{datetime.datetime.now().isoformat(timespec='minutes')}; ABBA, {args.rounds} "
              "rounds; ratio = fp32 time / bf16-autocast time (>= 1: bf16 faster), median "
              f"[min-max]; load average {os.getloadavg()[0]:.1f} at start")
    print(header, flush=True)
    cols = ["model", "batch", *[f"{m} fp32/bf16" for m in args.modes],
            "matmul fp32/bf16 (GFLOP/s)", "max logit diff / max logit"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    results = []
    for name in models:
        for batch in args.batches:
            r = run_worker(__file__, name, batch, args)
            results.append(r)
            g32, g16 = r["matmul_gflops"]
            lines.append("| " + " | ".join([
                name, str(batch), *[fmt_ratio(r[m]) for m in args.modes],
                f"{fmt_ratio(r['matmul'])} ({g32:.0f} / {g16:.0f})",
                f"{r['rel_diff']:.1e}"]) + " |")
            print(lines[-1], flush=True)
    print()
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps({"header": header, "results": results}, indent=1))


if __name__ == "__main__":
    main()
