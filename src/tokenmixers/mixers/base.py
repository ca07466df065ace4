"""The token-mixer contract: what a mixer declares about itself, and the registry.

A mixer is an :class:`nn.Module` subclass of :class:`TokenMixer` that maps ``[B, N, C]``
tokens to ``[B, N, C]`` tokens, called as ``mixer(x, grid=(h, w))``: the last ``h*w``
tokens are the grid in row-major order, any before them prefix tokens (a class token).

A mixer owns all its facts, on the class or the instance:

- ``label``: how reports name it; ``macs_formula``: its cost per image in words;
- ``topology`` (:class:`Topology`): a pre-norm before it or not, a residual around it or
  not, a channel MLP after it in its own design or not;
- ``defaults(dim, index)``: its options' defaults for the ``index``-th block of a stage
  ``dim`` wide (width-scaled ones, and per-block ones such as ViL's alternating scans);
- ``prefix_tokens``: ``"mixed"`` (prefix tokens take part) or ``"passthrough"`` (they come
  back unchanged);
- ``resolution``: ``"any"`` (any grid), ``"resample"`` (its weights are resampled to a
  grid it was not built for) or ``"fixed"`` (built for ``fixed_grid`` only; any other grid is
  refused with an error naming both);
- ``reset_parameters()``: its own initialisation, run when it is built; skeletons leave a
  mixer's parameters alone;
- ``macs(grid, num_prefix_tokens)``: multiply-accumulates of one forward pass for one image,
  in closed form (PyTorch's operator counter misses attention kernels, LSTMs, scans,
  poolings and FFTs).

:func:`register_mixer` checks the contract when the class is registered, so a missing fact
fails there and not silently later.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from tokenmixers.layers import is_fx_proxy
from tokenmixers.text import did_you_mean

PREFIX_MODES = ("mixed", "passthrough")
RESOLUTIONS = ("any", "resample", "fixed")


@dataclass(frozen=True)
class Topology:
    """Where a mixer sits in its block:

        x = x + drop_path(mixer(norm1(x)))    norm=True,  residual=True  (most mixers)
        x = mixer(x)                          norm=False, residual=False (ShiftViT's shift)
        x = x + drop_path(mlp(norm2(x)))      mlp=True: its own design has a channel MLP

    ``mlp`` is the mixer's own design (ViL's mLSTM has none: its up-projection is its MLP);
    the paper families follow it, while the generic skeletons give every mixer the same
    channel MLP so that a comparison changes the mixer only.
    """

    norm: bool = True
    residual: bool = True
    mlp: bool = True


class TokenMixer(nn.Module):
    """Base class of every token mixer: ``[B, N, C] -> [B, N, C]`` on a grid (module docstring)."""

    #: The registry name (set by :func:`register_mixer`).
    name: ClassVar[str] = ""
    label: ClassVar[str] = ""
    macs_formula: ClassVar[str] = ""
    topology: ClassVar[Topology] = Topology()
    prefix_tokens: ClassVar[str] = "passthrough"
    resolution: ClassVar[str] = "any"
    #: The grid a ``resolution="fixed"`` mixer was built for (set in its constructor).
    fixed_grid: tuple[int, int] | None = None

    @classmethod
    def defaults(cls, dim: int, index: int) -> dict[str, Any]:
        """Options for the ``index``-th block of a stage ``dim`` wide, before overrides."""
        return {}

    def reset_parameters(self) -> None:
        """The mixer's own initialisation (nothing to do for a mixer without parameters)."""

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        raise NotImplementedError

    def macs(self, grid: tuple[int, int], num_prefix_tokens: int = 0) -> int:
        raise NotImplementedError


MIXERS: dict[str, type[TokenMixer]] = {}


def _contract_errors(cls: Any) -> list[str]:
    if not (isinstance(cls, type) and issubclass(cls, TokenMixer)):
        return ["it must be a class that subclasses tokenmixers.mixers.TokenMixer"]
    errors = []
    if cls.macs is TokenMixer.macs:
        errors.append("it defines no macs(grid, num_prefix_tokens) (its cost in closed form)")
    if cls.forward is TokenMixer.forward:
        errors.append("it defines no forward(x, grid)")
    if not cls.label:
        errors.append("it has no label (how reports name it)")
    if not cls.macs_formula:
        errors.append("it has no macs_formula (its cost in words, for the docs)")
    if not isinstance(cls.topology, Topology):
        errors.append(f"its topology is {cls.topology!r}, not a Topology")
    if cls.prefix_tokens not in PREFIX_MODES:
        errors.append(f"prefix_tokens is {cls.prefix_tokens!r}, not one of {PREFIX_MODES}")
    if cls.resolution not in RESOLUTIONS:
        errors.append(f"resolution is {cls.resolution!r}, not one of {RESOLUTIONS}")
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    if not params or params[0].name != "dim":
        errors.append("its constructor must take the width first, as `dim`")
    if any(p.kind is p.VAR_KEYWORD for p in params):
        errors.append("its constructor takes **kwargs (a misspelt option would vanish)")
    if cls.resolution == "fixed" and "grid" not in {p.name for p in params}:
        errors.append('resolution="fixed" needs a `grid` constructor argument')
    return errors


def register_mixer(name: str) -> Callable[[type[TokenMixer]], type[TokenMixer]]:
    """Class decorator: make the mixer available as ``mixer=name`` in every skeleton,
    ``bench``, ``compare`` and the reports. The contract is checked here."""

    def wrap(cls: type[TokenMixer]) -> type[TokenMixer]:
        if name in MIXERS:
            raise ValueError(
                f"a mixer named {name!r} is already registered ({MIXERS[name].__module__}."
                f"{MIXERS[name].__qualname__}); choose another name"
            )
        errors = _contract_errors(cls)
        if errors:
            raise TypeError(
                f"cannot register {getattr(cls, '__qualname__', cls)!r} as mixer {name!r}: "
                + "; ".join(errors)
            )
        cls.name = name
        MIXERS[name] = cls
        return cls

    return wrap


def get_mixer(name: str) -> type[TokenMixer]:
    """The mixer class registered as ``name``."""
    try:
        return MIXERS[name]
    except KeyError:
        raise ValueError(
            f"unknown mixer {name!r}{did_you_mean(name, MIXERS)} Registered: "
            f"{', '.join(sorted(MIXERS))}. A mixer of your own must be imported (or given "
            "to the command line as --plugin FILE.py) before it is used."
        ) from None


def create_mixer(
    name: str, dim: int, *, grid: tuple[int, int], num_prefix_tokens: int = 0, index: int = 0,
    **kwargs: Any,
) -> TokenMixer:
    """Build mixer ``name`` for width ``dim`` as the ``index``-th block of its stage: its
    :meth:`~TokenMixer.defaults`, then ``kwargs``. ``grid`` and ``num_prefix_tokens`` are
    passed only to a mixer whose constructor names them."""
    cls = get_mixer(name)
    params = set(inspect.signature(cls.__init__).parameters) - {"self"}
    layout = {"grid": grid, "num_prefix_tokens": num_prefix_tokens}
    accepted = params - {"dim", *layout}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise TypeError(
            f"mixer {name!r} does not take {unknown}; it accepts {sorted(accepted) or 'no options'}"
        )
    options = {**cls.defaults(dim, index), **kwargs}
    return cls(dim, **{k: v for k, v in layout.items() if k in params}, **options)


def mix_on_grid(
    x: torch.Tensor, grid: tuple[int, int], fn: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """Apply a grid mixer ``fn: [B, h, w, C] -> [B, h, w, C]`` to the last ``h*w`` tokens of
    ``x: [B, N, C]``; prefix tokens (a class token) pass through unchanged."""
    h, w = grid
    if is_fx_proxy(x):  # traced by torch.fx: the token count is not a Python value
        b, c = x.shape[0], x.shape[2]
        out = fn(x[:, -h * w :].reshape(b, h, w, c)).reshape(b, h * w, c)
        return torch.cat([x[:, : x.shape[1] - h * w], out], dim=1)
    b, n, c = x.shape
    prefix = n - h * w
    if prefix < 0:
        raise ValueError(f"{n} tokens cannot hold a {h}x{w} grid")
    out = fn(x[:, prefix:].reshape(b, h, w, c)).reshape(b, h * w, c)
    return torch.cat([x[:, :prefix], out], dim=1) if prefix else out


def fx_leaf_call(mixer: nn.Module, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``mixer(x, grid)`` as one node where torch.fx traces, for a mixer whose forward needs
    Python sizes (loops over the sequence, a grid compared or resampled): the node calls the
    mixer when the graph runs, with the real sizes. A module that calls it wraps it too:
    ``torch.fx.wrap("fx_leaf_call")``."""
    return mixer(x, grid)


torch.fx.wrap("fx_leaf_call")


def is_symbolic_grid(grid: tuple[Any, Any]) -> bool:
    """Whether ``grid`` holds torch.fx graph values (a backbone traced at any size) rather
    than Python ints."""
    return any(is_fx_proxy(g) for g in grid)


def fixed_grid_error(mixer: TokenMixer, got: str) -> ValueError:
    """The error of a ``resolution="fixed"`` mixer asked for another grid."""
    h, w = mixer.fixed_grid or (0, 0)
    return ValueError(
        f"this {mixer.name or type(mixer).__name__} mixer was built for a {h}x{w} grid and "
        f"cannot take {got}: its weights are shaped by the token count. Build a model for "
        "the new size (img_size=...)."
    )
