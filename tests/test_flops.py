"""MAC counts: each mixer's closed form against the equations, whole models against the
published figures, and the operator-level counter where it sees everything."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import tokenmixers
from tokenmixers import create_mixer
from tokenmixers.flops import count_macs


def test_attention_closed_form() -> None:
    n, c, heads, prefix = 4 * 5, 24, 3, 1
    mixer = create_mixer("attention", c, grid=(4, 5), num_heads=heads)
    tokens = n + prefix
    # qkv projection + QKᵀ (per head N·N·d, d = C/heads) + AV + output projection
    expected = tokens * c * 3 * c + heads * tokens * tokens * (c // heads) * 2 + tokens * c * c
    assert mixer.macs((4, 5), prefix) == expected
    # the operator counter sees the two projections but not the fused attention kernel
    with FlopCounterMode(display=False) as counter:
        mixer(torch.randn(1, tokens, c), (4, 5))
    assert counter.get_total_flops() // 2 == tokens * c * 3 * c + tokens * c * c


def test_token_mlp_closed_form_equals_operator_count() -> None:
    mixer = create_mixer("token_mlp", 16, grid=(3, 4), mlp_ratio=0.5)
    expected = 16 * (12 * 8 + 8 * 12)  # per channel: Linear(12->8), Linear(8->12)
    assert mixer.macs((3, 4), 0) == expected
    with FlopCounterMode(display=False) as counter:
        mixer(torch.randn(1, 12, 16), (3, 4))
    assert counter.get_total_flops() // 2 == expected


def test_model_count_splits_mixer_and_rest() -> None:
    model = tokenmixers.create_model(
        "vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
        num_classes=10,
    )
    macs = count_macs(model)
    n = 17
    per_block_mixer = n * 32 * 96 + 2 * n * n * 32 + n * 32 * 32
    per_block_mlp = n * 32 * 128 * 2
    stem = 16 * 3 * 64 * 32
    assert macs.mixer == 2 * per_block_mixer
    assert macs.other == 2 * per_block_mlp + stem + 32 * 10
    assert macs.total == macs.mixer + macs.other and macs.flops == 2 * macs.total
    assert macs.by_mixer == {"AttentionMixer": macs.mixer}
    # the count follows the input size
    assert count_macs(model, 48).total > macs.total


PUBLISHED_GMACS = {  # at 224, from the papers / the issue
    "vit_small_patch16_224": 4.6,
    "mixer_s16_224": 3.8,
}


@pytest.mark.parametrize(("name", "gmacs"), sorted(PUBLISHED_GMACS.items()))
def test_published_figures_within_5_percent(name: str, gmacs: float) -> None:
    with torch.device("cpu"):
        got = count_macs(tokenmixers.create_model(name)).total / 1e9
    assert got == pytest.approx(gmacs, rel=0.05)
