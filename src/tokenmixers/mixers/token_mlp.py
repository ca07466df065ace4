"""MLP-Mixer's token MLP: one MLP applied across the token axis, shared by all channels.

Its weights are shaped by the token count, so a model is built for one grid; any other
input is refused with an error that names the grid it was built for.
"""

from __future__ import annotations

import torch
from torch import nn

from tokenmixers.layers import Mlp
from tokenmixers.mixers import register_mixer


class TokenMLPMixer(nn.Module):
    """``[B, N, C] -> [B, N, C]`` with ``N = num_prefix_tokens + h*w`` fixed at construction.

    ``fc1``: Linear(N -> hidden), GELU, ``fc2``: Linear(hidden -> N), applied to each
    channel's column of tokens. MLP-Mixer sizes ``hidden`` from the channel width
    (``hidden = int(0.5 * C)``), not from N.
    """

    def __init__(
        self,
        dim: int,
        *,
        grid: tuple[int, int],
        num_prefix_tokens: int = 0,
        hidden_dim: int,
        drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.channels = dim
        self.fixed_grid = (int(grid[0]), int(grid[1]))
        self.num_tokens = num_prefix_tokens + self.fixed_grid[0] * self.fixed_grid[1]
        self.mlp = Mlp(self.num_tokens, hidden_dim, drop=drop)

    def forward(self, x: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        if (grid is not None and tuple(grid) != self.fixed_grid) or x.shape[1] != self.num_tokens:
            got = f"a {grid[0]}x{grid[1]} grid" if grid is not None else f"{x.shape[1]} tokens"
            raise ValueError(
                f"this token-MLP mixer was built for a {self.fixed_grid[0]}x{self.fixed_grid[1]} "
                f"grid ({self.num_tokens} tokens) and cannot take {got}: its weights are shaped by "
                "the token count. Build a model for the new size (img_size=...)."
            )
        return self.mlp(x.transpose(1, 2)).transpose(1, 2)

    def macs(self, grid: tuple[int, int], num_prefix_tokens: int = 0) -> int:
        """Multiply-accumulates per image: two token-axis linears for each channel."""
        channels = self.channels
        return 2 * channels * self.num_tokens * self.mlp.fc1.out_features

    def extra_repr(self) -> str:
        return f"fixed_grid={self.fixed_grid}"


@register_mixer("token_mlp")
def _token_mlp(
    dim: int,
    *,
    grid: tuple[int, int],
    num_prefix_tokens: int,
    mlp_ratio: float = 0.5,
    drop: float = 0.0,
) -> TokenMLPMixer:
    return TokenMLPMixer(
        dim, grid=grid, num_prefix_tokens=num_prefix_tokens, hidden_dim=int(mlp_ratio * dim),
        drop=drop,
    )
