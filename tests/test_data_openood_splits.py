"""OpenOOD v1.5 CIFAR-10 benchmark splits (ood_core.data.openood_splits): names -> rows on tiny fake
sets, the shipped lists, dataset specs with ``openood_split``, the checker, and (with ../shared/data)
equality with the index arrays built there."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from analysis.common import Context
from analysis.datasets import load_named
from ood_core.config import ConfigError, check_row_selection
from ood_core.data import DatasetError, ImageSet
from ood_core.data import openood_splits as oo

# the first ten labels of CIFAR-10's test_batch: cat ship ship airplane frog frog automobile frog cat automobile
OFFICIAL_HEAD = np.array([3, 8, 8, 0, 6, 6, 1, 6, 3, 1])


def cifar(cls: str, k: int) -> str:
    return f"cifar10/test/{cls}/{k:04d}.png"


def tiny_images(n: int) -> np.ndarray:
    return np.zeros((n, 1, 1, 3), dtype=np.uint8)


def official_order_labels(seed: int = 0) -> np.ndarray:
    """A fake CIFAR-10 test label array: 1000 per class, in some interleaved order."""
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(10), 1000))


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


# --------------------------------------------------------------------------- shipped lists


def test_shipped_lists_are_the_source_files():
    assert oo.check_lists() == []
    assert {name: len(oo.read_list(name)) for name in oo.LISTS} == {k: v.lines for k, v in oo.LISTS.items()}
    assert oo.read_list("test_cifar10")[0] == ("cifar10/test/airplane/0298.png", 0)


def test_filename_map_covers_every_image_once():
    m = oo.cifar10_filename_map()
    assert sorted(m) == [(c, k) for c in range(10) for k in range(1, 1001)]
    assert len(set(m.values())) == 10000
    # official test index 3 is the first airplane, index 0 the first cat
    assert m[(0, 1)] == "jetliner_s_001705.png" and m[(3, 1)] == "domestic_cat_s_000907.png"


# --------------------------------------------------------------------------- CIFAR-10


def test_cifar10_rows_from_labels_in_official_order():
    names = [cifar("cat", 1), cifar("cat", 2), cifar("ship", 2), cifar("frog", 3), cifar("airplane", 1)]
    assert oo.cifar10_rows_from_labels(names, OFFICIAL_HEAD).tolist() == [0, 8, 2, 7, 3]


def test_cifar10_rows_from_filenames_use_the_map_and_check_labels():
    name_map = {(3, 1): "a.png", (3, 2): "b.png", (0, 1): "c.png"}
    names = [cifar("cat", 1), cifar("cat", 2), cifar("airplane", 1)]
    rows = oo.cifar10_rows_from_filenames(names, ["b.png", "c.png", "a.png"], np.array([3, 0, 3]), "x", name_map)
    assert rows.tolist() == [2, 0, 1]
    with pytest.raises(ValueError) as e:
        oo.cifar10_rows_from_filenames(names, ["b.png", "c.png", "a.png"], np.array([3, 0, 5]), "x", name_map)
    assert "row 2 has label 5, the list says 3" in one_line(e)
    with pytest.raises(ValueError) as e:
        oo.cifar10_rows_from_filenames(names, ["b.png", "a.png"], None, "x", name_map)
    assert "1 of 3 names not found" in one_line(e) and "c.png" in str(e.value)


def test_openood_rows_cifar10_on_a_fake_official_order_set():
    labels = official_order_labels()
    test, val = oo.openood_rows("cifar10", "test", labels=labels), oo.openood_rows("cifar10", "val", labels=labels)
    assert len(test) == 9000 and len(val) == 1000
    assert np.array_equal(np.sort(np.concatenate([test, val])), np.arange(10000))
    assert np.array_equal(labels[test], [lab for _, lab in oo.read_list("test_cifar10")])
    # the list's first line, airplane/0298, is the 298th airplane of the set
    assert test[0] == np.flatnonzero(labels == 0)[297]


def test_cifar10_errors_name_the_split_and_what_was_expected():
    with pytest.raises(ValueError) as e:
        oo.openood_rows("cifar10", "test")
    assert one_line(e).startswith("OpenOOD split 'test_cifar10': no identifiers; expected")
    with pytest.raises(ValueError) as e:
        oo.openood_rows("cifar10", "val", labels=OFFICIAL_HEAD)
    assert "expected the 10,000 CIFAR-10 test labels in official order" in one_line(e)
    with pytest.raises(ValueError) as e:
        oo.openood_rows("cifar10", "val", filenames=["x.png"] * 3)
    assert "not unique" in one_line(e)
    with pytest.raises(ValueError) as e:
        oo.openood_rows("cifar10", "train", labels=OFFICIAL_HEAD)
    assert "unknown set/split 'cifar10/train'" in one_line(e)
    with pytest.raises(ValueError) as e:
        oo.parse_cifar10(["cifar10/test/kitten/0001.png"], "l")
    assert "cannot parse" in one_line(e)


# --------------------------------------------------------------------------- Tiny-ImageNet, MNIST


def test_tin_rows_by_file_name_in_list_order():
    names = ["tin/val/images/val_0.JPEG", "tin/val/images/val_5.JPEG"]
    assert oo.tin_rows(names, ["n1/val_5.JPEG", "val_0.JPEG", "val_2.JPEG"]).tolist() == [1, 0]
    with pytest.raises(ValueError) as e:
        oo.tin_rows(names, ["val_0.JPEG", "val_2.JPEG"], "test_tin")
    assert one_line(e).startswith("OpenOOD split 'test_tin': 1 of 2 names not found") and "val_5.JPEG" in str(e.value)
    with pytest.raises(ValueError) as e:
        oo.openood_rows("tin", "val", labels=np.zeros(3))
    assert "expected the Tiny-ImageNet val file names" in one_line(e)


def test_mnist_rows_are_test_indices_and_skip_train_lines():
    names = ["mnist/test/7_2.jpg", "mnist/train/1_5.jpg", "mnist/test/3_0.jpg"]
    assert oo.mnist_rows(names, 3, np.array([3, 0, 7])).tolist() == [2, 0]
    with pytest.raises(ValueError) as e:
        oo.mnist_rows(names, 3, np.array([3, 0, 1]), "test_mnist")
    assert "row 2 has label 1, the list says 7" in one_line(e)
    with pytest.raises(ValueError) as e:
        oo.mnist_rows(names, 2, None, "test_mnist")
    assert "the data set has 2 rows" in one_line(e)
    with pytest.raises(ValueError) as e:
        oo.openood_rows("mnist", "test")
    assert one_line(e).startswith("OpenOOD split 'test_mnist': no identifiers")


# --------------------------------------------------------------------------- fake compact npz files


def mnist_digits() -> np.ndarray:
    """Labels of a fake MNIST test set that agree with the digits in OpenOOD's list."""
    idx, digit = oo.parse_mnist(oo.list_names("test_mnist"))
    y = np.zeros(10000, dtype=np.int64)
    y[idx] = digit
    return y


def write_fake_npz_files(root: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """cifar10_test.npz (sorted by class + file name, like the shared copy), a shuffled TIN val and
    an MNIST test set; returns the CIFAR file names per row."""
    rng = np.random.default_rng(seed)
    pairs = sorted((c, f) for (c, _), f in oo.cifar10_filename_map().items())
    y, fn = np.array([c for c, _ in pairs]), np.array([f for _, f in pairs])
    np.savez(root / "cifar10_test.npz", x=tiny_images(10000), y=y, filenames=fn)
    tin = np.array([f"val_{i}.JPEG" for i in rng.permutation(10000)])
    np.savez(root / "tinyimagenet_val_resize32.npz", x=tiny_images(10000), y=np.zeros(10000, int), filenames=tin)
    np.savez(root / "mnist_test.npz", x=np.zeros((10000, 1, 1), np.uint8), y=mnist_digits())
    return {"cifar10": fn, "tin": tin}


def context(root: Path, specs: dict[str, dict]) -> Context:
    cfg = {"seed": 0, "data": {"train": specs["train"], "id_test": specs["id_test"], "ood": specs["ood"]}}
    cfg["data"]["verify_manifest"] = False
    return Context(cfg, "t", root, root, root, root, "cpu", False)


def test_specs_select_openood_rows_by_identifier(tmp_path):
    files = write_fake_npz_files(tmp_path)
    specs = {
        "train": {"kind": "npz", "path": "cifar10_test.npz"},
        "id_test": {"kind": "npz", "path": "cifar10_test.npz", "openood_split": "test_cifar10"},
        "ood": {
            "id_val": {"kind": "npz", "path": "cifar10_test.npz", "openood_split": "val_cifar10"},
            "tin": {"kind": "npz", "path": "tinyimagenet_val_resize32.npz", "openood_split": "test_tin"},
            "val_tin": {"kind": "npz", "path": "tinyimagenet_val_resize32.npz", "openood_split": "val_tin"},
            "mnist": {"kind": "npz", "path": "mnist_test.npz", "openood_split": "test_mnist"},
        },
    }
    ctx = context(tmp_path, specs)
    sizes = {name: len(load_named(ctx, name)) for name in ("id_test", "id_val", "tin", "val_tin", "mnist")}
    assert sizes == {"id_test": 9000, "id_val": 1000, "tin": 7793, "val_tin": 1000, "mnist": 10000}
    # the id_test rows are the mapped file names, in list order
    m = oo.cifar10_filename_map()
    cls, rank = oo.parse_cifar10(oo.list_names("test_cifar10"))
    rows = oo.openood_rows("cifar10", "test", filenames=files["cifar10"])
    assert files["cifar10"][rows].tolist() == [m[k] for k in zip(cls.tolist(), rank.tolist())]
    tin_rows = oo.openood_rows("tin", "test", filenames=files["tin"])
    assert files["tin"][tin_rows].tolist() == oo.parse_tin(oo.list_names("test_tin"))


def test_spec_errors_are_one_line(tmp_path):
    write_fake_npz_files(tmp_path)
    np.savez(tmp_path / "plain.npz", x=tiny_images(10000), y=official_order_labels())
    specs = {
        "train": {"kind": "npz", "path": "cifar10_test.npz"},
        "id_test": {"kind": "npz", "path": "cifar10_test.npz", "openood_split": "test_cifar10", "rows": 100},
        "ood": {
            "no_names": {"kind": "npz", "path": "plain.npz", "openood_split": "test_cifar10"},
            "unknown": {"kind": "npz", "path": "cifar10_test.npz", "openood_split": "test_svhn"},
            "wrong_set": {"kind": "npz", "path": "cifar10_test.npz", "openood_split": "test_tin"},
        },
    }
    ctx = context(tmp_path, specs)
    with pytest.raises(ConfigError) as e:
        load_named(ctx, "id_test")
    assert one_line(e) == "data.id_test: 'openood_split' and 'rows' both select rows; give one of them"
    with pytest.raises(DatasetError) as e:
        load_named(ctx, "no_names")
    assert "OpenOOD split 'test_cifar10': plain.npz has no 'filenames' array" in one_line(e)
    with pytest.raises(DatasetError) as e:
        load_named(ctx, "unknown")
    assert "OpenOOD split 'test_svhn': unknown list; expected one of test_cifar10" in one_line(e)
    with pytest.raises(DatasetError) as e:
        load_named(ctx, "wrong_set")
    assert "names not found among the data set's 10000 file names" in one_line(e)
    with pytest.raises(ConfigError) as e:
        check_row_selection({"kind": "npz", "openood_split": 1}, "f.yaml: data.x")
    assert "openood_split must be an OpenOOD list name" in one_line(e)


def test_torchvision_and_image_folder_kinds(tmp_path):
    labels = official_order_labels(1)
    ds = ImageSet("c", tiny_images(10000), labels)
    val = oo.select("cifar10", None, {"split": "test"}, ds, "val_cifar10")
    assert np.array_equal(val.labels, [lab for _, lab in oo.read_list("val_cifar10")])
    with pytest.raises(DatasetError) as e:
        oo.select("cifar10", None, {"split": "train"}, ds, "val_cifar10")
    assert "expected split: test" in one_line(e)
    mnist = ImageSet("m", np.zeros((10000, 1, 1), np.uint8), mnist_digits())
    assert len(oo.select("mnist", None, {}, mnist, "test_mnist")) == 10000
    # Tiny-ImageNet val sorted into class folders: rows follow the loader's (sorted) file order
    for i in range(6):
        d = tmp_path / f"n{i % 2}"
        d.mkdir(exist_ok=True)
        (d / f"val_{i}.JPEG").touch()
    files = sorted(tmp_path.glob("n*/*.JPEG"))
    tin = ImageSet("t", tiny_images(6), np.zeros(6, int))
    names = ["tin/val/images/val_3.JPEG", "tin/val/images/val_0.JPEG"]
    rows = oo.tin_rows(names, oo.identifiers("image_folder", tmp_path, {}, tin, "val_tin")["filenames"])
    assert [files[r].name for r in rows] == ["val_3.JPEG", "val_0.JPEG"]
    with pytest.raises(DatasetError) as e:
        oo.select("digits", None, {}, tin, "test_tin")
    assert "kind 'digits' carries no identifiers" in one_line(e)


def test_checker_passes_on_fake_files_and_reports_each_problem(tmp_path, capsys):
    write_fake_npz_files(tmp_path)
    assert oo.main(["--check", "--data-root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.count("\nok   ") + out.startswith("ok   ") == 3 and "all checks passed" in out
    with np.load(tmp_path / "mnist_test.npz") as z:
        y = z["y"].copy()
    y[5] = (y[5] + 1) % 10
    np.savez(tmp_path / "mnist_test.npz", x=np.zeros((10000, 1, 1), np.uint8), y=y)
    assert oo.main(["--check", "--data-root", str(tmp_path)]) == 1
    fails = [line for line in capsys.readouterr().out.splitlines() if line.startswith("FAIL")]
    assert (
        len(fails) == 1 and "mnist_test.npz: OpenOOD split 'test_mnist': 1 of 10000 rows have another label" in fails[0]
    )
    assert oo.main(["--check", "--data-root", str(tmp_path / "empty")]) == 1


# --------------------------------------------------------------------------- the shared data


@pytest.mark.shared_data
def test_rows_equal_the_shared_index_arrays(shared_data):
    index = shared_data / oo.SHARED_INDEX_DIR
    if not index.is_dir():
        pytest.skip(f"{index} not found")
    for dataset in oo.NPZ_FILES:
        rows, _ = oo.derive_rows(shared_data, dataset)
        for name, r in rows.items():
            file, key = oo.SHARED_INDEX[name]
            with np.load(index / file) as z:
                assert np.array_equal(r, z[key]), name
    # the official-order path gives the same images: any order that keeps each class's official order
    with np.load(index / "cifar10_test_openood.npz") as s, np.load(shared_data / "cifar10_test.npz") as d:
        y, rank, test_rows, val_rows = d["y"], s["npz_row_class_rank1"], s["test_rows"], s["val_rows"]
    order = np.lexsort((y, rank))
    assert np.array_equal(order[oo.openood_rows("cifar10", "test", labels=y[order])], test_rows)
    assert np.array_equal(order[oo.openood_rows("cifar10", "val", labels=y[order])], val_rows)
    report, problems = oo.check_data_root(shared_data)
    assert problems == [] and len(report) == 3, report + problems
