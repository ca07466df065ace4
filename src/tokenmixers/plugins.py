"""Mixers (and anything else that registers itself) from your own files.

A mixer defined outside the package registers when its module is imported. In Python,
import it; on the command line, name it: ``tokenmixers --plugin my_mixer.py compare
--skeleton isotropic --mixers mine``. Plugins are also read from the environment variable
``TOKENMIXERS_PLUGINS`` (entries separated by ``os.pathsep``), which :func:`load_plugins`
extends, so that processes started from this one (``bench`` workers, ``torchrun`` ranks)
load them too.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import ModuleType

__all__ = ["ENV_VAR", "external_modules", "load_plugins", "worker_env"]

ENV_VAR = "TOKENMIXERS_PLUGINS"


def _import_file(path: Path, name: str | None = None) -> ModuleType:
    path = path.resolve()
    for module in list(sys.modules.values()):  # already imported (under any name)
        file = getattr(module, "__file__", None)
        if file and Path(file).resolve() == path:
            return module
    name = name or f"tokenmixers_plugin_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"--plugin {path}: not a Python file Python can import")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _load_one(entry: str) -> ModuleType:
    """``entry``: a ``.py`` file (``NAME=PATH`` to import it under ``NAME``) or a module name."""
    name, sep, path = entry.partition("=")
    if not sep:
        name, path = "", entry
    if path.endswith(".py") or os.sep in path:
        file = Path(path).expanduser()
        if not file.is_file():
            raise ImportError(f"--plugin {entry}: no such file {file}")
        return _import_file(file, name or None)
    try:
        return importlib.import_module(path)
    except ModuleNotFoundError as err:
        raise ImportError(
            f"--plugin {entry}: cannot import module {path!r} ({err}); give a path to a .py "
            "file, or a module on PYTHONPATH"
        ) from err


def _with_entries(env: Mapping[str, str], entries: Iterable[str]) -> dict[str, str]:
    """``env`` with ``entries`` added to its ``TOKENMIXERS_PLUGINS`` (no duplicates)."""
    known = [e for e in env.get(ENV_VAR, "").split(os.pathsep) if e]
    merged = list(dict.fromkeys([*known, *(e for e in entries if e)]))
    return {**env, ENV_VAR: os.pathsep.join(merged)} if merged else dict(env)


def load_plugins(entries: Iterable[str] = ()) -> list[ModuleType]:
    """Import each entry (see :func:`_load_one`) and remember it in ``TOKENMIXERS_PLUGINS``
    for child processes. With no entries, load what the environment names."""
    entries = [e for e in entries if e]
    if not entries:
        return [_load_one(e) for e in os.environ.get(ENV_VAR, "").split(os.pathsep) if e]
    modules = [_load_one(e) for e in entries]
    os.environ[ENV_VAR] = _with_entries(os.environ, entries)[ENV_VAR]
    return modules


def worker_env(classes: Iterable[type]) -> dict[str, str]:
    """This process's environment, with the plugin entries that let a worker process
    re-create ``classes`` (:func:`external_modules`): a worker started with it knows every
    mixer this process knows, the user's own included."""
    return _with_entries(os.environ, external_modules(classes))


def external_modules(classes: Iterable[type]) -> list[str]:
    """Plugin entries (``NAME=PATH``) that re-create ``classes`` defined outside tokenmixers
    in another process: what a worker process must import to know every registered mixer."""
    out = []
    for cls in classes:
        module = sys.modules.get(cls.__module__)
        if module is None or cls.__module__.split(".")[0] == "tokenmixers":
            continue
        file = getattr(module, "__file__", None)
        out.append(f"{cls.__module__}={file}" if file else cls.__module__)
    return list(dict.fromkeys(out))
