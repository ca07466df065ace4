"""No token mixing at all: MetaFormer's IdentityFormer ("MetaFormer Baselines for Vision",
arXiv 2210.13452), the control that shows how much the rest of the block does alone.

The mixer returns its input; with the default topology (pre-norm, residual) the block
computes ``x + norm1(x)`` and then its channel MLP, which is what IdentityFormer does.
"""

from __future__ import annotations

import torch

from tokenmixers.mixers.base import TokenMixer, register_mixer


@register_mixer("identity")
class IdentityMixer(TokenMixer):
    """``[B, N, C] -> [B, N, C]``: the tokens, unchanged (prefix tokens included, so they pass
    through). Any grid; no parameters."""

    label = "identity (IdentityFormer)"
    macs_formula = "0 (no token mixing)"

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        # The same tensor, not a copy: nothing is computed, and autograd handles the alias.
        return x

    def macs(self, grid: tuple[int, int], num_prefix_tokens: int = 0) -> int:
        """Multiply-accumulates per image: none."""
        return 0
