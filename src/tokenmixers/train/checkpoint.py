"""Run checkpoints that survive being killed at any moment.

A checkpoint is a folder, ``RUN/last`` or ``RUN/best``, holding ``model.safetensors``
(written by :func:`tokenmixers.save_weights`, so ``load_model`` rebuilds it) and
``trainer_state.pt`` (optimizer, scheduler, scaler, EMA, epoch, step, RNG states; plain
tensors and numbers, read back with ``torch.load(weights_only=True)``).

It is written into a fresh temporary folder and swapped in by two renames; if a run dies
between them, the previous checkpoint sits in ``RUN/.last.old-*`` and :func:`find_checkpoint`
picks it up.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tokenmixers._faults import fault_point
from tokenmixers._files import fsync_path
from tokenmixers.backbones import Backbone
from tokenmixers.weights import save_weights

WEIGHTS = "model.safetensors"
STATE = "trainer_state.pt"
STATE_FORMAT = "tokenmixers-trainer-state-v1"


def save_checkpoint(
    run_dir: Path, name: str, model: Backbone, state: dict[str, Any],
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write ``RUN/name/{model.safetensors,trainer_state.pt}`` atomically; returns the folder."""
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=run_dir))
    try:
        save_weights(model, tmp / WEIGHTS, metadata=metadata)
        with open(tmp / STATE, "wb") as f:
            torch.save({"format": STATE_FORMAT, **state}, f)
        fsync_path(tmp / STATE)
        fsync_path(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _swap_in(run_dir, name, tmp, state.get("epoch"))


def copy_checkpoint(run_dir: Path, source: Path, name: str, epoch: int | None = None
                    ) -> Path:
    """Copy the checkpoint folder ``source`` to ``RUN/name``, atomically (a repair)."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=run_dir))
    try:
        for file in (WEIGHTS, STATE):
            shutil.copyfile(source / file, tmp / file)
            fsync_path(tmp / file)
        fsync_path(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _swap_in(run_dir, name, tmp, epoch)


def _swap_in(run_dir: Path, name: str, tmp: Path, epoch: int | None = None) -> Path:
    """Rename the complete folder ``tmp`` to ``RUN/name``; the previous one waits in
    ``RUN/.name.old-*`` between the two renames, where :func:`find_checkpoint` finds it."""
    final = run_dir / name
    fault_point(f"checkpoint:{name}:written", epoch)
    try:
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{name}.old-", dir=run_dir))
            old.rmdir()
            os.rename(final, old)
            fault_point(f"checkpoint:{name}:swapped-out", epoch)
        os.rename(tmp, final)
        fsync_path(run_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # The previous checkpoint, and anything an earlier crash left behind, can go now.
    for leftover in [*run_dir.glob(f".{name}.old-*"), *run_dir.glob(f".{name}.tmp-*")]:
        shutil.rmtree(leftover, ignore_errors=True)
    return final


def _complete(folder: Path) -> bool:
    return (folder / WEIGHTS).is_file() and (folder / STATE).is_file()


def find_checkpoint(run_dir: Path, name: str = "last") -> Path | None:
    """``RUN/name``, or the previous one left by a run that died mid-swap, or None."""
    final = run_dir / name
    if _complete(final):
        return final
    leftovers = sorted(run_dir.glob(f".{name}.old-*"), key=lambda p: p.stat().st_mtime)
    for folder in reversed(leftovers):
        if _complete(folder):
            return folder
    return None


def repair_run(run_dir: Path) -> list[str]:
    """Bring a run folder that a crash interrupted back to one consistent epoch; returns what
    was done, one line each (nothing for a clean folder).

    - a checkpoint caught between its two renames is renamed back into place;
    - ``best/`` is made to hold the epoch that ``last/``'s trainer state calls best: an epoch
      is saved to ``last/`` first, so a crash before its ``best/`` copy leaves ``best/`` one
      epoch behind, and ``last/`` holds exactly the weights that belong there;
    - leftover temporary and previous folders are removed.
    """
    done: list[str] = []
    for name in ("last", "best"):
        final = run_dir / name
        found = find_checkpoint(run_dir, name)
        if found is not None and found != final:
            if final.exists():
                shutil.rmtree(final)
            os.rename(found, final)
            fsync_path(run_dir)
            done.append(f"{name}/ was caught between two renames; the previous {name}/ "
                        "is back in place")
    last = run_dir / "last"
    if _complete(last):
        state = load_state(last)
        best_epoch = int(state.get("best_epoch", 0))
        best = run_dir / "best"
        have = int(load_state(best)["epoch"]) if _complete(best) else None
        if best_epoch and have != best_epoch:
            if best_epoch == int(state["epoch"]) and not state.get("update_in_epoch"):
                copy_checkpoint(run_dir, last, "best")
                done.append(f"best/ held epoch {have} but epoch {best_epoch} is the best; "
                            f"copied it from last/")
            else:
                done.append(f"warning: best/ holds epoch {have}, but the trainer state calls "
                            f"epoch {best_epoch} best and its weights are gone; best/ is left "
                            "as it is")
    leftovers = remove_leftovers(run_dir)
    if leftovers:
        done.append(f"removed {len(leftovers)} temporary folder(s) left by an interrupted "
                    f"save ({', '.join(sorted(p.name for p in leftovers))})")
    return done


def remove_leftovers(run_dir: Path) -> list[Path]:
    """Remove the temporary and previous checkpoint folders (``.last.*``, ``.best.*``) that
    interrupted saves left in ``run_dir``; returns them."""
    leftovers = [p for pattern in (".last.*", ".best.*") for p in run_dir.glob(pattern)
                 if p.is_dir()]
    for leftover in leftovers:
        shutil.rmtree(leftover, ignore_errors=True)
    return leftovers


def load_state(folder: Path) -> dict[str, Any]:
    path = folder / STATE
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"could not read the trainer state {path}: {err}") from err
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ValueError(f"{path} is not a tokenmixers trainer state ({STATE_FORMAT})")
    return state


# ---- random number generators ------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU and CUDA) generator states, as plain data."""
    py_version, py_state, py_gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    return {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [np_kind, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos),
                  int(np_has_gauss), float(np_gauss)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    version, py_state, gauss = state["python"]
    random.setstate((version, tuple(py_state), gauss))
    kind, keys, pos, has_gauss, np_gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, np_gauss))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_all(seed: int) -> None:
    """Seed Python, NumPy and torch from one integer."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
