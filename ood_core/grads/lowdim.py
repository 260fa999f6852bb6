"""Low-dimensional gradients (Wu, Li, Cheng, Yang, Huang 2023, arXiv 2310.17163).

Per-sample gradient g(x) = grad_theta logsumexp(f(x)) (energy; other targets via ``delta_fn``) over
a parameter subset (``"all"``, ``"head"``, ``"last_block"`` = last residual stage + head, or a list
of parameter-name prefixes). Whitening "nfk": z_bar = mean training gradient, sigma^2 = population
variance per coordinate, scale = 1/sigma with zero-variance coordinates given the largest finite
scale; g~ = (g - z_bar) * scale. ``stats=None`` means normalisation "none" (g~ = g).

Nothing here holds an N x P matrix: every function streams over a data iterator (``batches`` yields
normalized x tensors, or (x, y, ...) tuples whose first item is x) and over chunks of per-sample
gradients (``stream.py``; ``method`` = "hooks", the default, or "vmap" for models the hooks engine
cannot handle, e.g. LayerNorm / GroupNorm). Subspace bases V (P, K) and the stats live on the model's
device; P x K must fit there (ResNet-18, K = 200: 2.2 G entries = 9 GB in float32).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Protocol, Sequence

import numpy as np
import torch
import torch.nn as nn

from ood_core.extraction.distributed import Ranks
from ood_core.grads.deltas import DeltaFn, energy_delta
from ood_core.grads.runtime import model_device_dtype
from ood_core.grads.selection import ParamSpec, last_block_prefixes, resolve_params  # noqa: F401  (re-exported)
from ood_core.grads.stream import HEAD_NAMES, head_grads_closed_form, iter_raw_grads, num_selected_params

if TYPE_CHECKING:
    pass

__all__ = [
    "HEAD_NAMES",
    "GradStats",
    "class_mean_subspace",
    "fold_whitening",
    "gradient_stats",
    "head_grads_closed_form",
    "iter_whitened_grads",
    "last_block_prefixes",
    "pca_subspace",
    "project",
    "resolve_params",
    "whiten",
]

GradStats = tuple[torch.Tensor, torch.Tensor]  # (mean (P,), scale (P,))
DEFAULT_CHUNK = 16  # samples whose full gradients are materialised at once (Wu et al.: 16 on CIFAR)
# the functions that stream gradients take ``method`` ("hooks" | "vmap", ``per_sample.METHODS``): the
# per-sample gradient engine for parameter sets other than the head (which has a closed form)


# --------------------------------------------------------------------------------------------------
# whitened per-sample gradients (streamed by stream.py)


class PassState(Protocol):
    """A long fit's finished passes, kept so that an interrupted fit resumes after the last one
    (``ood_core.extraction.store.PassCheckpoint``): ``state`` as saved, ``update`` merges and saves."""

    state: dict[str, Any]

    def update(self, **values: Any) -> None: ...


def whiten(g: torch.Tensor, stats: GradStats | None) -> torch.Tensor:
    """g~ = (g - mean) * scale, or g if ``stats`` is None (normalisation "none")."""
    if stats is None:
        return g
    mean, scale = stats
    return (g - mean.to(g.dtype)) * scale.to(g.dtype)


def iter_whitened_grads(
    model: nn.Module,
    batches: Iterable,
    stats: GradStats | None = None,
    params: ParamSpec = "all",
    *,
    delta_fn: DeltaFn = energy_delta,
    chunk: int = DEFAULT_CHUNK,
    method: str = "hooks",
) -> Iterator[torch.Tensor]:
    """Chunks (n, P) of whitened per-sample gradients, in data order."""
    names = resolve_params(model, params)
    for g, _ in iter_raw_grads(model, batches, names, delta_fn, chunk, method=method):
        yield whiten(g, stats)


def _out_dtype(model: nn.Module) -> torch.dtype:
    return torch.float64 if model_device_dtype(model)[1] == torch.float64 else torch.float32


# --------------------------------------------------------------------------------------------------
# statistics


def _merge_moments(
    a: tuple[int, torch.Tensor, torch.Tensor] | None, nb: int, mb: torch.Tensor, m2b: torch.Tensor
) -> tuple[int, torch.Tensor, torch.Tensor]:
    """(count, mean, centred sum of squares) of two disjoint sample sets (Chan, Golub, LeVeque 1983)."""
    if a is None or a[0] == 0:
        return nb, mb, m2b
    if nb == 0:
        return a
    count, mean, m2 = a
    tot = count + nb
    d = mb - mean
    return tot, mean + d * (nb / tot), m2 + m2b + d.pow(2) * (count * nb / tot)


def gradient_stats(
    model: nn.Module,
    batches: Iterable,
    params: ParamSpec = "all",
    *,
    delta_fn: DeltaFn = energy_delta,
    chunk: int = DEFAULT_CHUNK,
    method: str = "hooks",
    ranks: Ranks = Ranks(),
) -> GradStats:
    """NFK whitening statistics over the samples of ``batches``: ``(mean (P,), scale (P,))``.

    One pass; chunk means and centred sums of squares are merged in float64 (Chan et al.), so no
    cancellation. Variance is the population variance (ddof = 0, as Wu et al.). scale = 1/sigma;
    coordinates with sigma = 0 get the largest finite scale (1 if there is none). Under several
    ``ranks`` each holds a shard of the samples; their moments are merged in rank order."""
    names = resolve_params(model, params)
    moments = None  # (count, mean, m2), float64
    for g, _ in iter_raw_grads(model, batches, names, delta_fn, chunk, method=method):
        # chunk moments in the gradients' dtype, in place (g is a scratch buffer: no multi-GB
        # float64 copy per chunk, and dtype-converting reductions over dim 0 are 15x slower on the
        # CPU); the chunks are merged in float64
        mb_g = g.mean(0)
        m2b = g.sub_(mb_g).square_().sum(0).to(torch.float64)
        moments = _merge_moments(moments, g.shape[0], mb_g.to(torch.float64), m2b)
    if ranks.is_distributed:
        P = num_selected_params(model, names, method)
        dev = model_device_dtype(model)[0]
        zero = torch.zeros(P, dtype=torch.float64, device=dev)
        count, mean, m2 = moments if moments is not None else (0, zero, zero)
        counts = ranks.all_gather(torch.tensor([float(count)], dtype=torch.float64, device=dev))
        moments = None
        for c, mb, m2b in zip(counts, ranks.all_gather(mean), ranks.all_gather(m2)):
            moments = _merge_moments(moments, int(c.item()), mb, m2b)
    if moments is None or moments[0] == 0:
        raise ValueError("gradient_stats: the batch iterator yielded no samples")
    count, mean, m2 = moments
    sigma = torch.sqrt(m2 / count)
    scale = torch.where(sigma > 0, 1.0 / sigma, torch.full_like(sigma, float("inf")))
    finite = torch.isfinite(scale)
    fill = scale[finite].max() if bool(finite.any()) else torch.tensor(1.0, dtype=scale.dtype, device=scale.device)
    scale = torch.where(finite, scale, fill)
    dt = _out_dtype(model)
    return mean.to(dt), scale.to(dt)


# --------------------------------------------------------------------------------------------------
# subspaces


def _acc_dtype(model: nn.Module, P: int, k: int, budget: int = 2**30) -> torch.dtype:
    """float64 accumulation of (P, k) products when it costs <= ``budget`` bytes, else float32."""
    if model_device_dtype(model)[1] == torch.float64 or P * k * 8 <= budget:
        return torch.float64
    return torch.float32


ORTH_BLOCK_ROWS = 1 << 18  # rows per block of the blocked Gram and triangular products (memory-bound)
ORTH_TOL = 1e-4  # largest |Q^T Q - I| entry accepted after the Cholesky steps (float32 data)


def _gram64(a: torch.Tensor) -> torch.Tensor:
    """a^T a accumulated in float64 over row blocks (no float64 copy of a)."""
    g = torch.zeros(a.shape[1], a.shape[1], dtype=torch.float64, device=a.device)
    for s in range(0, a.shape[0], ORTH_BLOCK_ROWS):
        blk = a[s : s + ORTH_BLOCK_ROWS].to(torch.float64)
        g.addmm_(blk.T, blk)
    return g


GRAM32_MAX_COND = 1e3  # float32 Cholesky-QR is accurate for cond(a) below ~eps^-1/2; a safe margin


def _first_gram(a: torch.Tensor) -> torch.Tensor:
    """a^T a (float64) for the first Cholesky step: a float32 product when a is well conditioned
    (cond(a) < GRAM32_MAX_COND by the eigenvalues of that product), else accumulated in float64."""
    if a.dtype == torch.float64:
        return _gram64(a)
    g = (a.T @ a).to(torch.float64)
    ev = torch.linalg.eigvalsh(g)
    if float(ev[0]) > float(ev[-1]) / GRAM32_MAX_COND**2:
        return g
    return _gram64(a)


def orthonormalize(a: torch.Tensor, *, overwrite: bool = False, return_r: bool = False) -> Any:
    """Orthonormal basis Q (m, l) of the columns of a tall ``a`` (m >= l), same span as
    ``torch.linalg.qr(a).Q``: Cholesky-QR2 (Fukaya et al. 2014). Step 1 takes the l x l Gram matrix
    in float64 arithmetic when ``a`` is ill-conditioned (float32 ``a`` with cond up to ~1e7 survives),
    step 2 that of the nearly orthonormal result in a's dtype; Q = a R^-1 is written block by block
    (one small scratch block), and a third step runs when |Q^T Q - I| > ORTH_TOL after the second.
    Householder QR when the Gram matrix is not numerically positive definite (rank-deficient ``a``)
    or for short ``a``. ``overwrite``: work in ``a``'s memory (no (m, l) copy; ``a`` is then Q).
    ``return_r``: return ``(Q, R)`` with a = Q R, R (l, l) float64 upper triangular."""
    m, l = a.shape
    if m < 4 * l or not a.is_floating_point():
        q, r = torch.linalg.qr(a, mode="reduced")
        return (q, r.to(torch.float64)) if return_r else q
    tol = ORTH_TOL if a.dtype != torch.float64 else 1e-12
    eye = torch.eye(l, dtype=torch.float64, device=a.device)
    r_acc = eye.clone()  # a = q r_acc throughout
    q = a if overwrite else a.clone()
    tmp = torch.empty(min(ORTH_BLOCK_ROWS, m), l, dtype=q.dtype, device=q.device)
    for step in range(3):
        g = _first_gram(q) if step == 0 else (q.T @ q).to(torch.float64)
        if step == 2 and float((g - eye).abs().max()) <= tol:
            break
        chol, info = torch.linalg.cholesky_ex(g)
        if int(info) != 0 or not bool(torch.isfinite(chol).all()):
            q, r = torch.linalg.qr(q, mode="reduced")  # q still spans a's columns
            r_acc = r.to(torch.float64) @ r_acc
            break
        r_inv = torch.linalg.solve_triangular(chol.T, eye, upper=True).to(q.dtype)
        for s in range(0, m, ORTH_BLOCK_ROWS):
            blk = q[s : s + ORTH_BLOCK_ROWS]
            out = tmp[: blk.shape[0]]
            torch.matmul(blk, r_inv, out=out)
            blk.copy_(out)
        r_acc = chol.T @ r_acc
    return (q, r_acc) if return_r else q


def _orth(a: torch.Tensor, overwrite: bool = False) -> torch.Tensor:
    return orthonormalize(a, overwrite=overwrite)


def _random_start(P: int, l: int, seed: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Omega (P, l): standard normal draws of a CPU generator seeded ``seed``, in float32 (float64
    for a float64 ``dtype``), drawn in row blocks: the same stream as one (P, l) draw, no full-size
    float64 copy."""
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    draw = torch.float64 if dtype == torch.float64 else torch.float32
    out = torch.empty(P, l, dtype=dtype, device=device)
    rows = max(16, (ORTH_BLOCK_ROWS // 16) * 16)
    for s in range(0, P, rows):
        n = min(rows, P - s)
        out[s : s + n] = torch.randn(n, l, generator=gen, dtype=draw).to(device=device, dtype=dtype)
    return out


def pca_subspace(
    model: nn.Module,
    batches_factory: Callable[[], Iterable],
    k: int,
    n_iter: int = 10,
    stats: GradStats | None = None,
    seed: int = 0,
    params: ParamSpec = "all",
    *,
    oversample: int = 10,
    delta_fn: DeltaFn = energy_delta,
    chunk: int = DEFAULT_CHUNK,
    method: str = "hooks",
    ranks: Ranks = Ranks(),
    resume: PassState | None = None,
) -> torch.Tensor:
    """Top-k right singular vectors V (P, k) (orthonormal columns) of the whitened N x P gradient
    matrix A, by randomized truncated SVD (Halko, Martinsson & Tropp 2011, Alg. 4.4 + 5.1):

        Y = A Omega -> Q;  n_iter x { Z = A^T Q -> QR; Y = A Z -> QR };  B^T = A^T Q;  SVD(B).

    Only the products A @ M (N x l, streamed row chunks) and A^T @ Q (P x l, accumulated) are formed,
    l = k + oversample; ``batches_factory()`` must replay the same samples in the same order on each
    of the 2 + 2 n_iter passes. (N x l) products are float64; (P x l) accumulators float64 when
    they fit in 1 GiB, else float32. Under several ``ranks`` each streams a shard of the rows:
    A @ M is gathered (rows in rank order), A^T @ Q summed over the ranks.

    ``resume`` (one process only) keeps Q (N x l, small) after the start and after every power
    iteration: a rerun continues from the last one kept (the same Q, so the same V)."""
    if resume is not None and ranks.is_distributed:
        raise ValueError("pca_subspace: resume keeps one process's rows; it is not available under torchrun")
    names = resolve_params(model, params)
    dev, _ = model_device_dtype(model)
    P = num_selected_params(model, names, method)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if k > P:
        raise ValueError(f"k = {k} exceeds the number of parameters P = {P}")
    l = min(P, k + max(0, int(oversample)))
    acc = _acc_dtype(model, P, l)
    kept = {} if resume is None else resume.state
    if "q" in kept and (kept["q"].shape[1] != l or kept.get("n_iter") != int(n_iter)):
        kept = {}  # another fit's state

    # The whitening is folded into the small factors, never applied to the (chunk, P) gradients:
    #   A m   = G (s * m) - 1 <mean * s, m>          A^T q = s * (G^T q - mean (1^T q))
    # so a pass streams the raw gradients once (no whitened copy of every chunk).
    mean_s = None if stats is None else (stats[0].to(acc) * stats[1].to(acc))
    scale = None if stats is None else stats[1].to(acc)

    workspace: dict = {}  # the gradient buffer, shared by the 2 + 2 n_iter passes

    def raw_chunks():
        return (
            g
            for g, _ in iter_raw_grads(
                model, batches_factory(), names, delta_fn, chunk, method=method, workspace=workspace
            )
        )

    n_rows: list[int] = []
    offsets: list[int] = []  # this rank's first row in the gathered (N, l) products

    def times(m: torch.Tensor) -> torch.Tensor:  # A @ m, (N, l) float64; m (a temporary) is scaled in place
        m = m.to(acc)
        if scale is None or mean_s is None:
            ms, shift = m, None
        else:
            shift = mean_s @ m  # before m is scaled in place
            ms = m.mul_(scale[:, None])
        rows = []
        for g in raw_chunks():
            y = g.to(acc) @ ms
            rows.append((y if shift is None else y - shift).to(torch.float64))
        y = ranks.all_gather_rows(
            torch.cat(rows) if rows else torch.zeros(0, m.shape[1], dtype=torch.float64, device=dev)
        )
        if ranks.is_distributed and not offsets:
            sizes = ranks.all_gather(
                torch.tensor([float(sum(r.shape[0] for r in rows))], dtype=torch.float64, device=dev)
            )
            offsets.append(int(sum(float(c.item()) for c in sizes[: ranks.rank])))
        if n_rows and y.shape[0] != n_rows[0]:
            raise RuntimeError(f"batches_factory gave {y.shape[0]} samples, an earlier pass {n_rows[0]}")
        n_rows.append(y.shape[0])
        return y

    at_q: list[torch.Tensor] = []  # one (P, l) buffer for every A^T q: its last result is dead by then

    def t_times(q: torch.Tensor) -> torch.Tensor:  # A^T @ q, (P, l)
        if not at_q:
            at_q.append(torch.empty(P, q.shape[1], dtype=acc, device=dev))
        out = at_q[0].zero_()
        first = offsets[0] if offsets else 0
        s = first
        for g in raw_chunks():
            n = g.shape[0]
            out.addmm_(g.to(acc).T, q[s : s + n].to(acc))
            s += n
        if not ranks.is_distributed and s != q.shape[0]:
            raise RuntimeError(f"batches_factory gave {s} samples, an earlier pass {q.shape[0]}")
        ranks.all_reduce_sum_(out)
        if stats is not None and scale is not None:
            out.addr_(stats[0].to(acc), q.sum(0).to(acc), alpha=-1.0).mul_(scale[:, None])
        return out

    if "q" in kept:
        q, done = kept["q"].to(device=dev, dtype=torch.float64), int(kept["done"])
    else:
        q, done = _orth(times(_random_start(P, l, seed, acc, dev))), 0
        if resume is not None:
            resume.update(q=q.cpu(), done=0, n_iter=int(n_iter))
    if q.shape[1] < k:
        raise ValueError(f"k = {k} exceeds the number of samples N = {q.shape[0]}")
    for i in range(done, int(n_iter)):
        z = _orth(t_times(q), overwrite=True)
        q = _orth(times(z))
        if resume is not None:
            resume.update(q=q.cpu(), done=i + 1)
    bt = t_times(q)  # (P, l) = B^T, B = Q^T A
    q2, r2 = orthonormalize(bt, overwrite=True, return_r=True)  # B^T = Q2 R2: SVD(R2) = U S W^T
    ur, _, _ = torch.linalg.svd(r2, full_matrices=False)
    v = q2 @ ur[:, :k].to(q2.dtype)
    return v.to(_out_dtype(model))


def class_mean_subspace(
    model: nn.Module,
    batches_with_labels: Iterable,
    num_classes: int,
    stats: GradStats | None = None,
    params: ParamSpec = "all",
    *,
    classes: Sequence[int] | None = None,
    delta_fn: DeltaFn = energy_delta,
    chunk: int = DEFAULT_CHUNK,
    method: str = "hooks",
    ranks: Ranks = Ranks(),
) -> torch.Tensor:
    """V (P, C): column c = whitened mean gradient of the samples labelled c, scaled to unit L2 norm
    (not orthogonalised; Wu et al.'s "average gradient" subspace). ``classes`` computes only those
    columns (in that order), for V that do not fit at once (ImageNet: blocks of classes). Under
    several ``ranks`` the per-class sums and counts are summed over the ranks."""
    names = resolve_params(model, params)
    cls = list(range(num_classes)) if classes is None else [int(c) for c in classes]
    dev, _ = model_device_dtype(model)
    P = num_selected_params(model, names, method)
    acc = _acc_dtype(model, P, len(cls))
    lookup = torch.full((num_classes,), -1, dtype=torch.long, device=dev)
    lookup[torch.tensor(cls, device=dev)] = torch.arange(len(cls), device=dev)
    sums = torch.zeros(len(cls), P, dtype=acc, device=dev)
    counts = torch.zeros(len(cls), dtype=torch.float64, device=dev)
    for g, y in iter_raw_grads(model, batches_with_labels, names, delta_fn, chunk, with_labels=True, method=method):
        y = y.long()
        if bool(((y < 0) | (y >= num_classes)).any()):
            raise ValueError(f"labels must lie in [0, {num_classes}), got {y.unique().tolist()}")
        col = lookup[y]
        keep = col >= 0
        if bool(keep.all()):  # the usual case: no boolean-indexed copy of the (chunk, P) gradients
            sums.index_add_(0, col, g.to(acc))
            counts.index_add_(0, col, torch.ones(len(col), dtype=torch.float64, device=dev))
        elif bool(keep.any()):
            sums.index_add_(0, col[keep], g[keep].to(acc))
            counts.index_add_(0, col[keep], torch.ones(int(keep.sum()), dtype=torch.float64, device=dev))
    ranks.all_reduce_sum_(sums)
    ranks.all_reduce_sum_(counts)
    empty = [c for c, n in zip(cls, counts.tolist()) if n == 0]
    if empty:
        raise ValueError(f"classes {empty} have no samples; their mean gradient is undefined")
    means = sums / counts.to(acc)[:, None]
    v = whiten(means, stats).T  # whitening is affine: mean of whitened = whitened mean
    v = v / v.norm(dim=0, keepdim=True)
    return v.to(_out_dtype(model))


def fold_whitening(V: torch.Tensor, stats: GradStats | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(scale * V, (mean * scale) V): g~ V = g (scale * V) - (mean * scale) V, so a projection never
    forms whitened gradients. Fold once per basis, not per batch (a (P, K) copy at ResNet scale)."""
    if stats is None:
        return V, None
    return stats[1].to(V.dtype)[:, None] * V, (stats[0] * stats[1]).to(V.dtype) @ V


def project(
    model: nn.Module,
    batches: Iterable,
    V: torch.Tensor,
    stats: GradStats | None = None,
    params: ParamSpec = "all",
    *,
    delta_fn: DeltaFn = energy_delta,
    chunk: int = DEFAULT_CHUNK,
    method: str = "hooks",
    folded: tuple[torch.Tensor, torch.Tensor | None] | None = None,
) -> np.ndarray:
    """G_low = g~(x)^T V for every sample of ``batches``: (N, K) float32 numpy. ``folded``: the
    result of :func:`fold_whitening` (V, stats) computed once by a caller projecting many batches."""
    names = resolve_params(model, params)
    vs, shift = fold_whitening(V, stats) if folded is None else folded
    out = []
    for g, _ in iter_raw_grads(model, batches, names, delta_fn, chunk, method=method):
        if g.shape[1] != vs.shape[0]:
            raise ValueError(f"V has {vs.shape[0]} rows, the selected parameters number {g.shape[1]}")
        z = g.to(vs.dtype) @ vs
        out.append((z if shift is None else z - shift).float().cpu().numpy())
    if not out:
        return np.zeros((0, vs.shape[1]), np.float32)
    return np.concatenate(out).astype(np.float32)
