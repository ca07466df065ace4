"""Train and eval transforms through timm's ``create_transform``, and a dataset wrapper
that applies one."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image, ImageOps
from timm.data import create_transform
from torch.utils.data import Dataset


@dataclass(frozen=True)
class AugmentConfig:
    """What the train transform does (timm's names in brackets)."""

    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    color_jitter: float | None = 0.4
    auto_augment: str | None = None  # e.g. "rand-m9-mstd0.5-inc1" (RandAugment)
    reprob: float = 0.0  # random erasing (re_prob)
    no_aug: bool = False


def train_transform(img_size: int, in_chans: int, mean: Sequence[float], std: Sequence[float],
                    aug: AugmentConfig, interpolation: str = "bicubic") -> Callable[[Any], Any]:
    transform = create_transform(
        (in_chans, img_size, img_size), is_training=True, no_aug=aug.no_aug,
        scale=tuple(aug.scale), ratio=tuple(aug.ratio), hflip=aug.hflip,
        color_jitter=aug.color_jitter or None, auto_augment=aug.auto_augment or None,
        re_prob=aug.reprob, interpolation=interpolation, mean=tuple(mean), std=tuple(std),
    )
    _posterize_zero_bits(transform)
    return transform


def posterize(img: Image.Image, bits_to_keep: int, **_: Any) -> Image.Image:
    """timm's posterize op, defined at 0 bits too: every pixel 0 (what Pillow's posterize
    gave before Pillow 13, which refuses 0; timm's ``inc1`` policies reach it at magnitude
    10, e.g. DeiT's ``rand-m9-mstd0.5-inc1`` whenever the sampled magnitude is 10)."""
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return img.point([0] * 256 * len(img.getbands()))
    return ImageOps.posterize(img, int(bits_to_keep))


def _posterize_zero_bits(transform: Any) -> None:
    """Give every posterize op in ``transform`` (timm's RandAugment / AutoAugment ops) the
    :func:`posterize` above."""
    for op in _augment_ops(transform):
        if "Posterize" in getattr(op, "name", ""):
            op.aug_fn = posterize


def _augment_ops(obj: Any) -> list[Any]:
    """timm's ``AugmentOp``s inside a (nested) torchvision ``Compose``."""
    found = []
    for t in getattr(obj, "transforms", None) or []:
        if hasattr(t, "aug_fn"):
            found.append(t)
        found += _augment_ops(t)
        for ops in (getattr(t, "ops", None), getattr(t, "policy", None)):
            for op in ops or []:  # RandAugment.ops, AutoAugment.policy (sub-policies)
                found += [o for o in (op if isinstance(op, (list, tuple)) else [op])
                          if hasattr(o, "aug_fn")]
    return found


def eval_transform(img_size: int, in_chans: int, mean: Sequence[float], std: Sequence[float],
                   crop_pct: float = 1.0, interpolation: str = "bicubic") -> Callable[[Any], Any]:
    return create_transform(
        (in_chans, img_size, img_size), is_training=False, crop_pct=crop_pct,
        interpolation=interpolation, mean=tuple(mean), std=tuple(std),
    )


class Transformed(Dataset):
    """``dataset`` (PIL image, label) items with ``transform`` applied to the image."""

    def __init__(self, dataset: Dataset, transform: Callable[[Any], torch.Tensor]) -> None:
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img, target = self.dataset[index]
        return self.transform(img), int(target)
