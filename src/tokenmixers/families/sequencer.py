"""Sequencer2D: the BiLSTM2D mixer in the hierarchical skeleton ("Sequencer: Deep LSTM for
Image Classification", arXiv 2205.01972), with timm's argument names and checkpoint layout
(timm's ``Sequencer2d``), plus the paper's GRU / tanh-RNN ablations (``rnn_type``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial

from torch import nn

from tokenmixers.backbones import HierarchicalBackbone
from tokenmixers.families import Family, register_family, rename_keys
from tokenmixers.init import InitScheme, lecun_layer, trunc_normal_002, xavier_tiny_bias_layer


def _head_init(head: nn.Linear, *, bias: float) -> None:
    nn.init.zeros_(head.weight)
    nn.init.constant_(head.bias, bias)


def sequencer_init(head_bias: float = 0.0) -> InitScheme:
    """The scheme of the authors' (timm-based) code: Xavier-uniform channel MLPs with tiny
    biases, LeCun-normal convolutions, a zero classifier whose bias is ``head_bias``. (The
    BiLSTM2D mixer initialises its recurrent weights and fusion fc itself.)"""
    return InitScheme(
        "Sequencer2D (timm)",
        linear=xavier_tiny_bias_layer,
        conv=lecun_layer,
        head=partial(_head_init, bias=head_bias),
        pos_embed=trunc_normal_002,  # VSequencer(PE)'s, as the authors' code has it
    )


def build_sequencer2d(
    *,
    num_classes: int = 1000,
    img_size: int | Sequence[int] = 224,
    in_chans: int = 3,
    global_pool: str = "avg",
    layers: Sequence[int] = (4, 3, 8, 3),
    patch_sizes: Sequence[int] = (7, 2, 1, 1),
    embed_dims: Sequence[int] = (192, 384, 384, 384),
    hidden_sizes: Sequence[int] | None = None,
    mlp_ratios: Sequence[float] = (3.0, 3.0, 3.0, 3.0),
    num_rnn_layers: int = 1,
    bidirectional: bool = True,
    union: str = "cat",
    with_fc: bool = True,
    rnn_type: str = "lstm",
    drop_rate: float = 0.0,
    proj_drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
    nlhb: bool = False,
    stem_norm: bool = False,
    pos_embed: bool = False,
) -> HierarchicalBackbone:
    """A Sequencer2D. ``patch_sizes[0]`` is the stem's patch size and ``patch_sizes[i]``
    (i > 0) the kernel and stride of the convolution that starts stage i (1: a 1×1 conv
    that only changes the width). ``hidden_sizes=None``: the BiLSTM2D mixer's own default,
    D = C/4 per stage. ``rnn_type``: ``lstm`` (the paper's models), ``gru`` or
    ``rnn`` (tanh). Drop path ramps linearly over the blocks, as in the paper (timm uses one
    rate for every block).

    The paper's 1-D variants (its "vanilla" Sequencer, VSequencer) are ``union="flat"``:
    one BiLSTM over the whole grid in raster order, ``2 * hidden = C`` wide, without the fc;
    ``pos_embed=True`` adds a learned absolute position embedding after the stem, as their
    VSequencer(PE)."""
    n = len(layers)
    for arg, value in (("patch_sizes", patch_sizes), ("embed_dims", embed_dims),
                       ("hidden_sizes", hidden_sizes), ("mlp_ratios", mlp_ratios)):
        if value is not None and len(value) != n:
            raise ValueError(f"{arg} has {len(value)} entries for {n} stages (layers={layers})")
    common = {"bidirectional": bidirectional, "union": union, "with_fc": with_fc,
              "rnn_type": rnn_type, "num_layers": num_rnn_layers}
    mixer_kwargs = [
        common if hidden_sizes is None else {**common, "hidden_size": hidden_sizes[i]}
        for i in range(n)
    ]
    model = HierarchicalBackbone(
        mixer="lstm2d",
        mixer_kwargs=mixer_kwargs,
        img_size=img_size,
        in_chans=in_chans,
        num_classes=num_classes,
        patch_size=patch_sizes[0],
        embed_dims=embed_dims,
        depths=layers,
        downsample_sizes=patch_sizes[1:],
        mlp_ratios=list(mlp_ratios),
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        act_layer=nn.GELU,
        stem_norm=stem_norm,
        pos_embed=pos_embed,
        global_pool=global_pool,
        drop_rate=drop_rate,
        proj_drop_rate=proj_drop_rate,
        drop_path_rate=drop_path_rate,
    )
    model.family = "sequencer2d"
    model.init_weights(sequencer_init(-math.log(num_classes) if nlhb and num_classes else 0.0))
    return model


SEQUENCER2D = register_family(
    Family(
        name="sequencer2d",
        build=build_sequencer2d,
        reference="timm Sequencer2d (timm/models/sequencer.py)",
        converters={
            "timm": rename_keys([
                (r"^stem\.", "patch_embed."),
                (r"\.downsample\.down\.", ".downsample.conv."),
                (r"\.rnn_tokens\.", ".mixer."),
                (r"\.mlp_channels\.", ".mlp."),
                (r"^head\.fc\.", "head."),
            ])
        },
        # with_fc=True: without the fusion Linear, the union must already be C wide, i.e.
        # D = C/4 (cat) or C/2 (one direction); no single tiny hidden size satisfies every
        # ablation, so the tiny models keep the fc (tests/test_sequencer.py pins the no-fc
        # ablations at their own widths).
        tiny={"img_size": 32, "layers": (1, 1, 1, 1), "patch_sizes": (4, 2, 1, 1),
              "embed_dims": (16, 32, 32, 32), "hidden_sizes": (4, 8, 8, 8), "with_fc": True,
              "num_classes": 10},
    )
)
