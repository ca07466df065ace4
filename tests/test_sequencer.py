"""Sequencer2D: parameter counts, timm's Sequencer2d as an oracle, and the BiLSTM2D equations
written out (LSTM, GRU and tanh-RNN recurrences in plain tensor math) for every union mode."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
import timm
import torch
import torch.nn.functional as F

import tokenmixers
from tokenmixers.mixers import create_mixer
from tokenmixers.zoo import ZOO

PARAMS = {
    "sequencer2d_s": 27_651_688,
    "sequencer2d_m": 38_307_688,
    "sequencer2d_l": 54_298_216,
    "sequencer2d_s_unidirectional": 20_991_592,
    "sequencer2d_s_add": 26_545_768,
    "sequencer2d_s_h2x": 45_395_560,
    "sequencer2d_s_without_fc": 25_433_704,
    "sequencer2d_s_vertical": 27_645_544,
    "sequencer2d_s_horizontal": 27_645_544,
    "gru_sequencer2d_s": 24_874_600,
    "rnn_sequencer2d_s": 19_320_424,
    # the 1-D baselines, counted from the authors' vanilla_sequencer.py configurations
    "vsequencer_s": 33_016_552,
    "vsequencer_s_h": 27_645_544,
    "vsequencer_s_pe": 33_114_856,
}


def test_parameter_counts_are_exact() -> None:
    assert {n: ZOO[n].paper.params for n in PARAMS} == PARAMS
    assert set(tokenmixers.list_models("*sequencer*")) == set(PARAMS)
    for name, expected in PARAMS.items():
        with torch.device("meta"):
            model = tokenmixers.create_model(name)
        assert sum(p.numel() for p in model.parameters()) == expected, name


def _perturb(model: torch.nn.Module, std: float = 0.05) -> torch.nn.Module:
    with torch.no_grad():  # no weight stays a trivial 0 or 1 (timm zero-inits the head)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * std)
    return model.eval()


# -- timm's Sequencer2d ---------------------------------------------------------------------
def test_sequencer2d_s_matches_timm_at_224_and_non_square() -> None:
    reference = _perturb(timm.create_model("sequencer2d_s"), std=0.03)
    ours = tokenmixers.create_model("sequencer2d_s").eval()
    assert tokenmixers.load_weights(ours, reference.state_dict(), source="timm") == "timm"
    for size in [(224, 224), (168, 280)]:
        x = torch.randn(1, 3, *size)
        with torch.inference_mode():
            expected = reference(x)
            diff = (ours(x) - expected).abs().max().item()
        assert expected.abs().max().item() > 0.1  # logits are not trivially small
        assert diff <= 1e-4, (size, diff)


TINY = {"layers": (1, 2, 1, 1), "patch_sizes": (4, 2, 1, 1), "embed_dims": (16, 24, 24, 24),
        "num_classes": 5}


@pytest.mark.parametrize(
    ("union", "with_fc", "bidirectional", "hidden_sizes"),
    [
        ("cat", True, True, (4, 6, 6, 6)),
        ("cat", False, True, (4, 6, 6, 6)),
        ("add", True, True, (4, 6, 6, 6)),
        ("add", True, False, (4, 6, 6, 6)),
        ("vertical", False, True, (8, 12, 12, 12)),
        ("horizontal", True, False, (3, 5, 5, 5)),
    ],
)
def test_tiny_union_modes_match_timm(
    union: str, with_fc: bool, bidirectional: bool, hidden_sizes: tuple[int, ...]
) -> None:
    args = {**TINY, "union": union, "with_fc": with_fc, "bidirectional": bidirectional,
            "hidden_sizes": hidden_sizes, "img_size": 32}
    reference = _perturb(timm.create_model("sequencer2d_s", **args))
    ours = tokenmixers.create_model("sequencer2d_s", **args).eval()
    tokenmixers.load_weights(ours, reference.state_dict(), source="timm")
    x = torch.randn(2, 3, 32, 48)
    with torch.inference_mode():
        assert (ours(x) - reference(x)).abs().max().item() <= 1e-5


# -- the equations, written out --------------------------------------------------------------
def _recurrence(rnn_type: str) -> Callable[..., tuple[torch.Tensor, torch.Tensor | None]]:
    """One step of each cell as PyTorch documents it: ``(x_t, h, c, weights) -> (h, c)``."""

    def lstm(x, h, c, w_ih, w_hh, b_ih, b_hh):
        i, f, g, o = (x @ w_ih.T + b_ih + h @ w_hh.T + b_hh).chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c

    def gru(x, h, c, w_ih, w_hh, b_ih, b_hh):
        xr, xz, xn = (x @ w_ih.T + b_ih).chunk(3, dim=-1)
        hr, hz, hn = (h @ w_hh.T + b_hh).chunk(3, dim=-1)
        r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        return (1 - z) * n + z * h, None

    def rnn(x, h, c, w_ih, w_hh, b_ih, b_hh):
        return torch.tanh(x @ w_ih.T + b_ih + h @ w_hh.T + b_hh), None

    return {"lstm": lstm, "gru": gru, "rnn": rnn}[rnn_type]


def _run_sequences(
    seq: torch.Tensor, params: dict[str, torch.Tensor], rnn_type: str, hidden: int,
    bidirectional: bool,
) -> torch.Tensor:
    """``[N, L, C]`` sequences -> ``[N, L, D]`` (or ``2D``: forward then backward outputs)."""
    step = _recurrence(rnn_type)
    outputs = []
    for suffix in ["", "_reverse"] if bidirectional else [""]:
        w = [params[f"{n}_l0{suffix}"] for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        h = seq.new_zeros(seq.shape[0], hidden)
        c = seq.new_zeros(seq.shape[0], hidden)
        order = range(seq.shape[1] - 1, -1, -1) if suffix else range(seq.shape[1])
        out = [None] * seq.shape[1]
        for t in order:
            h, c = step(seq[:, t], h, c, *w)
            out[t] = h
        outputs.append(torch.stack(out, dim=1))
    return torch.cat(outputs, dim=-1)


def _bilstm2d(x: torch.Tensor, params: dict[str, torch.Tensor], cfg: dict) -> torch.Tensor:
    """The paper's BiLSTM2D on ``[B, H, W, C]``: a (Bi)LSTM down every column and along every
    row, joined by ``union`` (vertical first), then the fusion Linear ``fc`` if present."""
    b, h, w, c = x.shape

    def sub(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}

    run = lambda seq, p: _run_sequences(  # noqa: E731
        seq, p, cfg["rnn_type"], cfg["hidden_size"], cfg["bidirectional"]
    )
    v = hz = None
    if cfg["union"] == "flat":  # the vanilla block: one BiLSTM over the raster sequence
        y = run(x.reshape(b, h * w, c), sub("rnn_h.")).reshape(b, h, w, -1)
        if "fc.weight" in params:
            y = F.linear(y, params["fc.weight"], params["fc.bias"])
        return y
    if cfg["union"] != "horizontal":
        columns = x.permute(0, 2, 1, 3).reshape(b * w, h, c)
        v = run(columns, sub("rnn_v.")).reshape(b, w, h, -1).permute(0, 2, 1, 3)
    if cfg["union"] != "vertical":
        hz = run(x.reshape(b * h, w, c), sub("rnn_h.")).reshape(b, h, w, -1)
    y = {"cat": lambda: torch.cat([v, hz], dim=-1), "add": lambda: v + hz,
         "vertical": lambda: v, "horizontal": lambda: hz}[cfg["union"]]()
    if "fc.weight" in params:
        y = F.linear(y, params["fc.weight"], params["fc.bias"])
    return y


MIXER_CASES = [
    # (union, with_fc, bidirectional, rnn_type, C, D)
    ("cat", True, True, "lstm", 12, 5),
    ("cat", False, True, "lstm", 12, 3),
    ("add", True, True, "lstm", 12, 5),
    ("add", False, True, "lstm", 12, 6),
    ("vertical", False, True, "lstm", 12, 6),
    ("horizontal", False, True, "lstm", 12, 6),
    ("vertical", True, False, "lstm", 12, 4),
    ("horizontal", True, True, "lstm", 12, 4),
    ("cat", True, False, "lstm", 12, 5),
    ("cat", True, True, "gru", 12, 5),
    ("cat", True, True, "rnn", 12, 5),
    ("add", True, False, "gru", 12, 5),
    ("flat", False, True, "lstm", 12, 6),
    ("flat", True, True, "lstm", 12, 5),
    ("flat", True, False, "gru", 12, 5),
]


@pytest.mark.parametrize(("union", "with_fc", "bidirectional", "rnn_type", "dim", "hidden"),
                         MIXER_CASES)
def test_mixer_matches_written_equations(
    union: str, with_fc: bool, bidirectional: bool, rnn_type: str, dim: int, hidden: int
) -> None:
    cfg = {"hidden_size": hidden, "bidirectional": bidirectional, "union": union,
           "with_fc": with_fc, "rnn_type": rnn_type}
    mixer = create_mixer("lstm2d", dim, grid=(3, 5), **cfg)
    _perturb(mixer, std=0.2).double()
    params = dict(mixer.state_dict())
    assert ("fc.weight" in params) == with_fc
    assert any(k.startswith("rnn_v.") for k in params) == (union not in ("horizontal", "flat"))
    assert any(k.startswith("rnn_h.") for k in params) == (union != "vertical")
    x = torch.randn(2, 3 * 5, dim, dtype=torch.float64)
    with torch.no_grad():
        got = mixer(x, (3, 5)).reshape(2, 3, 5, dim)
        expected = _bilstm2d(x.reshape(2, 3, 5, dim), params, cfg)
        # a prefix (class) token passes through, the grid is mixed the same way
        prefixed = mixer(torch.cat([x[:, :1], x], dim=1), (3, 5))
    assert (got - expected).abs().max().item() <= 1e-12
    assert torch.equal(prefixed[:, 0], x[:, 0])
    assert (prefixed[:, 1:] - got.reshape(2, 15, dim)).abs().max().item() <= 1e-12


def _sequencer_forward(model: tokenmixers.Backbone, x: torch.Tensor, cfg: dict) -> torch.Tensor:
    """Sequencer2D written out from the paper on our state dict: stem conv (no norm); per
    stage a k×k stride-k conv (i > 0), then blocks x += BiLSTM2D(LN(x)), x += MLP(LN(x));
    LN, mean over H and W, Linear."""
    s = dict(model.state_dict())

    def ln(t: torch.Tensor, p: str) -> torch.Tensor:
        return F.layer_norm(t, t.shape[-1:], s[p + ".weight"], s[p + ".bias"], 1e-6)

    k0 = cfg["patch_sizes"][0]
    x = F.conv2d(x, s["patch_embed.proj.weight"], s["patch_embed.proj.bias"], stride=k0)
    x = x.permute(0, 2, 3, 1)
    if cfg.get("pos_embed"):  # VSequencer(PE): a learned table on the stem's grid, resampled
        table = s["pos_embed.embed"].permute(0, 3, 1, 2)
        if table.shape[-2:] != x.shape[1:3]:
            table = F.interpolate(table, size=x.shape[1:3], mode="bicubic", align_corners=False)
        x = x + table.permute(0, 2, 3, 1)
    for i, depth in enumerate(cfg["layers"]):
        if i > 0:
            k = cfg["patch_sizes"][i]
            p = f"stages.{i}.downsample.conv"
            x = F.conv2d(x.permute(0, 3, 1, 2), s[p + ".weight"], s[p + ".bias"], stride=k)
            x = x.permute(0, 2, 3, 1)
        mix_cfg = {"hidden_size": cfg["hidden_sizes"][i], "bidirectional": cfg["bidirectional"],
                   "union": cfg["union"], "rnn_type": cfg.get("rnn_type", "lstm")}
        for j in range(depth):
            p = f"stages.{i}.blocks.{j}."
            mixer = {k[len(p + "mixer."):]: v for k, v in s.items() if k.startswith(p + "mixer.")}
            x = x + _bilstm2d(ln(x, p + "norm1"), mixer, mix_cfg)
            y = F.gelu(F.linear(ln(x, p + "norm2"), s[p + "mlp.fc1.weight"], s[p + "mlp.fc1.bias"]))
            x = x + F.linear(y, s[p + "mlp.fc2.weight"], s[p + "mlp.fc2.bias"])
    x = ln(x, "norm").mean(dim=(1, 2))
    return F.linear(x, s["head.weight"], s["head.bias"])


@pytest.mark.parametrize(
    ("union", "with_fc", "hidden_sizes", "rnn_type"),
    [
        ("cat", True, (3, 5, 5, 5), "lstm"),
        ("cat", False, (4, 6, 6, 6), "lstm"),
        ("add", True, (3, 5, 5, 5), "lstm"),
        ("vertical", False, (8, 12, 12, 12), "lstm"),
        ("horizontal", False, (8, 12, 12, 12), "lstm"),
        ("cat", True, (3, 5, 5, 5), "gru"),
        ("cat", True, (3, 5, 5, 5), "rnn"),
        ("flat", False, (8, 12, 12, 12), "lstm"),  # VSequencer(H)
        ("flat+pe", False, (8, 12, 12, 12), "lstm"),  # with VSequencer(PE)'s embedding
    ],
)
def test_tiny_models_match_written_equations_on_non_square_input(
    union: str, with_fc: bool, hidden_sizes: tuple[int, ...], rnn_type: str
) -> None:
    pos_embed = union.endswith("+pe")
    union = union.removesuffix("+pe")
    cfg = {**TINY, "hidden_sizes": hidden_sizes, "union": union, "with_fc": with_fc,
           "bidirectional": True, "rnn_type": rnn_type, "img_size": 32, "pos_embed": pos_embed}
    model = _perturb(tokenmixers.create_model("sequencer2d_s", **cfg)).double()
    x = torch.randn(2, 3, 24, 40, dtype=torch.float64)
    with torch.no_grad():
        got = model(x)
        expected = _sequencer_forward(model, x, cfg)
        x32 = torch.randn(1, 3, 32, 32, dtype=torch.float64)  # the position table's own size
        at_own_size = (model(x32) - _sequencer_forward(model, x32, cfg)).abs().max().item()
    assert got.shape == (2, 5)
    assert (got - expected).abs().max().item() <= 1e-10
    assert at_own_size <= 1e-10
    assert (model.pos_embed is not None) == pos_embed


# -- configuration and errors ----------------------------------------------------------------
def test_sizes_the_strides_do_not_allow_get_a_clear_error() -> None:
    model = tokenmixers.create_model("sequencer2d_s", **TINY, hidden_sizes=(4, 6, 6, 6)).eval()
    assert model(torch.randn(1, 3, 24, 56)).shape == (1, 5)  # any multiple of 8, not square
    with pytest.raises(ValueError, match=r"multiples of 8, got 24x60.*width 60 -> 56 or 64"):
        model(torch.randn(1, 3, 24, 60))


def test_with_fc_false_needs_matching_width() -> None:
    with pytest.raises(ValueError, match=r"with_fc=False needs the 'cat' union to be 192 wide"):
        tokenmixers.create_model("sequencer2d_s", with_fc=False, hidden_sizes=(32, 96, 96, 96))
    with pytest.raises(ValueError, match="with_fc=False needs the 'vertical' union"):
        tokenmixers.create_model("sequencer2d_s_vertical", hidden_sizes=(48, 96, 96, 96))
    with pytest.raises(ValueError, match="unknown union"):
        create_mixer("lstm2d", 8, grid=(2, 2), hidden_size=2, union="diagonal")
    with pytest.raises(ValueError, match="unknown rnn_type"):
        create_mixer("lstm2d", 8, grid=(2, 2), hidden_size=2, rnn_type="transformer")


def test_structure_of_sequencer2d_s() -> None:
    with torch.device("meta"):
        model = tokenmixers.create_model("sequencer2d_s", drop_path_rate=0.1)
    assert isinstance(model.patch_embed.norm, torch.nn.Identity)  # no stem norm
    assert model.patch_embed.proj.kernel_size == (7, 7) == model.patch_embed.proj.stride
    assert [s.downsample.conv.kernel_size[0] for s in model.stages[1:]] == [2, 1, 1]
    assert model.strides == [7, 14, 14, 14]
    block = model.stages[0].blocks[0]
    assert block.norm1.eps == 1e-6 and block.mlp.fc1.out_features == 3 * 192
    mixer = block.mixer
    assert (mixer.rnn_v.hidden_size, mixer.rnn_v.bidirectional, mixer.fc.in_features) == (
        48, True, 192)
    rates = [b.drop_path.drop_prob if hasattr(b.drop_path, "drop_prob") else 0.0
             for s in model.stages for b in s.blocks]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.1)  # linear ramp, as in the paper
    assert all(a < b for a, b in itertools.pairwise(rates))
