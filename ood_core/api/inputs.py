"""A user's data as a batch source (issue #17): see :class:`~ood_core.data.sources.BatchSource`.

:func:`as_source` accepts a ``BatchSource`` (as is), an ``ImageSet`` or uint8 images (through a
``Preprocess``), float model inputs (numpy / torch, (N, C, H, W)) -> :class:`TensorSource`, and a
map-style ``Dataset`` or a ``DataLoader`` over one -> :class:`DatasetSource`. Batches are checked
when read: x float32 (B, C, H, W) with no NaN / inf (the error names the row of the user's data),
integer labels (-1 where the data has none).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sized, Union, cast

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, SequentialSampler, Subset, default_convert

from ood_core.data.base import DatasetError, ImageSet
from ood_core.data.sources import BatchSource, Preprocess, PreprocessedImages

__all__ = ["DatasetSource", "InputError", "TensorSource", "as_source", "check_compatible"]

# Rows of the user's data held by a source: an int = the first row of a contiguous block, an
# array = the row of each source row. Used to name rows in error messages.
RowMap = Union[int, np.ndarray]

ACCEPTED = (
    "a BatchSource, an ImageSet, uint8 images (N, H, W[, C]) or (images, labels), float model inputs "
    "(N, C, H, W) as a numpy array / torch tensor or (x, labels), a map-style torch Dataset of x or "
    "(x, y, ...), or a DataLoader over one"
)


class InputError(ValueError):
    """User data that cannot be read as model inputs; the message is one line naming the set."""


def _rows_of(rowmap: RowMap, rows: np.ndarray | slice) -> RowMap:
    """The RowMap of a source's ``rows`` (a slice: contiguous, an array: any order)."""
    if isinstance(rowmap, int) and isinstance(rows, slice):
        return rowmap + (rows.start or 0)
    if isinstance(rowmap, int):
        return rowmap + np.asarray(rows, dtype=np.int64)
    return rowmap[rows]


def _row_in_data(rowmap: RowMap, row: int) -> int:
    return rowmap + row if isinstance(rowmap, int) else int(rowmap[row])


def _checked_x(name: str, x: Any) -> torch.Tensor:
    """x as a float32 (B, C, H, W) tensor; InputError naming the set and what was given otherwise."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x if x.flags.writeable else x.copy())
    if not isinstance(x, torch.Tensor):
        raise InputError(f"set '{name}': x must be a float tensor (N, C, H, W), got {type(x).__name__}")
    if not x.is_floating_point() or x.ndim != 4:
        raise InputError(
            f"set '{name}': x must be float model inputs (N, C, H, W), got {x.dtype} of shape {tuple(x.shape)}"
        )
    return x.detach() if x.dtype == torch.float32 else x.detach().float()


def _checked_y(name: str, y: Any, n: int) -> torch.Tensor:
    """Labels as int64 (n,) (-1 for all rows when ``y`` is None); InputError if not integer / (n,)."""
    if y is None:
        return torch.full((n,), -1, dtype=torch.int64)
    try:
        t = torch.as_tensor(np.asarray(y) if isinstance(y, (list, tuple)) else y)
    except (TypeError, ValueError, RuntimeError):
        raise InputError(f"set '{name}': labels must be integers, got {_describe(y)}") from None
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise InputError(f"set '{name}': labels must be integers, got {t.dtype}")
    if t.shape != (n,):
        raise InputError(f"set '{name}': labels must have shape ({n},), got {tuple(t.shape)}")
    if n and int(t.min()) < -1:
        raise InputError(f"set '{name}': labels must be >= -1 (-1 = no label), got {int(t.min())}")
    return t.to(torch.int64)


def _check_finite(name: str, x: torch.Tensor, rowmap: RowMap, start: int) -> None:
    """InputError naming the first row (of the user's data) of batch ``x`` with NaN / inf, if any;
    ``start`` is the batch's first row in the source."""
    bad = ~torch.isfinite(x).flatten(1).all(1)
    if bool(bad.any()):
        first = int(bad.nonzero()[0, 0])
        raise InputError(
            f"set '{name}': x has NaN or inf at row {_row_in_data(rowmap, start + first)} (the first such row)"
        )


@dataclass
class TensorSource:
    """Float model inputs held in memory: ``x`` (N, C, H, W) (cast to float32), ``y`` int64 (N,).
    ``rows`` is a view (slicing), ``take`` a copy; batches are views of ``x`` moved to the device."""

    name: str
    x: torch.Tensor
    y: torch.Tensor | None = None
    rowmap: RowMap = 0

    def __post_init__(self) -> None:
        self.x = _checked_x(self.name, self.x)
        if self.x.shape[0] == 0:
            raise InputError(f"set '{self.name}': empty (0 rows)")
        self.y = _checked_y(self.name, self.y, self.x.shape[0])

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def labels(self) -> torch.Tensor:
        """y (N,) int64, -1 where no label was given (``__post_init__`` fills it)."""
        if self.y is None:
            raise RuntimeError(f"set '{self.name}': labels not initialised")
        return self.y

    def batches(
        self, batch_size: int, device: torch.device | str | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for s in range(0, len(self), batch_size):
            x = self.x[s : s + batch_size].to(device)
            _check_finite(self.name, x, self.rowmap, s)
            yield x, self.labels[s : s + batch_size].to(x.device)

    def take(self, rows: np.ndarray) -> TensorSource:
        rows = np.asarray(rows, dtype=np.int64)
        idx = torch.from_numpy(rows).to(self.x.device)
        y = self.labels
        return TensorSource(self.name, self.x[idx], y[idx.to(y.device)], _rows_of(self.rowmap, rows))

    def rows(self, start: int, stop: int) -> TensorSource:
        sl = slice(start, stop)
        return TensorSource(self.name, self.x[sl], self.labels[sl], _rows_of(self.rowmap, sl))


def _split_batch(name: str, batch: Any) -> tuple[Any, Any]:
    """(x, y or None) of a collated batch: a tensor x, or a tuple / list (x, y, ...)."""
    if isinstance(batch, (tuple, list)) and batch:
        return batch[0], (batch[1] if len(batch) > 1 else None)
    if isinstance(batch, (torch.Tensor, np.ndarray)):
        return batch, None
    raise InputError(f"set '{name}': dataset items must be x or (x, y, ...), got batches of {type(batch).__name__}")


@dataclass
class DatasetSource:
    """A map-style ``Dataset`` read in index order by a ``DataLoader`` (shuffle=False, the batch size
    asked for, ``num_workers`` and ``collate_fn`` as given). Items are ``x`` or ``(x, y, ...)`` with x a
    float tensor (C, H, W) and y an int / 0-d tensor. ``take`` and ``rows`` give a ``Subset``."""

    name: str
    dataset: Dataset
    num_workers: int = 0
    collate_fn: Callable[[list], Any] | None = None
    rowmap: RowMap = 0

    def __post_init__(self) -> None:
        if isinstance(self.dataset, IterableDataset):
            raise InputError(
                f"set '{self.name}': an IterableDataset cannot be read by row; pass a map-style Dataset "
                "(with __len__ and __getitem__) or the tensors"
            )
        try:
            n = len(cast(Sized, self.dataset))
        except TypeError:
            raise InputError(f"set '{self.name}': the Dataset has no len(); a map-style Dataset is needed") from None
        if n == 0:
            raise InputError(f"set '{self.name}': empty (0 rows)")

    def __len__(self) -> int:
        return len(cast(Sized, self.dataset))

    def batches(
        self, batch_size: int, device: torch.device | str | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        loader = DataLoader(
            self.dataset, batch_size=batch_size, shuffle=False, num_workers=self.num_workers, collate_fn=self.collate_fn
        )
        start, it = 0, iter(loader)
        while True:
            try:
                batch = next(it)
            except StopIteration:
                return
            except TypeError as e:  # default_collate on items that are not tensors (e.g. PIL images)
                raise InputError(
                    f"set '{self.name}': the items could not be batched ({e}); items must be x or (x, y, ...) "
                    "with x a float tensor (C, H, W)".replace("\n", " ")
                ) from e
            xb, yb = _split_batch(self.name, batch)
            x = _checked_x(self.name, xb).to(device)
            y = _checked_y(self.name, yb, x.shape[0]).to(x.device)
            _check_finite(self.name, x, self.rowmap, start)
            start += x.shape[0]
            yield x, y

    def take(self, rows: np.ndarray) -> DatasetSource:
        rows = np.asarray(rows, dtype=np.int64)
        sub = Subset(self.dataset, rows.tolist())
        return DatasetSource(self.name, sub, self.num_workers, self.collate_fn, _rows_of(self.rowmap, rows))

    def rows(self, start: int, stop: int) -> DatasetSource:
        sub = Subset(self.dataset, range(start, stop))
        return DatasetSource(
            self.name, sub, self.num_workers, self.collate_fn, _rows_of(self.rowmap, slice(start, stop))
        )


def _loader_source(name: str, loader: DataLoader) -> DatasetSource:
    """The loader's dataset, all rows in index order; its sampler (shuffle) and batch size are not
    used (the extraction sets its own batch size): warns once when the loader would reorder rows."""
    collate = None if loader.collate_fn is default_convert else loader.collate_fn  # batch_size=None loaders
    source = DatasetSource(name, loader.dataset, num_workers=loader.num_workers, collate_fn=collate)
    bs = loader.batch_sampler
    order = loader.sampler if bs is None else getattr(bs, "sampler", bs)
    if not isinstance(order, SequentialSampler):
        warnings.warn(
            f"set '{name}': the DataLoader reorders rows ({type(order).__name__}); its order is not used, "
            f"the set is read in index order (all {len(source)} rows)",
            stacklevel=3,
        )
    return source


def _image_source(name: str, images: ImageSet, preprocess: Preprocess | None) -> PreprocessedImages:
    if preprocess is None:
        raise InputError(
            f"set '{name}': uint8 images need preprocess= (a Preprocess: size, channels, mean, std) "
            "to become model inputs"
        )
    return PreprocessedImages(
        ImageSet(name, images.images, images.labels, images.class_names, images.source), preprocess
    )


def _is_uint8(a: Any) -> bool:
    return (isinstance(a, np.ndarray) and a.dtype == np.uint8) or (
        isinstance(a, torch.Tensor) and a.dtype == torch.uint8
    )


def _is_float(a: Any) -> bool:
    return (isinstance(a, np.ndarray) and a.dtype.kind == "f") or (
        isinstance(a, torch.Tensor) and a.is_floating_point()
    )


def _describe(data: Any) -> str:
    if isinstance(data, (np.ndarray, torch.Tensor)):
        return f"a {type(data).__name__} of {data.dtype}, shape {tuple(data.shape)}"
    if isinstance(data, tuple):
        return f"a tuple of {len(data)} ({', '.join(type(d).__name__ for d in data)})"
    return f"a {type(data).__name__}"


def as_source(data: Any, *, name: str, preprocess: Preprocess | None = None) -> BatchSource:
    """A batch source named ``name`` for ``data``:

    * a ``BatchSource``: as is;
    * an ``ImageSet``, uint8 images (N, H, W) / (N, H, W, C) (numpy or torch) or ``(images_u8, labels)``:
      ``PreprocessedImages`` through ``preprocess`` (required);
    * float model inputs (N, C, H, W) (numpy or torch; float64 is cast to float32) or ``(x, labels)``:
      :class:`TensorSource`;
    * a map-style ``torch.utils.data.Dataset`` of ``x`` or ``(x, y, ...)``: :class:`DatasetSource`;
    * a ``DataLoader``: a :class:`DatasetSource` of ``loader.dataset`` with its ``num_workers`` and
      ``collate_fn``, read in index order (its sampler / shuffle and batch size are not used).

    Raises InputError (one line: the set, what was given, what is accepted) for anything else.
    """
    if isinstance(data, ImageSet):
        return _image_source(name, data, preprocess)
    if isinstance(data, BatchSource):
        return data
    if isinstance(data, DataLoader):
        return _loader_source(name, data)
    if isinstance(data, Dataset):
        return DatasetSource(name, data)
    x, y = data, None
    if isinstance(data, tuple) and len(data) == 2:
        x, y = data
    if _is_uint8(x):
        images = x.cpu().numpy() if isinstance(x, torch.Tensor) else x
        labels = np.full(len(images), -1, dtype=np.int64) if y is None else _checked_y(name, y, len(images)).numpy()
        try:
            return _image_source(name, ImageSet(name, images, labels), preprocess)
        except DatasetError as e:
            raise InputError(str(e)) from None
    if _is_float(x):
        return TensorSource(name, x, y)
    raise InputError(f"set '{name}': cannot read {_describe(data)}; accepted: {ACCEPTED}")


def check_compatible(sources: dict[str, BatchSource]) -> None:
    """Raise InputError naming both sets and their shapes unless every source gives model inputs of
    the same (C, H, W) (read from the first row of each)."""
    first: tuple[str, tuple[int, ...]] | None = None
    for name, src in sources.items():
        if len(src) == 0:
            raise InputError(f"set '{name}': empty (0 rows)")
        x, _ = next(iter(src.rows(0, 1).batches(1)))
        shape = tuple(x.shape[1:])
        if first is None:
            first = (name, shape)
        elif shape != first[1]:
            raise InputError(
                f"sets '{first[0]}' and '{name}' give model inputs of different shapes (C, H, W): {first[1]} vs {shape}"
            )
