"""Model families: how a family's reference arguments become a backbone, and how its
checkpoints from other sources map onto ours.

A family's ``build`` takes the reference implementation's argument names (timm's for ViT
and MLP-Mixer), keyword-only and without ``**kwargs``, so a misspelt override raises.
``converters`` maps a checkpoint source (``"timm"``, ``"official"``) to a function that
turns that source's state dict into ours.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from tokenmixers.backbones import Backbone

StateDict = dict[str, torch.Tensor]
Converter = Callable[[StateDict], StateDict]


@dataclass(frozen=True)
class Family:
    name: str
    build: Callable[..., Backbone]
    #: Where the argument names and the reference outputs come from.
    reference: str
    converters: dict[str, Converter] = field(default_factory=dict)
    #: Overrides that make a small model of this family (tiny dims, 32x32 inputs, 10
    #: classes): what the test suite and smoke runs build for every zoo entry.
    tiny: dict[str, Any] = field(default_factory=dict)


FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    if family.name in FAMILIES:
        raise ValueError(f"family {family.name!r} is already registered")
    FAMILIES[family.name] = family
    return family


def rename_keys(rules: list[tuple[str, str]]) -> Converter:
    """A converter that applies regex substitutions, in order, to every key."""
    compiled = [(re.compile(p), r) for p, r in rules]

    def convert(state: StateDict) -> StateDict:
        out = {}
        for key, value in state.items():
            for pattern, repl in compiled:
                key = pattern.sub(repl, key)
            out[key] = value
        return out

    return convert


def _import_all() -> None:
    # Every module in this package defines and registers one family.
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")


_import_all()

__all__ = ["FAMILIES", "Family", "register_family", "rename_keys"]
