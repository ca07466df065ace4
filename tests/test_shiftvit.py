"""ShiftViT: parameter counts, the shift itself, and the authors' reference vectors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import tokenmixers
from tokenmixers.families.shiftvit import convert_official
from tokenmixers.mixers import create_mixer
from tokenmixers.mixers.shift import ShiftMixer
from tokenmixers.zoo import ZOO

REFERENCE = Path(__file__).parent / "data" / "reference"
CASES = sorted(p.name.removesuffix(".json") for p in REFERENCE.glob("shiftvit_*.json"))

# The numbers (ImageNet head), checked against the zoo and against the models.
PARAMS = {
    "shiftvit_tiny_light": 19_608_328,
    "shiftvit_tiny": 28_566_664,
    "shiftvit_small_light": 33_796_360,
    "shiftvit_small": 50_304_136,
    "shiftvit_base_light": 59_708_776,
    "shiftvit_base": 89_026_408,
    "shiftvit_tiny_r4": 31_426_312,
    "shiftvit_small_r4": 51_523_336,
    "shiftvit_base_r4": 87_271_528,
}


def test_parameter_counts_are_exact() -> None:
    assert {n: ZOO[n].paper.params for n in PARAMS} == PARAMS
    assert tokenmixers.list_models("shiftvit*") == sorted(PARAMS)
    for name, expected in PARAMS.items():
        with torch.device("meta"):
            model = tokenmixers.create_model(name)
        assert sum(p.numel() for p in model.parameters()) == expected, name


# -- the shift -------------------------------------------------------------------------------
def test_shift_on_a_hand_made_tensor() -> None:
    # C = 9, n_div = 4 -> g = 2: channels 0-1 move left, 2-3 right, 4-5 up, 6-7 down, 8 stays.
    # Pixel (i, j) of channel k holds 100*k + (4*i + j + 1), so no input value is 0.
    h, w, c = 3, 4, 9
    pixels = torch.arange(1, h * w + 1, dtype=torch.float32).reshape(h, w)
    x = torch.stack([pixels + 100 * k for k in range(c)], dim=-1)  # [H, W, C]
    out = ShiftMixer(c, n_div=4)(x.reshape(1, h * w, c), (h, w)).reshape(h, w, c)

    left = [[2, 3, 4, 0], [6, 7, 8, 0], [10, 11, 12, 0]]
    right = [[0, 1, 2, 3], [0, 5, 6, 7], [0, 9, 10, 11]]
    up = [[5, 6, 7, 8], [9, 10, 11, 12], [0, 0, 0, 0]]
    down = [[0, 0, 0, 0], [1, 2, 3, 4], [5, 6, 7, 8]]
    for k, moved in enumerate([left, left, right, right, up, up, down, down]):
        expected = torch.tensor(moved, dtype=torch.float32)
        expected = torch.where(expected > 0, expected + 100 * k, 0.0)  # vacated pixels are 0
        assert torch.equal(out[..., k], expected), k
    assert torch.equal(out[..., 8], x[..., 8])


def test_shift_group_is_floor_division_and_prefix_tokens_pass_through() -> None:
    # C = 30, n_div = 12 -> g = 2: channels 8.. unchanged; a prefix token is left alone.
    mixer = create_mixer("shift", 30, grid=(4, 5), n_div=12)
    assert sum(p.numel() for p in mixer.parameters()) == 0
    x = torch.randn(2, 1 + 20, 30)
    out = mixer(x, (4, 5))
    assert torch.equal(out[:, 0], x[:, 0])
    assert torch.equal(out[:, 1:, 8:], x[:, 1:, 8:])
    g = x[:, 1:].reshape(2, 4, 5, 30)
    o = out[:, 1:].reshape(2, 4, 5, 30)
    assert torch.equal(o[:, :, :-1, 0:2], g[:, :, 1:, 0:2])
    assert not o[:, :, -1, 0:2].any()
    assert torch.equal(o[:, 1:, :, 6:8], g[:, :-1, :, 6:8])
    assert not o[:, 0, :, 6:8].any()


# -- the authors' reference vectors ---------------------------------------------------------
def _case(stem: str) -> tuple[dict, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    meta = json.loads((REFERENCE / f"{stem}.json").read_text())
    weights = load_file(str(REFERENCE / f"{stem}.weights.safetensors"))
    io = load_file(str(REFERENCE / f"{stem}.io.safetensors"))
    return meta, weights, io


def _build(meta: dict) -> tokenmixers.Backbone:
    # The authors' constructor arguments are our overrides, unchanged.
    return tokenmixers.create_model("shiftvit_tiny", **meta["constructor_kwargs"]).eval()


def test_reference_cases_present() -> None:
    assert len(CASES) >= 2, f"reference vectors missing from {REFERENCE}"


@pytest.mark.parametrize("stem", CASES)
def test_logits_match_the_authors_model(stem: str) -> None:
    meta, weights, io = _case(stem)
    model = _build(meta)
    assert sum(p.numel() for p in model.parameters()) == meta["num_params"]
    assert {k: list(v.shape) for k, v in weights.items()} == dict(meta["state_dict"])
    assert tokenmixers.load_weights(model, weights, source="official") == "official"
    with torch.inference_mode():
        diff32 = (model(io["input"]) - io["logits_fp32"]).abs().max().item()
    assert diff32 <= 1e-4
    model.double()
    with torch.inference_mode():
        diff64 = (model(io["input"].double()) - io["logits_fp64"]).abs().max().item()
    assert diff64 <= 1e-9


def test_official_checkpoint_is_detected_and_converts_every_key() -> None:
    meta, weights, _ = _case(CASES[0])
    model = _build(meta)
    assert tokenmixers.load_weights(model, weights) == "official"  # source="auto"
    converted = convert_official(weights)
    assert set(converted) == set(model.state_dict())
    assert converted["stages.1.downsample.conv.weight"].shape == weights[
        "layers.0.downsample.reduction.weight"
    ].shape
    assert converted["stages.0.blocks.0.mlp.fc1.weight"].ndim == 2


def _authors_forward(state: dict[str, torch.Tensor], x: torch.Tensor, n_div: int) -> torch.Tensor:
    """The authors' architecture written out in NCHW on their state dict: an oracle that runs
    at any input size (their model itself is only stored as reference vectors)."""

    def gn(t: torch.Tensor, prefix: str) -> torch.Tensor:
        return F.group_norm(t, 1, state[f"{prefix}.weight"], state[f"{prefix}.bias"], 1e-5)

    def shift(t: torch.Tensor) -> torch.Tensor:
        g = t.shape[1] // n_div
        out = torch.zeros_like(t)
        out[:, :g, :, :-1] = t[:, :g, :, 1:]
        out[:, g : 2 * g, :, 1:] = t[:, g : 2 * g, :, :-1]
        out[:, 2 * g : 3 * g, :-1, :] = t[:, 2 * g : 3 * g, 1:, :]
        out[:, 3 * g : 4 * g, 1:, :] = t[:, 3 * g : 4 * g, :-1, :]
        out[:, 4 * g :] = t[:, 4 * g :]
        return out

    x = F.conv2d(x, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], stride=4)
    x = gn(x, "patch_embed.norm")
    i = 0
    while f"layers.{i}.blocks.0.norm2.weight" in state:
        j = 0
        while (p := f"layers.{i}.blocks.{j}") + ".norm2.weight" in state:
            x = shift(x)
            y = gn(x, p + ".norm2")
            y = F.conv2d(y, state[p + ".mlp.fc1.weight"], state[p + ".mlp.fc1.bias"])
            y = F.conv2d(F.gelu(y), state[p + ".mlp.fc2.weight"], state[p + ".mlp.fc2.bias"])
            x = x + y
            j += 1
        if f"layers.{i}.downsample.norm.weight" in state:
            x = gn(x, f"layers.{i}.downsample.norm")
            x = F.conv2d(x, state[f"layers.{i}.downsample.reduction.weight"], stride=2)
        i += 1
    x = gn(x, "norm").mean(dim=(2, 3))
    return F.linear(x, state["head.weight"], state["head.bias"])


@pytest.mark.parametrize("size", [(64, 96), (96, 32)])
def test_non_square_input_matches_the_written_out_reference(size: tuple[int, int]) -> None:
    meta, weights, io = _case("shiftvit_small_cfg")
    model = _build(meta)
    tokenmixers.load_weights(model, weights, source="official")
    state = {k: v.double() for k, v in weights.items()}
    # The written-out oracle reproduces the reference vector first...
    ref = _authors_forward(state, io["input"].double(), meta["constructor_kwargs"]["n_div"])
    assert (ref - io["logits_fp64"]).abs().max().item() <= 1e-9
    # ...then judges a non-square input the stored vectors do not cover.
    x = torch.randn(2, 3, *size)
    with torch.inference_mode():
        ours = model(x)
        ref = _authors_forward(state, x.double(), meta["constructor_kwargs"]["n_div"])
    assert ours.shape == (2, meta["constructor_kwargs"]["num_classes"])
    assert (ours.double() - ref).abs().max().item() <= 1e-4


def test_sizes_the_strides_do_not_allow_get_a_clear_error() -> None:
    model = tokenmixers.create_model("shiftvit_tiny", embed_dim=16, depths=(1, 1, 1, 1)).eval()
    with pytest.raises(ValueError, match=r"multiples of 32, got 64x80.*width 80 -> 64 or 96"):
        model(torch.randn(1, 3, 64, 80))
    with pytest.raises(ValueError, match=r"height 16 -> at least 32"):
        model(torch.randn(1, 3, 16, 32))


def test_block_topology_and_norm() -> None:
    model = tokenmixers.create_model("shiftvit_tiny", embed_dim=16, depths=(1, 1, 1, 1))
    block = model.stages[0].blocks[0]
    assert not block.mixer_residual and isinstance(block.norm1, torch.nn.Identity)
    assert isinstance(block.mixer, ShiftMixer) and block.mixer.n_div == 12
    assert type(block.norm2).__name__ == "GroupNorm1" and block.norm2.eps == 1e-5
    assert isinstance(model.stages[0].downsample, torch.nn.Identity)
    assert model.stages[1].downsample.conv.bias is None
    assert [s.blocks[0].mlp.fc1.out_features for s in model.stages] == [32, 64, 128, 256]  # tau = 2


@pytest.mark.parametrize("shape", [(3, 5, 4, 6), (1, 5, 4, 6), (2, 7, 6)])
def test_group_norm1_is_nn_group_norm_channels_last(shape: tuple[int, ...]) -> None:
    """Every path of GroupNorm1 (the fused layer_norm with the affine expanded, the affine
    after the norm when training at batch 1, the channels-first form under jit tracing)
    equals nn.GroupNorm(1, C) on the channels-first tensor, values and gradients."""
    from tokenmixers.layers import GroupNorm1

    torch.manual_seed(0)
    c = shape[-1]
    ours, ref = GroupNorm1(c), torch.nn.GroupNorm(1, c)
    with torch.no_grad():
        for p in (*ours.parameters(), *ref.parameters()):
            p.copy_(torch.randn_like(p))
        ref.load_state_dict(ours.state_dict())
    x = torch.randn(shape, dtype=torch.float64) * 3 + 1
    ours, ref = ours.double(), ref.double()
    xo, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    want = ref(xr.movedim(-1, 1)).movedim(1, -1)
    got = ours(xo)
    assert got.shape == x.shape and torch.allclose(got, want, atol=1e-12)
    g = torch.randn_like(want)
    want.backward(g)
    got.backward(g)
    assert torch.allclose(xo.grad, xr.grad, atol=1e-10)
    assert torch.allclose(ours.weight.grad, ref.weight.grad, atol=1e-10)
    assert torch.allclose(ours.bias.grad, ref.bias.grad, atol=1e-10)
    with torch.no_grad():
        assert torch.allclose(ours(x), want, atol=1e-12)
    traced = torch.jit.trace(ours, (x,), check_trace=False)
    assert torch.allclose(traced(x), want, atol=1e-12)
    plain = GroupNorm1(c, affine=False).double()
    assert torch.allclose(plain(x), torch.nn.GroupNorm(1, c, affine=False).double()(
        x.movedim(-1, 1)).movedim(1, -1), atol=1e-12)
