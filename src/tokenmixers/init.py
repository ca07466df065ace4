"""Who owns a parameter initialises it: the initialisers and the families' schemes.

A token mixer initialises itself (its ``reset_parameters``, run when it is built). The
skeleton initialises what it owns — the stem and downsampling convolutions, the channel
MLPs, the position embedding, the class token and the head — with its family's
:class:`InitScheme`, and never walks into a mixer. So ``create_model("isotropic",
mixer="mlstm")`` keeps ViL's gate init, and a new mixer keeps whatever init it chose.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from timm.layers import lecun_normal_
from torch import nn

__all__ = [
    "InitScheme",
    "init_linear",
    "lecun_layer",
    "lecun_normal",
    "tiny_normal",
    "trunc_normal_002",
    "trunc_normal_layer",
    "xavier_layer",
    "xavier_tiny_bias_layer",
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

#: Ready-made layer initialisers (weight, then bias), shared by the families' schemes and
#: the mixers' own ``reset_parameters``: ViT's (trunc-normal 0.02, zero bias), the Mixer
#: paper's (Xavier-uniform, biases N(0, 1e-6)), Xavier with a zero bias, LeCun-normal.
trunc_normal_layer = partial(init_linear, weight=trunc_normal_002)
xavier_tiny_bias_layer = partial(init_linear, weight=nn.init.xavier_uniform_, bias=tiny_normal)
xavier_layer = partial(init_linear, weight=nn.init.xavier_uniform_)
lecun_layer = partial(init_linear, weight=lecun_normal)
