"""ShiftViT's partial shift ("When Shift Operation Meets Vision Transformer", arXiv 2201.10801).

No parameters and no arithmetic: a few channel groups move by one pixel on the grid, the
rest stay. With ``g = C // n_div`` channels per group (floor division), on the grid seen
as ``[B, H, W, C]``:

    channels [0, g)    move one pixel left    out[:, :, :-1] = x[:, :, 1:]
    channels [g, 2g)   move one pixel right   out[:, :, 1:]  = x[:, :, :-1]
    channels [2g, 3g)  move one pixel up      out[:, :-1, :] = x[:, 1:, :]
    channels [3g, 4g)  move one pixel down    out[:, 1:, :]  = x[:, :-1, :]
    channels [4g, C)   unchanged

Positions a shift vacates are zero. ShiftViT uses ``n_div = 12`` (Tiny, Small) and 16 (Base).
"""

from __future__ import annotations

import torch

from tokenmixers.mixers.base import TokenMixer, Topology, mix_on_grid, register_mixer


@torch.fx.wrap  # one node where torch.fx traces (it cannot trace the slice assignments)
def shift_grid(x: torch.Tensor, n_div: int) -> torch.Tensor:
    """The partial shift of a channels-last grid: ``[B, H, W, C] -> [B, H, W, C]``."""
    g = x.shape[-1] // n_div
    out = torch.empty_like(x)
    # Zero only the one row/column each shifted group vacates; everything else is written.
    out[:, :, -1, 0:g] = 0
    out[:, :, :-1, 0:g] = x[:, :, 1:, 0:g]
    out[:, :, 0, g : 2 * g] = 0
    out[:, :, 1:, g : 2 * g] = x[:, :, :-1, g : 2 * g]
    out[:, -1, :, 2 * g : 3 * g] = 0
    out[:, :-1, :, 2 * g : 3 * g] = x[:, 1:, :, 2 * g : 3 * g]
    out[:, 0, :, 3 * g : 4 * g] = 0
    out[:, 1:, :, 3 * g : 4 * g] = x[:, :-1, :, 3 * g : 4 * g]
    out[..., 4 * g :] = x[..., 4 * g :]
    return out


@register_mixer("shift")
class ShiftMixer(TokenMixer):
    """``[B, N, C] -> [B, N, C]``: the partial shift on the last ``h*w`` tokens seen as the
    ``grid``; prefix tokens (if any) pass through unchanged. Works at any grid size.

    The shift replaces the token: no norm before it and no residual around it."""

    label = "shift (ShiftViT)"
    macs_formula = "0 (moves memory only)"
    topology = Topology(norm=False, residual=False)

    def __init__(self, dim: int, *, n_div: int = 12) -> None:
        super().__init__()
        if n_div < 1:
            raise ValueError(f"n_div must be a positive integer, got {n_div}")
        self.dim = dim
        self.n_div = n_div

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        return mix_on_grid(x, grid, lambda g: shift_grid(g, self.n_div))

    def macs(self, grid: tuple[int, int], num_prefix_tokens: int = 0) -> int:
        """Multiply-accumulates per image: none, the shift only moves memory."""
        return 0

    def extra_repr(self) -> str:
        return f"n_div={self.n_div}, group={self.dim // self.n_div}"
