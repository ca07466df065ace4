"""ViT: the attention mixer in the isotropic skeleton ("An Image is Worth 16x16 Words",
arXiv 2010.11929), with timm's argument names and checkpoint layout."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from torch import nn

from tokenmixers.backbones import IsotropicBackbone
from tokenmixers.families import Family, register_family, rename_keys
from tokenmixers.init import InitScheme, trunc_normal_002, trunc_normal_layer

#: ViT/DeiT as timm initialises it: truncated normal (std 0.02) for the linear layers and
#: the position embedding, a near-zero class token, zero biases; the stem keeps PyTorch's
#: default. (The attention mixer initialises its qkv and proj the same way itself.)
VIT_INIT = InitScheme(
    "ViT (timm)",
    linear=trunc_normal_layer,
    head=trunc_normal_layer,
    pos_embed=trunc_normal_002,
    cls_token=partial(nn.init.normal_, std=1e-6),
)


def build_vit(
    *,
    img_size: int | Sequence[int] = 224,
    patch_size: int = 16,
    in_chans: int = 3,
    num_classes: int = 1000,
    global_pool: str = "token",
    embed_dim: int = 768,
    depth: int = 12,
    num_heads: int = 12,
    mlp_ratio: float = 4.0,
    qkv_bias: bool = True,
    class_token: bool = True,
    pos_embed: str = "learn",
    no_embed_class: bool = False,
    fc_norm: bool | None = None,
    dynamic_img_size: bool = True,
    drop_rate: float = 0.0,
    pos_drop_rate: float = 0.0,
    proj_drop_rate: float = 0.0,
    attn_drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
) -> IsotropicBackbone:
    """A Vision Transformer. ``dynamic_img_size=True`` (our default, unlike timm's) runs any
    input size the patch size divides by resampling the position embedding exactly as timm
    does. ``fc_norm=None`` follows timm: the final norm moves after pooling for ``avg``.
    ``pos_embed``: timm's ``"learn"`` or ``"none"`` (no position embedding: ViT's Appendix
    D.4 ablation)."""
    if global_pool == "token" and not class_token:
        raise ValueError("global_pool='token' needs class_token=True; use global_pool='avg'")
    if pos_embed not in ("learn", "none", ""):
        raise ValueError(f"pos_embed={pos_embed!r}: expected 'learn' (ViT's learned position "
                         "embedding) or 'none' (no position embedding)")
    if fc_norm is None:
        fc_norm = global_pool in ("avg", "max")
    model = IsotropicBackbone(
        mixer="attention",
        mixer_kwargs={"num_heads": num_heads, "qkv_bias": qkv_bias, "attn_drop": attn_drop_rate,
                      "proj_drop": proj_drop_rate},
        img_size=img_size,
        patch_size=patch_size,
        in_chans=in_chans,
        num_classes=num_classes,
        embed_dim=embed_dim,
        depth=depth,
        mlp_ratio=mlp_ratio,
        class_token=class_token,
        pos_embed="learned" if pos_embed == "learn" else "none",
        no_embed_class=no_embed_class,
        dynamic_img_size=dynamic_img_size,
        global_pool=global_pool,
        fc_norm=fc_norm,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        drop_rate=drop_rate,
        pos_drop_rate=pos_drop_rate,
        proj_drop_rate=proj_drop_rate,
        drop_path_rate=drop_path_rate,
    )
    model.family = "vit"
    model.init_weights(VIT_INIT)
    return model


VIT = register_family(
    Family(
        name="vit",
        build=build_vit,
        reference="timm VisionTransformer (timm/models/vision_transformer.py)",
        # timm names the mixer `attn`; everything else already has timm's name.
        converters={"timm": rename_keys([(r"^blocks\.(\d+)\.attn\.", r"blocks.\1.mixer.")])},
        tiny={"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2,
              "num_classes": 10},
    )
)
