"""What every backbone shares: the classifier head and the timm model contract.

A backbone is a stem, a list of feature units (the isotropic skeleton's blocks, the
hierarchical one's stages) and a final norm. Subclasses say how to run each part
(``_stem``, ``_feature_units``, ``_unit_forward``, ``_final``, ``_feature_map``);
``forward_features``, ``forward_intermediates``, ``prune_intermediate_layers``, pooling,
``fc_norm``, ``reset_classifier``, gradient checkpointing, weight-decay exclusions and the
initialisation of what the skeleton owns live here once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from tokenmixers.blocks import Block
from tokenmixers.init import InitScheme
from tokenmixers.layers import POOLINGS, feature_take_indices, pool_tokens


def skeleton_modules(model: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """``named_modules()`` without the token mixers' subtrees (a block's ``mixer``)."""
    yield prefix, model
    for name, child in model.named_children():
        if isinstance(model, Block) and child is model.mixer:
            continue
        yield from skeleton_modules(child, f"{prefix}.{name}" if prefix else name)


def apply_scheme(model: nn.Module, scheme: InitScheme) -> None:
    """Initialise what the skeleton owns with ``scheme``: every ``Linear`` (the head with
    ``scheme.head``) and ``Conv2d`` outside the mixers, the position embedding and the class
    token. The mixers keep their own init."""
    head = getattr(model, "head", None)
    for _, module in skeleton_modules(model):
        if isinstance(module, nn.Linear):
            fn = scheme.head if module is head else scheme.linear
            if fn is not None:
                fn(module)
        elif isinstance(module, nn.Conv2d) and scheme.conv is not None:
            scheme.conv(module)
    pos = getattr(model, "pos_embed", None)
    if isinstance(pos, nn.Module):  # a grid table (GridPosEmbed) keeps its tensor in `embed`
        pos = getattr(pos, "embed", None)
    if isinstance(pos, nn.Parameter) and scheme.pos_embed is not None:
        scheme.pos_embed(pos)
    cls_token = getattr(model, "cls_token", None)
    if isinstance(cls_token, nn.Parameter) and scheme.cls_token is not None:
        scheme.cls_token(cls_token)


#: What flows through a backbone's feature units (tokens and grid, or a channels-last map).
State = Any


class Backbone(nn.Module):
    """Base class: ``forward(x) = forward_head(forward_features(x))``."""

    #: Set by the builder: the family name used to find weight converters.
    family: str = ""
    #: Set by :func:`tokenmixers.create_model`: the zoo name and the resolved config.
    model_name: str = ""
    model_config: dict[str, Any]

    num_prefix_tokens: int = 0
    grad_checkpointing: bool = False
    #: The family's initialisation of the skeleton (set by :meth:`init_weights`).
    init_scheme: InitScheme | None = None

    def init_weights(self, scheme: InitScheme) -> None:
        """Initialise what the skeleton owns with ``scheme``; the mixers keep their own init."""
        self.init_scheme = scheme
        apply_scheme(self, scheme)

    def _init_head(
        self,
        *,
        num_features: int,
        num_classes: int,
        global_pool: str,
        fc_norm_layer: Callable[[int], nn.Module] | None,
        drop_rate: float,
    ) -> None:
        if global_pool not in POOLINGS:
            raise ValueError(f"unknown global_pool {global_pool!r}; choose from {sorted(POOLINGS)}")
        self.global_pool = global_pool
        self.num_features = num_features
        self.head_hidden_size = num_features * POOLINGS[global_pool][1]
        self.num_classes = num_classes
        self.fc_norm = fc_norm_layer(self.head_hidden_size) if fc_norm_layer else nn.Identity()
        self.head_drop = nn.Dropout(drop_rate)
        self.head = (
            nn.Linear(self.head_hidden_size, num_classes) if num_classes > 0 else nn.Identity()
        )

    # -- timm contract -----------------------------------------------------------------
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the head with a fresh one for ``num_classes`` (0 removes it)."""
        if global_pool is not None:
            if global_pool not in POOLINGS:
                raise ValueError(
                    f"unknown global_pool {global_pool!r}; choose from {sorted(POOLINGS)}"
                )
            if POOLINGS[global_pool][1] != POOLINGS[self.global_pool][1]:
                raise ValueError(
                    f"global_pool {global_pool!r} changes the feature width; build a new model"
                )
            if global_pool == "token" and self.num_prefix_tokens == 0:
                raise ValueError("global_pool='token' needs a model with a class token")
            self.global_pool = global_pool
        self.num_classes = num_classes
        # The new head lives where the model does, in its dtype and mode (timm's contract).
        ref = next(self.parameters())
        self.head = (
            nn.Linear(self.head_hidden_size, num_classes, device=ref.device, dtype=ref.dtype)
            if num_classes > 0
            else nn.Identity()
        )
        self.head.train(self.training)
        if num_classes > 0 and ref.device.type != "meta":
            self._init_classifier(self.head)
        if hasattr(self, "model_config"):
            self.model_config = {**self.model_config, "num_classes": num_classes}
            if global_pool is not None:
                self.model_config["global_pool"] = global_pool

    def _init_classifier(self, head: nn.Linear) -> None:
        nn.init.trunc_normal_(head.weight, std=0.02)
        nn.init.zeros_(head.bias)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in the backward pass instead of storing its activations."""
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Parameter names to exclude from weight decay (besides norms and biases, which
        optimisers such as timm's exclude by their dimension): position embeddings, class
        tokens, and anything a mixer marks with ``_no_weight_decay``."""
        names = {
            n for n, _ in self.named_parameters() if n.split(".")[0] in ("pos_embed", "cls_token")
        }
        for module_name, module in self.named_modules():
            for p in getattr(module, "_no_weight_decay", ()):
                names.add(f"{module_name}.{p}" if module_name else p)
        return names

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Parameter groups for layer-wise learning-rate decay (timm's optimizer factory)."""
        return {
            "stem": r"^cls_token|^pos_embed|^patch_embed",
            "blocks": [(r"^blocks\.(\d+)", None), (r"^norm", (99999,))]
            if hasattr(self, "blocks")
            else [(r"^stages\.(\d+)" if coarse else r"^stages\.(\d+)\.blocks\.(\d+)", None),
                  (r"^stages\.(\d+)\.downsample", (0,)), (r"^norm", (99999,))],
        }

    def _run_blocks(
        self, blocks: Iterable[nn.Module], x: torch.Tensor, grid: tuple[int, int]
    ) -> torch.Tensor:
        for blk in blocks:
            x = self._run_block(blk, x, grid)
        return x

    def _run_block(self, blk: nn.Module, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
            return checkpoint(blk, x, grid, use_reentrant=False)
        return blk(x, grid)

    # -- the parts a backbone defines ----------------------------------------------------
    def _stem(self, x: torch.Tensor) -> State:
        """Images ``[B, C, H, W]`` -> the state the first feature unit takes."""
        raise NotImplementedError

    def _feature_units(self) -> Sequence[nn.Module]:
        """The units ``forward_intermediates`` indexes (blocks or stages)."""
        raise NotImplementedError

    def _unit_forward(self, unit: nn.Module, state: State) -> State:
        raise NotImplementedError

    def _final(self, state: State) -> torch.Tensor:
        """The last unit's state -> ``forward_features``' output (after the final norm)."""
        raise NotImplementedError

    def _feature_map(
        self, state: State, index: int, *, norm: bool, return_prefix_tokens: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Unit ``index``'s state -> (``[B, C, h, w]`` map, prefix tokens or None)."""
        raise NotImplementedError

    def _truncate_units(self, count: int) -> None:
        """Keep the first ``count`` feature units only."""
        raise NotImplementedError

    # -- forward -----------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        state = self._stem(x)
        for unit in self._feature_units():
            state = self._unit_forward(unit, state)
        return self._final(state)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
        return_prefix_tokens: bool = False,
    ) -> list[Any] | tuple[torch.Tensor, list[Any]]:
        """Features after the chosen units (timm's contract), as ``[B, C, h, w]`` maps
        (``output_fmt='NCHW'``) or ``[B, h, w, C]`` (``'NHWC'``); with
        ``return_prefix_tokens`` each item is a ``(map, prefix tokens)`` pair. ``indices``:
        ``None`` all, ``n`` the last n, or a list. Returns ``(final features, list)`` unless
        ``intermediates_only``."""
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        units = self._feature_units()
        take, last = feature_take_indices(len(units), indices)
        state = self._stem(x)
        out: list[Any] = []
        for i, unit in enumerate(units[: last + 1] if stop_early else units):
            state = self._unit_forward(unit, state)
            if i in take:
                fmap, prefix = self._feature_map(
                    state, i, norm=norm, return_prefix_tokens=return_prefix_tokens
                )
                if output_fmt == "NHWC":
                    fmap = fmap.permute(0, 2, 3, 1)
                out.append((fmap, prefix) if return_prefix_tokens else fmap)
        if intermediates_only:
            return out
        return self._final(state), out

    def prune_intermediate_layers(
        self, indices: int | Sequence[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the units after the last one ``indices`` asks for (and optionally the final
        norm and the head), for a model used as a feature extractor."""
        take, last = feature_take_indices(len(self._feature_units()), indices)
        self._truncate_units(last + 1)
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.fc_norm = nn.Identity()
            self.reset_classifier(0)
        return take

    def _head_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Features as returned by ``forward_features`` -> ``[B, N, C]`` tokens."""
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = pool_tokens(self._head_tokens(x), self.global_pool, self.num_prefix_tokens)
        x = self.fc_norm(x)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
