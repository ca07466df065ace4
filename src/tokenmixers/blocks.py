"""The one residual block every model in the library is made of.

    x = x + drop_path(mixer(norm1(x), grid))  # mixer_residual=True: ViT, Mixer, Sequencer, ViL
    x = mixer(norm1(x), grid)                 # mixer_residual=False: ShiftViT's shift (no norm1)
    x = x + drop_path(mlp(norm2(x)))          # only when the block has an MLP (ViL has none)

Topology is configuration, not a subclass: the token mixer is passed in as a module.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from tokenmixers.layers import DropPath, Mlp

NormFactory = Callable[[int], nn.Module]


class Block(nn.Module):
    """``[B, N, C] -> [B, N, C]``, the grid passed through to the mixer."""

    def __init__(
        self,
        dim: int,
        mixer: nn.Module,
        *,
        norm_layer: NormFactory,
        mlp_hidden_dim: int | None,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        mixer_norm: bool = True,
        mixer_residual: bool = True,
        drop_path: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.mixer_residual = mixer_residual
        self.norm1 = norm_layer(dim) if mixer_norm else nn.Identity()
        self.mixer = mixer
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        if mlp_hidden_dim:
            self.norm2 = norm_layer(dim)
            self.mlp = Mlp(dim, mlp_hidden_dim, act_layer=act_layer, drop=proj_drop)
        else:
            self.norm2 = None
            self.mlp = None

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        if self.mixer_residual:
            x = x + self.drop_path(self.mixer(self.norm1(x), grid))
        else:
            x = self.mixer(self.norm1(x), grid)
        if self.mlp is not None:
            x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x
