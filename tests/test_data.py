"""Datasets behind --data: mnist5k, digits, CIFAR (a fake copy in the real on-disk format,
read by torchvision's loader) and image folders, including unreadable images."""

from __future__ import annotations

import hashlib
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.datasets import CIFAR10, CIFAR100

from tokenmixers.data import load_data, parse_data, stratified_split
from tokenmixers.data.folder import TooManyBadImagesError


# ---- splits ------------------------------------------------------------------------------
def test_stratified_split_is_exact_balanced_and_fixed() -> None:
    labels = np.repeat(np.arange(4), [10, 20, 30, 40])
    train, val = stratified_split(labels, 0.2, seed=3)
    assert len(val) == 20 and len(train) == 80
    assert sorted(np.bincount(labels[val]).tolist()) == [2, 4, 6, 8]
    assert not set(train) & set(val)
    again = stratified_split(labels, 0.2, seed=3)
    assert (again[1] == val).all()
    assert not (stratified_split(labels, 0.2, seed=4)[1] == val).all()
    with pytest.raises(ValueError, match="between 0 and 1"):
        stratified_split(labels, 1.5)


def test_mnist5k_is_the_shipped_digits_split_4000_1000() -> None:
    bundle = load_data("mnist5k")
    assert (len(bundle.train), len(bundle.val)) == (4000, 1000)
    assert (bundle.in_chans, bundle.num_classes) == (1, 10)
    assert np.bincount(bundle.val.targets).tolist() == [100] * 10
    img, label = bundle.train[0]
    assert img.mode == "L" and img.size == (28, 28) and 0 <= label < 10
    # The split is fixed: the same images every time.
    again = load_data("mnist5k")
    assert np.array_equal(again.val.images, bundle.val.images)


def test_digits_from_scikit_learn() -> None:
    bundle = load_data("digits")
    assert len(bundle.train) + len(bundle.val) == 1797
    assert bundle.in_chans == 1 and bundle.num_classes == 10
    assert bundle.train[0][0].size == (8, 8)


def test_unknown_dataset_suggests() -> None:
    with pytest.raises(ValueError, match="did you mean mnist5k"):
        parse_data("mnist5")
    with pytest.raises(ValueError, match="needs a folder"):
        parse_data("imagefolder:")


# ---- CIFAR in its real on-disk format --------------------------------------------------------
def _pickle(path: Path, obj: dict) -> str:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)  # the original files are Python 2 pickles
    return hashlib.md5(path.read_bytes()).hexdigest()


def make_fake_cifar(root: Path, monkeypatch: pytest.MonkeyPatch, *, per_batch: int = 8,
                    hundred: bool = False) -> None:
    """A tiny CIFAR copy in torchvision's pickle layout; the class's checksum lists are
    pointed at these files so torchvision's own integrity check passes."""
    rng = np.random.default_rng(0)
    cls = CIFAR100 if hundred else CIFAR10
    folder = root / cls.base_folder
    folder.mkdir(parents=True)
    n_classes = 100 if hundred else 10
    label_key = "fine_labels" if hundred else "labels"

    def batch(n: int) -> dict:
        return {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                label_key: [int(i % n_classes) for i in range(n)]}

    train_list = [[name, _pickle(folder / name, batch(per_batch))] for name, _ in cls.train_list]
    test_list = [[name, _pickle(folder / name, batch(per_batch))] for name, _ in cls.test_list]
    names = [f"class_{i}" for i in range(n_classes)]
    meta_md5 = _pickle(folder / cls.meta["filename"], {cls.meta["key"]: names})
    monkeypatch.setattr(cls, "train_list", train_list)
    monkeypatch.setattr(cls, "test_list", test_list)
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": meta_md5})


@pytest.mark.parametrize("hundred", [False, True])
def test_fake_cifar_loads_through_torchvision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             hundred: bool) -> None:
    make_fake_cifar(tmp_path, monkeypatch, hundred=hundred)
    name = "cifar100" if hundred else "cifar10"
    bundle = load_data(name, data_dir=str(tmp_path))
    n_batches = 1 if hundred else 5
    assert len(bundle.train) == 8 * n_batches and len(bundle.val) == 8
    assert bundle.in_chans == 3 and bundle.num_classes == (100 if hundred else 10)
    img, _ = bundle.train[0]
    assert img.size == (32, 32) and img.mode == "RGB"
    # cifar10:ROOT names the root inline.
    assert len(load_data(f"{name}:{tmp_path}").val) == 8


def test_missing_cifar_says_download(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="--download"):
        load_data("cifar10", data_dir=str(tmp_path / "nowhere"))


# ---- image folders ---------------------------------------------------------------------------
def write_images(folder: Path, classes: dict[str, int], *, size: int = 12, mode: str = "RGB",
                 seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for name, count in classes.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            shape = (size, size, 3) if mode == "RGB" else (size, size)
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(
                folder / name / f"{i}.png")


def test_imagefolder_train_val_with_a_corrupt_file(tmp_path: Path) -> None:
    write_images(tmp_path / "train", {"cat": 6, "dog": 6})
    write_images(tmp_path / "val", {"cat": 2, "dog": 2})
    bad = tmp_path / "train" / "dog" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 4)
    bundle = load_data(f"imagefolder:{tmp_path}")
    assert bundle.classes == ["cat", "dog"] and bundle.in_chans == 3
    assert len(bundle.train) == 13 and len(bundle.val) == 4
    with pytest.warns(RuntimeWarning, match="broken.png"):
        items = [bundle.train[i] for i in range(len(bundle.train))]
    assert all(img.mode == "RGB" for img, _ in items)
    assert list(bundle.train.bad_files) == [str(bad)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once: reading it again is quiet
        _ = [bundle.train[i] for i in range(len(bundle.train))]


def test_imagefolder_fails_above_the_tolerated_fraction(tmp_path: Path) -> None:
    write_images(tmp_path / "train", {"a": 3, "b": 3})
    write_images(tmp_path / "val", {"a": 1, "b": 1})
    for i in range(2):
        (tmp_path / "train" / "a" / f"bad{i}.jpg").write_bytes(b"garbage")
    bundle = load_data(f"imagefolder:{tmp_path}")
    with pytest.warns(RuntimeWarning), pytest.raises(TooManyBadImagesError, match="bad1.jpg"):
        _ = [bundle.train[i] for i in range(len(bundle.train))]


def test_imagefolder_single_folder_with_val_split_and_grey_images(tmp_path: Path) -> None:
    write_images(tmp_path, {"x": 10, "y": 10}, mode="L")
    with pytest.raises(ValueError, match="--val-split"):
        load_data(f"imagefolder:{tmp_path}")
    bundle = load_data(f"imagefolder:{tmp_path}", val_split=0.2)
    assert (len(bundle.train), len(bundle.val)) == (16, 4)
    assert bundle.in_chans == 1 and bundle.mean == (0.5,)


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ("missing", "does not exist"),
        ("empty", "holds no class subfolders"),
        ("empty_class", "class folder.*no images.*: b"),
        ("no_val", "no val/ folder"),
        ("class_mismatch", "different class folders"),
    ],
)
def test_imagefolder_bad_layouts(tmp_path: Path, layout: str, message: str) -> None:
    root = tmp_path / "data"
    if layout != "missing":
        root.mkdir()
    if layout == "empty_class":
        write_images(root / "train", {"a": 2})
        (root / "train" / "b").mkdir()
        write_images(root / "val", {"a": 1, "b": 1})
    elif layout == "no_val":
        write_images(root / "train", {"a": 2})
    elif layout == "class_mismatch":
        write_images(root / "train", {"a": 2, "b": 2})
        write_images(root / "val", {"a": 1, "c": 1})
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        load_data(f"imagefolder:{root}")


def test_transforms_give_model_ready_tensors() -> None:
    from tokenmixers.data import AugmentConfig, Transformed, eval_transform, train_transform

    bundle = load_data("mnist5k")
    aug = AugmentConfig(scale=(0.8, 1.0), hflip=0.0, color_jitter=None,
                        auto_augment="rand-m9-mstd0.5-inc1", reprob=0.25)
    x, y = Transformed(bundle.train, train_transform(28, 1, bundle.mean, bundle.std, aug))[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and isinstance(y, int)
    x, _ = Transformed(bundle.val, eval_transform(36, 1, bundle.mean, bundle.std))[0]
    assert x.shape == (1, 36, 36) and -1.01 <= x.min() and x.max() <= 1.01


def test_randaugment_posterize_at_full_magnitude_does_not_crash() -> None:
    """timm's increasing posterize keeps 0 bits at magnitude 10, which Pillow 13 refuses;
    DeiT's rand-m9-mstd0.5-inc1 samples magnitude 10 now and then. Our transform maps 0
    bits to a black image (Pillow's old answer) and runs."""
    from PIL import Image

    from tokenmixers.data.transforms import AugmentConfig, posterize, train_transform

    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), np.uint8))
    assert np.asarray(posterize(img, 0)).max() == 0
    assert posterize(img, 8) is img
    assert np.array_equal(np.asarray(posterize(img, 4)), np.asarray(img) & 0xF0)
    grey = img.convert("L")
    assert np.asarray(posterize(grey, 0)).max() == 0
    for policy in ("rand-m10-n4-inc1", "rand-m9-mstd0.5-inc1", "augmix-m10-w2-d2"):
        transform = train_transform(32, 3, (0.5,) * 3, (0.5,) * 3,
                                    AugmentConfig(auto_augment=policy))
        for _ in range(100):
            assert transform(img).shape == (3, 32, 32)
