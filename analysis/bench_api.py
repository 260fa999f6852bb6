"""Time the Python API (``ood_core.api.evaluation.evaluate``) on the study's CIFAR-10 ResNet-18.

    python -m analysis.bench_api --train-rows 2000 --rows 1000

Seeded subsets of CIFAR-10 train / test and of Tiny-ImageNet and MNIST (the ``cifar10`` profile's
files under the data root), the committed checkpoint, and the ``cifar10`` profile's extract / lowdim
settings (its CPU cuts: 4 T x 3 eps grid searched on validation rows, PCA K = 50 with 2 power
iterations) with the subspace fitted on ``--subspace-rows`` training rows. Prints seconds per
component and the metric table; ``--out DIR`` writes the tables (``Evaluation.save``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from ood_core.api.evaluation import evaluate
from ood_core.checkpoint import load_checkpoint
from ood_core.config import load_profile
from ood_core.data import ImageSet, load_dataset
from ood_core.models import build_model

from .common import REPO, resolve_data_root

METHODS = [
    "msp", "maxlogit", "energy", "odin", "react", "knn", "vim", "mahalanobis", "gradnorm", "rg",
    "grodin_s", "grodin_g", "gradnorm_allweights", "lowdim_knn",
]  # fmt: skip
OOD = {"tinyimagenet": ("tinyimagenet_val_resize32", "near"), "mnist": ("mnist_test", "far")}


def _rounded(v):
    """Seconds to 0.1 s, through nested dicts."""
    return {k: _rounded(x) for k, x in v.items()} if isinstance(v, dict) else round(float(v), 1)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-rows", type=int, default=2000)
    ap.add_argument("--rows", type=int, default=1000, help="rows of the ID test set and of each OOD set")
    ap.add_argument("--subspace-rows", type=int, default=500)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="write the tables here")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    root = resolve_data_root(a.data_root, None)
    cfg = load_profile("cifar10")
    state, _ = load_checkpoint(REPO / cfg["model"]["checkpoint"])
    model = build_model(cfg["model"]["name"], **cfg["model"]["kwargs"])
    model.load_state_dict({k: v.float() for k, v in state.items()})
    rng = np.random.default_rng(0)

    def subset(file: str, n: int) -> ImageSet:
        s = load_dataset("npz", root / f"{file}.npz")
        return s.take(np.sort(rng.choice(len(s), min(n, len(s)), replace=False)))

    train, test = subset("cifar10_train", a.train_rows), subset("cifar10_test", a.rows)
    ood = {name: subset(file, a.rows) for name, (file, _) in OOD.items()}
    lowdim = {**cfg["lowdim"], "n_samples": a.subspace_rows, "subspaces": {"pca": cfg["lowdim"]["subspaces"]["pca"]}}
    settings = {"extract": cfg["extract"], "lowdim": lowdim, "data": {"val": {"n_val": 0.5, "seed": 0}}}
    t0 = time.perf_counter()
    ev = evaluate(
        model.eval(),
        train=train,
        id_test=test,
        ood=ood,
        methods=METHODS,
        config=settings,
        preprocess=cfg["data"]["preprocessing"],
        groups={name: group for name, (_, group) in OOD.items()},
        model_name=cfg["model"]["name"],
    )
    print(
        f"evaluate: {time.perf_counter() - t0:.1f} s on {a.threads} thread(s); ID accuracy {ev.info['id_accuracy']:.4f}"
    )
    print(json.dumps(_rounded(ev.seconds), indent=1))
    print(ev.metrics[["method", "ood_set", "auroc", "auroc_std", "fpr95"]].to_string())
    if a.out:
        ev.save(Path(a.out))


if __name__ == "__main__":
    from .common import main_guard

    main_guard(main)
