"""Loaders reading torchvision's on-disk layouts directly (never downloading):
CIFAR-10/100 python pickles, SVHN .mat files and MNIST-style idx files."""

from __future__ import annotations

import gzip
import pickle
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from ood_core.data.base import ImageSet, PathLike, fail, register_loader, require_dir

# Globals a CIFAR pickle (Python 2 cPickle or Python 3, numpy arrays) may reference; anything else
# is refused, so a tampered pickle cannot run code.
_PICKLE_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
    ("copyreg", "_reconstructor"),
    ("builtins", "object"),
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _PICKLE_ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a data pickle")
        return super().find_class(module, name)


def _unpickle(name: str, path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            d = _SafeUnpickler(f, encoding="bytes").load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise fail(name, path, f"unreadable file ({type(e).__name__}: {e})") from e
    if not isinstance(d, dict):
        raise fail(name, path, f"unreadable file: expected a pickled dict, got {type(d).__name__}")
    return d


def _cifar_images(name: str, path: Path, d: dict) -> np.ndarray:
    if b"data" not in d:
        raise fail(name, path, "missing key b'data' in batch file")
    data = np.asarray(d[b"data"])
    if data.dtype != np.uint8:
        raise fail(name, path, f"images must be uint8, got {data.dtype}")
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise fail(name, path, f"expected data of shape (N, 3072), got {data.shape}")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def _cifar_dir(name: str, root: PathLike | None, sub: str, probe: str) -> Path:
    base = require_dir(name, root, f"a directory holding {sub}/")
    d = base / sub if (base / sub).is_dir() else base
    if not (d / probe).exists():
        raise fail(name, base, f"wrong layout: expected {sub}/{probe} (torchvision layout)")
    return d


@register_loader("cifar10")
def load_cifar10(root: PathLike | None, *, split: str = "test") -> ImageSet:
    """CIFAR-10 from ``<root>/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}``."""
    name = f"cifar10_{split}"
    files = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
    if split not in files:
        raise fail(name, root, f"split must be 'train' or 'test', got '{split}'")
    d = _cifar_dir(name, root, "cifar-10-batches-py", files[split][0])
    missing = [f for f in files[split] if not (d / f).is_file()]
    if missing:
        raise fail(name, d, f"wrong layout: missing batch files {missing}")
    xs, ys = [], []
    for f in files[split]:
        b = _unpickle(name, d / f)
        xs.append(_cifar_images(name, d / f, b))
        ys.append(np.asarray(b.get(b"labels", []), dtype=np.int64))
    classes = None
    if (d / "batches.meta").is_file():
        classes = [c.decode() for c in _unpickle(name, d / "batches.meta").get(b"label_names", [])] or None
    return ImageSet(name, np.concatenate(xs), np.concatenate(ys), classes, str(d))


@register_loader("cifar100")
def load_cifar100(root: PathLike | None, *, split: str = "test", label_mode: str = "fine") -> ImageSet:
    """CIFAR-100 from ``<root>/cifar-100-python/{train,test,meta}``; ``label_mode`` fine|coarse."""
    name = f"cifar100_{split}"
    if split not in ("train", "test"):
        raise fail(name, root, f"split must be 'train' or 'test', got '{split}'")
    if label_mode not in ("fine", "coarse"):
        raise fail(name, root, f"label_mode must be 'fine' or 'coarse', got '{label_mode}'")
    d = _cifar_dir(name, root, "cifar-100-python", split)
    b = _unpickle(name, d / split)
    x = _cifar_images(name, d / split, b)
    y = np.asarray(b.get(f"{label_mode}_labels".encode(), []), dtype=np.int64)
    classes = None
    if (d / "meta").is_file():
        meta = _unpickle(name, d / "meta")
        classes = [c.decode() for c in meta.get(f"{label_mode}_label_names".encode(), [])] or None
    return ImageSet(name, x, y, classes, str(d))


@register_loader("svhn")
def load_svhn(root: PathLike | None, *, split: str = "test") -> ImageSet:
    """SVHN (cropped digits) from ``<root>/{train,test,extra}_32x32.mat``: X is HxWxCxN, label 10 = digit 0."""
    import scipy.io

    name = f"svhn_{split}"
    if split not in ("train", "test", "extra"):
        raise fail(name, root, f"split must be 'train', 'test' or 'extra', got '{split}'")
    d = require_dir(name, root, f"a directory holding {split}_32x32.mat")
    path = d / f"{split}_32x32.mat"
    if not path.is_file():
        raise fail(name, d, f"wrong layout: missing {path.name} (torchvision layout)")
    try:
        m = scipy.io.loadmat(path)
    except (OSError, ValueError, TypeError) as e:
        raise fail(name, path, f"unreadable file ({type(e).__name__}: {e})") from e
    if "X" not in m or "y" not in m:
        raise fail(name, path, "expected variables 'X' (HxWxCxN) and 'y'")
    X = m["X"]
    if X.ndim != 4:
        raise fail(name, path, f"expected X of shape HxWxCxN, got {X.shape}")
    y = m["y"].astype(np.int64).reshape(-1)
    y[y == 10] = 0
    return ImageSet(name, np.ascontiguousarray(X.transpose(3, 0, 1, 2)), y, [str(i) for i in range(10)], str(path))


_MNIST_LIKE = {
    "mnist": ("MNIST", [str(i) for i in range(10)]),
    "fashion_mnist": (
        "FashionMNIST",
        ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
    ),
    "kmnist": ("KMNIST", ["o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"]),
}


def _read_idx(name: str, path: Path, ndim: int) -> np.ndarray:
    """Parse an idx file (big-endian header: 0, 0, dtype 0x08 = uint8, ndim; then dims)."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise fail(name, path, f"unreadable file ({type(e).__name__}: {e})") from e
    if len(raw) < 4 + 4 * ndim or raw[:3] != b"\x00\x00\x08" or raw[3] != ndim:
        raise fail(name, path, f"unreadable file: expected an idx header for uint8 with {ndim} dims, got {raw[:4]!r}")
    dims = tuple(int(v) for v in np.frombuffer(raw, ">u4", ndim, 4))
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise fail(
            name, path, f"unreadable file: header says {dims} ({int(np.prod(dims))} bytes), found {data.size} bytes"
        )
    return data.reshape(dims).copy()


def _find_idx(d: Path, stem: str) -> Path | None:
    for p in (d / stem, d / f"{stem}.gz"):
        if p.is_file():
            return p
    return None


def _load_mnist_like(kind: str, root: PathLike | None, split: str) -> ImageSet:
    folder, classes = _MNIST_LIKE[kind]
    name = f"{kind}_{split}"
    if split not in ("train", "test"):
        raise fail(name, root, f"split must be 'train' or 'test', got '{split}'")
    base = require_dir(name, root, f"a directory holding {folder}/raw/")
    prefix = "train" if split == "train" else "t10k"
    for d in (base / folder / "raw", base / "raw", base):
        xi, yi = _find_idx(d, f"{prefix}-images-idx3-ubyte"), _find_idx(d, f"{prefix}-labels-idx1-ubyte")
        if xi and yi:
            x, y = _read_idx(name, xi, 3), _read_idx(name, yi, 1)
            return ImageSet(name, x, y.astype(np.int64), classes, str(xi))
    raise fail(
        name,
        base,
        f"wrong layout: expected {folder}/raw/{prefix}-images-idx3-ubyte[.gz] and {prefix}-labels-idx1-ubyte[.gz]",
    )


@register_loader("mnist")
def load_mnist(root: PathLike | None, *, split: str = "test") -> ImageSet:
    """MNIST from ``<root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``."""
    return _load_mnist_like("mnist", root, split)


@register_loader("fashion_mnist", "fashion-mnist")
def load_fashion_mnist(root: PathLike | None, *, split: str = "test") -> ImageSet:
    """Fashion-MNIST, same idx format under ``<root>/FashionMNIST/raw/``."""
    return _load_mnist_like("fashion_mnist", root, split)


@register_loader("kmnist")
def load_kmnist(root: PathLike | None, *, split: str = "test") -> ImageSet:
    """Kuzushiji-MNIST, same idx format under ``<root>/KMNIST/raw/``."""
    return _load_mnist_like("kmnist", root, split)
