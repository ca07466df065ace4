"""MLP-Mixer: the token-MLP mixer in the isotropic skeleton ("MLP-Mixer: An all-MLP
Architecture for Vision", arXiv 2105.01601), with timm's argument names and checkpoint
layout."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from torch import nn

from tokenmixers.backbones import IsotropicBackbone
from tokenmixers.families import Family, register_family, rename_keys
from tokenmixers.init import (
    InitScheme,
    init_linear,
    lecun_layer,
    tiny_normal,
    trunc_normal_002,
    xavier_tiny_bias_layer,
)

#: The Mixer paper's (JAX) scheme as timm reproduces it: Xavier-uniform MLPs with tiny
#: biases, a LeCun-normal patch embedding and a zero classifier. (The token MLP initialises
#: itself the same way.) The paper's Mixer has no position embedding and no class token; the
#: ablations that add them initialise them as ViT does.
MIXER_INIT = InitScheme(
    "MLP-Mixer (timm)",
    linear=xavier_tiny_bias_layer,
    conv=lecun_layer,
    head=partial(init_linear, weight=nn.init.zeros_),
    pos_embed=trunc_normal_002,
    cls_token=tiny_normal,
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
    class_token: bool = False,
    pos_embed: str = "none",
    drop_rate: float = 0.0,
    proj_drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
) -> IsotropicBackbone:
    """An MLP-Mixer. ``mlp_ratio`` is (token MLP, channel MLP) as in timm; both hidden
    widths are multiples of ``embed_dim``. Built for one input size (``img_size``).

    Two options the paper's Mixer does not have, for the open questions of the ViT vs Mixer
    comparison (``tokenmixers study ablations --family mixer``): ``pos_embed="learn"`` adds
    ViT's learned position embedding to the patch tokens; ``class_token=True`` with
    ``global_pool="token"`` reads the class out of a class token, which the token MLP mixes
    with the patches (its weights then span ``1 + h*w`` tokens)."""
    if stem_norm:
        raise ValueError("stem_norm=True is not supported; MLP-Mixer's stem has no norm")
    if pos_embed not in ("none", "", "learn"):
        raise ValueError(f"pos_embed={pos_embed!r}: expected 'none' (the paper's Mixer) or "
                         "'learn' (a learned position embedding, as ViT's)")
    if global_pool == "token" and not class_token:
        raise ValueError("global_pool='token' needs class_token=True; or use "
                         "global_pool='avg' (the paper's Mixer)")
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
        class_token=class_token,
        pos_embed="learned" if pos_embed == "learn" else "none",
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
