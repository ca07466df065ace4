"""The skeleton: blocks, mixers in either backbone, input checks, the hierarchical backbone."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import tokenmixers
from tokenmixers import Block, HierarchicalBackbone, IsotropicBackbone, create_mixer


def test_block_topologies() -> None:
    mixer = nn.Linear(8, 8)
    calls = []

    class Recorder(nn.Module):
        def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
            calls.append(grid)
            return mixer(x)

    x = torch.randn(2, 6, 8)
    residual = Block(8, Recorder(), norm_layer=nn.LayerNorm, mlp_hidden_dim=None)
    assert torch.allclose(residual(x, (2, 3)), x + mixer(residual.norm1(x)))
    plain = Block(8, Recorder(), norm_layer=nn.LayerNorm, mlp_hidden_dim=16,
                  mixer_norm=False, mixer_residual=False)
    y = mixer(x)
    assert torch.allclose(plain(x, (2, 3)), y + plain.mlp(plain.norm2(y)))
    assert isinstance(plain.norm1, nn.Identity) and residual.mlp is None
    assert calls == [(2, 3), (2, 3)]


def test_mixer_registry_errors() -> None:
    with pytest.raises(ValueError, match="did you mean attention"):
        create_mixer("attentoin", 8, grid=(2, 2))
    with pytest.raises(TypeError, match="does not take"):
        create_mixer("attention", 8, grid=(2, 2), heads=2)


def test_vit_input_errors() -> None:
    model = tokenmixers.create_model(
        "vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2
    )
    with pytest.raises(ValueError, match="3-channel images but got 1 channels.*in_chans=1"):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match="height 30 does not fit patches of 8.*24 or 32"):
        model(torch.randn(1, 3, 30, 32))
    assert model(torch.randn(1, 3, 40, 24)).shape == (1, 1000)  # non-square, resampled
    strict = tokenmixers.create_model(
        "vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2,
        dynamic_img_size=False,
    )
    with pytest.raises(ValueError, match="dynamic_img_size"):
        strict(torch.randn(1, 3, 40, 24))


def test_mixer_refuses_other_sizes_and_says_how_to_build_one() -> None:
    model = tokenmixers.create_model("mixer_s16_224")
    with pytest.raises(ValueError) as err:
        model(torch.randn(1, 3, 160, 160))
    msg = str(err.value)
    assert "takes 224x224 images only" in msg and "14x14 grid" in msg
    assert "create_model('mixer_s16_224', img_size=160)" in msg


def test_vit_without_class_token_avg_pool() -> None:
    model = tokenmixers.create_model(
        "vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2,
        class_token=False, global_pool="avg",
    )
    assert model.cls_token is None and model.pos_embed.shape == (1, 16, 32)
    assert isinstance(model.norm, nn.Identity) and isinstance(model.fc_norm, nn.LayerNorm)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 1000)
    with pytest.raises(ValueError, match="class_token=True"):
        tokenmixers.create_model("vit_tiny_patch16_224", class_token=False)


def test_no_weight_decay_names_position_and_class_tokens() -> None:
    model = tokenmixers.create_model("vit_tiny_patch16_224", depth=1)
    assert model.no_weight_decay() == {"pos_embed", "cls_token"}
    names = dict(model.named_parameters())
    assert all(n in names for n in model.no_weight_decay())


def test_drop_path_ramps_linearly() -> None:
    model = tokenmixers.create_model("vit_tiny_patch16_224", depth=5, drop_path_rate=0.2)
    rates = [getattr(b.drop_path, "drop_prob", 0.0) for b in model.blocks]
    assert rates == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2])


def test_token_mlp_in_the_isotropic_skeleton_with_a_class_token() -> None:
    # any mixer in any skeleton: MLP-Mixer's token MLP behind a class token
    model = IsotropicBackbone(
        mixer="token_mlp", img_size=16, patch_size=4, embed_dim=16, depth=2, class_token=True,
        global_pool="token", num_classes=3,
    )
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 3)
    assert model.blocks[0].mixer.num_tokens == 17


def tiny_hierarchical(mixer: str = "attention", **kw: object) -> HierarchicalBackbone:
    args = dict(
        mixer=mixer, mixer_kwargs=[{"num_heads": 1}, {"num_heads": 2}, {"num_heads": 4}]
        if mixer == "attention" else {},
        img_size=32, patch_size=4, embed_dims=(8, 16, 32), depths=(1, 2, 1),
        downsample_sizes=(2, 2), mlp_ratios=(2.0, 2.0, None), num_classes=5,
        drop_path_rate=0.3,
    )
    args.update(kw)
    return HierarchicalBackbone(**args)


def test_hierarchical_backbone_tiny() -> None:
    model = tiny_hierarchical().eval()
    x = torch.randn(2, 3, 32, 32)
    feats = model.forward_features(x)
    assert feats.shape == (2, 2, 2, 32)  # channels-last, stride 16
    assert model(x).shape == (2, 5)
    maps = model.forward_intermediates(x, intermediates_only=True)
    assert [tuple(m.shape) for m in maps] == [(2, 8, 8, 8), (2, 16, 4, 4), (2, 32, 2, 2)]
    assert [f["reduction"] for f in model.feature_info] == [4, 8, 16]
    assert model.stages[2].blocks[0].mlp is None  # mlp_ratio None drops the MLP
    assert [b.mixer.num_heads for s in model.stages for b in s.blocks] == [1, 2, 2, 4]
    rates = [getattr(b.drop_path, "drop_prob", 0.0) for s in model.stages for b in s.blocks]
    assert rates == pytest.approx([0.0, 0.1, 0.2, 0.3])
    # non-square inputs run natively; sizes the strides cannot take are refused clearly
    assert model(torch.randn(1, 3, 48, 32)).shape == (1, 5)
    with pytest.raises(ValueError, match="multiples of 16"):
        model(torch.randn(1, 3, 40, 32))
    loss = model(torch.randn(2, 3, 32, 64)).sum()
    loss.backward()


def test_hierarchical_with_fixed_grid_token_mlp() -> None:
    model = tiny_hierarchical("token_mlp", mixer_kwargs={"mlp_ratio": 0.5})
    assert [s.blocks[0].mixer.fixed_grid for s in model.stages] == [(8, 8), (4, 4), (2, 2)]
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    with pytest.raises(ValueError, match="built for a 8x8 grid"):
        model(torch.randn(1, 3, 64, 64))


def test_hierarchical_config_errors() -> None:
    with pytest.raises(ValueError, match="downsample_sizes needs 2 entries"):
        tiny_hierarchical(downsample_sizes=(2,))
    with pytest.raises(ValueError, match="embed_dims has 2 entries"):
        tiny_hierarchical(embed_dims=(8, 16))


def test_prune_intermediate_layers_in_both_skeletons() -> None:
    """One implementation (the Backbone base) for both skeletons: the kept units give the
    same features as before pruning; a pruned hierarchical model ends at its last kept
    stage (its final norm belonged to the dropped one)."""
    x = torch.randn(2, 3, 32, 32)
    iso = tokenmixers.create_model("isotropic", img_size=32, patch_size=8, embed_dim=32,
                                   depth=3, num_classes=10).eval()
    hier = tokenmixers.create_model("hierarchical", img_size=32, patch_size=4,
                                    embed_dims=(16, 32, 64), depths=(1, 1, 1),
                                    num_classes=10).eval()
    with torch.no_grad():
        iso_maps = iso.forward_intermediates(x, intermediates_only=True)
        hier_maps = hier.forward_intermediates(x, intermediates_only=True)
        assert iso.prune_intermediate_layers(indices=[0, 1]) == [0, 1]
        assert len(iso.blocks) == 2 and isinstance(iso.head, nn.Identity)
        assert torch.equal(iso.forward_intermediates(x, intermediates_only=True)[1],
                           iso_maps[1])
        assert hier.prune_intermediate_layers(indices=[1]) == [1]
        assert len(hier.stages) == 2 and isinstance(hier.norm, nn.Identity)
        assert [f["num_chs"] for f in hier.feature_info] == [16, 32]
        assert torch.equal(hier.forward_intermediates(x, intermediates_only=True)[1],
                           hier_maps[1])
        assert hier(x).shape == (2, 32)  # pooled features of stage 1, no head
