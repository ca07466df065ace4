"""What a model learned (ViT Fig. 7): mean attention distance on constructed attention
patterns, the mixing distance of any mixer, patch-embedding components and the
position-embedding similarity grid."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import tokenmixers
from tokenmixers.inspection import (
    layer_distances,
    mean_attention_distance,
    patch_embedding_components,
    plot_inspection,
    position_embedding_similarity,
)

ISO = {"img_size": 32, "patch_size": 4, "embed_dim": 32, "num_classes": 10}


def mean_pairwise(h: int, w: int, stride: float) -> float:
    """The mean distance between two tokens of an h x w grid (every ordered pair, a token
    with itself included), by brute force."""
    cells = list(itertools.product(range(h), range(w)))
    total = sum(math.dist(a, b) for a in cells for b in cells)
    return stride * total / len(cells) ** 2


def test_uniform_attention_gives_the_mean_pairwise_distance() -> None:
    grid = (3, 5)
    n = 15
    attn = torch.full((2, 4, n, n), 1 / n)
    mad = mean_attention_distance(attn, grid, stride=16)
    assert mad.shape == (4,)
    assert torch.allclose(mad, torch.tensor(mean_pairwise(3, 5, 16), dtype=mad.dtype))


def test_identity_attention_gives_zero() -> None:
    attn = torch.eye(16).expand(1, 3, 16, 16)
    zeros = torch.zeros(3, dtype=torch.float64)
    assert torch.equal(mean_attention_distance(attn, (4, 4), 8), zeros)


def test_class_token_is_left_out_and_rows_renormalised() -> None:
    # each grid query pays half its attention to the class token and half to its right
    # neighbour (wrapping): the grid part renormalised is "one token to the right".
    h, w = 2, 4
    n = h * w
    attn = torch.zeros(1, 1, n + 1, n + 1)
    attn[..., 1:, 0] = 0.5
    for q in range(n):
        r, c = divmod(q, w)
        attn[0, 0, 1 + q, 1 + r * w + (c + 1) % w] = 0.5
    attn[0, 0, 0, :] = 1 / (n + 1)  # the class token's own row: not counted
    expected = (3 * 1 + 1 * 3) / 4 * 10  # three neighbours one step away, one wraps three
    assert mean_attention_distance(attn, (h, w), 10).item() == pytest.approx(expected)


def test_attention_weights_rows_sum_to_one_and_give_the_forward() -> None:
    model = tokenmixers.create_model("isotropic", mixer="attention", depth=1, **ISO).eval()
    mixer = model.blocks[0].mixer
    x = torch.randn(2, 65, 32)
    attn = mixer.attention_weights(x)
    assert attn.shape == (2, mixer.num_heads, 65, 65)
    assert torch.allclose(attn.sum(-1), torch.ones(()))
    with torch.no_grad():
        assert torch.allclose(mixer.attend_reference(x), mixer(x, (8, 8)), atol=1e-5)


def test_layer_distances_with_uniform_attention_and_without_mixing() -> None:
    """Attention with zero queries and keys attends uniformly: every head's distance is the
    grid's mean pairwise distance; a mixer that does not mix has mixing distance 0."""
    torch.manual_seed(0)
    model = tokenmixers.create_model("isotropic", mixer="attention", depth=2, **ISO)
    with torch.no_grad():
        qkv = model.blocks[1].mixer.qkv
        qkv.weight[:64].zero_()
        qkv.bias[:64].zero_()
    records = layer_distances(model.train(), torch.randn(3, 3, 32, 32))
    assert model.training  # left as it was
    assert [r.mixer for r in records] == ["attention", "attention"]
    heads = model.blocks[1].mixer.num_heads
    assert records[1].attention_distance == pytest.approx([mean_pairwise(8, 8, 4)] * heads)
    assert records[1].stride == 4 and records[1].grid == (8, 8)
    assert 0 < records[1].mixing_distance < 8 * 4 * math.sqrt(2)
    assert len(records[0].attention_distance) == model.blocks[0].mixer.num_heads
    still = tokenmixers.create_model("isotropic", mixer="identity", depth=2, **ISO)
    for r in layer_distances(still, torch.randn(2, 3, 32, 32)):
        assert r.mixing_distance == 0 and r.attention_distance == []


def test_mixing_distance_of_a_pool_is_its_stencil() -> None:
    torch.manual_seed(0)
    model = tokenmixers.create_model("hierarchical", mixer="pool", img_size=32, patch_size=4,
                                     embed_dims=(8, 16), depths=(1, 1), num_classes=3)
    records = layer_distances(model, torch.randn(2, 3, 32, 32))
    assert [r.stride for r in records] == [4, 8]
    # PoolFormer's avgpool(x) - x at an inner token: weight 8/9 on itself, 1/9 on each of
    # its 8 neighbours (4 at one token, 4 at sqrt(2)), in every channel; distances in the
    # stage's own pixels per token
    for r in records:
        expected = r.stride * (4 * 1 + 4 * math.sqrt(2)) / 9 / (8 / 9 + 8 / 9)
        assert r.mixing_distance == pytest.approx(expected)


def test_patch_embedding_components_and_position_similarity(tmp_path) -> None:
    torch.manual_seed(0)
    model = tokenmixers.create_model("vit_tiny_patch16_224", img_size=32, patch_size=4,
                                     embed_dim=32, depth=1, num_heads=2)
    with torch.no_grad():
        model.pos_embed.normal_()
    comps, var = patch_embedding_components(model, count=28)
    assert comps.shape == (28, 3, 4, 4)
    flat = comps.reshape(28, -1)
    assert torch.allclose(flat @ flat.T, torch.eye(28, dtype=flat.dtype), atol=1e-8)
    assert torch.all(var[:-1] >= var[1:]) and 0 < float(var.sum()) <= 1 + 1e-9
    sim = position_embedding_similarity(model)
    assert sim is not None and sim.shape == (8, 8, 8, 8)
    diag = torch.stack([sim[i, j, i, j] for i in range(8) for j in range(8)])
    assert torch.allclose(diag, torch.ones((), dtype=diag.dtype))
    assert torch.allclose(sim, sim.permute(2, 3, 0, 1))
    records = layer_distances(model, torch.randn(2, 3, 32, 32))
    paths = plot_inspection(model, records, tmp_path, title="vit")
    assert set(paths) == {"filters", "pos_embed", "distances"}
    assert all(p.stat().st_size > 1000 for p in paths.values())


def test_erf_and_inspect_commands_on_a_trained_run(tmp_path, capsys) -> None:
    """`tokenmixers erf` and `tokenmixers inspect` on a (tiny) trained run: its own data,
    the trained weights and their untrained twin, the files and the printed tables."""
    import json

    from tokenmixers.cli import main

    run = tmp_path / "run"
    assert main(["train", "--model", "vit_tiny_patch16_224", "--model-kwargs", "patch_size=4",
                 "embed_dim=32", "depth=2", "num_heads=2", "--data", "mnist5k",
                 "--limit-train", "128", "--limit-val", "32", "--epochs", "1",
                 "--batch-size", "32", "--progress", "none", "--output", str(run)]) == 0
    capsys.readouterr()
    assert main(["erf", "--checkpoint", str(run), "--images", "4", "-o",
                 str(tmp_path / "erf")]) == 0
    out = capsys.readouterr().out
    assert "on 4 mnist5k validation images" in out and "trained" in out and "untrained" in out
    rows = json.loads((tmp_path / "erf" / "erf.json").read_text())
    assert [r["state"] for r in rows] == ["trained", "untrained"]
    assert all(0 < r["area50"] <= r["area90"] <= 1 and r["radius"] > 0 for r in rows)
    assert (tmp_path / "erf" / "erf.png").stat().st_size > 1000
    assert main(["inspect", "--checkpoint", str(run), "--images", "4", "-o",
                 str(tmp_path / "inspect")]) == 0
    out = capsys.readouterr().out
    assert "attention distance" in out
    result = json.loads((tmp_path / "inspect" / "inspect.json").read_text())
    assert [layer["depth"] for layer in result["layers"]] == [0, 1]
    assert all(len(layer["attention_distance"]) == 2 for layer in result["layers"])
    # A zoo model without data: noise images; bad input names the option.
    assert main(["erf", "--model", "shiftvit_tiny", "--model-kwargs", "embed_dim=8",
                 "depths=(1,1)", "--img-size", "64", "--images", "2", "-o",
                 str(tmp_path / "erf2")]) == 0
    assert "2 noise images" in capsys.readouterr().out
    assert main(["erf", "--model", "vit_tiny_patch16_224", "--checkpoint", str(run)]) == 2
    assert "exactly one of --model NAME or --checkpoint" in capsys.readouterr().err
    assert main(["inspect", "--checkpoint", str(run), "--images", "0"]) == 2
    assert "--images 0: expected at least 1" in capsys.readouterr().err
