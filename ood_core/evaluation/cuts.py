"""What a profile leaves out of the full study: its cuts, read from the profile itself.

The full study is the package defaults (``config.DEFAULTS``: GRODIN's 10 T x 21 eps grid, every row
of every set, subspaces from every training row) and Wu et al.'s 10 power iterations. Every
deviation of a profile is listed in words, for ``reference.md`` beside the numbers it affects.
"""

from __future__ import annotations

from typing import Any, Mapping

from ood_core.config import DEFAULTS, odin_eps_grid

WU_POWER_ITERATIONS = 10  # Wu et al.'s randomized SVD


def profile_cuts(cfg: Mapping[str, Any]) -> list[str]:
    """One sentence per cut of profile ``cfg`` (a loaded profile); empty for the full study."""
    out: list[str] = []
    data = cfg["data"]
    sets = {"train": data.get("train"), "id_test": data.get("id_test"), **dict(data.get("ood") or {})}
    for name, spec in sets.items():
        if isinstance(spec, Mapping) and spec.get("rows"):
            out.append(f"`{name}`: a seeded subset of {int(spec['rows']):,} rows")
    ex, full = cfg["extract"], DEFAULTS["extract"]
    n_T, n_eps = len(ex["odin_T"]), len(odin_eps_grid(cfg))
    n_T_full, n_eps_full = len(full["odin_T"]), int(full["odin_eps"]["num"])
    if (n_T, n_eps) != (n_T_full, n_eps_full):
        out.append(f"ODIN/GRODIN grid of {n_T} T x {n_eps} eps (GRODIN's: {n_T_full} x {n_eps_full})")
    if ex.get("grodin_test_points") == "selected":
        out.append(
            "the grid is searched on the validation rows; the test rows get only the cells some set selected "
            "(tuned metrics unchanged; sweep_odin.csv has no test AUROC for the other cells)"
        )
    low = cfg.get("lowdim") or {}
    if low.get("enabled") and low.get("n_samples"):
        out.append(f"Wu et al.'s subspaces fitted on {int(low['n_samples']):,} training rows (seeded)")
    for name, sub in (low.get("subspaces") or {}).items() if low.get("enabled") else ():
        if sub.get("kind") == "pca" and int(sub.get("n_iter", WU_POWER_ITERATIONS)) < WU_POWER_ITERATIONS:
            out.append(
                f"subspace `{name}`: K = {sub['k']}, {sub['n_iter']} power iterations (Wu et al.: {WU_POWER_ITERATIONS})"
            )
    return out
