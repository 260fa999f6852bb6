"""OpenOOD v1.5's CIFAR-10 benchmark splits, found in a data set by identifiers, not by row order.

The lists are OpenOOD's own image lists, shipped unmodified in ``openood_v1_5/`` (source, commit and
git blob ids in its README.md). Each list is named ``<split>_<set>``:

    test_cifar10 (9,000)   val_cifar10 (1,000)   test_cifar10_full (10,000)   ID: CIFAR-10 test
    test_tin (7,793)       val_tin (1,000)                                     near-OOD: Tiny-ImageNet val
    test_mnist (10,000 of its 70,000 lines: the ``mnist/test/`` ones)          far-OOD: MNIST test

How a list line becomes a row of a user's data set (rows come back in list order):

* CIFAR-10: OpenOOD's ``cifar10/test/<class>/NNNN.png`` is the NNNN-th (1-based) test image of that
  class in the official ``test_batch`` order (= torchvision ``CIFAR10(train=False)``). Given labels in
  that order, the row is the NNNN-th occurrence of the class. Given original CIFAR file names (e.g.
  ``jetliner_s_001705.png``, the ``filenames`` array of a compact npz sorted by class and name), the
  shipped map ``cifar10_test_filenames.txt.gz`` (``<class>/NNNN.png <original file name>``, built by
  matching every image to the official per-class order) names the row. Assumption, not checked pixel
  by pixel against OpenOOD's own PNGs (not obtainable here): OpenOOD numbered its files this way, as
  cifar2png does and as glhr/ood-labelnoise used it with OpenOOD's images. Were it otherwise, every
  row's class would still be right but the 900 / 100 per class in test / val would be other images.
* Tiny-ImageNet: the list names the original validation files ``val_N.JPEG``; rows are those whose
  file name (base name) matches.
* MNIST: ``mnist/test/<digit>_<i>.jpg`` is the official t10k test image ``i``; the row is ``i`` of a
  set in official order, and the digit must equal the label. The list's 60,000 ``mnist/train/``
  lines are not used (the benchmark's MNIST OOD set is train + test; only the test part is mapped).

``python -m ood_core.data.openood_splits --check --data-root DIR`` re-derives the rows for the compact
npz files in DIR and checks them (see :func:`check_data_root`).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import re
import sys
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np

from ood_core.data.base import DatasetError, ImageSet, PathLike
from ood_core.data.folders import list_image_folder

LIST_DIR = Path(__file__).resolve().parent / "openood_v1_5"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_FILENAME_MAP = "cifar10_test_filenames.txt.gz"


class OpenOODList(NamedTuple):
    dataset: str  # cifar10 / tin / mnist
    split: str  # test / val / full
    lines: int  # lines of the list
    rows: int  # rows it selects (MNIST: only its mnist/test/ lines)
    blob: str  # git blob SHA-1 of the uncompressed list in the source repository


LISTS: dict[str, OpenOODList] = {
    "test_cifar10": OpenOODList("cifar10", "test", 9000, 9000, "536130b5346f1cf099650bd4b0a0e6e6f0ee7062"),
    "val_cifar10": OpenOODList("cifar10", "val", 1000, 1000, "2266713ddd407633c70e1a53f48bb168bfcd1a28"),
    "test_cifar10_full": OpenOODList("cifar10", "full", 10000, 10000, "823873de66c4b3bef7f9399512637989b8603156"),
    "test_tin": OpenOODList("tin", "test", 7793, 7793, "a2f61b588e389214a6ba53d58b2701447bbbb02c"),
    "val_tin": OpenOODList("tin", "val", 1000, 1000, "ad0319761fc7b6a7a71e6d80a0b6953dc811bf1b"),
    "test_mnist": OpenOODList("mnist", "test", 70000, 10000, "ec8069e7b220b979a5142c346e437ce06c899dae"),
}

_CIFAR_NAME = re.compile(r"cifar10/test/([a-z]+)/(\d{4})\.png")
_TIN_NAME = re.compile(r"tin/val/images/(val_\d+\.JPEG)")
_MNIST_NAME = re.compile(r"mnist/(train|test)/(\d)_(\d+)\.jpg")


def _error(list_name: str, what: str) -> DatasetError:
    return DatasetError(f"OpenOOD split '{list_name}': {what}".replace("\n", " "))


def list_name(dataset_name: str, split: str) -> str:
    """The OpenOOD list of ``split`` (test / val / full) of ``dataset_name`` (cifar10 / tin / mnist)."""
    for name, lst in LISTS.items():
        if (lst.dataset, lst.split) == (dataset_name, split):
            return name
    known = ", ".join(f"{lst.dataset}/{lst.split}" for lst in LISTS.values())
    raise _error(f"{split}_{dataset_name}", f"unknown set/split '{dataset_name}/{split}'; known: {known}")


def list_set(name: str) -> str:
    """The data set (cifar10 / tin / mnist) a list name such as ``test_tin`` belongs to."""
    if name not in LISTS:
        raise _error(str(name), f"unknown list; expected one of {', '.join(LISTS)}")
    return LISTS[name].dataset


@lru_cache(maxsize=None)
def read_list(name: str) -> tuple[tuple[str, int], ...]:
    """The lines ``(image path, label)`` of a shipped OpenOOD list, in file order."""
    list_set(name)
    text = gzip.decompress((LIST_DIR / f"{name}.txt.gz").read_bytes()).decode("ascii")
    out = []
    for line in text.splitlines():
        path, label = line.split(" ")
        out.append((path, int(label)))
    return tuple(out)


def list_names(name: str) -> list[str]:
    """The image paths of a shipped OpenOOD list, in file order."""
    return [path for path, _ in read_list(name)]


def git_blob_sha1(data: bytes) -> str:
    """Git's object id of a file with contents ``data``."""
    return hashlib.sha1(b"blob %d\x00" % len(data) + data).hexdigest()


# --------------------------------------------------------------------------- parsing OpenOOD names


def parse_cifar10(names: Sequence[str], list_label: str = "names") -> tuple[np.ndarray, np.ndarray]:
    """(class index, 1-based per-class rank NNNN) of each ``cifar10/test/<class>/NNNN.png``."""
    cls, rank = [], []
    for n in names:
        m = _CIFAR_NAME.fullmatch(n)
        if not m or m.group(1) not in CIFAR10_CLASSES or int(m.group(2)) < 1:
            raise _error(list_label, f"cannot parse {n!r}; expected cifar10/test/<class>/NNNN.png")
        cls.append(CIFAR10_CLASSES.index(m.group(1)))
        rank.append(int(m.group(2)))
    return np.asarray(cls, dtype=np.int64), np.asarray(rank, dtype=np.int64)


def parse_tin(names: Sequence[str], list_label: str = "names") -> list[str]:
    """The file name ``val_N.JPEG`` of each ``tin/val/images/val_N.JPEG``."""
    out = []
    for n in names:
        m = _TIN_NAME.fullmatch(n)
        if not m:
            raise _error(list_label, f"cannot parse {n!r}; expected tin/val/images/val_N.JPEG")
        out.append(m.group(1))
    return out


def parse_mnist(names: Sequence[str], list_label: str = "names") -> tuple[np.ndarray, np.ndarray]:
    """(official test index, digit) of each ``mnist/test/<digit>_<i>.jpg``; ``mnist/train/`` names
    are skipped (no training set is mapped)."""
    idx, digit = [], []
    for n in names:
        m = _MNIST_NAME.fullmatch(n)
        if not m:
            raise _error(list_label, f"cannot parse {n!r}; expected mnist/(train|test)/<digit>_<i>.jpg")
        if m.group(1) == "test":
            idx.append(int(m.group(3)))
            digit.append(int(m.group(2)))
    return np.asarray(idx, dtype=np.int64), np.asarray(digit, dtype=np.int64)


@lru_cache(maxsize=None)
def cifar10_filename_map() -> dict[tuple[int, int], str]:
    """(class index, per-class rank NNNN) -> original CIFAR-10 test file name, from the shipped map."""
    text = gzip.decompress((LIST_DIR / CIFAR10_FILENAME_MAP).read_bytes()).decode("ascii")
    names, files = zip(*(line.split(" ") for line in text.splitlines()))
    cls, rank = parse_cifar10([f"cifar10/test/{n}" for n in names], CIFAR10_FILENAME_MAP)
    return dict(zip(zip(cls.tolist(), rank.tolist()), files))


# --------------------------------------------------------------------------- names -> rows


def _positions(wanted: Sequence[str], have: Sequence[str], list_label: str, what: str) -> np.ndarray:
    """Index in ``have`` of every name in ``wanted``; one error naming the first missing ones."""
    have = [Path(str(h)).name for h in have]
    pos = {h: i for i, h in enumerate(have)}
    if len(pos) != len(have):
        dup = sorted(h for h, k in Counter(have).items() if k > 1)[:3]
        raise _error(list_label, f"the data set's file names are not unique (e.g. {dup}); expected one row per {what}")
    missing = [w for w in wanted if w not in pos]
    if missing:
        raise _error(
            list_label,
            f"{len(missing)} of {len(wanted)} names not found among the data set's {len(have)} file names "
            f"(first: {missing[:3]}); expected {what}",
        )
    return np.asarray([pos[w] for w in wanted], dtype=np.int64)


def _check_labels(rows: np.ndarray, expected: np.ndarray, labels: np.ndarray | None, list_label: str) -> None:
    if labels is None:
        return
    got = np.asarray(labels)[rows]
    bad = np.flatnonzero(got != expected)
    if bad.size:
        i = int(bad[0])
        raise _error(
            list_label,
            f"{bad.size} of {len(rows)} rows have another label than the list (first: row {int(rows[i])} has "
            f"label {int(got[i])}, the list says {int(expected[i])}); expected the same images as OpenOOD",
        )


def cifar10_rows_from_labels(names: Sequence[str], labels: np.ndarray, list_label: str = "names") -> np.ndarray:
    """Rows of CIFAR-10 OpenOOD ``names`` in a set whose ``labels`` are in official test_batch order:
    the NNNN-th occurrence of the name's class."""
    cls, rank = parse_cifar10(names, list_label)
    labels = np.asarray(labels)
    rows = np.empty(len(cls), dtype=np.int64)
    for c in np.unique(cls):
        occ = np.flatnonzero(labels == c)
        sel = cls == c
        too_big = rank[sel] > len(occ)
        if too_big.any():
            raise _error(
                list_label,
                f"class {CIFAR10_CLASSES[c]} has {len(occ)} rows, the list asks for its image "
                f"{int(rank[sel][too_big].max())}; expected the 10,000 CIFAR-10 test labels in official order",
            )
        rows[sel] = occ[rank[sel] - 1]
    return rows


def cifar10_rows_from_filenames(
    names: Sequence[str],
    filenames: Sequence[str],
    labels: np.ndarray | None = None,
    list_label: str = "names",
    name_map: dict[tuple[int, int], str] | None = None,
) -> np.ndarray:
    """Rows of CIFAR-10 OpenOOD ``names`` in a set holding original CIFAR-10 test ``filenames``
    (``name_map``: the shipped :func:`cifar10_filename_map`); ``labels``, if given, must agree."""
    cls, rank = parse_cifar10(names, list_label)
    name_map = cifar10_filename_map() if name_map is None else name_map
    unknown = [n for n, k in zip(names, zip(cls.tolist(), rank.tolist())) if k not in name_map]
    if unknown:
        raise _error(list_label, f"{len(unknown)} names are not in the file-name map (first: {unknown[:3]})")
    wanted = [name_map[k] for k in zip(cls.tolist(), rank.tolist())]
    rows = _positions(
        wanted, filenames, list_label, "the original CIFAR-10 test file names (e.g. jetliner_s_001705.png)"
    )
    _check_labels(rows, cls, labels, list_label)
    return rows


def tin_rows(names: Sequence[str], filenames: Sequence[str], list_label: str = "names") -> np.ndarray:
    """Rows of Tiny-ImageNet OpenOOD ``names`` in a set holding TIN val file names (``val_N.JPEG``,
    optionally with folders before them)."""
    return _positions(parse_tin(names, list_label), filenames, list_label, "Tiny-ImageNet val file names val_N.JPEG")


def mnist_rows(names: Sequence[str], n: int, labels: np.ndarray | None = None, list_label: str = "names") -> np.ndarray:
    """Rows of MNIST OpenOOD ``names`` in a set of ``n`` images in official t10k order (``mnist/test/``
    names only); ``labels``, if given, must equal the digits in the names."""
    idx, digit = parse_mnist(names, list_label)
    if idx.size and int(idx.max()) >= n:
        raise _error(
            list_label,
            f"the list names test image {int(idx.max())}, the data set has {n} rows; "
            "expected the 10,000 MNIST test images in official order",
        )
    _check_labels(idx, digit, labels, list_label)
    return idx


def openood_rows(
    dataset_name: str,
    split: str,
    *,
    labels: np.ndarray | None = None,
    filenames: Sequence[str] | None = None,
    n: int | None = None,
) -> np.ndarray:
    """Rows (int64, in list order) of OpenOOD split ``split`` (test / val / full) of ``dataset_name``
    (cifar10 / tin / mnist) in a user's data set, found by its identifiers:

    * cifar10: ``filenames`` (original CIFAR-10 file names; ``labels`` then only checked), else
      ``labels`` in official test_batch order;
    * tin: ``filenames`` (``val_N.JPEG``);
    * mnist: ``n`` rows in official t10k order (default ``len(labels)``); ``labels`` checked if given.
    """
    name = list_name(dataset_name, split)
    names = list_names(name)
    if dataset_name == "cifar10":
        if filenames is not None:
            return cifar10_rows_from_filenames(names, filenames, labels, name)
        if labels is None:
            raise _error(name, "no identifiers; expected original CIFAR-10 file names or labels in official order")
        return cifar10_rows_from_labels(names, labels, name)
    if dataset_name == "tin":
        if filenames is None:
            raise _error(name, "no identifiers; expected the Tiny-ImageNet val file names (val_N.JPEG) of every row")
        return tin_rows(names, filenames, name)
    n = len(labels) if n is None and labels is not None else n
    if n is None:
        raise _error(name, "no identifiers; expected the number of rows of an MNIST test set in official order")
    return mnist_rows(names, n, labels, name)


# --------------------------------------------------------------------------- data set specs


def npz_filenames(path: PathLike) -> np.ndarray | None:
    """The ``filenames`` array of an npz archive, or None if it has none."""
    with np.load(path, allow_pickle=False) as z:
        return z["filenames"] if "filenames" in z.files else None


def _has_cifar10_labels(ds: ImageSet) -> bool:
    return ds.class_names is None or tuple(ds.class_names) == CIFAR10_CLASSES


def identifiers(kind: str, root: PathLike | None, options: dict[str, Any], ds: ImageSet, name: str) -> dict[str, Any]:
    """The identifiers :func:`openood_rows` needs for OpenOOD list ``name`` in data set ``ds``, loaded
    by loader ``kind`` from ``root`` with ``options``."""
    dataset = list_set(name)
    labels = ds.labels if dataset == "mnist" or _has_cifar10_labels(ds) else None
    base = Path(str(root)).expanduser()
    if kind == "npz":
        path = base / options["file"] if options.get("file") else base
        filenames = npz_filenames(path)
        if dataset != "mnist" and filenames is None:
            raise _error(name, f"{path.name} has no 'filenames' array; expected the original file name of every row")
        return {"labels": labels if dataset == "cifar10" else None, "filenames": filenames, "n": len(ds)}
    if kind in ("cifar10", "mnist") and kind == dataset:
        if options.get("split", "test") != "test":
            raise _error(name, f"kind '{kind}' with split '{options['split']}'; expected split: test")
        return {"labels": labels, "n": len(ds)}
    if kind == "image_folder" and dataset != "mnist":
        files, _, _ = list_image_folder(base, options.get("max_per_class"))
        return {"labels": labels if dataset == "cifar10" else None, "filenames": [p.name for p in files]}
    raise _error(
        name,
        f"kind '{kind}' carries no identifiers for this {dataset} list; expected npz (with filenames), "
        "image_folder (file names), or the torchvision cifar10 / mnist kinds (official order)",
    )


def select(kind: str, root: PathLike | None, options: dict[str, Any], ds: ImageSet, name: str) -> ImageSet:
    """The rows of ``ds`` in OpenOOD list ``name`` (e.g. ``test_cifar10``), in list order."""
    list_set(name)  # an unknown list name is one error line
    lst = LISTS[name]
    return ds.take(openood_rows(lst.dataset, lst.split, **identifiers(kind, root, options, ds, name)))


# --------------------------------------------------------------------------- checker

# the compact npz file each set is checked on
NPZ_FILES = {"cifar10": "cifar10_test.npz", "tin": "tinyimagenet_val_resize32.npz", "mnist": "mnist_test.npz"}
MATCHED_BY = {
    "cifar10": "found by file name, labels agree with the list",
    "tin": "found by file name",
    "mnist": "row = test index, labels agree with the digits in the list",
}
# a folder of index arrays over the same npz files (OpenOOD v1.5 lists mapped by other means), if present
SHARED_INDEX_DIR = "openood_v1.5_lists"
SHARED_INDEX = {
    "test_cifar10": ("cifar10_test_openood.npz", "test_rows"),
    "val_cifar10": ("cifar10_test_openood.npz", "val_rows"),
    "test_cifar10_full": ("cifar10_test_openood.npz", "full_rows"),
    "test_tin": ("tinyimagenet_val_openood.npz", "test_rows"),
    "val_tin": ("tinyimagenet_val_openood.npz", "val_rows"),
    "test_mnist": ("mnist_test_openood.npz", "test_rows"),
}


def check_lists() -> list[str]:
    """Problems with the shipped lists: git blob id (the source repo's) and line count."""
    problems = []
    for name, lst in LISTS.items():
        data = gzip.decompress((LIST_DIR / f"{name}.txt.gz").read_bytes())
        if git_blob_sha1(data) != lst.blob:
            problems.append(
                f"{name}.txt.gz: git blob {git_blob_sha1(data)[:12]}, expected {lst.blob[:12]} (source repo)"
            )
        if len(data.splitlines()) != lst.lines:
            problems.append(f"{name}.txt.gz: {len(data.splitlines())} lines, expected {lst.lines}")
    return problems


def derive_rows(data_root: Path, dataset: str) -> tuple[dict[str, np.ndarray], int]:
    """(rows of every list of ``dataset`` in its compact npz under ``data_root``, labels checked;
    the npz's number of rows)."""
    with np.load(data_root / NPZ_FILES[dataset], allow_pickle=False) as z:
        labels = z["y"]
        filenames = z["filenames"] if "filenames" in z.files else None
    rows = {
        name: openood_rows(dataset, lst.split, labels=labels, filenames=filenames, n=len(labels))
        for name, lst in LISTS.items()
        if lst.dataset == dataset
    }
    return rows, len(labels)


def check_rows(dataset: str, rows: dict[str, np.ndarray], n: int) -> list[str]:
    """Problems with the derived rows of ``dataset``: counts, uniqueness, range, test/val
    disjointness, and test + val == full where a full list exists."""
    problems = []
    for name, r in rows.items():
        if len(r) != LISTS[name].rows:
            problems.append(f"{name}: {len(r)} rows, expected {LISTS[name].rows}")
        if len(np.unique(r)) != len(r) or (r.size and (r.min() < 0 or r.max() >= n)):
            problems.append(f"{name}: rows not unique or outside 0..{n - 1}")
    by_split = {LISTS[name].split: r for name, r in rows.items()}
    test, val, full = by_split.get("test"), by_split.get("val"), by_split.get("full")
    if test is not None and val is not None:
        common = np.intersect1d(test, val).size
        if common:
            problems.append(f"{dataset}: test and val share {common} rows")
        if full is not None and not np.array_equal(np.sort(np.concatenate([test, val])), np.sort(full)):
            problems.append(f"{dataset}: test + val rows differ from the full list's rows")
    return problems


def compare_shared(rows: dict[str, np.ndarray], index_dir: Path) -> list[str]:
    """Problems: derived rows that differ from the index arrays in ``index_dir``."""
    problems = []
    for name, r in rows.items():
        file, key = SHARED_INDEX[name]
        with np.load(index_dir / file, allow_pickle=False) as z:
            if not np.array_equal(z[key], r):
                problems.append(f"{name}: rows differ from {SHARED_INDEX_DIR}/{file}:{key}")
    return problems


def check_data_root(data_root: Path) -> tuple[list[str], list[str]]:
    """(report lines, problems) of the checker on the compact npz files in ``data_root``."""
    report, problems = [], check_lists()
    index_dir = data_root / SHARED_INDEX_DIR
    for dataset, file in NPZ_FILES.items():
        if not (data_root / file).is_file():
            report.append(f"skip {dataset}: {file} not found in {data_root}")
            continue
        try:
            rows, n = derive_rows(data_root, dataset)
        except (DatasetError, OSError, KeyError) as e:
            problems.append(f"{file}: {e}")
            continue
        found = check_rows(dataset, rows, n) + (compare_shared(rows, index_dir) if index_dir.is_dir() else [])
        problems += found
        counts = ", ".join(f"{k} {len(v)}" for k, v in rows.items())
        checked = "unique" + (", test/val disjoint" if len(rows) > 1 else "")
        checked += f", equal to {SHARED_INDEX_DIR}" if index_dir.is_dir() else ""
        report.append(f"{'FAIL' if found else 'ok  '} {file}: {counts}; {MATCHED_BY[dataset]}; {checked}")
    if not any(line.startswith(("ok", "FAIL")) for line in report):
        problems.append(f"none of {', '.join(NPZ_FILES.values())} found in {data_root}")
    return report, problems


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ood_core.data.openood_splits", description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="re-derive the rows for the npz files in --data-root")
    p.add_argument("--data-root", type=Path, help="folder holding cifar10_test.npz etc.")
    args = p.parse_args(argv)
    if not args.check or args.data_root is None:
        p.error("use --check --data-root DIR")
    report, problems = check_data_root(args.data_root)
    print("\n".join(report + [f"FAIL {line}" for line in problems]))
    print(f"{len(problems)} problem(s)" if problems else "all checks passed")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
