"""Tests of ood_core.data: every loader on tiny synthetic files in the standard layouts, the error
messages, to_tensor, splits, corruptions, verify_files and (when present) ../shared/data."""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from ood_core.data import (
    CORRUPTIONS,
    DATASETS,
    SHARED_DATA_MANIFEST,
    DatasetError,
    ImageSet,
    assert_disjoint,
    corrupt,
    load_dataset,
    split_indices,
    to_tensor,
    verify_files,
)
from ood_core.data import verify as verify_mod
from ood_core.data.corruptions import _glass_shuffle


def rand_images(n: int, h: int = 32, w: int = 32, c: int | None = 3, seed: int = 0) -> np.ndarray:
    shape = (n, h, w) if c is None else (n, h, w, c)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


# --------------------------------------------------------------------------- writers (standard layouts)


def write_cifar_batch(
    path: Path, images: np.ndarray, labels: np.ndarray, key: bytes = b"labels", extra: dict | None = None
) -> None:
    data = images.transpose(0, 3, 1, 2).reshape(len(images), -1)  # R plane, G plane, B plane
    d = {b"batch_label": b"x", b"data": data, key: [int(v) for v in labels], b"filenames": [b"f"] * len(images)}
    d.update(extra or {})
    with open(path, "wb") as f:
        pickle.dump(d, f, protocol=2)


def write_idx(path: Path, arr: np.ndarray, gz: bool = False) -> None:
    header = bytes([0, 0, 8, arr.ndim]) + np.asarray(arr.shape, dtype=">u4").tobytes()
    raw = header + arr.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(raw)
    else:
        path.write_bytes(raw)


def write_png(path: Path, arr: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


# --------------------------------------------------------------------------- loaders


def test_registry_has_all_kinds():
    for kind in [
        "npz",
        "cifar10",
        "cifar100",
        "svhn",
        "mnist",
        "fashion_mnist",
        "kmnist",
        "image_folder",
        "imagenet_c",
        "digits",
        "gaussian_noise_images",
        "uniform_noise_images",
        "corrupted",
    ]:
        assert kind in DATASETS
    with pytest.raises(KeyError, match="unknown dataset kind 'nope'"):
        load_dataset("nope", None)


@pytest.mark.parametrize("gray", [False, True])
def test_npz(tmp_path, gray):
    x = rand_images(7, 28, 28, None if gray else 3)
    y = np.arange(7) % 3
    np.savez_compressed(tmp_path / "set.npz", x=x, y=y, classes=np.array(["a", "b", "c"]))
    s = load_dataset("npz", tmp_path / "set.npz", num_classes=3)
    assert s.name == "set" and s.images.dtype == np.uint8 and s.labels.dtype == np.int64
    assert s.images.shape == (7, 28, 28, 1 if gray else 3)
    np.testing.assert_array_equal(s.images.reshape(x.shape), x)
    np.testing.assert_array_equal(s.labels, y)
    assert s.class_names == ["a", "b", "c"]
    s2 = load_dataset("npz", tmp_path, file="set.npz", name="renamed", subset=4, subset_seed=1)
    assert s2.name == "renamed" and len(s2) == 4
    assert all(any(np.array_equal(a, b) for b in s.images) for a in s2.images)


def test_cifar10(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    batches = []
    for i in range(1, 6):
        x, y = rand_images(3, seed=i), np.array([i, 0, 9])
        write_cifar_batch(d / f"data_batch_{i}", x, y)
        batches.append((x, y))
    xt, yt = rand_images(4, seed=9), np.array([3, 1, 4, 1])
    write_cifar_batch(d / "test_batch", xt, yt)
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f, protocol=2)
    te = load_dataset("cifar10", tmp_path, split="test", num_classes=10)
    assert te.images.shape == (4, 32, 32, 3) and te.images.dtype == np.uint8
    np.testing.assert_array_equal(te.images, xt)  # plane layout decoded back to HWC
    np.testing.assert_array_equal(te.labels, yt)
    assert te.class_names[3] == "c3"
    tr = load_dataset("cifar10", tmp_path, split="train")
    assert tr.images.shape == (15, 32, 32, 3)
    np.testing.assert_array_equal(tr.images, np.concatenate([b[0] for b in batches]))
    np.testing.assert_array_equal(tr.labels, np.concatenate([b[1] for b in batches]))


def test_cifar100(tmp_path):
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    x = rand_images(5, seed=3)
    write_cifar_batch(
        d / "test", x, np.array([0, 99, 50, 1, 2]), key=b"fine_labels", extra={b"coarse_labels": [0, 19, 10, 1, 2]}
    )
    write_cifar_batch(d / "train", x[:2], np.array([7, 8]), key=b"fine_labels", extra={b"coarse_labels": [1, 1]})
    with open(d / "meta", "wb") as f:
        pickle.dump(
            {
                b"fine_label_names": [f"f{i}".encode() for i in range(100)],
                b"coarse_label_names": [f"k{i}".encode() for i in range(20)],
            },
            f,
            protocol=2,
        )
    s = load_dataset("cifar100", tmp_path, split="test", num_classes=100)
    np.testing.assert_array_equal(s.images, x)
    np.testing.assert_array_equal(s.labels, [0, 99, 50, 1, 2])
    assert len(s.class_names) == 100
    c = load_dataset("cifar100", tmp_path, split="test", label_mode="coarse")
    np.testing.assert_array_equal(c.labels, [0, 19, 10, 1, 2])
    assert load_dataset("cifar100", tmp_path, split="train").labels.tolist() == [7, 8]


def test_svhn(tmp_path):
    import scipy.io

    x = rand_images(6, seed=4)
    y = np.array([[10], [1], [2], [10], [9], [5]], dtype=np.uint8)
    scipy.io.savemat(tmp_path / "test_32x32.mat", {"X": x.transpose(1, 2, 3, 0), "y": y})
    s = load_dataset("svhn", tmp_path, split="test", num_classes=10)
    assert s.images.shape == (6, 32, 32, 3) and s.images.dtype == np.uint8
    np.testing.assert_array_equal(s.images, x)
    np.testing.assert_array_equal(s.labels, [0, 1, 2, 0, 9, 5])
    assert s.labels.dtype == np.int64


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx(tmp_path, gz):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    x, y = rand_images(5, 28, 28, None, seed=5), np.array([7, 2, 1, 0, 4])
    write_idx(raw / "t10k-images-idx3-ubyte", x, gz)
    write_idx(raw / "t10k-labels-idx1-ubyte", y, gz)
    s = load_dataset("mnist", tmp_path, split="test", num_classes=10)
    assert s.images.shape == (5, 28, 28, 1) and s.images.dtype == np.uint8
    np.testing.assert_array_equal(s.images[..., 0], x)
    np.testing.assert_array_equal(s.labels, y)
    with pytest.raises(DatasetError, match="wrong layout.*train-images-idx3-ubyte"):
        load_dataset("mnist", tmp_path, split="train")


def test_fashion_mnist_and_kmnist(tmp_path):
    for folder, kind in [("FashionMNIST", "fashion_mnist"), ("KMNIST", "kmnist")]:
        raw = tmp_path / folder / "raw"
        raw.mkdir(parents=True)
        write_idx(raw / "train-images-idx3-ubyte", rand_images(3, 28, 28, None), gz=True)
        write_idx(raw / "train-labels-idx1-ubyte", np.array([9, 0, 3]), gz=True)
        s = load_dataset(kind, tmp_path, split="train")
        assert s.images.shape == (3, 28, 28, 1) and s.labels.tolist() == [9, 0, 3]
    assert load_dataset("fashion_mnist", tmp_path, split="train").class_names[9] == "Ankle boot"


def make_folder(root: Path) -> dict[str, list[tuple[int, int, int]]]:
    """Two classes (unsorted creation order) of constant-colour images of various sizes."""
    colours = {"zebra": [(200, 10, 30), (0, 255, 0)], "apple": [(5, 6, 7), (90, 80, 70), (1, 2, 3)]}
    for cls, cs in colours.items():
        for i, c in enumerate(cs):
            size = (40, 24) if i % 2 else (16, 16)
            write_png(root / cls / f"img{i}.png", np.full((size[1], size[0], 3), c, dtype=np.uint8))
    (root / "apple" / "notes.txt").write_text("not an image")
    return colours


def test_image_folder(tmp_path):
    colours = make_folder(tmp_path / "tin")
    s = load_dataset("image_folder", tmp_path / "tin", size=32)
    assert s.class_names == ["apple", "zebra"]
    assert s.images.shape == (5, 32, 32, 3) and s.images.dtype == np.uint8
    np.testing.assert_array_equal(s.labels, [0, 0, 0, 1, 1])
    expected = np.array(colours["apple"] + colours["zebra"], dtype=np.uint8)
    np.testing.assert_array_equal(s.images[:, 16, 16], expected)  # constant images stay constant
    m = load_dataset("image_folder", tmp_path / "tin", size=8, max_per_class=1, workers=1)
    assert m.images.shape == (2, 8, 8, 3) and m.labels.tolist() == [0, 1]
    c = load_dataset("image_folder", tmp_path / "tin", size=20, crop=16)
    assert c.images.shape == (5, 16, 16, 3)


def test_image_folder_grayscale_png_becomes_rgb(tmp_path):
    write_png(tmp_path / "g" / "a" / "x.png", np.full((10, 10), 77, dtype=np.uint8))
    s = load_dataset("image_folder", tmp_path / "g", size=4)
    assert s.images.shape == (1, 4, 4, 3) and np.all(s.images == 77)


def test_imagenet_c(tmp_path):
    for sev in (1, 3):
        for cls in ("n01", "n02"):
            write_png(tmp_path / "fog" / str(sev) / cls / "a.JPEG.png", np.full((12, 12, 3), sev * 10, np.uint8))
    s = load_dataset("imagenet_c", tmp_path, corruption="fog", severity=3, size=8)
    assert s.name == "imagenet_c-fog-s3" and s.images.shape == (2, 8, 8, 3)
    assert np.all(s.images == 30) and s.labels.tolist() == [0, 1]
    with pytest.raises(DatasetError, match=r"wrong layout.*corruptions present: \['fog'\]"):
        load_dataset("imagenet_c", tmp_path, corruption="snow", severity=1)


def test_digits():
    a = load_dataset("digits", None, split="all")
    assert a.images.shape == (1797, 8, 8, 1) and a.images.dtype == np.uint8 and a.images.max() == 255
    tr = load_dataset("digits", None, classes=[0, 1, 2, 3, 4], split="train")
    te = load_dataset("digits", None, classes=[0, 1, 2, 3, 4], split="test")
    ood = load_dataset("digits", None, classes=[5, 6, 7, 8, 9], split="test")
    assert set(tr.labels) == set(te.labels) == set(ood.labels) == {0, 1, 2, 3, 4}
    full = load_dataset("digits", None, classes=list(range(10)), split="all")
    assert len(tr) + len(te) == int(np.isin(full.labels, range(5)).sum())
    assert 0.25 < len(te) / (len(tr) + len(te)) < 0.35
    # same split every call, train/test share no image, re-indexing follows the given order
    assert np.array_equal(te.images, load_dataset("digits", None, classes=[0, 1, 2, 3, 4], split="test").images)
    both = sorted(map(bytes, np.concatenate([tr.images, te.images])))
    assert both == sorted(map(bytes, load_dataset("digits", None, classes=[0, 1, 2, 3, 4], split="all").images))
    rev = load_dataset("digits", None, classes=[9, 5], split="all")
    np.testing.assert_array_equal(np.bincount(rev.labels), [np.sum(full.labels == 9), np.sum(full.labels == 5)])
    with pytest.raises(DatasetError, match="classes must be distinct digits"):
        load_dataset("digits", None, classes=[1, 1])


def test_noise_sets():
    g = load_dataset("gaussian_noise_images", None, n=400, size=16, channels=3, seed=1)
    assert g.images.shape == (400, 16, 16, 3) and g.images.dtype == np.uint8 and np.all(g.labels == -1)
    # N(0.5, 1) clipped to [0, 1]: P(v <= 0) = P(v >= 1) = Phi(-0.5) = 0.3085
    assert abs((g.images == 0).mean() - 0.3085) < 0.01 and abs((g.images == 255).mean() - 0.3085) < 0.01
    u = load_dataset("uniform_noise_images", None, n=400, size=16, channels=1, seed=1)
    assert u.images.shape == (400, 16, 16, 1)
    assert abs(u.images.mean() - 127.5) < 1.0 and (u.images == 0).mean() < 0.01
    same = load_dataset("gaussian_noise_images", None, n=400, size=16, channels=3, seed=1)
    other = load_dataset("gaussian_noise_images", None, n=400, size=16, channels=3, seed=2)
    assert np.array_equal(g.images, same.images) and not np.array_equal(g.images, other.images)


def test_corrupted_loader():
    base = load_dataset("digits", None, classes=[0, 1], split="test")
    c = load_dataset("corrupted", None, base=base, corruption="contrast", severity=2)
    assert c.name == f"{base.name}-contrast-s2" and c.images.shape == base.images.shape
    np.testing.assert_array_equal(c.labels, base.labels)
    c2 = load_dataset(
        "corrupted",
        None,
        base_kind="digits",
        base_options={"classes": [0, 1], "split": "test"},
        corruption="contrast",
        severity=2,
    )
    np.testing.assert_array_equal(c.images, c2.images)
    with pytest.raises(DatasetError, match="base=<ImageSet> or base_kind"):
        load_dataset("corrupted", None, corruption="contrast", severity=2)
    with pytest.raises(DatasetError, match="unknown corruption 'fog'"):
        load_dataset("corrupted", None, base=base, corruption="fog", severity=2)


# --------------------------------------------------------------------------- bad inputs


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_missing_root(tmp_path):
    with pytest.raises(DatasetError, match=r"dataset 'cifar10_test' \(.*nowhere\): root not found; expected") as e:
        load_dataset("cifar10", tmp_path / "nowhere")
    one_line(e)
    with pytest.raises(DatasetError, match="root is required"):
        load_dataset("svhn", None)
    with pytest.raises(DatasetError, match="file not found"):
        load_dataset("npz", tmp_path / "missing.npz")


def test_wrong_layout(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    write_cifar_batch(d / "data_batch_1", rand_images(2), np.array([0, 1]))
    with pytest.raises(DatasetError, match=r"missing batch files \['data_batch_2'"):
        load_dataset("cifar10", tmp_path, split="train")
    with pytest.raises(DatasetError, match="wrong layout: expected cifar-10-batches-py/test_batch"):
        load_dataset("cifar10", tmp_path, split="test")
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.png").write_bytes(b"")
    with pytest.raises(DatasetError, match="wrong layout: no class folders"):
        load_dataset("image_folder", tmp_path / "flat")
    with pytest.raises(DatasetError, match="wrong layout: missing test_32x32.mat"):
        load_dataset("svhn", tmp_path)
    with pytest.raises(DatasetError, match="split must be 'train' or 'test'"):
        load_dataset("cifar10", tmp_path, split="val")


def test_empty_set(tmp_path):
    (tmp_path / "f" / "cls").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"dataset 'f' \(.*\): empty set: no image files"):
        load_dataset("image_folder", tmp_path / "f")
    np.savez(tmp_path / "e.npz", x=np.zeros((0, 4, 4, 3), np.uint8), y=np.zeros(0, np.int64))
    with pytest.raises(DatasetError, match="dataset 'e' .*empty set"):
        load_dataset("npz", tmp_path / "e.npz")


def test_unreadable_files(tmp_path):
    (tmp_path / "bad.npz").write_bytes(b"this is not a zip archive")
    with pytest.raises(DatasetError, match=r"dataset 'bad' \(.*bad.npz\): unreadable file") as e:
        load_dataset("npz", tmp_path / "bad.npz")
    one_line(e)
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    (d / "test_batch").write_bytes(b"\x80\x02garbage")
    with pytest.raises(DatasetError, match="test_batch\\): unreadable file"):
        load_dataset("cifar10", tmp_path)
    with open(d / "test_batch", "wb") as f:  # a pickle that would call os.system must be refused
        pickle.dump({b"data": os.getcwd}, f, protocol=2)
    with pytest.raises(DatasetError, match="unreadable file .*is not allowed"):
        load_dataset("cifar10", tmp_path)
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    write_idx(raw / "t10k-images-idx3-ubyte", rand_images(3, 28, 28, None))
    (raw / "t10k-labels-idx1-ubyte").write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 9, 1, 2]))  # says 9, has 2
    with pytest.raises(DatasetError, match="unreadable file: header says \\(9,\\)"):
        load_dataset("mnist", tmp_path)
    write_png(tmp_path / "imgs" / "c" / "ok.png", np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "imgs" / "c" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DatasetError, match="broken.png\\): unreadable image file"):
        load_dataset("image_folder", tmp_path / "imgs")


def test_mismatched_lengths(tmp_path):
    np.savez(tmp_path / "m.npz", x=rand_images(5), y=np.zeros(4, np.int64))
    with pytest.raises(DatasetError, match=r"dataset 'm' \(.*m.npz\): x and y lengths differ: 5 images vs 4 labels"):
        load_dataset("npz", tmp_path / "m.npz")


@pytest.mark.parametrize("shape", [(3, 8, 8, 2), (3, 8), (3, 8, 8, 3, 1), (3, 8, 8, 4)])
def test_wrong_image_shape(tmp_path, shape):
    np.savez(tmp_path / "s.npz", x=np.zeros(shape, np.uint8), y=np.zeros(3, np.int64))
    with pytest.raises(DatasetError, match=r"images must be NxHxW or NxHxWx\{1,3\}, got shape"):
        load_dataset("npz", tmp_path / "s.npz")


def test_labels_out_of_range(tmp_path):
    np.savez(tmp_path / "l.npz", x=rand_images(3, 4, 4), y=np.array([0, 10, 2]))
    assert len(load_dataset("npz", tmp_path / "l.npz")) == 3  # fine without num_classes
    with pytest.raises(DatasetError, match=r"dataset 'l' \(.*\): labels must be in 0..9, got range 0..10"):
        load_dataset("npz", tmp_path / "l.npz", num_classes=10)
    with pytest.raises(DatasetError, match="labels must be >= -1"):
        ImageSet("t", rand_images(2, 4, 4), np.array([0, -5]))
    with pytest.raises(DatasetError, match="labels must be integers"):
        ImageSet("t", rand_images(2, 4, 4), np.array([0.0, 1.0]))


def test_non_uint8(tmp_path):
    np.savez(tmp_path / "f.npz", x=rand_images(3, 4, 4).astype(np.float32), y=np.zeros(3, np.int64))
    with pytest.raises(DatasetError, match=r"dataset 'f' \(.*f.npz\): images must be uint8, got float32"):
        load_dataset("npz", tmp_path / "f.npz")
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    with open(d / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), np.int16), b"labels": [0, 1]}, f, protocol=2)
    with pytest.raises(DatasetError, match="images must be uint8, got int16"):
        load_dataset("cifar10", tmp_path)


# --------------------------------------------------------------------------- to_tensor


def test_to_tensor_hand_computed():
    img = np.array([[[[0, 51, 102], [255, 0, 0]], [[10, 20, 30], [40, 50, 60]]]], dtype=np.uint8)  # 1x2x2x3
    mean, std = (0.5, 0.25, 0.1), (0.5, 0.25, 2.0)
    t = to_tensor(img, mean, std, size=2, channels=3)
    assert t.shape == (1, 3, 2, 2) and t.dtype == torch.float32
    assert t[0, 0, 0, 0].item() == pytest.approx((0 / 255 - 0.5) / 0.5)
    assert t[0, 1, 0, 0].item() == pytest.approx((51 / 255 - 0.25) / 0.25)
    assert t[0, 2, 0, 0].item() == pytest.approx((102 / 255 - 0.1) / 2.0)
    assert t[0, 0, 0, 1].item() == pytest.approx(1.0)
    assert t[0, 2, 1, 1].item() == pytest.approx((60 / 255 - 0.1) / 2.0)
    # RGB -> 1 channel: ITU-R 601 luminance
    g = to_tensor(img, 0.0, 1.0, size=2, channels=1)
    assert g.shape == (1, 1, 2, 2)
    assert g[0, 0, 0, 0].item() == pytest.approx((0.299 * 0 + 0.587 * 51 + 0.114 * 102) / 255, abs=1e-6)
    # 2x2 -> 1x1 bilinear with antialias averages the four pixels
    r = to_tensor(img, 0.0, 1.0, size=1, channels=3)
    np.testing.assert_allclose(r[0, :, 0, 0].numpy(), img[0].reshape(4, 3).mean(0) / 255, atol=1e-6)
    # grayscale -> 3 identical channels, each normalized with its own mean/std
    gray = np.array([[[100, 200], [0, 255]]], dtype=np.uint8)  # 1x2x2
    t3 = to_tensor(gray, (0.0, 0.5, 1.0), (1.0, 1.0, 0.5), size=2, channels=3)
    assert t3[0, 1, 0, 1].item() == pytest.approx(200 / 255 - 0.5)
    assert t3[0, 2, 1, 0].item() == pytest.approx((0 - 1.0) / 0.5)


def test_to_tensor_resize_and_errors():
    x = np.full((4, 8, 8, 3), 200, np.uint8)
    up = to_tensor(x, 0.0, 1.0, size=32, channels=3)
    assert up.shape == (4, 3, 32, 32)
    np.testing.assert_allclose(up.numpy(), 200 / 255, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="must be uint8"):
        to_tensor(x.astype(np.float32), 0.0, 1.0, 8, 3)
    with pytest.raises(ValueError, match="mean has 2 values, expected 1 or 3"):
        to_tensor(x, (0.1, 0.2), 1.0, 8, 3)


# --------------------------------------------------------------------------- splits


def test_split_indices():
    v, t = split_indices(100, 30, seed=7)
    v2, t2 = split_indices(100, 30, seed=7)
    assert np.array_equal(v, v2) and np.array_equal(t, t2)
    assert v.dtype == t.dtype == np.int64 and len(v) == 30 and len(t) == 70
    assert np.all(np.diff(v) > 0) and np.all(np.diff(t) > 0)
    assert np.array_equal(np.sort(np.concatenate([v, t])), np.arange(100))
    assert not np.array_equal(v, split_indices(100, 30, seed=8)[0])
    assert len(split_indices(100, 0.25, seed=0)[0]) == 25
    assert not np.array_equal(v, np.arange(30))  # shuffled, not a prefix (rows are sorted by class)
    for bad in (0, 100, 101, -1, 0.0, 1.0):
        with pytest.raises(ValueError, match="n_val"):
            split_indices(100, bad, seed=0)
    assert_disjoint(v, t, "x")
    with pytest.raises(DatasetError, match=r"dataset 'cifar10_test': validation and test indices overlap in 2"):
        assert_disjoint(np.array([1, 2, 3]), np.array([3, 4, 1]), "cifar10_test")


# --------------------------------------------------------------------------- corruptions

REQUIRED = ["gaussian_noise", "glass_blur", "contrast", "defocus_blur", "impulse_noise"]


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_corruption_determinism(name):
    x = rand_images(4, 16, 16, seed=11)
    x[:, 4:12, 4:12] = 128  # flat patch so blurs and contrast change something measurable
    a, b = corrupt(x, name, 3, seed=0), corrupt(x, name, 3, seed=0)
    assert a.dtype == np.uint8 and a.shape == x.shape
    assert np.array_equal(a, b)
    assert not np.array_equal(a, x)
    assert not np.array_equal(corrupt(x, name, 1, seed=0), corrupt(x, name, 5, seed=0))
    g = corrupt(x[..., 0], name, 2, seed=0)  # grayscale (N,H,W) works, shape kept
    assert g.shape == x.shape[:3] and g.dtype == np.uint8


@pytest.mark.parametrize("name", ["gaussian_noise", "impulse_noise", "glass_blur"])
def test_random_corruptions_depend_on_seed(name):
    x = rand_images(4, 16, 16, seed=12)
    assert not np.array_equal(corrupt(x, name, 5, seed=0), corrupt(x, name, 5, seed=1))


def test_corruption_values():
    x = np.zeros((1, 4, 4, 1), np.uint8)
    x[0, :2] = 200  # mean 100
    c = corrupt(x, "contrast", 1, seed=0)  # ((x - m) * 0.75 + m) * 255, truncated like CIFAR-10-C
    m = np.mean(x / 255.0)
    assert c[0, 0, 0, 0] == 175 == np.uint8(((200 / 255 - m) * 0.75 + m) * 255)
    assert c[0, 3, 3, 0] == 24 == np.uint8(((0 - m) * 0.75 + m) * 255)  # 24.999..., not rounded to 25
    flat = np.full((2, 8, 8, 3), 90, np.uint8)  # blurs keep flat images flat (up to truncation)
    for name in ("gaussian_blur", "defocus_blur", "glass_blur"):
        assert np.abs(corrupt(flat, name, 5).astype(int) - 90).max() <= 1
    imp = corrupt(np.full((2, 32, 32, 3), 128, np.uint8), "impulse_noise", 5, seed=0)
    frac = np.isin(imp, (0, 255)).mean()
    assert 0.05 < frac < 0.09  # amount 0.07 at severity 5
    with pytest.raises(ValueError, match="severity must be 1..5"):
        corrupt(flat, "contrast", 6)


def test_glass_shuffle_vectorised_matches_sequential():
    y = rand_images(3, 10, 10, seed=13)
    fast = _glass_shuffle(y, 1, np.random.default_rng(5), sequential=False)
    slow = _glass_shuffle(y, 1, np.random.default_rng(5), sequential=True)
    assert np.array_equal(fast, slow) and not np.array_equal(fast, y)


# --------------------------------------------------------------------------- verify_files


def test_verify_files(tmp_path, monkeypatch):
    f = tmp_path / "data.bin"
    f.write_bytes(bytes(range(256)) * 10)
    digest = hashlib.sha256(f.read_bytes()).hexdigest()
    stamp = tmp_path / "stamp.json"
    man = {"data.bin": (2560, digest)}
    assert verify_files(man, tmp_path, stamp=stamp) == [f.resolve()]
    # one-byte change, same size -> sha256 mismatch naming file, expected and actual
    b = bytearray(f.read_bytes())
    b[100] ^= 1
    f.write_bytes(bytes(b))
    actual = hashlib.sha256(bytes(b)).hexdigest()
    with pytest.raises(DatasetError, match=rf"data.bin.*sha256 mismatch: expected {digest}, got {actual}"):
        verify_files(man, tmp_path, stamp=stamp)
    with pytest.raises(DatasetError, match="size mismatch: expected 2561 bytes, got 2560"):
        verify_files({"data.bin": (2561, actual)}, tmp_path, stamp=stamp)
    with pytest.raises(DatasetError, match="file not found"):
        verify_files({"nope.bin": (1, actual)}, tmp_path, stamp=stamp)
    # sha256sum-style list
    (tmp_path / "SHA256SUMS").write_text(f"# list\n{actual}  data.bin\n")
    assert verify_files(tmp_path / "SHA256SUMS", tmp_path, stamp=stamp) == [f.resolve()]


def test_verify_files_cache(tmp_path, monkeypatch):
    f = tmp_path / "data.bin"
    f.write_bytes(b"abc" * 1000)
    os.utime(f, ns=(10**18, 10**18))  # old mtime: the result may be cached
    man = {"data.bin": (3000, hashlib.sha256(b"abc" * 1000).hexdigest())}
    stamp = tmp_path / "stamp.json"
    verify_files(man, tmp_path, stamp=stamp)
    assert stamp.is_file()

    def boom(path):
        raise AssertionError("hash recomputed")

    monkeypatch.setattr(verify_mod, "sha256_file", boom)
    verify_files(man, tmp_path, stamp=stamp)  # served from the stamp
    f.write_bytes(b"abd" + b"abc" * 999)
    os.utime(f, ns=(10**18 + 5, 10**18 + 5))
    with pytest.raises(AssertionError, match="hash recomputed"):  # mtime changed -> rehash
        verify_files(man, tmp_path, stamp=stamp)
    monkeypatch.undo()
    with pytest.raises(DatasetError, match="sha256 mismatch"):
        verify_files(man, tmp_path, stamp=stamp)


# --------------------------------------------------------------------------- real data


def shared_data() -> Path:
    from ood_core.data.verify import shared_data_dir

    p = shared_data_dir()
    if not (p / "cifar10_test.npz").is_file():
        pytest.skip(f"../shared/data not found: no cifar10_test.npz in {p} (set OOD_SHARED_DATA)")
    return p


@pytest.mark.shared_data
def test_shared_cifar10_test(tmp_path):
    root = shared_data()
    verify_files({"cifar10_test.npz": SHARED_DATA_MANIFEST["cifar10_test.npz"]}, root, stamp=tmp_path / "s.json")
    s = load_dataset("npz", root / "cifar10_test.npz", num_classes=10, subset=500, subset_seed=0)
    assert s.images.shape == (500, 32, 32, 3) and s.images.dtype == np.uint8
    assert s.labels.min() >= 0 and s.labels.max() <= 9
    assert len(np.unique(s.labels)) == 10  # a random subset, not the class-sorted prefix
    full = load_dataset("npz", root / "cifar10_test.npz", num_classes=10)
    assert full.images.shape == (10000, 32, 32, 3)
    np.testing.assert_array_equal(np.bincount(full.labels), [1000] * 10)
    mean = full.images.reshape(-1, 3).mean(0) / 255
    np.testing.assert_allclose(mean, (0.4942, 0.4851, 0.4504), atol=1e-3)


@pytest.mark.shared_data
def test_shared_manifest_sizes():
    root = shared_data()
    for name, (size, digest) in SHARED_DATA_MANIFEST.items():
        assert (root / name).stat().st_size == size and len(digest) == 64
