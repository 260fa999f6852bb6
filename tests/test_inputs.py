"""ood_core.api.inputs: a user's data (arrays, tensors, Dataset, DataLoader) as a batch source (issue #17)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

from ood_core.api.inputs import DatasetSource, InputError, TensorSource, as_source, check_compatible
from ood_core.data import ImageSet
from ood_core.data.sources import BatchSource, Preprocess, PreprocessedImages

N = 10
PRE = Preprocess(size=8, channels=3, mean=[0.5, 0.4, 0.3], std=[0.2, 0.25, 0.3])


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(N, 8, 8, 3), dtype=np.uint8)
    labels = rng.integers(0, 4, size=N).astype(np.int64)
    floats = PRE(images, None)  # the same content as preprocessed model inputs (N, 3, 8, 8)
    return images, labels, floats


def _read(src: BatchSource, batch_size: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    xs, ys = zip(*src.batches(batch_size))
    return list(xs), list(ys)


class ItemsWithExtras(Dataset):
    """Items (x, y, extra): the extra fields are ignored."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i]), f"item{i}"


class XOnly(Dataset):
    def __init__(self, x):
        self.x = x

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i]


class Stream(IterableDataset):
    def __iter__(self):
        yield torch.zeros(3, 8, 8)


def _labelled_sources(data) -> dict[str, BatchSource]:
    images, labels, floats = data
    tds = TensorDataset(floats, torch.from_numpy(labels))
    return {
        "u8_tuple": as_source((images, labels), name="s", preprocess=PRE),
        "imageset": as_source(ImageSet("orig", images, labels), name="s", preprocess=PRE),
        "float_tuple_numpy": as_source((floats.numpy(), labels), name="s"),
        "float64_tuple_torch": as_source((floats.double(), torch.from_numpy(labels)), name="s"),
        "tensor_dataset": as_source(tds, name="s"),
        "items_with_extras": as_source(ItemsWithExtras(floats, labels), name="s"),
        "dataloader": as_source(DataLoader(tds, batch_size=4), name="s"),
    }


@pytest.mark.parametrize("batch_size", [3, 4, 7, 10, 64])
def test_every_input_type_gives_identical_batches(data, batch_size):
    images, labels, floats = data
    sources = _labelled_sources(data)
    assert isinstance(sources["imageset"], PreprocessedImages) and sources["imageset"].name == "s"
    assert isinstance(sources["float_tuple_numpy"], TensorSource)
    assert isinstance(sources["dataloader"], DatasetSource)
    sizes = [min(batch_size, N - s) for s in range(0, N, batch_size)]
    for kind, src in sources.items():
        assert isinstance(src, BatchSource) and len(src) == N and src.name == "s", kind
        xs, ys = _read(src, batch_size)
        assert [x.shape[0] for x in xs] == sizes, kind
        assert all(x.dtype == torch.float32 and x.shape[1:] == (3, 8, 8) for x in xs), kind
        assert all(y.dtype == torch.int64 for y in ys), kind
        assert torch.equal(torch.cat(xs), floats), kind
        assert torch.equal(torch.cat(ys), torch.from_numpy(labels)), kind


def test_unlabelled_inputs_get_label_minus_one(data):
    images, _, floats = data
    for src in (
        as_source(images, name="u", preprocess=PRE),
        as_source(images[..., 0], name="u", preprocess=Preprocess(8, 1, [0.5], [0.2])),  # (N, H, W)
        as_source(torch.from_numpy(images), name="u", preprocess=PRE),
        as_source(floats, name="u"),
        as_source(XOnly(floats), name="u"),
    ):
        xs, ys = _read(src, 4)
        assert torch.equal(torch.cat(ys), torch.full((N,), -1, dtype=torch.int64))
        assert torch.cat(xs).shape[0] == N


def test_batch_source_is_returned_as_is(data):
    src = TensorSource("t", data[2])
    assert as_source(src, name="other") is src


def test_tensor_source_rows_is_a_view_and_take_a_copy(data):
    floats = data[2]
    src = as_source((floats, data[1]), name="t")
    assert src.x.data_ptr() == floats.data_ptr()  # float32 input: not copied
    block = src.rows(2, 7)
    assert len(block) == 5 and block.x.data_ptr() == floats[2].data_ptr()
    assert torch.equal(next(block.batches(2))[0], floats[2:4])
    rows = np.array([9, 0, 4])
    sub = src.take(rows)
    assert torch.equal(sub.x, floats[rows]) and torch.equal(sub.y, torch.from_numpy(data[1][rows]))
    assert sub.x.data_ptr() != floats.data_ptr() and sub.y.dtype == torch.int64
    sub.x.zero_()
    assert floats.abs().sum() > 0  # a copy


@pytest.mark.parametrize("kind", ["tensor_dataset", "dataloader", "imageset"])
def test_take_and_rows_of_other_sources(data, kind):
    _, labels, floats = data
    src = _labelled_sources(data)[kind]
    rows = np.array([7, 1, 1, 5])
    xs, ys = _read(src.take(rows), 3)
    assert torch.equal(torch.cat(xs), floats[rows]) and torch.equal(torch.cat(ys), torch.from_numpy(labels[rows]))
    xs, ys = _read(src.rows(3, 9).rows(1, 4), 2)
    assert torch.equal(torch.cat(xs), floats[4:7]) and torch.equal(torch.cat(ys), torch.from_numpy(labels[4:7]))


# --------------------------------------------------------------------------------------------------
# errors


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg and isinstance(e.value, ValueError)
    return msg


@pytest.mark.parametrize("batch_size", [3, 4])
@pytest.mark.parametrize("kind", ["tensor", "dataset"])
def test_nan_names_the_set_and_global_row(data, kind, batch_size):
    floats = data[2].clone()
    floats[7, 1, 2, 3] = float("nan")
    floats[8, 0, 0, 0] = float("inf")
    src = as_source(floats, name="noisy") if kind == "tensor" else as_source(XOnly(floats), name="noisy")
    for s in (src, src.rows(5, 10), src.rows(5, 10).rows(1, 5), src.take(np.array([9, 7, 1]))):
        with pytest.raises(InputError) as e:
            list(s.batches(batch_size))
        assert "set 'noisy': x has NaN or inf at row 7" in _one_line(e)
    with pytest.raises(InputError, match="at row 8"):
        list(src.take(np.array([0, 8])).batches(batch_size))
    assert len(list(src.rows(0, 7).batches(batch_size))) == -(-7 // batch_size)  # clean rows read fine


def test_unaccepted_types_name_the_set_and_what_is_accepted():
    for bad, what in [
        ([1, 2, 3], "a list"),
        ("images/", "a str"),
        (np.zeros((4, 3, 8, 8), dtype=np.int64), "int64, shape (4, 3, 8, 8)"),
        ((np.zeros((2, 3)), np.zeros(2), np.zeros(2)), "a tuple of 3"),
    ]:
        with pytest.raises(InputError) as e:
            as_source(bad, name="mine")
        msg = _one_line(e)
        assert msg.startswith("set 'mine': cannot read ") and what in msg
        assert "accepted: a BatchSource, an ImageSet, uint8 images" in msg and "DataLoader" in msg


def test_input_errors(data):
    images, labels, floats = data
    cases = [
        (lambda: as_source(images, name="a"), "set 'a': uint8 images need preprocess="),
        (lambda: as_source(ImageSet("x", images, labels), name="a"), "set 'a': uint8 images need preprocess="),
        (lambda: as_source(np.zeros((2, 8, 8, 4), np.uint8), name="a", preprocess=PRE), "NxHxWx{1,3}"),
        (lambda: as_source(floats[:, 0], name="b"), "set 'b': x must be float model inputs (N, C, H, W), got"),
        (lambda: as_source((floats, labels.astype(np.float32)), name="c"), "set 'c': labels must be integers"),
        (lambda: as_source((floats, labels[:5]), name="c"), "set 'c': labels must have shape (10,), got (5,)"),
        (lambda: as_source((floats, labels - 2), name="c"), "set 'c': labels must be >= -1"),
        (lambda: as_source(Stream(), name="d"), "set 'd': an IterableDataset cannot be read by row"),
        (lambda: as_source(DataLoader(Stream()), name="d"), "set 'd': an IterableDataset cannot be read by row"),
        (lambda: as_source(floats[:0], name="e"), "set 'e': empty"),
    ]
    for make, expected in cases:
        with pytest.raises(InputError) as e:
            make()
        assert expected in _one_line(e), expected


def test_dataset_item_errors_when_read(data):
    images, labels, floats = data
    reads = [
        (
            XOnly(torch.from_numpy(images).permute(0, 3, 1, 2)),
            "x must be float model inputs (N, C, H, W), got torch.uint8",
        ),
        (XOnly(floats[:, 0]), "x must be float model inputs (N, C, H, W), got torch.float32 of shape (4, 8, 8)"),
        (TensorDataset(floats, torch.from_numpy(labels).double()), "labels must be integers, got torch.float64"),
        (XOnly([object()] * N), "the items could not be batched"),
    ]
    for ds, expected in reads:
        src = as_source(ds, name="ds")
        with pytest.raises(InputError) as e:
            next(src.batches(4))
        msg = _one_line(e)
        assert msg.startswith("set 'ds': ") and expected in msg, expected


def test_shuffling_loader_warns_once_and_is_read_in_index_order(data):
    _, labels, floats = data
    tds = TensorDataset(floats, torch.from_numpy(labels))
    with pytest.warns(UserWarning, match=r"set 'ld': the DataLoader reorders rows \(RandomSampler\)") as rec:
        src = as_source(DataLoader(tds, batch_size=3, shuffle=True), name="ld")
    assert len([w for w in rec if "reorders rows" in str(w.message)]) == 1
    xs, ys = _read(src, 4)
    assert torch.equal(torch.cat(xs), floats) and torch.equal(torch.cat(ys), torch.from_numpy(labels))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        as_source(DataLoader(tds, batch_size=3), name="ld")
        as_source(DataLoader(tds, batch_size=None), name="ld")  # no auto-batching: default collate is used
        assert torch.equal(torch.cat(_read(as_source(DataLoader(tds, batch_size=None), name="ld"), 4)[0]), floats)


def test_loader_keeps_collate_fn():
    floats = torch.randn(5, 3, 4, 4)

    def collate(items):  # the user's collate: dict items -> (x, y)
        return torch.stack([it["img"] for it in items]), torch.tensor([it["label"] for it in items])

    items = [{"img": floats[i], "label": i} for i in range(5)]
    src = as_source(DataLoader(items, batch_size=2, collate_fn=collate), name="c")
    xs, ys = _read(src, 2)
    assert torch.equal(torch.cat(xs), floats) and torch.equal(torch.cat(ys), torch.arange(5))


def test_check_compatible(data):
    images, _, floats = data
    same = {"id": as_source(floats, name="id"), "ood": as_source(images, name="ood", preprocess=PRE)}
    check_compatible(same)
    other = dict(same, far=as_source(torch.zeros(2, 1, 8, 8), name="far"))
    with pytest.raises(InputError) as e:
        check_compatible(other)
    assert "sets 'id' and 'far'" in _one_line(e) and "(3, 8, 8) vs (1, 8, 8)" in str(e.value)
