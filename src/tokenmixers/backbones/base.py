"""What every backbone shares: the classifier head and the timm model contract.

Subclasses implement ``_tokens(x) -> (tokens [B, N, C], grid, num_prefix_tokens)`` for the
final features and ``_intermediates(...)``; everything else (pooling, ``fc_norm``,
``reset_classifier``, gradient checkpointing, weight-decay exclusions) lives here once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from tokenmixers.layers import POOLINGS, pool_tokens


class Backbone(nn.Module):
    """Base class: ``forward(x) = forward_head(forward_features(x))``."""

    #: Set by the builder: the family name used to find weight converters.
    family: str = ""
    #: Set by :func:`tokenmixers.create_model`: the zoo name and the resolved config.
    model_name: str = ""
    model_config: dict[str, Any]

    num_prefix_tokens: int = 0
    grad_checkpointing: bool = False

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
        device = next(self.parameters()).device
        self.head = (
            nn.Linear(self.head_hidden_size, num_classes, device=device)
            if num_classes > 0
            else nn.Identity()
        )
        if num_classes > 0:
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

    # -- forward -----------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

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
