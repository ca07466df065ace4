"""Any mixer in either skeleton, and only the mixer differs."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from tokenmixers.families.generic import build_hierarchical, build_isotropic
from tokenmixers.mixers import MIXERS

ISO = {"img_size": 32, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_classes": 10}
HIER = {"img_size": 32, "patch_size": 4, "embed_dims": (16, 32), "depths": (2, 1),
        "num_classes": 10}


def _shared_params(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """Every parameter outside the token mixer and its pre-norm, with its shape."""
    return {
        n: tuple(p.shape) for n, p in model.named_parameters()
        if ".mixer." not in n and ".norm1." not in n
    }


@pytest.mark.parametrize("build", [build_isotropic, build_hierarchical], ids=["iso", "hier"])
def test_every_mixer_fits_and_only_the_mixer_differs(build: Callable) -> None:
    kwargs = ISO if build is build_isotropic else HIER
    shared = None
    for mixer in sorted(MIXERS):
        model = build(mixer=mixer, **kwargs)
        x = torch.randn(2, 3, 32, 32)
        out = model(x)
        assert out.shape == (2, 10), mixer
        out.sum().backward()
        params = _shared_params(model)
        if shared is None:
            shared = params
        assert params == shared, f"{mixer} changes more than the mixer"
        mixers = [m for n, m in model.named_modules() if n.endswith(".mixer")]
        assert mixers and all(type(m) is type(mixers[0]) for m in mixers)


def test_mixer_defaults_scale_and_overrides_apply() -> None:
    model = build_isotropic(mixer="attention", **{**ISO, "embed_dim": 64})
    assert model.blocks[0].mixer.num_heads == 2
    model = build_isotropic(mixer="attention", mixer_kwargs={"num_heads": 4}, **ISO)
    assert model.blocks[0].mixer.num_heads == 4
    model = build_hierarchical(mixer="lstm2d", **HIER)
    assert [s.blocks[0].mixer.hidden_size for s in model.stages] == [4, 8]
    shift = build_isotropic(mixer="shift", **ISO)
    assert not shift.blocks[0].mixer_residual
    with pytest.raises(TypeError, match="does not take"):
        build_isotropic(mixer="shift", mixer_kwargs={"num_heads": 2}, **ISO)
    with pytest.raises(ValueError, match="unknown mixer"):
        build_isotropic(mixer="shfit", **ISO)


def test_mlstm_alternates_direction_in_both_skeletons() -> None:
    if "mlstm" not in MIXERS:
        pytest.fail("the mlstm mixer is not registered")
    iso = build_isotropic(mixer="mlstm", **ISO)
    assert [b.mixer.traversals for b in iso.blocks] == [("row",), ("row_reversed",)]
    hier = build_hierarchical(mixer="mlstm", **HIER)
    assert [b.mixer.traversals for b in hier.stages[0].blocks] == [("row",), ("row_reversed",)]
