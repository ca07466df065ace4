"""The registered token mixers with their facts, as a table (``tokenmixers mixers``; the
README's mixer table is this table)."""

from __future__ import annotations

from typing import Any

from tokenmixers.mixers.base import MIXERS, TokenMixer, create_mixer
from tokenmixers.text import format_table

__all__ = ["EXAMPLE", "mixer_rows", "mixers_markdown", "mixers_table"]

#: The block every mixer is measured in for the table: ViT-Ti's width on a 14x14 grid.
EXAMPLE = {"dim": 192, "grid": (14, 14)}


def _topology(cls: type[TokenMixer]) -> str:
    t = cls.topology
    parts = ["pre-norm" if t.norm else "no norm", "residual" if t.residual else "no residual"]
    if not t.mlp:
        parts.append("no MLP of its own")
    return ", ".join(parts)


def mixer_rows() -> list[dict[str, Any]]:
    """One dict per registered mixer: its facts, and its parameters and MACs at
    :data:`EXAMPLE` (one block's mixer, one image)."""
    rows = []
    for name, cls in MIXERS.items():
        mixer = create_mixer(name, EXAMPLE["dim"], grid=EXAMPLE["grid"])
        rows.append({
            "mixer": name,
            "label": cls.label,
            "topology": _topology(cls),
            "resolution": cls.resolution,
            "prefix tokens": cls.prefix_tokens,
            "params": sum(p.numel() for p in mixer.parameters()),
            "MMACs": mixer.macs(EXAMPLE["grid"]) / 1e6,
            "MACs per image": cls.macs_formula,
        })
    return rows


def _cells(row: dict[str, Any]) -> list[str]:
    return [row["mixer"], row["label"], row["topology"], row["resolution"],
            row["prefix tokens"], f"{row['params']:,}", f"{row['MMACs']:.2f}",
            row["MACs per image"]]


_HEADER = ["mixer", "what", "block", "resolution", "prefix tokens",
           f"params (C={EXAMPLE['dim']})", "MMACs (14x14)", "MACs per image"]


def mixers_table() -> str:
    return format_table([_cells(r) for r in mixer_rows()], _HEADER, "lllllrrl")


def mixers_markdown() -> str:
    lines = ["| " + " | ".join(_HEADER) + " |", "|" + " --- |" * len(_HEADER)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in _cells(r)) + " |"
              for r in mixer_rows()]
    return "\n".join(lines)
