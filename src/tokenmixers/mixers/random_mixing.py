"""A frozen random token-mixing matrix: MetaFormer's RandFormer ("MetaFormer Baselines for
Vision", arXiv 2210.13452). (The file is not called ``random.py`` so that it cannot shadow
the standard library's module.)

With ``N = h*w`` grid tokens, on each channel's column of grid tokens ``x_grid [N, C]``:

    M = softmax(U, dim=-1),  U ~ Uniform[0, 1)^(N x N)     sampled once, never trained
    y_grid = M @ x_grid

``M`` is a persistent buffer, not a parameter: no optimiser touches it, and it is saved in
the state dict, so a reloaded model mixes with the same matrix. Its shape is fixed by the
grid, so the mixer is built for one grid and refuses any other.
"""

from __future__ import annotations

import torch

from tokenmixers.mixers.base import (
    TokenMixer,
    fixed_grid_error,
    fx_leaf_call,
    is_symbolic_grid,
    mix_on_grid,
    register_mixer,
)

# One call node where torch.fx traces (fx.wrap patches the calling module's names).
torch.fx.wrap("fx_leaf_call")


@register_mixer("random")
class RandomMixer(TokenMixer):
    """``[B, N, C] -> [B, N, C]``: the last ``h*w`` tokens (the grid it was built for) mixed by
    the frozen row-stochastic ``mixing_matrix [h*w, h*w]``, the same for every channel; prefix
    tokens pass through unchanged."""

    label = "frozen random mixing (RandFormer)"
    macs_formula = "N²·C (a fixed N×N matrix on each channel, N = h·w grid tokens)"
    resolution = "fixed"

    mixing_matrix: torch.Tensor

    def __init__(self, dim: int, *, grid: tuple[int, int]) -> None:
        super().__init__()
        self.dim = dim
        self.fixed_grid = (int(grid[0]), int(grid[1]))
        n = self.fixed_grid[0] * self.fixed_grid[1]
        self.register_buffer("mixing_matrix", torch.empty(n, n), persistent=True)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """RandFormer's matrix: row-wise softmax of uniform [0, 1) samples, so every row is a
        positive weighting of the tokens that sums to 1."""
        n = self.mixing_matrix.shape[0]
        u = torch.rand(n, n, device=self.mixing_matrix.device)
        with torch.no_grad():
            self.mixing_matrix.copy_(u.softmax(dim=-1))

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        if is_symbolic_grid(grid):  # torch.fx at any size: the grid is checked at run time
            return fx_leaf_call(self, x, grid)
        if tuple(grid) != self.fixed_grid:
            raise fixed_grid_error(self, f"a {grid[0]}x{grid[1]} grid")
        m = self.mixing_matrix.to(x.dtype)  # a no-op unless the tokens are in another precision

        def mix(g: torch.Tensor) -> torch.Tensor:
            b, h, w, c = g.shape
            return (m @ g.reshape(b, h * w, c)).reshape(b, h, w, c)

        return mix_on_grid(x, grid, mix)

    def macs(self, grid: tuple[int, int], num_prefix_tokens: int = 0) -> int:
        """Multiply-accumulates per image: ``N²·C`` for ``M @ x_grid`` (N = h·w); prefix tokens
        cost nothing. Only the grid it was built for runs, so any other is refused."""
        if tuple(grid) != self.fixed_grid:
            raise fixed_grid_error(self, f"a {grid[0]}x{grid[1]} grid")
        n = grid[0] * grid[1]
        return n * n * self.dim

    def extra_repr(self) -> str:
        return f"fixed_grid={self.fixed_grid}"
