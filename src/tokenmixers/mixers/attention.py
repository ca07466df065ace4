"""Multi-head self-attention (ViT): every token attends to every token, prefix tokens included."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tokenmixers.mixers import register_mixer


@register_mixer("attention")
class AttentionMixer(nn.Module):
    """``[B, N, C] -> [B, N, C]``; resolution-free (the grid is not needed).

    One fused ``qkv`` projection, ``F.scaled_dot_product_attention`` (softmax(QKᵀ/√d) V,
    which picks a fused kernel where one exists), then an output projection ``proj``.
    """

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

    def forward(self, x: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        b, n, c = x.shape
        # [B, N, 3C] -> 3 x [B, heads, N, head_dim]
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.attn_drop if self.training else 0.0
        )
        x = x.transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(x))

    def macs(self, grid: tuple[int, int], num_prefix_tokens: int = 0) -> int:
        """Multiply-accumulates per image: qkv, QKᵀ, AV and the output projection."""
        n = num_prefix_tokens + grid[0] * grid[1]
        c = self.num_heads * self.head_dim
        return n * c * 3 * c + 2 * n * n * c + n * c * c

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}"
