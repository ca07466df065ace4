"""The one residual block every model in the library is made of.

    x = res_scale1(x) + layer_scale1(drop_path(mixer(norm1(x), grid)))   residual mixers
    x = mixer(norm1(x), grid)                        ShiftViT's shift (no norm1, no residual)
    x = res_scale2(x) + layer_scale2(drop_path(mlp(norm2(x))))           when there is an MLP

Topology is configuration, not a subclass: the token mixer is passed in as a module and
its ``topology`` (:class:`~tokenmixers.mixers.Topology`) says whether a norm precedes it and
a residual surrounds it. Layer scale and residual scale (MetaFormer, arXiv 2210.13452) are
options any mixer can use, off by default (``None``), so the paper models are unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from tokenmixers.layers import DropPath, Mlp, Scale
from tokenmixers.mixers.base import Topology

NormFactory = Callable[[int], nn.Module]


class Block(nn.Module):
    """``[B, N, C] -> [B, N, C]``, the grid passed through to the mixer.

    ``mixer_norm`` / ``mixer_residual``: ``None`` follows the mixer's ``topology`` (a module
    without one gets a norm and a residual). ``layer_scale_init_value``: a learned
    per-channel scale on each residual branch, starting at that value (1e-5, 1e-6 in
    PoolFormer/MetaFormer); ``res_scale_init_value``: a learned scale on each shortcut.
    """

    def __init__(
        self,
        dim: int,
        mixer: nn.Module,
        *,
        norm_layer: NormFactory,
        mlp_hidden_dim: int | None,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        mixer_norm: bool | None = None,
        mixer_residual: bool | None = None,
        layer_scale_init_value: float | None = None,
        res_scale_init_value: float | None = None,
        drop_path: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        topology = getattr(mixer, "topology", Topology())
        mixer_norm = topology.norm if mixer_norm is None else mixer_norm
        self.mixer_residual = topology.residual if mixer_residual is None else mixer_residual
        self.norm1 = norm_layer(dim) if mixer_norm else nn.Identity()
        self.mixer = mixer
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

        def scale(value: float | None, wanted: bool) -> Scale | None:
            return Scale(dim, value) if value is not None and wanted else None

        # A mixer without a residual replaces the token: there is no branch to scale.
        self.layer_scale1 = scale(layer_scale_init_value, self.mixer_residual)
        self.res_scale1 = scale(res_scale_init_value, self.mixer_residual)
        if mlp_hidden_dim:
            self.norm2 = norm_layer(dim)
            self.mlp = Mlp(dim, mlp_hidden_dim, act_layer=act_layer, drop=proj_drop)
        else:
            self.norm2 = None
            self.mlp = None
        self.layer_scale2 = scale(layer_scale_init_value, self.mlp is not None)
        self.res_scale2 = scale(res_scale_init_value, self.mlp is not None)

    @staticmethod
    def _add(x: torch.Tensor, branch: torch.Tensor, res: Scale | None, ls: Scale | None
             ) -> torch.Tensor:
        if ls is not None:
            branch = ls(branch)
        return (x if res is None else res(x)) + branch

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        if self.mixer_residual:
            branch = self.drop_path(self.mixer(self.norm1(x), grid))
            x = self._add(x, branch, self.res_scale1, self.layer_scale1)
        else:
            x = self.mixer(self.norm1(x), grid)
        if self.mlp is not None:
            branch = self.drop_path(self.mlp(self.norm2(x)))
            x = self._add(x, branch, self.res_scale2, self.layer_scale2)
        return x
