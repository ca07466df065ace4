"""The model zoo: every named model is one entry of data, with the paper's facts beside it.

``create_model(name, **overrides)`` builds one; overrides use the reference
implementation's argument names (timm's for ViT and MLP-Mixer). Importing tokenmixers
also registers every entry in timm's registry as ``tm_<name>``.
"""

from __future__ import annotations

import fnmatch
import inspect
import json
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from tokenmixers._files import plain
from tokenmixers.backbones import Backbone
from tokenmixers.families import FAMILIES
from tokenmixers.text import did_you_mean


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

# ---- Generic skeletons: any mixer, everything else fixed (``mixer=...``) ----------------
# ViT-Ti-like widths for the isotropic one, a Swin/ShiftViT-T-like pyramid (at 64 wide)
# for the hierarchical one.
_add("isotropic", "isotropic", None, mixer="attention", patch_size=16, embed_dim=192, depth=12)
_add("hierarchical", "hierarchical", None, mixer="attention", patch_size=4,
     embed_dims=(64, 128, 256, 512), depths=(2, 2, 6, 2))


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


def create_model(name: str, **overrides: Any) -> Backbone:
    """Build the zoo model ``name``; ``overrides`` replace its configuration entries.

    >>> m = create_model("mixer_s16_224", img_size=28, patch_size=4, in_chans=1,
    ...                  embed_dim=64, num_blocks=2, num_classes=10)
    """
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
    model.model_config = plain(config)
    json.dumps(model.model_config)  # fail here, not at save time, if a value is not plain data
    model.pretrained_cfg = _pretrained_cfg(model)
    model.default_cfg = model.pretrained_cfg
    return model


def _pretrained_cfg(model: Backbone) -> dict[str, Any]:
    """What timm's data helpers (``resolve_data_config``, ``create_transform``) read."""
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    in_chans = model.patch_embed.in_chans
    mean, std = IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    if in_chans != 3:
        mean, std = (0.5,) * in_chans, (0.5,) * in_chans
    return {
        "architecture": model.model_name,
        "input_size": (in_chans, *model.img_size),
        "interpolation": "bicubic",
        "crop_pct": 0.9,
        "mean": mean,
        "std": std,
        "num_classes": model.num_classes,
        "first_conv": "patch_embed.proj",
        "classifier": "head",
    }


# ---- timm registry ---------------------------------------------------------------------
TIMM_PREFIX = "tm_"


def _timm_entrypoint(name: str):
    def entrypoint(
        pretrained: bool = False,
        pretrained_cfg: Any = None,
        pretrained_cfg_overlay: Any = None,
        cache_dir: Any = None,
        **kwargs: Any,
    ) -> Backbone:
        if pretrained:
            raise RuntimeError(
                f"tokenmixers publishes no pretrained weights for {name}; create it with "
                "pretrained=False and load a checkpoint with tokenmixers.load_weights(model, path)"
            )
        return create_model(name, **kwargs)

    entrypoint.__name__ = TIMM_PREFIX + name
    entrypoint.__qualname__ = TIMM_PREFIX + name
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = f"tokenmixers' {name} (see tokenmixers.zoo.ZOO[{name!r}])."
    return entrypoint


def register_with_timm() -> list[str]:
    """Register every zoo model in timm as ``tm_<name>``, never replacing a timm model.
    Returns the names registered by this call."""
    import timm
    from timm.models import register_model

    done = []
    for name in ZOO:
        timm_name = TIMM_PREFIX + name
        if timm.is_model(timm_name):
            continue  # already ours (re-import) or timm's own: leave it alone
        register_model(_timm_entrypoint(name))
        done.append(timm_name)
    return done
