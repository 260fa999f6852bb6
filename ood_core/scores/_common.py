"""Shared numerics for the score modules (all float64, all batched, no per-sample loops).

Everything here is a small pure helper: stable softmax / log-softmax / logsumexp, the quantities
``1 - p_k`` and ``||p - e_yhat||`` without cancellation, exact batched k-NN distances, grid lookup
for the cached ODIN/GRODIN arrays, and a content fingerprint for memoisation.
"""

from __future__ import annotations

import hashlib
from typing import Any, Mapping

import numpy as np

from ood_core.config import DEFAULTS, odin_eps_grid
from ood_core.extraction.grid import GridPointUnavailable, full_points, grid_index

# The ODIN / GRODIN grid (Liang et al. 2018; GRODIN §3.1): the profiles' default extraction grid
# (ood_core.config.DEFAULTS), i.e. the grid the cache is computed on unless a profile narrows it.
ODIN_T_GRID: list[float] = [float(v) for v in DEFAULTS["extract"]["odin_T"]]
ODIN_EPS_GRID: list[float] = odin_eps_grid(DEFAULTS)

# ReAct percentile sweep (OpenOOD react.yml) and a KNN k sweep (capped at n_train when used).
PERCENTILE_GRID: list[float] = [85.0, 90.0, 95.0, 99.0]
KNN_K_GRID: list[int] = [1, 5, 10, 20, 50, 100, 200]


def f64(a: Any) -> np.ndarray:
    """``np.asarray(a, dtype=float64)``."""
    return np.asarray(a, dtype=np.float64)


def as_2d(a: Any, name: str = "array") -> np.ndarray:
    """float64 2-D view of ``a``; a 1-D input is read as ONE sample."""
    x = f64(a)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N, dim), got shape {x.shape}")
    return x


def logsumexp(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Stable log(sum(exp(x))) along ``axis`` in float64 (finite for finite input)."""
    x = f64(x)
    m = np.max(x, axis=axis, keepdims=True)
    out = np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)) + m
    return np.squeeze(out, axis=axis)


def log_softmax(logits: np.ndarray, T: float = 1.0) -> np.ndarray:
    """log softmax(logits / T) row-wise, float64, finite for finite logits."""
    z = as_2d(logits, "logits") / float(T)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def softmax(logits: np.ndarray, T: float = 1.0) -> np.ndarray:
    """softmax(logits / T) row-wise, float64 (max-shifted; rows sum to 1)."""
    z = as_2d(logits, "logits") / float(T)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def rel_to_top(logits: np.ndarray, T: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """``r_c = exp((f_c - f_yhat)/T)`` with r_yhat set to 0, and yhat. Then p_c / p_yhat = r_c
    for c != yhat and 1 - p_yhat = sum(r) * p_yhat, all without cancellation."""
    z = as_2d(logits, "logits") / float(T)
    yhat = np.argmax(z, axis=1)
    r = np.exp(z - z[np.arange(len(z)), yhat][:, None])
    r[np.arange(len(z)), yhat] = 0.0
    return r, yhat


def one_minus_p(logits: np.ndarray, T: float = 1.0) -> np.ndarray:
    """``1 - p_k`` for every class without cancellation: for the top class it is the sum of
    the other probabilities; elsewhere p_k <= 1/2 so the subtraction is exact enough."""
    p = softmax(logits, T)
    q = 1.0 - p
    r, yhat = rel_to_top(logits, T)
    idx = np.arange(len(p))
    p_top = p[idx, yhat]
    q[idx, yhat] = r.sum(axis=1) * p_top
    return q


def sq_dist_to_onehot_top(logits: np.ndarray, T: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """``||p - e_yhat||_2^2`` (stable) and ``p_yhat``."""
    p = softmax(logits, T)
    r, yhat = rel_to_top(logits, T)
    idx = np.arange(len(p))
    p_top = p[idx, yhat]
    # p - e_yhat has entries p_c (c != yhat) and -(1 - p_yhat) = -p_yhat * sum r.
    others = p.copy()
    others[idx, yhat] = 0.0
    return (others**2).sum(axis=1) + (p_top * r.sum(axis=1)) ** 2, p_top


def l2_normalize(x: np.ndarray, tiny: float = 1e-300) -> np.ndarray:
    """Row-wise x / ||x||_2 in float64; an all-zero row stays zero (no NaN)."""
    x = as_2d(x)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(n, tiny)


def knn_distances(
    query: np.ndarray, bank: np.ndarray, k: int, q_chunk: int = 4096, b_chunk: int = 65536, device: str | None = None
) -> np.ndarray:
    """Exact Euclidean distances (N, k) from every query row to its k nearest rows of ``bank``,
    ascending.

    Batched exact search in float64 with torch matmul + top-k, chunked over queries and over the
    bank (running top-k merge), so memory is O(q_chunk * (b_chunk + k)). ``k`` must be
    1 <= k <= len(bank) (callers cap it). Squared distances use |q|^2 + |b|^2 - 2 q.b (clamped at 0).
    ``device=None`` uses CUDA when available (still float64, still exact), else the CPU.
    """
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"

    q = torch.as_tensor(as_2d(query, "query"), dtype=torch.float64, device=device)
    B = torch.as_tensor(as_2d(bank, "bank"), dtype=torch.float64, device=device)
    n = B.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, n_train={n}], got {k}")
    bn2 = (B * B).sum(1)
    out = torch.empty(q.shape[0], k, dtype=torch.float64, device=device)
    for i in range(0, q.shape[0], q_chunk):
        qi = q[i : i + q_chunk]
        qn2 = (qi * qi).sum(1, keepdim=True)
        best = None
        for j in range(0, n, b_chunk):
            Bj = B[j : j + b_chunk]
            d2 = (qn2 + bn2[j : j + b_chunk][None, :] - 2.0 * qi @ Bj.T).clamp_min_(0.0)
            kk = min(k, d2.shape[1])
            top = torch.topk(d2, kk, dim=1, largest=False, sorted=True).values
            best = (
                top
                if best is None
                else torch.topk(
                    torch.cat([best, top], 1), min(k, best.shape[1] + kk), dim=1, largest=False, sorted=True
                ).values
            )
        assert best is not None  # n >= 1: the bank loop ran
        out[i : i + q_chunk] = best
    return out.sqrt().cpu().numpy()


def kth_nn_distance(
    query: np.ndarray, bank: np.ndarray, k: int, q_chunk: int = 4096, b_chunk: int = 65536, device: str | None = None
) -> np.ndarray:
    """Exact Euclidean distance from every query row to its k-th nearest row of ``bank``
    (column k-1 of :func:`knn_distances`)."""
    return knn_distances(query, bank, k, q_chunk, b_chunk, device)[:, k - 1]


def cached_slice(arrays: Mapping[str, np.ndarray], key: str, eps: float, T: float) -> np.ndarray:
    """``arrays[key][i_eps, i_T]`` as float64 (N,), where the indices come from the cached
    ``odin_eps`` / ``odin_T`` grids."""
    ie = grid_index(arrays["odin_eps"], eps, "eps")
    it = grid_index(arrays["odin_T"], T, "T")
    a = np.asarray(arrays[key])
    if a.ndim != 3:
        raise ValueError(f"'{key}' must have shape (nE, nT, N), got {a.shape}")
    out = f64(a[ie, it])
    if not np.all(np.isfinite(out)):
        if not full_points(arrays)[ie, it]:
            raise GridPointUnavailable(
                f"'{key}' at eps={eps:g}, T={T:g} was computed on validation rows only "
                "(extract.grodin_test_points: selected); score these rows at a selected grid point "
                "(grodin_full_points) or re-extract with extract.grodin_test_points: grid"
            )
        bad = int((~np.isfinite(out)).sum())
        raise FloatingPointError(
            f"'{key}' at eps={eps:g}, T={T:g} has {bad} non-finite value(s); the cache is corrupt or the model diverged"
        )
    return out


def fingerprint(*arrays: np.ndarray) -> str:
    """sha1 over dtype, shape and bytes of the arrays (memoisation key)."""
    h = hashlib.sha1()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str(a.dtype).encode())
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def require_state(name: str, state: Any) -> Any:
    """Fitted scores call this first: a missing state is a clear error, not an AttributeError."""
    if state is None:
        raise ValueError(
            f"score '{name}' needs training statistics: call registry.fit('{name}', train_arrays, ...) first"
        )
    return state


def check_fitted_param(name: str, state: Mapping[str, Any], key: str, value: Any) -> None:
    """A fitted score scored with a different hyper-parameter than it was fitted with is an error."""
    if key in state and state[key] != value:
        raise ValueError(
            f"score '{name}' was fitted with {key}={state[key]!r} but is scored with {key}={value!r}; refit"
        )


def percentile_threshold(x: np.ndarray, percentile: float) -> float:
    """ReAct threshold: the ``percentile``-th percentile of ALL entries of x (flattened)."""
    if not 0.0 <= float(percentile) <= 100.0:
        raise ValueError(f"percentile must be in [0, 100], got {percentile}")
    return float(np.percentile(f64(x).ravel(), float(percentile)))


def class_means_tied_precision(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Class means mu_c (present classes only, sorted), the shared covariance of the
    class-centred features (biased, 1/N, as sklearn EmpiricalCovariance) and its
    pseudo-inverse (hermitian pinv, as EmpiricalCovariance.precision_)."""
    X = as_2d(X, "features")
    y = np.asarray(y).ravel()
    if len(y) != len(X):
        raise ValueError(f"labels ({len(y)}) and features ({len(X)}) differ in length")
    if np.any(y < 0):
        raise ValueError("training labels must be >= 0 (got -1: an OOD set passed as training data?)")
    classes = np.unique(y)
    means = np.stack([X[y == c].mean(axis=0) for c in classes])
    centred = X - means[np.searchsorted(classes, y)]
    cov = centred.T @ centred / len(X)
    prec = np.linalg.pinv(cov, hermitian=True)
    return classes, means, prec


def max_neg_mahalanobis(X: np.ndarray, means: np.ndarray, prec: np.ndarray) -> np.ndarray:
    """max_c -(x - mu_c)^T P (x - mu_c), looping over classes (not samples)."""
    X = as_2d(X, "features")
    best = np.full(len(X), -np.inf)
    for mu in means:
        d = X - mu
        best = np.maximum(best, -((d @ prec) * d).sum(axis=1))
    return best
