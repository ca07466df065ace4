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
number)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset, Subset

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
