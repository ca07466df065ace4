"""Sequencer's BiLSTM2D ("Sequencer: Deep LSTM for Image Classification", arXiv 2205.01972).

On the grid seen as ``[B, H, W, C]``, with ``D = hidden_size`` per direction:

    v = BiLSTM_v(each column, a sequence of length H)      [B, H, W, 2D]
    h = BiLSTM_h(each row, a sequence of length W)         [B, H, W, 2D]
    y = fc(cat(v, h))                                      union="cat":  Linear(4D -> C)
    y = fc(v + h)                                          union="add":  Linear(2D -> C)
    y = fc(v) or fc(h)                                     union="vertical" / "horizontal"
    y = fc(BiLSTM(the whole grid as one sequence, row-major order))       union="flat"

``union="flat"`` is the paper's *vanilla* Sequencer block (its VSequencer models): one
(Bi)LSTM over the ``H*W`` tokens in raster order, without the 2-D decomposition (held in
``rnn_h``: a single "row" that is the whole image).

``bidirectional=False`` halves every 2D above to D; ``with_fc=False`` drops ``fc``, which
needs the union's width to equal C already. ``rnn_type`` swaps the LSTM cells for GRU or
tanh RNN cells (the paper's ablations). The grid is read from the input, so any size runs.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from tokenmixers.init import xavier_layer
from tokenmixers.mixers.base import TokenMixer, mix_on_grid, register_mixer

RNN_TYPES: dict[str, type[nn.RNNBase]] = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}
UNIONS = ("cat", "add", "vertical", "horizontal", "flat")


@register_mixer("lstm2d")
class BiLSTM2DMixer(TokenMixer):
    """``[B, N, C] -> [B, N, C]``: the vertical and horizontal (Bi)LSTMs over the grid formed
    by the last ``h*w`` tokens, fused by ``fc``. Prefix tokens pass through unchanged."""

    label = "BiLSTM2D (Sequencer2D)"
    macs_formula = "h·w·G·(C + D)·D per RNN and direction (G: 4 LSTM, 3 GRU, 1 RNN) + h·w·U·C (fc)"

    @classmethod
    def defaults(cls, dim: int, index: int) -> dict[str, Any]:
        return {"hidden_size": max(1, dim // 4)}  # Sequencer2D's D = C/4

    def __init__(
        self,
        dim: int,
        *,
        hidden_size: int,
        bidirectional: bool = True,
        union: str = "cat",
        with_fc: bool = True,
        rnn_type: str = "lstm",
        num_layers: int = 1,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if union not in UNIONS:
            raise ValueError(f"unknown union {union!r}; choose from {UNIONS}")
        if rnn_type not in RNN_TYPES:
            raise ValueError(f"unknown rnn_type {rnn_type!r}; choose from {sorted(RNN_TYPES)}")
        self.dim = dim
        self.hidden_size = hidden_size
        self.union = union
        self.rnn_type = rnn_type
        self.with_vertical = union not in ("horizontal", "flat")
        self.with_horizontal = union != "vertical"
        direction_width = hidden_size * (2 if bidirectional else 1)
        union_width = 2 * direction_width if union == "cat" else direction_width

        rnn_cls = RNN_TYPES[rnn_type]

        def make_rnn() -> nn.RNNBase:
            return rnn_cls(
                dim, hidden_size, num_layers, bias=bias, batch_first=True,
                bidirectional=bidirectional,
            )

        self.rnn_v = make_rnn() if self.with_vertical else None
        self.rnn_h = make_rnn() if self.with_horizontal else None
        if with_fc:
            self.fc = nn.Linear(union_width, dim)
        elif union_width != dim:
            raise ValueError(
                f"with_fc=False needs the {union!r} union to be {dim} wide (the block width), but "
                f"it is {union_width} (hidden_size={hidden_size}, bidirectional={bidirectional}); "
                "use with_fc=True or a hidden_size that makes the widths equal"
            )
        else:
            self.fc = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Sequencer2D's (timm's) init: every recurrent weight and bias uniform in
        ±1/√D, the fusion ``fc`` Xavier-uniform with a zero bias."""
        for rnn in (self.rnn_v, self.rnn_h):
            if rnn is not None:
                bound = 1.0 / math.sqrt(rnn.hidden_size)
                for weight in rnn.parameters():
                    nn.init.uniform_(weight, -bound, bound)
        if self.fc is not None:
            xavier_layer(self.fc)

    def mix_grid(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, H, W, C] -> [B, H, W, C]``."""
        b, h, w, c = x.shape
        v = hz = None
        if self.rnn_v is not None:
            cols = x.transpose(1, 2).reshape(b * w, h, c)
            v = self.rnn_v(cols)[0].reshape(b, w, h, -1).transpose(1, 2)
        if self.union == "flat":  # the whole grid as one raster sequence
            hz = self.rnn_h(x.reshape(b, h * w, c))[0].reshape(b, h, w, -1)
        elif self.rnn_h is not None:
            rows = x.reshape(b * h, w, c)
            hz = self.rnn_h(rows)[0].reshape(b, h, w, -1)
        if v is not None and hz is not None:
            y = torch.cat([v, hz], dim=-1) if self.union == "cat" else v + hz
        else:
            y = v if v is not None else hz
        return self.fc(y) if self.fc is not None else y

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        return mix_on_grid(x, grid, self.mix_grid)

    def macs(self, grid: tuple[int, int], num_prefix_tokens: int = 0) -> int:
        """Multiply-accumulates per image: every RNN visits each grid cell once per
        direction and layer (gates x (input + hidden) x hidden), plus the fusion Linear."""
        pixels = grid[0] * grid[1]
        total = 0
        for rnn in (self.rnn_v, self.rnn_h):
            if rnn is None:
                continue
            gates = {"lstm": 4, "gru": 3, "rnn": 1}[self.rnn_type]
            directions = 2 if rnn.bidirectional else 1
            d = rnn.hidden_size
            for layer in range(rnn.num_layers):
                width_in = rnn.input_size if layer == 0 else directions * d
                total += directions * pixels * gates * (width_in + d) * d
        if self.fc is not None:
            total += pixels * self.fc.in_features * self.fc.out_features
        return total

    def extra_repr(self) -> str:
        return f"union={self.union!r}, rnn_type={self.rnn_type!r}"
