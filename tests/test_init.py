"""Who owns a parameter initialises it: every mixer's own init survives model construction
in every skeleton, and every paper model's init is its reference's (parameter statistics
against timm's own init, or against the authors' scheme written out here)."""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest
import torch
from timm.models.mlp_mixer import MlpMixer
from timm.models.sequencer import Sequencer2d
from timm.models.vision_transformer import VisionTransformer
from torch import nn

import tokenmixers
from tokenmixers.backbones import hierarchical, isotropic
from tokenmixers.families import FAMILIES
from tokenmixers.mixers import MIXERS, create_mixer
from tokenmixers.zoo import ZOO

ISO = {"img_size": 32, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_classes": 10}
HIER = {"img_size": 32, "patch_size": 4, "embed_dims": (16, 32), "depths": (2, 1),
        "num_classes": 10}


@pytest.fixture
def as_built(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[int, dict[str, torch.Tensor]]]:
    """Each mixer's state right after its own constructor ran, by ``id(mixer)``."""
    states: dict[int, dict[str, torch.Tensor]] = {}

    def recording(*args: object, **kwargs: object) -> nn.Module:
        mixer = create_mixer(*args, **kwargs)
        states[id(mixer)] = copy.deepcopy(mixer.state_dict())
        return mixer

    monkeypatch.setattr(isotropic, "create_mixer", recording)
    monkeypatch.setattr(hierarchical, "create_mixer", recording)
    yield states


def _assert_mixers_untouched(model: nn.Module, states: dict[int, dict[str, torch.Tensor]]) -> int:
    mixers = [b.mixer for b in model.modules() if isinstance(b, tokenmixers.Block)]
    for mixer in mixers:
        for key, value in mixer.state_dict().items():
            assert torch.equal(value, states[id(mixer)][key]), f"{type(mixer).__name__}.{key}"
    return len(mixers)


@pytest.mark.parametrize("mixer", sorted(MIXERS))
@pytest.mark.parametrize("skeleton", ["isotropic", "hierarchical"])
def test_every_mixers_own_init_survives_the_generic_skeletons(
    skeleton: str, mixer: str, as_built: dict[int, dict[str, torch.Tensor]]
) -> None:
    model = tokenmixers.create_model(skeleton, mixer=mixer, **(ISO if skeleton == "isotropic"
                                                                 else HIER))
    assert _assert_mixers_untouched(model, as_built) == (3 if skeleton == "hierarchical" else 2)
    # initialising the skeleton again never reaches into a mixer
    before = {k: v.clone() for k, v in model.state_dict().items() if ".mixer." in k}
    model.init_weights(model.init_scheme)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_paper_family_leaves_its_mixers_init_alone(
    family: str, as_built: dict[int, dict[str, torch.Tensor]]
) -> None:
    name = next(n for n, s in ZOO.items() if s.family == family)
    model = tokenmixers.create_model(name, **FAMILIES[family].tiny)
    assert _assert_mixers_untouched(model, as_built) > 0


@pytest.mark.parametrize(("name", "kwargs"), [
    ("isotropic", ISO), ("hierarchical", HIER),
    ("vil_tiny", {"img_size": 32, "patch_size": 8, "dim": 32, "depth": 2}),
])
def test_mlstm_gate_init_survives_in_every_skeleton(name: str, kwargs: dict) -> None:
    """The regression: the generic skeletons used to re-initialise every Linear after the
    mixers had initialised themselves, leaving ViL with forget-gate biases [0, 0, 0, 0]."""
    extra = {"mixer": "mlstm"} if name in ("isotropic", "hierarchical") else {}
    model = tokenmixers.create_model(name, **kwargs, **extra)
    layers = [b.mixer for b in model.modules() if isinstance(b, tokenmixers.Block)]
    assert layers
    for layer in layers:
        assert torch.equal(layer.fgate.bias, torch.linspace(3.0, 6.0, layer.num_heads))
        assert torch.count_nonzero(layer.fgate.weight) == 0
        assert torch.count_nonzero(layer.igate.weight) == 0
        assert 0 < layer.igate.bias.abs().max() < 1.0  # N(0, 0.1²)
        assert torch.count_nonzero(layer.outnorm.weight) == 0 and torch.all(layer.skip == 1)


# ---- each paper model's init against its reference's --------------------------------------
def _stats_match(name: str, ours: torch.Tensor, ref: torch.Tensor) -> None:
    ours, ref = ours.detach().double().flatten(), ref.detach().double().flatten()
    assert ours.shape == ref.shape, name
    if torch.all(ref == ref[0]):  # a constant (zeros, ones, a fill): exactly that
        assert torch.equal(ours, ref), f"{name}: {ours[:4]} vs constant {ref[0]}"
        return
    # the sample std's relative standard error is about 1/√(2n): allow four of them
    rel = max(0.1, 4 / (2 * ref.numel()) ** 0.5)
    assert ours.std().item() == pytest.approx(ref.std().item(), rel=rel), name
    assert abs(ours.mean() - ref.mean()).item() < 5 * ref.std().item() / ref.numel() ** 0.5 + 1e-9
    if ref.numel() >= 2000:  # the shape: uniform 0.58 within one std, normal 0.68
        within = [float((t - t.mean()).abs().le(t.std()).double().mean()) for t in (ours, ref)]
        assert within[0] == pytest.approx(within[1], abs=0.04), f"{name}: {within}"


#: family -> (our zoo name, timm's model class, the arguments both take)
TIMM_CASES = {
    "vit": ("vit_tiny_patch16_224", VisionTransformer,
            {"img_size": 32, "patch_size": 8, "embed_dim": 192, "depth": 2, "num_heads": 3,
             "num_classes": 10}),
    "mixer": ("mixer_s16_224", MlpMixer,
              {"img_size": 32, "patch_size": 4, "embed_dim": 128, "num_blocks": 2,
               "num_classes": 10}),
    "sequencer2d": ("sequencer2d_s", Sequencer2d,
                    {"img_size": 32, "layers": (1, 1, 1, 1), "patch_sizes": (4, 2, 1, 1),
                     "embed_dims": (64, 128, 128, 128), "hidden_sizes": (16, 32, 32, 32),
                     "mlp_ratios": (3.0, 3.0, 3.0, 3.0), "num_classes": 10}),
}


@pytest.mark.parametrize("family", sorted(TIMM_CASES))
def test_init_statistics_equal_timms(family: str) -> None:
    name, timm_class, kwargs = TIMM_CASES[family]
    ours = tokenmixers.create_model(name, **kwargs)
    torch.manual_seed(1)
    ref = FAMILIES[family].converters["timm"](timm_class(**kwargs).state_dict())
    state = ours.state_dict()
    assert set(ref) == set(state)
    for key, value in ref.items():
        _stats_match(key, state[key], value)


def test_shiftvit_init_is_the_authors() -> None:
    """microsoft/SPACH: trunc_normal(std=.02) for every Linear and Conv weight, zero biases,
    GroupNorm at (1, 0)."""
    model = tokenmixers.create_model("shiftvit_tiny_light", img_size=32, embed_dim=32,
                                     depths=(1, 1, 1, 1), num_classes=10)
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            assert module.weight.std().item() == pytest.approx(0.02, rel=0.15), name
            assert module.weight.abs().max() <= 2.0
            if module.bias is not None:
                assert torch.count_nonzero(module.bias) == 0, name
        elif hasattr(module, "num_channels") and hasattr(module, "weight"):  # GroupNorm1
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0), name


def test_vil_init_is_the_authors() -> None:
    """NX-AI/vision-lstm: small init N(0, 2/(5D)) for proj_up and q/k/v, N(0, (2/√D)²) for
    proj_down, gates as above, 1+γ norms at γ = 0, position embedding trunc_normal(.02),
    head trunc_normal(2e-5)."""
    d = 192
    model = tokenmixers.create_model("vil_tiny", img_size=64, patch_size=8, depth=2,
                                     num_classes=10)
    layer = model.blocks[0].mixer
    small = (2 / (5 * d)) ** 0.5
    for lin in (layer.proj_up, layer.q_proj, layer.k_proj, layer.v_proj):
        assert lin.weight.std().item() == pytest.approx(small, rel=0.1)
    assert layer.proj_down.weight.std().item() == pytest.approx(2 / d**0.5, rel=0.1)
    assert model.pos_embed.embed.std().item() == pytest.approx(0.02, rel=0.1)
    assert model.head.weight.std().item() == pytest.approx(2e-5, rel=0.15)
    assert torch.count_nonzero(model.head.bias) == 0
    for norm in (model.blocks[0].norm1, model.norm):
        assert torch.count_nonzero(norm.weight) == 0
