"""What a trained model learned, as the ViT paper's Fig. 7 shows it (Dosovitskiy et al.,
ICLR 2021): the first layer's patch-embedding filters (their principal components), the
position embeddings' cosine similarities, and the mean attention distance of every head at
every depth; with a "mixing distance" that puts every other token mixer on the same axis.

**Mean attention distance** of a head: for each query token, the distance in pixels from
it to every key token weighted by the attention it pays them, averaged over the queries
and the images (ViT, Appendix D.7). Only grid tokens count: prefix (class) tokens have no
place in the image, so their queries are left out and the keys' weights are renormalised
over the grid. Token positions are the centres of their patches (the grid times the
stride), so distances are in input pixels.

**Mixing distance** of any token mixer: the same average with the mixer's own Jacobian in
place of the attention matrix, ``w_j = sum_c |d (sum_k y_centre,k) / d x_j,c|`` for the
centre output token of the mixer (its input taken from the model on real images), i.e. how
far in pixels the layer reaches to build its centre token. It is defined for every mixer
(attention included, where it also weighs the values), is 0 for a mixer that does not
mix, and grows with depth where the mixing does.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tokenmixers.blocks import Block


def token_positions(grid: tuple[int, int], stride: float) -> torch.Tensor:
    """``[h*w, 2]`` (row, column) centres of the grid's patches in pixels, row-major."""
    h, w = grid
    rows = (torch.arange(h, dtype=torch.float64) + 0.5) * stride
    cols = (torch.arange(w, dtype=torch.float64) + 0.5) * stride
    return torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1).reshape(h * w, 2)


def pairwise_distances(grid: tuple[int, int], stride: float = 1.0) -> torch.Tensor:
    """``[N, N]`` Euclidean distances between the grid's token centres, in pixels."""
    p = token_positions(grid, stride)
    return torch.cdist(p, p)


def mean_attention_distance(attn: torch.Tensor, grid: tuple[int, int],
                            stride: float = 1.0) -> torch.Tensor:
    """Per head, ``[heads]``: the attention-weighted distance from query to key in pixels,
    averaged over the grid's queries and the batch. ``attn``: ``[B, heads, N, N]`` over
    prefix + grid tokens (rows summing to 1); prefix tokens are left out and each row
    renormalised over the grid's keys."""
    n = grid[0] * grid[1]
    a = attn[..., -n:, -n:].double()
    a = a / a.sum(-1, keepdim=True).clamp_min(1e-30)
    d = pairwise_distances(grid, stride).to(a.device)
    return (a * d).sum(-1).mean(dim=(0, 2))


def jacobian_distance(weights: torch.Tensor, grid: tuple[int, int], centre: int,
                      stride: float = 1.0) -> float:
    """``sum_j w_j |p_j - p_centre| / sum_j w_j`` in pixels, for ``weights`` ``[h*w]``."""
    d = pairwise_distances(grid, stride)[centre].to(weights)
    total = float(weights.sum())
    return float((weights * d).sum()) / total if total > 0 else float("nan")


@dataclass
class LayerRecord:
    """One block's measurements."""

    name: str  # the block's module name
    mixer: str  # its mixer's registry name (or class name)
    depth: int  # its index among the model's blocks, from 0
    grid: tuple[int, int]
    stride: float  # pixels per token
    mixing_distance: float = float("nan")
    attention_distance: list[float] = field(default_factory=list)  # per head, if attention

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "mixer": self.mixer, "depth": self.depth,
                "grid": list(self.grid), "stride": self.stride,
                "mixing_distance": self.mixing_distance,
                "attention_distance": self.attention_distance}


@contextmanager
def _mixer_inputs(model: nn.Module) -> Iterator[dict[str, tuple[torch.Tensor, tuple[int, int]]]]:
    """Record each block's mixer input ``(tokens, grid)`` during one forward pass."""
    seen: dict[str, tuple[torch.Tensor, tuple[int, int]]] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, Block):
            def hook(_m: nn.Module, args: tuple[Any, ...], *, _name: str = name) -> None:
                x, grid = args[0], args[1]
                seen[_name] = (x.detach(), (int(grid[0]), int(grid[1])))

            handles.append(module.mixer.register_forward_pre_hook(hook))
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


def layer_distances(model: nn.Module, images: torch.Tensor) -> list[LayerRecord]:
    """Mixing distance of every block, and mean attention distance per head where the block
    mixes by attention, on ``images`` ``[B, C, H, W]`` (the model in eval mode, restored)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), _mixer_inputs(model) as seen:
            model(images)
        blocks = {name: m for name, m in model.named_modules() if isinstance(m, Block)}
        records = []
        for depth, (name, (x, grid)) in enumerate(seen.items()):
            mixer = blocks[name].mixer
            stride = images.shape[-1] / grid[1]
            rec = LayerRecord(name, getattr(mixer, "name", None) or type(mixer).__name__,
                              depth, grid, stride)
            n = grid[0] * grid[1]
            prefix = x.shape[1] - n
            centre = (grid[0] // 2) * grid[1] + grid[1] // 2
            xg = x.clone().requires_grad_(True)
            with torch.enable_grad():
                mixer(xg, grid)[:, prefix + centre].sum().backward()
            assert xg.grad is not None
            weights = xg.grad.abs().sum(-1).sum(0)[prefix:].double()
            rec.mixing_distance = jacobian_distance(weights, grid, centre, stride)
            if hasattr(mixer, "attention_weights"):
                with torch.no_grad():
                    attn = mixer.attention_weights(x)
                rec.attention_distance = mean_attention_distance(attn, grid, stride).tolist()
            records.append(rec)
        return records
    finally:
        model.train(was_training)


def patch_embedding_components(model: nn.Module, count: int = 28
                               ) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``count`` principal components of the stem's filters (ViT Fig. 7, left):
    ``([k, C, p, p] components, [k] fraction of the variance each explains)``."""
    weight = model.patch_embed.proj.weight.detach().double()  # type: ignore[union-attr]
    e = weight.shape[0]
    flat = weight.reshape(e, -1)
    flat = flat - flat.mean(0, keepdim=True)
    _, s, vh = torch.linalg.svd(flat, full_matrices=False)
    k = min(count, vh.shape[0])
    variance = s**2 / (s**2).sum().clamp_min(1e-30)
    return vh[:k].reshape(k, *weight.shape[1:]), variance[:k]


def position_embedding_similarity(model: nn.Module) -> torch.Tensor | None:
    """``[h, w, h, w]``: the cosine similarity of every grid position's embedding with
    every other's (ViT Fig. 7, centre); None for a model without a learned one."""
    pos = getattr(model, "pos_embed", None)
    if pos is None:
        return None
    table = pos.embed if hasattr(pos, "embed") else pos  # GridPosEmbed or a parameter
    h, w = model.grid_size  # type: ignore[union-attr]
    grid = table.detach().double().reshape(-1, table.shape[-1])[-h * w:]
    unit = grid / grid.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    return (unit @ unit.T).reshape(h, w, h, w)


def plot_inspection(model: nn.Module, records: list[LayerRecord], out: str | Path,
                    *, title: str = "") -> dict[str, Path]:
    """The PNGs of :func:`inspect_model`: ``filters.png``, ``pos_embed.png`` (if any) and
    ``distances.png`` in ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    comps, var = patch_embedding_components(model)
    cols = 7
    rows = math.ceil(len(comps) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.2, rows * 1.3), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, comp, v in zip(axes.flat, comps, var):
        img = comp.permute(1, 2, 0) if comp.shape[0] == 3 else comp[0]
        img = (img - img.min()) / (img.max() - img.min()).clamp_min(1e-30)
        ax.imshow(img.numpy(), cmap=None if img.ndim == 3 else "gray")
        ax.set_title(f"{v:.0%}", fontsize=7)
    fig.suptitle(f"{title} patch-embedding filters: principal components".strip(), fontsize=9)
    fig.tight_layout()
    paths["filters"] = out / "filters.png"
    fig.savefig(paths["filters"], dpi=110)
    plt.close(fig)

    sim = position_embedding_similarity(model)
    if sim is not None:
        h, w = sim.shape[:2]
        fig, axes = plt.subplots(h, w, figsize=(w * 0.6, h * 0.6), squeeze=False)
        for i in range(h):
            for j in range(w):
                axes[i, j].imshow(sim[i, j].numpy(), vmin=-1, vmax=1, cmap="viridis")
                axes[i, j].axis("off")
        fig.suptitle(f"{title} position-embedding similarity".strip(), fontsize=9)
        paths["pos_embed"] = out / "pos_embed.png"
        fig.savefig(paths["pos_embed"], dpi=110)
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 3.6))
    for rec in records:
        if rec.attention_distance:
            ax.scatter([rec.depth] * len(rec.attention_distance), rec.attention_distance,
                       s=12, color="tab:blue", label="attention (per head)")
    ax.plot([r.depth for r in records], [r.mixing_distance for r in records], "o-",
            color="tab:orange", label="mixing distance (Jacobian)")
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    ax.legend(unique.values(), unique.keys(), fontsize=8)
    ax.set_xticks([r.depth for r in records])
    ax.set_xlabel("block")
    ax.set_ylabel("mean distance (pixels)")
    ax.set_title(f"{title} mean distance per block".strip(), fontsize=9)
    fig.tight_layout()
    paths["distances"] = out / "distances.png"
    fig.savefig(paths["distances"], dpi=110)
    plt.close(fig)
    return paths
