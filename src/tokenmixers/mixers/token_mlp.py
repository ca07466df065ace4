"""MLP-Mixer's token MLP: one MLP applied across the token axis, shared by all channels.

Its weights are shaped by the token count, so a model is built for one grid; any other
input is refused with an error that names the grid it was built for.
"""

from __future__ import annotations

import torch

from tokenmixers.init import xavier_tiny_bias_layer
from tokenmixers.layers import Mlp, is_fx_proxy
from tokenmixers.mixers.base import (
    TokenMixer,
    fixed_grid_error,
    fx_leaf_call,
    is_symbolic_grid,
    register_mixer,
)

# One call node where torch.fx traces (fx.wrap patches the calling module's names).
torch.fx.wrap("fx_leaf_call")


@register_mixer("token_mlp")
class TokenMLPMixer(TokenMixer):
    """``[B, N, C] -> [B, N, C]`` with ``N = num_prefix_tokens + h*w`` fixed at construction.

    ``fc1``: Linear(N -> hidden), GELU, ``fc2``: Linear(hidden -> N), applied to each
    channel's column of tokens. MLP-Mixer sizes ``hidden`` from the channel width
    (``hidden = int(mlp_ratio * C)``, ``mlp_ratio`` 0.5), not from N.
    """

    label = "token MLP (MLP-Mixer)"
    macs_formula = "2·C·N·H (two token-axis linears per channel, H = int(mlp_ratio·C))"
    prefix_tokens = "mixed"
    resolution = "fixed"

    def __init__(
        self,
        dim: int,
        *,
        grid: tuple[int, int],
        num_prefix_tokens: int = 0,
        mlp_ratio: float = 0.5,
        drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.channels = dim
        self.fixed_grid = (int(grid[0]), int(grid[1]))
        self.num_tokens = num_prefix_tokens + self.fixed_grid[0] * self.fixed_grid[1]
        self.mlp = Mlp(self.num_tokens, int(mlp_ratio * dim), drop=drop)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """MLP-Mixer's (JAX) init as timm has it: Xavier-uniform weights, biases N(0, 1e-6)."""
        for lin in (self.mlp.fc1, self.mlp.fc2):
            xavier_tiny_bias_layer(lin)

    def forward(self, x: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        if grid is not None and is_symbolic_grid(grid):  # torch.fx at any size: the grid is
            return fx_leaf_call(self, x, grid)  # checked when the graph runs
        if is_fx_proxy(x):  # traced by torch.fx at img_size: the backbone checks the size
            return self.mlp(x.transpose(1, 2)).transpose(1, 2)
        if (grid is not None and tuple(grid) != self.fixed_grid) or x.shape[1] != self.num_tokens:
            got = f"a {grid[0]}x{grid[1]} grid" if grid is not None else f"{x.shape[1]} tokens"
            raise fixed_grid_error(self, got)
        return self.mlp(x.transpose(1, 2)).transpose(1, 2)

    def macs(self, grid: tuple[int, int], num_prefix_tokens: int = 0) -> int:
        """Multiply-accumulates per image: two token-axis linears for each channel."""
        return 2 * self.channels * self.num_tokens * self.mlp.fc1.out_features

    def extra_repr(self) -> str:
        return f"fixed_grid={self.fixed_grid}"
