"""Forward (output / feature) scores: MSP, MaxLogit, Energy, ODIN, ReAct, Mahalanobis, KNN, ViM.

All return float64 (N,), higher = more in-distribution.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from ood_core.scores._common import (
    KNN_K_GRID,
    ODIN_EPS_GRID,
    ODIN_T_GRID,
    PERCENTILE_GRID,
    as_2d,
    cached_slice,
    check_fitted_param,
    class_means_tied_precision,
    f64,
    fingerprint,
    knn_distances,
    l2_normalize,
    logsumexp,
    max_neg_mahalanobis,
    percentile_threshold,
    require_state,
    softmax,
)
from ood_core.scores.memo import Memo
from ood_core.scores.registry import Arrays, NotApplicable, Sweep, register


# --------------------------------------------------------------------------- output-only scores
@register("msp", family="forward", display="MSP", needs=("logits",), paper="Hendrycks & Gimpel, ICLR 2017")
def msp(arrays: Arrays, state: Any = None) -> np.ndarray:
    """MSP: s = max_k softmax(f)_k (Hendrycks & Gimpel 2017, "A baseline for detecting
    misclassified and out-of-distribution examples")."""
    return softmax(arrays["logits"]).max(axis=1)


@register("maxlogit", family="forward", display="MaxLogit", needs=("logits",), paper="Hendrycks et al., ICML 2022")
def maxlogit(arrays: Arrays, state: Any = None) -> np.ndarray:
    """MaxLogit: s = max_k f_k (Hendrycks et al. 2022, "Scaling out-of-distribution detection
    for real-world settings")."""
    return as_2d(arrays["logits"], "logits").max(axis=1)


@register(
    "energy",
    family="forward",
    display="Energy",
    grid={"T": [1.0]},
    needs=("logits",),
    paper="Liu et al., NeurIPS 2020",
)
def energy(arrays: Arrays, state: Any = None, *, T: float = 1.0) -> np.ndarray:
    """Energy: s = T * logsumexp(f / T) = -free energy (Liu et al. 2020, "Energy-based
    out-of-distribution detection"); T = 1 as in the paper and OpenOOD."""
    return float(T) * logsumexp(as_2d(arrays["logits"], "logits") / float(T), axis=1)


@register(
    "odin",
    family="forward",
    display="ODIN",
    grid={"T": ODIN_T_GRID, "eps": ODIN_EPS_GRID},
    needs=("odin_s", "odin_eps", "odin_T"),
    sweeps=[Sweep(("eps", "T"))],
    paper="Liang et al., ICLR 2018",
)
def odin(arrays: Arrays, state: Any = None, *, T: float = 1000.0, eps: float = 0.0) -> np.ndarray:
    """ODIN: s = max_k softmax(f(x~)/T)_k with x~ = x - eps * sign(grad_x CE(f(x)/T, yhat))
    (Liang et al. 2018, "Enhancing the reliability of out-of-distribution image detection").

    Read from the cached ``odin_s[i_eps, i_T]``; (eps, T) must lie on the cached grid
    (``odin_eps``, ``odin_T``) -- values off the grid are an error, never rounded. Default
    T = 1000, eps = 0 (gradnorm_ood's ImageNet default; OpenOOD's eps = 0.0014 is not on the grid).
    """
    return cached_slice(arrays, "odin_s", eps, T)


@register(
    "iodin",
    family="forward",
    display="iODIN",
    grid={"T": ODIN_T_GRID, "eps": ODIN_EPS_GRID},
    needs=("iodin_s", "odin_eps", "odin_T"),
    paper="OpenOOD v1.5 (Jingkang50/OpenOOD, iodin_postprocessor)",
)
def iodin(arrays: Arrays, state: Any = None, *, T: float = 1000.0, eps: float = 0.0014) -> np.ndarray:
    """iODIN: ODIN with the step on one input element per sample: s = max_k softmax(f(x^)/T)_k,
    x^ = x - eps * m * sign(grad_x CE(f(x)/T, yhat)) with m the indicator of the element of largest
    |grad_x| over channels and positions (OpenOOD's ``IODINPostprocessor``; defaults T = 1000,
    eps = 0.0014 and its sweep T in {1, 10, 100, 1000}, eps in {0.0014, 0.0028} as in OpenOOD's config).

    Read from the cached ``iodin_s[i_eps, i_T]`` (``extract.iodin``); at eps = 0 it equals ODIN.
    Deviations: a zero input gradient gives sign 0 here (OpenOOD: +1), which changes a sample only
    when its largest |grad_x| is exactly 0; eps lives in the profile's ``eps_space`` (OpenOOD: pixel
    space, eps / std per channel, our ``eps_space: pixel``)."""
    return cached_slice(arrays, "iodin_s", eps, T)


# --------------------------------------------------------------------------- ReAct
def fit_react(train: Arrays, *, percentile: float = 90.0, **_: Any) -> dict[str, Any]:
    """c = ``percentile``-th percentile of ALL training activations h (flattened)."""
    return {"c": percentile_threshold(train["h"], percentile), "percentile": float(percentile)}


def react_logits(h: np.ndarray, W: np.ndarray, b: np.ndarray, c: float) -> np.ndarray:
    """Logits of the rectified features: W min(h, c) + b (float64)."""
    return np.minimum(as_2d(h, "h"), c) @ f64(W).T + f64(b)


@register(
    "react",
    family="forward",
    display="ReAct",
    grid={"percentile": PERCENTILE_GRID},
    needs=("h", "W", "b"),
    fit=fit_react,
    sweeps=[Sweep(("percentile",))],
    paper="Sun, Guo, Li, NeurIPS 2021",
)
def react(arrays: Arrays, state: Any = None, *, percentile: float = 90.0) -> np.ndarray:
    """ReAct: s = logsumexp(W min(h, c) + b), c = p-th percentile (default 90) of all training
    penultimate activations (Sun, Guo, Li 2021, "ReAct: out-of-distribution detection with
    rectified activations"). Fit on the training set only."""
    st = require_state("react", state)
    check_fitted_param("react", st, "percentile", float(percentile))
    return logsumexp(react_logits(arrays["h"], arrays["W"], arrays["b"], st["c"]), axis=1)


# --------------------------------------------------------------------------- Mahalanobis
def fit_mahalanobis(train: Arrays, **_: Any) -> dict[str, Any]:
    """Class means and the tied covariance's pseudo-inverse on training features."""
    classes, means, prec = class_means_tied_precision(train["h"], train["y"])
    return {"classes": classes, "means": means, "precision": prec}


@register(
    "mahalanobis",
    family="forward",
    display="Mahalanobis",
    needs=("h",),
    fit=fit_mahalanobis,
    paper="Lee et al., NeurIPS 2018",
)
def mahalanobis(arrays: Arrays, state: Any = None) -> np.ndarray:
    """Mahalanobis: s = max_c -(h - mu_c)^T P (h - mu_c), mu_c class means and P the
    (pseudo-)inverse of the shared class-centred covariance of training features (Lee et al.
    2018, "A simple unified framework for detecting OOD samples and adversarial attacks");
    penultimate layer only, no input pre-processing, as OpenOOD's ``mds``."""
    st = require_state("mahalanobis", state)
    return max_neg_mahalanobis(arrays["h"], st["means"], st["precision"])


# --------------------------------------------------------------------------- KNN
def fit_knn(train: Arrays, *, memo: Memo | None = None, **_: Any) -> dict[str, Any]:
    """L2-normalised training features (float64), their fingerprint and the distance-table memo."""
    return knn_bank(train["h"], memo)


def knn_bank(features: np.ndarray, memo: Memo | None = None) -> dict[str, Any]:
    """{"bank": L2-normalised features, "bank_key": fingerprint(bank), "tables": memo}: hashing the
    bank once at fit time spares hashing a 50k-row bank on every scoring call; the memo (a new one
    when None) keeps each query set's sorted distances to the bank (:func:`knn_score`)."""
    bank = l2_normalize(features)
    return {"bank": bank, "bank_key": fingerprint(bank), "tables": Memo() if memo is None else memo}


# Sorted nearest-neighbour distances per (query, bank) are memoised deep enough for every k of the
# tuning grid and the sweeps: a k grid then costs one exact search per query set instead of one per k.
NN_TABLE_K = 1000


def _nn_table(z: np.ndarray, bank: np.ndarray, k: int, bank_key: str | None, tables: Memo) -> np.ndarray:
    """(N, >= k) ascending exact distances of z to bank, from ``tables`` when it holds a deep enough one.
    ``bank_key`` is fingerprint(bank) when the caller already has it."""
    key = ("nn_table", fingerprint(z), bank_key or fingerprint(bank))
    tab = tables.get(key)
    if tab is not None and tab.shape[1] >= k:
        return tab
    return tables.put(key, knn_distances(z, bank, min(max(k, NN_TABLE_K), len(bank))))


def knn_score(
    x: np.ndarray, bank: np.ndarray, k: int, bank_key: str | None = None, tables: Memo | None = None
) -> np.ndarray:
    """-||z - z_(k)||_2 with z = x/||x||, k capped at len(bank) (exact). With ``tables`` (a
    :class:`Memo`) the sorted distances of each query set are kept there and every later k reads
    them; pass ``bank_key`` = fingerprint(bank), as fitted states hold it, to skip rehashing. A k
    above the bank's size warns (the score is then that of k = len(bank))."""
    if int(k) > len(bank):
        warnings.warn(
            f"KNN: k = {int(k)} exceeds the {len(bank)} training rows of the bank; scored with k = {len(bank)}",
            stacklevel=2,
        )
    k = int(min(int(k), len(bank)))
    z = l2_normalize(x)
    if tables is None:
        return -knn_distances(z, bank, k)[:, k - 1]
    return -_nn_table(z, bank, k, bank_key, tables)[:, k - 1]


@register(
    "knn",
    family="forward",
    display="KNN",
    grid={"k": KNN_K_GRID},
    needs=("h",),
    fit=fit_knn,
    sweeps=[Sweep(("k",))],
    paper="Sun, Ming, Zhu, Li, ICML 2022",
)
def knn(arrays: Arrays, state: Any = None, *, k: int = 50) -> np.ndarray:
    """KNN: s = -||z - z_(k)||_2, z = h/||h||_2, z_(k) the k-th nearest L2-normalised training
    feature, exact batched search (Sun et al. 2022, "Out-of-distribution detection with deep
    nearest neighbors"). k is capped at n_train. Zero features normalise to zero."""
    st = require_state("knn", state)
    return knn_score(arrays["h"], st["bank"], k, st.get("bank_key"), st.get("tables"))


# --------------------------------------------------------------------------- ViM
def _vim_dim(dim: int | None, D: int) -> int:
    return min(256, D // 2) if dim is None else int(dim)


def fit_vim(train: Arrays, *, dim: int | None = None, **_: Any) -> dict[str, Any]:
    """Origin o = -pinv(W) b; eigenvectors of the covariance of (h - o) outside the top-``dim``
    principal subspace; alpha = mean max-logit / mean residual on the training set."""
    h = as_2d(train["h"], "h")
    W, b = f64(train["W"]), f64(train["b"])
    D = h.shape[1]
    k = _vim_dim(dim, D)
    if k < 0:
        raise ValueError(f"vim: dim must be >= 0, got {k}")
    if k >= D:  # an empty residual: ViM would be Energy (OpenOOD's dim 1000 on a 512-d ResNet-18)
        raise NotApplicable(f"vim: dim = {k} leaves no residual of the D = {D} features (dim must be < D)")
    o = -np.linalg.pinv(W) @ b
    X = h - o
    cov = X.T @ X / len(X)  # EmpiricalCovariance(assume_centered=True), as OpenOOD
    evals, evecs = np.linalg.eigh(cov)
    order = np.argsort(evals)[::-1]
    NS = np.ascontiguousarray(evecs[:, order[k:]])
    r = np.linalg.norm(X @ NS, axis=1)
    logits = h @ W.T + b
    mean_r = r.mean()
    alpha = float(logits.max(axis=1).mean() / mean_r) if mean_r > 0 else 0.0
    return {"origin": o, "NS": NS, "alpha": alpha, "dim": k, "dim_param": dim}


def vim_residual(h: np.ndarray, state: dict[str, Any]) -> np.ndarray:
    """r = ||NS^T (h - o)||_2."""
    return np.linalg.norm((as_2d(h, "h") - state["origin"]) @ state["NS"], axis=1)


@register(
    "vim",
    family="forward",
    display="ViM",
    grid={"dim": [None, 16, 64, 256, 1000]},
    needs=("h", "logits"),
    fit=fit_vim,
    paper="Wang et al., CVPR 2022",
)
def vim(arrays: Arrays, state: Any = None, *, dim: int | None = None) -> np.ndarray:
    """ViM: s = logsumexp(f) - alpha * ||R^T (h - o)||_2 with o = -pinv(W) b, R the eigenvectors
    of the training covariance of (h - o) outside its top-``dim`` principal subspace, and
    alpha = mean_train max_c f_c / mean_train r (Wang et al. 2022, "ViM: out-of-distribution with
    virtual-logit matching"); monotone-equivalent to the virtual-logit softmax. dim=None means
    min(256, D // 2); dim >= D leaves an empty residual and is refused (``NotApplicable``: tuning
    skips it; OpenOOD's grid offers 1000 on 512-d features, where its ViM equals Energy)."""
    st = require_state("vim", state)
    check_fitted_param("vim", st, "dim_param", dim)
    return logsumexp(as_2d(arrays["logits"], "logits"), axis=1) - st["alpha"] * vim_residual(arrays["h"], st)
