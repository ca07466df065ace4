"""``imagefolder:PATH``: class-per-folder images (the ImageNet layout) through torchvision's
``ImageFolder``, skipping unreadable files instead of crashing a long run on one of them.

Images of any PIL mode become the model's ``"L"`` (1 channel) or ``"RGB"`` (3 channels)
through one helper, :func:`convert_image`, which ``tokenmixers predict`` uses too. A folder's
channel count is the majority's (:func:`scan_modes`), and every kind of conversion is
reported once (:class:`ConversionReport`)."""

from __future__ import annotations

import os
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
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


#: Headers read to decide a folder's channel count (evenly spaced over its sorted files).
MODE_SCAN_LIMIT = 4096
#: The colour transparent pixels are composited on (white).
BACKGROUND = (255, 255, 255)
#: The modes a model takes: 1 channel or 3.
TARGET_MODES = {"L": 1, "RGB": 3}
_GREY_MODES = ("1", "L", "LA", "La", "I", "F")
_ALPHA_MODES = ("RGBA", "LA", "La", "RGBa", "PA")


class TooManyBadImagesError(ValueError):
    """More unreadable images than the tolerated fraction."""


class ImageModeWarning(UserWarning):
    """Images of another mode than the model's are converted (said once per kind)."""


# ---- image modes -----------------------------------------------------------------------------
def is_grey(mode: str) -> bool:
    """Whether images of PIL ``mode`` have one colour channel (palette images count as
    colour: their palette is RGB)."""
    return mode in _GREY_MODES or mode.startswith("I;16")


def source_mode(img: Image.Image) -> str:
    """``img``'s mode as :func:`describe_conversion` names it: the PIL mode, with
    ``" with transparency"`` when a grey or RGB file declares a transparent colour."""
    if "transparency" in img.info and img.mode in ("1", "L", "RGB"):
        return f"{img.mode} with transparency"
    return img.mode


def describe_conversion(source: str, target: str) -> str | None:
    """What :func:`convert_image` does to a ``source`` image (a :func:`source_mode`) to make
    it ``target``, in words; None when nothing changes."""
    if source == target:
        return None
    mode = source.split(" ")[0]
    steps = []
    if mode == "1":
        steps.append("1-bit pixels become 0 or 255")
    elif mode.startswith("I;16"):
        steps.append("16-bit values are scaled to 8 bit over their full range (value / 257)")
    elif mode == "I":
        steps.append("32-bit integer values are scaled to 8 bit: value / 257 (the 16-bit range) "
                     "when they all lie in 0..65535, else from the image's own min..max")
    elif mode == "F":
        steps.append("float values are scaled to 8 bit: value x 255 when they all lie in "
                     "[0, 1], else from the image's own min..max")
    elif mode == "P":
        steps.append("the palette is expanded to RGB (transparent entries composited on a "
                     "white background)")
    elif mode not in TARGET_MODES and mode not in _ALPHA_MODES:
        steps.append(f"{mode} is converted to RGB (PIL's conversion)")
    if mode in _ALPHA_MODES or source != mode:
        steps.append("transparent pixels are composited on a white background")
    if is_grey(mode) and target == "RGB":
        steps.append("grayscale is replicated to 3 channels")
    elif not is_grey(mode) and target == "L":
        steps.append("colour becomes grayscale (ITU-R 601 luma, 0.299 R + 0.587 G + 0.114 B)")
    return f"{source} -> {target}: " + ", then ".join(steps)


def _scaled_to_l(img: Image.Image) -> Image.Image:
    """A 16-bit, 32-bit integer or float image as 8-bit ``"L"`` (see describe_conversion)."""
    mode = img.mode
    arr = np.asarray(img.convert("I") if mode.startswith("I;16") else img, dtype=np.float64)
    arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    if mode.startswith("I;16") or (mode == "I" and lo >= 0 and hi <= 65535):
        out = arr / 257
    elif mode == "F" and lo >= 0 and hi <= 1:
        out = arr * 255
    else:  # a true 32-bit or an unscaled float image: its own range
        out = (arr - lo) * (255 / (hi - lo)) if hi > lo else np.zeros_like(arr)
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8), mode="L")


def convert_image(img: Image.Image, target: str) -> Image.Image:
    """``img`` as ``target`` (``"L"`` or ``"RGB"``), keeping what its mode means:

    - 16-bit (``I;16``, ``I;16B``, ``I;16L``, ``I;16N``) values are divided by 257, so the
      full 0..65535 range maps onto 0..255 (PIL's own ``convert("L")`` clips at 255);
      32-bit ``I`` likewise when its values lie in 0..65535, else its min..max is stretched
      to 0..255;
    - float ``F`` values in [0, 1] are multiplied by 255, other ranges are stretched from
      the image's min..max to 0..255; NaN and infinities become 0;
    - transparency (``RGBA``, ``LA``, ``PA``, premultiplied ``RGBa``/``La``, a palette or a
      grey/RGB file with a transparent colour) is composited on a white background
      (:data:`BACKGROUND`);
    - palette ``P``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV`` become RGB by PIL's conversion,
      1-bit ``1`` becomes 0/255 grey;
    - grey becomes RGB by replication, colour becomes grey by ITU-R 601 luma.
    """
    if target not in TARGET_MODES:
        raise ValueError(f"target mode must be 'L' (1 channel) or 'RGB' (3 channels), "
                         f"got {target!r}")
    mode = img.mode
    if mode in ("I", "F") or mode.startswith("I;16"):
        img = _scaled_to_l(img)
    elif mode == "La":
        img = img.convert("LA")
    elif "transparency" in img.info and mode in ("1", "L", "RGB", "P"):
        img = img.convert("RGBA")
    elif mode in ("PA", "RGBa"):
        img = img.convert("RGBA")
    elif mode not in ("L", "RGB", "LA", "RGBA"):
        img = img.convert("L" if mode == "1" else "RGB")
    if img.mode in ("LA", "RGBA"):
        background = Image.new("RGBA", img.size, (*BACKGROUND, 255))
        img = Image.alpha_composite(background, img.convert("RGBA")).convert("RGB")
        # a grey image stays exactly grey: luma of equal R, G, B is that value
    return img if img.mode == target else img.convert(target)


class ConversionReport:
    """Warns (:class:`ImageModeWarning`) the first time each kind of conversion, source
    mode -> target, happens in ``where``: once per kind, never once per image."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.seen: set[tuple[str, str]] = set()

    def __call__(self, source: str, target: str, example: str | os.PathLike[str]) -> None:
        if (source, target) in self.seen:
            return
        self.seen.add((source, target))
        text = describe_conversion(source, target)
        if text:
            warnings.warn(f"{self.where}: {text} (first: {example}; said once per kind)",
                          ImageModeWarning, stacklevel=3)


def _count(counts: Counter[str]) -> str:
    return ", ".join(f"{n} {mode}" for mode, n in counts.most_common())


def scan_modes(paths: Sequence[str], where: str | os.PathLike[str], *,
               target: str | None = None, limit: int = MODE_SCAN_LIMIT,
               ) -> tuple[str, Counter[str], str | None]:
    """The modes of the images at ``paths`` from their headers (no decoding; at most
    ``limit`` files, evenly spaced): ``(target, counts, message)``. ``target`` is the mode
    given, else the majority's (a tie goes to RGB, which loses nothing; no readable file:
    RGB); ``counts`` counts :func:`source_mode`; ``message`` says what is mixed and how each
    mode is converted, or is None when nothing needs converting. Unreadable files are left
    to the reader."""
    step = max(1, -(-len(paths) // limit))
    sample = paths[::step]
    counts: Counter[str] = Counter()
    for path in sample:
        try:
            with Image.open(path) as img:
                counts[source_mode(img)] += 1
        except _READ_ERRORS:
            continue
    grey = Counter({m: n for m, n in counts.items() if is_grey(m.split(" ")[0])})
    colour = counts - grey
    n_grey, n_colour = sum(grey.values()), sum(colour.values())
    given = target is not None
    if target is None:
        target = "L" if n_grey > n_colour else "RGB"
    conversions = [d for m in counts if (d := describe_conversion(m, target))]
    if not conversions:
        return target, counts, None
    scanned = (f"{len(sample)} of {len(paths)} images (evenly spaced)" if len(sample) < len(paths)
               else f"{len(paths)} images")
    channels = f"{TARGET_MODES[target]} channel{'s' if target == 'RGB' else ''} ({target})"
    if n_grey and n_colour:
        found = (f"{n_colour} colour ({_count(colour)}) and {n_grey} grayscale "
                 f"({_count(grey)}) of {scanned}")
    else:
        found = f"{scanned}, all {'grayscale' if n_grey else 'colour'} ({_count(counts)})"
    if given:
        decided = f"{channels}, as given"
    elif n_grey and n_colour:
        decided = (f"training on {channels}, the majority's (to choose, convert the files to "
                   "one mode, or pass mode='L' or 'RGB' to load_imagefolder)")
    else:
        decided = channels
    return target, counts, f"{where}: {found} -> {decided}; " + "; ".join(conversions)


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
    if len(classes) == 1:
        only = root / classes[0]
        nested = sorted(e.name for e in os.scandir(only) if e.is_dir()
                        and not e.name.startswith("."))
        hint = (f" (if {only}'s {len(nested)} sub-folders {', '.join(nested[:5])}"
                f"{' ...' if len(nested) > 5 else ''} are the classes, point at it: "
                f"imagefolder:{only})") if len(nested) >= 2 else ""
        raise ValueError(
            f"image folder {root} holds one class folder, {classes[0]!r}: a classifier needs "
            f"at least 2 classes (with one it reaches 100% at loss 0 and learns nothing); "
            f"put each class's images in its own sub-folder of {root}{hint}"
        )
    return classes


class SafeImageFolder(ImageFolder):
    """``ImageFolder`` that skips files PIL cannot read: the first one is named in a
    warning, every one is counted (``bad_files``), and more than ``max_bad_fraction`` of
    the dataset raises :class:`TooManyBadImagesError`. A skipped item is replaced by the
    next readable one, so batches keep their size.

    ``mode`` (``"L"`` or ``"RGB"``) fixes the channel count; by default it is the
    majority's. Either way the headers are scanned (:func:`scan_modes`) and one
    :class:`ImageModeWarning` says what is mixed and how each mode is converted. Every image
    goes through :func:`convert_image`; a kind of conversion the scan missed is reported
    once, when first met."""

    def __init__(self, root: str | os.PathLike[str], *, mode: str | None = None,
                 max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION) -> None:
        if mode is not None and mode not in TARGET_MODES:
            raise ValueError(
                f"image folder {root}: mode={mode!r} is not a model's mode; pass 'L' "
                "(1 channel) or 'RGB' (3 channels), or None for the majority of its images")
        check_folder(Path(root))
        super().__init__(str(root))
        self.max_bad_fraction = max_bad_fraction
        self.bad_files: dict[str, str] = {}
        self.mode, self.mode_counts, message = scan_modes(
            [p for p, _ in self.samples], root, target=mode)
        if message:
            warnings.warn(message, ImageModeWarning, stacklevel=3)
        # What the message said is not said again; the reader reports the kinds a sampled
        # scan missed, once each (per process: DataLoader workers hold their own copy).
        self.report = ConversionReport(str(root))
        self.report.seen.update((m, self.mode) for m in self.mode_counts)

    @property
    def in_chans(self) -> int:
        return TARGET_MODES[self.mode]

    def _read(self, path: str) -> Image.Image:
        with Image.open(path) as img:
            img.load()  # decode now: truncated files fail here, not inside a transform
            source = source_mode(img)
            out = convert_image(img, self.mode)
        self.report(source, self.mode, path)
        return out

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
    max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION, mode: str | None = None,
) -> tuple[Dataset, Dataset, list[str], int]:
    """``(train, val, class names, in_chans)`` from ``path``. ``mode`` (``"L"`` or
    ``"RGB"``) fixes the channel count; by default the training images' majority decides,
    and val/ follows train/."""
    root = Path(path).expanduser()
    if not root.is_dir():
        check_folder(root)  # raises with the reason
    train_dir = root / "train"
    val_dir = next((root / n for n in VAL_NAMES if (root / n).is_dir()), None)
    if train_dir.is_dir() and val_dir is not None:
        train = SafeImageFolder(train_dir, mode=mode, max_bad_fraction=max_bad_fraction)
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
    full = SafeImageFolder(root, mode=mode, max_bad_fraction=max_bad_fraction)
    train_idx, val_idx = stratified_split(full.targets, val_split, seed=seed)
    if len(val_idx) == 0 or len(train_idx) == 0:
        raise ValueError(f"--val-split {val_split} leaves an empty part of {len(full)} images")
    return (Subset(full, train_idx.tolist()), Subset(full, val_idx.tolist()), full.classes,
            full.in_chans)
