"""Batch sources: what the extraction pass reads, one ``(x, y)`` batch at a time, in row order.

A source is ``len(source)`` rows of model inputs. ``batches(batch_size, device)`` yields ``x`` float32
``(B, C, H, W)`` on ``device`` (what the model takes) and ``y`` int64 ``(B,)`` (-1 = no label), always
in the same order; ``take(rows)`` is a new source of those rows (in that order), ``rows(start, stop)``
a contiguous block (a view where the source can give one, so a batch of it is bit-identical to the
same batch of the whole source).

The study's own source is :class:`PreprocessedImages` (uint8 ``ImageSet`` + :class:`Preprocess`);
``ood_core.api.inputs`` turns a user's tensors, arrays, ``Dataset`` or ``DataLoader`` into a source.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Protocol, runtime_checkable

import numpy as np
import torch

from ood_core.data.base import ImageSet
from ood_core.data.transforms import iter_batches, to_tensor


@runtime_checkable
class BatchSource(Protocol):
    """Rows of model inputs, read in batches in a fixed order (module docstring)."""

    @property
    def name(self) -> str:
        """The set's name (error messages, progress bars)."""
        ...

    def __len__(self) -> int: ...

    def batches(
        self, batch_size: int, device: torch.device | str | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(x, y)``: x float32 (B, C, H, W) on ``device``, y int64 (B,) (-1 = no label)."""
        ...

    def take(self, rows: np.ndarray) -> BatchSource:
        """A source of these rows, in this order."""
        ...

    def rows(self, start: int, stop: int) -> BatchSource:
        """Rows ``start:stop`` (a view where possible)."""
        ...


@dataclass
class Preprocess:
    """How uint8 images become model inputs (:func:`~ood_core.data.to_tensor`): resize to ``size``,
    convert to ``channels``, normalise with ``mean`` / ``std``."""

    size: int
    channels: int
    mean: list[float]
    std: list[float]

    def __call__(self, images_u8: np.ndarray, device: torch.device | str | None) -> torch.Tensor:
        return to_tensor(images_u8, self.mean, self.std, self.size, self.channels).to(device)


@dataclass
class PreprocessedImages:
    """A uint8 :class:`ImageSet` read through a :class:`Preprocess`: the study's batch source."""

    images: ImageSet
    pre: Preprocess

    @property
    def name(self) -> str:
        return self.images.name

    def __len__(self) -> int:
        return len(self.images)

    def batches(
        self, batch_size: int, device: torch.device | str | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        p = self.pre
        return iter_batches(self.images, batch_size, p.mean, p.std, p.size, p.channels, device=device)

    def take(self, rows: np.ndarray) -> PreprocessedImages:
        return PreprocessedImages(self.images.take(rows), self.pre)

    def rows(self, start: int, stop: int) -> PreprocessedImages:
        return PreprocessedImages(self.images.rows(start, stop), self.pre)
