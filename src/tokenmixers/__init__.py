"""tokenmixers: ViT, MLP-Mixer, ShiftViT, Sequencer2D and Vision-LSTM as one skeleton with
different token mixers."""

from __future__ import annotations

from tokenmixers.backbones import Backbone, HierarchicalBackbone, IsotropicBackbone
from tokenmixers.blocks import Block
from tokenmixers.hub import from_pretrained, load_model, push_to_hub, save_pretrained
from tokenmixers.mixers import MIXERS, create_mixer, register_mixer
from tokenmixers.version import __version__
from tokenmixers.weights import (
    CheckpointMismatchError,
    load_weights,
    save_weights,
)
from tokenmixers.zoo import (
    ZOO,
    UnknownModelError,
    create_model,
    get_spec,
    list_models,
    pretrained_cfg,
    register_with_timm,
)

register_with_timm()

__all__ = [
    "MIXERS",
    "ZOO",
    "Backbone",
    "Block",
    "CheckpointMismatchError",
    "HierarchicalBackbone",
    "IsotropicBackbone",
    "UnknownModelError",
    "__version__",
    "create_mixer",
    "create_model",
    "from_pretrained",
    "get_spec",
    "list_models",
    "load_model",
    "load_weights",
    "pretrained_cfg",
    "push_to_hub",
    "register_mixer",
    "save_pretrained",
    "save_weights",
]
