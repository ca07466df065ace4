"""The isotropic skeleton (ViT, MLP-Mixer, ViL): one patch embedding, then ``depth`` blocks
at a single width and resolution.

    image -> PatchEmbed -> [class token] -> (+ position embedding) -> blocks -> norm -> head
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
from torch import nn

from tokenmixers.backbones.base import Backbone
from tokenmixers.blocks import Block
from tokenmixers.layers import (
    PatchEmbed,
    fx_traced_size,
    grid_to_nchw,
    interpolate_pos_embed_grid,
    is_fx_proxy,
    linear_ramp,
    to_2tuple,
)
from tokenmixers.mixers.base import create_mixer, get_mixer

# One call node where torch.fx traces (fx.wrap patches the calling module's names).
torch.fx.wrap("fx_traced_size")

#: ``learned``: timm's flat ``[1, (P +) h*w, D]`` table, resampled as timm does;
#: ``learned_grid``: a ``[1, h, w, D]`` table (``pos_embed.embed``, ViL's layout) added on
#: the grid, resized bicubically without antialiasing; ``none``.
POS_EMBEDS = ("learned", "learned_grid", "none")


class GridPosEmbed(nn.Module):
    """A learned ``[1, h, w, D]`` position embedding added to a ``[B, H, W, D]`` grid, resized
    bicubically (``align_corners=False``, no antialias) when the grid differs."""

    def __init__(self, grid: tuple[int, int], dim: int) -> None:
        super().__init__()
        self.grid = (int(grid[0]), int(grid[1]))
        self.embed = nn.Parameter(torch.zeros(1, grid[0], grid[1], dim))

    def forward(self, x: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """``[B, H, W, D]``; ``grid``: ``(H, W)`` if known (as ints, where x is traced)."""
        if grid is not None and tuple(grid) == self.grid:
            return x + self.embed
        return x + interpolate_pos_embed_grid(self.embed, grid or x.shape[1:3])


class IsotropicBackbone(Backbone):
    """A stack of :class:`~tokenmixers.blocks.Block` on one token grid.

    ``forward_features``: ``[B, C_in, H, W] -> [B, N, D]`` (prefix tokens first, then the
    row-major grid); ``forward_head`` pools and classifies.
    """

    def __init__(
        self,
        *,
        mixer: str,
        mixer_kwargs: dict[str, Any] | Sequence[dict[str, Any]] | None = None,
        img_size: int | Sequence[int] = 224,
        patch_size: int = 16,
        patch_stride: int | None = None,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 768,
        depth: int = 12,
        mlp_ratio: float | None = 4.0,
        mlp: bool | None = None,
        class_token: bool = False,
        pos_embed: str = "learned",
        no_embed_class: bool = False,
        dynamic_img_size: bool = True,
        global_pool: str = "avg",
        fc_norm: bool | Callable[[int], nn.Module] = False,
        norm_layer: Callable[[int], nn.Module] = partial(nn.LayerNorm, eps=1e-6),
        final_norm_layer: Callable[[int], nn.Module] | None = None,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        mixer_norm: bool | None = None,
        mixer_residual: bool | None = None,
        layer_scale_init_value: float | None = None,
        res_scale_init_value: float | None = None,
        stem_bias: bool = True,
        drop_rate: float = 0.0,
        pos_drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        drop_path_schedule: str = "linear",
    ) -> None:
        super().__init__()
        if pos_embed not in POS_EMBEDS:
            raise ValueError(f"unknown pos_embed {pos_embed!r}; choose from {POS_EMBEDS}")
        self.img_size = to_2tuple(img_size)
        self.embed_dim = embed_dim
        self.dynamic_img_size = dynamic_img_size
        self.no_embed_class = no_embed_class
        self.num_prefix_tokens = 1 if class_token else 0
        self.patch_embed = PatchEmbed(
            patch_size=patch_size, stride=patch_stride, in_chans=in_chans, embed_dim=embed_dim,
            bias=stem_bias,
        )
        self.grid_size = self.patch_embed.grid_size(self.img_size)
        num_patches = self.grid_size[0] * self.grid_size[1]
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        self.pos_embed_kind = pos_embed
        if pos_embed == "learned":
            embed_len = num_patches + (0 if no_embed_class else self.num_prefix_tokens)
            self.pos_embed = nn.Parameter(torch.zeros(1, embed_len, embed_dim))
        elif pos_embed == "learned_grid":
            self.pos_embed = GridPosEmbed(self.grid_size, embed_dim)
        else:
            self.pos_embed = None
        self.pos_drop = nn.Dropout(pos_drop_rate)

        if drop_path_schedule == "linear":
            dpr = linear_ramp(drop_path_rate, depth)
        elif drop_path_schedule == "constant":
            dpr = [drop_path_rate] * depth
        else:
            raise ValueError(
                f"drop_path_schedule must be 'linear' or 'constant', got {drop_path_schedule!r}"
            )
        if isinstance(mixer_kwargs, (list, tuple)):
            if len(mixer_kwargs) != depth:
                raise ValueError(f"mixer_kwargs has {len(mixer_kwargs)} entries for {depth} blocks")
            per_block = [dict(k) for k in mixer_kwargs]
        else:
            per_block = [dict(mixer_kwargs or {}) for _ in range(depth)]
        if mlp is None:  # the mixer's own design
            mlp = get_mixer(mixer).topology.mlp
        self.blocks = nn.ModuleList(
            Block(
                embed_dim,
                create_mixer(
                    mixer, embed_dim, grid=self.grid_size,
                    num_prefix_tokens=self.num_prefix_tokens, index=i, **per_block[i],
                ),
                norm_layer=norm_layer,
                act_layer=act_layer,
                mlp_hidden_dim=int(embed_dim * mlp_ratio) if mlp and mlp_ratio else None,
                mixer_norm=mixer_norm,
                mixer_residual=mixer_residual,
                layer_scale_init_value=layer_scale_init_value,
                res_scale_init_value=res_scale_init_value,
                drop_path=dpr[i],
                proj_drop=proj_drop_rate,
            )
            for i in range(depth)
        )
        # timm's arrangement: fc_norm=True moves the final norm after pooling. A norm factory
        # as fc_norm keeps the final norm and adds that one after pooling (ViL's heads).
        final_norm_layer = final_norm_layer or norm_layer
        if fc_norm is True:
            self.norm = nn.Identity()
            fc_norm_layer = final_norm_layer
        else:
            self.norm = final_norm_layer(embed_dim)
            fc_norm_layer = fc_norm or None
        self._init_head(
            num_features=embed_dim, num_classes=num_classes, global_pool=global_pool,
            fc_norm_layer=fc_norm_layer, drop_rate=drop_rate,
        )
        self._fixed_grids = sorted(
            {tuple(b.mixer.fixed_grid) for b in self.blocks
             if getattr(b.mixer, "fixed_grid", None) is not None}
        )

    # -- embedding -----------------------------------------------------------------------
    def _check_input_size(self, hw: tuple[int, int]) -> None:
        grid = self.patch_embed.grid_size(hw)
        if self._fixed_grids and grid not in self._fixed_grids:
            name = self.model_name or type(self).__name__
            raise ValueError(
                f"{name} takes {self.img_size[0]}x{self.img_size[1]} images only: its token mixer "
                f"is built for a {self.grid_size[0]}x{self.grid_size[1]} grid of patches, and a "
                f"{hw[0]}x{hw[1]} image gives {grid[0]}x{grid[1]}. Build a model for that size: "
                f"create_model({name!r}, img_size={hw[0] if hw[0] == hw[1] else tuple(hw)})"
            )
        if not self.dynamic_img_size and tuple(hw) != self.img_size:
            raise ValueError(
                f"input size {hw[0]}x{hw[1]} differs from img_size {self.img_size} and "
                "dynamic_img_size=False; pass dynamic_img_size=True to resample the position "
                "embedding"
            )

    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        if is_fx_proxy(x):  # traced by torch.fx: at img_size, the grid a Python value
            x = fx_traced_size(x, self.img_size, self.model_name or type(self).__name__)
            x = self.patch_embed(x)  # [B, h, w, D]
            (h, w), b, d = self.grid_size, x.shape[0], self.embed_dim
        else:
            self._check_input_size((x.shape[-2], x.shape[-1]))
            x = self.patch_embed(x)  # [B, h, w, D]
            b, h, w, d = x.shape
        x = x.reshape(b, h * w, d)
        prefix = [self.cls_token.expand(b, -1, -1)] if self.cls_token is not None else []
        if isinstance(self.pos_embed, GridPosEmbed):
            x = self.pos_embed(x.reshape(b, h, w, d), (h, w)).reshape(b, h * w, d)
            x = torch.cat([*prefix, x], dim=1) if prefix else x
        elif self.pos_embed is None:
            x = torch.cat([*prefix, x], dim=1) if prefix else x
        else:
            pos = self._resampled_pos_embed((h, w))
            if self.no_embed_class:
                x = x + pos
                x = torch.cat([*prefix, x], dim=1) if prefix else x
            else:
                x = torch.cat([*prefix, x], dim=1) if prefix else x
                x = x + pos
        return self.pos_drop(x), (h, w)

    def _resampled_pos_embed(self, grid: tuple[int, int]) -> torch.Tensor:
        from timm.layers import resample_abs_pos_embed

        if grid == self.grid_size:
            return self.pos_embed
        # Exactly timm's dynamic_img_size resampling (bicubic, antialiased), so weights
        # trained in timm behave identically at every resolution.
        return resample_abs_pos_embed(
            self.pos_embed, new_size=grid, old_size=self.grid_size,
            num_prefix_tokens=0 if self.no_embed_class else self.num_prefix_tokens,
        )

    # -- the parts the base class runs -------------------------------------------------
    def _stem(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        return self._embed(x)

    def _feature_units(self) -> nn.ModuleList:
        return self.blocks

    def _unit_forward(
        self, unit: nn.Module, state: tuple[torch.Tensor, tuple[int, int]]
    ) -> tuple[torch.Tensor, tuple[int, int]]:
        x, grid = state
        return self._run_block(unit, x, grid), grid

    def _final(self, state: tuple[torch.Tensor, tuple[int, int]]) -> torch.Tensor:
        return self.norm(state[0])

    def _feature_map(
        self, state: tuple[torch.Tensor, tuple[int, int]], index: int, *, norm: bool,
        return_prefix_tokens: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        x, grid = state
        y = self.norm(x) if norm else x
        prefix = y[:, : self.num_prefix_tokens] if return_prefix_tokens else None
        return grid_to_nchw(y, grid, self.num_prefix_tokens), prefix

    def _truncate_units(self, count: int) -> None:
        self.blocks = self.blocks[:count]

    @property
    def feature_info(self) -> list[dict[str, Any]]:
        reduction = self.patch_embed.stride[0]
        return [
            {"num_chs": self.embed_dim, "reduction": reduction, "module": f"blocks.{i}"}
            for i in range(len(self.blocks))
        ]
