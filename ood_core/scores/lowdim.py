"""Low-dimensional gradient scores (Wu, Li, Cheng, Yang, Huang 2023, arXiv 2310.17163,
"Low-dimensional gradient helps out-of-distribution detection") and their forward+backward ensemble.

Inputs are the cached ``lowdim_<subspace>`` arrays G_low (N, K): the NFK-whitened per-sample
energy gradient over all weights projected on a K-dim subspace (docs/architecture.md). Scores:
- ``lowdim_knn`` and ``lowdim_mahalanobis`` act on G_low directly;
- ``lowdim_msp / _energy / _odin / _react / _gradnorm`` act on the logits of a linear probe
  BatchNorm1d(K) -> Linear(K, C) trained on the training set's G_low with CE (as Wu's code:
  SGD momentum 0.9, weight decay 5e-4, lr 0.1, 10 epochs, batch 128), seeded and deterministic on
  CPU in float32; fits given one :class:`~ood_core.scores.memo.Memo` share a probe trained on the
  same G_low, labels and hyper-parameters;
- ``lowdim_knn_react`` (family "ensemble") = a * lowdim_knn + ReAct energy on forward features;
- ``lowdim_knn_published`` and ``lowdim_knn_react_published``: the same two as Wu et al.'s code
  computes them (k = 5; ensemble on the SQUARED distance with a = 1), no tuning, so a table row
  beside ours changes one thing.
The probe is affine in eval mode, so all its gradients (ODIN, GradNorm) are closed forms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ood_core.scores._common import (
    KNN_K_GRID,
    PERCENTILE_GRID,
    as_2d,
    check_fitted_param,
    class_means_tied_precision,
    fingerprint,
    logsumexp,
    max_neg_mahalanobis,
    percentile_threshold,
    require_state,
    softmax,
)
from ood_core.scores.forward import fit_react, knn_bank, knn_score, react
from ood_core.scores.memo import Memo
from ood_core.scores.registry import Arrays, Sweep, register

PAPER = "Wu, Li, Cheng, Yang, Huang, arXiv 2310.17163 (2023)"
PROBE_DEFAULTS: dict[str, Any] = {"probe_epochs": 10, "probe_lr": 0.1, "probe_schedule": "cosine", "probe_seed": 0}
PROBE_BATCH, PROBE_MOMENTUM, PROBE_WD = 128, 0.9, 5e-4
WU_K = 5  # Wu et al.'s KNN k (CIFAR-10; their ImageNet runs use 10), fixed in the *_published scores
LOWDIM_INPUT = "lowdim_{subspace}"  # the array every score here reads: G_low of the ``subspace`` parameter


def lowdim_array(arrays: Arrays, subspace: str) -> np.ndarray:
    """G_low = ``arrays['lowdim_<subspace>']`` as float64 (N, K); a missing key lists the present ones."""
    key = f"lowdim_{subspace}"
    if key not in arrays:
        have = sorted(k for k in arrays if k.startswith("lowdim_"))
        raise KeyError(f"low-dim scores need array '{key}' (subspace='{subspace}'); present: {have or 'none'}")
    return as_2d(arrays[key], key)


# --------------------------------------------------------------------------- the linear probe
@dataclass(frozen=True)
class Probe:
    """A trained BatchNorm1d(K) -> Linear(K, C) probe in eval mode, as float64 numpy arrays."""

    bn_mean: np.ndarray
    bn_var: np.ndarray
    bn_weight: np.ndarray
    bn_bias: np.ndarray
    bn_eps: float
    weight: np.ndarray  # (C, K)
    bias: np.ndarray  # (C,)

    @property
    def bn_scale(self) -> np.ndarray:
        return self.bn_weight / np.sqrt(self.bn_var + self.bn_eps)

    def bn(self, z: np.ndarray) -> np.ndarray:
        """BN(z) (eval mode): the input of the probe's Linear layer."""
        return (as_2d(z) - self.bn_mean) * self.bn_scale + self.bn_bias

    def logits(self, z: np.ndarray) -> np.ndarray:
        return self.bn(z) @ self.weight.T + self.bias

    def jacobian(self) -> np.ndarray:
        """d logits / d z = weight * bn_scale (C, K); the probe is affine in eval mode."""
        return self.weight * self.bn_scale[None, :]


def train_probe(
    G: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    *,
    epochs: int = 10,
    lr: float = 0.1,
    schedule: str = "cosine",
    seed: int = 0,
    batch: int = PROBE_BATCH,
    momentum: float = PROBE_MOMENTUM,
    weight_decay: float = PROBE_WD,
    memo: Memo | None = None,
) -> Probe:
    """Train BatchNorm1d(K) -> Linear(K, C) with CE on (G, y): SGD (momentum, weight decay on all
    parameters), lr ``lr`` with a per-step cosine decay to 0 (``schedule='cosine'``) or constant,
    shuffled mini-batches from a seeded torch.Generator, CPU float32. Linear init is PyTorch's
    default law U(-1/sqrt(K), 1/sqrt(K)) drawn from the same generator, so the result depends on
    ``seed`` only. A final batch of one sample is skipped (BatchNorm needs two). With ``memo`` a
    probe trained before on the same data and hyper-parameters is returned instead."""
    import torch
    import torch.nn.functional as F

    if schedule not in ("cosine", "constant"):
        raise ValueError(f"probe schedule must be 'cosine' or 'constant', got '{schedule}'")
    G = np.ascontiguousarray(G, dtype=np.float32)
    y = np.ascontiguousarray(y, dtype=np.int64).ravel()
    if len(G) != len(y):
        raise ValueError(f"G_low ({len(G)}) and labels ({len(y)}) differ in length")
    if np.any(y < 0) or np.any(y >= n_classes):
        raise ValueError(f"probe labels must be in [0, {n_classes}); got range [{y.min()}, {y.max()}]")
    key = (
        "probe",
        fingerprint(G, y),
        int(n_classes),
        int(epochs),
        float(lr),
        schedule,
        int(seed),
        int(batch),
        float(momentum),
        float(weight_decay),
    )
    known = None if memo is None else memo.get(key)
    if known is not None:
        return known

    n, K = G.shape
    gen = torch.Generator().manual_seed(int(seed))
    bn = torch.nn.BatchNorm1d(K)
    lin = torch.nn.Linear(K, n_classes)
    with torch.no_grad():
        bound = 1.0 / math.sqrt(K)
        lin.weight.uniform_(-bound, bound, generator=gen)
        lin.bias.uniform_(-bound, bound, generator=gen)
    model = torch.nn.Sequential(bn, lin).float().train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    X, Y = torch.from_numpy(G), torch.from_numpy(y)
    steps_per_epoch = max(1, math.ceil(n / batch))
    total, step = epochs * steps_per_epoch, 0
    for _ in range(int(epochs)):
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, batch):
            idx = perm[i : i + batch]
            if schedule == "cosine":
                for group in opt.param_groups:
                    group["lr"] = 0.5 * lr * (1.0 + math.cos(math.pi * step / total))
            step += 1
            if len(idx) < 2:
                continue
            loss = F.cross_entropy(model(X[idx]), Y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    d = lambda t: t.detach().cpu().numpy().astype(np.float64)  # noqa: E731
    probe = Probe(
        d(bn.running_mean), d(bn.running_var), d(bn.weight), d(bn.bias), float(bn.eps), d(lin.weight), d(lin.bias)
    )
    return probe if memo is None else memo.put(key, probe)


def _n_classes(train: Arrays) -> int:
    if "W" in train:
        return int(np.asarray(train["W"]).shape[0])
    return int(np.asarray(train["y"]).max()) + 1


def _probe_params(params: dict[str, Any]) -> dict[str, Any]:
    return {k: params.get(k, v) for k, v in PROBE_DEFAULTS.items()}


def fit_probe_state(train: Arrays, *, subspace: str = "pca", memo: Memo | None = None, **params: Any) -> dict[str, Any]:
    """Train (or fetch from ``memo``) the probe on the training G_low."""
    pp = _probe_params(params)
    probe = train_probe(
        lowdim_array(train, subspace),
        train["y"],
        _n_classes(train),
        epochs=pp["probe_epochs"],
        lr=pp["probe_lr"],
        schedule=pp["probe_schedule"],
        seed=pp["probe_seed"],
        memo=memo,
    )
    return {"probe": probe, "subspace": subspace, "probe_params": pp}


def _probe(name: str, state: Any, subspace: str, params: dict[str, Any]) -> Probe:
    st = require_state(name, state)
    check_fitted_param(name, st, "subspace", subspace)
    check_fitted_param(name, st, "probe_params", _probe_params(params))
    return st["probe"]


def _reg_probe(name: str, display: str, grid: dict[str, list[Any]] | None = None, fit=fit_probe_state):
    return register(
        name,
        family="lowdim",
        display=display,
        defaults=dict(PROBE_DEFAULTS),  # read by the fit through **params
        grid=grid or {},
        needs=(LOWDIM_INPUT,),
        fit=fit,
        paper=PAPER,
    )


# --------------------------------------------------------------------------- scores on G_low
def fit_lowdim_knn(train: Arrays, *, subspace: str = "pca", memo: Memo | None = None, **_: Any) -> dict[str, Any]:
    """L2-normalised training G_low, its fingerprint and the distance-table memo."""
    return {**knn_bank(lowdim_array(train, subspace), memo), "subspace": subspace}


@register(
    "lowdim_knn",
    family="lowdim",
    display="Low-dim KNN",
    grid={"k": KNN_K_GRID},
    needs=(LOWDIM_INPUT,),
    fit=fit_lowdim_knn,
    paper=PAPER,
    sweeps=[
        Sweep(
            ("k",),
            values=(1, 5, 10, 50),
            ablation="lowdim_k",
            caption="Low-dim gradient KNN: test AUROC (%) vs k (default subspace)",
        ),
        Sweep(
            ("subspace",),
            ablation="lowdim_subspace",
            caption="Low-dim gradient KNN: test AUROC (%) per subspace / parameter subset (default k)",
        ),
    ],
)
def lowdim_knn(arrays: Arrays, state: Any = None, *, subspace: str = "pca", k: int = 5) -> np.ndarray:
    """Low-dim KNN (Wu et al. 2023): s = -||z - z_(k)||_2 with z = G_low / ||G_low||_2 and z_(k)
    the k-th nearest normalised training G_low (exact; Wu: k = 5 CIFAR / 10 ImageNet, score on the
    squared distance -- monotone-equivalent). k is capped at n_train."""
    st = require_state("lowdim_knn", state)
    check_fitted_param("lowdim_knn", st, "subspace", subspace)
    return knn_score(lowdim_array(arrays, subspace), st["bank"], k, st.get("bank_key"), st.get("tables"))


@register(
    "lowdim_knn_published",
    family="lowdim",
    display="Low-dim KNN (Wu et al.'s k = 5)",
    needs=(LOWDIM_INPUT,),
    fit=fit_lowdim_knn,
    paper=PAPER,
)
def lowdim_knn_published(arrays: Arrays, state: Any = None, *, subspace: str = "pca") -> np.ndarray:
    """Low-dim KNN with Wu et al.'s k: s = -||z - z_(5)||_2, i.e. ``lowdim_knn`` at k = 5, not tuned
    (z = G_low / ||G_low||_2, z_(5) the 5-th nearest normalised training G_low, exact). Wu's code
    (knn() in 2023_05_26_detect_with_low_grad.py / github_main.py) scores -||z - z_(5)||^2 from
    faiss IndexFlatL2: monotone-equivalent, same AUROC / FPR. Differs from the authors' code in:
    the bank is the training rows the profile caches (Wu: all 50,000 CIFAR-10 training rows);
    their normaliser is x / (||x|| + 1e-10) (ours: x / ||x||, an all-zero row stays zero); the
    subspace and its K are whatever the profile extracted (Wu: PCA, K = 200)."""
    return lowdim_knn(arrays, state, subspace=subspace, k=WU_K)


def fit_lowdim_mahalanobis(train: Arrays, *, subspace: str = "pca", **_: Any) -> dict[str, Any]:
    classes, means, prec = class_means_tied_precision(lowdim_array(train, subspace), train["y"])
    return {"classes": classes, "means": means, "precision": prec, "subspace": subspace}


@register(
    "lowdim_mahalanobis",
    family="lowdim",
    display="Low-dim Mahalanobis",
    needs=(LOWDIM_INPUT,),
    fit=fit_lowdim_mahalanobis,
    paper=PAPER,
)
def lowdim_mahalanobis(arrays: Arrays, state: Any = None, *, subspace: str = "pca") -> np.ndarray:
    """Low-dim Mahalanobis (Wu et al. 2023): s = max_c -(z - mu_c)^T P (z - mu_c) on G_low with
    class means and tied-covariance pseudo-inverse from the training G_low (no input
    pre-processing, Wu's magnitude 0)."""
    st = require_state("lowdim_mahalanobis", state)
    check_fitted_param("lowdim_mahalanobis", st, "subspace", subspace)
    return max_neg_mahalanobis(lowdim_array(arrays, subspace), st["means"], st["precision"])


# --------------------------------------------------------------------------- probe scores
@_reg_probe("lowdim_msp", "Low-dim MSP")
def lowdim_msp(arrays: Arrays, state: Any = None, *, subspace: str = "pca", **pp: Any) -> np.ndarray:
    """Low-dim MSP (Wu et al. 2023): s = max softmax(probe(G_low)), probe = BatchNorm1d -> Linear
    trained on training G_low (10 epochs, SGD)."""
    probe = _probe("lowdim_msp", state, subspace, pp)
    return softmax(probe.logits(lowdim_array(arrays, subspace))).max(axis=1)


@_reg_probe("lowdim_energy", "Low-dim Energy")
def lowdim_energy(arrays: Arrays, state: Any = None, *, subspace: str = "pca", T: float = 1.0, **pp: Any) -> np.ndarray:
    """Low-dim Energy (Wu et al. 2023): s = T logsumexp(probe(G_low) / T)."""
    probe = _probe("lowdim_energy", state, subspace, pp)
    return float(T) * logsumexp(probe.logits(lowdim_array(arrays, subspace)) / float(T), axis=1)


@_reg_probe(
    "lowdim_odin",
    "Low-dim ODIN",
    grid={"T": [1.0, 10.0, 100.0, 1000.0], "eps": [0.0, 0.005, 0.05, 0.5, 5.0, 50.0]},
)
def lowdim_odin(
    arrays: Arrays, state: Any = None, *, subspace: str = "pca", T: float = 100.0, eps: float = 50.0, **pp: Any
) -> np.ndarray:
    """Low-dim ODIN (Wu et al. 2023; their CIFAR T = 100, eps = 50, ImageNet eps = 0.005):
    perturb the probe INPUT z~ = G_low - eps * sign(grad_z CE(probe(z)/T, yhat)) and score
    s = max softmax(probe(z~)/T). The probe is affine in eval mode, so
    grad_z = J^T (p_T - e_yhat) / T with J = d probe / d z (exact, batched)."""
    probe = _probe("lowdim_odin", state, subspace, pp)
    z = lowdim_array(arrays, subspace)
    f = probe.logits(z)
    p = softmax(f, T)
    p[np.arange(len(p)), np.argmax(f, axis=1)] -= 1.0
    grad = p @ probe.jacobian() / float(T)
    return softmax(probe.logits(z - float(eps) * np.sign(grad)), T).max(axis=1)


def fit_lowdim_react(
    train: Arrays,
    *,
    subspace: str = "pca",
    percentile: float = 90.0,
    clip_from: int = 0,
    memo: Memo | None = None,
    **params: Any,
) -> dict[str, Any]:
    """Probe + threshold c = percentile of the TRAINING G_low entries in dims >= clip_from."""
    st = fit_probe_state(train, subspace=subspace, memo=memo, **params)
    G = lowdim_array(train, subspace)
    st.update(
        c=percentile_threshold(G[:, int(clip_from) :], percentile),
        percentile=float(percentile),
        clip_from=int(clip_from),
    )
    return st


@_reg_probe(
    "lowdim_react",
    "Low-dim ReAct",
    grid={"percentile": [70.0, 80.0] + PERCENTILE_GRID},
    fit=fit_lowdim_react,
)
def lowdim_react(
    arrays: Arrays, state: Any = None, *, subspace: str = "pca", percentile: float = 90.0, clip_from: int = 0, **pp: Any
) -> np.ndarray:
    """Low-dim ReAct (Wu et al. 2023): clip G_low at c, s = logsumexp(probe(min(z, c))), clipping
    only dims >= ``clip_from`` (Wu's CIFAR code clips dims >= 10; default 0 = all dims).
    DEVIATION from Wu's code: c is the p-th percentile (default 90) of the TRAINING G_low, fixed at
    fit time; Wu took it from the ID TEST G_low (a test-set leak)."""
    probe = _probe("lowdim_react", state, subspace, pp)
    check_fitted_param("lowdim_react", state, "percentile", float(percentile))
    check_fitted_param("lowdim_react", state, "clip_from", int(clip_from))
    z = lowdim_array(arrays, subspace).copy()
    z[:, int(clip_from) :] = np.minimum(z[:, int(clip_from) :], state["c"])
    return logsumexp(probe.logits(z), axis=1)


@_reg_probe("lowdim_gradnorm", "Low-dim GradNorm")
def lowdim_gradnorm(
    arrays: Arrays, state: Any = None, *, subspace: str = "pca", T: float = 1.0, **pp: Any
) -> np.ndarray:
    """Low-dim GradNorm (Wu et al. 2023): GradNorm of the probe's Linear layer in closed form,
    s = (1/T) ||BN(z)||_1 ||p_T - u||_1 (BN(z) is the Linear layer's input; KL-to-uniform
    gradient; Wu's all-ones CE target multiplies this by C, a monotone factor)."""
    probe = _probe("lowdim_gradnorm", state, subspace, pp)
    z = lowdim_array(arrays, subspace)
    p = softmax(probe.logits(z), T)
    return np.abs(probe.bn(z)).sum(axis=1) * np.abs(p - 1.0 / p.shape[1]).sum(axis=1) / float(T)


# --------------------------------------------------------------------------- ensemble
def fit_lowdim_knn_react(
    train: Arrays, *, subspace: str = "pca", percentile: float = 90.0, memo: Memo | None = None, **_: Any
) -> dict[str, Any]:
    """KNN bank on training G_low + ReAct threshold on training forward features h."""
    return {
        "knn": fit_lowdim_knn(train, subspace=subspace, memo=memo),
        "react": fit_react(train, percentile=percentile),
    }


@register(
    "lowdim_knn_react",
    family="ensemble",
    display="Low-dim KNN + ReAct",
    grid={"a": [0.1, 0.3, 1.0, 3.0, 10.0]},
    needs=("h", "W", "b", LOWDIM_INPUT),
    fit=fit_lowdim_knn_react,
    paper=PAPER,
)
def lowdim_knn_react(
    arrays: Arrays, state: Any = None, *, a: float = 1.0, subspace: str = "pca", k: int = 5, percentile: float = 90.0
) -> np.ndarray:
    """Forward + backward ensemble (Wu et al. 2023): s = a * lowdim_knn(G_low; k) + ReAct(h; p),
    a = 1, p = 90. DEVIATION: the ReAct threshold comes from the TRAINING features (Wu's code
    used ID test features)."""
    st = require_state("lowdim_knn_react", state)
    return float(a) * lowdim_knn(arrays, st["knn"], subspace=subspace, k=k) + react(
        arrays, st["react"], percentile=percentile
    )


@register(
    "lowdim_knn_react_published",
    family="ensemble",
    display="Low-dim KNN + ReAct (Wu et al.'s ensemble)",
    needs=("h", "W", "b", LOWDIM_INPUT),
    fit=fit_lowdim_knn_react,
    paper=PAPER,
)
def lowdim_knn_react_published(
    arrays: Arrays, state: Any = None, *, subspace: str = "pca", percentile: float = 90.0
) -> np.ndarray:
    """Wu et al.'s forward + backward ensemble as their code computes it:
    s = -||z - z_(5)||_2^2 + logsumexp(W min(h, c) + b), i.e. a = 1 times the SQUARED 5-NN
    distance of the L2-normalised G_low (faiss IndexFlatL2 distances, their knn(): -D[:, -1])
    plus forward ReAct energy at T = 1 (their react(): temper * logsumexp(logits / temper),
    higher = ID) on penultimate features h clipped at c, the 90th percentile of the flattened
    features; both terms higher = ID, summed unweighted (`confs = a*knn(feat_log, feat_log_val, K)
    + react(...)`, a = 1, K = 5, in the deleted history script 2023_05_26_detect_with_low_grad.py).
    No grid. Differs from ``lowdim_knn_react`` (ours: a tuned, plain distance) in those two things
    only. Differs from the authors' code in: c comes from the TRAINING features (theirs: the ID
    TEST features, a test-set leak); the KNN bank is the training rows the profile caches (theirs:
    all training rows) and the normaliser x / ||x|| (theirs: x / (||x|| + 1e-10))."""
    st = require_state("lowdim_knn_react_published", state)
    knn_sq = lowdim_knn_published(arrays, st["knn"], subspace=subspace) ** 2
    return -knn_sq + react(arrays, st["react"], percentile=percentile)
