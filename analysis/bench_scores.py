"""Benchmark of gradient-score computation routes: throughput (images/s) and peak memory.

Methods (per batch size unless marked *loop*):
  forward              model(x) under no_grad
  fwd_bwd              batched forward + backward of sum(logits) w.r.t. all parameters
  lastlayer_closed     forward (h, logits) + closed-form GradNorm / ExGrad / GRODIN-SG last layer
  lowdim_last_closed   forward + closed-form per-sample head gradients, whitened, projected on K=200
  grodin_allw_hooks    all-weights GRODIN ||grad CE(f, yhat)||^2 per sample, hooks engine (eps=0, T=1)
  grodin_allw_vmap     the same via torch.func vmap(grad)
  grads_flat_allw      all-weights per-sample energy gradients into a reused (64, P) buffer
  lowdim_allw_Am / _ATq  + the product with / accumulation into a (P, K + 10) basis (a PCA pass)
  subspace_fit_pca     a whole PCA subspace fit (K, 2 power iterations) over the batch's rows
  subspace_fit_grads   the per-sample gradients that fit streams alone (2 + 2 n_iter passes)
  main_pass_fused      the extraction's main pass: h, logits, all-weights KL norm, projections on an
                       all-weights and a last-block basis from one forward per chunk
  main_pass_separate   the same quantities from a forward and three separate gradient passes
  activation_grads     NAC-UE / GAIA arrays: one forward, one backward per loss to the activations
  grid_cell            one ODIN / GRODIN grid cell (T = 1000, eps = 0.0014): the T backward at x, the
                       perturbed forward + all-weights norm backward
  grid_cell_iodin      the same cell with iODIN's value (one more forward at the one-element step)
  loop_gradnorm_last   *loop*, batch 1: torch.autograd.grad per image, last-layer GradNorm
  loop_grodin_allw     *loop*, batch 1: torch.autograd.grad per image, all-weights GRODIN
Speed-up: lastlayer_closed vs loop_gradnorm_last; grodin_allw_* vs loop_grodin_allw. With
--interleave, "speed vs fwd+bwd" = t_fwd_bwd / t_method per repetition, then the median.

Peak memory: torch.cuda.max_memory_allocated on CUDA; on CPU the peak resident-set growth over
the pre-run level, sampled every ms from /proc/self/statm (resource.ru_maxrss growth elsewhere).

    python analysis/bench_scores.py --model small_cnn --device cpu --out /tmp/bench
"""

from __future__ import annotations

import argparse
import csv
import gc
import os
import platform
import resource
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ood_core.grads import ce_pred_delta, energy_delta, grodin_grid, per_sample_sq_norms  # noqa: E402
from ood_core.grads.activations import activation_arrays  # noqa: E402
from ood_core.grads.lowdim import HEAD_NAMES, head_grads_closed_form, whiten  # noqa: E402
from ood_core.models import build_model  # noqa: E402

INPUTS = {"small_cnn": ((1, 8, 8), 5), "resnet18_cifar": ((3, 32, 32), 10)}


# --------------------------------------------------------------------------------------------------
# memory probes


class _RSSPeak:
    """Peak RSS growth (bytes) while the context runs (CPU)."""

    def __init__(self):
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        self._proc = Path("/proc/self/statm").exists()

    def _rss(self) -> int:
        if self._proc:
            with open("/proc/self/statm") as fh:
                return int(fh.read().split()[1]) * self._page
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def __enter__(self):
        gc.collect()
        self.base = self.peak = self._rss()
        self._stop = threading.Event()
        if self._proc:
            self._t = threading.Thread(target=self._poll, daemon=True)
            self._t.start()
        return self

    def _poll(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(0.001)

    def __exit__(self, *exc):
        self._stop.set()
        if self._proc:
            self._t.join()
        self.peak = max(self.peak, self._rss())
        self.bytes = self.peak - self.base


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def measure(fn: Callable[[], None], n_images: int, dev: torch.device, warmup: int, repeats: int):
    """(images/s as the median over repeats, peak MB, memory kind)."""
    for _ in range(warmup):
        fn()
    _sync(dev)
    times = []
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            _sync(dev)
            times.append(time.perf_counter() - t0)
        peak = (torch.cuda.max_memory_allocated(dev) - base) / 2**20
        kind = "cuda_max_allocated"
    else:
        with _RSSPeak() as probe:
            for _ in range(repeats):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
        peak = probe.bytes / 2**20
        kind = "rss_growth"
    return n_images / statistics.median(times), peak, kind


def measure_interleaved(
    fns: dict[str, Callable[[], None]], n_images: int, dev: torch.device, warmup: int, repeats: int
) -> dict[str, tuple[float, float]]:
    """{name: (images/s as the median over repetitions, median over repetitions of t_fwd_bwd / t_name)};
    each repetition runs every method once, in turn, so a change of load hits all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    _sync(dev)
    times: dict[str, list[float]] = {n: [] for n in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            _sync(dev)
            times[name].append(time.perf_counter() - t0)
    ref = times.get("fwd_bwd")
    out = {}
    for name, ts in times.items():
        ratio = statistics.median(r / t for r, t in zip(ref, ts)) if ref else float("nan")
        out[name] = (n_images / statistics.median(ts), ratio)
    return out


# --------------------------------------------------------------------------------------------------
# methods


def _autocast(dev: torch.device, bf16: bool):
    if not bf16:
        import contextlib

        return contextlib.nullcontext()
    return torch.autocast(device_type=dev.type, dtype=torch.bfloat16)


def _lastlayer_fn(model, x, dev, bf16):
    """Forward pass, then the library's closed-form last-layer scores (GradNorm, ExGrad, GRODIN SG)."""
    from ood_core.scores import lastlayer

    def run():
        with torch.no_grad(), _autocast(dev, bf16):
            h = model.features(x)
            logits = model.head(h)
        arrays = {"h": h.float().cpu().numpy(), "logits": logits.float().cpu().numpy()}
        lastlayer.gradnorm(arrays), lastlayer.exgrad(arrays), lastlayer.grodin_sg_lastlayer(arrays)

    return run


def profile_ops(fn: Callable[[], None], dev: torch.device, row_limit: int) -> tuple[str, dict]:
    """One profiled call of ``fn`` (after a warm call): the op table sorted by self time (device time
    on CUDA) and a summary {wall_ms, busy_ms (sum of device kernel time, CUDA only), kernels}. A GPU
    busy time far below the wall time means launch / host bound; near it, kernel (compute or memory) bound."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = dev.type == "cuda"
    fn()
    _sync(dev)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    t0 = time.perf_counter()
    with profile(activities=acts) as prof:
        fn()
        _sync(dev)
    wall = time.perf_counter() - t0
    ka = prof.key_averages()
    summary = {"wall_ms": 1e3 * wall, "busy_ms": float("nan"), "kernels": 0}
    if cuda:
        kernels = [e for e in prof.events() if getattr(e, "device_type", None) == DeviceType.CUDA]
        summary["kernels"] = len(kernels)
        summary["busy_ms"] = sum(getattr(e, "device_time", getattr(e, "cuda_time", 0.0)) for e in kernels) / 1e3
    for sort in ("self_device_time_total", "self_cuda_time_total") if cuda else ("self_cpu_time_total",):
        try:
            return ka.table(sort_by=sort, row_limit=row_limit), summary
        except (AttributeError, KeyError, ValueError):  # the attribute name differs across torch versions
            continue
    return ka.table(row_limit=row_limit), summary


def loop_agreement(model, x: torch.Tensor) -> float:
    """Max relative difference of the hooks' all-weights GRODIN norms vs a per-image autograd loop (fp32)."""
    params = [p for p in model.parameters() if p.requires_grad]
    _, fast = per_sample_sq_norms(model, x, ce_pred_delta(1.0), method="hooks")
    ref = []
    for i in range(x.shape[0]):
        f = model(x[i : i + 1])
        gs = torch.autograd.grad(F.cross_entropy(f, f.argmax(1)), params)
        sq = sum(g.double().pow(2).sum() for g in gs)  # typed Tensor | int (sum's start 0)
        ref.append(torch.as_tensor(sq))
    ref_t = torch.stack(ref).to(fast.device)
    return float(((fast.double() - ref_t).abs() / ref_t.abs().clamp_min(1e-30)).max())


def methods_for(model, x, dev, bf16):
    amp = torch.bfloat16 if bf16 else None
    params = [p for p in model.parameters() if p.requires_grad]

    def forward():
        with torch.no_grad(), _autocast(dev, bf16):
            model(x)

    def fwd_bwd():
        with _autocast(dev, bf16):
            out = model(x)
        torch.autograd.grad(out.float().sum(), params)

    def hooks():
        per_sample_sq_norms(model, x, ce_pred_delta(1.0), method="hooks", amp_dtype=amp)

    # Wu et al.'s G_low over the head: closed-form per-sample head gradients, whitening, projection
    names = list(HEAD_NAMES)
    P = sum(dict(model.named_parameters())[n].numel() for n in names)
    gen = torch.Generator().manual_seed(0)
    V = torch.linalg.qr(torch.randn(P, min(200, P), generator=gen))[0].to(x.device)
    mean, scale = torch.zeros(P, device=x.device), torch.ones(P, device=x.device)

    def lowdim_last():
        with _autocast(dev, bf16):
            g = head_grads_closed_form(model, x, names, energy_delta)
        (whiten(g.float(), (mean, scale)) @ V).cpu()

    def vmap():
        per_sample_sq_norms(model, x, ce_pred_delta(1.0), method="vmap", amp_dtype=amp)

    def activation_grads():
        activation_arrays(model, x)

    def grid_cell(iodin: bool):
        return lambda: grodin_grid(model, x, [1000.0], [0.0014], chunk=x.shape[0], amp_dtype=amp, iodin=iodin)

    return {
        "forward": forward,
        "fwd_bwd": fwd_bwd,
        "activation_grads": activation_grads,
        "grid_cell": grid_cell(False),
        "grid_cell_iodin": grid_cell(True),
        "lastlayer_closed": _lastlayer_fn(model, x, dev, bf16),
        "lowdim_last_closed": lowdim_last,
        "grodin_allw_hooks": hooks,
        "grodin_allw_vmap": vmap,
        **subspace_pass_methods(model, x, k=LOWDIM_BENCH_K),
        **main_pass_methods(model, x, k=LOWDIM_BENCH_K),
    }


SUBSPACE_BENCH_ITERS = 2  # power iterations of the timed PCA fit (the cifar10 profile's n_iter)
LOWDIM_BENCH_K = 50  # columns of the random whitened basis in the subspace rows (the cifar10 profile's K)


def subspace_pass_methods(model, x, k: int, chunk: int = 64):
    """Wu et al.'s all-weights passes as the extract stage runs them (float32, chunks of ``chunk``
    per-sample gradients in one reused buffer, whitening folded into the small factors):
    ``grads_flat_allw`` the per-sample gradients alone; ``lowdim_allw_Am`` + the product with a
    (P, k + 10) basis (a projection / a PCA ``A m`` pass); ``lowdim_allw_ATq`` + the accumulation of
    A^T q into a (P, k + 10) matrix (a PCA ``A^T q`` pass). pass / grads_flat = the pass's overhead."""
    from ood_core.grads.lowdim import resolve_params
    from ood_core.grads.stream import iter_raw_grads

    names = resolve_params(model, "all")
    P = sum(dict(model.named_parameters())[n].numel() for n in names)
    l = min(P, k + 10)
    gen = torch.Generator().manual_seed(1)
    m = torch.randn(P, l, generator=gen).to(x.device)
    mean, scale = torch.randn(P, generator=gen).to(x.device), torch.rand(P, generator=gen).to(x.device) + 0.5
    ms, shift = scale[:, None] * m, (mean * scale) @ m
    q = torch.randn(x.shape[0], l, generator=gen).to(x.device)
    acc = torch.zeros(P, l, device=x.device)

    def grads_flat():
        for _g, _ in iter_raw_grads(model, [x], names, energy_delta, chunk):
            pass

    def a_m():
        for g, _ in iter_raw_grads(model, [x], names, energy_delta, chunk):
            (g @ ms - shift).double()

    def at_q():
        acc.zero_()
        s = 0
        for g, _ in iter_raw_grads(model, [x], names, energy_delta, chunk):
            acc.addmm_(g.T, q[s : s + g.shape[0]])
            s += g.shape[0]
        acc.addr_(mean, q.sum(0), alpha=-1.0).mul_(scale[:, None])

    def fit_pca():
        from ood_core.grads.lowdim import pca_subspace

        pca_subspace(model, lambda: [x], k, n_iter=SUBSPACE_BENCH_ITERS, stats=(mean, scale), chunk=chunk)

    def fit_grads():  # the per-sample gradients a fit streams: 2 + 2 n_iter passes over the rows
        for _ in range(2 + 2 * SUBSPACE_BENCH_ITERS):
            grads_flat()

    return {
        "grads_flat_allw": grads_flat,
        "lowdim_allw_Am": a_m,
        "lowdim_allw_ATq": at_q,
        "subspace_fit_pca": fit_pca,
        "subspace_fit_grads": fit_grads,
    }


def main_pass_methods(model, x, k: int, chunk: int = 64):
    """The extraction's main pass as the cifar10 profile runs it: h and logits, the all-weights KL
    norm, and the projections on an all-weights basis (PCA K + class means C columns) and a
    last-block basis (K), whitening folded in. ``main_pass_fused``: one forward and two backward
    passes per chunk (``grads/main_pass.py``); ``main_pass_separate``: a no-grad forward, then
    ``kl_allweights_sqnorm`` and one ``project`` per parameter set, each with its own forward."""
    from ood_core.grads import kl_allweights_sqnorm, project
    from ood_core.grads.lowdim import fold_whitening, resolve_params
    from ood_core.grads.main_pass import FoldedBasis, main_pass

    gen = torch.Generator().manual_seed(2)
    folds = {}
    for name, params, cols in (("all", "all", k + 10), ("last_block", "last_block", k)):
        P = sum(dict(model.named_parameters())[n].numel() for n in resolve_params(model, params))
        V = torch.randn(P, cols, generator=gen).to(x.device)
        stats = (torch.randn(P, generator=gen).to(x.device), (torch.rand(P, generator=gen) + 0.5).to(x.device))
        folds[name] = (params, fold_whitening(V, stats))
    bases = [FoldedBasis(n, p, *f) for n, (p, f) in folds.items()]
    workspace: dict = {}  # the gradient buffer, kept across batches as the extraction keeps it

    def fused():
        main_pass(model, x, kl_params="all", bases=bases, chunk=chunk, workspace=workspace)

    def separate():
        with torch.no_grad():
            model(x)
        kl_allweights_sqnorm(model, x, chunk=chunk)
        for params, f in folds.values():
            project(model, [x], f[0], None, params, chunk=chunk, folded=f)

    return {"main_pass_fused": fused, "main_pass_separate": separate}


def loops_for(model, x, dev, bf16):
    params = [p for p in model.parameters() if p.requires_grad]
    W = model.head.weight

    def loop_gradnorm():  # OpenOOD / gradnorm_ood style: one backward per image
        for i in range(x.shape[0]):
            with _autocast(dev, bf16):
                f = model(x[i : i + 1]).float()
            loss = -(torch.log_softmax(f, 1)).mean()  # KL(u || p) up to a constant
            (g,) = torch.autograd.grad(loss, [W])
            float(g.abs().sum())

    def loop_grodin():
        for i in range(x.shape[0]):
            with _autocast(dev, bf16):
                f = model(x[i : i + 1]).float()
            loss = F.cross_entropy(f, f.argmax(1))
            gs = torch.autograd.grad(loss, params)
            float(sum(g.float().pow(2).sum() for g in gs))

    return {"loop_gradnorm_last": loop_gradnorm, "loop_grodin_allw": loop_grodin}


LOOP_REF = {
    "lastlayer_closed": "loop_gradnorm_last",
    "lowdim_last_closed": "loop_gradnorm_last",
    "grodin_allw_hooks": "loop_grodin_allw",
    "grodin_allw_vmap": "loop_grodin_allw",
}


# --------------------------------------------------------------------------------------------------


def _layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


def device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return platform.processor() or platform.machine() or "CPU"


def load_model(args, dev):
    shape, C = INPUTS[args.model]
    torch.manual_seed(args.seed)
    model = build_model(args.model, num_classes=C)
    if args.checkpoint:  # timings do not depend on the weights; a checkpoint is still checked
        from ood_core.checkpoint import load_checkpoint

        sd, _ = load_checkpoint(Path(args.checkpoint))  # weights only, sha256 against its .json record
        model.load_state_dict(sd)
    return model.to(dev).eval(), shape


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="small_cnn", choices=sorted(INPUTS))
    ap.add_argument(
        "--checkpoint",
        default=None,
        help="checkpoint written by the train stage, with its .json record (default: random weights)",
    )
    ap.add_argument("--batch-size", default="64,256", help="comma-separated list")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--loop-images", type=int, default=64)
    ap.add_argument("--methods", default="all", help="comma-separated subset of method names")
    ap.add_argument(
        "--interleave",
        action="store_true",
        help="time the methods of a batch size in turn within each repetition (ratios to fwd_bwd taken per "
        "repetition, then the median: robust to load that drifts); no peak memory",
    )
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--channels-last", action="store_true", help="model and batches in channels_last memory format")
    ap.add_argument("--out", default="bench_out")
    ap.add_argument(
        "--profile-ops",
        type=int,
        default=0,
        metavar="N",
        help="profile fwd_bwd and grodin_allw_hooks at the largest batch; top-N op tables",
    )
    args = ap.parse_args(argv)

    if args.device == "auto":
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        dev = torch.device(args.device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            ap.error("--device cuda requested but CUDA is not available")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    bf16 = args.dtype == "bf16"
    model, shape = load_model(args, dev)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    batch_sizes = [int(b) for b in args.batch_size.split(",") if b.strip()]
    wanted = None if args.methods == "all" else set(args.methods.split(","))
    gen = torch.Generator().manual_seed(args.seed)
    common = dict(
        device=device_name(dev),
        torch=torch.__version__,
        dtype=args.dtype,
        model=args.model,
        memory_format="channels_last" if args.channels_last else "contiguous",
    )
    rows = []
    skipped: list[str] = []

    def record(bs, name, ips, peak, kind):
        rows.append(dict(common, batch_size=bs, method=name, images_per_s=ips, peak_mb=peak, mem_kind=kind))
        print(f"[bench] bs={bs:<5} {name:<20} {ips:12.1f} img/s  peak {peak:9.1f} MB ({kind})", flush=True)

    # naive per-image loops (batch size 1)
    xl = torch.randn(args.loop_images, *shape, generator=gen).to(dev)
    for name, fn in loops_for(model, xl, dev, bf16).items():
        if wanted is None or name in wanted:
            ips, peak, kind = measure(fn, xl.shape[0], dev, args.warmup, args.repeats)
            record(1, name, ips, peak, kind)

    # agreement of the two all-weights routes (sanity, first images, fp32)
    xa = xl[: min(8, xl.shape[0])]
    _, a = per_sample_sq_norms(model, xa, ce_pred_delta(1.0), method="hooks")
    _, b = per_sample_sq_norms(model, xa, ce_pred_delta(1.0), method="vmap")
    agree = float(((a - b).abs() / b.abs().clamp_min(1e-30)).max())
    print(f"[bench] hooks vs vmap max relative difference (fp32): {agree:.2e}")
    agree_loop = loop_agreement(model, xa)
    print(f"[bench] hooks vs per-image autograd loop max relative difference (fp32): {agree_loop:.2e}")

    for bs in batch_sizes:
        x = _layout(torch.randn(bs, *shape, generator=gen).to(dev), args.channels_last)
        fns = {n: f for n, f in methods_for(model, x, dev, bf16).items() if wanted is None or n in wanted}
        if args.interleave:
            for name, (ips, ratio) in measure_interleaved(fns, bs, dev, args.warmup, args.repeats).items():
                record(bs, name, ips, float("nan"), "not_measured")
                rows[-1]["speed_vs_fwd_bwd"] = ratio
            continue
        for name, fn in fns.items():
            try:
                ips, peak, kind = measure(fn, bs, dev, args.warmup, args.repeats)
            except torch.cuda.OutOfMemoryError:  # pragma: no cover - device dependent
                torch.cuda.empty_cache()
                skipped.append(f"bs={bs} {name}: out of memory")
                print(f"[bench] {skipped[-1]}, skipped")
                continue
            except RuntimeError as exc:  # e.g. vmap batching rules that reject mixed dtypes under autocast
                skipped.append(f"bs={bs} {name}: {str(exc).splitlines()[0][:160]}")
                print(f"[bench] {skipped[-1]}, skipped")
                continue
            record(bs, name, ips, peak, kind)

    profiles: list[str] = []
    if args.profile_ops > 0 and batch_sizes:
        bs = max(batch_sizes)
        x = torch.randn(bs, *shape, generator=gen).to(dev)
        fns = methods_for(model, x, dev, bf16)
        for name in ("fwd_bwd", "grodin_allw_hooks"):
            try:
                table, summ = profile_ops(fns[name], dev, args.profile_ops)
            except Exception as exc:  # pragma: no cover - profiler support varies by build
                profiles.append(f"- {name}, bs={bs}: profiling failed ({type(exc).__name__}: {exc})")
                continue
            out_dir = Path(args.out)
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / f"profile_{name}_bs{bs}.txt").write_text(table + "\n")
            busy = (
                f"device busy {summ['busy_ms']:.1f} ms in {summ['kernels']} kernels"
                if dev.type == "cuda"
                else "CPU: see the op table"
            )
            profiles.append(f"- {name}, bs={bs}: wall {summ['wall_ms']:.1f} ms, {busy} (profile_{name}_bs{bs}.txt)")
            print(f"[bench] profile {profiles[-1]}")

    loop_ips = {r["method"]: r["images_per_s"] for r in rows if r["method"].startswith("loop_")}
    for r in rows:
        ref = LOOP_REF.get(r["method"])
        r["speedup_vs_loop"] = r["images_per_s"] / loop_ips[ref] if ref in loop_ips else float("nan")
        r.setdefault("speed_vs_fwd_bwd", float("nan"))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cols = [
        "device",
        "torch",
        "dtype",
        "memory_format",
        "model",
        "batch_size",
        "method",
        "images_per_s",
        "peak_mb",
        "mem_kind",
        "speedup_vs_loop",
        "speed_vs_fwd_bwd",
    ]
    with open(out / "bench_scores.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{r[k]:.4g}" if isinstance(r[k], float) else r[k]) for k in cols})
    md = [
        f"# Gradient-score throughput: {args.model}, {args.dtype}, {common['memory_format']}",
        "",
        f"Device: {common['device']} ({dev.type}); torch {torch.__version__}; threads "
        f"{torch.get_num_threads()}; median of {args.repeats} after {args.warmup} warm-up"
        f"{' (interleaved: every method once per repetition; ratios per repetition, then the median)' if args.interleave else ''}; "
        f"loops over {args.loop_images} images at batch size 1; hooks vs vmap max rel. diff {agree:.1e}, "
        f"hooks vs the per-image autograd loop {agree_loop:.1e} (fp32, {xa.shape[0]} images).",
        "Peak memory: "
        + (
            "torch.cuda.max_memory_allocated above the pre-run level."
            if dev.type == "cuda"
            else "resident-set growth over the pre-run level (CPU)."
        ),
        "",
        "| batch | method | images/s | peak MB | speed-up vs loop | speed vs fwd+bwd | time / fwd+bwd |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        sp = "" if np.isnan(r["speedup_vs_loop"]) else f"{r['speedup_vs_loop']:.1f}x"
        rel = r["speed_vs_fwd_bwd"]
        rel_s = "" if np.isnan(rel) else f"{rel:.2f}x | {1 / rel:.2f}"
        md.append(
            f"| {r['batch_size']} | {r['method']} | {r['images_per_s']:.1f} | {r['peak_mb']:.1f} | {sp} | "
            + (rel_s or " | ")
            + " |"
        )
    if skipped:
        md += ["", "Skipped: " + "; ".join(skipped)]
    if profiles:
        md += ["", "Profiles (one call each, torch.profiler):", *profiles]
    (out / "bench_scores.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    print(f"[bench] wrote {out / 'bench_scores.csv'} and {out / 'bench_scores.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
