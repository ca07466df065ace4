"""GFNet's global filter ("Global Filter Networks for Image Classification", arXiv 2107.00645).

On the grid seen as ``[B, h, w, C]``, per channel:

    X = rfft2(x, dim=(h, w), norm="ortho")          [B, h, w//2+1, C], complex
    X = X ⊙ K                                       K: a learned complex filter [h, w//2+1, C]
    y = irfft2(X, s=(h, w), norm="ortho")           [B, h, w, C]

With "ortho" on both transforms this is exactly the circular convolution of each channel with
the spatial kernel ``k = irfft2(K, s=(h, w))`` (default "backward" norm):
``y[i, j] = Σ_{m,n} k[m, n] · x[(i - m) mod h, (j - n) mod w]``: a global, depthwise filter.

``K`` is stored as the real parameter ``complex_weight [h, w//2+1, C, 2]`` (real, imaginary).
At a grid it was not built for, its real and imaginary parts are resampled bilinearly
(``align_corners=True``) to ``[h', w'//2+1]``, as GFNet's authors do when they change the
resolution. The transforms run in float32 (at least) even under autocast: half-precision FFTs
are slow or unsupported, and limited to power-of-two sizes where they exist.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from tokenmixers.mixers.base import (
    TokenMixer,
    fx_leaf_call,
    is_symbolic_grid,
    mix_on_grid,
    register_mixer,
)

# One call node where torch.fx traces (fx.wrap patches the calling module's names).
torch.fx.wrap("fx_leaf_call")


@register_mixer("global_filter")
class GlobalFilterMixer(TokenMixer):
    """``[B, N, C] -> [B, N, C]``: the global filter on the last ``h*w`` tokens seen as the
    ``grid``; prefix tokens (if any) pass through unchanged. Built for ``grid``; any other grid
    runs with the filter resampled to it."""

    label = "global filter (GFNet)"
    macs_formula = "C·(2·1.25·n·log2 n + 4·h·(w//2+1)), n = h·w (rfft2 and irfft2; products)"
    resolution = "resample"

    def __init__(self, dim: int, *, grid: tuple[int, int]) -> None:
        super().__init__()
        self.dim = dim
        self.grid = (int(grid[0]), int(grid[1]))
        h, w = self.grid
        self.complex_weight = nn.Parameter(torch.empty(h, w // 2 + 1, dim, 2))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GFNet's init: ``randn * 0.02`` for the real and imaginary parts."""
        nn.init.normal_(self.complex_weight, std=0.02)

    def filter_weight(self, grid: tuple[int, int]) -> torch.Tensor:
        """The filter for ``grid = (h', w')`` as ``[h', w'//2+1, C, 2]`` (real, imaginary): the
        parameter itself at the grid it was built for, else its bilinear resample. Computed on
        every call from the parameter, so it never goes stale when the parameter changes."""
        size = (grid[0], grid[1] // 2 + 1)
        weight = self.complex_weight
        if tuple(weight.shape[:2]) == size:
            return weight
        h, wf, c, _ = weight.shape
        # [h, wf, C, 2] -> [1, C*2, h, wf]: every (channel, real/imaginary) plane is an image.
        planes = weight.permute(2, 3, 0, 1).reshape(1, c * 2, h, wf)
        planes = F.interpolate(planes, size=size, mode="bilinear", align_corners=True)
        return planes.reshape(c, 2, *size).permute(2, 3, 0, 1)

    def filter_grid(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, h, w, C] -> [B, h, w, C]``."""
        _, h, w, _ = x.shape
        # FFTs in float32 at least (float64 stays float64); cast back to the input's dtype.
        dtype = torch.promote_types(x.dtype, torch.float32)
        weight = self.filter_weight((h, w)).to(dtype)
        spectrum = torch.fft.rfft2(x.to(dtype), dim=(1, 2), norm="ortho")
        spectrum = spectrum * torch.view_as_complex(weight.contiguous())
        y = torch.fft.irfft2(spectrum, s=(h, w), dim=(1, 2), norm="ortho")
        return y.to(x.dtype)

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        if is_symbolic_grid(grid):  # torch.fx at any size: the filter depends on the grid
            return fx_leaf_call(self, x, grid)
        return mix_on_grid(x, grid, self.filter_grid)

    def macs(self, grid: tuple[int, int], num_prefix_tokens: int = 0) -> int:
        """Multiply-accumulates per image, by an op-count convention: a real-input 2-D FFT of
        ``n = h·w`` points costs ``1.25·n·log2(n)`` real MACs per channel (the usual
        ``5·n·log2(n)`` flops of a complex FFT, halved for real input, halved again from flops
        to MACs), the inverse the same, plus 4 real MACs for each of the ``h·(w//2+1)·C``
        complex products; rounded to an int. This is a convention, not what PyTorch's operator
        counter sees (it counts nothing for FFTs). The filter's resampling at another grid is
        not counted: it does not depend on the input and can be done once for inference."""
        h, w = grid
        n = h * w
        fft = 1.25 * n * math.log2(n) * self.dim
        return round(2 * fft + 4 * h * (w // 2 + 1) * self.dim)

    def extra_repr(self) -> str:
        return f"grid={self.grid}"
