"""``--data hf:NAME_OR_PATH[:SPLIT]``: a Hugging Face ``datasets`` image classification set.

``NAME_OR_PATH`` is a folder written by ``save_to_disk`` (a ``DatasetDict`` or one
``Dataset``), read with ``load_from_disk``, or a Hub name, read with
``load_dataset(NAME)`` (downloaded once into the Hugging Face cache). Either way the result
is Arrow tables on local disk, memory-mapped: random access, so training goes through the
trainer's map-style path (``DistributedSampler`` order per epoch, exact mid-epoch resume).
``SPLIT`` is the training split (default ``train``); validation is the first of
``validation``, ``valid``, ``val``, ``test`` there is, else ``--val-split F`` holds out a
stratified fraction of the training split.

The image and label columns are the ``Image`` and ``ClassLabel`` features, else the columns
named ``image``/``img`` and ``label``/``labels``, or ``--data-columns IMAGE,LABEL``. Class
names come from the ``ClassLabel`` feature (integer labels without one are named by their
number).

``--data hf-stream:NAME_OR_PATH[:SPLIT]`` reads the same data as a stream (``load_dataset(NAME,
split=SPLIT, streaming=True)``, or a local folder through ``to_iterable_dataset``): see
:class:`HfStreamTrain` for how an epoch is split among processes and workers and resumed."""

from __future__ import annotations

import functools
import itertools
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Subset, get_worker_info
from torch.utils.data import IterableDataset as TorchIterableDataset

from tokenmixers.data.wds import trace

IMAGE_NAMES = ("image", "img")
LABEL_NAMES = ("label", "labels")
VAL_SPLITS = ("validation", "valid", "val", "test")


def need_datasets() -> Any:
    try:
        import datasets
    except ImportError as err:
        raise ImportError(
            "--data hf:... needs the datasets package: pip install 'tokenmixers[data]' (or pip "
            f"install datasets) ({err})") from None
    return datasets


def parse_hf(path: str) -> tuple[str, str | None]:
    """``NAME_OR_PATH[:SPLIT]`` -> (name or path, split or None). The part after the last
    colon is a split when it is a plain word (a path or a Hub name has a slash)."""
    head, sep, tail = path.rpartition(":")
    if sep and head and tail and "/" not in tail and "\\" not in tail:
        return head, tail
    return path, None


def detect_columns(features: Any, columns: str | None, where: str) -> tuple[str, str]:
    """(image column, label column) of a dataset with these ``features``."""
    datasets = need_datasets()
    names = list(features)
    if columns:
        parts = [c.strip() for c in columns.split(",")]
        if len(parts) != 2 or not all(parts):
            raise ValueError(f"--data-columns {columns}: expected IMAGE,LABEL, two column "
                             "names, e.g. --data-columns image,label")
        missing = [c for c in parts if c not in names]
        if missing:
            raise ValueError(f"--data-columns {columns}: {where} has no column "
                             f"{', '.join(map(repr, missing))}; its columns are "
                             f"{', '.join(names)}")
        return parts[0], parts[1]

    def find(kind: type, fallbacks: tuple[str, ...]) -> str | None:
        typed = [n for n in names if isinstance(features[n], kind)]
        if len(typed) == 1:
            return typed[0]
        return next((n for n in fallbacks if n in names), None)

    image = find(datasets.Image, IMAGE_NAMES)
    label = find(datasets.ClassLabel, LABEL_NAMES)
    if image is None or label is None:
        what = " and ".join(w for w, c in (("image", image), ("label", label)) if c is None)
        raise ValueError(
            f"{where}: no {what} column found among {', '.join(names)} (looked for an Image "
            f"/ ClassLabel feature, then the names {'/'.join(IMAGE_NAMES)} and "
            f"{'/'.join(LABEL_NAMES)}); name them with --data-columns IMAGE,LABEL")
    return image, label


class HFImageDataset(Dataset):
    """``(PIL image, label)`` items of a Hugging Face ``Dataset``; ``targets`` are read from
    the label column without decoding an image."""

    def __init__(self, ds: Any, image_col: str, label_col: str, *, mode: str,
                 label_map: dict[Any, int] | None = None, split: str = "train") -> None:
        self.ds = ds
        self.image_col = image_col
        self.label_col = label_col
        self.mode = mode
        self.split = split
        raw = ds.data.column(label_col).to_pylist()
        self.targets = np.asarray([label_map[v] for v in raw] if label_map else raw,
                                  dtype=np.int64)

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        from tokenmixers.data.folder import convert_image

        img = to_pil(self.ds[int(index)][self.image_col])
        if os.environ.get("TOKENMIXERS_DATA_TRACE"):
            trace(f"hf-{self.split}", [str(int(index))])
        return convert_image(img, self.mode), int(self.targets[index])


def to_pil(value: Any) -> Image.Image:
    """An image cell (a decoded PIL image, ``{"bytes", "path"}``, or an array) as PIL."""
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict):
        import io

        if value.get("bytes"):
            return Image.open(io.BytesIO(value["bytes"]))
        return Image.open(value["path"])
    return Image.fromarray(np.asarray(value))


def _mode_of(ds: Any, image_col: str, n: int = 16) -> str:
    from tokenmixers.data.folder import is_grey

    modes = [to_pil(ds[int(i)][image_col]).mode
             for i in np.linspace(0, len(ds) - 1, min(n, len(ds))).astype(int)]
    grey = sum(is_grey(m) for m in modes)
    return "L" if grey > len(modes) - grey else "RGB"


def _open(name: str, *, streaming: bool = False) -> Any:
    """A local ``save_to_disk`` folder or a Hub dataset (``DatasetDict`` or ``Dataset``)."""
    datasets = need_datasets()
    local = Path(name).expanduser()
    if local.is_dir():
        try:
            return datasets.load_from_disk(str(local))
        except FileNotFoundError as err:
            raise FileNotFoundError(
                f"--data hf:{name}: {local} is not a folder written by save_to_disk ({err}); "
                "pass such a folder or a Hugging Face Hub dataset name") from None
    if local.exists() or name.startswith((".", "/", "~")):
        raise FileNotFoundError(f"--data hf:{name}: no dataset folder at {local}")
    # A Hub name: downloaded into the Hugging Face cache (HF_HOME), then memory-mapped.
    return datasets.load_dataset(name, streaming=streaming)


def load_hf(value: str, *, columns: str | None = None, val_split: float | None = None,
            seed: int = 0) -> tuple[Dataset, Dataset, list[str], int, tuple[int, int] | None]:
    """``(train, val, class names, in_chans, first image size)`` of ``hf:value``."""
    from tokenmixers.data.splits import stratified_split

    datasets = need_datasets()
    name, split = parse_hf(value)
    if not name:
        raise ValueError("--data hf:NAME_OR_PATH needs a save_to_disk folder or a Hub name, "
                         "e.g. hf:/data/cifar10_hf or hf:uoft-cs/cifar10")
    opened = _open(name)
    if isinstance(opened, datasets.DatasetDict):
        splits = list(opened)
        train_name = split or "train"
        if train_name not in opened:
            raise ValueError(f"--data hf:{value}: no split {train_name!r}; it has "
                             f"{', '.join(splits)} (pass hf:{name}:SPLIT)")
        train_ds = opened[train_name]
        val_name = next((s for s in VAL_SPLITS if s in opened and s != train_name), None)
        val_ds = opened[val_name] if val_name else None
    else:
        if split:
            raise ValueError(f"--data hf:{value}: {name} is one Dataset without splits; leave "
                             f"out :{split}")
        train_ds, val_ds = opened, None
    where = f"hf:{name}"
    image_col, label_col = detect_columns(train_ds.features, columns, where)
    feature = train_ds.features[label_col]
    label_map = None
    if isinstance(feature, datasets.ClassLabel):
        classes = list(feature.names)
    else:
        values = sorted(set(train_ds.data.column(label_col).to_pylist()))
        if all(isinstance(v, int) for v in values):
            classes = [str(i) for i in range(max(values) + 1)]
        else:
            classes = [str(v) for v in values]
            label_map = {v: i for i, v in enumerate(values)}
    if len(classes) < 2:
        raise ValueError(f"{where}: the label column {label_col!r} holds {len(classes)} "
                         "class; a classifier needs at least 2")
    if len(train_ds) == 0:
        raise ValueError(f"{where}: the training split is empty")
    mode = _mode_of(train_ds, image_col)
    first = to_pil(train_ds[0][image_col]).size
    train = HFImageDataset(train_ds, image_col, label_col, mode=mode, label_map=label_map)
    if val_ds is not None:
        detect_columns(val_ds.features, f"{image_col},{label_col}", f"{where} (validation)")
        val: Dataset = HFImageDataset(val_ds, image_col, label_col, mode=mode,
                                      label_map=label_map, split="val")
        return train, val, classes, 3 if mode == "RGB" else 1, first
    if not val_split:
        raise ValueError(f"--data hf:{value}: no validation split ({'/'.join(VAL_SPLITS)}); "
                         "pass --val-split 0.1 to hold out a stratified 10% of the training "
                         "split")
    train_idx, val_idx = stratified_split(train.targets, val_split, seed=seed)
    return (Subset(train, train_idx.tolist()), Subset(train, val_idx.tolist()), classes,
            3 if mode == "RGB" else 1, first)


def peek_size(value: str) -> int | None:
    """The larger side of the first training image of a local ``hf:`` folder (None for a Hub
    name: it is not downloaded just to size the model)."""
    name, split = parse_hf(value)
    if not Path(name).expanduser().is_dir():
        return None
    datasets = need_datasets()
    opened = _open(name)
    ds = opened[split or "train"] if isinstance(opened, datasets.DatasetDict) and (
        split or "train") in opened else opened
    if isinstance(ds, datasets.DatasetDict) or len(ds) == 0:
        return None
    image_col = next((n for n in ds.features if isinstance(ds.features[n], datasets.Image)),
                     next((n for n in IMAGE_NAMES if n in ds.features), None))
    if image_col is None:
        return None
    return max(to_pil(ds[0][image_col]).size)


# ---- hf-stream: a streamed (IterableDataset) split -----------------------------------------
#: Samples shuffled together in the stream's buffer (datasets' ``shuffle(buffer_size=)``).
STREAM_BUFFER = 1000


class HfStreamSource:
    """A split of ``--data hf-stream:NAME_OR_PATH[:SPLIT]`` before the trainer makes it
    iterable: what ``load_data`` returns (``len``: the split's example count, from the
    dataset's info; :meth:`iterable` opens a fresh ``datasets.IterableDataset``).

    A Hub name is opened with ``load_dataset(NAME, split=SPLIT, streaming=True)``; a local
    ``save_to_disk`` folder (no network needed: tests, or a copy on a network disk) with
    ``load_from_disk(PATH)[SPLIT].to_iterable_dataset(num_shards=...)``: the same code path
    from there on."""

    def __init__(self, name: str, split: str, total: int, classes: list[str], image_col: str,
                 label_col: str, mode: str, *, local: Any = None,
                 label_map: dict[Any, int] | None = None) -> None:
        self.name, self.split, self.total = name, split, total
        self.classes, self.image_col, self.label_col = classes, image_col, label_col
        self.mode, self.local, self.label_map = mode, local, label_map

    def __len__(self) -> int:
        return self.total

    def __getitem__(self, index: int) -> Any:
        raise TypeError("an hf-stream: dataset is streamed (no random access); iterate it "
                        "through tokenmixers.data.hf.HfStreamTrain or HfStreamEval")

    def iterable(self, num_shards: int = 1) -> Any:
        """A fresh ``IterableDataset`` of the split, images not decoded (``decode(False)``:
        a reader decodes only the images it keeps). ``num_shards``: how many shards a local
        folder is cut into (a Hub dataset has its own: its data files)."""
        datasets = need_datasets()
        if self.local is not None:
            ds = self.local.to_iterable_dataset(num_shards=max(1, min(num_shards,
                                                                      len(self.local))))
        else:
            ds = datasets.load_dataset(self.name, split=self.split, streaming=True)
        return ds.decode(False)

    def decode(self, example: dict[str, Any]) -> tuple[Image.Image, int]:
        from tokenmixers.data.folder import convert_image

        value = example[self.label_col]
        label = self.label_map[value] if self.label_map else int(value)
        return convert_image(to_pil(example[self.image_col]), self.mode), label


def image_key(value: Any) -> str:
    """A short name of an undecoded image cell for the trace hook: its path, else a hash of
    its bytes."""
    import hashlib

    if isinstance(value, dict) and value.get("bytes"):
        return hashlib.sha1(value["bytes"]).hexdigest()[:16]
    if isinstance(value, dict) and value.get("path"):
        return str(value["path"])
    return hashlib.sha1(np.asarray(value).tobytes()).hexdigest()[:16]


def _rows(ds: Any) -> Iterator[dict[str, Any]]:
    """The examples of ``ds`` one by one, through ``IterableDataset.iter`` (not
    ``__iter__``, which in a DataLoader worker would split the shards among the workers
    again: the split here is made by :class:`HfStreamTrain` itself)."""
    for batch in ds.iter(batch_size=1):
        yield {k: v[0] for k, v in batch.items()}


class HfStreamTrain(TorchIterableDataset):
    """This process's training examples of an epoch of an :class:`HfStreamSource`, as
    ``(tensor, label)``; the same interface as :class:`tokenmixers.data.wds.WdsTrain`.

    Per epoch: ``shuffle(seed=seed, buffer_size=buffer)`` + ``set_epoch(epoch)`` (shards in
    a (seed, epoch) order, then a shuffle buffer), split among the ``W`` processes with
    ``datasets.distributed.split_dataset_by_node`` (by shards when their count is a
    multiple of ``W``, else each process keeps every ``W``-th example); each process takes
    the first ``M`` whole batches of its stream, ``M = N // W // (batch x accumulation) x
    accumulation``, so every process runs the same number of steps; the rest sit out the
    epoch (counted in :attr:`left_out`). The batches are split among DataLoader workers in
    turn (worker ``w`` of ``K`` decodes batches ``w, w+K, ...``, the DataLoader's round
    robin): every worker reads the process's stream but decodes only its own images, so
    the order is the same for any worker count and a mid-epoch resume skips exactly the
    batches already trained on."""

    #: A resume with another ``--workers`` continues in the same order (read by the trainer).
    order_ignores_workers = True

    def __init__(self, source: HfStreamSource, transform: Any, *, seed: int, batch_size: int,
                 batches_per_step: int = 1, rank: int = 0, world_size: int = 1,
                 buffer: int = STREAM_BUFFER) -> None:
        self.source, self.transform = source, transform
        self.seed, self.batch_size, self.buffer = seed, batch_size, buffer
        self.rank, self.world_size = rank, world_size
        self.steps = source.total // world_size // (batch_size * batches_per_step)
        self.batches = self.steps * batches_per_step
        self.per_rank = self.batches * batch_size
        self.left_out = source.total - self.per_rank * world_size
        self.epoch = self.consumed = self.workers = 0

    def set_epoch(self, epoch: int, *, workers: int, consumed: int = 0,
                  saved_workers: int | None = None) -> None:
        """``consumed``: batches of this epoch already trained on (a resumed run); the
        worker count does not change what is read (``saved_workers`` is not needed)."""
        del saved_workers
        self.epoch, self.workers, self.consumed = epoch, workers, consumed

    def __len__(self) -> int:  # samples this process delivers in a whole epoch
        return self.per_rank

    def rank_stream(self, epoch: int) -> Any:
        """This process's ``IterableDataset`` of epoch ``epoch`` (images undecoded)."""
        from datasets.distributed import split_dataset_by_node

        ds = self.source.iterable(num_shards=self.world_size)
        ds = split_dataset_by_node(ds.shuffle(seed=self.seed, buffer_size=self.buffer),
                                   rank=self.rank, world_size=self.world_size)
        ds.set_epoch(epoch)  # after the split: split_dataset_by_node does not keep the epoch
        return ds

    def _examples(self, epoch: int) -> Iterator[dict[str, Any]]:
        """The process's stream, read again from its start when it holds fewer than
        :attr:`per_rank` examples (a Hub dataset with shards of unequal sizes): every process
        still runs the same number of steps, as DDP needs, at the cost of repeats (warned)."""
        passes = 0
        while True:
            got = 0
            for example in _rows(self.rank_stream(epoch)):
                got += 1
                yield example
            if got == 0:
                raise RuntimeError(f"hf-stream:{self.source.name}: process {self.rank} of "
                                   f"{self.world_size} got no examples (fewer shards than "
                                   "processes?)")
            passes += 1
            if passes == 1:
                warnings.warn(
                    f"hf-stream:{self.source.name}: process {self.rank} of {self.world_size} "
                    f"got {got} examples, fewer than the {self.per_rank} each process trains on "
                    "per epoch (shards of unequal sizes); it reads its part again from the "
                    "start, so some images are seen twice this epoch", stacklevel=2)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if workers != max(self.workers, 1):
            raise RuntimeError(f"hf-stream: set_epoch said {self.workers} workers, the "
                               f"DataLoader runs {workers}")
        b = self.batch_size
        for i, example in enumerate(itertools.islice(self._examples(self.epoch),
                                                     self.per_rank)):
            batch = i // b
            if batch < self.consumed or (batch - self.consumed) % workers != worker:
                continue
            img, label = self.source.decode(example)
            if os.environ.get("TOKENMIXERS_DATA_TRACE"):
                trace("hfs-train", [image_key(example[self.source.image_col])])
            yield self.transform(img), label


class HfStreamEval(TorchIterableDataset):
    """Validation examples of an :class:`HfStreamSource` for process ``rank`` of
    ``world_size`` (``split_dataset_by_node``, no shuffle), the first ``limit`` of the split
    in all (``--limit-val``: the first images of each process's part); DataLoader workers
    take its examples in turn."""

    def __init__(self, source: HfStreamSource, transform: Any, *, rank: int = 0,
                 world_size: int = 1, limit: int | None = None) -> None:
        self.source, self.transform = source, transform
        self.rank, self.world_size = rank, world_size
        n = min(limit, source.total) if limit else source.total
        self.count = n // world_size + (rank < n % world_size)
        self.limited = bool(limit and limit < source.total)

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int]]:
        from datasets.distributed import split_dataset_by_node

        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        ds = split_dataset_by_node(self.source.iterable(num_shards=self.world_size),
                                   rank=self.rank, world_size=self.world_size)
        rows = _rows(ds)
        if self.limited:
            rows = itertools.islice(rows, self.count)
        for i, example in enumerate(rows):
            if i % workers != worker:
                continue
            img, label = self.source.decode(example)
            if os.environ.get("TOKENMIXERS_DATA_TRACE"):
                trace("hfs-val", [image_key(example[self.source.image_col])])
            yield self.transform(img), label


def load_hf_stream(value: str, *, columns: str | None = None,
                   val_split: float | None = None) -> tuple[HfStreamSource, HfStreamSource]:
    """The train and validation :class:`HfStreamSource` of ``hf-stream:value``."""
    datasets = need_datasets()
    name, split = parse_hf(value)
    where = f"hf-stream:{name}"
    if not name:
        raise ValueError("--data hf-stream:NAME_OR_PATH[:SPLIT] needs a Hub name or a "
                         "save_to_disk folder, e.g. hf-stream:timm/imagenet-1k-wds")
    if val_split:
        raise ValueError(f"--val-split {val_split}: a streamed {where} is read in order, "
                         "without the labels up front; it needs its own validation split "
                         "(or use --data hf:... , which holds out a stratified part)")
    train_name = split or "train"
    local = Path(name).expanduser()
    if local.is_dir() or local.exists() or name.startswith((".", "/", "~")):
        opened = _open(name)  # raises naming the folder when it is not a dataset
        if not isinstance(opened, datasets.DatasetDict):
            raise ValueError(f"--data {where}: {name} is one Dataset without splits; a "
                             "streamed set needs a training and a validation split (save a "
                             "DatasetDict, or use --data hf:... --val-split 0.1)")
        splits: dict[str, Any] = dict(opened)
        features = {s: d.features for s, d in splits.items()}
        counts = {s: len(d) for s, d in splits.items()}
    else:
        splits = {}
        builder = datasets.load_dataset_builder(name)
        features = {s: builder.info.features for s in (builder.info.splits or {})}
        counts = {s: int(i.num_examples) for s, i in (builder.info.splits or {}).items()}
        if not counts:
            raise ValueError(f"--data {where}: the Hub dataset's info lists no splits with "
                             "example counts (needed to run the same number of steps on "
                             "every process); use --data hf:{name} (downloads it first)")
    if train_name not in counts:
        raise ValueError(f"--data {where}: no split {train_name!r}; it has "
                         f"{', '.join(counts)} (pass hf-stream:{name}:SPLIT)")
    val_name = next((s for s in VAL_SPLITS if s in counts and s != train_name), None)
    if val_name is None:
        raise ValueError(f"--data {where}: no validation split ({'/'.join(VAL_SPLITS)}); a "
                         "streamed set needs one (or use --data hf:... --val-split 0.1)")
    train_features = features[train_name]
    if train_features is None:
        raise ValueError(f"--data {where}: the dataset's info has no features; use "
                         f"--data hf:{name}")
    image_col, label_col = detect_columns(train_features, columns, where)
    feature = train_features[label_col]
    label_map = None
    if isinstance(feature, datasets.ClassLabel):
        classes = list(feature.names)
    elif splits:
        values = sorted(set(splits[train_name].data.column(label_col).to_pylist()))
        if all(isinstance(v, int) for v in values):
            classes = [str(i) for i in range(max(values) + 1)]
        else:
            classes = [str(v) for v in values]
            label_map = {v: i for i, v in enumerate(values)}
    else:
        raise ValueError(f"--data {where}: the label column {label_col!r} is not a ClassLabel "
                         "feature, so the classes are unknown without reading the whole "
                         f"split; use --data hf:{name} (downloads it first)")
    if len(classes) < 2:
        raise ValueError(f"{where}: the label column {label_col!r} holds {len(classes)} "
                         "class; a classifier needs at least 2")
    if counts[train_name] == 0:
        raise ValueError(f"{where}: the training split is empty")
    if splits:
        mode = _mode_of(splits[train_name], image_col)
    else:  # the first streamed image decides (grey or colour)
        first = next(iter(datasets.load_dataset(name, split=train_name, streaming=True)))
        mode = "L" if to_pil(first[image_col]).mode in ("L", "1", "I", "I;16", "F") else "RGB"
    make = functools.partial(HfStreamSource, name=name, classes=classes, image_col=image_col,
                             label_col=label_col, mode=mode, label_map=label_map)
    return (make(split=train_name, total=counts[train_name], local=splits.get(train_name)),
            make(split=val_name, total=counts[val_name], local=splits.get(val_name)))


def stream_setup(cfg: Any, info: Any, bundle: Any, transforms: tuple[Any, Any],
                 warn: Any) -> tuple[HfStreamTrain, Any, int]:
    """The trainer's pieces for an hf-stream: set: ``(train set, validation loader, number
    of validation images)`` (the training set's :attr:`~HfStreamTrain.steps` are the
    updates per epoch)."""
    from torch.utils.data import DataLoader

    for option in ("holdout", "train_fraction", "limit_train"):
        if getattr(cfg, option, None):
            raise ValueError(
                f"{option}: not available for a streamed {cfg.data} (it needs random access "
                "or every label up front); use --data hf:... (the same dataset, "
                "memory-mapped)")
    train = HfStreamTrain(bundle.train, transforms[0], seed=cfg.seed,
                          batch_size=cfg.batch_size, batches_per_step=cfg.accum_steps,
                          rank=info.rank, world_size=info.world_size)
    if train.steps == 0:
        raise ValueError(f"{bundle.train.total} training images are too few for a batch of "
                         f"{cfg.batch_size} x {cfg.accum_steps} accumulation steps x "
                         f"{info.world_size} processes; lower --batch-size")
    if train.left_out:
        warn(f"{cfg.data}: {info.world_size} process(es) x {train.per_rank} images (the same "
             f"whole number of batches each); {train.left_out} of {bundle.train.total} images "
             "sit out each epoch (other ones each epoch: the stream is reshuffled)")
    val = HfStreamEval(bundle.val, transforms[1], rank=info.rank,
                       world_size=info.world_size, limit=cfg.limit_val)
    loader = DataLoader(val, batch_size=cfg.batch_size, num_workers=cfg.workers,
                        pin_memory=info.device.type == "cuda")
    n_val = min(cfg.limit_val, bundle.val.total) if cfg.limit_val else bundle.val.total
    return train, loader, n_val
