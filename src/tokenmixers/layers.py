"""Layers shared by every skeleton: patch embedding, channel MLP, drop path, pooling.

Everything here works on tokens ``[B, N, C]`` or channels-last grids ``[B, H, W, C]``;
convolutions permute to NCHW internally and back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "POOLINGS",
    "DropPath",
    "GroupNorm1",
    "Mlp",
    "PatchEmbed",
    "Scale",
    "UnitOffsetLayerNorm",
    "feature_take_indices",
    "fx_traced_size",
    "grid_to_nchw",
    "interpolate_pos_embed_grid",
    "is_fx_proxy",
    "linear_ramp",
    "pool_tokens",
    "register_pooling",
    "to_2tuple",
]


def linear_ramp(end: float, n: int) -> list[float]:
    """``n`` values from 0 to ``end`` inclusive (stochastic-depth rates over blocks)."""
    if n <= 1:
        return [0.0] * n
    return [end * i / (n - 1) for i in range(n)]


def feature_take_indices(
    num_features: int, indices: int | Sequence[int] | None = None
) -> tuple[list[int], int]:
    """timm's convention for which features ``forward_intermediates`` returns: ``None`` ->
    all, an int ``n`` -> the last ``n``, a sequence -> those (negative from the end).
    Returns the sorted-as-given indices and the largest one."""
    if indices is None:
        indices = num_features
    if isinstance(indices, int):
        if not 0 < indices <= num_features:
            raise ValueError(f"indices={indices}: ask for the last 1 to {num_features} blocks")
        take = list(range(num_features - indices, num_features))
    else:
        take = []
        for i in indices:
            j = num_features + i if i < 0 else i
            if not 0 <= j < num_features:
                raise ValueError(f"index {i} is out of range for {num_features} blocks")
            take.append(j)
    if not take:
        raise ValueError("indices selects no feature; ask for at least one")
    return take, max(take)


def is_fx_proxy(x: object) -> bool:
    """True while ``torch.fx`` traces symbolically (``x`` a ``Proxy``, not a tensor): sizes
    are then unknown, and a backbone takes its grid from its ``img_size``."""
    return isinstance(x, torch.fx.Proxy)


@torch.fx.wrap  # one call node in an FX graph (the check runs when the graph runs);
# modules that import it wrap it too: torch.fx.wrap("fx_traced_size")
def fx_traced_size(x: torch.Tensor, size: tuple[int, int], name: str) -> torch.Tensor:
    """``x`` ``[B, C, H, W]`` unchanged if ``(H, W) == size``, else a ``ValueError``.

    A backbone traced by ``torch.fx`` (torchvision's ``create_feature_extractor``) is traced
    at its ``img_size``: the token grid is a Python value there, as every mixer needs it."""
    if tuple(x.shape[-2:]) != tuple(size):
        raise ValueError(
            f"{name} was traced by torch.fx for {size[0]}x{size[1]} images (its img_size), "
            f"got {x.shape[-2]}x{x.shape[-1]}: trace a model built with "
            f"img_size=({x.shape[-2]}, {x.shape[-1]}), or use forward_intermediates() or "
            "torch.export (dynamic sizes) instead"
        )
    return x


def to_2tuple(value: int | Sequence[int]) -> tuple[int, int]:
    """``7 -> (7, 7)``; ``(160, 256) -> (160, 256)``."""
    if isinstance(value, int):
        return (value, value)
    pair = tuple(int(v) for v in value)
    if len(pair) != 2:
        raise ValueError(f"expected an int or a pair of ints, got {value!r}")
    return pair  # type: ignore[return-value]


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample (scaled to keep the mean)."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.3f}"


class Scale(nn.Module):
    """A learned per-channel scale ``x * scale`` (``[..., C] -> [..., C]``), ``scale``
    initialised to ``init_value``: the layer scale of CaiT/MetaFormer (init 1e-5/1e-6, so a
    deep model starts close to the identity) and MetaFormer's residual scale (init 1)."""

    def __init__(self, dim: int, init_value: float = 1.0) -> None:
        super().__init__()
        self.init_value = float(init_value)
        self.scale = nn.Parameter(torch.full((dim,), self.init_value))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale

    def extra_repr(self) -> str:
        return f"{self.scale.shape[0]}, init_value={self.init_value:g}"


class Mlp(nn.Module):
    """Two-layer perceptron on the last dimension: ``[..., C] -> [..., out]``."""

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        out_features: int | None = None,
        *,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        bias: bool = True,
        drop: float = 0.0,
    ) -> None:
        super().__init__()
        out_features = out_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_features, out_features, bias=bias)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class PatchEmbed(nn.Module):
    """Image to a channels-last grid of patch embeddings: ``[B, C_in, H, W] -> [B, h, w, D]``.

    A convolution with kernel ``patch_size`` and stride ``stride`` (``= patch_size`` for
    non-overlapping patches). Input sizes the stride does not tile exactly are refused
    with a message that names the nearest sizes that work, rather than silently cropped.
    """

    def __init__(
        self,
        *,
        patch_size: int | Sequence[int],
        in_chans: int,
        embed_dim: int,
        stride: int | Sequence[int] | None = None,
        bias: bool = True,
        norm_layer: Callable[[int], nn.Module] | None = None,
    ) -> None:
        super().__init__()
        self.patch_size = to_2tuple(patch_size)
        self.stride = to_2tuple(stride) if stride is not None else self.patch_size
        self.in_chans = in_chans
        self.embed_dim = embed_dim
        self.proj = nn.Conv2d(
            in_chans, embed_dim, kernel_size=self.patch_size, stride=self.stride, bias=bias
        )
        self.norm = norm_layer(embed_dim) if norm_layer is not None else nn.Identity()

    def grid_size(self, img_size: Sequence[int]) -> tuple[int, int]:
        """The ``(h, w)`` grid this embedding produces for an ``(H, W)`` image."""
        self.check_size(img_size)
        return tuple(  # type: ignore[return-value]
            (s - p) // st + 1 for s, p, st in zip(img_size, self.patch_size, self.stride)
        )

    def check_size(self, img_size: Sequence[int]) -> None:
        for axis, s, p, st in zip(("height", "width"), img_size, self.patch_size, self.stride):
            if s < p or (s - p) % st:
                lower = max(p, p + (s - p) // st * st)
                upper = lower + st if s >= p else p
                raise ValueError(
                    f"input {axis} {s} does not fit patches of {p} pixels with stride {st}: "
                    f"use a {axis} of the form {p} + k*{st} (nearest: {lower} or {upper}), "
                    "or resize the images"
                )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not is_fx_proxy(x):  # (FX: the backbone checks the traced size instead)
            self.check_images(x)
        x = self.proj(x).permute(0, 2, 3, 1)
        return self.norm(x)

    def check_images(self, x: torch.Tensor) -> None:
        """A ``ValueError`` saying what to change unless ``x`` is ``[B, in_chans, H, W]``
        with a size the patches tile."""
        if x.ndim != 4:
            raise ValueError(f"expected images shaped [B, C, H, W], got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_chans:
            raise ValueError(
                f"the model takes {self.in_chans}-channel images but got {x.shape[1]} channels: "
                f"build it with in_chans={x.shape[1]}, or convert the images"
            )
        self.check_size(x.shape[-2:])


def _avg(x: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    return x[:, num_prefix_tokens:].mean(dim=1)


def _max(x: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    return x[:, num_prefix_tokens:].amax(dim=1)


def _token(x: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    if num_prefix_tokens < 1:
        raise ValueError("global_pool='token' needs a class token (class_token=True)")
    return x[:, 0]


def _none(x: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    return x


#: name -> (pool function ``([B, N, C], num_prefix_tokens) -> [B, k*C]``, width multiplier k).
#: '' keeps the tokens (the head is then applied per token, as timm does).
POOLINGS: dict[str, tuple[Callable[[torch.Tensor, int], torch.Tensor], int]] = {
    "avg": (_avg, 1),
    "max": (_max, 1),
    "token": (_token, 1),
    "": (_none, 1),
}


def register_pooling(
    name: str, fn: Callable[[torch.Tensor, int], torch.Tensor], width_multiplier: int = 1
) -> None:
    """Make ``global_pool=name`` available to every backbone."""
    if name in POOLINGS:
        raise ValueError(f"a pooling named {name!r} is already registered")
    POOLINGS[name] = (fn, width_multiplier)


def pool_tokens(x: torch.Tensor, kind: str, num_prefix_tokens: int) -> torch.Tensor:
    """Pool ``[B, N, C]`` tokens with one of :data:`POOLINGS`."""
    try:
        fn, _ = POOLINGS[kind]
    except KeyError:
        raise ValueError(f"unknown global_pool {kind!r}; choose from {sorted(POOLINGS)}") from None
    return fn(x, num_prefix_tokens)


def grid_to_nchw(x: torch.Tensor, grid: Sequence[int], num_prefix_tokens: int = 0) -> torch.Tensor:
    """``[B, P + h*w, C]`` tokens (row-major grid after P prefix tokens) -> ``[B, C, h, w]``."""
    b, _, c = x.shape
    return x[:, num_prefix_tokens:].reshape(b, grid[0], grid[1], c).permute(0, 3, 1, 2)


def interpolate_pos_embed_grid(
    pos: torch.Tensor, size: Sequence[int], *, antialias: bool = False
) -> torch.Tensor:
    """Bicubic resize of a ``[1, h, w, D]`` position embedding to ``[1, H, W, D]``."""
    if tuple(pos.shape[1:3]) == tuple(size):
        return pos
    out = F.interpolate(
        pos.permute(0, 3, 1, 2), size=tuple(size), mode="bicubic", align_corners=False,
        antialias=antialias,
    )
    return out.permute(0, 2, 3, 1)


class GroupNorm1(nn.Module):
    """GroupNorm with a single group on a channels-last tensor ``[B, ..., C] -> [B, ..., C]``.

    Each sample is normalised over *all* its non-batch dimensions together (for a grid,
    over H, W and C at once), then a per-channel affine is applied. This is
    ``nn.GroupNorm(1, C)`` moved to channels-last; ShiftViT uses it everywhere, and it is
    not a LayerNorm (which would normalise each position over C only).
    """

    def __init__(self, num_channels: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_channels)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not is_fx_proxy(x) and x.shape[-1] != self.num_channels:
            raise ValueError(
                f"GroupNorm1 expects {self.num_channels} channels last, got shape {tuple(x.shape)}"
            )
        # One group's statistics are a LayerNorm's over every non-batch dimension, so this is
        # one fused layer_norm on the channels-last tensor, with the per-channel affine
        # broadcast over the grid. (F.group_norm on a channels-first view copied the tensor
        # into that layout and its output back: 1.4-1.5x slower with the MLP's first Linear
        # after it at ShiftViT-T's first stage, batch 8.) Training at batch 1, the expanded
        # affine's weight gradient costs a reduction over the grid per call: there the
        # affine is applied after the norm instead (1.16x vs 0.80x the channels-first form).
        if torch.jit.is_tracing():  # the TorchScript ONNX exporter needs a constant shape
            # F.group_norm wants channels at dim 1; the statistics do not depend on the
            # layout. (Not movedim(-1, 1): that exporter writes an invalid Transpose for it.)
            return F.group_norm(x.transpose(1, -1), 1, self.weight, self.bias,
                                self.eps).transpose(1, -1)
        shape = x.shape[1:]
        if self.weight is None:
            return F.layer_norm(x, shape, None, None, self.eps)
        if (not is_fx_proxy(x) and x.shape[0] == 1 and torch.is_grad_enabled()
                and self.weight.requires_grad):
            return torch.addcmul(self.bias, F.layer_norm(x, shape, None, None, self.eps),
                                 self.weight)
        return F.layer_norm(x, shape, self.weight.expand(shape), self.bias.expand(shape),
                            self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_channels}, eps={self.eps}, affine={self.weight is not None}"


class UnitOffsetLayerNorm(nn.Module):
    """LayerNorm whose scale is ``1 + γ`` (γ stored as ``weight``, initialised to 0), as in
    xLSTM/ViL: weight decay then pulls the scale towards 1, not 0. ``[..., C] -> [..., C]``."""

    def __init__(self, dim: int, *, eps: float = 1e-5, bias: bool = False) -> None:
        super().__init__()
        self.eps = eps
        self.dim = dim
        self.weight = nn.Parameter(torch.zeros(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The normalised shape from the constructor, not from x: traced (TorchScript ONNX)
        # it stays a constant where x's sizes are dynamic.
        return F.layer_norm(x, (self.dim,), 1 + self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}, bias={self.bias is not None}"
