"""Ours against timm, same math, same process: img/s of inference and of a training step
for ViT-S/16, Mixer-S/16 and Sequencer2D-S at 224 (batch 8, 2 threads by default).

The two implementations are timed interleaved (A B, B A, A B, ...) so drift on a shared,
noisy machine hits both alike and neither always runs second; the ratio ours/timm is what
to read (>= 1.0: no slower).

    python benchmarks/vs_timm.py [--models vit_small_patch16_224,...] [--rounds 7]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import timm
import torch

import tokenmixers

DEFAULT_MODELS = "vit_small_patch16_224,mixer_s16_224,sequencer2d_s"


def make_step(model: torch.nn.Module, x: torch.Tensor, mode: str) -> Callable[[], None]:
    if mode == "infer":
        model.eval()

        def infer() -> None:
            with torch.inference_mode():
                model(x)

        return infer
    model.train()
    target = torch.randint(0, 1000, (x.shape[0],))
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)

    def train() -> None:
        loss = torch.nn.functional.cross_entropy(model(x), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return train


def interleaved(a: Callable[[], None], b: Callable[[], None], rounds: int) -> tuple[list, list]:
    ta, tb = [], []
    for fn in (a, b, a, b):  # warm-up
        fn()
    for r in range(rounds):
        # A B, then B A: neither side always runs right after the other (ABBA order)
        pairs = ((a, ta), (b, tb)) if r % 2 == 0 else ((b, tb), (a, ta))
        for fn, acc in pairs:
            t0 = time.perf_counter()
            fn()
            acc.append(time.perf_counter() - t0)
    return ta, tb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=DEFAULT_MODELS)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, timm {timm.__version__}, {platform.processor() or 'cpu'}, "
          f"{args.threads} threads, batch {args.batch_size}, {args.img_size}px, "
          f"median of {args.rounds} interleaved rounds")
    print(f"{'model':24s} {'mode':5s} {'timm img/s':>10s} {'ours img/s':>10s} {'ratio':>6s}")
    for name in args.models.split(","):
        torch.manual_seed(0)
        theirs = timm.create_model(name)
        ours = tokenmixers.create_model(name)
        tokenmixers.load_weights(ours, theirs.state_dict(), source="timm")
        x = torch.randn(args.batch_size, 3, args.img_size, args.img_size)
        for mode in ("infer", "train"):
            t_theirs, t_ours = interleaved(
                make_step(theirs, x, mode), make_step(ours, x, mode), args.rounds
            )
            r_theirs = args.batch_size / statistics.median(t_theirs)
            r_ours = args.batch_size / statistics.median(t_ours)
            print(f"{name:24s} {mode:5s} {r_theirs:10.2f} {r_ours:10.2f} {r_ours / r_theirs:6.3f}",
                  flush=True)


if __name__ == "__main__":
    main()
