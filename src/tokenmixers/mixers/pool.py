"""PoolFormer's pooling mixer ("MetaFormer Is Actually What You Need for Vision",
arXiv 2111.11418).

On the grid seen as ``[B, H, W, C]``, per channel, with a ``k x k`` window (k odd):

    y = avgpool_k(x) - x

stride 1, zero padding ``k // 2`` and ``count_include_pad=False``: each output is the mean of
the in-grid tokens of the window centred on it, so borders average fewer tokens. The ``- x``
is PoolFormer's: the block adds ``x`` back through its residual. No parameters; any grid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tokenmixers.mixers.base import TokenMixer, mix_on_grid, register_mixer


def window_pairs(n: int, radius: int) -> int:
    """``Σ_{i<n} |[i - radius, i + radius] ∩ [0, n)|``: how many in-grid inputs the outputs
    along one axis of length ``n`` sum, in closed form. Pairs ``(i, j)`` with ``|i - j| = d``
    number ``n`` for ``d = 0`` and ``2(n - d)`` for ``1 <= d <= m = min(radius, n - 1)``,
    which add up to ``n(2m + 1) - m(m + 1)``."""
    m = min(radius, n - 1)
    return n * (2 * m + 1) - m * (m + 1)


@register_mixer("pool")
class PoolMixer(TokenMixer):
    """``[B, N, C] -> [B, N, C]``: ``avgpool(x) - x`` on the last ``h*w`` tokens seen as the
    ``grid``; prefix tokens (if any) pass through unchanged."""

    label = "average pooling (PoolFormer)"
    macs_formula = "C·rows(h)·rows(w); rows(n) = n(2m+1) − m(m+1), m = min(pool_size//2, n−1)"

    def __init__(self, dim: int, *, pool_size: int = 3) -> None:
        super().__init__()
        if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1 or (
            pool_size % 2 == 0
        ):
            raise ValueError(
                f"pool_size must be an odd positive integer (the window is centred on each "
                f"token, so an even one has no centre), got {pool_size!r}; PoolFormer uses 3"
            )
        self.dim = dim
        self.pool_size = pool_size

    def pool_grid(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, H, W, C] -> [B, H, W, C]``: ``avgpool(x) - x``."""
        k = self.pool_size
        # avg_pool2d wants NCHW; the permute is a view (channels-last strides), no copy.
        pooled = F.avg_pool2d(
            x.permute(0, 3, 1, 2), k, stride=1, padding=k // 2, count_include_pad=False
        )
        return pooled.permute(0, 2, 3, 1) - x

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        return mix_on_grid(x, grid, self.pool_grid)

    def macs(self, grid: tuple[int, int], num_prefix_tokens: int = 0) -> int:
        """Multiply-accumulates per image: one accumulation per (output, in-grid input) pair of
        the window sums, ``C·rows(h)·rows(w)`` (:func:`window_pairs`; the window is separable
        into its rows and columns of in-grid tokens). The division by the count and the
        subtraction are element-wise and not counted, as for norms and activations."""
        r = self.pool_size // 2
        return self.dim * window_pairs(grid[0], r) * window_pairs(grid[1], r)

    def extra_repr(self) -> str:
        return f"pool_size={self.pool_size}"
