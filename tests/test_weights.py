"""load_weights / save_weights: sources, containers, and errors that say what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import tokenmixers
from tokenmixers import CheckpointMismatchError, weights

VIT = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}
MIXER = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "num_blocks": 2}


def vit(**kw: object) -> tokenmixers.Backbone:
    return tokenmixers.create_model("vit_tiny_patch16_224", **{**VIT, **kw})


def test_other_class_count_names_shapes_and_fix(tmp_path: Path) -> None:
    path = tokenmixers.save_weights(vit(num_classes=10), tmp_path / "ten.safetensors")
    with pytest.raises(CheckpointMismatchError) as err:
        tokenmixers.load_weights(vit(num_classes=5), path)
    msg = str(err.value)
    assert "head.weight: checkpoint [10, 32] vs model [5, 32]" in msg
    assert "num_classes=10" in msg


def test_strict_false_keeps_the_rest() -> None:
    src = vit(num_classes=10)
    dst = vit(num_classes=5)
    tokenmixers.load_weights(dst, src.state_dict(), strict=False)
    assert torch.equal(dst.blocks[1].mlp.fc2.weight, src.blocks[1].mlp.fc2.weight)
    assert dst.head.weight.shape == (5, 32)


def test_other_architecture_names_keys(tmp_path: Path) -> None:
    mixer = tokenmixers.create_model("mixer_s16_224", **MIXER)
    path = tokenmixers.save_weights(mixer, tmp_path / "mixer.safetensors")
    with pytest.raises(CheckpointMismatchError) as err:
        tokenmixers.load_weights(vit(), path)
    msg = str(err.value)
    assert "saved from mixer_s16_224" in msg
    assert "missing from the checkpoint" in msg and "blocks.0.mixer.qkv.weight" in msg
    assert "not in the model" in msg and "blocks.0.mixer.mlp.fc1.weight" in msg


def test_explicit_wrong_source_fails() -> None:
    with pytest.raises(ValueError, match="no 'official' converter"):
        tokenmixers.load_weights(vit(), vit().state_dict(), source="official")
    with pytest.raises(ValueError, match="source must be"):
        tokenmixers.load_weights(vit(), vit().state_dict(), source="hub")


def test_containers_and_prefixes_are_unwrapped(tmp_path: Path) -> None:
    src = vit()
    wrapped = {"epoch": 3, "model": {f"module.{k}": v for k, v in src.state_dict().items()}}
    torch.save(wrapped, tmp_path / "ckpt.pth")
    dst = vit()
    tokenmixers.load_weights(dst, tmp_path / "ckpt.pth")
    assert torch.equal(dst.pos_embed, src.pos_embed)


class _Evil:
    def __reduce__(self) -> tuple:
        return (print, ("unpickled arbitrary code",))


def test_arbitrary_pickles_are_refused(tmp_path: Path) -> None:
    torch.save({"state_dict": vit().state_dict(), "x": _Evil()}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="weights_only=True"):
        tokenmixers.load_weights(vit(), tmp_path / "evil.pth")


def test_bad_paths_and_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        tokenmixers.load_weights(vit(), tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00\x01garbage")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        tokenmixers.load_weights(vit(), bad)
    with pytest.raises(ValueError, match=r"\*\.safetensors"):
        tokenmixers.save_weights(vit(), tmp_path / "w.pt")
    torch.save(vit().state_dict(), tmp_path / "plain.pth")
    with pytest.raises(ValueError, match="not written by tokenmixers.save_weights"):
        tokenmixers.load_model(tmp_path / "plain.pth")


def test_save_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = vit()
    path = tokenmixers.save_weights(first, tmp_path / "w.safetensors")

    def crash(*args: object, **kwargs: object) -> None:
        Path(args[1]).write_bytes(b"partial")  # a half-written temporary file
        raise KeyboardInterrupt

    monkeypatch.setattr(weights, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        tokenmixers.save_weights(vit(), path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]
    again = tokenmixers.load_model(path)
    assert torch.equal(again.pos_embed, first.pos_embed)


def test_metadata_records_name_and_config(tmp_path: Path) -> None:
    path = tokenmixers.save_weights(vit(num_classes=3), tmp_path / "w.safetensors")
    _, meta = weights.read_state_dict(path)
    assert meta["model_name"] == "vit_tiny_patch16_224"
    assert '"num_classes": 3' in meta["model_config"]
