"""Image modes (issue 13): mixed folders train on the majority's channels and say so, every
mode is converted by one helper (16-bit scaled, alpha on white) shared with ``predict``;
one-class folders, decompression bombs in ``predict`` and run folders mixing two runs are
refused with messages that name the file and the fix."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tokenmixers import create_model, save_weights
from tokenmixers.cli import main
from tokenmixers.data import load_data
from tokenmixers.data.folder import (
    ImageModeWarning,
    convert_image,
    load_imagefolder,
    scan_modes,
)
from tokenmixers.evaluate import (
    RunMismatchError,
    load_checkpoint_model,
    predict_files,
    read_image,
)

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = 8
RNG = np.random.default_rng(0)


def _grey() -> Image.Image:
    return Image.fromarray(RNG.integers(0, 256, (SIZE, SIZE), dtype=np.uint8))


def _rgb() -> Image.Image:
    return Image.fromarray(RNG.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))


def _rgba() -> Image.Image:
    """Random colours, opaque, except pixel (0, 0): (10, 20, 30) and fully transparent."""
    arr = RNG.integers(0, 256, (SIZE, SIZE, 4), dtype=np.uint8)
    arr[..., 3] = 255
    arr[0, 0] = (10, 20, 30, 0)
    return Image.fromarray(arr)


def _sixteen(value: int | None = None) -> Image.Image:
    """A 16-bit grey image (mode I;16): flat at ``value``, else a ramp over 0..65535."""
    if value is None:
        arr = np.linspace(0, 65535, SIZE * SIZE).round().astype(np.uint16).reshape(SIZE, SIZE)
    else:
        arr = np.full((SIZE, SIZE), value, dtype=np.uint16)
    img = Image.fromarray(arr)
    assert img.mode == "I;16"
    return img


def _folder(root: Path, images: dict[str, list[Image.Image]]) -> Path:
    for cls, imgs in images.items():
        (root / cls).mkdir(parents=True)
        for i, img in enumerate(imgs):
            img.save(root / cls / f"{i}.png")
    return root


def _tiny(in_chans: int, num_classes: int = 2, name: str = "vit_tiny_patch16_224",
          **kwargs: object) -> torch.nn.Module:
    sizes = dict(embed_dim=16, depth=1, num_heads=2) if name.startswith("vit") else \
        dict(embed_dim=16, num_blocks=1)
    return create_model(name, img_size=SIZE, patch_size=4, in_chans=in_chans,
                        num_classes=num_classes, **{**sizes, **kwargs}).eval()


def _weights(path: Path, model: torch.nn.Module, classes: list[str]) -> Path:
    c = model.patch_embed.in_chans
    meta = {"classes": json.dumps(classes), "mean": json.dumps([0.5] * c),
            "std": json.dumps([0.5] * c), "crop_pct": "1.0", "data": "mnist5k"}
    return save_weights(model, path, metadata=meta)


# ---- 1: mixed modes -----------------------------------------------------------------------
def test_mixed_folder_trains_on_the_majority_and_says_so_once(tmp_path: Path) -> None:
    # The first file (a/0.png) is grey; the majority (4 of 6) is colour.
    root = _folder(tmp_path / "images", {"a": [_grey(), _rgb(), _rgba()],
                                         "b": [_sixteen(), _rgb(), _rgb()]})
    with pytest.warns(ImageModeWarning) as record:
        bundle = load_data(f"imagefolder:{root}", val_split=0.34)
    assert bundle.in_chans == 3 and bundle.mean == (0.485, 0.456, 0.406)
    assert len(record) == 1  # one message for the whole folder
    message = str(record[0].message)
    for part in (str(root), "4 colour (3 RGB, 1 RGBA)", "2 grayscale", "1 L", "1 I;16",
                 "training on 3 channels (RGB), the majority's",
                 "L -> RGB: grayscale is replicated to 3 channels",
                 "I;16 -> RGB: 16-bit values are scaled to 8 bit over their full range",
                 "RGBA -> RGB: transparent pixels are composited on a white background"):
        assert part in message, part
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the load-time message said it all: reading is quiet
        items = [bundle.train[i] for i in range(len(bundle.train))]
        items += [bundle.val[i] for i in range(len(bundle.val))]
    assert len(items) == 6 and all(img.mode == "RGB" for img, _ in items)
    # A large folder is judged from evenly spaced headers, and the message says so.
    paths = sorted(str(p) for p in root.rglob("*.png"))
    target, counts, said = scan_modes(paths, root, limit=3)
    assert (target, sum(counts.values())) == ("RGB", 3)
    assert said is not None and "3 of 6 images (evenly spaced)" in said


def test_a_given_mode_wins_and_each_conversion_is_reported_once(tmp_path: Path) -> None:
    root = _folder(tmp_path / "images", {"a": [_rgb(), _rgb(), _grey()],
                                         "b": [_rgb(), _rgba(), _rgb()]})
    with pytest.warns(ImageModeWarning) as record:
        train, val, classes, in_chans = load_imagefolder(root, val_split=0.34, mode="L")
    assert in_chans == 1 and classes == ["a", "b"] and len(record) == 1
    message = str(record[0].message)
    assert "-> 1 channel (L), as given; RGB -> L: colour becomes grayscale" in message
    assert "RGBA -> L: transparent pixels are composited" in message
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        modes = {train[i][0].mode for i in range(len(train))}
        modes |= {val[i][0].mode for i in range(len(val))}
    assert modes == {"L"}
    # A kind the (sampled) scan did not see is said once, when first met, not per image.
    folder = train.dataset
    folder.report.seen.clear()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for _ in range(2):
            _ = [folder[i] for i in range(len(folder))]
    kinds = sorted(str(w.message).split(": ")[1] for w in record
                   if issubclass(w.category, ImageModeWarning))
    assert kinds == ["RGB -> L", "RGBA -> L"]  # four RGB images, read twice: one message
    with pytest.raises(ValueError, match=r"mode='RGBA' is not a model's mode; pass 'L'"):
        load_imagefolder(root, val_split=0.34, mode="RGBA")


def test_16_bit_images_are_scaled_not_clipped(tmp_path: Path) -> None:
    root = _folder(tmp_path / "xray", {"a": [_sixteen(32768), _sixteen(65535)],
                                       "b": [_sixteen(), _grey()]})
    with pytest.warns(ImageModeWarning, match=r"I;16 -> L: 16-bit values .* \(value / 257\)"):
        train, _, _, in_chans = load_imagefolder(root, val_split=0.5)
    assert in_chans == 1
    folder = train.dataset  # the Subset's SafeImageFolder
    img, _ = folder[0]  # a/0.png: 32768 everywhere
    assert img.mode == "L" and np.unique(np.asarray(img)).tolist() == [128]  # not 255
    assert np.unique(np.asarray(folder[1][0])).tolist() == [255]
    ramp = np.asarray(folder[2][0])
    assert ramp.min() == 0 and ramp.max() == 255 and len(np.unique(ramp)) > 50
    # The other integer and float modes, through the same helper.
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    big_endian = Image.frombytes("I;16B", (4, 1), values.astype(">u2").tobytes())
    as_int32 = Image.fromarray(values.astype(np.int32))
    for img in (big_endian, as_int32):
        assert np.asarray(convert_image(img, "L")).tolist() == [[0, 1, 128, 255]], img.mode
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert np.asarray(convert_image(unit, "L")).tolist() == [[0, 128, 255]]
    wide = Image.fromarray(np.array([[-1.0, 0.0, 3.0]], dtype=np.float32))
    assert np.asarray(convert_image(wide, "L")).tolist() == [[0, 64, 255]]  # own min..max
    assert np.asarray(convert_image(big_endian, "RGB"))[0, 2].tolist() == [128] * 3


def test_transparent_pixels_become_the_white_background(tmp_path: Path) -> None:
    rgba = _rgba()
    palette = Image.new("P", (2, 1))
    palette.putpalette([200, 0, 0, 0, 200, 0])
    palette.putpixel((1, 0), 1)
    palette.save(tmp_path / "p.png", transparency=1)
    root = _folder(tmp_path / "images", {"a": [rgba, _rgb()], "b": [_rgb(), _rgb()]})
    with pytest.warns(ImageModeWarning, match="RGBA -> RGB: transparent pixels are composited"):
        train, _, _, _ = load_imagefolder(root, val_split=0.5)
    img = np.asarray(train.dataset[0][0])
    assert img[0, 0].tolist() == [255, 255, 255]  # alpha 0: the background, not (10, 20, 30)
    assert img[1:, 1:].tolist() == np.asarray(rgba)[1:, 1:, :3].tolist()  # opaque: as is
    with Image.open(tmp_path / "p.png") as p:
        assert np.asarray(convert_image(p, "RGB")).tolist() == [[[200, 0, 0], [255, 255, 255]]]
    la = Image.fromarray(np.array([[[10, 0], [10, 255]]], dtype=np.uint8), mode="LA")
    assert np.asarray(convert_image(la, "L")).tolist() == [[255, 10]]
    cmyk = Image.new("CMYK", (1, 1), (0, 255, 255, 0))
    assert np.asarray(convert_image(cmyk, "RGB")).tolist() == [[[255, 0, 0]]]


def test_predict_reads_a_16_bit_png_like_the_folder(tmp_path: Path) -> None:
    root = _folder(tmp_path / "xray", {"a": [_sixteen(), _sixteen(20000)],
                                       "b": [_grey(), _grey()]})
    with pytest.warns(ImageModeWarning):
        train, _, classes, in_chans = load_imagefolder(root, val_split=0.5)
    model = _tiny(in_chans)
    loaded = load_checkpoint_model(_weights(tmp_path / "m.safetensors", model, classes))
    sixteen = root / "a" / "0.png"  # the 0..65535 ramp
    scaled = np.rint(np.asarray(_sixteen(), dtype=np.float64) / 257).astype(np.uint8)
    from_folder = np.asarray(train.dataset[0][0])
    assert np.array_equal(from_folder, scaled)
    assert np.array_equal(np.asarray(read_image(sixteen, 1)), from_folder)
    eight = tmp_path / "the_same_in_8_bit.png"
    Image.fromarray(scaled).save(eight)
    with pytest.warns(ImageModeWarning, match=r"predict .*I;16 -> L: 16-bit values") as record:
        got = predict_files(loaded, [sixteen, eight, sixteen], topk=2)
    assert got[0]["top"] == got[1]["top"] == got[2]["top"]
    assert len(record) == 1  # said once, not per file


# ---- 9: one class -------------------------------------------------------------------------
def test_a_one_class_folder_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    one = _folder(tmp_path / "one", {"cats": [_grey() for _ in range(4)]})
    with pytest.raises(ValueError, match=(
            rf"image folder {one} holds one class folder, 'cats': a classifier needs at least "
            rf"2 classes .*; put each class's images in its own sub-folder of {one}$")):
        load_data(f"imagefolder:{one}", val_split=0.5)
    split = tmp_path / "split"
    _folder(split / "train", {"cats": [_grey(), _grey()]})
    _folder(split / "val", {"cats": [_grey()]})
    with pytest.raises(ValueError, match=rf"{split / 'train'} holds one class folder, 'cats'"):
        load_imagefolder(split, val_split=None)
    nested = tmp_path / "nested"
    _folder(nested / "images", {"a": [_grey()], "b": [_grey()]})
    with pytest.raises(ValueError, match=rf"point at it: imagefolder:{nested / 'images'}\)"):
        load_data(f"imagefolder:{nested}", val_split=0.5)
    out = tmp_path / "run"
    assert main(["train", "--model", "mixer_s16_224", "--model-kwargs", "patch_size=4",
                 "embed_dim=16", "num_blocks=1", "--data", f"imagefolder:{one}",
                 "--val-split", "0.5", "--img-size", str(SIZE), "--batch-size", "2",
                 "--epochs", "1", "--progress", "none", "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "tokenmixers train: error: image folder" in err and "at least 2 classes" in err
    assert not (out / "config.yaml").exists()


# ---- 10: decompression bombs and other unreadable files in predict ------------------------
def test_predict_refuses_a_decompression_bomb_and_a_non_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    weights = _weights(tmp_path / "m.safetensors", _tiny(3), ["a", "b"])
    big = tmp_path / "big.png"
    Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8)).save(big)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    message = (rf"{big} is too large to read safely: 4,096 pixels, more than PIL's limit of "
               r"2 x Image.MAX_IMAGE_PIXELS = 200 pixels .*; downscale the image, or if you "
               r"trust the file raise PIL.Image.MAX_IMAGE_PIXELS")
    with pytest.raises(ValueError, match=message):
        predict_files(load_checkpoint_model(weights), [big])
    assert main(["predict", "--checkpoint", str(weights), str(big)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "Traceback" not in captured.err
    assert captured.err.startswith(f"tokenmixers predict: error: {big} is too large")
    assert "4,096 pixels" in captured.err
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    assert main(["predict", "--checkpoint", str(weights), str(text)]) == 2
    err = capsys.readouterr().err
    assert f"could not read {text} as an image" in err and "Traceback" not in err


# ---- 15: a run folder whose weights come from another run ---------------------------------
def _run(root: Path, weights_model: torch.nn.Module, model: str,
         model_kwargs: dict[str, object]) -> Path:
    from tokenmixers.train.config import build_config, save_yaml

    cfg = build_config({"model": model, "model_kwargs": model_kwargs, "data": "mnist5k",
                        "img_size": SIZE, "output": str(root)})
    save_yaml(cfg, root / "config.yaml")
    _weights(root / "best" / "model.safetensors", weights_model, [str(i) for i in range(10)])
    (root / "best" / "trainer_state.pt").write_bytes(b"")  # a complete checkpoint folder
    return root


def test_eval_refuses_a_run_folder_whose_weights_are_another_model(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    mixer_kwargs = {"patch_size": 4, "embed_dim": 16, "num_blocks": 1}
    vit = _tiny(1, 10)
    run = _run(tmp_path / "run", vit, "mixer_s16_224", mixer_kwargs)
    weights = run / "best" / "model.safetensors"
    message = (f"the weights in {weights} are a vit_tiny_patch16_224 but {run / 'config.yaml'} "
               "trains mixer_s16_224; the folder mixes two runs: evaluate the weights file "
               f"directly with --checkpoint {weights}")
    for checkpoint in (run, run / "best"):
        with pytest.raises(RunMismatchError) as info:
            load_checkpoint_model(checkpoint)
        assert str(info.value).startswith(message)
    assert main(["eval", "--checkpoint", str(run), "--limit", "8"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    # The file itself is what its metadata says: the way out the message names.
    assert load_checkpoint_model(weights).model.model_name == "vit_tiny_patch16_224"
    # The same model with other options is another run too.
    mixer = _tiny(1, 10, "mixer_s16_224")
    other = _run(tmp_path / "other", mixer, "mixer_s16_224", {**mixer_kwargs, "embed_dim": 32})
    with pytest.raises(RunMismatchError, match=(
            r"are a mixer_s16_224 with embed_dim=16 but .* trains mixer_s16_224 with "
            r"embed_dim=32;")):
        load_checkpoint_model(other)
    # A consistent run loads as before.
    same = _run(tmp_path / "same", mixer, "mixer_s16_224", mixer_kwargs)
    assert load_checkpoint_model(same).model.model_name == "mixer_s16_224"
