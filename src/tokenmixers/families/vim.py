"""Vision Mamba (Vim, "Vision Mamba: Efficient Visual Representation Learning with
Bidirectional State Space Model", arXiv 2401.09417): the bidirectional Mamba mixer in the
isotropic skeleton, with the authors' argument names (hustvl/Vim ``VisionMamba``) and
checkpoint layout.

    image -> patches (Conv2d, kernel patch_size, stride ``stride``) -> class token in the
          middle of the sequence -> + position embedding -> blocks: x + drop_path(
          BiMamba(RMSNorm(x))) -> RMSNorm -> the class token -> Linear

The residual stream stays in float32 under autocast (the skeleton's residual is the
parameters' dtype), and the scans run in float32 (float64 in a float64 model).

The class token sits at index ⌊M/2⌋ of the scanned sequence of M patches + 1 (odd M: one
more patch after it than before), where the authors' position embedding has its row; our
backbone keeps prefix tokens first and lets the mixer put the class token in the middle of
each scan, so the converter moves that row to the front.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from torch import nn

from tokenmixers.backbones import IsotropicBackbone
from tokenmixers.families import Family, StateDict, register_family
from tokenmixers.init import InitScheme, init_linear, lecun_layer, trunc_normal_002
from tokenmixers.layers import POOLINGS, register_pooling
from tokenmixers.mixers.bimamba import DEFAULT_SCAN_CHUNK


def _last_token(x: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    return x[:, -1]


if "last" not in POOLINGS:
    register_pooling("last", _last_token, 1)

#: The authors' ``final_pool_type`` for a model without a class token -> our pooling.
FINAL_POOLS = {"mean": "avg", "none": "last"}

#: The authors' init of what the skeleton owns: the patch embedding LeCun-normal with a
#: zero bias, the head truncated-normal (std 0.02) with a zero bias, the position
#: embedding and class token truncated-normal (std 0.02); the RMSNorms start at 1 and the
#: Mamba layers initialise themselves.
VIM_INIT = InitScheme(
    "Vision Mamba (hustvl/Vim)",
    conv=lecun_layer,
    head=partial(init_linear, weight=trunc_normal_002),
    pos_embed=trunc_normal_002,
    cls_token=trunc_normal_002,
)


def build_vim(
    *,
    img_size: int | Sequence[int] = 224,
    patch_size: int = 16,
    stride: int = 16,
    depth: int = 24,
    embed_dim: int = 192,
    d_state: int = 16,
    in_chans: int = 3,
    channels: int | None = None,
    num_classes: int = 1000,
    ssm_cfg: dict | None = None,
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.1,
    norm_epsilon: float = 1e-5,
    rms_norm: bool = True,
    if_abs_pos_embed: bool = True,
    bimamba_type: str = "v2",
    if_cls_token: bool = True,
    if_divide_out: bool = True,
    use_middle_cls_token: bool = True,
    final_pool_type: str = "mean",
    backward_dt_init: str = "zero",
    scan: str = "auto",
    chunk_size: int = DEFAULT_SCAN_CHUNK,
) -> IsotropicBackbone:
    """A Vision Mamba with the authors' argument names. ``stride`` is its own argument
    (16 by default whatever ``patch_size``; 8 gives the long-sequence models).
    ``bimamba_type``: ``"v2"`` (Vim: forward and backward scans) or ``"none"`` (forward
    only, plain Mamba). Without a class token the tokens are pooled by ``final_pool_type``
    (``mean`` or ``none`` = the last token). ``ssm_cfg``: more Mamba-layer options
    (``d_conv``, ``expand``, ``dt_rank``, ``dt_min``, ``dt_max``, ``dt_init_floor``,
    ``dt_scale``, ``conv_bias``, ``bias``). ``backward_dt_init`` (``zero``: as the authors'
    code ends up; ``forward``), ``scan`` (:data:`~tokenmixers.mixers.bimamba.SCANS`) and
    ``chunk_size`` are tokenmixers' options. The drop-path rate grows linearly over the
    blocks (0 at the first), as in the authors' code. ``in_chans`` is timm's name for the
    authors' ``channels`` (either may be given)."""
    if channels is not None:
        if in_chans not in (3, channels):
            raise ValueError(
                f"in_chans={in_chans} and channels={channels} disagree: they are the same "
                "option (timm's name and the authors'); give one"
            )
        in_chans = channels
    if bimamba_type not in ("v2", "none"):
        raise ValueError(
            f"bimamba_type must be 'v2' (bidirectional, Vim) or 'none' (forward only), got "
            f"{bimamba_type!r}; the authors' 'v1' (shared projections) is not implemented"
        )
    if final_pool_type not in FINAL_POOLS:
        raise ValueError(
            f"final_pool_type must be one of {sorted(FINAL_POOLS)}, got {final_pool_type!r}"
        )
    allowed = {"d_conv", "expand", "dt_rank", "dt_min", "dt_max", "dt_init_floor",
               "dt_scale", "conv_bias", "bias"}
    unknown = sorted(set(ssm_cfg or {}) - allowed)
    if unknown:
        raise ValueError(f"ssm_cfg: unknown options {unknown}; choose from {sorted(allowed)}")
    norm = partial(nn.RMSNorm, eps=norm_epsilon) if rms_norm else partial(
        nn.LayerNorm, eps=norm_epsilon)
    mixer_kwargs = {
        **(ssm_cfg or {}),
        "d_state": d_state,
        "bidirectional": bimamba_type == "v2",
        "divide_out": if_divide_out,
        "cls_position": "middle" if use_middle_cls_token else "first",
        "num_layers": depth,
        "backward_dt_init": backward_dt_init,
        "scan": scan,
        "chunk_size": chunk_size,
    }
    model = IsotropicBackbone(
        mixer="bimamba",
        mixer_kwargs=mixer_kwargs,
        img_size=img_size,
        patch_size=patch_size,
        patch_stride=stride,
        in_chans=in_chans,
        num_classes=num_classes,
        embed_dim=embed_dim,
        depth=depth,
        mlp=False,
        class_token=if_cls_token,
        pos_embed="learned" if if_abs_pos_embed else "none",
        global_pool="token" if if_cls_token else FINAL_POOLS[final_pool_type],
        norm_layer=norm,
        drop_rate=0.0,  # the authors' drop_rate is the position dropout only
        pos_drop_rate=drop_rate,
        drop_path_rate=drop_path_rate,
        drop_path_schedule="linear",
    )
    model.family = "vim"
    model.init_weights(VIM_INIT)
    return model


# ---- the authors' checkpoints ---------------------------------------------------------
def _middle_row_first(pos_embed: torch.Tensor) -> torch.Tensor:
    """The authors' ``[1, M+1, E]`` table (class token's row at ⌊M/2⌋) -> ours (first)."""
    m = pos_embed.shape[1] - 1
    at = m // 2
    return torch.cat([pos_embed[:, at : at + 1], pos_embed[:, :at], pos_embed[:, at + 1 :]], 1)


def _convert(state: StateDict) -> StateDict:
    """hustvl/Vim keys -> ours: ``layers.i`` -> ``blocks.i`` (``norm`` -> ``norm1``),
    ``norm_f`` -> ``norm``; the middle class token's position-embedding row moves first.
    Every published Vim puts its class token in the middle; a checkpoint of the authors'
    ``use_middle_cls_token=False`` variant has the row first already (source
    ``official_first_cls``)."""
    return _rename(state, middle=True)


def _rename(state: StateDict, *, middle: bool) -> StateDict:
    out: StateDict = {}
    has_cls = "cls_token" in state
    for key, value in state.items():
        if key.startswith("layers."):
            _, index, rest = key.split(".", 2)
            rest = "norm1." + rest[len("norm."):] if rest.startswith("norm.") else rest
            key = f"blocks.{index}.{rest}"
        elif key.startswith("norm_f."):
            key = "norm." + key[len("norm_f."):]
        elif key == "pos_embed" and has_cls and middle:
            value = _middle_row_first(value)
        out[key] = value
    return out


_TINY = {"img_size": 32, "patch_size": 8, "stride": 8, "embed_dim": 32, "depth": 2,
         "num_classes": 10}

VIM = register_family(
    Family(
        name="vim",
        build=build_vim,
        reference="hustvl/Vim VisionMamba (vim/models_mamba.py, bimamba_type='v2')",
        converters={
            "official": _convert,
            "official_first_cls": partial(_rename, middle=False),
        },
        tiny=_TINY,
    )
)
