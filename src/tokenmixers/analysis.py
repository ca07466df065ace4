"""``tokenmixers erf`` and ``tokenmixers inspect``: the model they look at (a zoo model or
a trained run, with its untrained twin), the images they feed it, and their reports."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tokenmixers.backbones import Backbone
from tokenmixers.text import format_table


@dataclass
class Subject:
    """The model under study, what it is called, and how to build it afresh."""

    model: Backbone
    label: str
    name: str  # zoo name
    config: dict[str, Any]  # create_model(name, **config) builds it (untrained)
    trained: bool
    data: str | None = None  # the dataset it was trained on (a run), if known
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    crop_pct: float = 1.0

    def untrained(self, seed: int = 0) -> Backbone:
        """The same architecture with its initial weights (drawn with ``seed``)."""
        from tokenmixers.zoo import create_model

        torch.manual_seed(seed)
        return create_model(self.name, **self.config).eval()


def load_subject(*, model: str | None, model_kwargs: list[str] | None = None,
                 checkpoint: str | None = None, img_size: int | None = None,
                 command: str = "erf") -> Subject:
    """A zoo model (``model``, untrained) or a trained run or weights file (``checkpoint``)."""
    if (model is None) == (checkpoint is None):
        raise ValueError(f"tokenmixers {command} needs exactly one of --model NAME or "
                         "--checkpoint RUN (a run folder or weights file)")
    if checkpoint is not None:
        if model_kwargs:
            raise ValueError("--model-kwargs applies to --model only: a checkpoint is rebuilt "
                             "as it was trained")
        from tokenmixers.evaluate import load_checkpoint_model
        from tokenmixers.weights import read_state_dict

        loaded = load_checkpoint_model(checkpoint)
        _, meta = read_state_dict(loaded.path)
        config = json.loads(meta.get("model_config", "{}"))
        net = loaded.model
        if img_size is not None and tuple(net.img_size) != (img_size, img_size):
            raise ValueError(f"--img-size {img_size}: {loaded.path} was trained at "
                             f"{net.img_size[0]}; leave --img-size out for a checkpoint")
        return Subject(net.eval(), f"{net.model_name} ({loaded.path})", net.model_name or "",
                       config, True, loaded.data, loaded.mean, loaded.std, loaded.crop_pct)
    from tokenmixers.train.config import check_model_kwargs, parse_model_kwargs
    from tokenmixers.zoo import create_model, get_spec

    assert model is not None
    get_spec(model)  # unknown names fail now, with suggestions
    kwargs = parse_model_kwargs(model_kwargs)
    if img_size is not None:
        kwargs.setdefault("img_size", img_size)
    check_model_kwargs(model, kwargs)
    torch.manual_seed(0)
    net = create_model(model, **kwargs).eval()
    return Subject(net, f"{model} (untrained)", model, kwargs, False)


def sample_images(subject: Subject, *, data: str | None, count: int, seed: int = 0,
                  data_dir: str = "data") -> tuple[torch.Tensor, str]:
    """``count`` images at the model's input size: the validation split of ``data`` (or the
    run's own dataset) through the evaluation transform, the same images for a given seed;
    or, with neither, standard-normal noise (Luo et al.'s ERFs of untrained networks)."""
    net = subject.model
    c = net.patch_embed.in_chans
    h, w = net.img_size
    name = data or subject.data
    if not name:
        gen = torch.Generator().manual_seed(seed)
        return torch.randn(count, c, h, w, generator=gen), f"{count} noise images"
    import numpy as np

    from tokenmixers.data import Transformed, eval_transform, load_data

    bundle = load_data(name, data_dir=data_dir)
    if bundle.in_chans != c:
        raise ValueError(f"--data {name}: its images have {bundle.in_chans} channel(s) but "
                         f"{subject.label} takes {c}; pick data the model was built for")
    mean = subject.mean or bundle.mean
    std = subject.std or bundle.std
    view = Transformed(bundle.val, eval_transform(h, c, mean, std,
                                                  crop_pct=subject.crop_pct or bundle.crop_pct))
    n = len(view)  # type: ignore[arg-type]
    idx = np.random.default_rng(seed).permutation(n)[: min(count, n)]
    images = torch.stack([view[int(i)][0] for i in idx])
    if images.shape[-2:] != (h, w):
        raise ValueError(f"--data {name} gives {images.shape[-2]}x{images.shape[-1]} images "
                         f"for a {h}x{w} model")
    return images, f"{len(idx)} {name} validation images"


def erf_report(subject: Subject, images: torch.Tensor, out: Path, *, index: int = -1,
               seed: int = 0, source: str = "") -> list[dict[str, Any]]:
    """ERF of the subject, and of its untrained twin when it is trained: ``erf.png``,
    ``erf.json`` and the rows printed."""
    from tokenmixers.erf import erf_map, erf_stats, plot_erfs

    states = [("trained" if subject.trained else "untrained", subject.model)]
    if subject.trained:
        states.append(("untrained", subject.untrained(seed)))
    rows, maps = [], []
    for state, net in states:
        erf = erf_map(net, images, index=index)
        stats = erf_stats(erf)
        rows.append({"model": subject.name, "state": state, "index": erf.index,
                     "img_size": list(images.shape[-2:]), **stats.as_dict()})
        maps.append((f"{subject.name} {state}", erf))
    out.mkdir(parents=True, exist_ok=True)
    plot_erfs(maps, out / "erf.png", title=f"effective receptive field ({source})")
    (out / "erf.json").write_text(json.dumps(rows, indent=2) + "\n")
    return rows


def erf_table(rows: list[dict[str, Any]]) -> str:
    return format_table(
        [[r["model"], r["state"], str(r["index"]), f"{r['area50']:.1%}", f"{r['area90']:.1%}",
          f"{r['radius']:.1f}", " ".join(f"{v:g}" for v in r["reach"].values())]
         for r in rows],
        ["model", "weights", "after unit", "50% area", "90% area", "radius px",
         "reach up/down/left/right (patches)"], "lllrrrl")


def inspect_report(subject: Subject, images: torch.Tensor, out: Path) -> dict[str, Any]:
    """PNGs and numbers of :mod:`tokenmixers.inspection` for the subject, in ``out``."""
    from tokenmixers.inspection import (
        layer_distances,
        patch_embedding_components,
        plot_inspection,
        position_embedding_similarity,
    )

    records = layer_distances(subject.model, images)
    paths = plot_inspection(subject.model, records, out, title=subject.name)
    _, variance = patch_embedding_components(subject.model)
    sim = position_embedding_similarity(subject.model)
    result = {
        "model": subject.name, "trained": subject.trained,
        "layers": [r.as_dict() for r in records],
        "filter_variance": variance.tolist(),
        "pos_embed_similarity": None if sim is None else sim.tolist(),
        "plots": {k: str(p) for k, p in paths.items()},
    }
    (out / "inspect.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def inspect_table(result: dict[str, Any]) -> str:
    rows = []
    for layer in result["layers"]:
        heads = layer["attention_distance"]
        rows.append([str(layer["depth"]), layer["mixer"], "x".join(map(str, layer["grid"])),
                     f"{layer['mixing_distance']:.1f}",
                     (f"{min(heads):.1f} / {sum(heads) / len(heads):.1f} / {max(heads):.1f}"
                      if heads else "-")])
    return format_table(rows, ["block", "mixer", "grid", "mixing distance px",
                               "attention distance px min / mean / max"], "lllrl")


# ---- the commands ---------------------------------------------------------------------------
def _subject_args(p: Any) -> None:
    p.add_argument("--model", help="a zoo model name (untrained, built with --model-kwargs)")
    p.add_argument("--checkpoint", metavar="RUN", help="a trained run folder or weights file "
                   "(its untrained twin is measured too)")
    p.add_argument("--model-kwargs", nargs="*", default=[], metavar="KEY=VALUE",
                   help="create_model overrides for --model, e.g. img_size=64 depth=4")
    p.add_argument("--img-size", type=int, help="input size of a --model (default: its own)")
    p.add_argument("--data", help="images from this dataset's validation split (default: the "
                   "run's dataset; for a --model, standard-normal noise)")
    p.add_argument("--data-dir", default="data", help="where datasets are kept")
    p.add_argument("--images", type=int, default=32, help="how many images (default 32)")
    p.add_argument("--seed", type=int, default=0, help="which images, and the untrained "
                   "twin's initial weights")


def cmd_erf(args: Any) -> int:
    if args.images < 1:
        raise ValueError(f"--images {args.images}: expected at least 1")
    subject = load_subject(model=args.model, model_kwargs=args.model_kwargs,
                           checkpoint=args.checkpoint, img_size=args.img_size, command="erf")
    images, source = sample_images(subject, data=args.data, count=args.images, seed=args.seed,
                                   data_dir=args.data_dir)
    out = Path(args.output or f"runs/erf-{subject.name}")
    rows = erf_report(subject, images, out, index=args.index, seed=args.seed, source=source)
    print(f"{subject.label}: effective receptive field on {source}")
    print(erf_table(rows))
    print(f"wrote {out / 'erf.png'} and {out / 'erf.json'}")
    return 0


def cmd_inspect(args: Any) -> int:
    if args.images < 1:
        raise ValueError(f"--images {args.images}: expected at least 1")
    subject = load_subject(model=args.model, model_kwargs=args.model_kwargs,
                           checkpoint=args.checkpoint, img_size=args.img_size,
                           command="inspect")
    images, source = sample_images(subject, data=args.data, count=args.images, seed=args.seed,
                                   data_dir=args.data_dir)
    out = Path(args.output or f"runs/inspect-{subject.name}")
    result = inspect_report(subject, images, out)
    print(f"{subject.label}: mean distances per block on {source}")
    print(inspect_table(result))
    print("wrote " + ", ".join(result["plots"].values()) + f" and {out / 'inspect.json'}")
    return 0


def add_parsers(sub: Any) -> None:
    """``tokenmixers erf`` and ``tokenmixers inspect``."""
    p = sub.add_parser("erf", help="effective receptive field of a model or trained run "
                       "(heat map, area ratios, radius; untrained and trained)")
    _subject_args(p)
    p.add_argument("--index", type=int, default=-1, help="after which block (isotropic) or "
                   "stage (hierarchical); default -1, the last")
    p.add_argument("--output", "-o", metavar="DIR", help="default: runs/erf-MODEL")
    p.set_defaults(func=cmd_erf)

    p = sub.add_parser("inspect", help="what a model learned (ViT Fig. 7): patch-embedding "
                       "filters, position-embedding similarity, attention and mixing distance "
                       "per block")
    _subject_args(p)
    p.add_argument("--output", "-o", metavar="DIR", help="default: runs/inspect-MODEL")
    p.set_defaults(func=cmd_inspect)
