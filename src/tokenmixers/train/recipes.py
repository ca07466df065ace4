"""The papers' ImageNet-1k training recipes as presets: ``tokenmixers train --recipe NAME``.

A preset fills every ``train`` option the paper (or the authors' released configuration)
fixes; options given on the command line or in ``--config`` win over it, and options the
preset leaves open fall back to the dataset's recipe (:data:`tokenmixers.train.config.RECIPES`).
Each preset names its source next to its values, the setting it represents, the values that
depend on the model (read by zoo name, e.g. Sequencer2D-S/M/L's drop path), and what this
trainer cannot do (repeated augmentation, 3-Augment, a resolution schedule, ...): those are
printed by ``--print-config`` and warned about when a run uses the preset, never dropped
silently.

Learning rates are written in this trainer's form, ``lr = lr_base * global_batch / 512``:
a paper's rate ``r`` at global batch ``B`` is ``lr_base = r * 512 / B``, exactly, and a
preset's ``global_batch`` is split over processes and accumulation steps, so the peak rate
is the paper's on any number of GPUs.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

from tokenmixers.text import close_matches
from tokenmixers.train.errors import ConfigError

__all__ = [
    "FAMILY_RECIPES",
    "PRESETS",
    "Recipe",
    "RecipeWarning",
    "Stage",
    "describe",
    "get_recipe",
    "per_process_batch",
    "recipe_options",
    "warn_not_applied",
]


class RecipeWarning(UserWarning):
    """A part of a paper's recipe that this trainer does not apply."""


@dataclass(frozen=True)
class Stage:
    """One stage of a resolution schedule (e.g. ViL: pre-train at 192 px, then 224 px)."""

    img_size: int
    epochs: int
    lr_base: float
    warmup_epochs: float
    note: str = ""


@dataclass(frozen=True)
class Recipe:
    """A paper's training recipe. ``options``: ``train`` options (names as in
    :class:`~tokenmixers.train.config.TrainConfig`); ``per_model``: zoo model name ->
    options that differ per model size (and ``global_batch`` / ``stages`` / ``not_applied``
    overrides); ``top1``: the ImageNet-1k top-1 the paper (or the authors' README) reports
    for each targeted model, with this recipe."""

    name: str
    paper: str
    arxiv: str
    #: where the numbers come from (table, appendix, config file)
    source: str
    #: which of the paper's settings the preset is (e.g. ImageNet-1k from scratch)
    setting: str
    global_batch: int
    #: the paper's learning-rate rule, in its own words, and how lr_base was derived
    lr_rule: str
    options: dict[str, Any]
    #: the model the values are shown for when --print-config has no --model
    default_model: str
    per_model: dict[str, dict[str, Any]] = field(default_factory=dict)
    top1: dict[str, float | None] = field(default_factory=dict)
    top1_source: str = ""
    #: the paper's resolution schedule (empty: one resolution throughout)
    stages: tuple[Stage, ...] = ()
    #: what the paper does and this trainer cannot (printed, and warned about when used)
    not_applied: tuple[str, ...] = ()
    #: facts that could not be found in the sources at hand
    unknown: tuple[str, ...] = ()

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(self.per_model)


#: The "off" value of options whose ``None`` the dataset recipe would fill: with a preset,
#: ``--auto-augment none`` / ``--color-jitter none`` mean off.
OFF: dict[str, Any] = {"auto_augment": "", "color_jitter": 0.0}

#: Keys of ``per_model`` entries that are not ``train`` options.
_SPECIAL = frozenset({"global_batch", "stages", "not_applied"})

# ImageNet-1k's training set; big_vision trains on its first 99% (train[:99%]).
_BV_TRAIN_IMAGES = 1_268_355  # 99% of 1,281,167
# big_vision's 10k warm-up steps at batch 4096, in epochs of train[:99%].
_BV_WARMUP_EPOCHS = round(10_000 * 4096 / _BV_TRAIN_IMAGES, 2)  # 32.29

_IMAGENET_AUG = dict(scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), hflip=0.5)

PRESETS: dict[str, Recipe] = {}


def _add(recipe: Recipe) -> None:
    PRESETS[recipe.name] = recipe


# ---- DeiT -----------------------------------------------------------------------------------
# Source: Touvron et al., "Training data-efficient image transformers & distillation through
# attention", arXiv 2012.12877, Table 9 ("ingredients and hyper-parameters", DeiT-B column;
# the page number was not checked: no copy of the PDF was reachable), and the authors'
# facebookresearch/deit main.py defaults and README_deit.md training commands (4 GPUs x 256
# = 1024 images per step for DeiT-Ti/S; 2 nodes x 8 GPUs x 64 = 1024 for DeiT-B).
_add(Recipe(
    name="deit", paper="Training data-efficient image transformers (DeiT)", arxiv="2012.12877",
    source="DeiT arXiv 2012.12877 Table 9; facebookresearch/deit main.py defaults and "
           "README_deit.md",
    setting="ImageNet-1k from scratch, 300 epochs at 224 px, no distillation",
    global_batch=1024,
    lr_rule="paper: lr = 0.0005 x batchsize / 512 (Table 9), the same rule as this trainer: "
            "lr_base 5e-4",
    options=dict(
        epochs=300, lr_base=5e-4, min_lr=1e-5, warmup_epochs=5.0, warmup_lr=1e-6,
        sched="cosine", opt="adamw", opt_eps=1e-8, weight_decay=0.05, smoothing=0.1,
        clip_grad=None, drop=0.0, drop_path=0.1, **_IMAGENET_AUG,
        # color jitter 0.3 is main.py's default; timm ignores it while RandAugment is on
        color_jitter=0.3, auto_augment="rand-m9-mstd0.5-inc1", reprob=0.25,
        mixup=0.8, cutmix=1.0, mixup_prob=1.0, mixup_switch_prob=0.5,
        # main.py keeps an EMA (decay 0.99996); the reported top-1 is the raw weights'
        ema=True, ema_decay=0.99996, img_size=224,
    ),
    default_model="vit_base_patch16_224",
    # Table 9: stochastic depth 0.1 (main.py's default, used for DeiT-Ti/S/B alike)
    per_model={"vit_tiny_patch16_224": dict(drop_path=0.1),
               "vit_small_patch16_224": dict(drop_path=0.1),
               "vit_base_patch16_224": dict(drop_path=0.1)},
    top1={"vit_tiny_patch16_224": 72.2, "vit_small_patch16_224": 79.8,
          "vit_base_patch16_224": 81.8},
    top1_source="DeiT paper (DeiT-Ti/S/B, 224 px, no distillation); README_deit.md lists "
                "79.9 for a re-trained DeiT-S",
    not_applied=(
        "repeated augmentation (3 repeats per image, RASampler): this trainer samples each "
        "image once per epoch",
        "random erasing mode 'pixel' (remode pixel): this trainer uses timm's default mode",
    ),
))

# ---- How to train your ViT (AugReg) ---------------------------------------------------------
# Source: Steiner et al., "How to train your ViT? Data, Augmentation, and Regularization in
# Vision Transformers", arXiv 2106.10270, as released by the authors in big_vision
# configs/vit_i1k.py ("Pre-training ViT on ILSVRC-2012 as in arXiv 2106.10270"): batch 4096,
# 300 epochs, Adam + decoupled weight decay 1e-4 (big_vision adds wd x schedule to the update
# without multiplying by lr, so PyTorch's AdamW equivalent is 1e-4 / lr 1e-3 = 0.1), gradient
# clipping at norm 1, 10k warm-up steps then cosine to 0, inception crop (area 5-100%), flip,
# RandAugment and Mixup per model size (the config's defaults from the paper's Fig. 4), no
# label smoothing, no dropout or stochastic depth in that config.
_add(Recipe(
    name="vit-augreg", paper="How to train your ViT? (AugReg)", arxiv="2106.10270",
    source="AugReg arXiv 2106.10270 (Fig. 4 per-size settings) as released in "
           "google-research/big_vision configs/vit_i1k.py",
    setting="ImageNet-1k from scratch, 300 epochs at 224 px (the paper's main results "
            "pre-train on ImageNet-21k; this is its ImageNet-1k setting)",
    global_batch=4096,
    lr_rule="paper/config: lr 0.001 at batch 4096, no scaling rule; lr_base = 0.001 x 512 / "
            "4096 = 1.25e-4",
    options=dict(
        epochs=300, lr_base=1.25e-4, min_lr=0.0, warmup_epochs=_BV_WARMUP_EPOCHS,
        warmup_lr=0.0, sched="cosine", opt="adamw", opt_eps=1e-8, weight_decay=0.1,
        smoothing=0.0, clip_grad=1.0, drop=0.0, drop_path=0.0,
        scale=(0.05, 1.0), ratio=(3 / 4, 4 / 3), hflip=0.5, color_jitter=0.0,
        auto_augment="rand-m15-n2", reprob=0.0, mixup=0.5, cutmix=0.0, mixup_prob=1.0,
        mixup_switch_prob=0.5, ema=False, img_size=224,
    ),
    default_model="vit_base_patch16_224",
    # vit_i1k.py's aug_setting per variant: Ti/16 light1 (randaug(2,0), no mixup),
    # S/16 and B/16 medium2 (randaug(2,15), mixup 0.5)
    per_model={"vit_tiny_patch16_224": dict(auto_augment="rand-m0-n2", mixup=0.0),
               "vit_small_patch16_224": dict(auto_augment="rand-m15-n2", mixup=0.5),
               "vit_base_patch16_224": dict(auto_augment="rand-m15-n2", mixup=0.5)},
    top1={"vit_tiny_patch16_224": None, "vit_small_patch16_224": None,
          "vit_base_patch16_224": None},
    top1_source="not found: the ImageNet-1k-only accuracies are in the paper's figures, "
                "which no stored copy reached",
    not_applied=(
        "big_vision's RandAugment (TF ops, randaug(2, M)) approximated by timm's "
        "rand-mM-n2",
    ),
    unknown=("the paper's table/page for the ImageNet-1k numbers (its figures were not "
             "reachable)",),
))

# ---- MLP-Mixer -----------------------------------------------------------------------------
# Source: Tolstikhin et al., "MLP-Mixer: An all-MLP Architecture for Vision", arXiv
# 2105.01601. The paper's main setting pre-trains on ImageNet-21k / JFT-300M and fine-tunes;
# this preset is its ImageNet-1k-from-scratch setting as released by the authors' group in
# google-research/big_vision configs/mlp_mixer_i1k.py (Mixer-B/16, "76.3% top-1 ... with 300
# epochs"): batch 4096, Adam lr 1e-3, decoupled wd 1e-4 (= AdamW 0.1, see AugReg above), clip
# 1, 10k warm-up steps then linear decay, RandAugment(2, 15), Mixup 0.5, stochastic depth 0.1,
# sigmoid cross-entropy with head bias -6.9.
_add(Recipe(
    name="mixer", paper="MLP-Mixer: An all-MLP Architecture for Vision", arxiv="2105.01601",
    source="big_vision configs/mlp_mixer_i1k.py (the authors' group's ImageNet-1k config); "
           "the paper's appendix tables were not reachable",
    setting="ImageNet-1k from scratch, 300 epochs at 224 px (not the paper's main "
            "ImageNet-21k/JFT-300M pre-training)",
    global_batch=4096,
    lr_rule="config: lr 0.001 at batch 4096, no scaling rule; lr_base = 0.001 x 512 / 4096 "
            "= 1.25e-4",
    options=dict(
        epochs=300, lr_base=1.25e-4, min_lr=0.0, warmup_epochs=_BV_WARMUP_EPOCHS,
        warmup_lr=0.0, sched="cosine", opt="adamw", opt_eps=1e-8, weight_decay=0.1,
        smoothing=0.0, clip_grad=1.0, drop=0.0, drop_path=0.1,
        scale=(0.05, 1.0), ratio=(3 / 4, 4 / 3), hflip=0.5, color_jitter=0.0,
        auto_augment="rand-m15-n2", reprob=0.0, mixup=0.5, cutmix=0.0, mixup_prob=1.0,
        mixup_switch_prob=0.5, ema=False, img_size=224,
    ),
    default_model="mixer_b16_224",
    per_model={"mixer_b16_224": dict(drop_path=0.1)},
    top1={"mixer_b16_224": 76.3},
    top1_source="big_vision configs/mlp_mixer_i1k.py docstring (Mixer-B/16, 300 epochs); "
                "no ImageNet-1k-from-scratch figure was found for Mixer-S/16",
    not_applied=(
        "linear learning-rate decay to 1e-5 x lr after warm-up: this preset uses cosine "
        "(timm's 'poly' here would need a decay power this trainer does not expose)",
        "sigmoid cross-entropy loss and head bias init -6.9: this trainer uses softmax "
        "cross-entropy",
        "big_vision's RandAugment (TF ops) approximated by timm's rand-m15-n2",
    ),
    unknown=("per-size settings for Mixer-S/16, S/32, B/32, L/16 on ImageNet-1k from "
             "scratch: the preset's B/16 values are used",),
))

# ---- ShiftViT -------------------------------------------------------------------------------
# Source: Wang et al., "When Shift Operation Meets Vision Transformer", arXiv 2201.10801 (it
# follows Swin's training recipe) as released in microsoft/SPACH: main.py defaults (DeiT's
# training script: batch 128 per GPU on 8 GPUs = 1024, lr 5e-4 x batch / 512, 300 epochs,
# 20 warm-up epochs, min lr 1e-5, AdamW wd 0.05, RandAugment, Mixup 0.8, CutMix 1.0,
# random erasing 0.25, label smoothing 0.1, EMA 0.99996, repeated augmentation) and
# models/shiftvit.py, whose model registrations fix the drop path per size.
_add(Recipe(
    name="shiftvit", paper="When Shift Operation Meets Vision Transformer (ShiftViT)",
    arxiv="2201.10801",
    source="microsoft/SPACH main.py defaults (8 GPUs x 128) and models/shiftvit.py "
           "(drop path per model); the paper states it follows Swin's recipe",
    setting="ImageNet-1k from scratch, 300 epochs at 224 px",
    global_batch=1024,
    lr_rule="code: lr = 5e-4 x batch / 512 (DeiT's rule, as Swin's), the same rule as this "
            "trainer: lr_base 5e-4",
    options=dict(
        epochs=300, lr_base=5e-4, min_lr=1e-5, warmup_epochs=20.0, warmup_lr=1e-6,
        sched="cosine", opt="adamw", opt_eps=1e-8, weight_decay=0.05, smoothing=0.1,
        clip_grad=None, drop=0.0, drop_path=0.2, **_IMAGENET_AUG, color_jitter=0.4,
        auto_augment="rand-m9-mstd0.5-inc1", reprob=0.25, mixup=0.8, cutmix=1.0,
        mixup_prob=1.0, mixup_switch_prob=0.5, ema=True, ema_decay=0.99996, img_size=224,
    ),
    default_model="shiftvit_tiny_light",
    per_model={
        "shiftvit_tiny_light": dict(drop_path=0.2), "shiftvit_tiny": dict(drop_path=0.2),
        "shiftvit_small_light": dict(drop_path=0.4), "shiftvit_small": dict(drop_path=0.4),
        "shiftvit_base_light": dict(drop_path=0.5), "shiftvit_base": dict(drop_path=0.6),
        "shiftvit_tiny_r4": dict(drop_path=0.2), "shiftvit_small_r4": dict(drop_path=0.4),
        "shiftvit_base_r4": dict(drop_path=0.5),
    },
    top1={"shiftvit_tiny_light": 79.4, "shiftvit_tiny": 81.7, "shiftvit_small_light": 81.6,
          "shiftvit_small": 82.8, "shiftvit_base_light": None, "shiftvit_base": None,
          "shiftvit_tiny_r4": None, "shiftvit_small_r4": None, "shiftvit_base_r4": None},
    top1_source="microsoft/SPACH README (Shift-T/light, Shift-T, Shift-S/light, Shift-S); "
                "the base and r4 models' accuracies were not found",
    not_applied=(
        "repeated augmentation (SPACH main.py's default, inherited from DeiT): this "
        "trainer samples each image once per epoch",
        "random erasing mode 'pixel': this trainer uses timm's default mode",
    ),
    unknown=("whether the paper's runs used SPACH's defaults or Swin's recipe, which the paper "
             "says it follows (Swin clips gradients at 5 and has no EMA or repeated "
             "augmentation): the preset follows the released code",),
))

# ---- Sequencer ------------------------------------------------------------------------------
# Source: Tatsunami & Taki, "Sequencer: Deep LSTM for Image Classification", arXiv
# 2205.01972, appendix (training hyper-parameters) and the authors' okojoalg/sequencer
# README command: 8 GPUs x 256 = 2048, AdamW lr 2e-3, wd 0.05, 300 epochs, cosine, 20
# warm-up epochs from 1e-6, RandAugment rand-m9-mstd0.5-inc1, random erasing 0.25 (pixel),
# label smoothing 0.1, Mixup 0.8, CutMix 1.0, drop path 0.1 (S); train.py (timm 0.5.4)
# defaults for the rest: min lr 1e-6, color jitter 0.4, no EMA, no clipping, no repeats.
_add(Recipe(
    name="sequencer", paper="Sequencer: Deep LSTM for Image Classification",
    arxiv="2205.01972",
    source="Sequencer arXiv 2205.01972 appendix (training hyper-parameters); "
           "okojoalg/sequencer README training command and train.py defaults",
    setting="ImageNet-1k from scratch, 300 epochs at 224 px",
    global_batch=2048,
    lr_rule="paper/code: lr 2e-3 at batch 2048, no scaling rule (timm 0.5.4 train.py uses "
            "--lr as given); lr_base = 2e-3 x 512 / 2048 = 5e-4",
    options=dict(
        epochs=300, lr_base=5e-4, min_lr=1e-6, warmup_epochs=20.0, warmup_lr=1e-6,
        sched="cosine", opt="adamw", opt_eps=1e-8, weight_decay=0.05, smoothing=0.1,
        clip_grad=None, drop=0.0, drop_path=0.1, **_IMAGENET_AUG, color_jitter=0.4,
        auto_augment="rand-m9-mstd0.5-inc1", reprob=0.25, mixup=0.8, cutmix=1.0,
        mixup_prob=1.0, mixup_switch_prob=0.5, ema=False, img_size=224,
    ),
    default_model="sequencer2d_s",
    # drop path per size: S 0.1, M 0.2, L 0.4 (paper appendix; the README's commands show
    # 0.1 for S and 0.4 for L)
    per_model={"sequencer2d_s": dict(drop_path=0.1), "sequencer2d_m": dict(drop_path=0.2),
               "sequencer2d_l": dict(drop_path=0.4)},
    top1={"sequencer2d_s": 82.3, "sequencer2d_m": 82.8, "sequencer2d_l": 83.4},
    top1_source="Sequencer paper and okojoalg/sequencer README (224 px)",
    not_applied=(
        "random erasing mode 'pixel' (--remode pixel): this trainer uses timm's default mode",
        "timm 0.5.4's 10 cooldown epochs at min_lr after the 300 (train.py's default "
        "cooldown_epochs 10; its loop runs create_scheduler's 310 epochs)",
        "random train-time interpolation (train.py's default 'random'): this trainer uses "
        "bicubic",
    ),
    unknown=("the appendix table's page: no copy of the PDF was reachable; M's drop path "
             "0.2 is the paper's, not in the README's commands",),
))

# ---- Vision-LSTM ----------------------------------------------------------------------------
# Source: Alkin et al., "Vision-LSTM: xLSTM as Generic Vision Backbone", arXiv 2406.04303,
# appendix (ImageNet-1k training), as released in NX-AI/vision-lstm
# src/vislstm/yamls/pretrain/vil/: ViL v2 (vil2_*) pre-trains at 192 px
# (lstm_{6M,22M,80M}16_e{800,400}_..._res192_bias.yaml: batch 2048, AdamW lr 1e-3 with a
# linear scaler of divisor 1024, betas 0.9/0.999, wd 0.05, clip 1, 5 warm-up epochs, cosine
# to 1e-6, drop path T 0 / S 0.05 / B 0.2 constant per block, 3-Augment + color jitter 0.3,
# Mixup 0.8 / CutMix 1.0 (one of them per batch), no label smoothing, no random erasing, no
# EMA) and then fine-tunes at 224 px ({6M,22M}_res224finetuning.yaml: 20 epochs, lr 1e-5 at
# 1024, 5 warm-up epochs; 80M_res224finetuning_e5.yaml: 5 epochs, 1 warm-up epoch). ViL-T
# trains 800 epochs (README: "ViL-T trained for only 400 epochs: 77.2%"), S and B 400.
# ViL v1 (vil_*) trains at 224 px throughout (v1/pretrain/lstm_6M16_e800_..._res224.yaml,
# vil/pretrain/lstm_{24M,90M}16_e400_..._res224.yaml: batch 1024 for S, 2048 for T and B).
_VIL_FT = Stage(img_size=224, epochs=20, lr_base=5e-6, warmup_epochs=5.0,
                note="fine-tune the 192 px model at 224 px: lr 1e-5 at batch 1024, wd 0.05, "
                     "the same augmentation")
_add(Recipe(
    name="vil", paper="Vision-LSTM: xLSTM as Generic Vision Backbone", arxiv="2406.04303",
    source="ViL arXiv 2406.04303 appendix, as released in NX-AI/vision-lstm "
           "src/vislstm/yamls/pretrain/vil/*.yaml",
    setting="ImageNet-1k from scratch: ViL v2 pre-trains at 192 px, then fine-tunes at "
            "224 px (v1 models: 224 px throughout)",
    global_batch=2048,
    lr_rule="configs: lr 1e-3 x batch / 1024 (a linear scaler with divisor 1024, not 512); "
            "lr_base = 1e-3 x 512 / 1024 = 5e-4",
    options=dict(
        epochs=400, lr_base=5e-4, min_lr=1e-6, warmup_epochs=5.0, warmup_lr=0.0,
        sched="cosine", opt="adamw", opt_eps=1e-8, weight_decay=0.05, smoothing=0.0,
        clip_grad=1.0, drop=0.0, drop_path=0.05, **_IMAGENET_AUG, color_jitter=0.3,
        auto_augment="", reprob=0.0, mixup=0.8, cutmix=1.0, mixup_prob=1.0,
        mixup_switch_prob=0.5, ema=False, img_size=192,
    ),
    default_model="vil2_tiny",
    per_model={
        "vil2_tiny": dict(epochs=800, drop_path=0.0),
        "vil2_small": dict(epochs=400, drop_path=0.05),
        "vil2_base": dict(epochs=400, drop_path=0.2, stages=(Stage(
            img_size=224, epochs=5, lr_base=5e-6, warmup_epochs=1.0,
            note="fine-tune the 192 px model at 224 px: lr 1e-5 at batch 1024, wd 0.05, "
                 "the same augmentation"),)),
        # v1: 224 px throughout, no fine-tuning stage
        "vil_tiny": dict(epochs=800, drop_path=0.0, img_size=224, stages=()),
        "vil_small": dict(epochs=400, drop_path=0.05, img_size=224, global_batch=1024,
                          stages=()),
        "vil_base": dict(epochs=400, drop_path=0.2, img_size=224, stages=()),
    },
    top1={"vil2_tiny": 78.3, "vil2_small": 81.5, "vil2_base": 82.4, "vil_tiny": 77.3,
          "vil_small": 80.7, "vil_base": 81.6},
    top1_source="NX-AI/vision-lstm README (torch hub models vil2-tiny/small/base and "
                "version-1 vil-tiny/small/base)",
    stages=(_VIL_FT,),
    not_applied=(
        "3-Augment (DeiT III: grayscale, solarize or Gaussian blur per image) before the "
        "color jitter: no RandAugment is used instead (auto_augment off)",
    ),
))


#: The preset ``compare --budget paper`` gives each paper family (``compare.FAMILIES`` keys).
#: ViT gets DeiT's: the zoo's ViT accuracies are DeiT's (ImageNet-1k from scratch at batch
#: 1024), while AugReg's ImageNet-1k recipe (batch 4096, 10k warm-up steps) is tuned for
#: ImageNet-21k-scale runs and its ImageNet-1k figures could not be checked.
FAMILY_RECIPES: dict[str, str] = {"vit": "deit", "mixer": "mixer", "shiftvit": "shiftvit",
                                  "sequencer": "sequencer", "vil": "vil"}


def get_recipe(name: str) -> Recipe:
    """The preset ``name``; an unknown name is a :class:`ConfigError` with suggestions."""
    if name in PRESETS:
        return PRESETS[name]
    close = close_matches(str(name), PRESETS, n=3, cutoff=0.4)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise ConfigError(f"--recipe {name}: no such preset{hint}; expected one of "
                      f"{', '.join(PRESETS)}, or leave it out for the dataset's recipe")


def _model_entry(recipe: Recipe, model: str) -> dict[str, Any]:
    return recipe.per_model.get(model, {})


def recipe_options(name: str, model: str) -> dict[str, Any]:
    """The ``train`` options preset ``name`` gives ``model`` (its per-model values over the
    preset's own; a model the preset has no row for gets the preset's values)."""
    recipe = get_recipe(name)
    entry = _model_entry(recipe, model)
    return {**recipe.options, **{k: v for k, v in entry.items() if k not in _SPECIAL}}


def global_batch(name: str, model: str) -> int:
    recipe = get_recipe(name)
    return int(_model_entry(recipe, model).get("global_batch", recipe.global_batch))


def stages(name: str, model: str) -> tuple[Stage, ...]:
    recipe = get_recipe(name)
    return tuple(_model_entry(recipe, model).get("stages", recipe.stages))


def per_process_batch(name: str, model: str, accum_steps: int, world_size: int) -> int:
    """The paper's global batch split over ``world_size`` processes x ``accum_steps``."""
    total = global_batch(name, model)
    parts = max(1, accum_steps) * max(1, world_size)
    if total % parts:
        raise ConfigError(
            f"--recipe {name}: the paper's global batch of {total} images does not split "
            f"evenly over {world_size} process(es) x {accum_steps} accumulation step(s); pass "
            f"--batch-size N (images per process and step) or an --accum-steps that divides "
            f"{total // max(1, world_size)}")
    return total // parts


def not_applied(name: str, model: str) -> list[str]:
    """What the preset asks and this trainer does not do, for ``model`` (the resolution
    schedule included)."""
    recipe = get_recipe(name)
    out = list(_model_entry(recipe, model).get("not_applied", recipe.not_applied))
    schedule = stages(name, model)
    if schedule:
        opts = recipe_options(name, model)
        parts = [f"{opts['epochs']} epochs at {opts['img_size']} px (this run)"]
        parts += [f"then {s.epochs} epochs at {s.img_size} px with lr_base {s.lr_base:g} "
                  f"and {s.warmup_epochs:g} warm-up epoch(s)" for s in schedule]
        out.insert(0, "the resolution schedule " + ", ".join(parts) + ": this trainer "
                   "trains at one size, so only the first stage runs; fine-tune the result "
                   "yourself (a second run with --initial-checkpoint and the stage's options)")
    return out


def warn_not_applied(name: str, model: str) -> None:
    """Warn (:class:`RecipeWarning`) about each part of the preset this run leaves out."""
    for item in not_applied(name, model):
        warnings.warn(f"--recipe {name}: NOT APPLIED: {item}", RecipeWarning, stacklevel=3)


def describe(name: str, model: str, *, batch_size: int, accum_steps: int, world_size: int,
             lr: float) -> list[str]:
    """Lines (for YAML comments) that say where the preset's values come from."""
    recipe = get_recipe(name)
    total = batch_size * accum_steps * world_size
    entry = _model_entry(recipe, model)
    lines = [
        f"recipe: {recipe.name} -- {recipe.paper} (arXiv {recipe.arxiv})",
        f"source: {recipe.source}",
        f"setting: {recipe.setting}",
        f"learning rate: {recipe.lr_rule}; this run: lr = lr_base x global batch {total} "
        f"({batch_size} per process x {world_size} process(es) x {accum_steps} "
        f"accumulation step(s)) / 512 = {lr:g} (the paper's global batch: "
        f"{global_batch(name, model)})",
    ]
    if entry:
        shown = ", ".join(f"{k} {v}" for k, v in entry.items() if k not in _SPECIAL)
        lines.append(f"per-model values for {model}: {shown or 'none beyond the preset'}")
    else:
        lines.append(f"{model} has no row of its own in this preset (rows: "
                     f"{', '.join(recipe.per_model)}): the preset's values are used")
    top1 = recipe.top1.get(model)
    if model in recipe.top1:
        lines.append(f"reported ImageNet-1k top-1 for {model}: "
                     f"{'not found' if top1 is None else f'{top1:.1f}%'} ({recipe.top1_source})")
    for item in not_applied(name, model):
        lines.append(f"NOT APPLIED: {item}")
    for item in recipe.unknown:
        lines.append(f"not found: {item}")
    return lines
