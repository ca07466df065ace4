"""Who owns a parameter initialises it.

A token mixer initialises itself (its ``reset_parameters``, run when it is built). The
skeleton initialises what it owns — the stem and downsampling convolutions, the channel
MLPs, the position embedding, the class token and the head — with its family's
:class:`InitScheme`, and never walks into a mixer. So ``create_model("isotropic",
mixer="mlstm")`` keeps ViL's gate init, and a new mixer keeps whatever init it chose.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

import torch
from timm.layers import lecun_normal_
from torch import nn

from tokenmixers.blocks import Block

__all__ = [
    "InitScheme",
    "apply_scheme",
    "init_linear",
    "lecun_normal",
    "skeleton_modules",
    "tiny_normal",
    "trunc_normal_002",
]

ParamInit = Callable[[torch.Tensor], object]


@dataclass(frozen=True)
class InitScheme:
    """A family's initialisation of the skeleton's parts; ``None`` keeps PyTorch's default
    (the module's own ``reset_parameters``)."""

    name: str
    #: every ``nn.Linear`` the skeleton owns except the head (the channel MLPs)
    linear: Callable[[nn.Linear], None] | None = None
    #: every ``nn.Conv2d`` the skeleton owns (patch embedding, downsampling)
    conv: Callable[[nn.Conv2d], None] | None = None
    head: Callable[[nn.Linear], None] | None = None
    pos_embed: ParamInit | None = None
    cls_token: ParamInit | None = None


def init_linear(
    module: nn.Linear | nn.Conv2d, weight: ParamInit, bias: ParamInit = nn.init.zeros_
) -> None:
    """``weight(module.weight)`` and, if the module has a bias, ``bias(module.bias)``."""
    weight(module.weight)
    if module.bias is not None:
        bias(module.bias)


#: Ready-made weight initialisers the families combine.
trunc_normal_002 = partial(nn.init.trunc_normal_, std=0.02)
tiny_normal = partial(nn.init.normal_, std=1e-6)
lecun_normal = lecun_normal_


def skeleton_modules(model: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """``named_modules()`` without the token mixers' subtrees (a block's ``mixer``)."""
    yield prefix, model
    for name, child in model.named_children():
        if isinstance(model, Block) and child is model.mixer:
            continue
        yield from skeleton_modules(child, f"{prefix}.{name}" if prefix else name)


def apply_scheme(model: nn.Module, scheme: InitScheme) -> None:
    """Initialise ``model``'s skeleton with ``scheme`` (see the module docstring)."""
    head = getattr(model, "head", None)
    for _, module in skeleton_modules(model):
        if isinstance(module, nn.Linear):
            fn = scheme.head if module is head else scheme.linear
            if fn is not None:
                fn(module)
        elif isinstance(module, nn.Conv2d) and scheme.conv is not None:
            scheme.conv(module)
    pos = getattr(model, "pos_embed", None)
    if isinstance(pos, nn.Module):  # a grid table (GridPosEmbed) keeps its tensor in `embed`
        pos = getattr(pos, "embed", None)
    if isinstance(pos, nn.Parameter) and scheme.pos_embed is not None:
        scheme.pos_embed(pos)
    cls_token = getattr(model, "cls_token", None)
    if isinstance(cls_token, nn.Parameter) and scheme.cls_token is not None:
        scheme.cls_token(cls_token)
