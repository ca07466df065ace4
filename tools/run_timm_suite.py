"""Run timm's own model test suite (``tests/test_models.py`` of the installed timm's source
release) on the ``tm_*`` models.

    python tools/run_timm_suite.py [--workdir DIR] [-- PYTEST_ARGS...]

The script fetches timm's sdist for the installed version (``pip download``; or reuses
``--sdist FILE``), copies ``tests/test_models.py`` into ``--workdir`` with a ``conftest.py``
that imports tokenmixers (so the ``tm_*`` names are registered before timm's test module
builds its parameter lists), and extends four of the module's name lists the way timm
lists its own models there:

- ``NON_STD_FILTERS`` += our isotropic models (token output ``[B, N, C]``, as timm's ViT and
  Mixer, which timm lists there by name);
- ``FEAT_INTER_FILTERS`` += ``zoo``, the module timm records for every ``tm_*`` entry, so
  the ``forward_intermediates`` tests reach them;
- ``NON_STD_EXCLUDE_FILTERS`` += ``tm_vil2*``: ViL v2 pools by concatenating two tokens, so
  its pre-logits width (``head_hidden_size``) is twice ``num_features``, as timm defines
  both; timm's non-standard config test asserts that one pooled output equals both, which
  no concatenating pooling can satisfy (every timm model in that list has them equal).
  ``tests/test_timm_contract.py`` checks the consistent part of that test for ViL v2;
- TorchScript tests are deselected: ``torch.jit.script`` is unsupported (see the README's
  export section; ``torch.export``, ONNX and ``torch.jit.trace`` work); so are the two
  tests that download pretrained weights (no network here; see :data:`LEFT_OUT`).

Then it runs ``pytest -k tm_`` there and exits with pytest's status. Nothing in timm's test
functions is changed.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import timm

EXTRA = {
    "NON_STD_FILTERS": ["tm_vit_*", "tm_vil*", "tm_isotropic*", "tm_vim_*"],
    "NON_STD_EXCLUDE_FILTERS": ["tm_vil2*"],
    "FEAT_INTER_FILTERS": ["zoo"],
}


#: Test functions left out (by name): TorchScript is unsupported; the pretrained tests
#: download weights from the Hub (no network in CI; timm leaves them out on its own CI too,
#: and tests/test_timm_contract.py runs their checks on a faked download).
LEFT_OUT = ("torchscript", "test_model_load_pretrained", "test_model_features_pretrained")


def fetch_sdist(dest: Path) -> Path:
    version = timm.__version__
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                    "--no-binary", ":all:", f"timm=={version}", "-d", str(dest)], check=True)
    (sdist,) = dest.glob(f"timm-{version}.tar.gz")
    return sdist


def extend_lists(source: str) -> str:
    """``source`` with :data:`EXTRA` appended to each list, just before the first test
    (after every list is defined, before any test's parameters are built)."""
    for name in EXTRA:
        if not re.search(rf"^\s*{name} = ", source, re.M):
            raise SystemExit(f"{name} not found in timm's test_models.py: update {__file__}")
    first_test = re.search(r"^@pytest", source, re.M)
    if first_test is None:
        raise SystemExit(f"no test found in timm's test_models.py: update {__file__}")
    lines = "".join(f"{name} += {extra!r}\n" for name, extra in EXTRA.items())
    at = first_test.start()
    return f"{source[:at]}# added by tokenmixers' tools/run_timm_suite.py\n{lines}\n\n{source[at:]}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("runs/timm-suite"))
    parser.add_argument("--sdist", type=Path, help="timm's source release (.tar.gz)")
    parser.add_argument("pytest_args", nargs="*", help="more pytest arguments (after --)")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        sdist = args.sdist or fetch_sdist(Path(tmp))
        with tarfile.open(sdist) as tar:
            member = next(m for m in tar.getmembers() if m.name.endswith("tests/test_models.py"))
            source = tar.extractfile(member).read().decode()  # type: ignore[union-attr]
    (args.workdir / "test_models.py").write_text(extend_lists(source))
    (args.workdir / "conftest.py").write_text(
        "import tokenmixers  # noqa: F401  (registers tm_* before test_models builds its lists)\n")
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_models.py",
               "-k", f"tm_ and not ({' or '.join(LEFT_OUT)})", "--rootdir", ".", *args.pytest_args]
    print(f"timm {timm.__version__}: {' '.join(command)} (in {args.workdir})", flush=True)
    return subprocess.run(command, cwd=args.workdir).returncode


if __name__ == "__main__":
    sys.exit(main())
