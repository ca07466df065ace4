"""Loading and saving weights: safetensors first, ``torch.load(weights_only=True)`` for
``.pth``/``.pt``/``.bin``, never arbitrary unpickling.

``load_weights`` takes our own checkpoints, timm's, and the authors' (``official``),
detecting the source from the keys; a checkpoint that does not fit the model fails with a
message naming the keys and shapes that differ.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from tokenmixers._files import atomic_path
from tokenmixers.backbones import Backbone
from tokenmixers.families import FAMILIES
from tokenmixers.version import __version__

SOURCES = ("tokenmixers", "timm", "official")
FORMAT = "tokenmixers"
#: The weights file of a Hugging Face Hub style folder (see ``tokenmixers.hub``).
WEIGHTS_NAME = "model.safetensors"


class CheckpointMismatchError(ValueError):
    """A checkpoint whose keys or shapes do not fit the model."""


def read_state_dict(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A checkpoint file -> (flat state dict of tensors, safetensors metadata or {})."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path} (check the path)")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory; pass the checkpoint file inside it")
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = dict(f.metadata() or {})
            return load_file(str(path)), metadata
        except (SafetensorError, OSError) as err:
            raise ValueError(f"{path} is not a readable safetensors file: {err}") from err
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and weights_only errors all land here
        raise ValueError(
            f"could not read {path} as a PyTorch weights file with weights_only=True ({err}); "
            "tokenmixers does not unpickle arbitrary objects: re-save it as safetensors or as "
            "a plain state dict"
        ) from err
    return unwrap_state_dict(obj, str(path)), {}


def unwrap_state_dict(obj: Any, what: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Find the state dict inside common checkpoint containers and strip wrapper prefixes
    (``module.`` from DDP, ``_orig_mod.`` from ``torch.compile``)."""
    if isinstance(obj, Mapping) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in ("state_dict", "model", "model_ema", "module", "state_dict_ema"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(
                isinstance(v, torch.Tensor) for v in inner.values()
            ):
                obj = inner
                break
        else:
            raise ValueError(f"{what} holds no state dict (keys: {sorted(obj)[:10]})")
    if not isinstance(obj, Mapping):
        raise ValueError(f"{what} is a {type(obj).__name__}, not a state dict")
    state = dict(obj)
    for prefix in ("module.", "_orig_mod."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _mismatch(model_state: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]):
    missing = sorted(set(model_state) - set(state))
    unexpected = sorted(set(state) - set(model_state))
    shapes = sorted(
        (k, tuple(state[k].shape), tuple(model_state[k].shape))
        for k in set(model_state) & set(state)
        if tuple(state[k].shape) != tuple(model_state[k].shape)
    )
    return missing, unexpected, shapes


def _describe(
    model: Backbone, source: str, missing: list[str], unexpected: list[str],
    shapes: list[tuple[str, tuple[int, ...], tuple[int, ...]]], metadata: Mapping[str, str],
) -> str:
    def some(keys: list[str]) -> str:
        return ", ".join(keys[:8]) + (f" ... ({len(keys)} in all)" if len(keys) > 8 else "")

    name = model.model_name or type(model).__name__
    lines = [f"checkpoint does not fit {name} (read as a {source!r} checkpoint):"]
    if metadata.get("model_name") and metadata["model_name"] != model.model_name:
        lines.append(f"  it was saved from {metadata['model_name']}, not {name}")
    if missing:
        lines.append(f"  missing from the checkpoint: {some(missing)}")
    if unexpected:
        lines.append(f"  not in the model: {some(unexpected)}")
    for key, got, want in shapes[:8]:
        lines.append(f"  {key}: checkpoint {list(got)} vs model {list(want)}")
    if len(shapes) > 8:
        lines.append(f"  ... {len(shapes)} shape mismatches in all")
    head = dict((k, (g, w)) for k, g, w in shapes).get("head.weight")
    if head is not None and head[0][1:] == head[1][1:]:
        lines.append(
            f"  the checkpoint has {head[0][0]} classes and the model {head[1][0]}: build the "
            f"model with num_classes={head[0][0]}, or pass strict=False and re-train the head"
        )
    return "\n".join(lines)


def convert_state_dict(
    model: Backbone, state: Mapping[str, torch.Tensor], source: str
) -> dict[str, torch.Tensor]:
    """``state`` in ``source``'s layout -> the model's own keys."""
    if source == "tokenmixers":
        return dict(state)
    family = FAMILIES.get(model.family)
    converter = family.converters.get(source) if family else None
    if converter is None:
        known = ["tokenmixers", *(family.converters if family else ())]
        raise ValueError(
            f"no {source!r} converter for the {model.family or 'unknown'} family; sources: {known}"
        )
    return converter(dict(state))


def _best_conversion(
    model: Backbone, state: Mapping[str, torch.Tensor], source: str
) -> tuple[str, dict[str, torch.Tensor], list[str], list[str], list[tuple[str, Any, Any]]]:
    """Convert ``state`` from ``source`` (or, for ``"auto"``, from whichever known layout fits
    the model best) -> (source used, converted state, missing, unexpected, shape mismatches)."""
    model_state = model.state_dict()
    family = FAMILIES.get(model.family)
    candidates = (
        ["tokenmixers", *(family.converters if family else ())] if source == "auto" else [source]
    )
    best = None
    for cand in candidates:
        converted = convert_state_dict(model, state, cand)
        missing, unexpected, shapes = _mismatch(model_state, converted)
        score = len(missing) + len(unexpected) + len(shapes)
        if best is None or score < best[0]:
            best = (score, cand, converted, missing, unexpected, shapes)
        if score == 0:
            break
    assert best is not None
    return best[1:]


def pretrained_filter(state_dict: Mapping[str, Any], model: Backbone) -> dict[str, torch.Tensor]:
    """timm's ``pretrained_filter_fn`` for tokenmixers models: a checkpoint in any layout
    :func:`load_weights` knows -> the model's keys, checked. Differences timm's loader
    resolves itself are let through: the head (another class count) and the stem's weight
    (other input channels); anything else raises :class:`CheckpointMismatchError`."""
    state = unwrap_state_dict(state_dict)
    used, converted, missing, unexpected, shapes = _best_conversion(model, state, "auto")
    first_conv = "patch_embed.proj.weight"

    def head(key: str) -> bool:
        return key.startswith("head.")

    bad_missing = [k for k in missing if not head(k)]
    bad_unexpected = [k for k in unexpected if not head(k)]
    bad_shapes = [s for s in shapes if not head(s[0]) and s[0] != first_conv]
    if bad_missing or bad_unexpected or bad_shapes:
        raise CheckpointMismatchError(
            _describe(model, used, bad_missing, bad_unexpected, bad_shapes, {})
        )
    return converted


_HEADS = ("head.weight", "head.fc.weight")  # ours (and most layouts) / timm's Sequencer2D


def checkpoint_num_classes(path: str | os.PathLike[str]) -> int | None:
    """The class count of a checkpoint file's head (for safetensors read without loading
    the tensors; 0 for a headless one written by tokenmixers); None when it cannot tell."""
    path = Path(path)
    if path.suffix != ".safetensors":
        try:
            state, _ = read_state_dict(path)
        except (OSError, ValueError):
            return None  # the loader says what is wrong with the file
        head = next((state[k] for k in _HEADS if k in state), None)
        return int(head.shape[0]) if head is not None else None
    try:
        with safe_open(str(path), framework="pt") as f:
            for key in _HEADS:
                if key in f.keys():
                    return int(f.get_slice(key).get_shape()[0])
            metadata = dict(f.metadata() or {})
    except (SafetensorError, OSError):
        return None
    if metadata.get("format") == FORMAT:
        n = json.loads(metadata.get("model_config", "{}")).get("num_classes")
        return int(n) if n is not None else None
    return None


def load_weights(
    model: Backbone,
    checkpoint: str | os.PathLike[str] | Mapping[str, torch.Tensor],
    source: str = "auto",
    *,
    strict: bool = True,
) -> str:
    """Load ``checkpoint`` (a path or a state dict) into ``model``; returns the source used.

    ``source``: ``"tokenmixers"``, ``"timm"``, ``"official"`` (the authors' code), or
    ``"auto"`` to pick whichever layout matches the model's keys exactly. With
    ``strict=False``, keys or shapes that do not fit are skipped (e.g. another head) and
    the rest load.
    """
    if source != "auto" and source not in SOURCES:
        raise ValueError(f"source must be 'auto' or one of {SOURCES}, got {source!r}")
    metadata: dict[str, str] = {}
    if isinstance(checkpoint, Mapping):
        state = unwrap_state_dict(checkpoint)
    else:
        state, metadata = read_state_dict(checkpoint)
    used, converted, missing, unexpected, shapes = _best_conversion(model, state, source)
    if missing or unexpected or shapes:
        if strict:
            raise CheckpointMismatchError(
                _describe(model, used, missing, unexpected, shapes, metadata)
            )
        bad = {k for k, *_ in shapes} | set(unexpected)
        converted = {k: v for k, v in converted.items() if k not in bad}
    model.load_state_dict(converted, strict=strict)
    return used


def save_weights(
    model: Backbone, path: str | os.PathLike[str], *, metadata: Mapping[str, str] | None = None
) -> Path:
    """Write the weights as safetensors, with the model name and config in the metadata so
    :func:`tokenmixers.load_model` can rebuild it. Atomic: a crash mid-write leaves any old
    file intact."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(
            f"save_weights writes safetensors: name the file *.safetensors, not {path}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": FORMAT,
        "tokenmixers_version": __version__,
        "torch_version": torch.__version__,
        "model_name": model.model_name,
        "model_config": json.dumps(getattr(model, "model_config", {})),
        **(metadata or {}),
    }
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, tmp, metadata=meta)
    return path
