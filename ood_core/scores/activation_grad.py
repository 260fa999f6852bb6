"""Activation-gradient scores: NAC-UE, GAIA-Z, GAIA-A, GROOD (and its ``no_gradients`` ablation).

All return float64 (N,), higher = more in-distribution. NAC-UE on the pooled penultimate layer and
GROOD read only ``h``, ``logits``, ``W`` (their gradients have closed forms there); NAC-UE on inner
stages and GAIA read the arrays of one batched backward per loss (``ood_core/grads/activations.py``):
``nac_<stage>``, ``gaia_z``, ``gaia_a``.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ood_core.scores._common import as_2d, check_fitted_param, f64, kth_nn_distance, require_state, softmax
from ood_core.scores.registry import Arrays, register

# NAC-UE, the authors' CIFAR-10 setting (ood_coverage configs/postprocessors/nac/resnet/nac_cifar10.yml):
# the avgpool layer with O = 50, M = 50, alpha = 100; their sweep is O in {10, 50}; 1,000 training
# images (100 per class) build the histogram.
NAC_O_GRID: list[int] = [10, 50]
NAC_FIT_ROWS = 1000
# the same file's settings of the inner stages: (O, M, alpha) per stage
NAC_STAGE_SETTINGS: dict[str, tuple[int, int, float]] = {
    "layer3": (100, 500, 1000.0),
    "layer2": (5, 50, 0.001),
    "layer1": (100, 500, 0.001),
}
# GROOD: OpenOOD's grood.yaml default k = 1 and sweep
GROOD_K_GRID: list[int] = [1, 10, 20, 50, 100]


# --------------------------------------------------------------------------- NAC-UE
def nac_edges(M: int) -> np.ndarray:
    """The authors' M thresholds on [0, 1.2] (M - 1 bins): log-spaced towards 0 and towards 1
    (log base 1000 of linspace(1, sqrt(1000), M/2), mirrored at 0.5), the last finite edge moved to
    1.01 and 1.2 appended, so the top bin [1.01, 1.2) is never hit by a sigmoid. M must be even (their
    code fails for odd M)."""
    M = int(M)
    if M < 4 or M % 2:
        raise ValueError(f"nac: M must be an even number >= 4, got {M}")
    left = np.log(np.linspace(1.0, np.sqrt(1000.0), M // 2)) / np.log(1000.0)
    edges = np.concatenate([left[:-1], (1.0 - left)[::-1]])
    edges[-1] += 1e-2
    return np.append(edges, 1.2)


def nac_bins(states: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin index i of every state with edges[i] <= s < edges[i + 1], clipped to [0, len(edges) - 2]
    (the authors' states lie in (0, 1], inside their edges; clipping only matters for other edges)."""
    idx = np.searchsorted(np.asarray(edges, np.float64), states, side="right") - 1
    return np.clip(idx, 0, len(edges) - 2)


def nac_coverage_table(states: np.ndarray, edges: np.ndarray, O: float) -> np.ndarray:
    """(n_bins, D): min(count / O, 1) of the training states (N, D) in every bin of every neuron."""
    states = as_2d(states, "states")
    idx = nac_bins(states, edges)
    n_bins, D = len(edges) - 1, states.shape[1]
    counts = np.zeros((n_bins, D))
    np.add.at(counts, (idx, np.broadcast_to(np.arange(D), idx.shape)), 1.0)
    return np.minimum(counts / float(O), 1.0)


def nac_layer_score(states: np.ndarray, table: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Mean over neurons of the coverage of the bin each state falls in (N,)."""
    states = as_2d(states, "states")
    idx = nac_bins(states, edges)
    return table[idx, np.arange(states.shape[1])[None, :]].mean(axis=1)


def penultimate_products(arrays: Arrays) -> np.ndarray:
    """q = h * dKL(u || softmax f)/dh = h * W^T (p - u), the pooled penultimate layer's NAC products."""
    logits = as_2d(arrays["logits"], "logits")
    delta = softmax(logits) - 1.0 / logits.shape[1]
    return as_2d(arrays["h"], "h") * (delta @ f64(arrays["W"]))


def nac_states(q: np.ndarray, alpha: float) -> np.ndarray:
    """sigmoid(alpha * q), float64, without overflow warnings."""
    z = float(alpha) * f64(q)
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    ez = np.exp(z[~pos])
    out[~pos] = ez / (1.0 + ez)
    return out


def fit_rows(y: np.ndarray, n: int, seed: int = 1) -> np.ndarray:
    """Sorted row indices of a class-balanced subset: n // n_classes rows per class (fewer if a class
    has fewer), seeded; all rows when n >= len(y)."""
    y = np.asarray(y)
    if n >= len(y):
        return np.arange(len(y))
    classes = np.unique(y)
    per = max(1, n // len(classes))
    rng = np.random.default_rng(seed)
    rows = [rng.permutation(np.flatnonzero(y == c))[:per] for c in classes]
    return np.sort(np.concatenate(rows))


def _nac_layers(arrays: Arrays, stages: Sequence[str]) -> list[np.ndarray]:
    """The products q of the penultimate layer, then of each stage (``nac_<stage>``)."""
    return [penultimate_products(arrays)] + [f64(arrays[f"nac_{s}"]) for s in stages]


def _nac_settings(O: float, M: int, alpha: float, stages: Sequence[str]) -> list[tuple[float, int, float]]:
    return [(float(O), int(M), float(alpha))] + [NAC_STAGE_SETTINGS[s] for s in stages]


def fit_nac(train: Arrays, *, O: float = 50, M: int = 50, alpha: float = 100.0, **_: Any) -> dict[str, Any]:
    """Per layer: the authors' edges and the coverage table of the states of a class-balanced subset
    of ``NAC_FIT_ROWS`` training rows (the pooled penultimate layer)."""
    return nac_tables(train, O, M, alpha, ())


def nac_tables(
    train: Arrays, O: float, M: int, alpha: float, stages: Sequence[str], n_fit: int = NAC_FIT_ROWS
) -> dict[str, Any]:
    """:func:`fit_nac` on the pooled penultimate layer and the inner ``stages``."""
    rows = fit_rows(train["y"], int(n_fit))
    sub = {k: (v[rows] if k in ("h", "logits") or k.startswith("nac_") else v) for k, v in train.items()}
    layers = []
    for q, (o, m, a) in zip(_nac_layers(sub, stages), _nac_settings(O, M, alpha, stages)):
        edges = nac_edges(m)
        layers.append((edges, nac_coverage_table(nac_states(q, a), edges, o), a))
    return {"layers": layers, "O": float(O), "M": int(M), "alpha": float(alpha), "n_fit": len(rows)}


def nac_score(arrays: Arrays, state: Any, stages: Sequence[str], O: float, M: int, alpha: float) -> np.ndarray:
    st = require_state("nac_ue", state)
    for key, value in (("O", float(O)), ("M", int(M)), ("alpha", float(alpha))):
        check_fitted_param("nac_ue", st, key, value)
    scores = [
        nac_layer_score(nac_states(q, a), table, edges)
        for q, (edges, table, a) in zip(_nac_layers(arrays, stages), st["layers"])
    ]
    return np.mean(scores, axis=0)


@register(
    "nac_ue",
    family="activation_gradient",
    display="NAC-UE",
    grid={"O": NAC_O_GRID},
    needs=("h", "logits", "W"),
    fit=fit_nac,
    paper="Liu et al., ICLR 2024",
)
def nac_ue(arrays: Arrays, state: Any = None, *, O: float = 50, M: int = 50, alpha: float = 100.0) -> np.ndarray:
    """NAC-UE: s = 1/D sum_d cov_d(bin(sigmoid(alpha * q_d))), q = h * dKL(u || softmax f)/dh =
    h * W^T (p - u) on the pooled penultimate layer, cov_d(b) = min(n_d(b) / O, 1) with n_d(b) the number
    of training states of neuron d in bin b (Liu et al. 2024, "Neuron activation coverage: rethinking
    out-of-distribution detection and generalization"). Defaults and grid: the authors' CIFAR-10 config
    (layer avgpool, O = 50, M = 50, alpha = 100; sweep O in {10, 50}).

    Deviations from the authors' code (BierOne/ood_coverage, ``nac/coverage.py``): (1) the histogram's
    1,000 class-balanced training rows are drawn from the rows given to ``fit`` with numpy's seeded
    generator (their ``TrainSubset``: a RandomState(1) shuffle of the full training set); fewer rows
    when fewer are given. (2) dKL/dh in closed form, float64, from the cached float32 h and logits
    (theirs: autograd, float32). (3) Bins: the same edges, [e_i, e_{i+1}); identical for states in
    (0, 1]. pytorch-ood's ``NACUE`` differs in its bins (geometric edges, M bins, right-closed), sums
    over layers instead of averaging, and pools z * dKL/dz instead of multiplying the pooled z and
    dKL/dz (equal on this pooled layer)."""
    return nac_score(arrays, state, (), O, M, alpha)


def fit_nac_stages(train: Arrays, *, O: float = 50, M: int = 50, alpha: float = 100.0, **_: Any) -> dict[str, Any]:
    """:func:`fit_nac` with the inner stages layer1..layer3."""
    return nac_tables(train, O, M, alpha, tuple(NAC_STAGE_SETTINGS))


@register(
    "nac_ue_stages",
    family="activation_gradient",
    display="NAC-UE (4 layers)",
    grid={"O": NAC_O_GRID},
    needs=("h", "logits", "W", "nac_layer3", "nac_layer2", "nac_layer1"),
    fit=fit_nac_stages,
    paper="Liu et al., ICLR 2024",
)
def nac_ue_stages(arrays: Arrays, state: Any = None, *, O: float = 50, M: int = 50, alpha: float = 100.0) -> np.ndarray:
    """NAC-UE on four layers: the mean over layers of ``nac_ue``'s per-layer coverage score, for the pooled
    penultimate layer (O, M, alpha: the parameters) and for layer3, layer2, layer1 with the states
    sigmoid(alpha_l * (sum_hw z_c)(sum_hw dKL/dz_c)) (the authors' spatial sums, pooled before the
    product) and the authors' CIFAR-10 settings of those layers (O, M, alpha) = (100, 500, 1000),
    (5, 50, 0.001), (100, 500, 0.001) (Liu et al. 2024; ood_coverage nac_cifar10.yml, whose default
    run uses avgpool alone: ``nac_ue``).

    Deviations from the authors' code: as ``nac_ue``; the inner layers' products come from one batched
    backward of the summed KL (per sample exact: eval mode), float32; only the penultimate layer's O is
    tuned (their sweep also crosses the inner layers' O, M, alpha: 256 combinations)."""
    return nac_score(arrays, state, tuple(NAC_STAGE_SETTINGS), O, M, alpha)


# --------------------------------------------------------------------------- GAIA
@register(
    "gaia_z",
    family="activation_gradient",
    display="GAIA-Z",
    needs=("gaia_z",),
    paper="Chen et al., NeurIPS 2023",
)
def gaia_z(arrays: Arrays, state: Any = None) -> np.ndarray:
    """GAIA-Z: s = -1/K sum_k rho_k^2, rho_k = share of the spatial positions of channel k of a
    BatchNorm2d output where d max_c f_c / dz != 0, over the K channels of every BatchNorm2d layer
    (Chen et al. 2023, "GAIA: delving into gradient-based attribution abnormality for
    out-of-distribution detection"; the cached ``gaia_z`` is the mean). No hyper-parameters.

    Deviations from the authors' code (JGEthanChen/GAIA-OOD ``cal_zero``, ``get_bn_hooks``): none in the
    formula; gradients from ``autograd.grad`` of the batch's summed max logit (theirs: ``backward`` with
    tensor hooks, the same values); the BatchNorm2d layers of our ResNet-18 (theirs: ResNet-34)."""
    return -f64(arrays["gaia_z"])


@register(
    "gaia_a",
    family="activation_gradient",
    display="GAIA-A",
    needs=("gaia_a",),
    paper="Chen et al., NeurIPS 2023",
)
def gaia_a(arrays: Arrays, state: Any = None) -> np.ndarray:
    """GAIA-A: s = -1/K sum_k (a_k / sqrt(m))^2, a_k = mean_hw d(sum_d h_d)/dz_k over the K channels of the
    BatchNorm2d outputs in the last two stages (layer3, layer4), m = mean_c |mean_hw d(sum_j log p_j)/dz_c|
    at the last stage's output (Chen et al. 2023, "GAIA: delving into gradient-based attribution
    abnormality for out-of-distribution detection"; the cached ``gaia_a`` is the mean). No hyper-parameters.

    Deviations from the authors' code (JGEthanChen/GAIA-OOD ``cal_grad_value``, ``get_beforehead_hooks``):
    m is floored at 1e-30 (theirs divides by it as is); ``autograd.grad`` of each summed loss instead of two
    ``backward`` calls with tensor hooks (the same values); our ResNet-18's layers (theirs: ResNet-34)."""
    return -f64(arrays["gaia_a"])


# --------------------------------------------------------------------------- GROOD
def fit_grood(train: Arrays, **_: Any) -> dict[str, Any]:
    """Class prototypes (mean training h per label), the OOD prototype (their mean) and the bank of
    prototype gradients of the correctly classified training rows (:func:`grood_gradients`)."""
    h, y = as_2d(train["h"], "h"), np.asarray(train["y"])
    classes = np.arange(as_2d(train["logits"], "logits").shape[1])
    protos = np.stack([h[y == c].mean(axis=0) if np.any(y == c) else np.zeros(h.shape[1]) for c in classes])
    ood_proto = protos[[c for c in classes if np.any(y == c)]].mean(axis=0)
    state = {"prototypes": protos, "ood_prototype": ood_proto}
    right = np.argmax(as_2d(train["logits"], "logits"), axis=1) == y
    if not right.any():
        raise ValueError("grood: no correctly classified training row to build the gradient bank from")
    state["bank"] = grood_gradients(h[right], state)
    return state


def grood_gradients(h: np.ndarray, state: dict[str, Any]) -> np.ndarray:
    """d CE(-||h - P||, yhat) / d p_ood = q_ood (h - p_ood) / ||h - p_ood||, P = the class prototypes and
    p_ood, q = softmax of the negative distances (the OOD prototype is never the target class)."""
    h = as_2d(h, "h")
    P = np.vstack([state["prototypes"], state["ood_prototype"][None, :]])
    d = np.sqrt(np.maximum(((h[:, None, :] - P[None]) ** 2).sum(-1), 0.0))
    q_ood = softmax(-d)[:, -1]
    v = h - state["ood_prototype"]
    return q_ood[:, None] * v / np.maximum(d[:, -1:], 1e-300)


@register(
    "grood",
    family="activation_gradient",
    display="GROOD",
    grid={"k": GROOD_K_GRID},
    needs=("h",),
    fit=fit_grood,
    paper="ElAraby et al., TMLR 2025",
)
def grood(arrays: Arrays, state: Any = None, *, k: int = 1) -> np.ndarray:
    """GROOD: s = -||g(x) - g_(k)||_2^2, g(x) = d CE(-||h - P||, yhat)/d p_ood = q_ood (h - p_ood)/||h - p_ood||
    the gradient of the nearest-prototype cross-entropy w.r.t. the OOD prototype (P: class means of the
    training h and p_ood; q = softmax(-||h - P||); yhat = argmax f is never p_ood, so the closed form is
    exact), g_(k) its k-th nearest gradient of a correctly classified training row (ElAraby et al. 2025,
    "GROOD: gradient-aware out-of-distribution detection"). Default k = 1 and grid: OpenOOD's grood.yaml.

    Deviations from OpenOOD's ``grood.py`` (the authors' code in OpenOOD): (1) p_ood is the mean of the class
    prototypes (their ``use_proto_mean`` option): their default averages the features of 100 OOD
    validation images (``use_val_ood``), which the fit (training rows only) does not see. (2) Exact
    float64 k-NN instead of faiss IndexIVFFlat (nprobe 4, approximate). (3) The closed form instead of a
    per-sample autograd loop; yhat enters only as "not p_ood", so the logits are not read."""
    st = require_state("grood", state)
    g = grood_gradients(arrays["h"], st)
    kk = int(min(int(k), len(st["bank"])))
    return -(kth_nn_distance(g, st["bank"], kk) ** 2)


@register(
    "grood_no_gradients",
    family="activation_gradient",
    display="GROOD (no gradients)",
    needs=("h",),
    fit=fit_grood,
    paper="ElAraby et al., TMLR 2025",
)
def grood_no_gradients(arrays: Arrays, state: Any = None) -> np.ndarray:
    """GROOD's ``no_gradients`` ablation: s = ||h - p_ood||_2, the distance to the OOD prototype (ElAraby et
    al. 2025; OpenOOD ``grood.py`` with ``no_gradients``). Deviations: p_ood as in ``grood``."""
    st = require_state("grood_no_gradients", state)
    return np.linalg.norm(as_2d(arrays["h"], "h") - st["ood_prototype"], axis=1)
