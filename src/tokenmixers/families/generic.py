"""Any mixer in either skeleton: the controlled experiment.

``create_model("isotropic", mixer="lstm2d")`` or ``create_model("hierarchical",
mixer="shift")`` builds a model in which everything but the token mixer is fixed: the
patch embedding, pre-norm blocks with LayerNorm (eps 1e-6), the GELU channel MLP at the
same ratio, the position embedding (isotropic) or convolutional downsampling
(hierarchical), average pooling and the linear head. So two such models with different
``mixer`` differ in the token mixer only.

Everything about the mixer comes from the mixer (:mod:`tokenmixers.mixers.base`): its
options' width-scaled and per-block defaults (which ``mixer_kwargs`` can override), the
part of its topology that is what the mixer is (ShiftViT's shift replaces the token: no
norm, no residual around it) and its own initialisation. The channel MLP is the
skeleton's: every mixer gets the same one (``mlp_ratio``), even one whose own design has
none (ViL's mLSTM), so that a comparison changes the mixer only. Layer scale and residual
scale (MetaFormer's) are options for every mixer, off by default.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

from torch import nn

from tokenmixers.backbones import HierarchicalBackbone, IsotropicBackbone
from tokenmixers.families import Family, register_family
from tokenmixers.init import InitScheme, trunc_normal_002, trunc_normal_layer

#: The skeleton's own parts: truncated normal (std 0.02) linear layers and position
#: embedding with zero biases (ViT's scheme); the stem keeps PyTorch's default.
GENERIC_INIT = InitScheme(
    "generic (ViT-style)",
    linear=trunc_normal_layer,
    head=trunc_normal_layer,
    pos_embed=trunc_normal_002,
)


def build_isotropic(
    *,
    mixer: str = "attention",
    mixer_kwargs: dict[str, Any] | None = None,
    img_size: int | Sequence[int] = 224,
    patch_size: int = 16,
    in_chans: int = 3,
    num_classes: int = 1000,
    embed_dim: int = 192,
    depth: int = 12,
    mlp_ratio: float = 4.0,
    pos_embed: str = "learned",
    global_pool: str = "avg",
    layer_scale_init_value: float | None = None,
    res_scale_init_value: float | None = None,
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
) -> IsotropicBackbone:
    """``depth`` blocks of ``mixer`` at width ``embed_dim`` on a grid of patches."""
    model = IsotropicBackbone(
        mixer=mixer, mixer_kwargs=mixer_kwargs,
        img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=num_classes,
        embed_dim=embed_dim, depth=depth, mlp_ratio=mlp_ratio, mlp=True, pos_embed=pos_embed,
        global_pool=global_pool, norm_layer=partial(nn.LayerNorm, eps=1e-6),
        layer_scale_init_value=layer_scale_init_value,
        res_scale_init_value=res_scale_init_value,
        drop_rate=drop_rate, drop_path_rate=drop_path_rate,
    )
    model.family = "isotropic"
    model.init_weights(GENERIC_INIT)
    return model


def build_hierarchical(
    *,
    mixer: str = "attention",
    mixer_kwargs: dict[str, Any] | None = None,
    img_size: int | Sequence[int] = 224,
    patch_size: int = 4,
    in_chans: int = 3,
    num_classes: int = 1000,
    embed_dims: Sequence[int] = (64, 128, 256, 512),
    depths: Sequence[int] = (2, 2, 6, 2),
    downsample_sizes: Sequence[int] | None = None,
    mlp_ratio: float = 4.0,
    global_pool: str = "avg",
    layer_scale_init_value: float | None = None,
    res_scale_init_value: float | None = None,
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
) -> HierarchicalBackbone:
    """Stages of ``mixer`` blocks; width ``embed_dims[i]``, ``depths[i]`` blocks, 2x2
    stride-2 convolutions in between (``downsample_sizes``)."""
    if len(embed_dims) != len(depths):
        raise ValueError(f"embed_dims has {len(embed_dims)} entries, depths {len(depths)}")
    model = HierarchicalBackbone(
        mixer=mixer, mixer_kwargs=mixer_kwargs,
        img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=num_classes,
        embed_dims=embed_dims, depths=depths, downsample_sizes=downsample_sizes,
        mlp_ratios=mlp_ratio, mlp=True, norm_layer=partial(nn.LayerNorm, eps=1e-6),
        global_pool=global_pool, layer_scale_init_value=layer_scale_init_value,
        res_scale_init_value=res_scale_init_value,
        drop_rate=drop_rate, drop_path_rate=drop_path_rate,
    )
    model.family = "hierarchical"
    model.init_weights(GENERIC_INIT)
    return model


ISOTROPIC = register_family(
    Family(
        name="isotropic",
        build=build_isotropic,
        reference="tokenmixers generic isotropic skeleton",
        tiny={"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_classes": 10},
    )
)
HIERARCHICAL = register_family(
    Family(
        name="hierarchical",
        build=build_hierarchical,
        reference="tokenmixers generic hierarchical skeleton",
        tiny={"img_size": 32, "patch_size": 4, "embed_dims": (16, 32), "depths": (1, 1),
              "num_classes": 10},
    )
)
