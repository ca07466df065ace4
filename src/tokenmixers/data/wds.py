"""``--data wds:PATH``: WebDataset tar shards (``jpg|png`` + ``cls`` entries per sample) read
through the ``webdataset`` package, streamed: no random access, no per-file opens.

``PATH`` is a folder holding ``index.json`` and the shards ``tokenmixers data convert``
writes (``train-000000.tar ...``, ``val-000000.tar ...``), or a brace pattern of training
shards in such a folder (``/data/in1k/train-{000000..000127}.tar``: train on those only).
``index.json`` gives each shard's sample count, the class names and the image mode, so the
epoch length is known without reading a shard.

How an epoch is read (:class:`WdsPlan`), deterministic from (seed, epoch):

1. the training shards are shuffled (seed, epoch) and their samples concatenated: the
   epoch's sequence of ``N`` samples;
2. process ``r`` of ``W`` takes the contiguous part ``[r*n, (r+1)*n)``, ``n = N // W``,
   cut to whole batches (``M = n // (batch x accumulation)`` updates): every process runs
   the same number of steps, as DDP needs; the ``N - W*M*batch`` samples at the parts' ends
   are left out this epoch (other ones next epoch, as the shard order changes) and the
   count is logged;
3. a process's batches are split among its DataLoader workers in contiguous blocks (worker
   ``w`` gets batches ``w, w+K, ...`` of the DataLoader's round-robin, read from one
   contiguous run of shards: a worker reads only its own samples, plus at most the start of
   its first shard, skipped without decoding);
4. each worker shuffles its samples in an in-memory buffer of ``buffer`` samples (blocks
   read in order, each emitted in a seeded random order).

Every training sample is read exactly once per epoch across processes and workers when
``N`` is a multiple of ``W x batch x accumulation``. A mid-epoch resume is exact: each
worker's stream is a fixed list of samples, so it skips the blocks it has consumed without
reading them and re-reads only the current buffer. With another worker count than the
checkpoint's, the samples not yet consumed are split among the new workers (still each
once, in another order); with another process count the split itself changes, so the rest
of that epoch skips each process's first batches of the new split (logged; exact again from
the next epoch)."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

#: The file ``data convert`` writes next to the shards.
INDEX_NAME = "index.json"
INDEX_FORMAT = "tokenmixers-wds/1"
#: Image entries recognised in a sample, in order of preference.
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "ppm", "bmp")
#: Samples shuffled together in a worker's in-memory buffer.
DEFAULT_BUFFER = 1000
#: Set to a folder to make every reader append the keys of the samples it decodes to
#: ``FOLDER/{split}-{pid}.txt`` (a debugging and test hook: which process read what).
TRACE_ENV = "TOKENMIXERS_DATA_TRACE"


def need_webdataset() -> Any:
    try:
        import webdataset
    except ImportError as err:
        raise ImportError(
            "--data wds:... needs the webdataset package: pip install 'tokenmixers[data]' "
            f"(or pip install webdataset) ({err})") from None
    return webdataset


def trace(split: str, keys: list[str]) -> None:
    """Append ``keys`` to this process's trace file when :data:`TRACE_ENV` is set."""
    folder = os.environ.get(TRACE_ENV)
    if folder and keys:
        with open(Path(folder) / f"{split}-{os.getpid()}.txt", "a") as f:
            f.write("".join(k + "\n" for k in keys))


# ---- the shard set -----------------------------------------------------------------------
@dataclass(frozen=True)
class ShardSet:
    """One split's shards (paths, in canonical order) and their sample counts."""

    split: str
    paths: tuple[str, ...]
    counts: tuple[int, ...]
    classes: tuple[str, ...]
    mode: str

    def __len__(self) -> int:
        return int(sum(self.counts))

    @property
    def starts(self) -> np.ndarray:
        """Canonical position of each shard's first sample."""
        return np.concatenate([[0], np.cumsum(self.counts)[:-1]]).astype(np.int64)


def _expand(pattern: str) -> list[str]:
    from braceexpand import braceexpand  # a dependency of webdataset

    return [str(Path(p).expanduser()) for p in braceexpand(pattern)]


def read_index(folder: Path) -> dict[str, Any]:
    path = folder / INDEX_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"wds: no {INDEX_NAME} in {folder}: it gives each shard's sample count and the "
            "class names; write the shards with tokenmixers data convert imagefolder:PATH "
            f"--to wds:{folder}, or add an {INDEX_NAME} in its format (see "
            "tokenmixers.data.convert)")
    index = json.loads(path.read_text())
    if index.get("format") != INDEX_FORMAT:
        raise ValueError(f"{path}: format {index.get('format')!r} is not {INDEX_FORMAT!r}")
    return index


def load_shards(value: str) -> tuple[ShardSet, ShardSet, dict[str, Any]]:
    """The train and validation :class:`ShardSet` of ``wds:PATH`` (a folder or a brace
    pattern of training shards) and its index."""
    need_webdataset()
    if not value:
        raise ValueError("--data wds:PATH needs a folder of shards (with index.json) or a "
                         "brace pattern, e.g. wds:/data/shards/train-{000000..000127}.tar")
    given = Path(value).expanduser()
    if given.is_dir():
        folder, train_paths = given, None
    else:
        train_paths = _expand(value)
        folder = Path(train_paths[0]).parent
        missing = [p for p in train_paths if not Path(p).is_file()]
        if missing:
            raise FileNotFoundError(
                f"--data wds:{value}: {len(missing)} of {len(train_paths)} shard(s) the pattern "
                f"names do not exist (e.g. {missing[0]}); pass the folder the shards are in, "
                "or a brace pattern like train-{000000..000003}.tar")
    if not folder.is_dir():
        raise FileNotFoundError(f"--data wds:{value}: {folder} is not a folder of shards")
    index = read_index(folder)
    classes = tuple(index["classes"])
    mode = index.get("mode", "RGB")

    def split(name: str, paths: list[str] | None) -> ShardSet:
        listed = {s["name"]: int(s["count"]) for s in index["splits"].get(name, {}).get(
            "shards", [])}
        if paths is None:
            paths = [str(folder / n) for n in sorted(listed)]
        unknown = [p for p in paths if Path(p).name not in listed]
        if unknown:
            raise ValueError(f"wds: {unknown[0]} is not in {folder / INDEX_NAME} ({name} split)")
        if not paths:
            raise ValueError(f"wds: {folder} has no {name} shards in its {INDEX_NAME}")
        for p in paths:
            if not Path(p).is_file():
                raise FileNotFoundError(f"wds: shard {p} (listed in {INDEX_NAME}) is missing")
        return ShardSet(name, tuple(paths), tuple(listed[Path(p).name] for p in paths),
                        classes, mode)

    return split("train", train_paths), split("val", None), index


# ---- one worker's reading ------------------------------------------------------------------
def decode_sample(sample: dict[str, Any], mode: str) -> tuple[Image.Image, int]:
    from tokenmixers.data.folder import convert_image

    ext = next((e for e in IMAGE_EXTS if e in sample), None)
    if ext is None or "cls" not in sample:
        have = sorted(k for k in sample if not k.startswith("__"))
        raise ValueError(f"wds: sample {sample.get('__key__')} of {sample.get('__url__')} has "
                         f"entries {have}; expected an image ({'|'.join(IMAGE_EXTS)}) and cls")
    with Image.open(io.BytesIO(sample[ext])) as img:
        img.load()
        out = convert_image(img, mode)
    return out, int(sample["cls"])


def read_positions(shards: ShardSet, positions: np.ndarray) -> Iterator[dict[str, Any]]:
    """The raw samples at canonical ``positions`` (in shard runs, ascending in each run),
    in that order. Each shard is opened once per run and read up to its last wanted sample;
    the samples before are passed over without decoding."""
    wds = need_webdataset()
    if len(positions) == 0:
        return
    starts = shards.starts
    shard_of = np.searchsorted(starts, positions, side="right") - 1
    i = 0
    while i < len(positions):
        s = int(shard_of[i])
        j = i
        while j < len(positions) and shard_of[j] == s:
            j += 1
        wanted = positions[i:j] - starts[s]
        k = 0
        url = shards.paths[s]
        for offset, sample in enumerate(wds.tariterators.tarfile_samples([{"url": url}])):
            if offset == wanted[k]:
                yield sample
                k += 1
                if k == len(wanted):
                    break
        if k < len(wanted):
            raise ValueError(f"wds: {url} holds fewer samples than its index entry says "
                             f"({shards.counts[s]}); rewrite the shards or the index")
        i = j


def block_shuffle(n: int, buffer: int, rng: np.random.Generator) -> list[np.ndarray]:
    """The output order of a stream of ``n`` items through an in-memory buffer: blocks of
    ``buffer`` consecutive items, each emitted in a random order."""
    return [start + rng.permutation(min(buffer, n - start)) for start in range(0, n, buffer)]


# ---- the epoch plan ------------------------------------------------------------------------
@dataclass
class WdsPlan:
    """Which samples every (process, worker) reads in an epoch, in which order (see the
    module docstring). Positions are canonical: shards in name order, samples in file
    order; ``subset`` (sorted canonical positions) restricts the set (``--limit-train``)."""

    shards: ShardSet
    seed: int
    batch_size: int
    batches_per_step: int = 1  # gradient accumulation steps
    world_size: int = 1
    buffer: int = DEFAULT_BUFFER
    subset: np.ndarray | None = None
    shuffle: bool = True

    @property
    def total(self) -> int:
        return len(self.shards) if self.subset is None else len(self.subset)

    @property
    def steps(self) -> int:
        """Optimizer updates per process and epoch."""
        return self.total // self.world_size // (self.batch_size * self.batches_per_step)

    @property
    def batches(self) -> int:
        return self.steps * self.batches_per_step

    @property
    def per_rank(self) -> int:
        return self.batches * self.batch_size

    @property
    def left_out(self) -> int:
        return self.total - self.per_rank * self.world_size

    def sequence(self, epoch: int) -> np.ndarray:
        """The epoch's canonical positions: shards in a (seed, epoch) order, concatenated."""
        starts, counts = self.shards.starts, np.asarray(self.shards.counts)
        order = (np.random.default_rng([self.seed, epoch, 7]).permutation(len(counts))
                 if self.shuffle else np.arange(len(counts)))
        seq = np.concatenate([np.arange(starts[s], starts[s] + counts[s]) for s in order])
        if self.subset is not None:
            seq = seq[np.isin(seq, self.subset)]
        return seq.astype(np.int64)

    def rank_batches(self, epoch: int, rank: int) -> np.ndarray:
        """``(batches, batch_size)`` canonical positions of this process's part, in reading
        order (before the buffer shuffle)."""
        seq = self.sequence(epoch)
        n = self.total // self.world_size
        part = seq[rank * n: rank * n + self.per_rank]
        return part.reshape(self.batches, self.batch_size)

    @staticmethod
    def worker_batch_counts(batches: int, workers: int) -> list[int]:
        """Batches per worker: the DataLoader asks workers in turn, so worker ``w`` delivers
        batches ``w, w+K, ...``; the first ``batches % K`` workers get one more."""
        k = max(workers, 1)
        return [batches // k + (w < batches % k) for w in range(k)]

    def worker_stream(self, epoch: int, rank: int, worker: int, workers: int, *,
                      consumed: int = 0, saved_workers: int | None = None) -> np.ndarray:
        """Canonical positions worker ``worker`` of ``workers`` (0: the main process)
        delivers this epoch, in delivery order, once this process has consumed ``consumed``
        batches (a resumed epoch) under ``saved_workers`` workers (default: the same)."""
        saved = workers if saved_workers is None else saved_workers
        if saved == workers or consumed == 0:
            # A resumed DataLoader asks worker 0 first; the uninterrupted one would ask worker
            # consumed % K next, so worker w plays that one's part: the same order follows.
            role = (worker + consumed) % max(workers, 1)
            full = self._stream(epoch, rank, role, workers, self._blocks(epoch, rank, workers))
            done = self._consumed_by(role, workers, consumed)
            return full[done * self.batch_size:]
        # Another worker count than the checkpoint's: what the old workers had not delivered,
        # split among the new ones in contiguous blocks.
        rest = [self._stream(epoch, rank, w, saved, self._blocks(epoch, rank, saved))
                [self._consumed_by(w, saved, consumed) * self.batch_size:]
                for w in range(max(saved, 1))]
        remaining = np.sort(np.concatenate(rest)) if rest else np.zeros(0, np.int64)
        order = {int(p): i for i, p in enumerate(self.rank_batches(epoch, rank).ravel())}
        remaining = np.asarray(sorted(remaining.tolist(), key=order.__getitem__), np.int64)
        counts = self.worker_batch_counts(len(remaining) // self.batch_size, workers)
        start = sum(counts[:worker]) * self.batch_size
        mine = remaining[start: start + counts[worker] * self.batch_size]
        rng = np.random.default_rng([self.seed, epoch, rank, worker, workers, 11])
        return (mine[np.concatenate(block_shuffle(len(mine), self.buffer, rng))]
                if self.shuffle and len(mine) else mine)

    def _blocks(self, epoch: int, rank: int, workers: int) -> list[np.ndarray]:
        """Each worker's contiguous run of this process's batches (reading order)."""
        batches = self.rank_batches(epoch, rank)
        counts = self.worker_batch_counts(len(batches), workers)
        edges = np.concatenate([[0], np.cumsum(counts)])
        return [batches[edges[w]:edges[w + 1]].ravel() for w in range(len(counts))]

    def _stream(self, epoch: int, rank: int, worker: int, workers: int,
                blocks: list[np.ndarray]) -> np.ndarray:
        mine = blocks[worker]
        if not self.shuffle or len(mine) == 0:
            return mine
        rng = np.random.default_rng([self.seed, epoch, rank, worker, workers])
        return mine[np.concatenate(block_shuffle(len(mine), self.buffer, rng))]

    @staticmethod
    def _consumed_by(worker: int, workers: int, consumed: int) -> int:
        """Batches worker ``worker`` delivered of the process's first ``consumed``."""
        k = max(workers, 1)
        return len(range(worker, consumed, k))


def read_stream(shards: ShardSet, stream: np.ndarray, buffer: int) -> Iterator[dict[str, Any]]:
    """The raw samples of ``stream`` (a worker's delivery order), ``buffer`` at a time: each
    block is read into memory shard by shard, in file order, then emitted as listed."""
    for start in range(0, len(stream), buffer):
        block = stream[start:start + buffer]
        order = _reading_order(shards, block)
        got = dict(zip(order.tolist(), read_positions(shards, order), strict=True))
        for pos in block.tolist():
            yield got[pos]


def _reading_order(shards: ShardSet, block: np.ndarray) -> np.ndarray:
    """``block``'s positions grouped by shard (shards in first-seen order), ascending in
    each: the order :func:`read_positions` reads them."""
    shard_of = np.searchsorted(shards.starts, block, side="right") - 1
    first_seen: dict[int, int] = {}
    for s in shard_of.tolist():
        first_seen.setdefault(s, len(first_seen))
    key = np.asarray([first_seen[s] for s in shard_of.tolist()]) * (len(shards) + 1) + block
    return block[np.argsort(key, kind="stable")]


# ---- the datasets the trainer iterates -----------------------------------------------------
class WdsTrain(IterableDataset):
    """This process's training samples of an epoch (``set_epoch``) as ``(tensor, label)``,
    split among DataLoader workers by :class:`WdsPlan`."""

    def __init__(self, plan: WdsPlan, transform: Any, *, rank: int = 0) -> None:
        self.plan = plan
        self.transform = transform
        self.rank = rank
        self.epoch = 0
        self.consumed = 0
        self.workers = 0
        self.saved_workers: int | None = None

    def set_epoch(self, epoch: int, *, workers: int, consumed: int = 0,
                  saved_workers: int | None = None) -> None:
        self.epoch, self.workers, self.consumed = epoch, workers, consumed
        self.saved_workers = saved_workers

    def __len__(self) -> int:  # samples this process delivers in a whole epoch
        return self.plan.per_rank

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if workers != max(self.workers, 1):
            raise RuntimeError(f"wds: set_epoch said {self.workers} workers, the DataLoader "
                               f"runs {workers}")
        saved = None if self.saved_workers is None else max(self.saved_workers, 1)
        stream = self.plan.worker_stream(self.epoch, self.rank, worker, workers,
                                         consumed=self.consumed, saved_workers=saved)
        shards = self.plan.shards
        for sample in read_stream(shards, stream, self.plan.buffer):
            img, label = decode_sample(sample, shards.mode)
            trace(shards.split, [sample["__key__"]])
            yield self.transform(img), label


class WdsEval(IterableDataset):
    """Validation samples (canonical order, or ``positions``) for process ``rank`` of
    ``world_size`` (every world_size-th one), split among DataLoader workers the same way."""

    def __init__(self, shards: ShardSet, transform: Any, *, rank: int = 0, world_size: int = 1,
                 positions: np.ndarray | None = None) -> None:
        self.shards = shards
        self.transform = transform
        all_pos = np.arange(len(shards)) if positions is None else np.asarray(positions)
        self.positions = all_pos[rank::world_size].astype(np.int64)

    def __len__(self) -> int:
        return len(self.positions)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int]]:
        info = get_worker_info()
        mine = self.positions
        if info is not None:  # contiguous runs, so a worker reads its own part only
            edges = np.linspace(0, len(mine), info.num_workers + 1).astype(int)
            mine = mine[edges[info.id]:edges[info.id + 1]]
        for sample in read_positions(self.shards, mine):
            img, label = decode_sample(sample, self.shards.mode)
            trace(self.shards.split, [sample["__key__"]])
            yield self.transform(img), label


class WdsSource:
    """A split of a shard set before the trainer makes it iterable: what ``load_data``
    returns for ``wds:`` (``len``, ``targets`` unknown; :attr:`shards`)."""

    def __init__(self, shards: ShardSet) -> None:
        self.shards = shards
        self.classes = list(shards.classes)

    def __len__(self) -> int:
        return len(self.shards)

    def __getitem__(self, index: int) -> Any:
        raise TypeError("a wds: dataset is streamed (no random access); iterate it through "
                        "tokenmixers.data.wds.WdsTrain or WdsEval")


def image_size_of(index: dict[str, Any]) -> int | None:
    size = index.get("image_size")
    return int(max(size)) if size else None

