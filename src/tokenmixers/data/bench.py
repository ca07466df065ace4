"""``tokenmixers bench-data``: decoded, augmented images per second of the training input
pipeline (the trainer's own dataset, sampler or stream, and train transform), for several
DataLoader worker counts, so a user can tell whether the loader or the model limits a run
(compare with the model's ``tokenmixers bench`` throughput, or with the ``data_wait``
fraction a training run logs)."""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader

from tokenmixers.text import format_table, split_list


@dataclass
class DataRate:
    workers: int
    images: int
    seconds: float
    startup: float  # until the first batch arrived (worker start-up, first shard opened)

    @property
    def rate(self) -> float:
        return self.images / max(self.seconds, 1e-9)

    @property
    def per_worker(self) -> float:
        return self.rate / max(self.workers, 1)


def _train_pipeline(data: str, *, img_size: int | None, no_aug: bool, columns: str | None,
                    val_split: float | None, data_dir: str, auto_augment: str | None = "recipe",
                    ) -> tuple[Any, bool, int]:
    """(the trainer's augmented training dataset, whether streamed, image size)."""
    from tokenmixers.data import (
        AugmentConfig,
        Transformed,
        is_streamed,
        load_data,
        parse_data,
        train_transform,
    )
    from tokenmixers.train.config import RECIPES

    spec = parse_data(data)
    recipe = RECIPES[spec.kind]
    size = img_size or spec.native_size
    bundle = load_data(spec, data_dir=data_dir, val_split=val_split, columns=columns)
    aug = AugmentConfig(scale=recipe["scale"], ratio=recipe["ratio"], hflip=recipe["hflip"],
                        color_jitter=recipe["color_jitter"],
                        auto_augment=recipe["auto_augment"] if auto_augment == "recipe"
                        else auto_augment,
                        reprob=recipe["reprob"], no_aug=no_aug)
    transform = train_transform(size, bundle.in_chans, bundle.mean, bundle.std, aug)
    if is_streamed(bundle.train):
        return (bundle.train, transform), True, size
    return Transformed(bundle.train, transform), False, size


def measure(pipeline: Any, streamed: bool, *, workers: int, batch_size: int,
            seconds: float) -> DataRate:
    """Run the training loader with ``workers`` workers for about ``seconds`` (after its
    first batch), epoch after epoch; count the images it delivers."""
    from tokenmixers.train.sampler import ResumableSampler

    epoch = 0

    def loader() -> DataLoader:
        if streamed:
            from tokenmixers.data.hf import HfStreamSource, HfStreamTrain
            from tokenmixers.data.wds import WdsPlan, WdsTrain

            source, transform = pipeline
            if isinstance(source, HfStreamSource):
                dataset: Any = HfStreamTrain(source, transform, seed=0, batch_size=batch_size,
                                             batches_per_step=1, rank=0, world_size=1)
            else:
                dataset = WdsTrain(WdsPlan(source.shards, seed=0, batch_size=batch_size),
                                   transform)
            dataset.set_epoch(epoch, workers=workers)
            return DataLoader(dataset, batch_size=batch_size, num_workers=workers)
        sampler = ResumableSampler(pipeline, num_replicas=1, rank=0, seed=0)
        sampler.set_epoch(epoch)
        return DataLoader(pipeline, batch_size=batch_size, sampler=sampler,
                          num_workers=workers, drop_last=True)

    t0 = time.perf_counter()
    it = iter(loader())
    first = next(it, None)
    if first is None:
        raise ValueError(f"--batch-size {batch_size}: the data holds less than one batch; "
                         "lower it")
    startup = time.perf_counter() - t0
    images, t1 = 0, time.perf_counter()
    while time.perf_counter() - t1 < seconds:
        batch = next(it, None)
        if batch is None:
            epoch += 1
            it = iter(loader())  # the next epoch's start-up counts: a real run pays it too
            continue
        images += batch[0].shape[0]
    return DataRate(workers, images, time.perf_counter() - t1, startup)


def cmd_bench_data(args: argparse.Namespace) -> int:
    if args.seconds <= 0:
        raise ValueError(f"--seconds {args.seconds}: expected a positive duration, e.g. 10")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size {args.batch_size}: expected a positive number")
    if any(w < 0 for w in args.workers):
        raise ValueError(f"--workers {args.workers}: expected counts >= 0, e.g. 0,2,4")
    if args.threads:
        torch.set_num_threads(args.threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipeline, streamed, size = _train_pipeline(
            args.data, img_size=args.img_size, no_aug=args.no_aug, columns=args.data_columns,
            val_split=args.val_split, data_dir=args.data_dir, auto_augment=args.auto_augment)
    rows = []
    for workers in args.workers:
        r = measure(pipeline, streamed, workers=workers, batch_size=args.batch_size,
                    seconds=args.seconds)
        rows.append(r)
        print(f"  {workers} worker(s): {r.rate:.0f} images/s", flush=True, file=sys.stderr)
    aug = ("no augmentation" if args.no_aug else "the recipe's augmentation"
           if args.auto_augment == "recipe" else
           f"the recipe's augmentation with --auto-augment {args.auto_augment}")
    print(f"{args.data}: decoded, {aug}, {size}px, batch {args.batch_size}, "
          f"{args.seconds:g}s each")
    print(format_table(
        [[str(r.workers), f"{r.rate:.0f}", f"{r.per_worker:.0f}", f"{r.startup:.2f}",
          str(r.images)] for r in rows],
        ["workers", "images/s", "per worker", "first batch s", "images"], "rrrrr"))
    return 0


def _workers(text: str) -> list[int]:
    try:
        return split_list(text, int, what="worker count")
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected worker counts like 0,2,4, got {text!r}") from None


def _policy(text: str) -> str | None:
    return None if text.lower() in ("none", "null", "off", "") else text


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "bench-data", help="images/s of the training input pipeline (decode + augment) for "
        "N DataLoader workers")
    p.add_argument("--data", required=True, help="as train --data (imagefolder:, hf:, wds:, "
                   "cifar10, ...)")
    p.add_argument("--data-columns", metavar="IMAGE,LABEL", help="hf: image and label columns")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--val-split", type=float)
    p.add_argument("--workers", type=_workers, default=[0], metavar="N[,N...]",
                   help="worker counts to measure, e.g. 0,2,4 (default 0)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--img-size", type=int, help="default: the data's own (as train)")
    p.add_argument("--seconds", type=float, default=10.0, help="per worker count (default 10)")
    p.add_argument("--no-aug", action="store_true", help="decode and resize only")
    p.add_argument("--auto-augment", type=_policy, default="recipe", metavar="POLICY",
                   help="as train --auto-augment (default: the recipe's; none: off)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    p.set_defaults(func=cmd_bench_data)
