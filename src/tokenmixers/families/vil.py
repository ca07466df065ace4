"""Vision-LSTM: the mLSTM mixer in the isotropic skeleton ("Vision-LSTM: xLSTM as Generic
Vision Backbone", arXiv 2406.04303), v1 (``vision_lstm.py``) and v2 (``vision_lstm2.py``)
of the authors' code (NX-AI/vision-lstm), with their argument names and checkpoint layout.

    image -> patches (+ grid position embedding) -> blocks: x + drop_path(mLSTM(norm(x)))
          -> token norm -> pool -> norm -> Linear

The two versions differ in: conv (v1 causal Conv1d k4, v2 Conv2d 3x3 on the grid), biases
(v2 only), the pooling (v1 bilateral average, v2 bilateral concatenation) and the head
norms, whose keys swap (v1: ``legacy_norm`` before pooling, ``norm`` after; v2 the reverse).
v2's ``depth`` counts block pairs.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import partial

import torch
from torch import nn

from tokenmixers.backbones import IsotropicBackbone
from tokenmixers.families import Family, StateDict, register_family
from tokenmixers.init import InitScheme, init_linear, trunc_normal_002
from tokenmixers.layers import POOLINGS, UnitOffsetLayerNorm, register_pooling
from tokenmixers.mixers.mlstm import DEFAULT_CHUNK_SIZE, check_backend

# ---- poolings (the paper's classification-design ablation) ----------------------------


def _bilateral_avg(x: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    return (x[:, num_prefix_tokens] + x[:, -1]) / 2


def _bilateral_concat(x: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    return torch.cat([x[:, num_prefix_tokens], x[:, -1]], dim=-1)


def _middle_patch(x: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    n = x.shape[1] - num_prefix_tokens
    return x[:, num_prefix_tokens + n // 2]


def _class_token(x: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    # Where the class token sits in the *scanned* sequence is the mixer's business
    # (cls_position); in the backbone's layout it is always the first token.
    if num_prefix_tokens < 1:
        raise ValueError("class-token pooling needs a model with a class token")
    return x[:, 0]


for _name, _fn, _width in (
    ("bilateral_avg", _bilateral_avg, 1),
    ("bilateral_concat", _bilateral_concat, 2),
    ("middle_patch", _middle_patch, 1),
    ("cls_first", _class_token, 1),
    ("cls_middle", _class_token, 1),
):
    if _name not in POOLINGS:
        register_pooling(_name, _fn, _width)

POOLING_CHOICES = ("bilateral_avg", "bilateral_concat", "avg", "middle_patch", "cls_first",
                   "cls_middle")
#: The authors' name for the concatenation.
_POOLING_ALIASES = {"bilateral_flatten": "bilateral_concat"}

#: Block direction designs (the paper's ablation): per block, the scan orders it runs.
DIRECTIONS = ("alternate", "unidirectional", "bidirectional", "quad")


def _traversals(direction: str, num_blocks: int) -> list[tuple[str, ...]] | None:
    """Each block's scan orders; None for ViL's own design, which the mLSTM mixer's
    defaults give (odd blocks run from the bottom-right)."""
    if direction == "alternate":
        return None
    if direction == "unidirectional":
        return [("row",)] * num_blocks
    if direction == "bidirectional":  # both row orders in every block (shared weights)
        return [("row", "row_reversed")] * num_blocks
    if direction == "quad":  # rows and columns, both ways, in every block
        return [("row", "row_reversed", "col", "col_reversed")] * num_blocks
    raise ValueError(f"unknown direction {direction!r}; choose from {DIRECTIONS}")


#: The authors' init of what the skeleton owns: the position embedding and class token
#: (truncated normal, std 0.02) and a near-zero head; the stem keeps PyTorch's default, the
#: 1+γ norms start at γ = 0, and the mLSTM layers initialise themselves.
VIL_INIT = InitScheme(
    "Vision-LSTM (NX-AI/vision-lstm)",
    head=partial(init_linear, weight=partial(nn.init.trunc_normal_, std=2e-5)),
    pos_embed=trunc_normal_002,
    cls_token=trunc_normal_002,
)
#: Per version: the default ``depth`` (v1 blocks, v2 block pairs) and pooling.
_VERSIONS = {1: (24, "bilateral_avg"), 2: (12, "bilateral_concat")}


def build_vil(
    *,
    version: int = 1,
    dim: int = 192,
    depth: int | None = None,
    patch_size: int = 16,
    stride: int | None = None,
    img_size: int | Sequence[int] = 224,
    in_chans: int = 3,
    num_classes: int = 1000,
    pooling: str | None = None,
    direction: str = "alternate",
    conv: str | None = None,
    drop_path_rate: float = 0.0,
    drop_rate: float = 0.0,
    backend: str = "auto",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> IsotropicBackbone:
    """A Vision-LSTM. v1: ``depth`` mLSTM blocks (default 24, directions alternate, block 0
    from the top-left), ``bilateral_avg`` pooling. v2: ``depth`` block *pairs* (default 12;
    top-left, then bottom-right), ``bilateral_concat`` pooling; its 3x3 convolution runs on
    the actual input grid, so any resolution works. ``stride < patch_size`` gives
    overlapping patches; ``backend`` picks the mLSTM form (``auto``, ``parallel``,
    ``chunkwise``, ``recurrent``, ``kernels``). ``conv`` overrides the version's
    convolution before q and k (``causal1d``: v1's, ``2d``: v2's), and ``direction`` the
    scan orders (``alternate``: ViL's; ``unidirectional``, ``bidirectional``, ``quad``), for
    the paper's block-design ablations."""
    if version not in _VERSIONS:
        raise ValueError(f"version must be 1 or 2, got {version!r}")
    default_depth, default_pooling = _VERSIONS[version]
    depth = default_depth if depth is None else depth
    num_blocks = 2 * depth if version == 2 else depth
    pooling = pooling or default_pooling
    pooling = _POOLING_ALIASES.get(pooling, pooling)
    if pooling not in POOLING_CHOICES:
        raise ValueError(f"unknown pooling {pooling!r}; choose from {POOLING_CHOICES}")
    check_backend(backend, what="backend")
    v2 = version == 2
    common = {
        "conv": conv or ("2d" if v2 else "causal1d"),
        "bias": v2,
        "norm_bias": v2,
        "cls_position": "middle" if pooling == "cls_middle" else "first",
        "backend": backend,
        "chunk_size": chunk_size,
    }
    traversals = _traversals(direction, num_blocks)
    mixer_kwargs = common if traversals is None else [
        {**common, "traversals": t} for t in traversals
    ]
    model = IsotropicBackbone(
        mixer="mlstm",
        mixer_kwargs=mixer_kwargs,
        img_size=img_size,
        patch_size=patch_size,
        patch_stride=stride,
        in_chans=in_chans,
        num_classes=num_classes,
        embed_dim=dim,
        depth=num_blocks,
        class_token=pooling in ("cls_first", "cls_middle"),
        pos_embed="learned_grid",
        global_pool=pooling,
        norm_layer=partial(UnitOffsetLayerNorm, eps=1e-5, bias=v2),
        final_norm_layer=partial(UnitOffsetLayerNorm, eps=1e-6 if v2 else 1e-5, bias=v2),
        fc_norm=nn.LayerNorm if v2 else partial(nn.LayerNorm, eps=1e-6),
        drop_rate=drop_rate,
        drop_path_rate=drop_path_rate,
        drop_path_schedule="constant",
    )
    model.family = "vil2" if v2 else "vil"
    model.init_weights(VIL_INIT)
    return model


# ---- the authors' checkpoints ---------------------------------------------------------
_LAYER_RULES = [
    (re.compile(r"\.layer\.mlstm_cell\."), ".mixer."),
    (re.compile(r"\.layer\.conv1d\.conv\."), ".mixer.conv."),
    (re.compile(r"\.layer\.learnable_skip$"), ".mixer.skip"),
    (re.compile(r"\.layer\."), ".mixer."),
    (re.compile(r"^(blocks\.\d+)\.norm\."), r"\1.norm1."),
]


def _convert(state: StateDict, *, version: int) -> StateDict:
    # v1: legacy_norm = token norm (ours: norm), norm = after pooling (ours: fc_norm);
    # v2: norm = token norm, legacy_norm = after pooling.
    heads = (
        {"legacy_norm.": "norm.", "norm.": "fc_norm."} if version == 1
        else {"norm.": "norm.", "legacy_norm.": "fc_norm."}
    )
    pair = re.compile(r"^blocks\.(\d+)\.rowwise_from_(top_left|bot_right)\.")
    out: StateDict = {}
    for key, value in state.items():
        if version == 2:
            key = pair.sub(
                lambda m: f"blocks.{2 * int(m[1]) + (m[2] == 'bot_right')}.", key
            )
        for prefix, ours in heads.items():
            if key.startswith(prefix):
                key = ours + key[len(prefix):]
                break
        for pattern, repl in _LAYER_RULES:
            key = pattern.sub(repl, key)
        out[key] = value
    return out


_REFERENCE = "NX-AI/vision-lstm"
_TINY = {"img_size": 32, "patch_size": 8, "dim": 32, "num_classes": 10}

VIL = register_family(
    Family(
        name="vil",
        build=partial(build_vil, version=1),
        reference=f"{_REFERENCE} VisionLSTM (vision_lstm.py)",
        converters={"official": partial(_convert, version=1)},
        tiny={**_TINY, "depth": 2},
    )
)
VIL2 = register_family(
    Family(
        name="vil2",
        build=partial(build_vil, version=2),
        reference=f"{_REFERENCE} VisionLSTM2 (vision_lstm2.py)",
        converters={"official": partial(_convert, version=2)},
        tiny={**_TINY, "depth": 1},
    )
)
