"""CIFAR-10 / CIFAR-100 through torchvision's own loader (its on-disk pickle format and
checksums)."""

from __future__ import annotations

import os
from pathlib import Path

from torch.utils.data import Dataset
from torchvision.datasets import CIFAR10, CIFAR100

CIFAR = {"cifar10": CIFAR10, "cifar100": CIFAR100}


def load_cifar(name: str, root: str | os.PathLike[str], *, download: bool = False
               ) -> tuple[Dataset, Dataset, list[str]]:
    cls = CIFAR[name]
    root = Path(root).expanduser()
    try:
        train = cls(str(root), train=True, download=download)
        val = cls(str(root), train=False, download=download)
    except RuntimeError as err:
        if download:
            raise
        raise FileNotFoundError(
            f"no {name} at {root / cls.base_folder} ({err}); pass --download to fetch it, or "
            "--data-dir to point at the folder that holds it"
        ) from None
    except OSError as err:  # download without network, unreadable files
        raise FileNotFoundError(f"could not get {name} into {root}: {err}") from err
    return train, val, list(train.classes)
