"""The hierarchical skeleton (ShiftViT, Sequencer2D): a stem, then stages whose width grows
while the grid shrinks.

    image -> stem (conv k=s=patch [, norm]) -> stage 0 -> downsample -> stage 1 -> ...
          -> norm -> head

Activations stay channels-last (``[B, H, W, C]``) between stages; blocks see them as
``[B, H*W, C]`` tokens with the grid, so every mixer fits here as well as in the
isotropic skeleton. Norm layers act on any channels-last tensor ``[B, ..., C]`` (a
sample-wise norm such as GroupNorm(1) then normalises over the whole grid either way).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
from torch import nn

from tokenmixers.backbones.base import Backbone
from tokenmixers.backbones.isotropic import GridPosEmbed
from tokenmixers.blocks import Block
from tokenmixers.layers import (
    POOLINGS,
    PatchEmbed,
    is_fx_proxy,
    linear_ramp,
    to_2tuple,
)
from tokenmixers.mixers.base import create_mixer, get_mixer


def checked_size(x: torch.Tensor, total: int, name: str) -> torch.Tensor:
    """``x`` ``[B, C, H, W]`` unchanged if ``H`` and ``W`` are positive multiples of the
    backbone's total stride ``total``, else a ``ValueError`` naming the nearest sizes that
    work. One call node where torch.fx traces: the check runs when the graph runs, at any
    size."""
    hw = (x.shape[-2], x.shape[-1])
    bad = [(axis, s) for axis, s in zip(("height", "width"), hw) if s < total or s % total]
    if bad:
        fixes = "; ".join(
            f"{axis} {s} -> {s // total * total} or {(s // total + 1) * total}"
            if s >= total else f"{axis} {s} -> at least {total}"
            for axis, s in bad
        )
        raise ValueError(
            f"{name} downsamples by {total} in all: input height and width must be "
            f"multiples of {total}, got {hw[0]}x{hw[1]} (nearest sizes that work: {fixes})"
        )
    return x


torch.fx.wrap("checked_size")


def _per_stage(value: Any, num_stages: int, name: str) -> list[Any]:
    """A scalar (or dict) for every stage, or a sequence with one entry per stage."""
    if isinstance(value, (list, tuple)):
        if len(value) != num_stages:
            raise ValueError(f"{name} has {len(value)} entries for {num_stages} stages")
        return list(value)
    return [value] * num_stages


def _block_kwargs(stage_kwargs: dict[str, Any] | Sequence[dict[str, Any]], j: int) -> dict:
    """A stage's mixer options: one dict for all its blocks, or a list with one per block."""
    if isinstance(stage_kwargs, dict):
        return stage_kwargs
    if j >= len(stage_kwargs):
        raise ValueError(f"mixer_kwargs lists {len(stage_kwargs)} blocks for a longer stage")
    return stage_kwargs[j]


class Downsample(nn.Module):
    """``[B, H, W, C_in] -> [B, H/k, W/k, C_out]``: optional norm, then a k×k stride-k conv."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        *,
        kernel_size: int,
        norm_layer: Callable[[int], nn.Module] | None = None,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.norm = norm_layer(in_dim) if norm_layer is not None else nn.Identity()
        self.conv = nn.Conv2d(
            in_dim, out_dim, kernel_size=kernel_size, stride=kernel_size, bias=bias
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        return self.conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class Stage(nn.Module):
    """An optional downsample, then blocks at one width: ``[B, H, W, C] -> [B, H', W', C']``."""

    def __init__(self, downsample: nn.Module | None, blocks: Sequence[nn.Module]) -> None:
        super().__init__()
        self.downsample = downsample if downsample is not None else nn.Identity()
        self.blocks = nn.ModuleList(blocks)


def add_grid_pos_embed(pos_embed: GridPosEmbed, x: torch.Tensor) -> torch.Tensor:
    """``x + pos_embed`` on ``x``'s own grid (``[B, H, W, D]``), resampled where it differs;
    one node where torch.fx traces at any size (the grid is known only when it runs)."""
    return pos_embed(x, (int(x.shape[1]), int(x.shape[2])))


torch.fx.wrap("add_grid_pos_embed")


class HierarchicalBackbone(Backbone):
    """``forward_features``: ``[B, C_in, H, W] -> [B, h, w, C_last]`` (channels-last)."""

    #: The layout of ``forward_features``' output, in timm's terms (timm reads it).
    output_fmt = "NHWC"

    def __init__(
        self,
        *,
        mixer: str | Sequence[str],
        mixer_kwargs: dict[str, Any] | Sequence[dict[str, Any]] | None = None,
        img_size: int | Sequence[int] = 224,
        in_chans: int = 3,
        num_classes: int = 1000,
        patch_size: int = 4,
        embed_dims: Sequence[int] = (96, 192, 384, 768),
        depths: Sequence[int] = (2, 2, 6, 2),
        downsample_sizes: Sequence[int] | None = None,
        mlp_ratios: float | Sequence[float | None] | None = 4.0,
        mlp: bool | None = None,
        norm_layer: Callable[[int], nn.Module] = partial(nn.LayerNorm, eps=1e-6),
        act_layer: Callable[[], nn.Module] = nn.GELU,
        stem_norm: bool = False,
        pos_embed: bool = False,
        downsample_norm: bool = False,
        downsample_bias: bool = True,
        mixer_norm: bool | None = None,
        mixer_residual: bool | None = None,
        layer_scale_init_value: float | None = None,
        res_scale_init_value: float | None = None,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        stem_drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        num_stages = len(depths)
        if len(embed_dims) != num_stages:
            raise ValueError(f"embed_dims has {len(embed_dims)} entries for {num_stages} stages")
        downsample_sizes = list(downsample_sizes or [2] * (num_stages - 1))
        if len(downsample_sizes) != num_stages - 1:
            raise ValueError(
                f"downsample_sizes needs {num_stages - 1} entries (one between each pair of "
                f"stages), got {len(downsample_sizes)}"
            )
        mixers = _per_stage(mixer, num_stages, "mixer")
        mixer_kwargs_ = _per_stage(mixer_kwargs or {}, num_stages, "mixer_kwargs")
        mlp_ratios_ = _per_stage(mlp_ratios, num_stages, "mlp_ratios")
        self.img_size = to_2tuple(img_size)
        self.embed_dims = tuple(embed_dims)
        self.patch_embed = PatchEmbed(
            patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dims[0],
            norm_layer=norm_layer if stem_norm else None,
        )
        self.stem_drop = nn.Dropout(stem_drop_rate)
        # An absolute position embedding on the stem's grid (Sequencer's VSequencer(PE)),
        # resampled for other input sizes.
        self.pos_embed = (
            GridPosEmbed(self.patch_embed.grid_size(self.img_size), embed_dims[0])
            if pos_embed else None
        )
        self.strides = [patch_size]
        for k in downsample_sizes:
            self.strides.append(self.strides[-1] * k)
        grid = self.patch_embed.grid_size(self.img_size)
        dpr = linear_ramp(drop_path_rate, sum(depths))
        stages, block_idx = [], 0
        for i in range(num_stages):
            downsample = None
            if i > 0:
                k = downsample_sizes[i - 1]
                downsample = Downsample(
                    embed_dims[i - 1], embed_dims[i], kernel_size=k,
                    norm_layer=norm_layer if downsample_norm else None, bias=downsample_bias,
                )
                grid = (grid[0] // k, grid[1] // k)
            ratio = mlp_ratios_[i]
            # mlp=None: the mixer's own design decides whether its blocks have a channel MLP.
            with_mlp = get_mixer(mixers[i]).topology.mlp if mlp is None else mlp
            blocks = [
                Block(
                    embed_dims[i],
                    create_mixer(
                        mixers[i], embed_dims[i], grid=grid, index=j,
                        **_block_kwargs(mixer_kwargs_[i], j),
                    ),
                    norm_layer=norm_layer,
                    act_layer=act_layer,
                    mlp_hidden_dim=int(embed_dims[i] * ratio) if with_mlp and ratio else None,
                    mixer_norm=mixer_norm,
                    mixer_residual=mixer_residual,
                    layer_scale_init_value=layer_scale_init_value,
                    res_scale_init_value=res_scale_init_value,
                    drop_path=dpr[block_idx + j],
                    proj_drop=proj_drop_rate,
                )
                for j in range(depths[i])
            ]
            block_idx += depths[i]
            stages.append(Stage(downsample, blocks))
        self.stages = nn.ModuleList(stages)
        self.norm = norm_layer(embed_dims[-1])
        self._init_head(
            num_features=embed_dims[-1], num_classes=num_classes, global_pool=global_pool,
            fc_norm_layer=None, drop_rate=drop_rate,
        )

    def _stage_forward(self, stage: Stage, x: torch.Tensor) -> torch.Tensor:
        x = stage.downsample(x)
        if is_fx_proxy(x):  # traced by torch.fx: the sizes are graph nodes, read at run time
            b, h, w, c = x.shape[0], x.shape[1], x.shape[2], x.shape[3]
        else:
            b, h, w, c = x.shape
        t = x.reshape(b, h * w, c)
        t = self._run_blocks(stage.blocks, t, (h, w))
        return t.reshape(b, h, w, c)

    # -- the parts the base class runs -------------------------------------------------
    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        x = checked_size(x, self.strides[-1], self.model_name or type(self).__name__)
        x = self.patch_embed(x)
        if self.pos_embed is not None:
            x = add_grid_pos_embed(self.pos_embed, x)
        return self.stem_drop(x)

    def _feature_units(self) -> nn.ModuleList:
        return self.stages

    def _unit_forward(self, unit: nn.Module, state: torch.Tensor) -> torch.Tensor:
        return self._stage_forward(unit, state)

    def _final(self, state: torch.Tensor) -> torch.Tensor:
        return self.norm(state)

    def _feature_map(
        self, state: torch.Tensor, index: int, *, norm: bool, return_prefix_tokens: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        # The final norm belongs to the last stage's output only.
        y = self.norm(state) if norm and index == len(self.stages) - 1 else state
        prefix = y.new_zeros(y.shape[0], 0, y.shape[-1]) if return_prefix_tokens else None
        return y.permute(0, 3, 1, 2), prefix

    def _truncate_units(self, count: int) -> None:
        if count < len(self.stages):
            # The final norm and the head are sized for the last stage, which goes: the
            # features now end at stage count-1 and are not normalised.
            self.stages = self.stages[:count]
            self.embed_dims, self.strides = self.embed_dims[:count], self.strides[:count]
            self.norm = nn.Identity()
            self.num_features = self.embed_dims[-1]
            self.head_hidden_size = self.num_features * POOLINGS[self.global_pool][1]
            self.reset_classifier(self.num_classes)

    def _head_tokens(self, x: torch.Tensor) -> torch.Tensor:
        # global_pool='' keeps the map: the head then acts per position, [B, H, W, classes]
        return x if self.global_pool == "" else x.flatten(1, 2)

    @property
    def feature_info(self) -> list[dict[str, Any]]:
        return [
            {"num_chs": c, "reduction": s, "module": f"stages.{i}"}
            for i, (c, s) in enumerate(zip(self.embed_dims, self.strides))
        ]
