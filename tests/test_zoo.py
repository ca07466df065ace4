"""The zoo: names, facts, overrides, errors, and timm registration."""

from __future__ import annotations

import pytest
import timm
import torch

import tokenmixers
from tokenmixers.families import FAMILIES
from tokenmixers.zoo import ZOO, UnknownModelError, model_arguments


@pytest.mark.parametrize("name", sorted(n for n, s in ZOO.items() if s.paper is not None))
def test_parameter_count_matches_paper_fact(name: str) -> None:
    # Built on the meta device: no memory, no init cost, exact shapes.
    with torch.device("meta"):
        model = tokenmixers.create_model(name)
    assert sum(p.numel() for p in model.parameters()) == ZOO[name].paper.params


TIMM_TWINS = [n for n in sorted(ZOO) if ZOO[n].family in ("vit", "mixer")]


@pytest.mark.parametrize("name", TIMM_TWINS)
def test_parameter_count_equals_timm(name: str) -> None:
    with torch.device("meta"):
        ours = tokenmixers.create_model(name)
        theirs = timm.create_model(name)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())


def test_issue_parameter_counts_are_the_zoo_facts() -> None:
    # The numbers the foundation issue names, against the zoo (the one source of truth).
    expected = {
        "vit_tiny_patch16_224": 5_717_416, "vit_small_patch16_224": 22_050_664,
        "vit_base_patch16_224": 86_567_656, "mixer_s16_224": 18_528_264,
        "mixer_s32_224": 19_104_624, "mixer_b16_224": 59_880_472,
        "mixer_b32_224": 60_293_428, "mixer_l16_224": 208_196_168,
    }
    assert {n: ZOO[n].paper.params for n in expected} == expected


def test_every_zoo_family_is_registered_with_a_tiny_config() -> None:
    for spec in ZOO.values():
        assert spec.family in FAMILIES
        assert FAMILIES[spec.family].tiny, f"family {spec.family} has no tiny test config"
        for key in FAMILIES[spec.family].tiny:
            assert key in model_arguments(spec.name)


def test_list_models_pattern() -> None:
    assert tokenmixers.list_models("vit_*") == [
        "vit_base_patch16_224", "vit_small_patch16_224", "vit_tiny_patch16_224"
    ]
    assert "mixer_s16_224" in tokenmixers.list_models()
    assert tokenmixers.list_models("nothing*") == []


def test_unknown_model_suggests_close_names() -> None:
    with pytest.raises(UnknownModelError, match="vit_small_patch16_224"):
        tokenmixers.create_model("vit_smal_patch16_224")


def test_unknown_override_raises_with_suggestion() -> None:
    with pytest.raises(TypeError, match=r"'embed_dims'.*did you mean embed_dim"):
        tokenmixers.create_model("vit_tiny_patch16_224", embed_dims=64)
    with pytest.raises(TypeError, match="num_blocks"):
        tokenmixers.create_model("mixer_s16_224", depth=2)  # Mixer calls it num_blocks


def test_overrides_build_the_issue_tiny_mnist_mixer() -> None:
    model = tokenmixers.create_model(
        "mixer_s16_224", img_size=28, patch_size=4, in_chans=1, embed_dim=64, num_blocks=2,
        num_classes=10,
    )
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert model.model_config["num_blocks"] == 2 and model.model_name == "mixer_s16_224"
    assert model.pretrained_cfg["input_size"] == (1, 28, 28)


def test_timm_registration_prefix_and_no_overwrite() -> None:
    model = timm.create_model("tm_vit_small_patch16_224", num_classes=10)
    assert isinstance(model, tokenmixers.IsotropicBackbone) and model.num_classes == 10
    for name in ZOO:
        assert timm.is_model("tm_" + name)
    # timm's own models are untouched.
    assert type(timm.create_model("vit_tiny_patch16_224", pretrained=False)).__module__.startswith(
        "timm."
    )
    # Registering again changes nothing and warns about nothing.
    assert tokenmixers.register_with_timm() == []
    with pytest.raises(RuntimeError, match="no pretrained weights"):
        timm.create_model("tm_shiftvit_tiny", pretrained=True)  # none published for it
    with pytest.raises(TypeError, match="does not take"):
        timm.create_model("tm_vit_tiny_patch16_224", bogus=1)
