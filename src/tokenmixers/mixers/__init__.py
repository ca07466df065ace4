"""Token mixers: one module per file, all behind one contract (:mod:`tokenmixers.mixers.base`).

A mixer maps ``[B, N, C]`` tokens to ``[B, N, C]`` tokens and is called as
``mixer(x, grid=(h, w))``: the last ``h*w`` tokens are the grid in row-major order and
any before them are prefix tokens (a class token). The grid is a property of the
input, not of the constructor, wherever the mixer allows it.

A new mixer is one file: a :class:`TokenMixer` subclass that declares its facts (label,
topology, width-scaled defaults, resolution behaviour, its own init and its MACs in
closed form) and one ``@register_mixer("name")``. Every module in this package is
imported here, so the mixers in it register themselves; a mixer defined elsewhere
registers when its module is imported (``tokenmixers --plugin FILE.py`` on the command
line). It then works in both generic skeletons, ``count_macs``, ``bench`` and
``compare`` with no other edit.
"""

from __future__ import annotations

import importlib
import pkgutil

from tokenmixers.mixers.base import (
    MIXERS,
    TokenMixer,
    Topology,
    create_mixer,
    get_mixer,
    mix_on_grid,
    register_mixer,
)
from tokenmixers.plugins import load_plugins

for _info in pkgutil.iter_modules(__path__):
    if _info.name != "base":
        importlib.import_module(f"{__name__}.{_info.name}")
# Mixers of the user's own that a parent process named (tokenmixers --plugin FILE.py).
load_plugins()

__all__ = [
    "MIXERS",
    "TokenMixer",
    "Topology",
    "create_mixer",
    "get_mixer",
    "mix_on_grid",
    "register_mixer",
]
