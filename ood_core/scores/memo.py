"""An explicit memo for intermediate results that several score calls share, so that the scores
themselves stay pure functions of (arrays, fitted state, parameters).

Two results are worth sharing: a trained low-dim linear probe (five ``lowdim_*`` scores fit the same
probe) and the sorted nearest-neighbour distances of one query set to a KNN bank (a k grid reads
one table instead of searching once per k). A caller that fits many scores on one training set
(``tuning.FitCache``) passes one ``Memo`` to every fit (``registry.fit(name, train, memo=...)``);
fits that use it say so with a ``memo`` keyword and keep it in their state where scoring needs it.
Without a memo every result is recomputed, with the same values.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Hashable, Iterator

DEFAULT_BUDGET_BYTES = 2 * 2**30


def _nbytes(value: Any) -> int:
    return int(getattr(value, "nbytes", 0))


class Memo:
    """Key -> value, least recently used first out once the values' arrays (``.nbytes``) exceed
    ``budget_bytes``; values without arrays (a probe) are never dropped, nor the newest value."""

    def __init__(self, budget_bytes: int = DEFAULT_BUDGET_BYTES) -> None:
        self.budget_bytes = int(budget_bytes)
        self._items: OrderedDict[Hashable, Any] = OrderedDict()

    def get(self, key: Hashable) -> Any | None:
        """The value stored under ``key`` (marked as recently used), else None."""
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: Hashable, value: Any) -> Any:
        """Store ``value`` under ``key``, drop the least recently used arrays over budget; returns ``value``."""
        self._items[key] = value
        self._items.move_to_end(key)
        while self.nbytes > self.budget_bytes:
            victim = next((k for k, v in self._items.items() if _nbytes(v) and k != key), None)
            if victim is None:
                break
            del self._items[victim]
        return value

    @property
    def nbytes(self) -> int:
        return sum(_nbytes(v) for v in self._items.values())

    def __len__(self) -> int:
        return len(self._items)

    def values(self) -> Iterator[Any]:
        return iter(list(self._items.values()))
