"""Datasets for ``tokenmixers train/eval``: what ``--data`` names, loaded into
``(train, val)`` datasets of ``(PIL image, label)`` with the facts a model needs."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
from torch.utils.data import Dataset, Subset

from tokenmixers.data.splits import nested_stratified_subset, stratified_split
from tokenmixers.data.transforms import AugmentConfig, Transformed, eval_transform, train_transform
from tokenmixers.text import did_you_mean

#: ``--data`` names -> (kind, native image size). ``imagefolder:PATH`` is the open-ended one.
BUILTIN = {"mnist5k": 28, "digits": 8, "cifar10": 32, "cifar100": 32}
#: Generated Pathfinder images (data/pathfinder.py): ``pathfinderSIZE[:LEVEL][:n=N][:test=N]``.
BUILTIN.update({f"pathfinder{size}": size for size in (32, 64, 128, 256)})
#: hf:/wds: images no larger than this (pixels, larger side) train at their own size with
#: the small-image recipes (``small`` for grey, ``cifar`` for colour); larger ones at 224.
SMALL_IMAGES = 64
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


@dataclass(frozen=True)
class DataSpec:
    """A parsed ``--data`` value."""

    name: str  # mnist5k, digits, cifar10, cifar100, imagefolder, hf, hf-stream, wds
    path: str = ""  # imagefolder's folder, hf's name or folder, wds's shards, a CIFAR root

    @property
    def kind(self) -> str:
        """Which recipe fits: small (digits-sized), cifar, or imagenet-like."""
        if self.name in ("hf", "hf-stream", "wds"):
            size, grey = _peek(self)
            if size is not None and size <= SMALL_IMAGES:
                return "small" if grey else "cifar"
            return "imagenet"
        if self.name.startswith("pathfinder"):
            return "small"  # grey, no flips, no mixing (Mixup/CutMix would break the paths)
        return {"mnist5k": "small", "digits": "small", "cifar10": "cifar",
                "cifar100": "cifar"}.get(self.name, "imagenet")

    @property
    def native_size(self) -> int:
        if self.name in ("hf", "hf-stream", "wds"):
            size, _ = _peek(self)
            return size if size is not None and size <= SMALL_IMAGES else 224
        return BUILTIN.get(self.name, 224)


@functools.lru_cache(maxsize=16)
def _peek(spec: DataSpec) -> tuple[int | None, bool]:
    """(larger side of the images, whether grey) of an hf:/wds: set, from its index or first
    image, without loading it; (None, False) when unknown (a Hub name, a missing folder:
    loading says why)."""
    try:
        if spec.name == "wds":
            from pathlib import Path

            from tokenmixers.data.wds import image_size_of, read_index

            given = Path(spec.path).expanduser()
            folder = given if given.is_dir() else Path(spec.path).parent
            if not (folder / "index.json").is_file():
                return None, False
            index = read_index(folder)
            return image_size_of(index), index.get("mode") == "L"
        from tokenmixers.data.hf import peek_size

        return peek_size(spec.path), False
    except (OSError, ValueError, ImportError):
        return None, False


def parse_data(value: str) -> DataSpec:
    name, _, path = value.partition(":")
    if name == "imagefolder":
        if not path:
            raise ValueError("--data imagefolder:PATH needs a folder, e.g. imagefolder:~/imagenet")
        return DataSpec("imagefolder", path)
    if name == "hf":
        if not path:
            raise ValueError("--data hf:NAME_OR_PATH[:SPLIT] needs a save_to_disk folder or a "
                             "Hugging Face Hub name, e.g. hf:/data/cifar10_hf or "
                             "hf:uoft-cs/cifar10")
        return DataSpec("hf", path)
    if name == "hf-stream":  # the same dataset streamed: data/hf.py's HfStreamSource
        if not path:
            raise ValueError("--data hf-stream:NAME_OR_PATH[:SPLIT] needs a Hugging Face Hub "
                             "name or a save_to_disk folder, e.g. "
                             "hf-stream:timm/imagenet-1k-wds")
        return DataSpec("hf-stream", path)
    if name == "wds":
        if not path:
            raise ValueError("--data wds:PATH needs a folder of shards with index.json, or a "
                             "brace pattern, e.g. wds:/data/in1k/train-{000000..000127}.tar")
        return DataSpec("wds", path)
    if name.startswith("pathfinder"):
        from tokenmixers.data.pathfinder import parse_spec

        return DataSpec(name, parse_spec(name, path).options)  # raises naming the choices
    if name in BUILTIN:
        return DataSpec(name, path)
    choices = [*BUILTIN, "imagefolder:PATH", "hf:NAME_OR_PATH[:SPLIT]",
               "hf-stream:NAME_OR_PATH[:SPLIT]", "wds:SHARDS"]
    raise ValueError(
        f"unknown dataset {value!r}{did_you_mean(name, choices, cutoff=0.4)}"
        f" (choose from {', '.join(choices)})"
    )


@dataclass
class DataBundle:
    """Raw (untransformed) train and validation datasets and what the model needs to know."""

    spec: DataSpec
    train: Dataset
    val: Dataset
    classes: list[str]
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_pct: float = 1.0
    notes: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def fixed_subset(dataset: Dataset, limit: int | None) -> Dataset:
    """The first ``limit`` items of a fixed (seed 0) shuffle, in ascending order: the same
    images for ``train --limit-val`` and ``eval --limit``."""
    n = len(dataset)  # type: ignore[arg-type]
    if not limit or limit >= n:
        return dataset
    idx = np.sort(np.random.default_rng(0).permutation(n)[:limit])
    return Subset(dataset, idx.tolist())


def labels_of(dataset: Dataset) -> np.ndarray:
    """The class index of every item, read from ``targets`` (ours, torchvision's, image
    folders') through any :class:`Subset` around it, without decoding an image."""
    if isinstance(dataset, Subset):
        return labels_of(dataset.dataset)[np.asarray(dataset.indices, dtype=np.int64)]
    targets = getattr(dataset, "targets", None)
    if targets is None:
        return np.asarray([int(dataset[i][1]) for i in range(len(dataset))])  # type: ignore[arg-type]
    return np.asarray(targets, dtype=np.int64)


#: The seed of the held-out validation split and of the data-size subsets: fixed, so every
#: model and every training seed sees the same images.
SPLIT_SEED = 0


def training_views(
    train: Dataset, *, holdout: float | None = None, train_fraction: float | None = None
) -> tuple[Dataset, Dataset | None, dict[str, list[int]]]:
    """``(train, held-out validation or None, indices)`` carved from a training set.

    ``holdout``: this fraction of ``train`` is set aside for validation (stratified, seed
    :data:`SPLIT_SEED`) and never trained on; ``train_fraction``: of the rest, train on a
    stratified, nested subset of this fraction (:func:`nested_stratified_subset`). The
    indices (into ``train``) say which images went where."""
    labels = labels_of(train)
    rest = np.arange(len(labels))
    val_idx = np.zeros(0, dtype=np.int64)
    if holdout:
        rest, val_idx = stratified_split(labels, float(holdout), seed=SPLIT_SEED)
    if train_fraction and train_fraction < 1.0:
        rest = rest[nested_stratified_subset(labels[rest], train_fraction, seed=SPLIT_SEED)]
    indices = {"train": rest.tolist(), "val": val_idx.tolist()}
    train_view = train if len(rest) == len(labels) else Subset(train, indices["train"])
    val_view = Subset(train, indices["val"]) if holdout else None
    return train_view, val_view, indices


def load_data(
    value: str | DataSpec, *, data_dir: str = "data", download: bool = False,
    val_split: float | None = None, seed: int = 0, max_bad_fraction: float = 0.01,
    columns: str | None = None,
) -> DataBundle:
    """Load the dataset ``value`` names (see :func:`parse_data`). ``columns``: the image and
    label columns of an ``hf:`` set (``--data-columns IMAGE,LABEL``; default: detected)."""
    spec = parse_data(value) if isinstance(value, str) else value
    grey = ((0.5,), (0.5,))
    if spec.name.startswith("pathfinder"):
        from tokenmixers.data.pathfinder import CLASSES, load_pathfinder

        train, val = load_pathfinder(spec.name, spec.path, data_dir)
        return DataBundle(spec, train, val, list(CLASSES), 1, *grey,
                          notes=[f"generated, cached under {data_dir}/pathfinder"])
    if spec.name == "mnist5k":
        from tokenmixers.data.arrays import load_mnist5k

        train, val = load_mnist5k()
        return DataBundle(spec, train, val, train.classes, 1, *grey)
    if spec.name == "digits":
        from tokenmixers.data.arrays import load_digits

        train, val = load_digits(val_split or 0.2, seed=0)
        return DataBundle(spec, train, val, train.classes, 1, *grey)
    if spec.name in ("cifar10", "cifar100"):
        from tokenmixers.data.cifar import load_cifar

        train, val, classes = load_cifar(spec.name, spec.path or data_dir, download=download)
        return DataBundle(spec, train, val, classes, 3, CIFAR_MEAN, CIFAR_STD)
    if columns and spec.name not in ("hf", "hf-stream"):
        raise ValueError(f"--data-columns {columns} applies to --data hf:... and hf-stream:... "
                         f"only (this is {spec.name}); leave it out")
    if spec.name in ("hf", "hf-stream", "wds"):
        return _load_streaming(spec, columns=columns, val_split=val_split, seed=seed)
    from tokenmixers.data.folder import load_imagefolder

    train, val, classes, in_chans = load_imagefolder(
        spec.path, val_split=val_split, seed=seed, max_bad_fraction=max_bad_fraction
    )
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if in_chans == 3 else grey
    return DataBundle(spec, train, val, classes, in_chans, mean, std, crop_pct=0.875)


def _load_streaming(spec: DataSpec, *, columns: str | None, val_split: float | None,
                    seed: int) -> DataBundle:
    """An hf: (map-style, memory-mapped Arrow) or wds: (streamed shards) bundle."""
    small = spec.native_size <= SMALL_IMAGES
    if spec.name == "hf":
        from tokenmixers.data.hf import load_hf

        train, val, classes, in_chans, _ = load_hf(spec.path, columns=columns,
                                                   val_split=val_split, seed=seed)
        notes = []
    elif spec.name == "hf-stream":
        from tokenmixers.data.hf import load_hf_stream

        train, val = load_hf_stream(spec.path, columns=columns, val_split=val_split)
        classes, in_chans = list(train.classes), 3 if train.mode == "RGB" else 1
        notes = ["streamed"]
    else:
        from tokenmixers.data.wds import WdsSource, load_shards

        if val_split:
            raise ValueError(f"--val-split {val_split}: a wds: shard set has its own val-*.tar "
                             "shards; leave --val-split out")
        train_shards, val_shards, _ = load_shards(spec.path)
        train, val = WdsSource(train_shards), WdsSource(val_shards)
        classes, in_chans = list(train_shards.classes), 3 if train_shards.mode == "RGB" else 1
        notes = ["streamed"]
    if in_chans == 3:
        mean, std = (CIFAR_MEAN, CIFAR_STD) if small else (IMAGENET_MEAN, IMAGENET_STD)
    else:
        mean, std = (0.5,), (0.5,)
    return DataBundle(spec, train, val, classes, in_chans, mean, std,
                      crop_pct=1.0 if small else 0.875, notes=notes)


def is_streamed(dataset: object) -> bool:
    """Whether ``dataset`` is read as a stream (wds:, hf-stream:), not by index."""
    from tokenmixers.data.hf import HfStreamSource
    from tokenmixers.data.wds import WdsSource

    return isinstance(dataset, (WdsSource, HfStreamSource))


__all__ = [
    "AugmentConfig",
    "DataBundle",
    "DataSpec",
    "Transformed",
    "eval_transform",
    "fixed_subset",
    "is_streamed",
    "labels_of",
    "load_data",
    "nested_stratified_subset",
    "parse_data",
    "stratified_split",
    "train_transform",
    "training_views",
]
