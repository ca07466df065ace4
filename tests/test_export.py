"""Graph capture and deployment on one tiny model per family and every mLSTM backend:
torchvision FX feature extraction, ``torch.export`` on a fresh model (static and dynamic
batch), ONNX through onnxruntime, bf16/fp16 autocast, ``torch.jit.trace`` and the
``tokenmixers export`` command."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import tokenmixers
from tokenmixers.cli import main
from tokenmixers.export import export_model
from tokenmixers.families import FAMILIES
from tokenmixers.zoo import ZOO

#: (zoo name, overrides of the family's tiny config): one model per family, and every mLSTM
#: backend for ViL v1 and v2 (chunk_size 8 on 16 tokens: two chunks, so the chunkwise form
#: carries a state; recurrent on a 2x2 grid to keep its unrolled graph small).
VIL = {"depth": 1}
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "vit": ("vit_tiny_patch16_224", {"depth": 1}),
    "mixer": ("mixer_s16_224", {"num_blocks": 1}),
    "shiftvit": ("shiftvit_tiny", {"depths": (1, 1)}),
    "sequencer2d": ("sequencer2d_s", {"img_size": 16, "layers": (1,), "patch_sizes": (4,),
                                      "embed_dims": (16,), "hidden_sizes": (4,),
                                      "mlp_ratios": (2.0,)}),
    "vil-chunkwise": ("vil_tiny", {**VIL, "backend": "chunkwise", "chunk_size": 8}),
    "vil-parallel": ("vil_tiny", {**VIL, "backend": "parallel"}),
    "vil-recurrent": ("vil_tiny", {**VIL, "backend": "recurrent", "img_size": 16}),
    "vil2-chunkwise": ("vil2_tiny", {**VIL, "backend": "chunkwise", "chunk_size": 8}),
    "vil2-parallel": ("vil2_tiny", {**VIL, "backend": "parallel"}),
    "vil2-recurrent": ("vil2_tiny", {**VIL, "backend": "recurrent", "img_size": 16}),
    # Vim: the recurrent scan unrolled over 5 tokens (2x2 grid + class token); the chunked
    # one in chunks of 4 over 17 tokens (a padded last chunk, states carried).
    "vim-recurrent": ("vim_tiny", {"depth": 1, "scan": "recurrent", "img_size": 16}),
    "vim-chunked": ("vim_tiny", {"depth": 1, "scan": "chunked", "chunk_size": 4}),
}
#: The ONNX sweep: every family and every backend (v2's convolution is covered by its
#: chunkwise case; its backends are the same cell as v1's).
ONNX_CASES = [k for k in CASES if not k.startswith("vil2-") or k == "vil2-chunkwise"]
ONE_PER_FAMILY = ["vit", "mixer", "shiftvit", "sequencer2d", "vil-chunkwise", "vil2-chunkwise",
                  "vim-recurrent"]


def build(case: str) -> tokenmixers.Backbone:
    """A fresh tiny model in eval mode, its head non-trivial (the zero-initialised heads
    would make every logit equal)."""
    name, extra = CASES[case]
    model = tokenmixers.create_model(name, **{**FAMILIES[ZOO[name].family].tiny, **extra})
    torch.nn.init.normal_(model.head.weight, std=0.5)
    return model.eval()


def images(model: tokenmixers.Backbone, batch: int) -> torch.Tensor:
    c, h, w = model.pretrained_cfg["input_size"]
    return torch.randn(batch, c, h, w)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


@pytest.mark.parametrize("case", [*ONE_PER_FAMILY, "vil-recurrent"])
def test_fx_feature_extraction(case: str) -> None:
    from torchvision.models.feature_extraction import (
        create_feature_extractor,
        get_graph_node_names,
    )

    model = build(case)
    _, eval_nodes = get_graph_node_names(model)
    units = "blocks.0" if hasattr(model, "blocks") else "stages.0"
    feature = [n for n in eval_nodes if n.startswith(units)][-1]  # the unit's output
    extractor = create_feature_extractor(model, {feature: "feature", eval_nodes[-1]: "logits"})
    x = images(model, 2)
    with torch.no_grad():
        out = extractor(x)
        assert max_diff(out["logits"], model(x)) <= 1e-5
    assert out["feature"].shape[0] == 2
    c, h, w = model.pretrained_cfg["input_size"]
    bigger = torch.randn(1, c, h + 16, w + 16)
    if units == "stages.0":
        # Hierarchical: the grid is a graph value, so the graph runs at any size the model
        # takes, equal to eager.
        with torch.no_grad():
            assert max_diff(extractor(bigger)["logits"], model(bigger)) <= 1e-5
    else:
        # Isotropic: traced at img_size (the position embedding's grid), and says so for
        # another size.
        with pytest.raises(ValueError, match="traced by torch.fx"):
            extractor(bigger)


@pytest.mark.parametrize("case", list(CASES))
def test_torch_export_fresh_model_static_and_dynamic_batch(case: str) -> None:
    model = build(case)  # no eager forward before the export
    x2, x3 = images(model, 2), images(model, 3)
    static = torch.export.export(model, (x2,)).module()
    batch = torch.export.Dim("batch", min=1, max=64)
    dynamic = torch.export.export(model, (x2,), dynamic_shapes=({0: batch},)).module()
    with torch.no_grad():
        assert max_diff(static(x2), model(x2)) <= 1e-4
        for x in (x2, x3):
            assert max_diff(dynamic(x), model(x)) <= 1e-4


@pytest.mark.parametrize("case", ONNX_CASES)
def test_onnx_dynamo_dynamic_batch_runs_in_onnxruntime(case: str, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")  # a guard only: the test extra installs it
    result = export_model(build(case), tmp_path / "m.onnx", format="onnx", dynamic_batch=True,
                          optimize=False)
    assert result.path.is_file() and result.max_abs_diff <= 1e-4


@pytest.mark.parametrize("case", ["vil-chunkwise", "vil2-chunkwise", "shiftvit", "sequencer2d"])
def test_onnx_torchscript_exporter_dynamic_batch(case: str, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    result = export_model(build(case), tmp_path / "m.onnx", format="onnx", dynamic_batch=True,
                          dynamo=False)
    assert result.max_abs_diff <= 1e-4


AUTOCAST = [(case, torch.bfloat16) for case in CASES] + [
    (case, torch.float16) for case in [*ONE_PER_FAMILY, "vil-parallel", "vil-recurrent"]
]


@pytest.mark.parametrize(("case", "dtype"), AUTOCAST)
def test_autocast_matches_float32(case: str, dtype: torch.dtype) -> None:
    model = build(case)
    x = images(model, 8)
    ref = model(x).detach()
    # With autograd on (the chunkwise form's differentiable schedule) and, in bf16, off
    # (its chunk-by-chunk scan); CPU fp16 kernels are slow, so fp16 runs one of them.
    for grad in (True, False) if dtype == torch.bfloat16 else (True,):
        with torch.set_grad_enabled(grad), torch.autocast("cpu", dtype=dtype):
            out = model(x)
        assert out.dtype in (dtype, torch.float32)
        scale = ref.abs().max().item()
        assert torch.allclose(out.float(), ref, rtol=0.03, atol=0.03 * scale), max_diff(out, ref)
        assert torch.equal(out.argmax(-1), ref.argmax(-1))


@pytest.mark.parametrize("case", ["vil-chunkwise", "vit"])
def test_half_model_runs(case: str) -> None:
    model = build(case)
    x = images(model, 4)
    ref = model(x).detach()
    out = model.to(torch.bfloat16)(x.to(torch.bfloat16)).detach()
    assert out.dtype == torch.bfloat16
    assert torch.allclose(out.float(), ref, rtol=0.05, atol=0.05 * ref.abs().max().item())


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # sizes traced as constants
@pytest.mark.parametrize("case", ONE_PER_FAMILY)
def test_jit_trace_works_where_script_does_not(case: str) -> None:
    model = build(case)
    x = images(model, 2)
    with torch.no_grad():
        traced = torch.jit.trace(model, (x,), check_trace=False)
        assert max_diff(traced(x), model(x)) <= 1e-5


@pytest.mark.parametrize("case", ONE_PER_FAMILY)
def test_export_command_checks_the_file(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name, extra = CASES[case]
    kwargs = {**FAMILIES[ZOO[name].family].tiny, **extra}
    pairs = [f"{k}={v!r}".replace(" ", "") for k, v in kwargs.items()]
    # pt2 for every family (fast); ONNX (the default format) for one (the slow exporter).
    fmt = "onnx" if case == "vil-chunkwise" else "pt2"
    out = tmp_path / f"model.{fmt}"
    argv = ["export", "--model", name, "--format", fmt, "--dynamic-batch", "--check",
            "--output", str(out), "--no-optimize", "--model-kwargs", *pairs]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "max abs difference from eager" in printed
    assert out.is_file() and not list(tmp_path.glob(".*"))  # no temporary left behind


def test_export_errors_name_the_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", "--output", str(tmp_path / "x.onnx")]) == 2
    assert "exactly one of --model NAME or --checkpoint" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown export format 'tflite'.*onnx, pt2"):
        export_model(build("vit"), tmp_path / "x", format="tflite")


def test_missing_onnx_packages_say_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from tokenmixers.export import require_onnx

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now fails
    with pytest.raises(ImportError, match=r"onnxruntime.*pip install 'tokenmixers\[export\]'"):
        require_onnx()


def test_export_command_builds_a_zoo_model_at_img_size(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The token-mixing MLP is built for one grid: --img-size builds the model for that size.
    out = tmp_path / "mixer.pt2"
    argv = ["export", "--model", "mixer_s16_224", "--format", "pt2", "--img-size", "48",
            "--check", "--output", str(out), "--model-kwargs", "patch_size=8", "embed_dim=32",
            "num_blocks=1", "num_classes=10"]
    assert main(argv) == 0
    assert "input 2x3x48x48" in capsys.readouterr().out
