"""``tokenmixers data convert imagefolder:PATH --to wds:OUT --shard-size N``: an image folder
as WebDataset tar shards, with the ``index.json`` the ``wds:`` reader needs.

``OUT`` gets ``train-000000.tar ...`` and ``val-000000.tar ...`` (at most ``N`` samples
each) and ``index.json``::

    {"format": "tokenmixers-wds/1", "classes": [...], "mode": "RGB", "image_size": [w, h],
     "splits": {"train": {"count": 1281167, "shards": [{"name": "train-000000.tar",
                                                        "count": 1000}, ...]},
                "val": {...}}}

A sample is ``KEY.jpg`` (or ``.png``: the file's own bytes, not re-encoded; other formats
are re-encoded as PNG), ``KEY.cls`` (the class index, as text) and ``KEY.path`` (the file's
path under the split folder). Training samples are written in a fixed random order (seed 0),
so that every shard holds every class: the reader's shard shuffle and buffer then make
well-mixed batches; validation samples keep the folder's order. Each shard, and the index
last, is written under a temporary name and renamed, so an interrupted conversion leaves no
half-written shard under a real name (and no index, so the reader refuses the folder)."""

from __future__ import annotations

import io
import json
import os
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tokenmixers.data.wds import INDEX_FORMAT, INDEX_NAME, need_webdataset

#: File types stored as they are; anything else is re-encoded as PNG.
KEEP_EXTS = {".jpg": "jpg", ".jpeg": "jpg", ".png": "png"}


def _samples(dataset: Any) -> tuple[list[tuple[str, int]], Path]:
    """``(path, label)`` pairs of an image folder (or a Subset of one) and its root."""
    from torch.utils.data import Subset

    if isinstance(dataset, Subset):
        inner = dataset.dataset
        return [inner.samples[i] for i in dataset.indices], Path(inner.root)
    return list(dataset.samples), Path(dataset.root)


def _encode(path: str) -> tuple[str, bytes] | None:
    ext = KEEP_EXTS.get(Path(path).suffix.lower())
    try:
        if ext is not None:
            with Image.open(path) as img:
                img.verify()  # a file PIL cannot read is left out, as the trainer skips it
            return ext, Path(path).read_bytes()
        with Image.open(path) as img:
            buf = io.BytesIO()
            img.save(buf, format="PNG")
        return "png", buf.getvalue()
    except (OSError, SyntaxError, ValueError) as err:
        warnings.warn(f"data convert: leaving out unreadable image {path} ({err})",
                      RuntimeWarning, stacklevel=2)
        return None


def write_shards(samples: list[tuple[str, int]], root: Path, out: Path, split: str,
                 shard_size: int) -> tuple[list[dict[str, Any]], Counter[tuple[int, int]]]:
    """Write ``samples`` as ``out/{split}-NNNNNN.tar``; returns the index entries and the
    image sizes met."""
    wds = need_webdataset()
    shards: list[dict[str, Any]] = []
    sizes: Counter[tuple[int, int]] = Counter()
    buffer: list[dict[str, Any]] = []

    def flush() -> None:
        name = f"{split}-{len(shards):06d}.tar"
        tmp = out / f".{name}.tmp"
        with open(tmp, "wb") as f:
            writer = wds.TarWriter(f, encoder=False)
            for sample in buffer:
                writer.write(sample)
            writer.close()
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out / name)
        shards.append({"name": name, "count": len(buffer)})
        buffer.clear()

    for path, label in samples:
        encoded = _encode(path)
        if encoded is None:
            continue
        ext, data = encoded
        if len(sizes) < 64 or len(buffer) == 0:  # a sample of the sizes, for the index
            with Image.open(io.BytesIO(data)) as img:
                sizes[img.size] += 1
        key = f"{split}_{sum(s['count'] for s in shards) + len(buffer):08d}"
        buffer.append({"__key__": key, ext: data, "cls": str(label).encode(),
                       "path": str(Path(path).relative_to(root)).encode()})
        if len(buffer) == shard_size:
            flush()
    if buffer:
        flush()
    return shards, sizes


def convert_imagefolder(source: str, out: str | os.PathLike[str], *, shard_size: int = 1000,
                        val_split: float | None = None, seed: int = 0,
                        overwrite: bool = False) -> dict[str, Any]:
    """Write ``source`` (an image folder, as ``--data imagefolder:PATH`` reads it) as shards
    in ``out``; returns the index written."""
    from tokenmixers.data.folder import load_imagefolder

    if shard_size < 1:
        raise ValueError(f"--shard-size {shard_size}: expected a positive number of samples "
                         "per shard, e.g. --shard-size 1000")
    out_dir = Path(out).expanduser()
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(f"--to wds:{out_dir}: the folder is not empty; choose an "
                                  "empty or new folder, or pass --overwrite")
        for old in list(out_dir.glob("train-*.tar")) + list(out_dir.glob("val-*.tar")) + [
                out_dir / INDEX_NAME]:
            old.unlink(missing_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the folder's modes: the index records the target
        train, val, classes, in_chans = load_imagefolder(source, val_split=val_split, seed=seed)
    train_samples, train_root = _samples(train)
    val_samples, val_root = _samples(val)
    order = np.random.default_rng(0).permutation(len(train_samples))
    train_samples = [train_samples[i] for i in order]
    index: dict[str, Any] = {"format": INDEX_FORMAT, "classes": list(classes),
                             "mode": "RGB" if in_chans == 3 else "L", "splits": {}}
    all_sizes: Counter[tuple[int, int]] = Counter()
    for split, samples, root in (("train", train_samples, train_root),
                                 ("val", val_samples, val_root)):
        shards, sizes = write_shards(samples, root, out_dir, split, shard_size)
        all_sizes.update(sizes)
        index["splits"][split] = {"count": sum(s["count"] for s in shards), "shards": shards}
    index["image_size"] = list(all_sizes.most_common(1)[0][0]) if all_sizes else None
    tmp = out_dir / f".{INDEX_NAME}.tmp"
    tmp.write_text(json.dumps(index, indent=1) + "\n")
    os.replace(tmp, out_dir / INDEX_NAME)
    return index


def cmd_convert(args: Any) -> int:
    src_kind, _, src = args.source.partition(":")
    dst_kind, _, dst = args.to.partition(":")
    if src_kind != "imagefolder" or not src:
        raise ValueError(f"data convert {args.source}: expected imagefolder:PATH as the source")
    if dst_kind != "wds" or not dst:
        raise ValueError(f"data convert --to {args.to}: expected wds:OUT_FOLDER")
    index = convert_imagefolder(src, dst, shard_size=args.shard_size, val_split=args.val_split,
                                overwrite=args.overwrite)
    for split, entry in index["splits"].items():
        print(f"{split}: {entry['count']} images in {len(entry['shards'])} shard(s)")
    print(f"{len(index['classes'])} classes, {index['mode']}; wrote {Path(dst) / INDEX_NAME}")
    return 0


def add_parser(sub: Any) -> None:
    """``tokenmixers data convert``."""
    p = sub.add_parser("data", help="dataset tools: convert an image folder to WebDataset "
                       "shards")
    data_sub = p.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    c = data_sub.add_parser(
        "convert", help="write imagefolder:PATH as wds: tar shards with an index.json",
        description="Write an image folder (train/ and val/ class folders, or one folder "
                    "with --val-split) as WebDataset tar shards: OUT/train-NNNNNN.tar, "
                    "OUT/val-NNNNNN.tar and OUT/index.json, for --data wds:OUT.")
    c.add_argument("source", metavar="imagefolder:PATH")
    c.add_argument("--to", required=True, metavar="wds:OUT")
    c.add_argument("--shard-size", type=int, default=1000,
                   help="samples per shard (default 1000; aim at 100 MB-1 GB per shard)")
    c.add_argument("--val-split", type=float,
                   help="a folder without val/: hold out this stratified fraction")
    c.add_argument("--overwrite", action="store_true", help="replace shards already in OUT")
    c.set_defaults(func=cmd_convert)
