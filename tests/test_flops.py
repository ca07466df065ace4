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


@pytest.mark.parametrize(
    ("union", "bidirectional", "rnn_type", "gates"),
    [("cat", True, "lstm", 4), ("add", True, "lstm", 4), ("vertical", False, "lstm", 4),
     ("cat", True, "gru", 3), ("horizontal", True, "rnn", 1)],
)
def test_lstm2d_closed_form(union: str, bidirectional: bool, rnn_type: str, gates: int) -> None:
    c, hidden, grid = 16, 4, (3, 5)
    mixer = create_mixer("lstm2d", c, grid=grid, hidden_size=hidden, union=union,
                         bidirectional=bidirectional, rnn_type=rnn_type)
    pixels = grid[0] * grid[1]
    directions = 2 if bidirectional else 1
    rnns = 2 if union in ("cat", "add") else 1
    # every RNN visits each pixel once per direction: gates x (input + hidden) x hidden
    recurrent = rnns * directions * pixels * gates * (c + hidden) * hidden
    fc_in = directions * hidden * (2 if union == "cat" else 1)
    assert mixer.macs(grid, 0) == recurrent + pixels * fc_in * c
    # PyTorch's operator counter sees only the fusion Linear of an LSTM on CPU
    if rnn_type == "lstm":
        with FlopCounterMode(display=False) as counter:
            mixer(torch.randn(1, pixels, c), grid)
        assert counter.get_total_flops() // 2 == pixels * fc_in * c


@pytest.mark.parametrize("backend", ["parallel", "chunkwise", "recurrent"])
@pytest.mark.parametrize("conv", ["causal1d", "2d"])
def test_mlstm_closed_form(backend: str, conv: str) -> None:
    dim, grid, heads, chunk = 16, (6, 5), 4, 8  # S = 30: chunks of 6 (a divisor), C = 5
    mixer = create_mixer("mlstm", dim, grid=grid, backend=backend, conv=conv, chunk_size=chunk)
    e, s, d = 2 * dim, 30, 2 * dim // heads
    kernel = 4 if conv == "causal1d" else 9
    shared = s * (dim * 2 * e + e * dim)  # proj_up, proj_down
    per_scan = s * (e * kernel + 3 * e * 4 + 2 * 3 * e * heads)  # conv, q/k/v 4x4 blocks, gates
    cell = {
        "parallel": 2 * s * s * d,
        "chunkwise": 2 * 5 * 6 * 6 * d + 2 * s * d * (d + 1) + 5 * 5 * d * (d + 1),
        "recurrent": 2 * s * d * (d + 1),
    }[backend]
    assert mixer.macs(grid, 0) == shared + per_scan + heads * cell
    both_ways = create_mixer("mlstm", dim, grid=grid, backend=backend, conv=conv,
                             chunk_size=chunk, traversals=("row", "row_reversed"))
    assert both_ways.macs(grid, 0) == shared + 2 * (per_scan + heads * cell)


def test_shift_costs_nothing() -> None:
    mixer = create_mixer("shift", 24, grid=(4, 4), n_div=12)
    assert mixer.macs((4, 4), 0) == 0
    with FlopCounterMode(display=False) as counter:
        mixer(torch.randn(1, 16, 24), (4, 4))
    assert counter.get_total_flops() == 0


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


PUBLISHED_GMACS = {  # at 224, from the papers (ViL-T: fvcore on the authors' parallel form)
    "vit_small_patch16_224": 4.6,
    "mixer_s16_224": 3.8,
    "shiftvit_tiny": 4.6,
    "sequencer2d_s": 8.4,
    "vil_tiny": 1.9,
}


@pytest.mark.parametrize(("name", "gmacs"), sorted(PUBLISHED_GMACS.items()))
def test_published_figures_within_5_percent(name: str, gmacs: float) -> None:
    kwargs = {"backend": "parallel"} if name.startswith("vil") else {}
    got = count_macs(tokenmixers.create_model(name, **kwargs)).total / 1e9
    assert got == pytest.approx(gmacs, rel=0.05)
