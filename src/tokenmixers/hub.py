"""Saving and loading in the Hugging Face Hub layout that timm reads.

A folder (or Hub repository) holds ``model.safetensors`` (our keys, see
:func:`tokenmixers.save_weights`) and ``config.json`` in timm's format::

    {"architecture": "tm_<name>", "num_classes": ..., "num_features": ..., "global_pool": ...,
     "model_args": {the model's full config}, "pretrained_cfg": {its data config},
     "label_names": [...], "tokenmixers": {"model_name": ..., "version": ...}}

``architecture`` is the ``tm_`` name tokenmixers registers in timm, never timm's own name
for the architecture, so ``timm.create_model("local-dir:DIR", pretrained=True)`` and
``timm.create_model("hf-hub:user/repo", pretrained=True)`` build our model (and fail,
rather than build timm's namesake, where tokenmixers is not imported).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tokenmixers.backbones import Backbone
from tokenmixers.version import __version__
from tokenmixers.weights import (
    FORMAT,
    WEIGHTS_NAME,
    load_weights,
    read_state_dict,
    save_weights,
)
from tokenmixers.zoo import TIMM_PREFIX, ZOO, create_model

CONFIG_NAME = "config.json"

#: Pretrained-cfg keys that say where the *source* weights were; a saved folder is its
#: own source, so these are not written.
_SOURCE_KEYS = ("url", "file", "state_dict", "hf_hub_id", "hf_hub_filename", "source", "tag")


def _model_of(model: Any) -> Backbone:
    if not isinstance(model, Backbone):
        raise TypeError(
            f"save_pretrained takes a tokenmixers model, got {type(model).__name__}; a timm "
            "features_only wrapper cannot be rebuilt from a config: save the model built "
            "without features_only"
        )
    if not getattr(model, "model_name", "") or not hasattr(model, "model_config"):
        raise ValueError(
            f"this {type(model).__name__} has no zoo name and config (it was not built by "
            "tokenmixers.create_model or timm.create_model('tm_...')), so no config.json can "
            "rebuild it: build it with tokenmixers.create_model(name, **overrides)"
        )
    return model


def hub_config(
    model: Backbone,
    *,
    label_names: Sequence[str] | Mapping[int, str] | None = None,
    data_config: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``config.json`` contents for ``model`` (see the module docstring).
    ``data_config`` overrides pretrained-cfg entries (``mean``, ``std``, ``crop_pct``...)."""
    model = _model_of(model)
    if (label_names is not None and not isinstance(label_names, Mapping)
            and len(label_names) != model.num_classes):
        raise ValueError(
            f"label_names has {len(label_names)} names for a model with num_classes="
            f"{model.num_classes}: give one name per class"
        )
    cfg = {
        k: v for k, v in dict(model.pretrained_cfg).items()
        if k not in _SOURCE_KEYS and v is not None
    }
    cfg.update(data_config or {})
    cfg["architecture"] = TIMM_PREFIX + model.model_name
    cfg["num_classes"] = model.num_classes
    cfg["custom_load"] = False  # our own keys: no conversion on load
    config: dict[str, Any] = {
        "architecture": cfg.pop("architecture"),
        "num_classes": model.num_classes,
        "num_features": model.num_features,
        "global_pool": model.global_pool,
        "model_args": dict(model.model_config),
        "pretrained_cfg": cfg,
    }
    saved_labels = cfg.pop("label_names", None)  # from a loaded model: keep if they still fit
    if (label_names is None and saved_labels
            and model.pretrained_cfg.get("num_classes") == model.num_classes):
        label_names = saved_labels
    if label_names is not None:
        config["label_names"] = (
            {str(k): v for k, v in label_names.items()} if isinstance(label_names, Mapping)
            else list(label_names)
        )
    config["tokenmixers"] = {"model_name": model.model_name, "version": __version__}
    return json.loads(json.dumps(config))  # plain JSON data (tuples as lists), or fail here


def save_pretrained(
    model: Backbone,
    save_directory: str | os.PathLike[str],
    *,
    label_names: Sequence[str] | Mapping[int, str] | None = None,
    data_config: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model`` to ``save_directory`` as ``config.json`` + ``model.safetensors``, the
    layout timm's ``local-dir:``/``hf-hub:`` loaders and :func:`from_pretrained` read."""
    config = hub_config(model, label_names=label_names, data_config=data_config)
    directory = Path(save_directory).expanduser()
    directory.mkdir(parents=True, exist_ok=True)
    save_weights(model, directory / WEIGHTS_NAME)
    (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    return directory


def _fetch(
    location: str | os.PathLike[str], revision: str | None, cache_dir: Any, token: Any
) -> tuple[Path, Path]:
    """(config.json, model.safetensors) from a local folder or a Hub repository id."""
    path = Path(location).expanduser()
    if path.is_dir():
        config, weights = path / CONFIG_NAME, path / WEIGHTS_NAME
        for f in (config, weights):
            if not f.is_file():
                raise FileNotFoundError(
                    f"{path} has no {f.name}: from_pretrained reads a folder written by "
                    "tokenmixers.save_pretrained (config.json + model.safetensors)"
                )
        return config, weights
    if path.exists() or not re.fullmatch(r"[\w.-]+/[\w.-]+", str(location)):
        raise FileNotFoundError(
            f"{location} is neither a folder nor a Hub repository id: pass a folder written "
            "by tokenmixers.save_pretrained or a repository id such as 'user/model'"
        )
    from huggingface_hub import hf_hub_download

    repo = str(location)
    kw = {"revision": revision, "cache_dir": cache_dir, "token": token}
    return (Path(hf_hub_download(repo, CONFIG_NAME, **kw)),
            Path(hf_hub_download(repo, WEIGHTS_NAME, **kw)))


def read_hub_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A ``config.json`` written by :func:`save_pretrained`, checked to name a tokenmixers
    model."""
    config = json.loads(Path(path).read_text())
    arch = str(config.get("architecture", ""))
    name = arch[len(TIMM_PREFIX):] if arch.startswith(TIMM_PREFIX) else ""
    if name not in ZOO:
        raise ValueError(
            f"{path} names architecture {arch!r}, not a tokenmixers model ('{TIMM_PREFIX}<zoo "
            "name>'); a timm checkpoint loads with timm.create_model('hf-hub:...' or "
            "'local-dir:...'), or into a tokenmixers model with load_weights(model, file)"
        )
    config["model_name"] = name
    return config


def from_pretrained(
    location: str | os.PathLike[str],
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    token: str | bool | None = None,
    **overrides: Any,
) -> Backbone:
    """Rebuild the model saved by :func:`save_pretrained` in folder ``location`` (or Hub
    repository ``location``, e.g. ``"user/vit-cifar"``) and load its weights. ``overrides``
    change the saved config (e.g. ``num_classes=5`` for a new, freshly initialised head).
    The saved ``label_names`` land in ``model.pretrained_cfg['label_names']``."""
    config_path, weights_path = _fetch(location, revision, cache_dir, token)
    config = read_hub_config(config_path)
    args = {**config.get("model_args", {}), **overrides}
    model = create_model(config["model_name"], pretrained_file=weights_path, **args)
    saved = config.get("pretrained_cfg", {})
    cfg = dict(model.pretrained_cfg)
    for key in ("mean", "std", "crop_pct", "crop_mode", "interpolation", "test_input_size",
                "test_crop_pct"):
        if key in saved and (key not in ("mean", "std") or len(saved[key]) == cfg["input_size"][0]):
            cfg[key] = tuple(saved[key]) if isinstance(saved[key], list) else saved[key]
    if "label_names" in config and model.num_classes == config.get("num_classes"):
        cfg["label_names"] = config["label_names"]
    model.pretrained_cfg = model.default_cfg = cfg
    return model


def push_to_hub(
    model: Backbone,
    repo_id: str,
    *,
    commit_message: str = "Add tokenmixers model",
    token: str | None = None,
    revision: str | None = None,
    private: bool = False,
    create_pr: bool = False,
    label_names: Sequence[str] | Mapping[int, str] | None = None,
    data_config: Mapping[str, Any] | None = None,
    readme: str | None = None,
) -> Any:
    """Upload ``model`` to the Hub repository ``repo_id`` (created if missing) in the
    :func:`save_pretrained` layout, with a short README unless the repository has one.
    Returns huggingface_hub's commit info."""
    from huggingface_hub import HfApi

    api = HfApi(token=token, library_name="tokenmixers", library_version=__version__)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    has_readme = api.file_exists(repo_id=repo_id, filename="README.md", revision=revision)
    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(model, tmp, label_names=label_names, data_config=data_config)
        if not has_readme:
            (Path(tmp) / "README.md").write_text(readme or _model_card(model, repo_id))
        return api.upload_folder(
            repo_id=repo_id, folder_path=tmp, revision=revision, create_pr=create_pr,
            commit_message=commit_message,
        )


def _model_card(model: Backbone, repo_id: str) -> str:
    return (
        "---\ntags:\n- image-classification\n- tokenmixers\n- timm\nlibrary_name: timm\n---\n"
        f"# {repo_id.split('/')[-1]}\n\n"
        f"A tokenmixers `{model.model_name}` ({model.num_classes} classes).\n\n"
        "```python\nimport tokenmixers\n"
        f"model = tokenmixers.from_pretrained({repo_id!r})\n"
        "# or, through timm (tokenmixers must be imported to register the architecture):\n"
        f"import timm\nmodel = timm.create_model('hf-hub:{repo_id}', pretrained=True)"
        f"  # {TIMM_PREFIX}{model.model_name}\n```\n"
    )


def load_model(path: str | os.PathLike[str], **overrides: Any) -> Backbone:
    """Rebuild the model saved by :func:`tokenmixers.save_weights` at ``path`` (a single
    safetensors file, its name and config in the metadata) and load its weights."""
    state, metadata = read_state_dict(path)
    if metadata.get("format") != FORMAT or not metadata.get("model_name"):
        raise ValueError(
            f"{path} was not written by tokenmixers.save_weights (no model name in its "
            "metadata); build the model with create_model(...) and use load_weights(model, path)"
        )
    config = json.loads(metadata.get("model_config", "{}"))
    model = create_model(metadata["model_name"], **{**config, **overrides})
    load_weights(model, state, source="tokenmixers")
    return model
