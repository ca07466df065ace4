"""MLP-Mixer: the token-MLP mixer in the isotropic skeleton ("MLP-Mixer: An all-MLP
Architecture for Vision", arXiv 2105.01601), with timm's argument names and checkpoint
layout."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from torch import nn

from tokenmixers.backbones import IsotropicBackbone
from tokenmixers.families import Family, register_family, rename_keys
from tokenmixers.init import InitScheme, init_linear, lecun_layer, xavier_tiny_bias_layer

#: The Mixer paper's (JAX) scheme as timm reproduces it: Xavier-uniform MLPs with tiny
#: biases, a LeCun-normal patch embedding and a zero classifier. (The token MLP initialises
#: itself the same way.)
MIXER_INIT = InitScheme(
    "MLP-Mixer (timm)",
    linear=xavier_tiny_bias_layer,
    conv=lecun_layer,
    head=partial(init_linear, weight=nn.init.zeros_),
)


def build_mixer(
    *,
    img_size: int | Sequence[int] = 224,
    patch_size: int = 16,
    in_chans: int = 3,
    num_classes: int = 1000,
    global_pool: str = "avg",
    embed_dim: int = 512,
    num_blocks: int = 8,
    mlp_ratio: float | Sequence[float] = (0.5, 4.0),
    stem_norm: bool = False,
    drop_rate: float = 0.0,
    proj_drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
) -> IsotropicBackbone:
    """An MLP-Mixer. ``mlp_ratio`` is (token MLP, channel MLP) as in timm; both hidden
    widths are multiples of ``embed_dim``. Built for one input size (``img_size``)."""
    if stem_norm:
        raise ValueError("stem_norm=True is not supported; MLP-Mixer's stem has no norm")
    token_ratio, channel_ratio = (
        (mlp_ratio, mlp_ratio) if isinstance(mlp_ratio, (int, float)) else tuple(mlp_ratio)
    )
    model = IsotropicBackbone(
        mixer="token_mlp",
        mixer_kwargs={"mlp_ratio": token_ratio, "drop": proj_drop_rate},
        img_size=img_size,
        patch_size=patch_size,
        in_chans=in_chans,
        num_classes=num_classes,
        embed_dim=embed_dim,
        depth=num_blocks,
        mlp_ratio=channel_ratio,
        class_token=False,
        pos_embed="none",
        global_pool=global_pool,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        drop_rate=drop_rate,
        proj_drop_rate=proj_drop_rate,
        drop_path_rate=drop_path_rate,
    )
    model.family = "mixer"
    model.init_weights(MIXER_INIT)
    return model


MIXER = register_family(
    Family(
        name="mixer",
        build=build_mixer,
        reference="timm MlpMixer (timm/models/mlp_mixer.py)",
        converters={
            "timm": rename_keys([
                (r"^stem\.", "patch_embed."),
                (r"\.mlp_tokens\.", ".mixer.mlp."),
                (r"\.mlp_channels\.", ".mlp."),
            ])
        },
        tiny={"img_size": 32, "patch_size": 8, "embed_dim": 32, "num_blocks": 2,
              "num_classes": 10},
    )
)
