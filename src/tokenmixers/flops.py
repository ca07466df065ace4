"""Counting multiply-accumulates (MACs) per image, right for every token mixer.

PyTorch's ``FlopCounterMode`` counts matrix products and convolutions at the operator
level, but on CPU it sees nothing inside ``scaled_dot_product_attention``, ``nn.LSTM``,
poolings or FFTs (all count 0) and only part of some recurrent ops. So every token mixer
states its cost in closed form (``mixer.macs(grid, num_prefix_tokens)``, required when the
mixer is registered), and the count is

    total = (operator count of the whole model) - (operator count inside mixers)
            + (closed-form count of every mixer)

FLOPs are reported as 2 x MACs. Norms, activations and other element-wise work are not
counted, as in fvcore and the papers' tables.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from tokenmixers.blocks import Block
from tokenmixers.layers import to_2tuple

__all__ = ["MacCount", "count_macs"]


@dataclass(frozen=True)
class MacCount:
    """MACs for one image."""

    total: int
    #: inside token mixers (closed forms)
    mixer: int
    #: everything else: stem, channel MLPs, downsampling, head (operator-level count)
    other: int
    #: mixer MACs by mixer class
    by_mixer: dict[str, int] = field(default_factory=dict)

    @property
    def flops(self) -> int:
        return 2 * self.total

    def __str__(self) -> str:
        return (
            f"{self.total / 1e9:.3f} GMACs ({self.mixer / 1e9:.3f} in mixers, "
            f"{self.other / 1e9:.3f} elsewhere)"
        )


def _mixers(model: nn.Module) -> dict[str, nn.Module]:
    """Every block's token mixer by its module name; one without ``macs`` is an error, not
    a silent zero."""
    mixers = {}
    for name, module in model.named_modules():
        if isinstance(module, Block):
            mixer_name = f"{name}.mixer" if name else "mixer"
            if not callable(getattr(module.mixer, "macs", None)):
                raise TypeError(
                    f"the token mixer at {mixer_name} ({type(module.mixer).__name__}) has no "
                    "macs(grid, num_prefix_tokens): every mixer must state its cost in closed "
                    "form (see tokenmixers.mixers.TokenMixer)"
                )
            mixers[mixer_name] = module.mixer
    return mixers


@torch.no_grad()
def count_macs(
    model: nn.Module, img_size: int | Sequence[int] | None = None, in_chans: int | None = None
) -> MacCount:
    """Count the MACs of one forward pass of ``model`` on one ``img_size`` image."""
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    c, h, w = cfg.get("input_size", (3, 224, 224))
    if img_size is not None:
        h, w = to_2tuple(img_size)
    if in_chans is not None:
        c = in_chans
    was_training = model.training
    model.eval()
    grids: dict[str, tuple[tuple[int, int], int]] = {}
    mixers = _mixers(model)
    hooks = []
    # Each block calls its mixer as mixer(x, grid): record the grid and prefix count it saw.
    for name, mixer in mixers.items():
        def hook(module: nn.Module, args: tuple, name: str = name) -> None:
            x, grid = args[0], tuple(args[1])
            grids[name] = (grid, x.shape[1] - grid[0] * grid[1])
        hooks.append(mixer.register_forward_pre_hook(hook))
    device = next(model.parameters()).device
    try:
        with FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, c, h, w, device=device))
    finally:
        for handle in hooks:
            handle.remove()
        model.train(was_training)
    counts = counter.get_flop_counts()
    root = type(model).__name__
    total_ops = sum(counts.get("Global", {}).values()) // 2
    seen_in_mixers = sum(
        sum(counts.get(f"{root}.{name}", {}).values()) // 2 for name in mixers
    )
    by_mixer: dict[str, int] = defaultdict(int)
    for name, mixer in mixers.items():
        if name in grids:  # a pruned or unused block has no grid and costs nothing
            grid, prefix = grids[name]
            by_mixer[type(mixer).__name__] += int(mixer.macs(grid, prefix))
    mixer_macs = sum(by_mixer.values())
    other = total_ops - seen_in_mixers
    return MacCount(
        total=other + mixer_macs, mixer=mixer_macs, other=other, by_mixer=dict(by_mixer)
    )
