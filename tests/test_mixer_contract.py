"""The mixer contract: a new mixer is one file and one registration, and reaches every
skeleton, the MAC counter, ``bench`` and ``compare`` with no other edit; every registered
mixer keeps the contract (closed-form MACs, shapes, prefix tokens, resolution)."""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import tokenmixers
from tokenmixers.mixers import MIXERS, TokenMixer, create_mixer, register_mixer
from tokenmixers.plugins import ENV_VAR, load_plugins

THROWAWAY = "throwaway_dwconv"
THROWAWAY_SOURCE = '''
"""A mixer of a user's own, in a file of its own: a 3x3 depthwise convolution."""
import torch
from torch import nn

from tokenmixers.mixers import TokenMixer, register_mixer


@register_mixer("throwaway_dwconv")
class DepthwiseConvMixer(TokenMixer):
    label = "3x3 depthwise conv (a test's own)"
    macs_formula = "h·w·C·9"

    def __init__(self, dim: int, *, kernel_size: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        b, n, c = x.shape
        p = n - grid[0] * grid[1]
        y = self.conv(x[:, p:].transpose(1, 2).reshape(b, c, *grid)).flatten(2).transpose(1, 2)
        return torch.cat([x[:, :p], y], dim=1)

    def macs(self, grid: tuple[int, int], num_prefix_tokens: int = 0) -> int:
        k = self.conv.kernel_size
        return grid[0] * grid[1] * self.conv.out_channels * k[0] * k[1]
'''
ISO = {"img_size": 32, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_classes": 10}
HIER = {"img_size": 32, "patch_size": 4, "embed_dims": (16, 32), "depths": (1, 1),
        "num_classes": 10}


@pytest.fixture
def throwaway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[type[TokenMixer]]:
    """The throwaway mixer's file imported as a plugin; unregistered afterwards."""
    monkeypatch.setenv(ENV_VAR, "")  # restored (removed) after the test
    path = tmp_path / "my_dwconv_mixer.py"
    path.write_text(textwrap.dedent(THROWAWAY_SOURCE))
    (module,) = load_plugins([str(path)])
    try:
        yield MIXERS[THROWAWAY]
    finally:
        MIXERS.pop(THROWAWAY, None)
        sys.modules.pop(module.__name__, None)


def test_a_new_mixer_is_one_file_and_one_registration(
    throwaway: type[TokenMixer], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tokenmixers.bench import bench
    from tokenmixers.cli import main
    from tokenmixers.flops import count_macs

    # both generic skeletons
    iso = tokenmixers.create_model("isotropic", mixer=THROWAWAY, **ISO)
    hier = tokenmixers.create_model("hierarchical", mixer=THROWAWAY, **HIER)
    for model in (iso, hier):
        model(torch.randn(2, 3, 32, 32)).sum().backward()
        assert all(type(b.mixer) is throwaway for b in model.modules()
                   if isinstance(b, tokenmixers.Block))

    # the MAC counter: the mixer's own count, and its convolution is not also counted as
    # "other" (the identity-mixer model has the same skeleton and mixes nothing)
    macs = count_macs(iso, 32)
    assert macs.mixer == 2 * 8 * 8 * 32 * 9 and macs.by_mixer == {"DepthwiseConvMixer": macs.mixer}
    skeleton_only = count_macs(tokenmixers.create_model("isotropic", mixer="identity", **ISO), 32)
    assert macs.other == skeleton_only.other and skeleton_only.mixer == 0

    # bench measures it in a fresh process, which learns the mixer from the plugin's file
    (record,) = bench(["isotropic"], [32], batch_size=2, modes=("infer",), threads=1,
                      repeats=1, warmup=0, model_kwargs={"mixer": THROWAWAY, **ISO})
    assert "errors" not in record, record.get("errors")
    assert record["infer_img_s"] > 0 and record["mixer_macs"] == macs.mixer

    # a miniature compare of it beside three registered mixers, from the command line
    out = tmp_path / "cmp"
    assert main(["compare", "--skeleton", "isotropic", "--mixers",
                 f"identity,pool,attention,{THROWAWAY}", "--epochs", "1", "--seeds", "1",
                 "--limit-train", "64", "--limit-val", "32", "--batch-size", "16",
                 "--eval-sizes", "28", "--bench-sizes", "28", "--bench-batch-size", "4",
                 "--threads", "1", "--progress", "none", "--amp", "bf16",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    md = (out / "report.md").read_text()
    for name in ("identity", "pool", "attention", THROWAWAY):
        record = json.loads((out / name / "seed0" / "compare.json").read_text())
        assert record["mixer"] == name and record["model"] == "isotropic"
        assert record["model_config"]["mixer"] == name
        assert record["eval"][0]["top1"] is not None
        bench = json.loads((out / name / "bench.json").read_text())["rows"]
        assert bench[0]["infer_img_s"] > 0
        assert bench[0]["amp"] == "bf16"  # benchmarked as it was trained
        label = MIXERS[name].label
        assert f"| {label} | [isotropic]({name}/) |" in md and label in printed
    # only the mixer differs: identical parameter counts outside the mixers
    params = {n: json.loads((out / n / "seed0" / "compare.json").read_text())["params"]
              for n in ("identity", "pool", "attention")}
    assert params["identity"] == params["pool"] < params["attention"]


def test_compare_names_its_choices(capsys: pytest.CaptureFixture[str]) -> None:
    from tokenmixers.cli import build_parser, main
    from tokenmixers.precision import AMP_CHOICES

    def error(*args: str) -> str:
        assert main(["compare", *args]) == 2
        return capsys.readouterr().err

    assert "add --skeleton isotropic" in error("--mixers", "pool")
    assert "either --models" in error("--skeleton", "isotropic", "--models", "vit",
                                      "--mixers", "pool")
    assert "did you mean pool?" in error("--skeleton", "isotropic", "--mixers", "pools")
    assert "unknown family 'attention'" in error("--models", "attention")
    # one spelling of --amp in every command
    parser = build_parser()
    for command in (["train"], ["eval", "--checkpoint", "x"], ["bench", "--model", "x"],
                    ["compare"]):
        for amp in AMP_CHOICES:
            assert parser.parse_args([*command, "--amp", amp]).amp == amp


def test_registration_checks_the_contract() -> None:
    def register(name: str, **attrs: object) -> None:
        body = {"label": "x", "macs_formula": "0", "forward": lambda self, x, grid: x,
                "macs": lambda self, grid, num_prefix_tokens=0: 0,
                "__init__": lambda self, dim: nn.Module.__init__(self), **attrs}
        register_mixer(name)(type("Candidate", (TokenMixer,), body))

    try:
        with pytest.raises(TypeError, match=r"defines no macs\(grid, num_prefix_tokens\)"):
            register("no_macs", macs=TokenMixer.macs)
        with pytest.raises(TypeError, match="no label"):
            register("no_label", label="")
        with pytest.raises(TypeError, match=r"\*\*kwargs"):
            register("kwargs", __init__=lambda self, dim, **kw: nn.Module.__init__(self))
        with pytest.raises(TypeError, match="needs a `grid`"):
            register("fixed_without_grid", resolution="fixed")
        with pytest.raises(TypeError, match="subclasses tokenmixers.mixers.TokenMixer"):
            register_mixer("plain")(nn.Identity)
        with pytest.raises(ValueError, match="already registered"):
            register("attention")
        for name in ("no_macs", "no_label", "kwargs", "fixed_without_grid", "plain"):
            assert name not in MIXERS
        register("complete")
        assert MIXERS["complete"].name == "complete"
    finally:
        MIXERS.pop("complete", None)


def test_an_unregistered_mixer_names_the_fix() -> None:
    with pytest.raises(ValueError, match=r"did you mean global_filter\?.*--plugin FILE\.py"):
        tokenmixers.create_model("isotropic", mixer="global_filtre", **ISO)


# ---- every registered mixer ------------------------------------------------------------
def _lstm2d_reference(mixer: nn.Module, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """BiLSTM2D from the equations, one matrix product per gate block and step:
    i, f, g, o = x_t W_ihᵀ + b_ih + h W_hhᵀ + b_hh; c = σ(f)c + σ(i)tanh(g); h = σ(o)tanh(c)."""

    def lstm(rnn: nn.LSTM, seq: torch.Tensor, suffix: str) -> torch.Tensor:
        w_ih, w_hh = getattr(rnn, f"weight_ih_l0{suffix}"), getattr(rnn, f"weight_hh_l0{suffix}")
        b = getattr(rnn, f"bias_ih_l0{suffix}") + getattr(rnn, f"bias_hh_l0{suffix}")
        steps = range(seq.shape[1] - 1, -1, -1) if suffix else range(seq.shape[1])
        h = c = seq.new_zeros(seq.shape[0], rnn.hidden_size)
        out = [None] * seq.shape[1]
        for t in steps:
            i, f, g, o = (seq[:, t] @ w_ih.T + h @ w_hh.T + b).chunk(4, dim=-1)
            c = f.sigmoid() * c + i.sigmoid() * g.tanh()
            h = o.sigmoid() * c.tanh()
            out[t] = h
        return torch.stack(out, dim=1)

    def bilstm(rnn: nn.LSTM, seq: torch.Tensor) -> torch.Tensor:
        return torch.cat([lstm(rnn, seq, ""), lstm(rnn, seq, "_reverse")], dim=-1)

    b, _, c = x.shape
    h, w = grid
    g = x.reshape(b, h, w, c)
    v = bilstm(mixer.rnn_v, g.transpose(1, 2).reshape(b * w, h, c))
    v = v.reshape(b, w, h, -1).transpose(1, 2)
    hz = bilstm(mixer.rnn_h, g.reshape(b * h, w, c)).reshape(b, h, w, -1)
    return mixer.fc(torch.cat([v, hz], dim=-1)).reshape(b, h * w, c)


def _mlstm_reference(mixer: nn.Module, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    from tokenmixers.mixers.mlstm import mlstm_layer_reference

    return mlstm_layer_reference(mixer, x, grid)


#: Plain-product forms whose operator count must equal the closed form (and whose values
#: must equal the mixer's). ``None``: the forward itself is plain products.
REFERENCE_FORMS: dict[str, Callable[..., torch.Tensor] | None] = {
    "attention": lambda m, x, grid: m.attend_reference(x),
    "token_mlp": None,
    "random": None,
    "identity": None,
    "shift": None,  # moves memory only: 0 counted, 0 stated
    "lstm2d": _lstm2d_reference,
    "mlstm": _mlstm_reference,
}
#: No plain-product form exists (pooling, FFT): their closed forms are checked against a
#: brute-force count of their own arithmetic in tests/test_control_mixers.py.
NO_PRODUCT_FORM = {"pool", "global_filter"}
#: Scans whose arithmetic is mostly elementwise: their closed forms are checked against a
#: count of products and elementwise multiplications of their reference form
#: (tests/test_vim.py).
ELEMENTWISE_FORM = {"bimamba"}
BUILT_IN = sorted(MIXERS)  # collected before any test registers a throwaway mixer
OPTIONS = {"mlstm": {"backend": "parallel"}, "lstm2d": {"hidden_size": 4}}


def _build(name: str, grid: tuple[int, int], prefix: int) -> nn.Module:
    return create_mixer(name, 16, grid=grid, num_prefix_tokens=prefix, **OPTIONS.get(name, {}))


def test_every_built_in_mixer_has_its_macs_checked() -> None:
    assert set(BUILT_IN) == set(REFERENCE_FORMS) | NO_PRODUCT_FORM | ELEMENTWISE_FORM, (
        "a new built-in mixer needs a plain-product reference form here, or a brute-force "
        "check of its closed form and a place in NO_PRODUCT_FORM"
    )


@pytest.mark.parametrize("name", sorted(REFERENCE_FORMS))
def test_macs_equal_a_brute_force_count(name: str) -> None:
    grid, prefix = (3, 4), (1 if MIXERS[name].prefix_tokens == "mixed" else 0)
    torch.manual_seed(0)
    mixer = _build(name, grid, prefix).double()
    x = torch.randn(1, prefix + 12, 16, dtype=torch.float64)
    form = REFERENCE_FORMS[name]
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        expected = mixer(x, grid) if form is None else form(mixer, x, grid)
    assert mixer.macs(grid, prefix) == counter.get_total_flops() // 2
    with torch.no_grad():
        assert torch.allclose(mixer(x, grid), expected, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", BUILT_IN)
def test_shape_prefix_tokens_and_resolution(name: str) -> None:
    cls = MIXERS[name]
    grid = (4, 4)
    mixer = _build(name, grid, 1).eval()
    x = torch.randn(2, 17, 16)
    with torch.no_grad():
        y = mixer(x, grid)
        assert y.shape == x.shape
        # change the prefix token: a passthrough one comes back as it is and touches nothing
        # else; a mixed one takes part in the mixing of the grid tokens
        x2 = x.clone()
        x2[:, 0] += 1.0
        y2 = mixer(x2, grid)
    if cls.prefix_tokens == "passthrough":
        assert torch.equal(y[:, :1], x[:, :1]) and torch.equal(y2[:, :1], x2[:, :1])
        assert torch.equal(y[:, 1:], y2[:, 1:])
    else:
        assert not torch.allclose(y[:, 1:], y2[:, 1:])
    # another grid: run it (any, resample) or refuse it naming both sizes (fixed)
    other = torch.randn(2, 1 + 15, 16)
    if cls.resolution == "fixed":
        assert mixer.fixed_grid == grid
        with pytest.raises(ValueError, match=r"4x4.*3x5"):
            mixer(other, (3, 5))
    else:
        assert mixer.fixed_grid is None
        with torch.no_grad():
            assert mixer(other, (3, 5)).shape == other.shape


@pytest.mark.parametrize("name", BUILT_IN)
def test_hierarchical_fx_graph_runs_at_any_size(name: str) -> None:
    """torchvision's FX feature extraction traces the hierarchical skeleton once, with the
    grid as graph values: the graph then runs at every size the eager model takes (equal to
    it), and refuses the others with the eager model's own message."""
    from torchvision.models.feature_extraction import (
        create_feature_extractor,
        get_graph_node_names,
    )

    model = tokenmixers.create_model("hierarchical", mixer=name, **HIER).eval()
    nodes = get_graph_node_names(model)[1]
    stage0 = [n for n in nodes if n.startswith("stages.0")][-1]
    graph = create_feature_extractor(model, {stage0: "stage0", nodes[-1]: "logits"})
    fixed = MIXERS[name].resolution == "fixed"
    with torch.no_grad():
        for size in (32, 48, 64):
            x = torch.randn(2, 3, size, size)
            if fixed and size != 32:
                with pytest.raises(ValueError, match="was built for a 8x8 grid"):
                    graph(x)
                continue
            out = graph(x)
            assert torch.allclose(out["logits"], model(x), atol=1e-5)
            assert out["stage0"].shape[1] == (size // 4) ** 2  # the first stage's tokens
        with pytest.raises(ValueError, match="multiples of 8, got 36x36"):
            graph(torch.randn(1, 3, 36, 36))


@pytest.mark.parametrize("name", BUILT_IN)
def test_facts_are_declared(name: str) -> None:
    cls = MIXERS[name]
    assert cls.name == name and cls.label and cls.macs_formula
    mixer = _build(name, (4, 4), 0)
    assert mixer.macs((4, 4), 0) >= 0
    defaults = cls.defaults(64, 1)
    assert isinstance(defaults, dict)
    # defaults are options the constructor takes (create_mixer applies them)
    assert type(create_mixer(name, 64, grid=(4, 4), index=1, **OPTIONS.get(name, {}))) is cls


def test_readme_mixer_table_is_the_registry() -> None:
    from tokenmixers.catalog import mixers_markdown

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert mixers_markdown() in readme, "regenerate it: tokenmixers mixers --markdown"
    for name, cls in MIXERS.items():
        assert f"| {name} |" in readme and cls.macs_formula.replace("|", "\\|") in readme


def test_layer_scale_and_residual_scale() -> None:
    from tokenmixers import Block

    mixer = create_mixer("attention", 8, grid=(2, 3), num_heads=2)
    blk = Block(8, mixer, norm_layer=nn.LayerNorm, mlp_hidden_dim=16,
                layer_scale_init_value=1e-5, res_scale_init_value=1.0)
    x = torch.randn(2, 6, 8)
    with torch.no_grad():
        y = x + 1e-5 * mixer(blk.norm1(x), (2, 3))
        expected = y + 1e-5 * blk.mlp(blk.norm2(y))
        assert torch.allclose(blk(x, (2, 3)), expected, atol=1e-6)
    names = {n for n, _ in blk.named_parameters()}
    assert {"layer_scale1.scale", "layer_scale2.scale", "res_scale1.scale",
            "res_scale2.scale"} <= names
    # a mixer without a residual (the shift) has no branch to scale; its MLP branch has
    shift = Block(24, create_mixer("shift", 24, grid=(2, 3)), norm_layer=nn.LayerNorm,
                  mlp_hidden_dim=16, layer_scale_init_value=1e-6)
    assert shift.layer_scale1 is None and shift.layer_scale2 is not None
    # every mixer can use them in the generic skeletons; off by default
    model = tokenmixers.create_model("isotropic", mixer="pool", layer_scale_init_value=1e-5,
                                     **ISO)
    assert torch.all(model.blocks[0].layer_scale1.scale == 1e-5)
    plain = tokenmixers.create_model("isotropic", mixer="pool", **ISO)
    assert not any("scale" in n for n, _ in plain.named_parameters())
    hier = tokenmixers.create_model("hierarchical", mixer="global_filter",
                                    res_scale_init_value=1.0, **HIER)
    assert hier.stages[1].blocks[0].res_scale2 is not None
    hier(torch.randn(1, 3, 32, 32)).sum().backward()


def test_generic_pool_model_matches_poolformer_block_equations() -> None:
    """A PoolFormer block as the paper writes it: x + LS(pool(LN(x)) - LN(x)), then the MLP."""
    model = tokenmixers.create_model("isotropic", mixer="pool", layer_scale_init_value=0.5,
                                     **ISO).eval()
    blk = model.blocks[0]
    x = torch.randn(2, 64, 32)
    with torch.no_grad():
        n = blk.norm1(x).reshape(2, 8, 8, 32).permute(0, 3, 1, 2)
        pooled = F.avg_pool2d(n, 3, 1, 1, count_include_pad=False) - n
        y = x + 0.5 * pooled.permute(0, 2, 3, 1).reshape(2, 64, 32)
        y = y + 0.5 * blk.mlp(blk.norm2(y))
        assert torch.allclose(blk(x, (8, 8)), y, atol=1e-6)
