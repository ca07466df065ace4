"""Datasets for ``tokenmixers train/eval``: what ``--data`` names, loaded into
``(train, val)`` datasets of ``(PIL image, label)`` with the facts a model needs."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from torch.utils.data import Dataset, Subset

from tokenmixers.data.splits import nested_stratified_subset, stratified_split
from tokenmixers.data.transforms import AugmentConfig, Transformed, eval_transform, train_transform
from tokenmixers.text import did_you_mean

#: ``--data`` names -> (kind, native image size). ``imagefolder:PATH`` is the open-ended one.
BUILTIN = {"mnist5k": 28, "digits": 8, "cifar10": 32, "cifar100": 32}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


@dataclass(frozen=True)
class DataSpec:
    """A parsed ``--data`` value."""

    name: str  # mnist5k, digits, cifar10, cifar100, imagefolder
    path: str = ""  # imagefolder's folder, or a CIFAR root given as cifar10:ROOT

    @property
    def kind(self) -> str:
        """Which recipe fits: small (digits-sized), cifar, or imagenet-like."""
        return {"mnist5k": "small", "digits": "small", "cifar10": "cifar",
                "cifar100": "cifar"}.get(self.name, "imagenet")

    @property
    def native_size(self) -> int:
        return BUILTIN.get(self.name, 224)


def parse_data(value: str) -> DataSpec:
    name, _, path = value.partition(":")
    if name == "imagefolder":
        if not path:
            raise ValueError("--data imagefolder:PATH needs a folder, e.g. imagefolder:~/imagenet")
        return DataSpec("imagefolder", path)
    if name in BUILTIN:
        return DataSpec(name, path)
    choices = [*BUILTIN, "imagefolder:PATH"]
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
) -> DataBundle:
    """Load the dataset ``value`` names (see :func:`parse_data`)."""
    spec = parse_data(value) if isinstance(value, str) else value
    grey = ((0.5,), (0.5,))
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
    from tokenmixers.data.folder import load_imagefolder

    train, val, classes, in_chans = load_imagefolder(
        spec.path, val_split=val_split, seed=seed, max_bad_fraction=max_bad_fraction
    )
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if in_chans == 3 else grey
    return DataBundle(spec, train, val, classes, in_chans, mean, std, crop_pct=0.875)


__all__ = [
    "AugmentConfig",
    "DataBundle",
    "DataSpec",
    "Transformed",
    "eval_transform",
    "fixed_subset",
    "labels_of",
    "load_data",
    "nested_stratified_subset",
    "parse_data",
    "stratified_split",
    "train_transform",
    "training_views",
]
