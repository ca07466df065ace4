"""``--data hf-stream:`` (a Hugging Face dataset streamed as an ``IterableDataset``; here a
local ``save_to_disk`` folder through ``to_iterable_dataset``, the same code path a Hub name
takes after ``load_dataset(streaming=True)``): every training image read exactly once per
epoch across processes and DataLoader workers, the same order for any worker count, the
same steps on every process, an exact mid-epoch resume."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from tokenmixers.cli import main
from tokenmixers.data import is_streamed, load_data, parse_data
from tokenmixers.data.hf import HfStreamTrain
from tokenmixers.data.wds import TRACE_ENV

pytestmark = pytest.mark.usefixtures("one_thread")

CLASSES = ["ant", "bee", "cat"]
N_TRAIN, N_VAL = 64, 12
ARGS = ["--model", "mixer_s16_224", "--model-kwargs", "patch_size=4", "embed_dim=16",
        "num_blocks=1", "--img-size", "16", "--lr", "2e-3", "--no-aug", "--drop-path", "0",
        "--mixup", "0", "--cutmix", "0", "--progress", "plain", "--threads", "1",
        "--log-interval", "2", "--batch-size", "8"]


def _png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """64 + 12 16x16 PNGs of 3 classes (``Image`` + ``ClassLabel`` features, the columns
    named ``picture`` and ``kind``) as a save_to_disk DatasetDict; the trace key of each
    training image."""
    from datasets import ClassLabel, Dataset, DatasetDict
    from datasets import Image as HFImage

    root = tmp_path_factory.mktemp("hfstream")
    rng = np.random.default_rng(0)
    splits, keys = {}, []
    for split, n in (("train", N_TRAIN), ("validation", N_VAL)):
        labels = [i % len(CLASSES) for i in range(n)]
        pngs = [_png(np.clip(rng.normal(60 + 70 * c, 40, (16, 16, 3)), 0, 255).astype(np.uint8))
                for c in labels]
        if split == "train":
            keys = [hashlib.sha1(b).hexdigest()[:16] for b in pngs]
        ds = Dataset.from_dict({"picture": pngs, "kind": labels})
        splits[split] = ds.cast_column("picture", HFImage()).cast_column(
            "kind", ClassLabel(names=CLASSES))
    DatasetDict(splits).save_to_disk(str(root / "hf"))
    assert len(set(keys)) == N_TRAIN
    return {"hf": root / "hf", "keys": keys, "root": root}


def _means(dataset: HfStreamTrain, workers: int) -> list[float]:
    """The images the DataLoader delivers, in order, each named by its mean pixel."""
    loader = DataLoader(dataset, batch_size=dataset.batch_size, num_workers=workers)
    return [float(v) for x, _ in loader for v in x]


def test_stream_splits_processes_and_workers(data: dict, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = load_data(f"hf-stream:{data['hf']}")
    assert is_streamed(bundle.train) and bundle.notes == ["streamed"]
    assert bundle.classes == CLASSES and (len(bundle.train), len(bundle.val)) == (64, 12)
    assert (bundle.train.image_col, bundle.train.label_col) == ("picture", "kind")
    assert parse_data(f"hf-stream:{data['hf']}").native_size == 16

    def mean(img: Image.Image) -> torch.Tensor:
        return torch.tensor(np.asarray(img, dtype=np.float64).mean())

    def stream(rank: int, world: int, epoch: int, workers: int, consumed: int = 0,
               batch: int = 8) -> HfStreamTrain:
        ds = HfStreamTrain(bundle.train, mean, seed=5, batch_size=batch, rank=rank,
                           world_size=world, buffer=16)
        ds.set_epoch(epoch, workers=workers, consumed=consumed)
        return ds

    monkeypatch.setenv(TRACE_ENV, str(tmp_path))
    seen: list[float] = []
    for rank in range(2):
        by_workers = [_means(stream(rank, 2, 1, k), k) for k in (0, 1, 2)]
        assert all(d == by_workers[0] for d in by_workers)  # same order, any worker count
        assert len(by_workers[0]) == 32
        seen += by_workers[0]
        full = by_workers[0]
        for consumed in (1, 3):  # a resumed epoch: exactly the rest, in the same order
            assert _means(stream(rank, 2, 1, 2, consumed), 2) == full[consumed * 8:]
    assert len(set(seen)) == 64  # the two processes' parts: every image once
    one = _means(stream(0, 1, 1, 2), 2)
    assert sorted(one) == sorted(seen)
    assert _means(stream(0, 1, 2, 0), 0) != one  # reshuffled per epoch ...
    assert _means(stream(0, 1, 2, 0), 0) == _means(stream(0, 1, 2, 2), 2)  # deterministically
    # Whole batches only, the same count on each process: 64 // 2 // 12 = 2 batches each.
    short = stream(1, 2, 0, 2, batch=12)
    assert (short.steps, short.per_rank, short.left_out) == (2, 24, 16)
    assert len(_means(short, 2)) == 24
    # Validation: each process's part (--limit-val: the first images of each part), once.
    from tokenmixers.data.hf import HfStreamEval

    parts = [[float(v) for x, _ in DataLoader(HfStreamEval(bundle.val, mean, rank=r,
                                                            world_size=2, limit=limit),
                                              batch_size=4, num_workers=2) for v in x]
             for limit in (None, 5) for r in range(2)]
    assert [len(p) for p in parts] == [6, 6, 3, 2]
    assert len(set(parts[0] + parts[1])) == N_VAL and set(parts[2] + parts[3]) <= set(
        parts[0] + parts[1])
    # The trace hook: worker processes decoded each image of their own batches once.
    traced = Counter(line for f in tmp_path.glob("hfs-train-*.txt")
                     for line in f.read_text().split())
    assert set(traced) == set(data["keys"])


def _train(data_value: str, out: Path, *extra: str) -> list[dict]:
    assert main(["train", *ARGS, "--data", data_value, "--output", str(out), *extra]) == 0
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def _traced(folder: Path, prefix: str) -> Counter[str]:
    return Counter(line for f in folder.glob(f"{prefix}-*.txt")
                   for line in f.read_text().split())


def test_trains_one_epoch_on_1_and_2_processes(data: dict, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture) -> None:
    value = f"hf-stream:{data['hf']}"
    trace1 = tmp_path / "trace1"
    trace1.mkdir()
    monkeypatch.setenv(TRACE_ENV, str(trace1))
    rec = _train(value, tmp_path / "one", "--epochs", "1", "--workers", "2")[-1]
    assert rec["epoch"] == 1 and 0 <= rec["top1"] <= 100
    train = _traced(trace1, "hfs-train")
    assert sorted(train) == sorted(data["keys"]) and set(train.values()) == {1}
    assert sum(_traced(trace1, "hfs-val").values()) == N_VAL
    assert "sit out" not in capsys.readouterr().err  # 64 = 8 whole batches

    trace2 = tmp_path / "trace2"
    trace2.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", TRACE_ENV: str(trace2)}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "tokenmixers", "train", *ARGS, "--data", value, "--output",
         str(tmp_path / "two"), "--epochs", "1", "--workers", "2"],
        env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("2 process(es) on cpu") == 1
    train = _traced(trace2, "hfs-train")
    assert sorted(train) == sorted(data["keys"]) and set(train.values()) == {1}
    assert len(list(trace2.glob("hfs-train-*.txt"))) == 4  # 2 processes x 2 workers
    val = _traced(trace2, "hfs-val")
    assert sum(val.values()) == N_VAL and set(val.values()) == {1}
    state = json.loads((tmp_path / "two" / "metrics.jsonl").read_text().splitlines()[-1])
    assert state["epoch"] == 1


def test_ctrl_c_mid_epoch_resumes_exactly(data: dict, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture) -> None:
    from tokenmixers.train.checkpoint import load_state
    from tokenmixers.train.progress import Progress

    value = f"hf-stream:{data['hf']}"
    run_args = ["--epochs", "2", "--workers", "2", "--batch-size", "12"]  # 5 batches, 4 out
    whole = _train(value, tmp_path / "whole", *run_args)
    assert "4 of 64 images sit out each epoch" in capsys.readouterr().err
    original = Progress.step

    def step_then_ctrl_c(self: Progress, values: dict) -> None:
        original(self, values)
        if self.prefix.startswith("epoch 2/") and self.done == 3:
            signal.raise_signal(signal.SIGINT)

    run = tmp_path / "run"
    monkeypatch.setattr(Progress, "step", step_then_ctrl_c)
    assert main(["train", *ARGS, "--data", value, "--output", str(run), *run_args]) == 130
    assert load_state(run / "last")["update_in_epoch"] == 3
    monkeypatch.setattr(Progress, "step", original)
    # Resumed with another worker count: the stream's order does not depend on it.
    assert main(["train", "--resume", str(run), "--workers", "0"]) == 0
    wa = load_file(str(run / "last" / "model.safetensors"))
    wb = load_file(str(tmp_path / "whole" / "last" / "model.safetensors"))
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) <= 1e-6
    clock = ("elapsed", "epoch_time", "img_per_sec", "data_wait")
    got = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert ([{k: v for k, v in r.items() if k not in clock} for r in got]
            == [{k: v for k, v in r.items() if k not in clock} for r in whole])


def test_columns_and_errors(data: dict, tmp_path: Path,
                            capsys: pytest.CaptureFixture) -> None:
    value = f"hf-stream:{data['hf']}"
    bundle = load_data(value, columns="picture,kind")
    assert (bundle.train.image_col, bundle.train.label_col) == ("picture", "kind")
    with pytest.raises(ValueError, match="has no column 'img'"):
        load_data(value, columns="img,kind")

    def error(*argv: str) -> str:
        assert main(["train", *ARGS, "--output", str(tmp_path / "run"), *argv]) == 2
        return capsys.readouterr().err

    assert "its own validation split" in error("--data", value, "--val-split", "0.1")
    assert "no split 'training'" in error("--data", f"{value}:training")
    assert "limit_train: not available" in error("--data", value, "--limit-train", "10")
    assert "needs a Hugging Face Hub name" in error("--data", "hf-stream:")
    assert not (tmp_path / "run").exists()


def test_bench_data_and_data_columns_on_a_stream(data: dict, capsys: pytest.CaptureFixture,
                                                 tmp_path: Path) -> None:
    stream = f"hf-stream:{data['hf']}"
    assert main(["bench-data", "--data", stream, "--workers", "0,1", "--batch-size", "8",
                 "--seconds", "0.3"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()
            if line.split()[:1] in (["0"], ["1"])]
    assert [r[0] for r in rows] == ["0", "1"] and all(float(r[1]) > 0 for r in rows)
    # --data-columns is taken for hf-stream: as for hf: (here the detected ones, named)
    assert main(["train", *ARGS, "--data", stream, "--data-columns", "picture,kind",
                 "--epochs", "1", "--output", str(tmp_path / "cols")]) == 0
    assert main(["train", *ARGS, "--data", stream, "--data-columns", "nope,kind",
                 "--epochs", "1", "--output", str(tmp_path / "bad")]) == 2
    assert "nope" in capsys.readouterr().err
