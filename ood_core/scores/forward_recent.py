"""Recent forward (feature / logit) scores: ASH-P / ASH-B / ASH-S, SCALE, GEN, fDBD, DICE, RMDS, NNGuide.

All return float64 (N,), higher = more in-distribution, and read only cached arrays (``h``, ``logits``,
``W``, ``b``; fits read the training set's ``h``, ``logits``, ``y``). Percentiles are in percent
(0-100), as OpenOOD and the authors' code (pytorch-ood takes fractions).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ood_core.scores._common import (
    as_2d,
    check_fitted_param,
    class_means_tied_precision,
    f64,
    fingerprint,
    l2_normalize,
    logsumexp,
    max_neg_mahalanobis,
    one_minus_p,
    require_state,
    softmax,
)
from ood_core.scores.forward import NN_TABLE_K
from ood_core.scores.memo import Memo
from ood_core.scores.registry import Arrays, register

# OpenOOD's sweep for ASH and SCALE (ash.yml, scale.yml), in percent
SHAPING_PERCENTILE_GRID: list[float] = [65.0, 70.0, 75.0, 80.0, 85.0, 90.0, 95.0]
# OpenOOD's GEN sweep (gen.yml); M is capped at the number of classes
GEN_GAMMA_GRID: list[float] = [0.01, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0]
GEN_M_GRID: list[int] = [10, 50, 100, 200, 500, 1000]
# pytorch-ood's DICE hyperparameter_space, in percent (OpenOOD fixes p = 90)
DICE_P_GRID: list[float] = [10.0, 30.0, 50.0, 70.0, 90.0]
# ours: OpenOOD fixes K = 100 (nnguide.yml), on a 1 % bank
NNGUIDE_K_GRID: list[int] = [1, 10, 50, 100, 200, 500]


def head_energy(x: np.ndarray, W: np.ndarray, b: np.ndarray) -> np.ndarray:
    """logsumexp(W x + b) per row, float64 (the energy of the head applied to features x)."""
    return logsumexp(as_2d(x, "features") @ f64(W).T + f64(b), axis=1)


# --------------------------------------------------------------------------- ASH / SCALE
def n_kept(D: int, percentile: float) -> int:
    """Activations kept per sample at ``percentile``: k = max(1, D - round(D * p / 100)) (the authors'
    code, numpy's round half to even). Deviation: the authors' formula keeps none when
    D < 100 / (100 - p) (e.g. D = 4 at p = 90), which leaves ASH undefined; we keep the largest one."""
    p = float(percentile)
    if not 0.0 <= p <= 100.0:
        raise ValueError(f"percentile must be in [0, 100], got {percentile}")
    return max(1, int(D - int(np.round(D * p / 100.0))))


def top_mask(h: np.ndarray, percentile: float) -> np.ndarray:
    """(N, D) bool: the k = :func:`n_kept` largest entries of every row. Ties at the k-th value go to
    the lower feature index (stable sort), so the mask is deterministic."""
    h = as_2d(h, "h")
    k = n_kept(h.shape[1], percentile)
    idx = np.argsort(-h, axis=1, kind="stable")[:, :k]
    mask = np.zeros(h.shape, dtype=bool)
    np.put_along_axis(mask, idx, True, axis=1)
    return mask


def _sum_ratio(s1: np.ndarray, s2: np.ndarray) -> np.ndarray:
    """s1 / s2, with 1 where s2 = 0 (an all-zero ReLU feature: the shaped features are zero whatever
    the factor; the authors' code gives NaN there)."""
    out = np.ones_like(s1)
    np.divide(s1, s2, out=out, where=s2 != 0)
    return out


def ash_features(h: np.ndarray, percentile: float, variant: str) -> np.ndarray:
    """The shaped features of ASH-``variant`` ("p", "b", "s"), float64 (N, D)."""
    h = as_2d(h, "h")
    mask = top_mask(h, percentile)
    if variant == "p":
        return np.where(mask, h, 0.0)
    if variant == "b":
        k = n_kept(h.shape[1], percentile)
        return mask * (h.sum(axis=1) / k)[:, None]
    if variant == "s":
        pruned = np.where(mask, h, 0.0)
        return pruned * np.exp(_sum_ratio(h.sum(axis=1), pruned.sum(axis=1)))[:, None]
    raise ValueError(f"ASH variant must be 'p', 'b' or 's', got {variant!r}")


def ash_score(arrays: Arrays, percentile: float, variant: str) -> np.ndarray:
    """logsumexp(W a(h) + b) for the shaped features a(h) = :func:`ash_features`."""
    return head_energy(ash_features(arrays["h"], percentile, variant), arrays["W"], arrays["b"])


@register(
    "ash_p",
    family="forward",
    display="ASH-P",
    grid={"percentile": SHAPING_PERCENTILE_GRID},
    needs=("h", "W", "b"),
    paper="Djurisic et al., ICLR 2023",
)
def ash_p(arrays: Arrays, state: Any = None, *, percentile: float = 90.0) -> np.ndarray:
    """ASH-P: s = logsumexp(W M(h) + b), M(h) keeps the k = D - round(D p / 100) largest entries of h and
    zeroes the rest (Djurisic et al. 2023, "Extremely simple activation shaping for out-of-distribution
    detection"; energy score as the paper and OpenOOD). Default p = 90 and grid: OpenOOD's ash.yml.

    Deviations from the authors' code (andrijazz/ash ``ash_p``; OpenOOD ``ash_net.py`` has the same
    function): (1) the shaped tensor is the pooled penultimate feature h (N, D), as OpenOOD does for its
    ResNet-18 CIFAR networks (it views the pooled feature as (N, D, 1, 1)); the authors' function takes
    any layer's activation map, which needs the network, not cached arrays. (2) Ties at the k-th largest
    value go to the lower feature index (stable sort), not ``torch.topk``'s unspecified order; s depends
    on that only for tied non-zero values (ReLU features tie at 0, which changes nothing here).
    (3) float64; percentile in percent (pytorch-ood: a fraction)."""
    return ash_score(arrays, percentile, "p")


@register(
    "ash_b",
    family="forward",
    display="ASH-B",
    grid={"percentile": SHAPING_PERCENTILE_GRID},
    needs=("h", "W", "b"),
    paper="Djurisic et al., ICLR 2023",
)
def ash_b(arrays: Arrays, state: Any = None, *, percentile: float = 90.0) -> np.ndarray:
    """ASH-B: s = logsumexp(W a + b), a_d = sum(h) / k on the k = D - round(D p / 100) largest entries of
    h and 0 elsewhere (binarised, keeping the sum of h) (Djurisic et al. 2023, "Extremely simple
    activation shaping for out-of-distribution detection"; energy score). OpenOOD's "ASH" is this variant.
    Default p = 90 and grid: OpenOOD's ash.yml.

    Deviations from the authors' code (andrijazz/ash ``ash_b``; OpenOOD ``ash_net.py`` has the same
    function): (1) the shaped tensor is the pooled penultimate h (N, D), as OpenOOD for its ResNet-18
    CIFAR networks (the authors' function takes any layer's activation map, which needs the network).
    (2) Ties at the k-th largest value go to the lower feature index (stable sort), not ``torch.topk``'s
    unspecified order: which index receives the fill, so s, depends on it (e.g. several zero activations
    at the cut). (3) float64; percentile in percent (pytorch-ood: a fraction)."""
    return ash_score(arrays, percentile, "b")


@register(
    "ash_s",
    family="forward",
    display="ASH-S",
    grid={"percentile": SHAPING_PERCENTILE_GRID},
    needs=("h", "W", "b"),
    paper="Djurisic et al., ICLR 2023",
)
def ash_s(arrays: Arrays, state: Any = None, *, percentile: float = 90.0) -> np.ndarray:
    """ASH-S: s = logsumexp(W (M(h) * exp(s1 / s2)) + b), M(h) keeps the k = D - round(D p / 100) largest
    entries of h, s1 = sum(h), s2 = sum(M(h)) (prune, then scale) (Djurisic et al. 2023, "Extremely
    simple activation shaping for out-of-distribution detection"; energy score). Default p = 90 and grid:
    OpenOOD's ash.yml.

    Deviations from the authors' code (andrijazz/ash ``ash_s``; OpenOOD ``ash_net.py`` has the same
    function): (1) the shaped tensor is the pooled penultimate h (N, D), as OpenOOD for its ResNet-18
    CIFAR networks (the authors' function takes any layer's activation map, which needs the network).
    (2) Ties at the k-th value go to the lower feature index (stable sort), not ``torch.topk``'s
    unspecified order; s depends on that only for tied non-zero values. (3) Where
    s2 = 0 (an all-zero ReLU feature) the factor is e, not NaN (the shaped features are 0 either way).
    (4) float64; percentile in percent (pytorch-ood: a fraction)."""
    return ash_score(arrays, percentile, "s")


@register(
    "scale",
    family="forward",
    display="SCALE",
    grid={"percentile": SHAPING_PERCENTILE_GRID},
    needs=("h", "W", "b"),
    paper="Xu et al., ICLR 2024",
)
def scale(arrays: Arrays, state: Any = None, *, percentile: float = 85.0) -> np.ndarray:
    """SCALE: s = logsumexp(W (h * exp(s1 / s2)) + b), s1 = sum(h), s2 = sum of the k = D - round(D p / 100)
    largest entries of h; h itself is NOT pruned (Xu et al. 2024, "Scaling for training time and
    post-hoc out-of-distribution detection enhancement"). Default p = 85 and grid: OpenOOD's.

    Deviations from the authors' code (kai422/SCALE; OpenOOD ``scale_postprocessor``): applied to the
    pooled penultimate h (the paper's choice, as OpenOOD), float64, percentile in percent; where s2 = 0
    (an all-zero ReLU feature) the factor is e instead of NaN. Ties at the k-th value do not change s2."""
    h = as_2d(arrays["h"], "h")
    s2 = np.where(top_mask(h, percentile), h, 0.0).sum(axis=1)
    return head_energy(h * np.exp(_sum_ratio(h.sum(axis=1), s2))[:, None], arrays["W"], arrays["b"])


# --------------------------------------------------------------------------- GEN
@register(
    "gen",
    family="forward",
    display="GEN",
    grid={"gamma": GEN_GAMMA_GRID, "M": GEN_M_GRID},
    needs=("logits",),
    paper="Liu, Lochman, Zach, CVPR 2023",
)
def gen(arrays: Arrays, state: Any = None, *, gamma: float = 0.1, M: int = 100) -> np.ndarray:
    """GEN: s = -sum_{j in top-M} p_j^gamma (1 - p_j)^gamma, p = softmax(f), the sum over the min(M, C)
    largest probabilities (Liu, Lochman, Zach 2023, "GEN: pushing the limits of softmax-based
    out-of-distribution detection"). Defaults gamma = 0.1, M = 100 and the grid: OpenOOD's gen.yml.

    Deviations from the authors' code (XixiLiu95/GEN, same as OpenOOD's ``generalized_entropy``): none in
    the formula (sum, not pytorch-ood's mean; no clamping of p, unlike pytorch-ood's [1e-7, 1 - 1e-7]);
    numerics: float64, and 1 - p_j without cancellation (:func:`one_minus_p`), so a near-certain top
    class keeps its small (1 - p)^gamma instead of rounding to 0."""
    g, m = float(gamma), int(M)
    if g <= 0 or m < 1:
        raise ValueError(f"gen: gamma must be > 0 and M >= 1, got gamma={gamma}, M={M}")
    logits = as_2d(arrays["logits"], "logits")
    p, q = softmax(logits), one_minus_p(logits)
    if m < p.shape[1]:
        top = np.argsort(-p, axis=1, kind="stable")[:, :m]
        p, q = np.take_along_axis(p, top, axis=1), np.take_along_axis(q, top, axis=1)
    return -(p**g * q**g).sum(axis=1)


# --------------------------------------------------------------------------- fDBD
def fit_fdbd(train: Arrays, **_: Any) -> dict[str, Any]:
    """The mean of the training features h."""
    return {"mean": as_2d(train["h"], "h").mean(axis=0)}


def boundary_distance_sum(logits: np.ndarray, W: np.ndarray) -> np.ndarray:
    """sum_{c != yhat} |f_yhat - f_c| / ||w_yhat - w_c||_2 per row (yhat = argmax f); loops over the
    predicted classes, O(C D) memory."""
    f = as_2d(logits, "logits")
    W = f64(W)
    yhat = np.argmax(f, axis=1)
    gap = f[np.arange(len(f)), yhat][:, None] - f  # >= 0, 0 at yhat
    out = np.empty(len(f))
    for c in np.unique(yhat):
        rows = yhat == c
        denom = np.linalg.norm(W - W[c], axis=1)
        denom[c] = 1.0  # its numerator is 0
        out[rows] = (gap[rows] / denom).sum(axis=1)
    return out


@register(
    "fdbd",
    family="forward",
    display="fDBD",
    needs=("h", "logits", "W"),
    fit=fit_fdbd,
    paper="Liu & Qin, ICML 2024",
)
def fdbd(arrays: Arrays, state: Any = None) -> np.ndarray:
    """fDBD: s = 1/(C-1) sum_{c != yhat} |f_yhat - f_c| / ||w_yhat - w_c||_2 / ||h - mu_train||_2, the mean
    feature-space distance of h to the decision boundaries between the predicted class and every other
    class, regularised by the distance of h to the training feature mean (Liu & Qin 2024, "Fast decision
    boundary based out-of-distribution detector"); hyper-parameter free. f: the cached logits.

    Deviations from the authors' code (litianliu/fDBD-OOD; OpenOOD ``fdbd_postprocessor``): their code sums
    over c instead of averaging (a constant factor C - 1: same ranking; the mean is the paper's formula
    and pytorch-ood's); OpenOOD also tunes the regulariser (||h - mu|| or ||h||, ``distance_as_normalizer``),
    here always the paper's ||h - mu||; ||h - mu|| is floored at 1e-300 (pytorch-ood: 1e-8); float64."""
    st = require_state("fdbd", state)
    h = as_2d(arrays["h"], "h")
    logits = as_2d(arrays["logits"], "logits")
    C = logits.shape[1]
    if C < 2:
        raise ValueError("fdbd needs at least 2 classes")
    dist = np.maximum(np.linalg.norm(h - st["mean"], axis=1), 1e-300)
    return boundary_distance_sum(logits, arrays["W"]) / ((C - 1) * dist)


# --------------------------------------------------------------------------- DICE
def fit_dice(train: Arrays, *, p: float = 90.0, **_: Any) -> dict[str, Any]:
    """Contribution V = mean_train(h)[None, :] * W (C, D); mask = V > the p-th percentile of V's entries
    (linear interpolation, as np.percentile in the authors' code)."""
    if not 0.0 <= float(p) <= 100.0:
        raise ValueError(f"dice: p must be in [0, 100], got {p}")
    mean = as_2d(train["h"], "h").mean(axis=0)
    contrib = mean[None, :] * f64(train["W"])
    thresh = float(np.percentile(contrib, float(p)))
    return {"mask": contrib > thresh, "threshold": thresh, "mean": mean, "p": float(p)}


@register(
    "dice",
    family="forward",
    display="DICE",
    grid={"p": DICE_P_GRID},
    needs=("h", "W", "b"),
    fit=fit_dice,
    paper="Sun & Li, ECCV 2022",
)
def dice(arrays: Arrays, state: Any = None, *, p: float = 90.0) -> np.ndarray:
    """DICE: s = logsumexp((W * M) h + b), M = 1[mean_train(h)_d * W_cd > the p-th percentile of all
    such contributions]: the head keeps its top (100 - p) % weights by contribution on the training set
    (Sun & Li 2022, "DICE: leveraging sparsification for out-of-distribution detection"). Default p = 90
    (OpenOOD's dice.yml); grid: pytorch-ood's search space, in percent. Fit on the training set only.

    Deviations from the authors' code (deeplearning-wisc/dice ``RouteDICE``; OpenOOD ``dice_postprocessor``):
    none in the formula (the mean activation from the training features, as OpenOOD); float64, and the
    mask is applied to the scoring call's W (the same head the fit saw, checked by shape)."""
    st = require_state("dice", state)
    check_fitted_param("dice", st, "p", float(p))
    W = f64(arrays["W"])
    if W.shape != st["mask"].shape:
        raise ValueError(f"dice: fitted on a head of shape {st['mask'].shape}, scored with W of shape {W.shape}")
    return head_energy(arrays["h"], np.where(st["mask"], W, 0.0), arrays["b"])


# --------------------------------------------------------------------------- RMDS
def fit_rmds(train: Arrays, **_: Any) -> dict[str, Any]:
    """Class means and tied precision (as Mahalanobis), plus the background Gaussian: mean and
    pseudo-inverse of the covariance (biased, 1/N) of all training features."""
    classes, means, prec = class_means_tied_precision(train["h"], train["y"])
    h = as_2d(train["h"], "h")
    mu0 = h.mean(axis=0)
    d = h - mu0
    prec0 = np.linalg.pinv(d.T @ d / len(h), hermitian=True)
    return {"classes": classes, "means": means, "precision": prec, "mean0": mu0, "precision0": prec0}


@register(
    "rmds",
    family="forward",
    display="RMDS",
    needs=("h",),
    fit=fit_rmds,
    paper="Ren et al., arXiv 2106.09022, 2021",
)
def rmds(arrays: Arrays, state: Any = None) -> np.ndarray:
    """RMDS (relative Mahalanobis): s = -min_c (MD_c(h) - MD_0(h)), MD_c(h) = (h - mu_c)^T P (h - mu_c) with
    class means mu_c and P the pseudo-inverse of the tied class-centred covariance (as ``mahalanobis``),
    MD_0 the same distance under one Gaussian fitted to all training features (Ren et al. 2021, "A simple
    fix to Mahalanobis distance for improving near-OOD detection").

    Deviations from OpenOOD's ``rmds_postprocessor`` (no code of the authors located): none in the formula
    (sklearn EmpiricalCovariance there: biased covariances, pseudo-inverse precisions, as here); float64
    instead of float32. pytorch-ood's ``RMD`` differs: its covariances are unnormalised scatter matrices
    (sums, not means) plus 1e-6 I, inverted, so its distances are about 1/N_train of these."""
    st = require_state("rmds", state)
    h = as_2d(arrays["h"], "h")
    d0 = h - st["mean0"]
    return max_neg_mahalanobis(h, st["means"], st["precision"]) + ((d0 @ st["precision0"]) * d0).sum(axis=1)


# --------------------------------------------------------------------------- NNGuide
def topk_inner_products(
    query: np.ndarray, bank: np.ndarray, k: int, q_chunk: int = 4096, b_chunk: int = 65536, device: str | None = None
) -> np.ndarray:
    """(N, k) largest inner products of every query row with the rows of ``bank``, descending; exact,
    float64, torch matmul + top-k chunked over queries and bank (as :func:`knn_distances`)."""
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    q = torch.as_tensor(as_2d(query, "query"), dtype=torch.float64, device=device)
    B = torch.as_tensor(as_2d(bank, "bank"), dtype=torch.float64, device=device)
    n = B.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, n_bank={n}], got {k}")
    out = torch.empty(q.shape[0], k, dtype=torch.float64, device=device)
    for i in range(0, q.shape[0], q_chunk):
        qi = q[i : i + q_chunk]
        best = qi.new_empty((qi.shape[0], 0))
        for j in range(0, n, b_chunk):
            sims = torch.cat([best, qi @ B[j : j + b_chunk].T], dim=1)
            best = torch.topk(sims, min(k, sims.shape[1]), dim=1, largest=True, sorted=True).values
        out[i : i + q_chunk] = best
    return out.cpu().numpy()


def fit_nnguide(train: Arrays, *, memo: Memo | None = None, **_: Any) -> dict[str, Any]:
    """The guidance bank: L2-normalised training features, each scaled by its energy logsumexp(f);
    its fingerprint and the table memo (as KNN's)."""
    bank = l2_normalize(train["h"]) * logsumexp(as_2d(train["logits"], "logits"), axis=1)[:, None]
    return {"bank": bank, "bank_key": fingerprint(bank), "tables": Memo() if memo is None else memo}


def guidance(h: np.ndarray, state: dict[str, Any], k: int) -> np.ndarray:
    """Mean of the k largest <h/||h||, bank_j> (k capped at the bank size); the sorted table of each query
    set is kept in ``state["tables"]`` deep enough for every k of the grid."""
    bank = state["bank"]
    k = int(min(int(k), len(bank)))
    if k < 1:
        raise ValueError(f"nnguide: k must be >= 1, got {k}")
    z = l2_normalize(h)
    tables: Memo | None = state.get("tables")
    if tables is None:
        return topk_inner_products(z, bank, k).mean(axis=1)
    key = ("ip_table", fingerprint(z), state.get("bank_key") or fingerprint(bank))
    tab = tables.get(key)
    if tab is None or tab.shape[1] < k:
        tab = tables.put(key, topk_inner_products(z, bank, min(max(k, NN_TABLE_K), len(bank))))
    return tab[:, :k].mean(axis=1)


@register(
    "nnguide",
    family="forward",
    display="NNGuide",
    grid={"k": NNGUIDE_K_GRID},
    needs=("h", "logits"),
    fit=fit_nnguide,
    paper="Park et al., ICCV 2023",
)
def nnguide(arrays: Arrays, state: Any = None, *, k: int = 100) -> np.ndarray:
    """NNGuide: s = G(x) * E(x), E = logsumexp(f) the energy, G(x) = mean of the k largest inner products
    <z, E(x_j) z_j> over the training bank, z = h/||h||_2 (Park et al. 2023, "Nearest neighbor guidance
    for out-of-distribution detection"). Default k = 100 (OpenOOD's nnguide.yml); k is capped at the bank
    size; grid: ours (OpenOOD fixes k = 100). Zero features normalise to zero (G = 0).

    Deviations from the authors' code (roomo7time/nnguide; OpenOOD ``nnguide_postprocessor``): the bank is
    the whole training set given to ``fit`` (the paper samples a random subset, 1 % for ImageNet; OpenOOD
    takes the first ``alpha`` = 1 % of its training loader's batches); exact float64 top-k instead of faiss
    float32 ``IndexFlatIP``; OpenOOD's normaliser adds 1e-10 to every entry after dividing, not here."""
    st = require_state("nnguide", state)
    energy = logsumexp(as_2d(arrays["logits"], "logits"), axis=1)
    return guidance(arrays["h"], st, k) * energy
