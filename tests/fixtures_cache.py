"""A tiny synthetic but self-consistent analysis cache for the notebook tests.

``make_tiny_analysis_cache(root)`` writes, under ``root``:

    analysis/meta.json, analysis/head.npz, analysis/splits.npz, analysis/timings.csv
    analysis/arrays/{toy_train,toy_test,toy_near,toy_far}.npz
    analysis/scores/{toy_test,toy_near,toy_far}.npz   (with _test_idx; ID file: odin__vs__<ood>)
    figures/metrics.csv, metrics.md, ablation_{grodin,lowdim_k,lowdim_subspace,rg_percentile}.{csv,md},
    figures/sweep_odin.csv, sweep_react.csv, sweep_knn.csv, chosen_hyperparams.json

Self-consistency: ``logits = h @ W.T + b`` exactly as stored (float32), so the Igoe et al. factor
identities (GradNorm = ||h||_1 ||p-u||_1, ExGrad = (||h||^2+1)(1-||p||^2)) hold on the cached
arrays; ``odin_s`` at eps=0 is max softmax(logits/T); the stored scores and every AUROC in the CSVs
are computed from these arrays. Nothing here runs a model.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

C, D, K = 3, 8, 6
N = 60
N_VAL = 20
ODIN_T = np.array([1.0, 10.0, 100.0])
ODIN_EPS = np.array([0.0, 0.002])
TRAIN, ID_TEST = "toy_train", "toy_test"
OOD = {"toy_near": "near", "toy_far": "far"}
CLASS_NAMES = ["ant", "bee", "cat"]


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _auroc(s_id: np.ndarray, s_ood: np.ndarray) -> float:
    """Mann-Whitney AUROC, ID = positive, higher score = ID (ties count 1/2)."""
    s_id, s_ood = np.asarray(s_id, float), np.asarray(s_ood, float)
    gt = (s_id[:, None] > s_ood[None, :]).mean()
    eq = (s_id[:, None] == s_ood[None, :]).mean()
    return float(gt + 0.5 * eq)


def _fpr95(s_id: np.ndarray, s_ood: np.ndarray) -> float:
    thr = np.quantile(s_id, 0.05)
    return float((s_ood >= thr).mean())


def _features(rng: np.random.Generator, kind: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Non-negative 'post-ReLU' features with class structure; OOD: weaker / mixed."""
    means = np.zeros((C, D))
    for c in range(C):
        means[c, 2 * c : 2 * c + 2] = 2.0
    means += 0.5
    if kind == "id":
        y = rng.integers(0, C, n)
        h = means[y] + rng.normal(0, 1.1, (n, D))
    elif kind == "near":
        y = np.full(n, -1)
        a, b = rng.integers(0, C, n), rng.integers(0, C, n)
        h = 0.5 * (means[a] + means[b]) * 0.8 + rng.normal(0, 0.9, (n, D))
    else:  # far
        y = np.full(n, -1)
        h = rng.gamma(1.5, 0.6, (n, D)) + rng.normal(0, 0.3, (n, D))
    return np.maximum(h, 0).astype(np.float32), y.astype(np.int64)


def _dataset(rng, kind, W, b):
    h, y = _features(rng, kind, N)
    logits = (h @ W.T + b).astype(np.float32)
    f = logits.astype(np.float64)
    hh = h.astype(np.float64)
    yhat = f.argmax(1)
    sq_h1 = (hh**2).sum(1) + 1.0
    odin_s = np.empty((len(ODIN_EPS), len(ODIN_T), N), np.float32)
    sg = np.empty_like(odin_s)
    for ie, eps in enumerate(ODIN_EPS):
        # stand-in for the input perturbation: pushes the predicted-class logit up
        fp = f + eps * 400.0 * np.eye(C)[yhat] * (1 + 0.2 * rng.standard_normal((N, 1)))
        for it, T in enumerate(ODIN_T):
            p = _softmax(fp / T)
            odin_s[ie, it] = p.max(1)
            last = ((p - np.eye(C)[yhat]) ** 2).sum(1) * sq_h1 / T**2
            sg[ie, it] = last * (1.6 + 0.3 * np.abs(rng.standard_normal(N)))  # "all weights" >= last layer
    p1 = _softmax(f)
    kl = ((p1 - 1.0 / C) ** 2).sum(1) * sq_h1 * (1.4 + 0.3 * np.abs(rng.standard_normal(N)))
    shift = {"id": 0.0, "near": 0.8, "far": 2.0}[kind]
    lowdim = rng.normal(0, 1, (N, K))
    if kind == "id":
        lowdim[:, :C] += 2.0 * np.eye(C)[y]
    lowdim[:, 3] += shift
    lowdim[:, 5] *= 1 + shift
    return {
        "h": h,
        "logits": logits,
        "y": y,
        "odin_T": ODIN_T.copy(),
        "odin_eps": ODIN_EPS.copy(),
        "odin_s": odin_s,
        "grodin_sqnorm": sg.astype(np.float32),
        "kl_allw_sqnorm": kl.astype(np.float32),
        "lowdim_pca": lowdim.astype(np.float32),
    }


def _scores(a: dict, idx: np.ndarray, train: dict) -> dict[str, np.ndarray]:
    h = a["h"][idx].astype(np.float64)
    f = a["logits"][idx].astype(np.float64)
    p = _softmax(f)
    u = 1.0 / C
    z = h / np.linalg.norm(h, axis=1, keepdims=True).clip(1e-12)
    zt = train["h"] / np.linalg.norm(train["h"], axis=1, keepdims=True).clip(1e-12)
    dist = np.sort(np.linalg.norm(z[:, None] - zt[None], axis=-1), axis=1)
    c = np.percentile(train["h"], 90)
    e = np.log(np.exp(f - f.max(1, keepdims=True)).sum(1)) + f.max(1)
    return {
        "msp": p.max(1),
        "maxlogit": f.max(1),
        "energy": e,
        "gradnorm": np.abs(h).sum(1) * np.abs(p - u).sum(1),
        "exgrad": -((h**2).sum(1) + 1) * (1 - (p**2).sum(1)),
        "knn": -dist[:, 4],
        "rg": np.minimum(h, c).sum(1) * e,
        "grodin_sg": -a["grodin_sqnorm"][0, 0, idx].astype(np.float64),
        "odin": a["odin_s"][1, 1, idx].astype(np.float64),
        "family_q1_msp": np.abs(h).sum(1) * p.max(1),  # registered: shown as its display name
        "l2_x_negent": np.linalg.norm(h, axis=1) * (p * np.log(p)).sum(1),
        "lowdim_knn": -np.linalg.norm(a["lowdim_pca"][idx], axis=1),
    }


FAMILY = {
    "msp": "forward",
    "maxlogit": "forward",
    "energy": "forward",
    "knn": "forward",
    "odin": "forward",
    "gradnorm": "gradient",
    "exgrad": "gradient",
    "grodin_sg": "gradient",
    "rg": "gradient",
    "family_q1_msp": "decomposition",
    "l2_x_negent": "decomposition",
    "lowdim_knn": "lowdim",
}


def _md_table(rows: list[dict], cols: list[str]) -> str:
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join(f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    return "\n".join(out) + "\n"


def _write_csv(path: Path, rows: list[dict]) -> None:
    import csv

    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _write_chosen(path: Path, sweep: list[dict]) -> None:
    """chosen_hyperparams.json as the benchmark writes it under per_ood_val: per grid method and OOD set,
    the cell with the best validation AUROC (the first in grid order, eps outer, on ties)."""
    methods = {}
    for m in dict.fromkeys(r["method"] for r in sweep):
        per_set = {}
        for o in OOD:
            rows = [r for r in sweep if r["method"] == m and r["ood_set"] == o]
            best = max(rows, key=lambda r: r["auroc_val"])  # max() keeps the first maximum
            per_set[o] = {"params": {"eps": best["eps"], "T": best["T"]}, "tuned_on": o, "val_auroc": best["auroc_val"]}
        methods[m] = {
            "family": "forward" if m == "odin" else "gradient",
            "grid": {"eps": ODIN_EPS.tolist(), "T": ODIN_T.tolist()},
            "defaults": {"eps": 0.0, "T": 1.0},
            "per_set": per_set,
        }
    path.write_text(
        json.dumps(
            {
                "protocol": "per_ood_val",
                "held_out": None,
                "bootstrap_n": 0,
                "seed": 0,
                "profile": "tiny",
                "model": "toy_mlp",
                "methods": methods,
            },
            indent=2,
        )
    )


def make_tiny_analysis_cache(root: Path, *, seed: int = 0) -> tuple[Path, Path]:
    """Write the tiny cache under ``root``; returns (analysis_dir, fig_dir)."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    adir, fdir = root / "analysis", root / "figures"
    (adir / "arrays").mkdir(parents=True, exist_ok=True)
    (adir / "scores").mkdir(parents=True, exist_ok=True)
    fdir.mkdir(parents=True, exist_ok=True)

    W = np.zeros((C, D))
    for c in range(C):
        W[c, 2 * c : 2 * c + 2] = 1.0
    W = (W + 0.15 * rng.standard_normal((C, D))).astype(np.float32)
    b = (0.1 * rng.standard_normal(C)).astype(np.float32)
    np.savez(adir / "head.npz", W=W, b=b)

    kinds = {TRAIN: "id", ID_TEST: "id", **OOD}
    arrays = {name: _dataset(rng, kind, W, b) for name, kind in kinds.items()}
    for name, a in arrays.items():
        np.savez(adir / "arrays" / f"{name}.npz", **a)

    splits = {}
    for name in [ID_TEST, *OOD]:
        perm = rng.permutation(N)
        splits[f"{name}__val"], splits[f"{name}__test"] = np.sort(perm[:N_VAL]), np.sort(perm[N_VAL:])
    np.savez(adir / "splits.npz", **splits)

    scores = {}
    for name in [ID_TEST, *OOD]:
        scores[name] = _scores(arrays[name], splits[f"{name}__test"], arrays[TRAIN])
        payload = {"_test_idx": splits[f"{name}__test"], **scores[name]}
        if name == ID_TEST:  # as the benchmark stage does for methods tuned per OOD set
            payload.pop("odin")
            payload.update({f"odin__vs__{o}": scores[name]["odin"] for o in OOD})
        np.savez(adir / "scores" / f"{name}.npz", **payload)

    acc = float((arrays[ID_TEST]["logits"].argmax(1) == arrays[ID_TEST]["y"]).mean())
    meta = {
        "profile": "tiny",
        "model": "toy_mlp",
        "num_classes": C,
        "class_names": CLASS_NAMES,
        "id_accuracy": acc,
        "train": TRAIN,
        "id_test": ID_TEST,
        "ood": OOD,
        "lowdim_subspaces": ["pca"],
        "grid": {"odin_T": ODIN_T.tolist(), "odin_eps": ODIN_EPS.tolist()},
    }
    (adir / "meta.json").write_text(json.dumps(meta, indent=2))

    # ---- metrics.csv / metrics.md --------------------------------------------------------------
    rows = []
    n_id = N - N_VAL
    for m, fam in FAMILY.items():
        for o, g in OOD.items():
            si, so = scores[ID_TEST][m], scores[o][m]
            au = _auroc(si, so)
            rows.append(
                {
                    "method": m,
                    "family": fam,
                    "ood_set": o,
                    "group": g,
                    "auroc": au,
                    "auroc_std": 0.02,
                    "fpr95": _fpr95(si, so),
                    "fpr95_ood_pos": _fpr95(-so, -si),
                    "aupr_in_ap": min(1.0, au + 0.01),
                    "aupr_out_ap": max(0.0, au - 0.01),
                    "aupr_in_trapz": min(1.0, au + 0.02),
                    "aupr_out_trapz": max(0.0, au - 0.005),
                    "hyperparams": "{}",
                    "protocol": "fixed",
                    "n_id": n_id,
                    "n_ood": N - N_VAL,
                    "id_accuracy": acc,
                    "model": "toy_mlp",
                }
            )
    _write_csv(fdir / "metrics.csv", rows)
    md_rows = [
        {"method": m, **{o: next(r["auroc"] for r in rows if r["method"] == m and r["ood_set"] == o) for o in OOD}}
        for m in FAMILY
    ]
    (fdir / "metrics.md").write_text("## AUROC (tiny)\n\n" + _md_table(md_rows, ["method", *OOD]))

    # ---- ablations ------------------------------------------------------------------------------
    abl = {  # the benchmark stage's file names
        "grodin": [
            {"method": m, "setting": v, "ood_set": o, "auroc": float(rng.uniform(0.6, 0.95))}
            for m in ("odin", "grodin_g", "grodin_sg")
            for v in ("vanilla", "only_eps", "only_T", "both")
            for o in OOD
        ],
        "lowdim_k": [{"k": k, "ood_set": o, "auroc": float(rng.uniform(0.6, 0.95))} for k in (1, 5, 10) for o in OOD],
        "lowdim_subspace": [{"subspace": "pca", "ood_set": o, "auroc": float(rng.uniform(0.6, 0.95))} for o in OOD],
        "rg_percentile": [
            {"percentile": q, "ood_set": o, "auroc": float(rng.uniform(0.6, 0.95))}
            for q in (85, 90, 95, 99)
            for o in OOD
        ],
    }
    for k, r in abl.items():
        _write_csv(fdir / f"ablation_{k}.csv", r)
        (fdir / f"ablation_{k}.md").write_text(f"## Ablation {k}\n\n" + _md_table(r, list(r[0])))

    # ---- sweeps ---------------------------------------------------------------------------------
    sw = []
    a_id = arrays[ID_TEST]
    for o in OOD:
        a_o = arrays[o]
        vi, ti = splits[f"{ID_TEST}__val"], splits[f"{ID_TEST}__test"]
        vo, to = splits[f"{o}__val"], splits[f"{o}__test"]
        for ie, eps in enumerate(ODIN_EPS):
            for it, T in enumerate(ODIN_T):
                s_i, s_o = a_id["odin_s"][ie, it].astype(float), a_o["odin_s"][ie, it].astype(float)
                g_i = a_id["grodin_sqnorm"][ie, it] / s_i**2
                g_o = a_o["grodin_sqnorm"][ie, it] / s_o**2
                for m, (xi, xo) in {
                    "odin": (s_i, s_o),
                    "grodin_g": (-g_i, -g_o),
                    "grodin_sg": (-a_id["grodin_sqnorm"][ie, it], -a_o["grodin_sqnorm"][ie, it]),
                }.items():
                    sw.append(
                        {
                            "method": m,
                            "ood_set": o,
                            "group": OOD[o],
                            "eps": float(eps),
                            "T": float(T),
                            "auroc_val": _auroc(xi[vi], xo[vo]),
                            "auroc_test": _auroc(xi[ti], xo[to]),
                        }
                    )
    _write_csv(fdir / "sweep_odin.csv", sw)
    _write_chosen(fdir / "chosen_hyperparams.json", sw)
    _write_csv(
        fdir / "sweep_react.csv",
        [
            {"method": m, "percentile": p, "ood_set": o, "group": g, "auroc_test": float(rng.uniform(0.6, 0.95))}
            for m in ("react", "rg")
            for p in (85, 90, 95, 99)
            for o, g in OOD.items()
        ],
    )
    _write_csv(
        fdir / "sweep_knn.csv",
        [
            {"method": m, "k": k, "ood_set": o, "group": g, "auroc_test": float(rng.uniform(0.6, 0.95))}
            for m, ks in (("knn", (1, 10, 50, 100)), ("lowdim_knn", (1, 5, 10)))
            for k in ks
            for o, g in OOD.items()
        ],
    )
    _write_csv(
        adir / "timings.csv",
        [
            {"method": m, "seconds_per_1000": float(s), "device": "cpu (synthetic)", "batch_size": 64, "n_images": 240}
            for m, s in [
                ("msp", 0.01),
                ("energy", 0.01),
                ("gradnorm", 0.02),
                ("exgrad", 0.02),
                ("knn", 0.3),
                ("odin", 2.0),
                ("grodin_sg", 6.0),
                ("lowdim_knn", 8.0),
            ]
        ],
    )
    return adir, fdir


if __name__ == "__main__":  # quick manual use: python tests/fixtures_cache.py /tmp/tiny
    import sys

    print(make_tiny_analysis_cache(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/tiny_cache")))
