"""Token mixers: one module per file, all behind one contract.

A mixer maps ``[B, N, C]`` tokens to ``[B, N, C]`` tokens and is called as
``mixer(x, grid=(h, w))``: the last ``h*w`` tokens are the grid in row-major order and
any before them are prefix tokens (a class token). The grid is a property of the
input, not of the constructor, wherever the mixer allows it; a mixer that is built for
one grid (the token MLP) sets ``fixed_grid`` and refuses any other.

Each mixer registers its class (or a factory, where options need translating) under a
short name with :func:`register_mixer`. It is called as ``factory(dim, **mixer_kwargs)``,
plus ``grid=`` and ``num_prefix_tokens=`` if its signature names them, so that any mixer
fits any skeleton; it takes only the keywords it declares, so a misspelt option raises
instead of vanishing.

Every mixer also states its cost in closed form, ``mixer.macs(grid, num_prefix_tokens)``:
the multiply-accumulates of one forward pass for one image. ``tokenmixers.flops`` uses it
instead of what PyTorch's operator-level counter sees, which misses attention kernels,
LSTMs and scans.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

MixerFactory = Callable[..., nn.Module]

MIXERS: dict[str, MixerFactory] = {}


def register_mixer(name: str) -> Callable[[MixerFactory], MixerFactory]:
    """Decorator: make ``factory`` available as ``mixer=name`` in every skeleton."""

    def wrap(factory: MixerFactory) -> MixerFactory:
        if name in MIXERS:
            raise ValueError(f"a mixer named {name!r} is already registered")
        MIXERS[name] = factory
        return factory

    return wrap


def mix_on_grid(
    x: torch.Tensor, grid: tuple[int, int], fn: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """Apply a grid mixer ``fn: [B, h, w, C] -> [B, h, w, C]`` to the last ``h*w`` tokens of
    ``x: [B, N, C]``; prefix tokens (a class token) pass through unchanged."""
    b, n, c = x.shape
    h, w = grid
    prefix = n - h * w
    if prefix < 0:
        raise ValueError(f"{n} tokens cannot hold a {h}x{w} grid")
    out = fn(x[:, prefix:].reshape(b, h, w, c)).reshape(b, h * w, c)
    return torch.cat([x[:, :prefix], out], dim=1) if prefix else out


def create_mixer(
    name: str, dim: int, *, grid: tuple[int, int], num_prefix_tokens: int = 0, **kwargs: Any
) -> nn.Module:
    """Build the mixer registered as ``name`` for width ``dim`` (see the module docstring)."""
    try:
        factory = MIXERS[name]
    except KeyError:
        close = difflib.get_close_matches(name, MIXERS, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown mixer {name!r}{hint} Registered: {sorted(MIXERS)}") from None
    params = set(inspect.signature(factory).parameters)
    layout = {"grid": grid, "num_prefix_tokens": num_prefix_tokens}
    accepted = params - {"dim", *layout}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise TypeError(
            f"mixer {name!r} does not take {unknown}; it accepts {sorted(accepted) or 'no options'}"
        )
    # A factory (or mixer class) is given the grid and prefix count only if it asks for them.
    return factory(dim, **{k: v for k, v in layout.items() if k in params}, **kwargs)


def _import_all() -> None:
    # Every module in this package defines and registers one mixer.
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")


_import_all()

__all__ = ["MIXERS", "create_mixer", "mix_on_grid", "register_mixer"]
