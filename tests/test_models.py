"""The timm model contract, on every registered model (built with its family's tiny config)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from torch.autograd.graph import saved_tensors_hooks

import tokenmixers
from tokenmixers.families import FAMILIES
from tokenmixers.zoo import ZOO

NAMES = sorted(ZOO)


def tiny(name: str, **extra: object) -> tokenmixers.Backbone:
    return tokenmixers.create_model(name, **{**FAMILIES[ZOO[name].family].tiny, **extra})


def images(model: tokenmixers.Backbone, batch: int = 2) -> torch.Tensor:
    c, h, w = model.pretrained_cfg["input_size"]
    return torch.randn(batch, c, h, w)


@pytest.mark.parametrize("name", NAMES)
def test_forward_backward(name: str) -> None:
    model = tiny(name).train()
    x = images(model).requires_grad_()
    out = model(x)
    assert out.shape == (2, model.num_classes)
    out.logsumexp(-1).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"parameters without gradient: {missing}"


@pytest.mark.parametrize("name", NAMES)
def test_features_head_and_reset_classifier(name: str) -> None:
    model = tiny(name).eval()
    x = images(model)
    with torch.inference_mode():
        feats = model.forward_features(x)
        logits = model.forward_head(feats)
        pre = model.forward_head(feats, pre_logits=True)
        assert torch.equal(logits, model(x))
        assert pre.shape == (2, model.head_hidden_size)
        model.reset_classifier(0)
        assert model.num_classes == 0
        assert torch.equal(model(x), pre)
        model.reset_classifier(7)
        assert model(x).shape == (2, 7)
        assert model.get_classifier().out_features == 7


@pytest.mark.parametrize("name", NAMES)
def test_forward_intermediates_are_nchw_maps(name: str) -> None:
    model = tiny(name).eval()
    x = images(model)
    with torch.inference_mode():
        final, maps = model.forward_intermediates(x)
        assert torch.allclose(final, model.forward_features(x), atol=1e-6, rtol=0)
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
    assert len(last_two) == 2
    for fmap in maps:
        assert fmap.ndim == 4 and fmap.shape[0] == 2
        assert fmap.shape[2] * fmap.shape[3] > 0
    assert maps[-1].shape[1] == model.num_features
    assert torch.allclose(last_two[-1], maps[-1], atol=1e-6, rtol=0)


def _saved_bytes(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    return out, total


@pytest.mark.parametrize("name", NAMES)
def test_grad_checkpointing_same_result_less_memory(name: str) -> None:
    model = tiny(name).eval()  # eval: no dropout/drop path, so both passes are identical
    x = images(model)
    out_plain, bytes_plain = _saved_bytes(model, x)
    out_plain.square().sum().backward()
    grads_plain = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    out_ckpt, bytes_ckpt = _saved_bytes(model, x)
    out_ckpt.square().sum().backward()
    assert torch.allclose(out_plain, out_ckpt, atol=1e-6, rtol=0)
    for n, p in model.named_parameters():
        assert torch.allclose(p.grad, grads_plain[n], atol=1e-6, rtol=1e-5), n
    assert bytes_ckpt < bytes_plain, (bytes_ckpt, bytes_plain)


@pytest.mark.parametrize("name", NAMES)
def test_save_load_round_trip(name: str, tmp_path: Path) -> None:
    model = tiny(name).eval()
    path = tokenmixers.save_weights(model, tmp_path / "w.safetensors")
    again = tokenmixers.load_model(path).eval()
    assert again.model_name == name and again.model_config == model.model_config
    fresh = tiny(name).eval()
    assert tokenmixers.load_weights(fresh, path) == "tokenmixers"
    x = images(model)
    with torch.inference_mode():
        assert torch.equal(again(x), model(x))
        assert torch.equal(fresh(x), model(x))
    # the same weights through torch.save / torch.load(weights_only=True)
    torch.save(model.state_dict(), tmp_path / "w.pth")
    fresh = tiny(name)
    tokenmixers.load_weights(fresh, tmp_path / "w.pth")
    for (n, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), n


@pytest.mark.skipif(shutil.which("gcc") is None and shutil.which("cc") is None,
                    reason="torch.compile's CPU backend needs a C compiler")
def test_torch_compile_tiny_vit() -> None:
    model = tiny("vit_tiny_patch16_224").eval()
    x = images(model)
    compiled = torch.compile(model)
    with torch.inference_mode():
        eager = model(x)
        assert torch.allclose(compiled(x), eager, atol=1e-5, rtol=1e-5)
        # another resolution recompiles (or runs dynamically) and still agrees
        x2 = torch.randn(2, 3, 48, 40)
        assert torch.allclose(compiled(x2), model(x2), atol=1e-5, rtol=1e-5)
