"""The two skeletons every model is built from."""

from tokenmixers.backbones.base import Backbone
from tokenmixers.backbones.hierarchical import Downsample, HierarchicalBackbone, Stage
from tokenmixers.backbones.isotropic import IsotropicBackbone

__all__ = ["Backbone", "Downsample", "HierarchicalBackbone", "IsotropicBackbone", "Stage"]
