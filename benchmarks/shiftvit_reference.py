"""ShiftViT in the authors' layout, for timing ours against and for checking that both
compute the same function ("When Shift Operation Meets Vision Transformer: An Extremely
Simple Alternative to Attention Mechanism", arXiv 2201.10801; module names and checkpoint
keys as in microsoft/SPACH ``models/shiftvit.py``, the code written here from the paper).

What the layout means: NCHW tensors throughout; the shift builds a zero tensor and copies
shifted slices into it; every norm is ``nn.GroupNorm(1, C)``; the MLP is two 1x1
``nn.Conv2d`` around a GELU; patches merge at the *end* of stages 0..n-2 (``layers.i``
owns ``downsample`` = norm, then a 2x2 stride-2 conv without bias). Ours keeps tokens
channels-last (``[B, H, W, C]``), uses Linear layers and puts the merge at the start of
the next stage; the arithmetic is the same, which ``__main__`` checks:

    python benchmarks/shiftvit_reference.py
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from timm.layers import DropPath
from torch import nn

from tokenmixers.families.shiftvit import build_shiftvit
from tokenmixers.zoo import get_spec


def shift_nchw(x: torch.Tensor, n_div: int) -> torch.Tensor:
    """The partial shift on ``[B, C, H, W]`` with ``g = C // n_div`` channels per group:
    group 0 moves one pixel left (towards smaller W), group 1 right, group 2 up (towards
    smaller H), group 3 down, channels from ``4g`` on stay; vacated pixels are zero."""
    g = x.shape[1] // n_div
    out = torch.zeros_like(x)
    out[:, :g, :, :-1] = x[:, :g, :, 1:]
    out[:, g : 2 * g, :, 1:] = x[:, g : 2 * g, :, :-1]
    out[:, 2 * g : 3 * g, :-1, :] = x[:, 2 * g : 3 * g, 1:, :]
    out[:, 3 * g : 4 * g, 1:, :] = x[:, 3 * g : 4 * g, :-1, :]
    out[:, 4 * g :] = x[:, 4 * g :]
    return out


class ConvMlp(nn.Module):
    """fc1 (1x1 conv) -> GELU -> dropout -> fc2 (1x1 conv) -> dropout, on NCHW."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class ShiftBlock(nn.Module):
    """``x = shift(x); x = x + drop_path(mlp(norm2(x)))``: the shift has no norm before it
    and no residual around it."""

    def __init__(self, dim: int, n_div: int, mlp_ratio: float, drop: float, drop_path: float
                 ) -> None:
        super().__init__()
        self.n_div = n_div
        self.norm2 = nn.GroupNorm(1, dim)
        self.mlp = ConvMlp(dim, int(dim * mlp_ratio), drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = shift_nchw(x, self.n_div)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """GroupNorm(1), then a 2x2 stride-2 conv without bias: ``[B, C, H, W] -> [B, 2C, H/2, W/2]``
    (the width ``out_dim`` in general)."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(1, dim)
        self.reduction = nn.Conv2d(dim, out_dim, 2, stride=2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reduction(self.norm(x))


class BasicLayer(nn.Module):
    """One stage: its blocks, then (all but the last stage) the patch merging."""

    def __init__(self, blocks: Sequence[nn.Module], downsample: nn.Module | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


class PatchEmbed(nn.Module):
    """Conv2d with kernel = stride = patch, then (``patch_norm``) GroupNorm(1)."""

    def __init__(self, patch_size: int, in_chans: int, dim: int, norm: bool) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, patch_size, stride=patch_size)
        self.norm = nn.GroupNorm(1, dim) if norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x))


class ShiftViTReference(nn.Module):
    """The whole network on NCHW: stem, stages, GroupNorm(1), global average pool, Linear."""

    def __init__(
        self,
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
    ) -> None:
        super().__init__()
        if global_pool != "avg":
            raise ValueError(
                f"the reference pools by average only, got global_pool={global_pool!r}"
            )
        dims = [embed_dim * 2**i for i in range(len(depths))]
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, patch_norm)
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        layers, start = [], 0
        for i, depth in enumerate(depths):
            blocks = [
                ShiftBlock(dims[i], n_div, mlp_ratio, drop_rate, dpr[start + j])
                for j in range(depth)
            ]
            start += depth
            merge = PatchMerging(dims[i], dims[i + 1]) if i < len(depths) - 1 else None
            layers.append(BasicLayer(blocks, merge))
        self.layers = nn.ModuleList(layers)
        self.norm = nn.GroupNorm(1, dims[-1])
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(dims[-1], num_classes) if num_classes else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pos_drop(self.patch_embed(x))
        for layer in self.layers:
            x = layer(x)
        return torch.flatten(self.avgpool(self.norm(x)), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


def shiftvit_arguments(name_or_kwargs: str | Mapping[str, Any], **overrides: Any
                       ) -> dict[str, Any]:
    """``build_shiftvit``'s full argument set for a zoo name (or a dict of its arguments),
    with ``overrides`` applied: its defaults, then the zoo entry, then the overrides."""
    defaults = {
        n: p.default for n, p in inspect.signature(build_shiftvit).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    if isinstance(name_or_kwargs, str):
        spec = get_spec(name_or_kwargs)
        if spec.family != "shiftvit":
            raise ValueError(f"{name_or_kwargs} is a {spec.family} model, not a ShiftViT")
        given = dict(spec.config)
    else:
        given = dict(name_or_kwargs)
    unknown = sorted((set(given) | set(overrides)) - set(defaults))
    if unknown:
        raise TypeError(f"not build_shiftvit arguments: {unknown}; it takes {sorted(defaults)}")
    return {**defaults, **given, **overrides}


def build_reference(name_or_kwargs: str | Mapping[str, Any], **overrides: Any
                    ) -> ShiftViTReference:
    """The authors'-layout ShiftViT for a zoo name (``"shiftvit_tiny_light"``) or a dict of
    ``build_shiftvit`` arguments, ``overrides`` applied (``embed_dim=24``, ...)."""
    return ShiftViTReference(**shiftvit_arguments(name_or_kwargs, **overrides))


_OURS_BLOCK = re.compile(r"^stages\.(\d+)\.blocks\.(\d+)\.(.*)$")
_OURS_DOWN = re.compile(r"^stages\.(\d+)\.downsample\.(norm|conv)\.(.*)$")


def ours_to_reference_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict in the authors' layout: ``stages.i.blocks.j`` -> ``layers.i.blocks.j``;
    the downsample opening ``stages.i`` is the merge closing ``layers.{i-1}`` (``conv`` ->
    ``reduction``); the MLP's Linear weights ``[out, in]`` become 1x1 convs."""
    out = {}
    for key, value in state.items():
        if m := _OURS_BLOCK.match(key):
            i, j, rest = m.groups()
            key = f"layers.{i}.blocks.{j}.{rest}"
            if re.fullmatch(r"mlp\.fc[12]\.weight", rest):
                value = value[:, :, None, None]
        elif m := _OURS_DOWN.match(key):
            i, part, rest = m.groups()
            part = "reduction" if part == "conv" else part
            key = f"layers.{int(i) - 1}.downsample.{part}.{rest}"
        out[key] = value
    return out


def load_from_ours(ref: ShiftViTReference, ours: nn.Module) -> ShiftViTReference:
    """Copy ``ours``' weights (a tokenmixers ShiftViT) into ``ref``, every key accounted for
    (strict); returns ``ref``."""
    ref.load_state_dict(ours_to_reference_keys(ours.state_dict()), strict=True)
    return ref


def perturb_(model: nn.Module, scale: float = 0.1, seed: int = 0) -> nn.Module:
    """Add noise to every parameter (norm affines included), so a check cannot pass on
    identity norms and zero biases."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    return model


def max_logit_difference(name: str, batch: int, seed: int = 0, **overrides: Any
                         ) -> tuple[float, float]:
    """Build ours and the reference for ``name`` (``overrides`` applied), perturb ours, copy
    it into the reference; returns the largest absolute difference of their logits and the
    largest absolute logit (the scale to read the difference against)."""
    import tokenmixers

    torch.manual_seed(seed)
    ours = perturb_(tokenmixers.create_model(name, **overrides), seed=seed).eval()
    ref = load_from_ours(build_reference(name, **overrides), ours).eval()
    size = shiftvit_arguments(name, **overrides)["img_size"]
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed + 1))
    with torch.inference_mode():
        a, b = ours(x), ref(x)
    return (a - b).abs().max().item(), a.abs().max().item()


def main() -> None:
    torch.set_num_threads(2)
    cases = [
        ("shiftvit_tiny_light", 2, {"embed_dim": 24, "depths": (1, 1, 2, 1), "img_size": 64}),
        ("shiftvit_tiny_light", 1, {}),
    ]
    for name, batch, overrides in cases:
        diff, scale = max_logit_difference(name, batch, **overrides)
        extra = ", ".join(f"{k}={v}" for k, v in overrides.items()) or "as published"
        print(f"{name} ({extra}), batch {batch}, float32: max |logits ours - reference| "
              f"= {diff:.2e} (max |logit| {scale:.2f})", flush=True)


if __name__ == "__main__":
    main()
