"""Vision Mamba (Vim): the authors' outputs with every scan form, the official parameter
counts, the class token's place in the scanned sequence, the scan forms against each other
(values and gradients, long sequences), the closed-form MACs against a count of the
reference form's arithmetic, precision, and training from the CLI."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

import tokenmixers
from tokenmixers.cli import main
from tokenmixers.families.vim import _middle_row_first
from tokenmixers.mixers import bimamba as bm
from tokenmixers.mixers.base import create_mixer
from tokenmixers.zoo import ZOO

REFERENCE = Path(__file__).parent / "data" / "reference"
STEM = "vim_small_cfg"
FORMS = [("reference", 32), ("recurrent", 32), ("chunked", 32), ("chunked", 5), ("auto", 32)]
TINY = {"img_size": 32, "patch_size": 8, "stride": 8, "embed_dim": 16, "depth": 2,
        "num_classes": 10}


def reference_model() -> tuple[tokenmixers.Backbone, dict[str, torch.Tensor]]:
    case = json.loads((REFERENCE / f"{STEM}.json").read_text())
    kw = case["constructor_kwargs"]
    assert (kw["bimamba_type"], kw["use_middle_cls_token"], kw["if_divide_out"]) == (
        "v2", True, True)
    args = {k: kw[k] for k in ("img_size", "patch_size", "stride", "depth", "embed_dim",
                               "d_state", "channels", "num_classes")}
    model = tokenmixers.create_model("vim_tiny", **args)
    weights = load_file(str(REFERENCE / f"{STEM}.weights.safetensors"))
    assert {k: list(v.shape) for k, v in weights.items()} == dict(case["state_dict"])
    assert tokenmixers.load_weights(model, weights, source="official") == "official"
    assert sum(p.numel() for p in model.parameters()) == case["num_params"]
    return model.eval(), load_file(str(REFERENCE / f"{STEM}.io.safetensors"))


@pytest.fixture(scope="module")
def reference():
    return reference_model()


@pytest.mark.parametrize(("scan", "chunk_size"), FORMS)
def test_matches_the_authors_logits(reference, scan: str, chunk_size: int) -> None:
    model, io = reference
    assert bm.set_scan(model, scan, chunk_size=chunk_size) == 4
    try:
        with torch.no_grad():
            out32 = model(io["input"])
            assert (out32 - io["logits_fp32"]).abs().max() <= 1e-4
            out64 = model.double()(io["input"].double())
            assert out64.dtype == torch.float64
            assert (out64 - io["logits_fp64"]).abs().max() <= 1e-9
    finally:
        model.float()


def test_official_parameter_counts() -> None:
    counts = {"vim_tiny": 7_148_008, "vim_small": 25_796_584, "vim_base": 97_598_440}
    for name, count in counts.items():
        assert ZOO[name].paper.params == count
        with torch.device("meta"):
            model = tokenmixers.create_model(name)
        assert sum(p.numel() for p in model.parameters()) == count
    assert (ZOO["vim_tiny"].paper.top1, ZOO["vim_small"].paper.top1,
            ZOO["vim_base"].paper.top1) == (76.1, 80.5, 81.9)


# ---- the class token in the middle -------------------------------------------------------
@pytest.mark.parametrize("grid", [(3, 3), (2, 3), (1, 1)])
def test_class_token_sits_at_half_the_patches(grid: tuple[int, int]) -> None:
    """Forward scan only: the class token's output depends on exactly the ⌊M/2⌋ patches
    before it (row-major), so with an odd M one more patch comes after it than before."""
    torch.manual_seed(0)
    mixer = create_mixer("bimamba", 8, grid=grid, num_prefix_tokens=1,
                         bidirectional=False).double().eval()
    m = grid[0] * grid[1]
    x = torch.randn(1, 1 + m, 8, dtype=torch.float64)
    with torch.no_grad():
        base = mixer(x, grid)[0, 0]
        seen = []
        for j in range(m):
            x2 = x.clone()
            x2[0, 1 + j] += 1.0
            seen.append(not torch.allclose(mixer(x2, grid)[0, 0], base, rtol=0, atol=1e-12))
    assert seen == [j < m // 2 for j in range(m)]
    # the backward scan alone sees the rest: the class token and the patches after it
    both = create_mixer("bimamba", 8, grid=grid, num_prefix_tokens=1).double().eval()
    with torch.no_grad():
        base = both(x, grid)[0, 0]
        x2 = x.clone()
        x2[0, -1] += 1.0
        assert not torch.allclose(both(x2, grid)[0, 0], base)


def test_position_embedding_row_of_the_class_token_moves_first() -> None:
    table = torch.arange(10.0).view(1, 10, 1)  # 9 patches (odd): the class row at 4
    assert _middle_row_first(table).flatten().tolist() == [4, 0, 1, 2, 3, 5, 6, 7, 8, 9]
    table = torch.arange(7.0).view(1, 7, 1)  # 6 patches: the class row at 3
    assert _middle_row_first(table).flatten().tolist() == [3, 0, 1, 2, 4, 5, 6]


def test_odd_grid_model_runs_and_the_class_token_is_pooled() -> None:
    model = tokenmixers.create_model("vim_tiny", **{**TINY, "img_size": 40}).eval()
    assert model.grid_size == (5, 5) and model.global_pool == "token"
    with torch.no_grad():
        feats = model.forward_features(torch.randn(2, 3, 40, 40))
        assert feats.shape == (2, 26, 16)
        assert torch.equal(model.forward_head(feats, pre_logits=True), feats[:, 0])


# ---- the scan forms -------------------------------------------------------------------
def _inputs(b: int, length: int, d: int, n: int, dtype: torch.dtype, *, big: bool = False):
    g = torch.Generator().manual_seed(1)
    u = torch.randn(b, length, d, generator=g, dtype=dtype)
    delta = F.softplus(torch.randn(b, length, d, generator=g, dtype=dtype) + (3 if big else -1))
    a = -torch.rand(d, n, generator=g, dtype=dtype) * (16 if big else 4)
    bb = torch.randn(b, length, n, generator=g, dtype=dtype)
    cc = torch.randn(b, length, n, generator=g, dtype=dtype)
    dd = torch.randn(d, generator=g, dtype=dtype)
    return u, delta, a, bb, cc, dd


def _forms():
    return {
        "recurrent": bm.selective_scan_recurrent,
        "chunked-7": lambda *a: bm.selective_scan_chunked(*a, chunk_size=7),
        "chunked-32": lambda *a: bm.selective_scan_chunked(*a, chunk_size=32),
    }


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_scan_forms_agree(dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bm, "_BLOCK_ELEMENTS", 200)  # several cache blocks
    args = _inputs(2, 45, 5, 3, dtype)
    want = bm.selective_scan_reference(*args)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    for name, form in _forms().items():
        got = form(*args)
        assert got.dtype == dtype
        assert torch.allclose(got, want, rtol=tol, atol=tol), name


def test_long_sequences_stay_finite_and_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    """4,096 steps with large steps Δ and strong decays (exp(ΔA) underflows to 0): nothing
    overflows in float32, and every form equals the float64 reference."""
    args64 = _inputs(1, 4096, 3, 16, torch.float64, big=True)
    want = bm.selective_scan_reference(*args64)
    args32 = [a.float() for a in args64]
    for name, form in _forms().items():
        got = form(*args32)
        assert torch.isfinite(got).all(), name
        assert torch.allclose(got.double(), want, rtol=1e-4, atol=1e-4), name
    # and with mild decays the state carries the whole way
    args64 = _inputs(1, 4096, 3, 4, torch.float64)
    want = bm.selective_scan_reference(*args64)
    for name, form in _forms().items():
        assert torch.allclose(form(*args64), want, rtol=1e-10, atol=1e-10), name


def test_gradients_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bm, "_BLOCK_ELEMENTS", 40)
    args = [t.requires_grad_() for t in _inputs(2, 13, 3, 4, torch.float64)]
    weights = torch.randn(2, 13, 3, dtype=torch.float64)

    def grads(form) -> list[torch.Tensor]:
        return list(torch.autograd.grad((form(*args) * weights).sum(), args))

    want = grads(bm.selective_scan_reference)
    for name, form in _forms().items():
        for got, ref in zip(grads(form), want):
            assert torch.allclose(got, ref, rtol=1e-10, atol=1e-12), name
    # the hand-written backward of the recurrent form, against finite differences
    assert torch.autograd.gradcheck(bm.selective_scan_recurrent, args)


def test_model_gradients_agree_across_forms() -> None:
    torch.manual_seed(0)
    model = tokenmixers.create_model("vim_tiny", **TINY, drop_path_rate=0.0).double()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    grads = {}
    for scan in ("reference", "recurrent", "chunked"):
        bm.set_scan(model, scan, chunk_size=3)
        model.zero_grad()
        model(x).square().sum().backward()
        grads[scan] = {n: p.grad.clone() for n, p in model.named_parameters()}
    for scan in ("recurrent", "chunked"):
        for n, g in grads[scan].items():
            assert torch.allclose(g, grads["reference"][n], rtol=1e-8, atol=1e-10), (scan, n)


# ---- MACs ------------------------------------------------------------------------------
class _ElementwiseProducts(TorchDispatchMode):
    """Counts the elements of every elementwise multiplication's result."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket in (torch.ops.aten.mul, torch.ops.aten.mul_,
                                   torch.ops.aten.div, torch.ops.aten.addcmul_):
            self.counts["mul"] += out.numel()
        return out


@pytest.mark.parametrize(("grid", "prefix", "options"), [
    ((3, 4), 1, {}),
    ((3, 3), 0, {}),
    ((2, 5), 1, {"bidirectional": False}),
    ((2, 3), 1, {"divide_out": False, "d_state": 5, "d_conv": 3, "dt_rank": 2}),
])
def test_macs_equal_a_count_of_the_reference_form(grid, prefix, options) -> None:
    """Products (matrix products and the depthwise conv, by PyTorch's counter) plus the
    elementwise multiplications of the reference form equal the closed form."""
    torch.manual_seed(0)
    mixer = create_mixer("bimamba", 16, grid=grid, num_prefix_tokens=prefix, scan="reference",
                         **options).double()
    x = torch.randn(1, prefix + grid[0] * grid[1], 16, dtype=torch.float64)
    with torch.no_grad(), FlopCounterMode(display=False) as flops, _ElementwiseProducts() as ew:
        mixer(x, grid)
    assert mixer.macs(grid, prefix) == flops.get_total_flops() // 2 + ew.counts["mul"]


def test_model_macs_count_the_mixers() -> None:
    from tokenmixers.flops import count_macs

    model = tokenmixers.create_model("vim_tiny", **TINY)
    macs = count_macs(model, 32)
    per_block = model.blocks[0].mixer.macs((4, 4), 1)
    assert macs.by_mixer == {"BiMambaMixer": 2 * per_block}


# ---- precision, options, training ------------------------------------------------------
def test_autocast_runs_the_scan_in_float32() -> None:
    torch.manual_seed(0)
    model = tokenmixers.create_model("vim_tiny", **TINY).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = model(x)
    assert torch.isfinite(got).all()
    assert (got.float() - want).abs().max() < 0.1 * want.abs().max() + 0.05


def test_variants_and_options() -> None:
    no_cls = tokenmixers.create_model("vim_tiny", **TINY, if_cls_token=False)
    assert no_cls.num_prefix_tokens == 0 and no_cls.global_pool == "avg"
    last = tokenmixers.create_model("vim_tiny", **TINY, if_cls_token=False,
                                    final_pool_type="none")
    assert last.global_pool == "last"
    forward_only = tokenmixers.create_model("vim_tiny", **TINY, bimamba_type="none")
    assert not any(n.endswith("_b_log") for n, _ in forward_only.named_parameters())
    for model in (no_cls, last, forward_only):
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    assert "blocks.0.mixer.A_log" in no_cls.no_weight_decay()
    model = tokenmixers.create_model("vim_tiny", **TINY, channels=1)
    assert model.patch_embed.in_chans == 1
    with pytest.raises(ValueError, match="bimamba_type must be 'v2'"):
        tokenmixers.create_model("vim_tiny", bimamba_type="v1")
    with pytest.raises(ValueError, match="scan must be one of"):
        tokenmixers.create_model("vim_tiny", scan="fast")
    with pytest.raises(ValueError, match="ssm_cfg: unknown options"):
        tokenmixers.create_model("vim_tiny", ssm_cfg={"d_stat": 8})
    with pytest.raises(ValueError, match="in_chans=1 and channels=4 disagree"):
        tokenmixers.create_model("vim_tiny", in_chans=1, channels=4)


def test_init_follows_the_authors() -> None:
    torch.manual_seed(0)
    mixer = create_mixer("bimamba", 32, grid=(2, 2), num_layers=4)
    assert torch.equal(mixer.A_log[0], torch.arange(1, 17.0).log())
    assert torch.equal(mixer.A_b_log, mixer.A_log) and torch.all(mixer.D == 1)
    dt = F.softplus(mixer.dt_proj.bias)
    assert dt.min() >= 1e-4 - 1e-9 and dt.max() <= 0.1 + 1e-6
    assert torch.all(mixer.dt_proj_b.bias == 0)  # as the authors' model-wide init leaves it
    # out_proj: Kaiming uniform (bound 1/sqrt(fan_in)) scaled by 1/sqrt(num_layers)
    assert mixer.out_proj.weight.abs().max() <= (1 / 64**0.5) / 2
    same = create_mixer("bimamba", 32, grid=(2, 2), backward_dt_init="forward")
    assert F.softplus(same.dt_proj_b.bias).max() <= 0.1 + 1e-6


def test_trains_from_the_cli(tmp_path: Path) -> None:
    run = tmp_path / "run"
    argv = ["train", "--model", "vim_tiny", "--model-kwargs", "patch_size=4", "stride=4",
            "embed_dim=16", "depth=2", "--data", "mnist5k", "--limit-train", "512",
            "--limit-val", "128", "--batch-size", "32", "--epochs", "2", "--lr", "3e-3",
            "--warmup-epochs", "0", "--threads", "1", "--progress", "none",
            "--output", str(run)]
    assert main(argv) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2
    assert all(math.isfinite(r["train_loss"]) for r in records)
    assert records[-1]["val_loss"] < records[0]["train_loss"]
    assert records[-1]["top1"] > 20.0  # above chance (10%) after 2 short epochs (~37% seen)


def test_joins_compare_through_the_registry(tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    assert main(["compare", "--skeleton", "isotropic", "--mixers", "bimamba,identity",
                 "--epochs", "1", "--seeds", "1", "--limit-train", "64", "--limit-val", "32",
                 "--batch-size", "16", "--eval-sizes", "28", "--bench-sizes", "28",
                 "--bench-batch-size", "4", "--threads", "1", "--progress", "none",
                 "--out", str(out)]) == 0
    record = json.loads((out / "bimamba" / "seed0" / "compare.json").read_text())
    assert record["mixer"] == "bimamba" and record["eval"][0]["top1"] is not None
    assert "bidirectional Mamba (Vision Mamba)" in (out / "report.md").read_text()
