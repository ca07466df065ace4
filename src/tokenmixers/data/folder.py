"""``imagefolder:PATH``: class-per-folder images (the ImageNet layout) through torchvision's
``ImageFolder``, skipping unreadable files instead of crashing a long run on one of them."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from PIL import Image
from torch.utils.data import Dataset, Subset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from tokenmixers.data.splits import stratified_split

#: Fraction of unreadable images tolerated (at least one is always tolerated).
DEFAULT_MAX_BAD_FRACTION = 0.01
#: Folder names recognised as the validation part of ``PATH``.
VAL_NAMES = ("val", "validation", "valid", "test")
#: Errors PIL raises for corrupt, truncated or mislabelled files.
_READ_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


class TooManyBadImagesError(ValueError):
    """More unreadable images than the tolerated fraction."""


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


def check_folder(root: Path) -> list[str]:
    """The class folder names under ``root``, or a ValueError that says what is wrong."""
    if not root.exists():
        raise FileNotFoundError(
            f"image folder {root} does not exist; --data imagefolder:PATH takes a folder with "
            "train/ and val/ subfolders (one subfolder per class in each), or one folder of "
            "class subfolders together with --val-split 0.1"
        )
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is a file; imagefolder:PATH needs a folder")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        loose = [n for n in os.listdir(root) if _is_image(n)]
        hint = (f" (it holds {len(loose)} loose images: put each class's images in a subfolder "
                "named after the class)") if loose else ""
        raise ValueError(f"image folder {root} holds no class subfolders{hint}")
    empty = []
    for c in classes:
        has_image = any(
            _is_image(f) for _, _, files in os.walk(root / c, followlinks=True) for f in files
        )
        if not has_image:
            empty.append(c)
    if empty:
        raise ValueError(
            f"class folder(s) with no images in {root}: {', '.join(empty[:10])}"
            f"{' ...' if len(empty) > 10 else ''} (image extensions: {', '.join(IMG_EXTENSIONS)})"
            "; add images or remove the empty folder(s)"
        )
    return classes


class SafeImageFolder(ImageFolder):
    """``ImageFolder`` that skips files PIL cannot read: the first one is named in a
    warning, every one is counted (``bad_files``), and more than ``max_bad_fraction`` of
    the dataset raises :class:`TooManyBadImagesError`. A skipped item is replaced by the
    next readable one, so batches keep their size."""

    def __init__(self, root: str | os.PathLike[str], *, mode: str | None = None,
                 max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION) -> None:
        check_folder(Path(root))
        super().__init__(str(root))
        self.max_bad_fraction = max_bad_fraction
        self.bad_files: dict[str, str] = {}
        self.mode = mode or self._detect_mode()

    @property
    def in_chans(self) -> int:
        return 1 if self.mode == "L" else 3

    def _detect_mode(self) -> str:
        """Grey ('L') if the first readable image is single-channel, else 'RGB'."""
        for path, _ in self.samples[:32]:
            try:
                with Image.open(path) as img:
                    return "L" if img.mode in ("L", "1", "I", "I;16", "F") else "RGB"
            except _READ_ERRORS:
                continue
        return "RGB"

    def _read(self, path: str) -> Image.Image:
        with Image.open(path) as img:
            img.load()  # decode now: truncated files fail here, not inside a transform
            return img.convert(self.mode)

    def _bad(self, path: str, err: BaseException) -> None:
        if path in self.bad_files:
            return
        self.bad_files[path] = f"{type(err).__name__}: {err}"
        allowed = max(1, int(self.max_bad_fraction * len(self.samples)))
        if len(self.bad_files) == 1:
            warnings.warn(
                f"skipping unreadable image {path} ({err}); further unreadable images are "
                f"counted, and more than {allowed} of {len(self.samples)} stop the run",
                RuntimeWarning, stacklevel=3,
            )
        if len(self.bad_files) > allowed:
            names = ", ".join(list(self.bad_files)[:5])
            raise TooManyBadImagesError(
                f"{len(self.bad_files)} unreadable images in {self.root} (more than the "
                f"{allowed} tolerated, {self.max_bad_fraction:.1%}), e.g. {names}; remove or "
                "replace them (PIL could not decode them)"
            )

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        n = len(self.samples)
        for k in range(n):
            path, target = self.samples[(index + k) % n]
            if path in self.bad_files:
                continue
            try:
                return self._read(path), target
            except _READ_ERRORS as err:
                self._bad(path, err)
        raise TooManyBadImagesError(f"no readable image in {self.root}")


def load_imagefolder(
    path: str | os.PathLike[str], *, val_split: float | None, seed: int = 0,
    max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION,
) -> tuple[Dataset, Dataset, list[str], int]:
    """``(train, val, class names, in_chans)`` from ``path``."""
    root = Path(path).expanduser()
    if not root.is_dir():
        check_folder(root)  # raises with the reason
    train_dir = root / "train"
    val_dir = next((root / n for n in VAL_NAMES if (root / n).is_dir()), None)
    if train_dir.is_dir() and val_dir is not None:
        train = SafeImageFolder(train_dir, max_bad_fraction=max_bad_fraction)
        val = SafeImageFolder(val_dir, mode=train.mode, max_bad_fraction=max_bad_fraction)
        if val.classes != train.classes:
            only_train = sorted(set(train.classes) - set(val.classes))
            only_val = sorted(set(val.classes) - set(train.classes))
            raise ValueError(
                f"{train_dir} and {val_dir} have different class folders (only in train: "
                f"{only_train[:5]}, only in val: {only_val[:5]}); both need the same classes"
            )
        return train, val, train.classes, train.in_chans
    if train_dir.is_dir():
        raise ValueError(
            f"{root} has train/ but no val/ folder; add {root / 'val'} with the same class "
            f"folders, or point at {train_dir} with --val-split 0.1"
        )
    check_folder(root)
    if not val_split:
        raise ValueError(
            f"{root} has no train/ and val/ subfolders; pass --val-split 0.1 to hold out a "
            "stratified 10% of its images for validation"
        )
    full = SafeImageFolder(root, max_bad_fraction=max_bad_fraction)
    train_idx, val_idx = stratified_split(full.targets, val_split, seed=seed)
    if len(val_idx) == 0 or len(train_idx) == 0:
        raise ValueError(f"--val-split {val_split} leaves an empty part of {len(full)} images")
    return (Subset(full, train_idx.tolist()), Subset(full, val_idx.tolist()), full.classes,
            full.in_chans)
