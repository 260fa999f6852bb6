"""GRODIN's S x G decomposition inside the hard band of S (GRODIN, Fig. 2; notebook 03).

GRODIN writes the all-weights gradient of CE at the predicted label as grad = S * G with S = p_yhat
(ODIN's score, registered ``grodin_s``) and ||G||^2 = ||grad||^2 / S^2 (``-grodin_g``), both read from
the cached grid at one (eps, T) cell.

Cell: the one the benchmark's tuning chose for (method, OOD set), read from the benchmark's
``chosen_hyperparams.json`` (the cell behind that method's row of ``metrics.csv``); the notebook may
override T and/or eps with other grid values.

Hard band: on the test parts (ID vs one OOD set), Gaussian KDEs of S for ID and OOD on a 512-point
grid, the overlap density m(s) = min(p_ID(s), p_OOD(s)), and the *shortest* interval holding a
fraction ``band_mass`` of the overlap mass. When S saturates (median ID S > 0.95, ``s_transform="auto"``)
this is done on logit S = log(S / (1 - S)).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ood_core.analysis_cache import AnalysisCache
from ood_core.evaluation import metrics
from ood_core.explore.session import note, set_label
from ood_core.extraction.grid import GridPointUnavailable, point_available
from ood_core.reporting import style
from ood_core.scores import registry

CHOSEN_FILE = "chosen_hyperparams.json"  # written by the benchmark stage beside metrics.csv
SATURATION = 0.95  # median ID S above this: S saturates, the band is found on logit S
S_TRANSFORMS = ("none", "logit", "auto")
LOGIT_CLIP = 1e-7


def chosen_cell(fig_dir: str | Path, method: str, ood_set: str) -> dict[str, float]:
    """{'eps', 'T'} the benchmark's tuning chose for ``method`` against ``ood_set``
    (``<fig_dir>/chosen_hyperparams.json``: methods -> method -> per_set -> ood_set -> params)."""
    path = Path(fig_dir) / CHOSEN_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found; it is produced by the benchmark stage "
            "(python -m analysis.benchmark). Run that stage first."
        )
    methods = json.loads(path.read_text())["methods"]
    if method not in methods:
        raise KeyError(f"{path.name} has no method {method!r} (has {sorted(methods)})")
    per_set = methods[method]["per_set"]
    if ood_set not in per_set:
        raise KeyError(f"{path.name}: {method!r} has no entry for OOD set {ood_set!r} (has {sorted(per_set)})")
    params = per_set[ood_set]["params"]
    return {"eps": float(params["eps"]), "T": float(params["T"])}


def pick_cell(
    cache: AnalysisCache, fig_dir: str | Path, method: str, ood_set: str, *, T: float = 0.0, eps: float = -1.0
) -> dict[str, float]:
    """:func:`chosen_cell`, with T (when > 0) and eps (when >= 0) overridden. The cell must be on the
    cached grid (``ValueError`` otherwise) and computed on every row of the ID and the OOD set
    (:class:`~ood_core.extraction.grid.GridPointUnavailable` otherwise)."""
    cell = chosen_cell(fig_dir, method, ood_set)
    if float(T) > 0:
        cell["T"] = float(T)
    if float(eps) >= 0:
        cell["eps"] = float(eps)
    for name in (cache.id_name, ood_set):
        if not point_available(cache.arrays(name), cell["eps"], cell["T"]):
            raise GridPointUnavailable(
                f"T={cell['T']:g}, eps={cell['eps']:g} was computed on validation rows only "
                f"for {name}; pick a cell of grodin_full_points"
            )
    return cell


def s_g_sg(arrays: dict[str, np.ndarray], cell: dict[str, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(S, ||G||^2, SG = ||grad||^2) per row at ``cell``: the registered ``grodin_s``, ``-grodin_g`` and
    ``-grodin_sg``."""
    s, g, sg = (
        sign * registry.compute(m, arrays, **cell)
        for m, sign in (("grodin_s", 1.0), ("grodin_g", -1.0), ("grodin_sg", -1.0))
    )
    return s, g, sg


def use_logit(S_id: np.ndarray, s_transform: str = "auto") -> bool:
    """Whether to work on logit S: ``"logit"``, or ``"auto"`` when the median ID S exceeds 0.95."""
    if s_transform not in S_TRANSFORMS:
        raise ValueError(f"s_transform must be one of {S_TRANSFORMS}, got {s_transform!r}")
    return s_transform == "logit" or (s_transform == "auto" and float(np.median(S_id)) > SATURATION)


def logit(s: np.ndarray) -> np.ndarray:
    """log(S / (1 - S)), S clipped to [1e-7, 1 - 1e-7] in both terms."""
    s = np.asarray(s, np.float64)
    return np.log(np.clip(s, LOGIT_CLIP, None)) - np.log(np.clip(1 - s, LOGIT_CLIP, None))


def inv_logit(x: np.ndarray | float) -> np.ndarray | float:
    """1 / (1 + exp(-x))."""
    return 1 / (1 + np.exp(-np.asarray(x, np.float64)))


def hard_band(x_id: np.ndarray, x_ood: np.ndarray, mass: float) -> tuple[float, float, float]:
    """(a, b, overlap): the shortest interval [a, b] holding ``mass`` of the overlap density
    m = min(p_ID, p_OOD) (Gaussian KDEs on 512 points over the data range padded by 5 %), clipped to the
    data range; overlap = the integral of m (the overlap coefficient, 1 for identical densities)."""
    from scipy.stats import gaussian_kde

    x_id, x_ood = np.asarray(x_id, np.float64), np.asarray(x_ood, np.float64)
    lo, hi = min(x_id.min(), x_ood.min()), max(x_id.max(), x_ood.max())
    pad = 0.05 * (hi - lo + 1e-12)
    grid = np.linspace(lo - pad, hi + pad, 512)

    def kde(x: np.ndarray) -> np.ndarray:
        if np.std(x) < 1e-12:  # a point mass: a narrow Gaussian bump
            return np.exp(-0.5 * ((grid - x.mean()) / (pad + 1e-6)) ** 2)
        return gaussian_kde(x)(grid)

    trapz = getattr(np, "trapezoid", None) or getattr(np, "trapz")  # trapz: numpy < 2.0 (removed in 2.4)
    pi, po = kde(x_id), kde(x_ood)
    pi, po = pi / trapz(pi, grid), po / trapz(po, grid)
    m = np.minimum(pi, po)
    cm = np.concatenate([[0.0], np.cumsum((m[1:] + m[:-1]) / 2 * np.diff(grid))])
    target = mass * cm[-1]
    best, j = (np.inf, 0, len(grid) - 1), 0
    for i in range(len(grid)):  # two pointers: shortest [grid[i], grid[j]] with cm[j] - cm[i] >= target
        while j < len(grid) - 1 and cm[j] - cm[i] < target:
            j += 1
        if cm[j] - cm[i] >= target and grid[j] - grid[i] < best[0]:
            best = (grid[j] - grid[i], i, j)
    return float(max(grid[best[1]], lo)), float(min(grid[best[2]], hi)), float(cm[-1])


@dataclass
class Decomposition:
    """S and ||G||^2 of the ID and one OOD test part at one cell, and the hard band of S."""

    ood_set: str
    cell: dict[str, float]
    S_id: np.ndarray
    G_id: np.ndarray
    SG_id: np.ndarray
    S_ood: np.ndarray
    G_ood: np.ndarray
    SG_ood: np.ndarray
    logit: bool
    band_mass: float
    lo: float = 0.0  # band edges in the units of x (logit S when ``logit``)
    hi: float = 0.0
    overlap: float = 0.0

    def x(self, S: np.ndarray) -> np.ndarray:
        """S in the units the band is found in."""
        return logit(S) if self.logit else np.asarray(S, np.float64)

    def s_units(self, v: float) -> float:
        """A band edge in S units."""
        return float(inv_logit(v)) if self.logit else float(v)

    @property
    def in_id(self) -> np.ndarray:
        x = self.x(self.S_id)
        return (x >= self.lo) & (x <= self.hi)

    @property
    def in_ood(self) -> np.ndarray:
        x = self.x(self.S_ood)
        return (x >= self.lo) & (x <= self.hi)

    def aurocs(self) -> dict[str, float]:
        """AUROC of S, -||G||^2 and -SG on all test samples, and of S and -||G||^2 inside the band (NaN
        when fewer than two ID or OOD samples lie inside). -SG is the score ``grodin_sg``: at the cell
        the benchmark chose for it, its AUROC is that of ``metrics.csv``."""
        out = {
            "S (all)": metrics.auroc(self.S_id, self.S_ood),
            "G (all)": metrics.auroc(-self.G_id, -self.G_ood),
            "SG (all)": metrics.auroc(-self.SG_id, -self.SG_ood),
        }
        i, o = self.in_id, self.in_ood
        ok = i.sum() >= 2 and o.sum() >= 2
        out["S (band)"] = metrics.auroc(self.S_id[i], self.S_ood[o]) if ok else float("nan")
        out["G (band)"] = metrics.auroc(-self.G_id[i], -self.G_ood[o]) if ok else float("nan")
        return out

    def row(self) -> dict[str, Any]:
        """This decomposition as one row of the notebook's CSV."""
        return {
            "ood_set": self.ood_set,
            "eps": self.cell["eps"],
            "T": self.cell["T"],
            "s_units": "logit S" if self.logit else "S",
            "band_lo_S": self.s_units(self.lo),
            "band_hi_S": self.s_units(self.hi),
            "overlap": self.overlap,
            "n_id_band": int(self.in_id.sum()),
            "n_ood_band": int(self.in_ood.sum()),
            **{f"auroc_{k.replace(' (', '_').rstrip(')')}": v for k, v in self.aurocs().items()},
        }

    def describe(self) -> str:
        """One line: the cell, the band (S and logit S units), the overlap and the samples inside."""
        band = f"S in [{self.s_units(self.lo):.6g}, {self.s_units(self.hi):.6g}]"
        if self.logit:
            band += f" (logit S in [{self.lo:.3f}, {self.hi:.3f}])"
        return (
            f"{self.ood_set}: using grid point T={self.cell['T']:g}, eps={self.cell['eps']:g}; hard band {band}; "
            f"overlap coefficient {self.overlap:.3f}; {int(self.in_id.sum())} ID and "
            f"{int(self.in_ood.sum())} OOD test samples inside"
        )


def decompose(
    cache: AnalysisCache, ood_set: str, cell: dict[str, float], *, band_mass: float = 0.5, s_transform: str = "auto"
) -> Decomposition:
    """S, ||G||^2 and the hard band of the ID and ``ood_set`` test parts at ``cell``."""
    S_id, G_id, SG_id = s_g_sg(cache.test_arrays(cache.id_name), cell)
    S_ood, G_ood, SG_ood = s_g_sg(cache.test_arrays(ood_set), cell)
    d = Decomposition(
        ood_set, dict(cell), S_id, G_id, SG_id, S_ood, G_ood, SG_ood, use_logit(S_id, s_transform), band_mass
    )
    d.lo, d.hi, d.overlap = hard_band(d.x(S_id), d.x(S_ood), band_mass)
    return d


def has_grid_arrays(cache: AnalysisCache) -> bool:
    """True when every set has ``odin_s`` and ``grodin_sqnorm`` (else a skip note)."""
    ok = all(cache.has(n, "odin_s") and cache.has(n, "grodin_sqnorm") for n in [cache.id_name, *cache.ood_names])
    if not ok:
        note("odin_s / grodin_sqnorm missing for some set; skipping the S×G decomposition figure")
    return ok


def decompose_all(
    cache: AnalysisCache,
    fig_dir: str | Path,
    method: str,
    *,
    T: float = 0.0,
    eps: float = -1.0,
    band_mass: float = 0.5,
    s_transform: str = "auto",
) -> dict[str, Decomposition]:
    """{OOD set: :func:`decompose` at :func:`pick_cell`}; empty (with a skip note) when the grid arrays
    or the benchmark's choice are missing."""
    if not has_grid_arrays(cache):
        return {}
    if not (Path(fig_dir) / CHOSEN_FILE).is_file():
        note(f"{Path(fig_dir) / CHOSEN_FILE} missing (benchmark stage); skipping the S×G decomposition figure")
        return {}
    out = {}
    for o in cache.ood_names:
        try:
            cell = pick_cell(cache, fig_dir, method, o, T=T, eps=eps)
        except KeyError as exc:  # the benchmark did not tune this method (against this set)
            note(f"no tuned cell: {exc.args[0]}; skipping the S×G decomposition figure")
            return {}
        out[o] = d = decompose(cache, o, cell, band_mass=band_mass, s_transform=s_transform)
        if min(d.in_id.sum(), d.in_ood.sum()) < 2:
            note(f"{o}: fewer than 2 ID or OOD samples in the band: band AUROCs not defined")
    return out


def table(decs: dict[str, Decomposition]) -> pd.DataFrame:
    """One row per OOD set (:meth:`Decomposition.row`)."""
    return pd.DataFrame([d.row() for d in decs.values()])


def plot_decomposition(d: Decomposition, cache: AnalysisCache, *, method: str = "", bins: int = 30):
    """Left: histograms of S (or logit S) with the hard band; right: log10 ||G||^2 inside the band."""
    import matplotlib.pyplot as plt

    au = d.aurocs()
    X_id, X_ood = d.x(d.S_id), d.x(d.S_ood)
    cell = f"T={d.cell['T']:g}, ε={d.cell['eps']:g}"
    if method:
        cell += f", tuned for {registry.display_name(method)}"
    s_label = f"logit S = log(S/(1−S)), S = max softmax ({cell})" if d.logit else f"S = max softmax ({cell})"
    fig, axes = plt.subplots(1, 2, figsize=(style.TEXT_WIDTH, 2.5))
    edges = np.linspace(min(X_id.min(), X_ood.min()), max(X_id.max(), X_ood.max()) + 1e-12, bins + 1)
    id_kw = dict(color=style.ID_COLOR, alpha=0.55, label=f"ID: {set_label(cache, cache.id_name)}")
    ood_kw = dict(histtype="step", color="0.2", linewidth=1.0, label=f"OOD: {set_label(cache, d.ood_set)}")
    ax = axes[0]
    ax.hist(X_id, bins=edges, density=True, **id_kw)
    ax.hist(X_ood, bins=edges, density=True, **ood_kw)
    ax.axvspan(
        d.lo,
        d.hi,
        facecolor=style.PALETTE[8],
        alpha=0.35,
        edgecolor="0.2",
        linestyle="--",
        linewidth=0.6,
        zorder=0,
        label=f"hard band ({d.band_mass:.0%} of the ID/OOD overlap)",
    )
    ax.set_xlabel(s_label)
    ax.set_ylabel("density")
    ax.set_title(f"S on the test parts (AUROC {au['S (all)']:.3f})")
    ax = axes[1]
    lg_i, lg_o = np.log10(d.G_id[d.in_id] + 1e-30), np.log10(d.G_ood[d.in_ood] + 1e-30)
    if len(lg_i) and len(lg_o):
        e2 = np.linspace(min(lg_i.min(), lg_o.min()), max(lg_i.max(), lg_o.max()) + 1e-9, max(5, bins // 2) + 1)
        ax.hist(lg_i, bins=e2, density=True, **{**id_kw, "label": None})
        ax.hist(lg_o, bins=e2, density=True, **{**ood_kw, "label": None})
    ax.set_ylabel("density (inside the band)")
    # one legend above both panels (the right one shows the same ID / OOD samples inside the band)
    handles, labels = axes[0].get_legend_handles_labels()
    style.legend_outside(fig, handles, labels, where="top", ncol=3)
    ax.set_xlabel(r"$\log_{10}\|G\|^2$ = log10(SG / S²)")
    band_txt = (
        f"AUROC in band: S {au['S (band)']:.3f}, G {au['G (band)']:.3f}"
        if np.isfinite(au["G (band)"])
        else "band too small for AUROCs"
    )
    ax.set_title(f"G inside the band S∈[{d.s_units(d.lo):.4g}, {d.s_units(d.hi):.4g}]\n{band_txt}")
    return fig
