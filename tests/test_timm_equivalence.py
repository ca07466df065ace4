"""Equivalence with timm: timm's weights in our models give timm's logits."""

from __future__ import annotations

import pytest
import timm
import torch

import tokenmixers


def _random_timm(name: str, **kwargs: object) -> torch.nn.Module:
    model = timm.create_model(name, **kwargs).eval()
    with torch.no_grad():  # no weight stays a trivial 0 or 1
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


CASES = [
    ("vit_tiny_patch16_224", {}, (224, 224)),
    ("vit_small_patch16_224", {}, (224, 224)),
    ("vit_tiny_patch16_224", {"dynamic_img_size": True}, (160, 256)),
    ("mixer_s16_224", {}, (224, 224)),
    ("mixer_b16_224", {}, (224, 224)),
]


@pytest.mark.parametrize(("name", "timm_kwargs", "size"), CASES, ids=lambda c: str(c))
def test_logits_match_timm(name: str, timm_kwargs: dict, size: tuple[int, int]) -> None:
    reference = _random_timm(name, **timm_kwargs)
    ours = tokenmixers.create_model(name).eval()
    assert tokenmixers.load_weights(ours, reference.state_dict(), source="timm") == "timm"
    x = torch.randn(2, 3, *size)
    with torch.inference_mode():
        diff32 = (ours(x) - reference(x)).abs().max().item()
    assert diff32 <= 1e-4
    reference.double()
    ours.double()
    with torch.inference_mode():
        diff64 = (ours(x.double()) - reference(x.double())).abs().max().item()
    assert diff64 <= 1e-10


def test_auto_detects_timm_checkpoint_and_global_pool_avg() -> None:
    reference = _random_timm(
        "vit_tiny_patch16_224", img_size=64, global_pool="avg", class_token=False, depth=2
    )
    ours = tokenmixers.create_model(
        "vit_tiny_patch16_224", img_size=64, global_pool="avg", class_token=False, depth=2
    ).eval()
    assert tokenmixers.load_weights(ours, reference.state_dict()) == "timm"
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        assert torch.allclose(ours(x), reference(x), atol=1e-5, rtol=0)
        assert torch.allclose(
            ours.forward_head(ours.forward_features(x), pre_logits=True),
            reference.forward_head(reference.forward_features(x), pre_logits=True),
            atol=1e-5, rtol=0,
        )


def test_forward_intermediates_match_timm() -> None:
    reference = _random_timm("vit_tiny_patch16_224", img_size=64, depth=3)
    ours = tokenmixers.create_model("vit_tiny_patch16_224", img_size=64, depth=3).eval()
    tokenmixers.load_weights(ours, reference.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        ref = reference.forward_intermediates(x, indices=[0, 2], intermediates_only=True)
        got = ours.forward_intermediates(x, indices=[0, 2], intermediates_only=True)
    assert len(got) == 2
    for a, b in zip(got, ref):
        assert a.shape == b.shape == (2, 192, 4, 4)
        assert torch.allclose(a, b, atol=1e-5, rtol=0)
