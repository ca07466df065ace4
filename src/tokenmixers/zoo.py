"""The model zoo: every named model is one entry of data, with the paper's facts beside it.

``create_model(name, **overrides)`` builds one; overrides use the reference
implementation's argument names (timm's for ViT and MLP-Mixer). Importing tokenmixers
also registers every entry in timm's registry as ``tm_<name>``, with a complete pretrained
config (timm's ``pretrained_cfg``: how the weights expect their images, the input-size
rules, the stem and head names) built from the family's :class:`DataConfig` below, and
with the published weights that fit the entry (:class:`Weights`).
"""

from __future__ import annotations

import contextlib
import fnmatch
import inspect
import json
import math
import os
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch

from tokenmixers._files import plain
from tokenmixers.backbones import Backbone
from tokenmixers.families import FAMILIES
from tokenmixers.text import did_you_mean
from tokenmixers.weights import WEIGHTS_NAME, checkpoint_num_classes, pretrained_filter


@dataclass(frozen=True)
class Paper:
    """Published facts about a model, for tests and reports."""

    title: str
    arxiv: str
    #: Parameter count of the model with its ImageNet (1000-class) head, exact.
    params: int
    #: Multiply-accumulates per image at the native resolution, in billions (as published,
    #: or as counted by timm where the paper gives none).
    gmacs: float | None = None
    #: ImageNet-1k top-1 accuracy (%) as published, with the training recipe it came from.
    top1: float | None = None
    top1_source: str = ""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str
    config: dict[str, Any]
    #: None for the generic skeletons, which no paper describes.
    paper: Paper | None
    notes: str = ""
    tags: tuple[str, ...] = field(default=())
    #: Published weights this entry can load (the first is the default), see :func:`_weights`.
    weights: tuple[Weights, ...] = field(default=())


@dataclass(frozen=True)
class Weights:
    """A published checkpoint for a zoo entry: its tag (timm's ``name.tag``), where it lives
    and the layout it is in (converted to ours on load, see ``tokenmixers.weights``)."""

    tag: str
    hf_hub_id: str
    #: ``"timm"``: timm's key layout; ``"official"``: the authors'; ``"tokenmixers"``: ours.
    layout: str
    description: str = ""


ZOO: dict[str, ModelSpec] = {}


def _add(name: str, family: str, paper: Paper | None, **config: Any) -> None:
    if name in ZOO:
        raise ValueError(f"duplicate zoo entry {name!r}")
    ZOO[name] = ModelSpec(name=name, family=family, config=config, paper=paper)


_VIT = "An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale"
_DEIT = "DeiT (arXiv 2012.12877), 300 epochs on ImageNet-1k"
_MIXER = "MLP-Mixer: An all-MLP Architecture for Vision"

# ---- ViT (attention) -------------------------------------------------------------------
_add("vit_tiny_patch16_224", "vit",
     Paper(_VIT, "2010.11929", params=5_717_416, gmacs=1.3, top1=72.2, top1_source=_DEIT),
     patch_size=16, embed_dim=192, depth=12, num_heads=3)
_add("vit_small_patch16_224", "vit",
     Paper(_VIT, "2010.11929", params=22_050_664, gmacs=4.6, top1=79.8, top1_source=_DEIT),
     patch_size=16, embed_dim=384, depth=12, num_heads=6)
_add("vit_base_patch16_224", "vit",
     Paper(_VIT, "2010.11929", params=86_567_656, gmacs=17.6, top1=81.8, top1_source=_DEIT),
     patch_size=16, embed_dim=768, depth=12, num_heads=12)

# ---- MLP-Mixer (token MLP) -------------------------------------------------------------
_add("mixer_s16_224", "mixer", Paper(_MIXER, "2105.01601", params=18_528_264, gmacs=3.8),
     patch_size=16, num_blocks=8, embed_dim=512)
_add("mixer_s32_224", "mixer", Paper(_MIXER, "2105.01601", params=19_104_624, gmacs=1.0),
     patch_size=32, num_blocks=8, embed_dim=512)
_add("mixer_b16_224", "mixer", Paper(_MIXER, "2105.01601", params=59_880_472, gmacs=12.6),
     patch_size=16, num_blocks=12, embed_dim=768)
_add("mixer_b32_224", "mixer", Paper(_MIXER, "2105.01601", params=60_293_428, gmacs=3.2),
     patch_size=32, num_blocks=12, embed_dim=768)
_add("mixer_l16_224", "mixer", Paper(_MIXER, "2105.01601", params=208_196_168, gmacs=44.6),
     patch_size=16, num_blocks=24, embed_dim=1024)


# ---- ShiftViT (shift) ------------------------------------------------------------------
_SHIFT = ("When Shift Operation Meets Vision Transformer: An Extremely Simple Alternative to "
          "Attention Mechanism")
_SHIFT_TOP1 = "ImageNet-1k, 300 epochs (paper; microsoft/SPACH README)"
_add("shiftvit_tiny_light", "shiftvit",
     Paper(_SHIFT, "2201.10801", params=19_608_328, gmacs=3.0, top1=79.4, top1_source=_SHIFT_TOP1),
     embed_dim=96, depths=(2, 2, 6, 2), mlp_ratio=4.0, drop_path_rate=0.2, n_div=12)
_add("shiftvit_tiny", "shiftvit",
     Paper(_SHIFT, "2201.10801", params=28_566_664, gmacs=4.5, top1=81.7, top1_source=_SHIFT_TOP1),
     embed_dim=96, depths=(6, 8, 18, 6), mlp_ratio=2.0, drop_path_rate=0.2, n_div=12)
_add("shiftvit_small_light", "shiftvit",
     Paper(_SHIFT, "2201.10801", params=33_796_360, gmacs=5.7, top1=81.6, top1_source=_SHIFT_TOP1),
     embed_dim=96, depths=(2, 2, 18, 2), mlp_ratio=4.0, drop_path_rate=0.4, n_div=12)
_add("shiftvit_small", "shiftvit",
     Paper(_SHIFT, "2201.10801", params=50_304_136, gmacs=8.8, top1=82.8, top1_source=_SHIFT_TOP1),
     embed_dim=96, depths=(10, 18, 36, 10), mlp_ratio=2.0, drop_path_rate=0.4, n_div=12)
_add("shiftvit_base_light", "shiftvit", Paper(_SHIFT, "2201.10801", params=59_708_776),
     embed_dim=128, depths=(2, 2, 18, 2), mlp_ratio=4.0, drop_path_rate=0.5, n_div=16)
_add("shiftvit_base", "shiftvit", Paper(_SHIFT, "2201.10801", params=89_026_408),
     embed_dim=128, depths=(10, 18, 36, 10), mlp_ratio=2.0, drop_path_rate=0.6, n_div=16)
_add("shiftvit_tiny_r4", "shiftvit", Paper(_SHIFT, "2201.10801", params=31_426_312),
     embed_dim=96, depths=(2, 2, 12, 3), mlp_ratio=4.0, drop_path_rate=0.2, n_div=12)
_add("shiftvit_small_r4", "shiftvit", Paper(_SHIFT, "2201.10801", params=51_523_336),
     embed_dim=96, depths=(2, 6, 24, 4), mlp_ratio=4.0, drop_path_rate=0.4, n_div=12)
_add("shiftvit_base_r4", "shiftvit", Paper(_SHIFT, "2201.10801", params=87_271_528),
     embed_dim=128, depths=(4, 6, 22, 4), mlp_ratio=4.0, drop_path_rate=0.5, n_div=16)

# ---- Sequencer2D (BiLSTM2D) ------------------------------------------------------------
_SEQ = "Sequencer: Deep LSTM for Image Classification"
_SEQ_TOP1 = "ImageNet-1k, 300 epochs (paper)"
_SEQ_S = {"layers": (4, 3, 8, 3), "patch_sizes": (7, 2, 1, 1),
          "embed_dims": (192, 384, 384, 384), "hidden_sizes": (48, 96, 96, 96),
          "mlp_ratios": (3.0, 3.0, 3.0, 3.0)}
_add("sequencer2d_s", "sequencer2d",
     Paper(_SEQ, "2205.01972", params=27_651_688, gmacs=8.4, top1=82.3, top1_source=_SEQ_TOP1),
     **_SEQ_S)
_add("sequencer2d_m", "sequencer2d",
     Paper(_SEQ, "2205.01972", params=38_307_688, gmacs=11.1, top1=82.8, top1_source=_SEQ_TOP1),
     **{**_SEQ_S, "layers": (4, 3, 14, 3)})
_add("sequencer2d_l", "sequencer2d",
     Paper(_SEQ, "2205.01972", params=54_298_216, gmacs=16.6, top1=83.4, top1_source=_SEQ_TOP1),
     **{**_SEQ_S, "layers": (8, 8, 16, 4)})
# The paper's ablations of Sequencer2D-S.
_add("sequencer2d_s_unidirectional", "sequencer2d", Paper(_SEQ, "2205.01972", params=20_991_592),
     **_SEQ_S, bidirectional=False)
_add("sequencer2d_s_add", "sequencer2d", Paper(_SEQ, "2205.01972", params=26_545_768),
     **_SEQ_S, union="add")
_add("sequencer2d_s_h2x", "sequencer2d", Paper(_SEQ, "2205.01972", params=45_395_560),
     **{**_SEQ_S, "hidden_sizes": (96, 192, 192, 192)})
_add("sequencer2d_s_without_fc", "sequencer2d", Paper(_SEQ, "2205.01972", params=25_433_704),
     **_SEQ_S, with_fc=False)
# One direction only: twice the hidden size, so the (bidirectional) output is C wide, no fc.
_add("sequencer2d_s_vertical", "sequencer2d", Paper(_SEQ, "2205.01972", params=27_645_544),
     **{**_SEQ_S, "hidden_sizes": (96, 192, 192, 192)}, union="vertical", with_fc=False)
_add("sequencer2d_s_horizontal", "sequencer2d", Paper(_SEQ, "2205.01972", params=27_645_544),
     **{**_SEQ_S, "hidden_sizes": (96, 192, 192, 192)}, union="horizontal", with_fc=False)
_add("gru_sequencer2d_s", "sequencer2d", Paper(_SEQ, "2205.01972", params=24_874_600),
     **_SEQ_S, rnn_type="gru")
_add("rnn_sequencer2d_s", "sequencer2d", Paper(_SEQ, "2205.01972", params=19_320_424),
     **_SEQ_S, rnn_type="rnn")
# The paper's 1-D baselines (its "vanilla" Sequencer; okojoalg/sequencer
# vanilla_sequencer.py): one BiLSTM over the flattened raster sequence, 2 * hidden = C wide,
# no fc, Sequencer2D-S's depths and MLP ratio. VSequencer: patch 14, a constant 16x16 grid at
# 384 wide (the later stages' 1x1 convolutions keep it); (H): Sequencer2D-S's pyramid;
# (PE): VSequencer plus a learned absolute position embedding added after the stem.
_VSEQ = {"layers": (4, 3, 8, 3), "patch_sizes": (14, 1, 1, 1), "embed_dims": (384,) * 4,
         "hidden_sizes": (192,) * 4, "mlp_ratios": (3.0,) * 4, "union": "flat",
         "with_fc": False}
# (Parameter counts: the authors' configurations counted, as for the 2-D ablations above.)
_add("vsequencer_s", "sequencer2d", Paper(_SEQ, "2205.01972", params=33_016_552), **_VSEQ)
_add("vsequencer_s_h", "sequencer2d", Paper(_SEQ, "2205.01972", params=27_645_544),
     **{**_SEQ_S, "hidden_sizes": (96, 192, 192, 192)}, union="flat", with_fc=False)
_add("vsequencer_s_pe", "sequencer2d", Paper(_SEQ, "2205.01972", params=33_114_856), **_VSEQ,
     pos_embed=True)

# ---- Vision-LSTM (mLSTM) ---------------------------------------------------------------
_VIL = "Vision-LSTM: xLSTM as Generic Vision Backbone"
# v1: depth = blocks (directions alternate); v2: depth = block pairs. Drop path is constant
# per block, as in the authors' recipes (T 0, S 0.05, B 0.2).
_add("vil_tiny", "vil", Paper(_VIL, "2406.04303", params=6_088_360),
     dim=192, depth=24, drop_path_rate=0.0)
_add("vil_tiny_plus", "vil", Paper(_VIL, "2406.04303", params=7_277_840),
     dim=192, depth=29, drop_path_rate=0.0)
_add("vil_small", "vil", Paper(_VIL, "2406.04303", params=22_792_360),
     dim=384, depth=24, drop_path_rate=0.05)
_add("vil_small_plus", "vil", Paper(_VIL, "2406.04303", params=24_628_664),
     dim=384, depth=26, drop_path_rate=0.05)
_add("vil_base", "vil", Paper(_VIL, "2406.04303", params=88_050_856),
     dim=768, depth=24, drop_path_rate=0.2)
_add("vil2_tiny", "vil2", Paper(_VIL, "2406.04303", params=6_391_528),
     dim=192, depth=12, drop_path_rate=0.0)
_add("vil2_small", "vil2", Paper(_VIL, "2406.04303", params=23_398_696),
     dim=384, depth=12, drop_path_rate=0.05)
_add("vil2_base", "vil2", Paper(_VIL, "2406.04303", params=89_263_528),
     dim=768, depth=12, drop_path_rate=0.2)

# ---- Vision Mamba (bidirectional Mamba) -------------------------------------------------
_VIM = ("Vision Mamba: Efficient Visual Representation Learning with Bidirectional State "
        "Space Model")
_VIM_TOP1 = "Vim paper / hustvl/Vim README, 300 epochs on ImageNet-1k (DeiT recipe)"
# Drop path: the authors' pretraining scripts (tiny: main.py's default 0.1, small 0.05; no
# script is published for base: main.py's default).
_add("vim_tiny", "vim",
     Paper(_VIM, "2401.09417", params=7_148_008, top1=76.1, top1_source=_VIM_TOP1),
     embed_dim=192, depth=24, drop_path_rate=0.1)
_add("vim_small", "vim",
     Paper(_VIM, "2401.09417", params=25_796_584, top1=80.5, top1_source=_VIM_TOP1),
     embed_dim=384, depth=24, drop_path_rate=0.05)
_add("vim_base", "vim",
     Paper(_VIM, "2401.09417", params=97_598_440, top1=81.9, top1_source=_VIM_TOP1),
     embed_dim=768, depth=24, drop_path_rate=0.1)
# The long-sequence variants (stride 8: 27x27 = 729 patches at 224), the authors' Vim-tiny+
# and Vim-small+ ("finetuned at finer granularity", hustvl/Vim README).
_VIM_PLUS = "hustvl/Vim README: fine-tuned from the stride-16 model at stride 8"
_add("vim_tiny_stride8", "vim",
     Paper(_VIM, "2401.09417", params=7_148_008 + 192 * (27 * 27 - 14 * 14), top1=78.3,
           top1_source=_VIM_PLUS),
     embed_dim=192, depth=24, stride=8, drop_path_rate=0.1)
_add("vim_small_stride8", "vim",
     Paper(_VIM, "2401.09417", params=25_796_584 + 384 * (27 * 27 - 14 * 14), top1=81.6,
           top1_source=_VIM_PLUS),
     embed_dim=384, depth=24, stride=8, drop_path_rate=0.05)

# ---- Generic skeletons: any mixer, everything else fixed (``mixer=...``) ----------------
# ViT-Ti-like widths for the isotropic one, a Swin/ShiftViT-T-like pyramid (at 64 wide)
# for the hierarchical one.
_add("isotropic", "isotropic", None, mixer="attention", patch_size=16, embed_dim=192, depth=12)
_add("hierarchical", "hierarchical", None, mixer="attention", patch_size=4,
     embed_dims=(64, 128, 256, 512), depths=(2, 2, 6, 2))


# ---- Published weights ------------------------------------------------------------------
# timm's own checkpoints of the same architectures, in timm's key layout (converted to ours
# on load). Each is the default (ImageNet-1k head) tag timm gives its model of that name.
def _weights(name: str, tag: str, hf_hub_id: str, layout: str, description: str = "") -> None:
    spec = ZOO[name]
    ZOO[name] = replace(spec, weights=(*spec.weights, Weights(tag, hf_hub_id, layout, description)))


for _name, _tag in (
    ("vit_tiny_patch16_224", "augreg_in21k_ft_in1k"),
    ("vit_small_patch16_224", "augreg_in21k_ft_in1k"),
    ("vit_base_patch16_224", "augreg2_in21k_ft_in1k"),
    ("mixer_b16_224", "goog_in21k_ft_in1k"),
    ("mixer_l16_224", "goog_in21k_ft_in1k"),
    ("sequencer2d_s", "in1k"),
    ("sequencer2d_m", "in1k"),
    ("sequencer2d_l", "in1k"),
):
    _weights(_name, _tag, f"timm/{_name}.{_tag}", "timm",
             f"timm's {_name}.{_tag} weights, converted to tokenmixers' layout on load")


# ---- Data / evaluation configs -----------------------------------------------------------
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_HALF = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class DataConfig:
    """How a family's weights expect their images, in timm's ``pretrained_cfg`` terms.

    ``fixed_input_size``: the model is built for one input size (a fixed token count, or
    a learned position embedding that timm treats as fixed; tokenmixers' ViT and ViL can
    resample theirs, but the weights were trained and are evaluated at ``input_size``).
    Every input side must in any case be a multiple of the total stride (the patch size
    for the isotropic families, the product of the stem and downsampling strides for the
    hierarchical ones) and at least that stride (``min_input_size``).
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_pct: float
    interpolation: str
    fixed_input_size: bool
    crop_mode: str = "center"
    input_size: tuple[int, int, int] = (3, 224, 224)
    license: str | None = None
    #: Where these values come from.
    source: str = ""


#: One per family: the reference implementation's evaluation settings.
DATA_CONFIGS: dict[str, DataConfig] = {
    # timm's vit_*_patch16_224 (augreg) cfgs; tests/test_timm_contract.py compares live.
    "vit": DataConfig(_HALF, _HALF, 0.9, "bicubic", True, license="apache-2.0",
                      source="timm vision_transformer.py default_cfgs (augreg)"),
    # timm's mixer_*_224 cfgs (Google's JAX weights normalise to [-1, 1]).
    "mixer": DataConfig(_HALF, _HALF, 0.875, "bicubic", True, license="apache-2.0",
                        source="timm mlp_mixer.py default_cfgs"),
    # timm's sequencer2d_* cfgs (the authors' code is timm-based); the ablations share them.
    "sequencer2d": DataConfig(_IMAGENET_MEAN, _IMAGENET_STD, 0.875, "bicubic", True,
                              license="apache-2.0", source="timm sequencer.py default_cfgs"),
    # microsoft/SPACH datasets.py build_transform: Resize(256/224 * size, bicubic),
    # CenterCrop(size), ImageNet mean/std (the DeiT/Swin pipeline). Any multiple of 32 works.
    "shiftvit": DataConfig(_IMAGENET_MEAN, _IMAGENET_STD, 0.875, "bicubic", False,
                           source="microsoft/SPACH datasets.py (eval transform)"),
    # NX-AI/vision-lstm eval.py: Resize(224, bicubic), CenterCrop(224) -- no crop margin --
    # and ImageNet mean/std. The learned position embedding is trained at 224.
    "vil": DataConfig(_IMAGENET_MEAN, _IMAGENET_STD, 1.0, "bicubic", True,
                      source="NX-AI/vision-lstm eval.py"),
    "vil2": DataConfig(_IMAGENET_MEAN, _IMAGENET_STD, 1.0, "bicubic", True,
                       source="NX-AI/vision-lstm eval.py"),
    # hustvl/Vim main.py / DeiT datasets.py: Resize(size / 0.875, bicubic), CenterCrop(size),
    # ImageNet mean/std. The learned position embedding is trained at 224.
    "vim": DataConfig(_IMAGENET_MEAN, _IMAGENET_STD, 0.875, "bicubic", True,
                      license="apache-2.0", source="hustvl/Vim main.py (eval transform)"),
    # The generic skeletons have no paper and no weights: timm's defaults, chosen here.
    "isotropic": DataConfig(_IMAGENET_MEAN, _IMAGENET_STD, 0.875, "bicubic", True,
                            source="timm's defaults (chosen: no published weights)"),
    "hierarchical": DataConfig(_IMAGENET_MEAN, _IMAGENET_STD, 0.875, "bicubic", False,
                               source="timm's defaults (chosen: no published weights)"),
}


def _arguments(spec: ModelSpec, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The entry's full argument set: the builder's defaults, the entry, the overrides."""
    build = FAMILIES[spec.family].build
    defaults = {
        n: p.default for n, p in inspect.signature(build).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    if isinstance(build, partial):
        defaults.update(build.keywords)
    return {**defaults, **spec.config, **(overrides or {})}


def total_stride(spec: ModelSpec, overrides: dict[str, Any] | None = None) -> int:
    """How much the entry downsamples in all: input sides must be multiples of this."""
    args = _arguments(spec, overrides)
    if "patch_sizes" in args:  # Sequencer2D: stem patch, then one downsampling per stage
        return math.prod(args["patch_sizes"])
    if "depths" in args:  # hierarchical: stem patch, then stride-2 (or given) downsamplings
        sizes = args.get("downsample_sizes") or [2] * (len(args["depths"]) - 1)
        return args["patch_size"] * math.prod(sizes)
    return args.get("stride") or args.get("patch_stride") or args["patch_size"]


def pretrained_cfg(name: str, tag: str | None = None) -> dict[str, Any]:
    """The complete timm ``pretrained_cfg`` of zoo entry ``name`` (with weights ``tag``, the
    default weights if None): what ``timm.data.resolve_data_config`` and timm's loaders read.
    """
    spec = get_spec(name)
    data = DATA_CONFIGS[spec.family]
    weights = {w.tag: w for w in spec.weights}
    if tag is not None and tag not in weights:
        raise ValueError(
            f"{name} has no weights tagged {tag!r}; its tags: "
            f"{', '.join(weights) or 'none (tokenmixers publishes no weights for it)'}"
        )
    chosen = weights.get(tag) if tag is not None else (spec.weights[0] if spec.weights else None)
    stride = total_stride(spec)
    c, h, w = data.input_size
    cfg: dict[str, Any] = {
        "architecture": TIMM_PREFIX + name,
        "tag": chosen.tag if chosen else None,
        "hf_hub_id": chosen.hf_hub_id if chosen else None,
        "input_size": data.input_size,
        "min_input_size": (c, stride, stride),
        "fixed_input_size": data.fixed_input_size,
        "interpolation": data.interpolation,
        "crop_pct": data.crop_pct,
        "crop_mode": data.crop_mode,
        "mean": data.mean,
        "std": data.std,
        "num_classes": 1000,
        "pool_size": (h // stride, w // stride),
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        "license": data.license,
        "notes": (
            "input height and width: multiples of the total stride, min_input_size[1:]",
            f"data config: {data.source}",
            *((chosen.description,) if chosen and chosen.description else ()),
        ),
    }
    if spec.paper is not None:
        cfg["paper_ids"] = f"arXiv:{spec.paper.arxiv}"
        cfg["paper_name"] = spec.paper.title
    return cfg


def _cfg_for_model(cfg: dict[str, Any], model: Backbone) -> dict[str, Any]:
    """``cfg`` with the model's own channels, size and classes (its overrides) applied."""
    cfg = dict(cfg)
    in_chans = model.patch_embed.in_chans
    h, w = model.img_size
    stride = model.feature_info[-1]["reduction"]
    cfg["input_size"] = (in_chans, h, w)
    cfg["min_input_size"] = (in_chans, stride, stride)
    cfg["pool_size"] = (h // stride, w // stride)
    cfg["num_classes"] = model.num_classes
    if len(cfg.get("mean") or ()) != in_chans:
        # Not the weights' channels: the statistics say nothing about these inputs.
        cfg["mean"], cfg["std"] = (0.5,) * in_chans, (0.5,) * in_chans
    return cfg


class UnknownModelError(ValueError):
    """An unknown model name; the message suggests the closest names."""


def list_models(pattern: str = "*", family: str | None = None) -> list[str]:
    """Names in the zoo matching a shell-style ``pattern``, sorted."""
    return sorted(
        n for n, s in ZOO.items()
        if fnmatch.fnmatch(n, pattern) and (family is None or s.family == family)
    )


def get_spec(name: str) -> ModelSpec:
    try:
        return ZOO[name]
    except KeyError:
        raise UnknownModelError(
            f"unknown model {name!r}{did_you_mean(name, ZOO, n=5, cutoff=0.4)} "
            "(tokenmixers.list_models() lists them all)"
        ) from None


def model_arguments(name: str) -> list[str]:
    """The override names ``create_model(name, ...)`` accepts (a family whose builder is a
    ``functools.partial`` fixes the keywords it binds, such as ViL's version)."""
    build = FAMILIES[get_spec(name).family].build
    fixed = set(build.keywords) if isinstance(build, partial) else set()
    return [p for p in inspect.signature(build).parameters if p not in fixed]


def resolved_arguments(name: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every argument ``create_model(name, **overrides)`` builds with: the family builder's
    defaults, the entry's configuration, then ``overrides``."""
    return _arguments(get_spec(name), overrides)


def create_model(
    name: str,
    *,
    pretrained: bool = False,
    pretrained_file: str | os.PathLike[str] | None = None,
    **overrides: Any,
) -> Backbone:
    """Build the zoo model ``name``; ``overrides`` replace its configuration entries.

    ``pretrained=True`` loads the entry's published weights (``ZOO[name].weights``, fetched
    through timm from the Hugging Face Hub), or ``pretrained_file`` (a ``.safetensors`` or
    ``.pth`` state dict in tokenmixers', timm's or the authors' layout, or a folder written
    by :func:`tokenmixers.save_pretrained`); giving ``pretrained_file`` implies
    ``pretrained``. A checkpoint with another class count loads without its head.
    ``model.pretrained_cfg`` is the entry's :func:`pretrained_cfg` with the overrides'
    channels, image size and classes applied.

    >>> m = create_model("mixer_s16_224", img_size=28, patch_size=4, in_chans=1,
    ...                  embed_dim=64, num_blocks=2, num_classes=10)
    """
    source = None
    if pretrained or pretrained_file is not None:  # say what is missing before building
        source = _weights_source(name, pretrained_file)
    model = _build(name, **overrides)
    if source is not None:
        _load_pretrained(model, source)
    return model


def _build(name: str, **overrides: Any) -> Backbone:
    spec = get_spec(name)
    family = FAMILIES[spec.family]
    accepted = model_arguments(name)
    unknown = [k for k in overrides if k not in accepted]
    if unknown:
        hints = "; ".join(
            f"{k!r}{did_you_mean(k, accepted, cutoff=0.4)}" for k in unknown
        )
        raise TypeError(
            f"{name} does not take {hints}. It accepts (the {family.reference} names): "
            f"{', '.join(accepted)}"
        )
    config = {**spec.config, **overrides}
    model = family.build(**config)
    model.model_name = name
    model.in_chans = model.patch_embed.in_chans  # timm's model attribute
    model.model_config = plain(config)
    json.dumps(model.model_config)  # fail here, not at save time, if a value is not plain data
    model.pretrained_cfg = _cfg_for_model(pretrained_cfg(name), model)
    model.default_cfg = model.pretrained_cfg
    return model


def _no_weights_error(name: str) -> RuntimeError:
    return RuntimeError(
        f"tokenmixers publishes no pretrained weights for {name}. Give a checkpoint (ours, "
        "timm's or the authors' layout): tokenmixers.create_model(name, pretrained_file=PATH) "
        f"or timm.create_model('{TIMM_PREFIX}{name}', pretrained=True, "
        "pretrained_cfg_overlay=dict(file=PATH)); or build it with pretrained=False"
    )


def _checkpoint_file(path: str | os.PathLike[str], option: str) -> Path:
    """A checkpoint file, or the weights file inside a :func:`save_pretrained` folder."""
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / WEIGHTS_NAME
    if not p.is_file():
        raise FileNotFoundError(
            f"{option}={str(path)!r}: no such checkpoint file (expected a .safetensors/.pth "
            f"file, or a folder written by tokenmixers.save_pretrained holding {WEIGHTS_NAME})"
        )
    return p


def _with_file(cfg: dict[str, Any], path: Path) -> dict[str, Any]:
    """``cfg`` pointing at a local checkpoint, with that checkpoint's class count."""
    cfg = {**cfg, "file": str(path), "hf_hub_id": None, "url": None}
    n = checkpoint_num_classes(path)
    if n is not None:
        cfg["num_classes"] = n
    return cfg


def _weights_source(name: str, file: str | os.PathLike[str] | None) -> dict[str, Any]:
    """The pretrained cfg to load ``name``'s weights from: ``file``, else its published ones."""
    source = pretrained_cfg(name)
    if file is not None:
        return _with_file(source, _checkpoint_file(file, "pretrained_file"))
    if not source.get("hf_hub_id"):
        raise _no_weights_error(name)
    return source


def _load_pretrained(model: Backbone, source: dict[str, Any], cache_dir: Any = None) -> None:
    """Load the weights ``source`` (a pretrained cfg) names into ``model`` with timm's loader,
    which drops a head of another class count and adapts the stem to other input channels."""
    from timm.models import load_pretrained

    load_pretrained(
        model, pretrained_cfg=source, num_classes=model.num_classes,
        in_chans=model.patch_embed.in_chans, filter_fn=pretrained_filter, cache_dir=cache_dir,
    )


# ---- timm registry ---------------------------------------------------------------------
TIMM_PREFIX = "tm_"

#: What timm's ``register_model`` reads for this module's entrypoints (filled in by
#: :func:`register_with_timm`): one default cfg per ``tm_<name>``, tagged by its weights.
default_cfgs: dict[str, Any] = {}


def _create_for_timm(
    name: str,
    pretrained: bool = False,
    *,
    pretrained_cfg: Any = None,
    pretrained_cfg_overlay: dict[str, Any] | None = None,
    cache_dir: Any = None,
    **kwargs: Any,
) -> Any:
    """``timm.create_model('tm_<name>', ...)``: timm's own builder, so the standard factory
    arguments work (``pretrained_cfg``, ``pretrained_cfg_overlay``, ``features_only``,
    ``out_indices`` (default: every block or stage), ``feature_cls`` (default timm's
    ``'getter'``, which wraps ``forward_intermediates``), ``cache_dir``, ``device`` (the
    model is built there) and ``dtype``; timm's
    ``checkpoint_path`` is applied by timm after the build)."""
    from timm.models import build_model_with_cfg, resolve_pretrained_cfg

    overlay = dict(pretrained_cfg_overlay or {})
    if overlay.get("file"):
        path = _checkpoint_file(overlay["file"], "pretrained_cfg_overlay['file']")
        overlay["file"] = str(path)
        if "num_classes" not in overlay:
            n = checkpoint_num_classes(path)
            if n is not None:
                overlay["num_classes"] = n
    if pretrained:
        resolved = resolve_pretrained_cfg(TIMM_PREFIX + name, pretrained_cfg, overlay)
        if not (resolved.has_weights or resolved.state_dict):
            raise _no_weights_error(name)
    features = bool(kwargs.get("features_only"))
    feature_cls = kwargs.get("feature_cls", "getter")
    if features and not _is_getter(feature_cls):
        raise ValueError(
            f"feature_cls={feature_cls!r} does not fit tokenmixers models: their features come "
            "from forward_intermediates (blocks and stages are not run as hookable or "
            "traceable modules in order). Use feature_cls='getter', the default"
        )
    device, dtype = kwargs.pop("device", None), kwargs.pop("dtype", None)
    with torch.device(device) if device is not None else contextlib.nullcontext():
        model = build_model_with_cfg(
            partial(_build, name),
            TIMM_PREFIX + name,
            pretrained,
            pretrained_cfg=pretrained_cfg,
            pretrained_cfg_overlay=overlay,
            feature_cfg={"feature_cls": "getter", "out_indices": None},
            pretrained_filter_fn=pretrained_filter,
            cache_dir=cache_dir,
            **kwargs,
        )
    if dtype is not None:
        model = model.to(dtype=dtype)
    if not features:
        model.pretrained_cfg = _cfg_for_model(model.pretrained_cfg, model)
        model.default_cfg = model.pretrained_cfg
    return model


def _is_getter(feature_cls: Any) -> bool:
    from timm.models._features import FeatureGetterNet

    if isinstance(feature_cls, str):
        return feature_cls.lower() == "getter"
    return isinstance(feature_cls, type) and issubclass(feature_cls, FeatureGetterNet)


def _timm_entrypoint(name: str):
    def entrypoint(pretrained: bool = False, **kwargs: Any) -> Any:
        return _create_for_timm(name, pretrained, **kwargs)

    entrypoint.__name__ = TIMM_PREFIX + name
    entrypoint.__qualname__ = TIMM_PREFIX + name
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = f"tokenmixers' {name} (see tokenmixers.zoo.ZOO[{name!r}])."
    return entrypoint


def _timm_cfgs() -> dict[str, dict[str, Any]]:
    """``'tm_<name>[.tag]' -> pretrained cfg`` for every entry and each of its weights."""
    cfgs = {}
    for name, spec in ZOO.items():
        if not spec.weights:
            cfgs[TIMM_PREFIX + name] = pretrained_cfg(name)
        for w in spec.weights:
            cfg = pretrained_cfg(name, w.tag)
            cfgs[f"{TIMM_PREFIX}{name}.{w.tag}"] = {k: v for k, v in cfg.items() if k != "tag"}
    return cfgs


def register_with_timm() -> list[str]:
    """Register every zoo model in timm as ``tm_<name>``, with its pretrained cfgs, never
    replacing a timm model. Returns the names registered by this call."""
    import timm
    from timm.models import generate_default_cfgs, register_model

    default_cfgs.update(generate_default_cfgs(_timm_cfgs()))
    done = []
    for name in ZOO:
        timm_name = TIMM_PREFIX + name
        if timm.is_model(timm_name):
            continue  # already ours (re-import) or timm's own: leave it alone
        register_model(_timm_entrypoint(name))
        done.append(timm_name)
    return done
