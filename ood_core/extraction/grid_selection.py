"""Which ODIN / GRODIN grid cells the test rows need when the grid is searched on validation rows.

The (eps, T) grid costs one forward + backward with per-sample gradient norms per cell and image
(GRODIN's 21 x 10 grid: 210 passes). Every choice the study makes between cells is made on the
validation rows, so ``extract.grodin_test_points: selected`` computes the full grid on those rows
only, then on the test rows only the cells a choice can land on:

* for each score that reads the grid (``registry.names(uses_grid=True)``: ODIN, GRODIN S / G / SG)
  and each OOD set, the validation-best cell of each GRODIN ablation setting (:func:`choose_settings`):
  ``vanilla`` (eps0, T0), ``only_eps`` (best with T = T0), ``only_T`` (best with eps = eps0), ``both``
  (best overall = what ``per_ood_val`` picks; ``held_out_ood`` picks the ``both`` cell of the
  held-out set);
* with OOD validation sets (``val_oods``), the same four cells of the ``openood`` protocol's table
  (ID validation rows vs every row of the OOD validation sets);
* every grid method's registered defaults (``paper_defaults``) when they lie on the grid.

The selection reads validation rows only (``tuning.tune``'s leakage guard) and is deterministic, so
the benchmark's tuning lands on the same cells.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from ood_core.evaluation.tuning import Split, best_of, tune
from ood_core.extraction.grid import grid_axes, grid_index
from ood_core.scores import registry

SETTINGS = ("vanilla", "only_eps", "only_T", "both")  # the GRODIN ablation's settings, in table order


def anchor_values(eps_values: Sequence[float], T_values: Sequence[float]) -> tuple[float, float]:
    """(eps0, T0): eps = 0 and T = 1 when on the grid, else the smallest grid value."""
    e, t = sorted(float(v) for v in eps_values), sorted(float(v) for v in T_values)
    return (0.0 if 0.0 in e else e[0]), (1.0 if 1.0 in t else t[0])


def choose_settings(
    table: Sequence[tuple[Mapping[str, Any], float]], eps_name: str = "eps", T_name: str = "T"
) -> dict[str, dict[str, Any]]:
    """{setting: grid point} for one validation AUROC table ``[(point, auroc), ...]`` (grid order;
    ties go to the first point, as in :func:`ood_core.evaluation.tuning.best_of`)."""
    eps0, T0 = anchor_values([p[eps_name] for p, _ in table], [p[T_name] for p, _ in table])
    keep = {
        "vanilla": lambda p: p[eps_name] == eps0 and p[T_name] == T0,
        "only_eps": lambda p: p[T_name] == T0,
        "only_T": lambda p: p[eps_name] == eps0,
        "both": lambda p: True,
    }
    return {s: best_of([(p, v) for p, v in table if keep[s](p)]) for s in SETTINGS}


def select_test_points(
    id_arrays: Mapping[str, np.ndarray],
    id_split: Split,
    ood_arrays: Mapping[str, Mapping[str, np.ndarray]],
    ood_splits: Mapping[str, Split],
    methods: Sequence[str] | None = None,
    val_oods: Mapping[str, tuple[Mapping[str, np.ndarray], Split]] | None = None,
) -> np.ndarray:
    """(n_eps, n_T) bool mask of the cells the test rows need (module docstring); ``methods``
    defaults to every score that reads the grid; ``val_oods``: {OOD validation set: (arrays, split)}."""
    eps_values, T_values = grid_axes(id_arrays)
    if eps_values is None or T_values is None:
        raise KeyError("select_test_points: the ID arrays hold no odin_eps / odin_T grid axes")
    mask = np.zeros((len(eps_values), len(T_values)), bool)

    def mark(point: Mapping[str, Any]) -> None:
        mask[grid_index(eps_values, point["eps"], "eps"), grid_index(T_values, point["T"], "T")] = True

    for m in registry.names(uses_grid=True) if methods is None else methods:
        spec = registry.get(m)
        grid = {k: (T_values if k == "T" else eps_values) for k in spec.grid}  # the spec's key order
        protocols = ["per_ood_val", "openood"] if val_oods else ["per_ood_val"]
        for protocol in protocols:
            tr = tune(
                m,
                protocol=protocol,
                id_arrays=id_arrays,
                id_split=id_split,
                ood_arrays=ood_arrays,
                ood_splits=ood_splits,
                fitted_state_fn=lambda **_: None,
                grid=grid,
                val_ood_arrays={o: a for o, (a, _) in (val_oods or {}).items()},
                val_ood_splits={o: sp for o, (_, sp) in (val_oods or {}).items()},
            )
            for table in tr.tables.values():
                for point in choose_settings(table).values():
                    mark(point)
        d = spec.defaults
        if any(np.isclose(eps_values, d["eps"])) and any(np.isclose(T_values, d["T"])):
            mark(d)
    return mask
