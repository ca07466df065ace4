"""Multi-head self-attention (ViT): every token attends to every token, prefix tokens included."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tokenmixers.init import trunc_normal_layer
from tokenmixers.mixers.base import TokenMixer, register_mixer


@register_mixer("attention")
class AttentionMixer(TokenMixer):
    """``[B, N, C] -> [B, N, C]``; resolution-free (the grid is not needed).

    One fused ``qkv`` projection, ``F.scaled_dot_product_attention`` (softmax(QKᵀ/√d) V,
    which picks a fused kernel where one exists), then an output projection ``proj``.
    :meth:`attend_reference` is the same arithmetic written out with plain products.
    """

    label = "self-attention (ViT)"
    macs_formula = "N·3C² (qkv) + 2·N²·C (QKᵀ, AV) + N·C² (proj)"
    prefix_tokens = "mixed"

    @classmethod
    def defaults(cls, dim: int, index: int) -> dict[str, Any]:
        return {"num_heads": max(1, dim // 32)}  # heads of 32 channels

    def __init__(
        self,
        dim: int,
        *,
        num_heads: int = 8,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """ViT's (timm's) init: truncated normal (std 0.02) weights, zero biases."""
        for lin in (self.qkv, self.proj):
            trunc_normal_layer(lin)

    def _heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, n, _ = x.shape
        # [B, N, 3C] -> 3 x [B, heads, N, head_dim]
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]

    def forward(self, x: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self._heads(x)
        x = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.attn_drop if self.training else 0.0
        )
        x = x.transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(x))

    def attention_weights(self, x: torch.Tensor) -> torch.Tensor:
        """softmax(QKᵀ/√d) of the tokens ``x`` ``[B, N, C]`` (this layer's input): ``[B,
        heads, N queries, N keys]``, each row summing to 1 (what ``tokenmixers inspect``
        measures; the forward pass itself never forms it)."""
        q, k, _ = self._heads(x)
        return (q @ k.transpose(-2, -1) * self.head_dim**-0.5).softmax(dim=-1)

    def attend_reference(self, x: torch.Tensor) -> torch.Tensor:
        """softmax(QKᵀ/√d) V with plain products (no dropout): the paper's equation, for tests
        and for counting the MACs an operator counter can see."""
        b, n, c = x.shape
        q, k, v = self._heads(x)
        attn = (q @ k.transpose(-2, -1) * self.head_dim**-0.5).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))

    def macs(self, grid: tuple[int, int], num_prefix_tokens: int = 0) -> int:
        """Multiply-accumulates per image: qkv, QKᵀ, AV and the output projection."""
        n = num_prefix_tokens + grid[0] * grid[1]
        c = self.num_heads * self.head_dim
        return n * c * 3 * c + 2 * n * n * c + n * c * c

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}"
