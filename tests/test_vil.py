"""Vision-LSTM (v1 and v2): the authors' outputs with every backend, parameter counts, the
scan-direction semantics, resolution independence (v2), overlapping patches, and the
paper's design options (block directions, poolings)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import tokenmixers
from tokenmixers.layers import interpolate_pos_embed_grid
from tokenmixers.mixers.mlstm.layer import BlockDiagonalLinear, MLSTMMixer, set_mlstm_backend
from tokenmixers.zoo import ZOO

REFERENCE = Path(__file__).parent / "data" / "reference"
CASES = {"vil1_small_cfg": "vil_tiny", "vil2_small_cfg": "vil2_tiny"}
# (backend, chunk size): chunk 7 cuts the 64-token sequence into 10 padded chunks.
BACKENDS = [("parallel", 64), ("chunkwise", 64), ("chunkwise", 7), ("recurrent", 64),
            ("auto", 64)]
VIL_NAMES = sorted(n for n, s in ZOO.items() if s.family in ("vil", "vil2"))


def reference_model(stem: str) -> tuple[tokenmixers.Backbone, dict[str, torch.Tensor]]:
    """Our model for a reference case, built from the authors' constructor arguments."""
    case = json.loads((REFERENCE / f"{stem}.json").read_text())
    kw = case["constructor_kwargs"]
    in_chans, height, width = kw["input_shape"]
    model = tokenmixers.create_model(
        CASES[stem], dim=kw["dim"], depth=kw["depth"], patch_size=kw["patch_size"],
        img_size=(height, width), in_chans=in_chans, num_classes=kw["output_shape"][0],
    )
    weights = load_file(str(REFERENCE / f"{stem}.weights.safetensors"))
    assert {k: list(v.shape) for k, v in weights.items()} == dict(case["state_dict"])
    assert tokenmixers.load_weights(model, weights, source="official") == "official"
    assert sum(p.numel() for p in model.parameters()) == case["num_params"]
    return model.eval(), load_file(str(REFERENCE / f"{stem}.io.safetensors"))


@pytest.fixture(scope="module", params=sorted(CASES))
def reference(request: pytest.FixtureRequest):
    return reference_model(request.param)


@pytest.mark.parametrize(("backend", "chunk_size"), BACKENDS)
def test_matches_the_authors_logits(reference, backend: str, chunk_size: int) -> None:
    model, io = reference
    set_mlstm_backend(model, backend, chunk_size=chunk_size)
    try:
        with torch.no_grad():
            out32 = model(io["input"])
            assert (out32 - io["logits_fp32"]).abs().max() <= 1e-4
            out64 = model.double()(io["input"].double())
            assert (out64 - io["logits_fp64"]).abs().max() <= 1e-9
    finally:
        model.float()


@pytest.mark.parametrize("name", VIL_NAMES)
def test_parameter_count_is_the_paper_fact(name: str) -> None:
    with torch.device("meta"):
        model = tokenmixers.create_model(name)
    assert sum(p.numel() for p in model.parameters()) == ZOO[name].paper.params


def test_backend_at_build_time_and_on_a_built_model() -> None:
    model = tokenmixers.create_model("vil_tiny", dim=32, depth=2, img_size=64, patch_size=8,
                                     backend="chunkwise")
    mixers = [m for m in model.modules() if isinstance(m, MLSTMMixer)]
    assert [m.backend for m in mixers] == ["chunkwise", "chunkwise"]
    assert set_mlstm_backend(model, "recurrent") == 2
    assert {m.backend for m in mixers} == {"recurrent"}
    with pytest.raises(ValueError, match="unknown mLSTM backend"):
        set_mlstm_backend(model, "fast")
    with pytest.raises(ValueError, match="unknown backend"):
        tokenmixers.create_model("vil_tiny", backend="fast")


@pytest.mark.parametrize("conv", ["causal1d", "2d"])
def test_reversed_scan_is_the_flipped_forward_scan(conv: str) -> None:
    # The authors flip the sequence before proj_up and proj_down's output back; a
    # row-major grid read backwards is the grid turned by 180°, so the 2d conv agrees.
    torch.set_default_dtype(torch.float64)
    try:
        fwd = MLSTMMixer(16, conv=conv, bias=True, traversals=("row",))
        bwd = MLSTMMixer(16, conv=conv, bias=True, traversals=("row_reversed",))
    finally:
        torch.set_default_dtype(torch.float32)
    bwd.load_state_dict(fwd.state_dict())
    x = torch.randn(2, 20, 16, dtype=torch.float64)
    torch.testing.assert_close(bwd(x, (4, 5)), fwd(x.flip(1), (4, 5)).flip(1))


def test_scan_directions_are_causal() -> None:
    mixer = MLSTMMixer(16, traversals=("row",)).double()
    back = MLSTMMixer(16, traversals=("row_reversed",)).double()
    x = torch.randn(1, 12, 16, dtype=torch.float64)
    y = x.clone()
    y[:, 7] += 1.0
    assert torch.equal(mixer(x, (3, 4))[:, :7], mixer(y, (3, 4))[:, :7])
    assert not torch.equal(mixer(x, (3, 4))[:, 7:], mixer(y, (3, 4))[:, 7:])
    assert torch.equal(back(x, (3, 4))[:, 8:], back(y, (3, 4))[:, 8:])


def test_v2_runs_at_another_resolution_with_its_actual_grid() -> None:
    # Built for 64x64 (8x8 patches), run at 96x128: the same as a model built for 96x128
    # whose position table is the bicubically resized one.
    small = tokenmixers.create_model("vil2_tiny", dim=32, depth=1, patch_size=8, img_size=64,
                                     num_classes=10).eval()
    big = tokenmixers.create_model("vil2_tiny", dim=32, depth=1, patch_size=8,
                                   img_size=(96, 128), num_classes=10).eval()
    state = small.state_dict()
    state["pos_embed.embed"] = interpolate_pos_embed_grid(state["pos_embed.embed"], (12, 16))
    big.load_state_dict(state)
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        torch.testing.assert_close(small(x), big(x), rtol=1e-5, atol=1e-5)


def test_overlapping_patches_long_sequence() -> None:
    # Patch 16, stride 8: 27x27 = 729 tokens at 224, the paper's long-sequence fine-tuning.
    model = tokenmixers.create_model("vil2_tiny", dim=16, depth=1, stride=8, num_classes=5,
                                     backend="chunkwise").eval()
    assert model.grid_size == (27, 27)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (1, 729, 16)
        chunkwise = model.forward_head(feats)
        set_mlstm_backend(model, "parallel")
        torch.testing.assert_close(model(x), chunkwise, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("direction", ["unidirectional", "bidirectional", "quad"])
def test_direction_designs_share_the_parameters(direction: str) -> None:
    kw = {"dim": 16, "depth": 2, "patch_size": 8, "img_size": (32, 48), "num_classes": 3}
    base = tokenmixers.create_model("vil_tiny", **kw)
    model = tokenmixers.create_model("vil_tiny", direction=direction, **kw).double().eval()
    assert sum(p.numel() for p in model.parameters()) == sum(
        p.numel() for p in base.parameters()
    )
    x = torch.randn(2, 3, 32, 48, dtype=torch.float64)
    with torch.no_grad():
        out = model(x)
        set_mlstm_backend(model, "recurrent")
        torch.testing.assert_close(model(x), out, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(
    "pooling", ["bilateral_avg", "bilateral_concat", "avg", "middle_patch", "cls_first",
                "cls_middle"],
)
@pytest.mark.parametrize("name", ["vil_tiny", "vil2_tiny"])
def test_poolings(name: str, pooling: str) -> None:
    model = tokenmixers.create_model(name, dim=16, depth=2, patch_size=8, img_size=32,
                                     num_classes=3, pooling=pooling).double().eval()
    assert model.num_prefix_tokens == (1 if pooling.startswith("cls") else 0)
    width = 32 if pooling == "bilateral_concat" else 16
    assert model.head.in_features == width
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        out = model(x)
        set_mlstm_backend(model, "recurrent")
        torch.testing.assert_close(model(x), out, rtol=1e-9, atol=1e-12)


def test_middle_class_token_sits_in_the_middle_of_the_scan() -> None:
    # In a forward scan the first half of the grid is read before a middle class token,
    # so changing the class token leaves those outputs alone (unlike cls_first).
    for position, untouched in (("middle", True), ("first", False)):
        mixer = MLSTMMixer(16, traversals=("row",), cls_position=position).double()
        x = torch.randn(1, 1 + 16, 16, dtype=torch.float64)
        y = x.clone()
        y[:, 0] += 1.0
        same = torch.equal(mixer(x, (4, 4))[:, 1:9], mixer(y, (4, 4))[:, 1:9])
        assert same is untouched, position


def test_official_converter_maps_the_v2_pairs_and_swapped_head_norms() -> None:
    from tokenmixers.families import FAMILIES

    one = torch.zeros(1)
    v2 = FAMILIES["vil2"].converters["official"]({
        "blocks.3.rowwise_from_bot_right.layer.conv.weight": one,
        "blocks.3.rowwise_from_top_left.norm.bias": one,
        "norm.weight": one, "legacy_norm.weight": one,
    })
    assert sorted(v2) == ["blocks.6.norm1.bias", "blocks.7.mixer.conv.weight",
                          "fc_norm.weight", "norm.weight"]
    v1 = FAMILIES["vil"].converters["official"]({
        "blocks.1.layer.conv1d.conv.bias": one, "blocks.1.layer.learnable_skip": one,
        "blocks.1.layer.mlstm_cell.fgate.bias": one, "norm.weight": one,
        "legacy_norm.weight": one,
    })
    assert sorted(v1) == ["blocks.1.mixer.conv.bias", "blocks.1.mixer.fgate.bias",
                          "blocks.1.mixer.skip", "fc_norm.weight", "norm.weight"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(8,), (5, 8), (2, 3, 8), (2, 3, 4, 8)])
def test_block_diagonal_map_is_the_written_equation(shape, dtype) -> None:
    # y_g = W[g] @ x_g + b_g on consecutive groups of 4 channels (W: [C/4, out 4, in 4]),
    # for any leading shape, and its gradients.
    torch.manual_seed(0)
    m = BlockDiagonalLinear(8, bias=True).to(dtype)
    torch.nn.init.normal_(m.bias)
    x = torch.randn(*shape, dtype=dtype, requires_grad=True)
    groups = x.reshape(-1, 2, 4)
    expected = torch.stack([groups[:, g] @ m.weight[g].T for g in range(2)], 1)
    expected = expected.reshape(shape) + m.bias
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(m(x), expected, rtol=tol, atol=tol)
    upstream = torch.randn(shape, dtype=dtype)
    got = torch.autograd.grad((m(x) * upstream).sum(), (x, m.weight, m.bias))
    ref = torch.autograd.grad((expected * upstream).sum(), (x, m.weight, m.bias))
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r, rtol=tol, atol=tol)


def test_training_after_inference_mode() -> None:
    """The cached scan orders are normal tensors, so a model evaluated under
    torch.inference_mode can train afterwards (a reversed block needs an order)."""
    model = tokenmixers.create_model("vil_tiny", img_size=32, patch_size=8, dim=32, depth=2,
                                     num_classes=10)
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        model.eval()(x)
    model.train()(x).sum().backward()
    assert model.blocks[1].mixer.proj_up.weight.grad is not None
