"""Any mixer in either skeleton: the controlled experiment.

``create_model("isotropic", mixer="lstm2d")`` or ``create_model("hierarchical",
mixer="shift")`` builds a model in which everything but the token mixer is fixed: the
patch embedding, pre-norm blocks with LayerNorm (eps 1e-6), the GELU channel MLP at the
same ratio, the position embedding (isotropic) or convolutional downsampling
(hierarchical), average pooling and the linear head. So two such models with different
``mixer`` differ in the token mixer only.

Each mixer's own options get width-scaled defaults (:data:`MIXER_DEFAULTS`) that
``mixer_kwargs`` can override. One part of a mixer's design is kept with it because it
is what the mixer is: ShiftViT's shift replaces the token (no norm, no residual around
it), and ViL's mLSTM alternates its scan direction from block to block.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from timm.layers import trunc_normal_
from torch import nn

from tokenmixers.backbones import HierarchicalBackbone, IsotropicBackbone
from tokenmixers.families import Family, register_family
from tokenmixers.mixers import MIXERS

#: mixer name -> (width, block index) -> default options for that block's mixer.
MIXER_DEFAULTS: dict[str, Callable[[int, int], dict[str, Any]]] = {
    "attention": lambda dim, i: {"num_heads": max(1, dim // 32)},
    "token_mlp": lambda dim, i: {"mlp_ratio": 0.5},
    "shift": lambda dim, i: {"n_div": 12},
    "lstm2d": lambda dim, i: {"hidden_size": max(1, dim // 4)},
    "mlstm": lambda dim, i: {"traversals": ("row_reversed",) if i % 2 else ("row",)},
}
#: Block topology that belongs to a mixer (see the module docstring).
MIXER_TOPOLOGY: dict[str, dict[str, bool]] = {
    "shift": {"mixer_norm": False, "mixer_residual": False},
}


def _mixer_options(
    mixer: str, dim: int, count: int, overrides: dict[str, Any] | None
) -> list[dict[str, Any]]:
    if mixer not in MIXERS:
        # create_mixer raises the error with suggestions; give it a chance to.
        return [dict(overrides or {}) for _ in range(count)]
    defaults = MIXER_DEFAULTS.get(mixer, lambda d, i: {})
    return [{**defaults(dim, i), **(overrides or {})} for i in range(count)]


def _init(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.Linear):
            trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    pos = getattr(model, "pos_embed", None)
    if isinstance(pos, nn.Parameter):
        trunc_normal_(pos, std=0.02)


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
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
) -> IsotropicBackbone:
    """``depth`` blocks of ``mixer`` at width ``embed_dim`` on a grid of patches."""
    model = IsotropicBackbone(
        mixer=mixer,
        mixer_kwargs=_mixer_options(mixer, embed_dim, depth, mixer_kwargs),
        img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=num_classes,
        embed_dim=embed_dim, depth=depth, mlp_ratio=mlp_ratio, pos_embed=pos_embed,
        global_pool=global_pool, norm_layer=partial(nn.LayerNorm, eps=1e-6),
        drop_rate=drop_rate, drop_path_rate=drop_path_rate,
        **MIXER_TOPOLOGY.get(mixer, {}),
    )
    model.family = "isotropic"
    _init(model)
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
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
) -> HierarchicalBackbone:
    """Stages of ``mixer`` blocks; width ``embed_dims[i]``, ``depths[i]`` blocks, 2x2
    stride-2 convolutions in between (``downsample_sizes``)."""
    if len(embed_dims) != len(depths):
        raise ValueError(f"embed_dims has {len(embed_dims)} entries, depths {len(depths)}")
    model = HierarchicalBackbone(
        mixer=mixer,
        mixer_kwargs=[
            _mixer_options(mixer, d, n, mixer_kwargs) for d, n in zip(embed_dims, depths)
        ],
        img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=num_classes,
        embed_dims=embed_dims, depths=depths, downsample_sizes=downsample_sizes,
        mlp_ratios=mlp_ratio, norm_layer=partial(nn.LayerNorm, eps=1e-6),
        global_pool=global_pool, drop_rate=drop_rate, drop_path_rate=drop_path_rate,
        **MIXER_TOPOLOGY.get(mixer, {}),
    )
    model.family = "hierarchical"
    _init(model)
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
