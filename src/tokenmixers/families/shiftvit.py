"""ShiftViT: the shift mixer in the hierarchical skeleton ("When Shift Operation Meets Vision
Transformer: An Extremely Simple Alternative to Attention Mechanism", arXiv 2201.10801),
with the argument names and checkpoint layout of the authors' code (microsoft/SPACH,
``models/shiftvit.py``).

Each block is ``x = shift(x); x = x + drop_path(mlp(norm(x)))``: the shift replaces
attention, with no norm and no residual of its own (the shift mixer's own topology). Every
norm is GroupNorm with one group.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from torch import nn

from tokenmixers.backbones import HierarchicalBackbone
from tokenmixers.families import Family, StateDict, register_family
from tokenmixers.init import InitScheme, trunc_normal_layer
from tokenmixers.layers import GroupNorm1

#: The authors' scheme: truncated normal (std 0.02) for every linear and conv weight, zero
#: biases; norms start as the identity (their default).
SHIFTVIT_INIT = InitScheme(
    "ShiftViT (microsoft/SPACH)",
    linear=trunc_normal_layer,
    conv=trunc_normal_layer,
    head=trunc_normal_layer,
)


def build_shiftvit(
    *,
    n_div: int = 12,
    img_size: int | Sequence[int] = 224,
    patch_size: int = 4,
    in_chans: int = 3,
    num_classes: int = 1000,
    embed_dim: int = 96,
    depths: Sequence[int] = (2, 2, 6, 2),
    mlp_ratio: float = 4.0,
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.1,
    patch_norm: bool = True,
    global_pool: str = "avg",
) -> HierarchicalBackbone:
    """A ShiftViT. Stage i has width ``embed_dim * 2**i``; ``n_div`` sets the shifted groups
    (``C // n_div`` channels per direction, four directions). ``drop_rate`` is the MLP
    dropout (the authors' code also applies it after the stem); ``img_size`` only sets the
    default input size, any multiple of the total stride runs. ``global_pool`` is timm's
    option (``""`` keeps the final map)."""
    num_stages = len(depths)
    model = HierarchicalBackbone(
        mixer="shift",
        mixer_kwargs={"n_div": n_div},
        img_size=img_size,
        in_chans=in_chans,
        num_classes=num_classes,
        global_pool=global_pool,
        patch_size=patch_size,
        embed_dims=[embed_dim * 2**i for i in range(num_stages)],
        depths=depths,
        downsample_sizes=[2] * (num_stages - 1),
        mlp_ratios=mlp_ratio,
        norm_layer=GroupNorm1,
        act_layer=nn.GELU,
        stem_norm=patch_norm,
        # The authors merge patches at the end of stages 0-2 (norm, then a 2x2 stride-2 conv
        # without bias); here that is the downsample opening stages 1-3.
        downsample_norm=True,
        downsample_bias=False,
        stem_drop_rate=drop_rate,
        proj_drop_rate=drop_rate,
        drop_path_rate=drop_path_rate,
    )
    model.family = "shiftvit"
    model.init_weights(SHIFTVIT_INIT)
    return model


_LAYER_KEY = re.compile(r"^layers\.(\d+)\.(blocks\.\d+\.|downsample\.)(.*)$")


def convert_official(state: StateDict) -> StateDict:
    """The authors' state dict -> ours: ``layers.i.blocks.j`` is ``stages.i.blocks.j``; the
    merge closing ``layers.i`` is the downsample opening ``stages.{i+1}`` (``reduction`` ->
    ``conv``); their MLP's 1×1 conv weights ``[out, in, 1, 1]`` become Linear ``[out, in]``."""
    out = {}
    for key, value in state.items():
        m = _LAYER_KEY.match(key)
        if m:
            i, part, rest = int(m.group(1)), m.group(2), m.group(3)
            if part == "downsample.":
                key = f"stages.{i + 1}.downsample.{rest.replace('reduction.', 'conv.', 1)}"
            else:
                key = f"stages.{i}.{part}{rest}"
                if re.fullmatch(r"mlp\.fc[12]\.weight", rest) and value.ndim == 4:
                    value = value.flatten(1)
        out[key] = value
    return out


SHIFTVIT = register_family(
    Family(
        name="shiftvit",
        build=build_shiftvit,
        reference="microsoft/SPACH ShiftViT (models/shiftvit.py)",
        converters={"official": convert_official},
        tiny={"img_size": 32, "embed_dim": 16, "depths": (1, 1, 1, 1), "num_classes": 10},
    )
)
