"""The references the speed benchmarks time ours against compute our function: the
ShiftViT in the authors' layout (benchmarks/shiftvit_reference.py) gives our logits with our
weights copied in, and the authors' own checkpoint and logits; benchmarks/gpu.py imports
without CUDA and refuses to run with a message that names it."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

import tokenmixers
from tokenmixers.families.shiftvit import convert_official

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
AUTHORS = Path(__file__).parent / "data" / "reference" / "shiftvit_small_cfg"
TINY = {"embed_dim": 16, "depths": (1, 1), "img_size": 32, "num_classes": 10}


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ref_mod = _load("shiftvit_reference")


def _pair() -> tuple[torch.nn.Module, torch.nn.Module]:
    ours = ref_mod.perturb_(tokenmixers.create_model("shiftvit_tiny_light", **TINY)).eval()
    ref = ref_mod.load_from_ours(ref_mod.build_reference("shiftvit_tiny_light", **TINY), ours)
    return ours, ref.eval()


def test_reference_gives_our_logits_with_our_weights() -> None:
    ours, ref = _pair()
    # C = 16 and 32 with n_div = 12: one and two channels per shifted group.
    assert [layer.blocks[0].n_div for layer in ref.layers] == [12, 12]
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        a, b = ours(x), ref(x)
    assert a.abs().max() > 0.5  # perturbed weights: logits far from zero
    assert (a - b).abs().max().item() <= 1e-5
    # The comparison notices a wrong weight: nudge one reference MLP weight.
    with torch.no_grad():
        ref.layers[1].blocks[0].mlp.fc2.weight[0, 0] += 0.5
        assert (ref(x) - a).abs().max().item() > 1e-3


def test_reference_keys_are_the_authors_layout() -> None:
    ours, ref = _pair()
    state = ref.state_dict()
    assert "layers.0.downsample.reduction.weight" in state and "layers.1.downsample" not in {
        k.rsplit(".", 2)[0] for k in state
    }
    # The library's converter from the authors' layout maps the reference back onto ours.
    converted = convert_official(state)
    assert {k: tuple(v.shape) for k, v in converted.items()} == {
        k: tuple(v.shape) for k, v in ours.state_dict().items()
    }
    assert all(torch.equal(converted[k], v) for k, v in ours.state_dict().items())


def test_reference_reproduces_the_authors_checkpoint() -> None:
    meta = json.loads(AUTHORS.with_suffix(".json").read_text())
    weights = load_file(str(AUTHORS) + ".weights.safetensors")
    io = load_file(str(AUTHORS) + ".io.safetensors")
    ref = ref_mod.ShiftViTReference(**meta["constructor_kwargs"]).eval()
    ref.load_state_dict(weights, strict=True)  # the authors' keys and shapes, all of them
    assert sum(p.numel() for p in ref.parameters()) == meta["num_params"]
    with torch.inference_mode():
        diff = (ref(io["input"]) - io["logits_fp32"]).abs().max().item()
    assert diff <= 1e-4


def test_gpu_benchmark_imports_and_names_cuda_without_it() -> None:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no GPU, whatever the machine has
    imported = subprocess.run(
        [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(BENCH)!r}); import gpu; "
         "print(gpu.NO_CUDA[:40])"],
        capture_output=True, text=True, env=env, cwd=ROOT,
    )
    assert imported.returncode == 0, imported.stderr
    assert "needs a CUDA device" in imported.stdout
    run = subprocess.run([sys.executable, str(BENCH / "gpu.py")], capture_output=True,
                         text=True, env=env, cwd=ROOT, timeout=120)
    assert run.returncode != 0
    assert "needs a CUDA device" in run.stderr and "CUDA" in run.stderr
    assert "Traceback" not in run.stderr
