"""torch.compile on the CPU: each family's eager time against the same model compiled by
``torch.compile`` (inductor, what ``tokenmixers bench --compile`` does), at 224 px, in one
fresh process per (model, batch), ABBA-interleaved.

The ratio is eager time / compiled time (>= 1: compiled faster), median [min-max] over the
rounds. Also printed: the seconds the first compiled call took (tracing and code
generation), the graph breaks dynamo reported and the largest logit difference, compiled
against eager, relative to the largest logit (weights perturbed so that zero-initialised
heads cannot hide a difference). ``--freezing`` sets ``torch._inductor.config.freezing``
(weights folded in as constants, inference only).

    python benchmarks/compile_cpu.py [--models vit_small_patch16_224,...] [--batches 8]
        [--rounds 7] [--threads 2] [--modes infer] [--freezing] [--json out.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import time
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
          "vil2_tiny", "sequencer2d_s")


def worker(name: str, batch: int, args: argparse.Namespace) -> dict[str, Any]:
    import torch
    import torch._dynamo
    from torch._dynamo.utils import counters

    import tokenmixers
    from shiftvit_reference import perturb_

    torch.set_num_threads(args.threads)
    if args.freezing:
        import torch._inductor.config

        torch._inductor.config.freezing = True
    torch.manual_seed(0)
    model = perturb_(tokenmixers.create_model(name), scale=0.02)
    x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    result: dict[str, Any] = {"model": name, "batch": batch, "freezing": args.freezing}
    for mode in args.modes:
        torch._dynamo.reset()
        counters.clear()
        compiled = torch.compile(model)
        eager_step = make_step(model, x, mode)
        compiled_step = make_step(compiled, x, mode)
        start = time.perf_counter()
        compiled_step()  # tracing and code generation
        compile_s = time.perf_counter() - start
        if mode == "infer":
            with torch.inference_mode():
                want, got = model(x), compiled(x)
            result["rel_diff"] = ((got - want).abs().max() / want.abs().max()).item()
        t_eager, t_compiled = interleaved(eager_step, compiled_step, args.rounds)
        result[mode] = summarize(t_eager, t_compiled, batch)
        result[mode]["compile_s"] = compile_s
        result[mode]["graph_breaks"] = sum(counters["graph_break"].values())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_timing_options(parser, models=",".join(MODELS), batches="8")
    parser.set_defaults(modes="infer")
    parser.add_argument("--freezing", action="store_true",
                        help="torch._inductor.config.freezing = True (inference only)")
    args = parser.parse_args()
    check_timing_options(args)
    if args.freezing and "train" in args.modes:
        raise SystemExit("--freezing folds the weights into constants: use it with "
                         "--modes infer only")
    if args.worker:
        name, batch = args.worker.split(",")
        print(json.dumps(worker(name, int(batch), args)))
        return
    import torch

    models = parse_list(args.models, "--models")
    header = (f"torch {torch.__version__}, {cpu_name()}, {os.cpu_count()} cores, "
              f"{args.threads} threads, 224px, "
              f"{datetime.datetime.now().isoformat(timespec='minutes')}; ABBA, {args.rounds} "
              "rounds; ratio = eager time / compiled time (>= 1: compiled faster), median "
              f"[min-max]; freezing {'on' if args.freezing else 'off'}; load average "
              f"{os.getloadavg()[0]:.1f} at start")
    print(header, flush=True)
    cols = ["model", "batch"]
    for m in args.modes:
        cols += [f"{m} eager/compiled", f"{m} compile s", f"{m} graph breaks"]
    cols.append("max logit diff / max logit")
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    results = []
    extra = ["--freezing"] if args.freezing else []
    for name in models:
        for batch in args.batches:
            r = run_worker(__file__, name, batch, args, *extra)
            results.append(r)
            cells = [name, str(batch)]
            for m in args.modes:
                cells += [fmt_ratio(r[m]), f"{r[m]['compile_s']:.0f}", str(r[m]["graph_breaks"])]
            cells.append(f"{r['rel_diff']:.1e}" if "rel_diff" in r else "")
            lines.append("| " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
    print()
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps({"header": header, "results": results}, indent=1))


if __name__ == "__main__":
    main()
