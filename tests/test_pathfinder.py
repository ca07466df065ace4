"""The Pathfinder generator (``tokenmixers.data.pathfinder``) and ``--data pathfinder…``:
determinism, label balance, connectivity of the marked path (a flood fill on the rendered
path mask), image statistics against ``shared/research/pathfinder.md`` (sections cited per
check), the disk cache, ``--data`` parsing and a tiny training run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from tokenmixers.cli import main
from tokenmixers.data import labels_of, load_data, parse_data
from tokenmixers.data import pathfinder as pf

TINY = ["--model", "mixer_s16_224", "--model-kwargs", "patch_size=4", "embed_dim=32",
        "num_blocks=1"]


@pytest.fixture(scope="module")
def hard32() -> pf.PathfinderImages:
    """1,000 images of LRA's "Pathfinder" setting (32 px, hard), with their geometry."""
    return pf.generate(32, "hard", 1000, seed=0, details=True)


# ---- determinism and labels ---------------------------------------------------------------
def test_same_seed_same_bytes_different_seed_different_images() -> None:
    a = pf.generate(32, "hard", 40, seed=3)
    b = pf.generate(32, "hard", 40, seed=3)
    c = pf.generate(32, "hard", 40, seed=4)
    assert a.images.tobytes() == b.images.tobytes() and (a.labels == b.labels).all()
    # every image of another seed differs (not just some)
    assert all((x != y).any() for x, y in zip(a.images, c.images))
    # the global numpy RNG is neither used nor disturbed
    state = np.random.get_state()[1].copy()
    pf.generate(32, "easy", 8, seed=0)
    assert (np.random.get_state()[1] == state).all()


def test_parallel_chunks_give_the_same_images_as_one_process(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # chunks of 16 images (the smallest), so 40 images are three chunks in two processes
    monkeypatch.setattr(pf, "CHUNK_PIXELS", 16 * 32 * 32)
    one = pf.generate(32, "easy", 40, seed=2, workers=1)
    two = pf.generate(32, "easy", 40, seed=2, workers=2)
    assert one.images.tobytes() == two.images.tobytes()
    assert (one.labels == two.labels).all()


def test_labels_balanced(hard32: pf.PathfinderImages) -> None:
    # §7: the label is a fair coin per image
    assert 0.45 <= hard32.labels.mean() <= 0.55
    assert set(np.unique(hard32.labels)) == {0, 1}


# ---- connectivity ---------------------------------------------------------------------------
def _fine(point: np.ndarray, scale: int) -> tuple[int, int]:
    """The path-mask pixel holding ``point`` (image coordinates, pixel centres at integers)."""
    y, x = np.floor((point + 0.5) * scale).astype(int)
    return int(y), int(x)


def test_markers_joined_exactly_when_connected(hard32: pf.PathfinderImages) -> None:
    """Flood-fill the rendered mask of the two target paths: a connected image's markers lie
    in one 4-connected component, a disconnected image's in two different 8-connected ones."""
    out = hard32
    assert out.path_mask is not None and out.markers is not None
    four, eight = ndimage.generate_binary_structure(2, 1), np.ones((3, 3), dtype=bool)
    joined = []
    for mask, markers, label in zip(out.path_mask, out.markers, out.labels):
        structure = four if label == 1 else eight
        components, _ = ndimage.label(mask, structure=structure)
        ids = [components[_fine(m, out.mask_scale)] for m in markers]
        assert ids[0] > 0 and ids[1] > 0  # both markers lie on a target path
        joined.append(ids[0] == ids[1])
    assert (np.asarray(joined) == (out.labels == 1)).all()
    # and on the image itself the markers are foreground: their centre pixels reach 255 (§7)
    for image, markers in zip(out.images, out.markers):
        for y, x in np.rint(markers).astype(int):
            assert image[y, x] == 255


def test_path_mask_follows_the_drawn_dashes(hard32: pf.PathfinderImages) -> None:
    # the mask is the centre line of drawn contours: along it, the dashes (L of every L + 2m,
    # §5.2) are lit, so at least L / (L + 2m) - 0.1 = 40% of its pixels are foreground
    out = hard32
    s = out.mask_scale
    lit = [image.repeat(s, 0).repeat(s, 1)[mask].astype(bool).mean()
           for image, mask in zip(out.images[:200], out.path_mask[:200])]
    assert min(lit) >= 0.4


def test_contours_keep_their_clearance(hard32: pf.PathfinderImages) -> None:
    """The two target contours (gaps included) stay at least 2m - 0.36 px apart (the
    generator's guarantee; the document: "about 2m", §4), so a disconnected pair cannot touch
    (the original's lagged masks let 28% of 32-px hard pairs share pixels, §6.4)."""
    out = hard32
    t = np.linspace(0, 1, 21)[:, None]
    for paths, m in zip(out.paths[:300], out.margins[:300]):
        a = (paths[0, :-1, None] + t * (paths[0, 1:, None] - paths[0, :-1, None])).reshape(-1, 2)
        seg_a, seg_b = paths[1, :-1], paths[1, 1:]
        d = pf._point_segment_distance(a[:, None], seg_a[None], seg_b[None])
        assert d.min() >= 2 * m - 0.36 - 0.05  # 0.05: sampling between the points above


# ---- image statistics (shared/research/pathfinder.md) -------------------------------------
def test_image_statistics_match_the_document(hard32: pf.PathfinderImages) -> None:
    out, p = hard32, pf.PARAMS[32]
    images = out.images
    # §9.1, §9.3: background exactly 0, per-image max normalised to 255
    assert images.dtype == np.uint8 and images.shape == (1000, 32, 32)
    assert (images.reshape(1000, -1).max(1) == 255).all()
    assert 0.6 <= (images == 0).mean() <= 0.95
    # §7: marker disks of radius r_m = 1.5 at 32 px: every pixel within r_m - 0.5 of a
    # marker centre is fully covered (255), none beyond r_m + 0.5 + 1 belongs to it
    yy, xx = np.mgrid[0:32, 0:32]
    for image, markers in zip(images[:200], out.markers[:200]):
        for y, x in markers:
            d = np.hypot(yy - y, xx - x)
            assert (image[d <= p.marker_radius - 0.5] == 255).all()
    # §3, §9.4: dashes at 32 px (t = 0.5, a 1-px supersampled line) peak at 0.43-0.58 of
    # full coverage, times the target contrast 1.5: 0.65-0.87 of the marker peak. Away from
    # the markers, each image's brightest pixel is a dash peak in that range (± 0.1 for our
    # box-filter anti-aliasing instead of a Lanczos resize).
    far = []
    for image, markers in zip(images, out.markers):
        d = np.min([np.hypot(yy - y, xx - x) for y, x in markers], axis=0)
        far.append(image[d > p.marker_radius + 1.5].max() / 255)
    far = np.asarray(far)
    assert far.max() <= 0.87 + 0.1 and np.median(far) >= 0.65 - 0.1
    # §6.2: snake 1 starts in the central box [2s, W-1-2s] = [14, 17]; snake 2's first tip
    # lies s = 7 px from it (measured in the original: 6.7-7.6 px)
    assert ((out.origins[:, 0] >= 14) & (out.origins[:, 0] <= 17)).all()
    gap = np.linalg.norm(out.origins[:, 0] - out.origins[:, 1], axis=-1)
    assert np.allclose(gap, p.seed_distance)
    # §10.2: a hard target path is 14 dashes of L = 2 with 13 gaps of 2m = 2: 54 px
    lengths = np.linalg.norm(np.diff(out.paths, axis=2), axis=-1).sum(-1)
    assert np.allclose(lengths, 14 * 2 + 13 * 2)
    # §5.2: turns of at most 90°/c (c = 1 at 32 px)
    assert _max_turn(out.paths) <= 90 + 1e-6
    # §8, §10.2: at most n_d = 20 // 4 = 5 distractor snakes of 4 dashes; some are dropped
    assert out.distractors.max() <= 5 and out.distractors.mean() >= 1


def _max_turn(paths: np.ndarray) -> float:
    v = np.diff(paths[:, :, 1:-1], axis=2)  # pivot to pivot
    ang = np.arctan2(v[..., 0], v[..., 1])
    turn = np.abs((np.diff(ang, axis=-1) + np.pi) % (2 * np.pi) - np.pi)
    return float(np.degrees(turn.max())) if turn.size else 0.0


def test_other_sizes_follow_their_parameters() -> None:
    # §10.2: 64 px turns at most 50° (c = 1.8), markers r_m = 2.5, seeds s = 12 apart;
    # 128 px draws m from {2, 3} per image
    out = pf.generate(64, "easy", 24, seed=1, details=True)
    assert out.images.shape == (24, 64, 64) and _max_turn(out.paths) <= 50 + 1e-6
    assert np.allclose(np.linalg.norm(out.origins[:, 0] - out.origins[:, 1], axis=-1), 12)
    out = pf.generate(128, "easy", 12, seed=1, details=True)
    assert out.images.shape == (12, 128, 128) and set(out.margins) <= {2.0, 3.0}
    lengths = np.linalg.norm(np.diff(out.paths, axis=2), axis=-1).sum(-1)
    assert np.allclose(lengths, 6 * 5 + 5 * 2 * out.margins[:, None])


# ---- cache -------------------------------------------------------------------------------
def test_cache_is_written_once_and_reused(tmp_path: Path) -> None:
    before = pf.generated_count
    images, labels = pf.load_images(32, "easy", 30, seed=5, data_dir=tmp_path)
    path = pf.cache_path(tmp_path, 32, "easy", 30, 5)
    assert pf.generated_count == before + 1 and path.is_file()
    assert not [p for p in path.parent.iterdir() if p != path]  # no temporary left behind
    mtime = path.stat().st_mtime_ns
    again, labels2 = pf.load_images(32, "easy", 30, seed=5, data_dir=tmp_path)
    assert pf.generated_count == before + 1 and path.stat().st_mtime_ns == mtime
    assert (again == images).all() and (labels2 == labels).all()
    assert (images == pf.generate(32, "easy", 30, seed=5).images).all()
    path.write_bytes(b"not an npz")  # a damaged cache is regenerated, not trusted
    third, _ = pf.load_images(32, "easy", 30, seed=5, data_dir=tmp_path)
    assert pf.generated_count == before + 2 and (third == images).all()


# ---- --data ------------------------------------------------------------------------------
def test_data_names_parse() -> None:
    spec = parse_data("pathfinder32:hard")
    assert (spec.name, spec.path, spec.kind, spec.native_size) == (
        "pathfinder32", "hard", "small", 32)
    assert parse_data("pathfinder32").path == "hard"  # LRA's Pathfinder is 32 px hard
    assert parse_data("pathfinder128:inter").path == "intermediate"
    assert parse_data("pathfinder64:easy:n=200:test=50").path == "easy:n=200:test=50"
    got = pf.parse_spec("pathfinder64", "easy:n=200:test=50")
    assert (got.size, got.level, got.train, got.test) == (64, "easy", 200, 50)
    with pytest.raises(ValueError, match="easy, intermediate, hard") as err:
        parse_data("pathfinder32:medium")
    assert "'medium'" in str(err.value)
    with pytest.raises(ValueError, match="pathfinder32, pathfinder64, pathfinder128"):
        parse_data("pathfinder48")
    with pytest.raises(ValueError, match="n=abc must be a positive whole number"):
        parse_data("pathfinder32:n=abc")
    with pytest.raises(ValueError, match="unknown option 'size'"):
        parse_data("pathfinder32:size=3")


def test_load_data_gives_grey_two_class_splits(tmp_path: Path) -> None:
    bundle = load_data("pathfinder32:easy:n=40:test=20", data_dir=str(tmp_path))
    assert (bundle.in_chans, bundle.num_classes) == (1, 2)
    assert bundle.classes == ["disconnected", "connected"]
    assert (len(bundle.train), len(bundle.val)) == (40, 20)
    image, label = bundle.train[0]
    assert image.mode == "L" and image.size == (32, 32) and label in (0, 1)
    assert labels_of(bundle.val).shape == (20,)  # read from targets, no decoding
    # the test split is its own draw (another seed), not a copy of the training images
    train = {bytes(x) for x in bundle.train.images}
    assert not any(bytes(x) in train for x in bundle.val.images)


def test_train_end_to_end(tmp_path: Path) -> None:
    run = tmp_path / "run"
    code = main(["train", *TINY, "--data", "pathfinder32:n=64:test=32", "--data-dir",
                 str(tmp_path / "data"), "--limit-train", "64", "--limit-val", "32",
                 "--batch-size", "32", "--epochs", "1", "--output", str(run), "--progress",
                 "none"])
    assert code == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and not math.isnan(rows[0]["train_loss"])
    assert (tmp_path / "data" / "pathfinder").is_dir()
