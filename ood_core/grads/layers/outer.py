"""Per-sample squared norms of outer-product gradients dW_i = G_i U_i^T (Linear on token inputs,
Conv2d), and the sub-chunking that bounds their working memory.

For G (n, Co, L), U (n, K, L): ||G_i U_i^T||_F^2 either by the Gram trick
sum((G_i^T G_i) * (U_i^T U_i)) [L^2 (Co + K) per sample] or by materialising G_i U_i^T
[Co K L], whichever is cheaper.
"""

from __future__ import annotations

from typing import Iterator

import torch

__all__ = ["outer_bytes_per_sample", "outer_sq_norms", "sub_chunks", "use_gram"]


def use_gram(co: int, k: int, L: int) -> bool:
    """Gram trick costs L^2 (Co + K) per sample, materialising G U^T costs Co K L."""
    return L * L * (co + k) < co * k * L


def outer_sq_norms(G: torch.Tensor, U: torch.Tensor, route: str | None = None) -> torch.Tensor:
    """Per-sample ||G_i U_i^T||_F^2 for G (n, Co, L), U (n, K, L), by the cheaper route
    (``route`` = "gram" | "materialize" forces one)."""
    n, co, L = G.shape
    k = U.shape[1]
    if route is None:
        route = "gram" if use_gram(co, k, L) else "materialize"
    if route == "gram":
        gg = torch.bmm(G.transpose(1, 2), G)
        uu = torch.bmm(U.transpose(1, 2), U)
        return (gg * uu).sum(dim=(1, 2))
    return torch.bmm(G, U.transpose(1, 2)).pow(2).sum(dim=(1, 2))


def outer_bytes_per_sample(co: int, k: int, L: int, elsize: int) -> int:
    """Working memory of ``outer_sq_norms`` per sample (inputs + the chosen route's product)."""
    work = 2 * L * L if use_gram(co, k, L) else co * k
    return (k * L + co * L + work) * elsize


def sub_chunks(n: int, bytes_per_sample: int, max_bytes: int) -> Iterator[slice]:
    """Consecutive slices of ``range(n)`` of at most max_bytes / bytes_per_sample samples (>= 1)."""
    step = max(1, int(max_bytes // max(1, bytes_per_sample)))
    for s in range(0, n, step):
        yield slice(s, min(n, s + step))
