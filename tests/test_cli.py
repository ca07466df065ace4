"""The command line: `list` and `demo`."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tokenmixers.cli import main


def test_list_shows_the_zoo_with_facts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "mixer*"]) == 0
    out = capsys.readouterr().out
    assert "mixer_s16_224" in out and "18.53M" in out and "2105.01601" in out
    assert "vit_tiny" not in out


def test_demo_prints_a_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--pattern", "vit_tiny*"]) == 0
    out = capsys.readouterr().out
    header, _rule, row = out.strip().splitlines()
    assert header.split() == ["model", "family", "parameters", "input", "output", "build+run"]
    assert row.split()[:5] == ["vit_tiny_patch16_224", "vit", "5,717,416", "3x224x224", "2x1000"]


def test_module_entry_point() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tokenmixers", "--version"], capture_output=True, text=True,
        check=True,
    )
    assert done.stdout.startswith("tokenmixers ")
