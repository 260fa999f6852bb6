"""Published numbers of the papers the study compares with, as data (``reference.md`` sets ours beside them).

Every entry is a dict with keys
``source, tag, model, id_dataset, ood_set, method, metric, value, note, protocol, preprocessing``:

* ``tag``: ``[V]`` read in the primary source named (a leaderboard file at a commit, a paper's table);
  ``[V-2nd]`` read verbatim in an author repository or a public issue on the same pipeline; ``[seed]``
  read in the text of a paper the study reproduces. Nothing is quoted from memory.
* ``method``: OUR registry name where one exists (``msp``, ``odin``, ``grodin_g`` ...), else a
  descriptive name (``knn_supcon``, ``igoe_family_best``, ``ensemble5``).
* ``metric``: ``auroc`` | ``fpr95_id_pos`` | ``fpr95_ood_pos`` | ``id_accuracy``; ``value`` in percent
  (GRODIN's ROC-AUC fractions are converted: .983 -> 98.3), ``None`` when only a relative claim exists.
* ``ood_set``: THEIR set name (``near``/``far`` are OpenOOD group means; ``avg`` a paper's average).
* ``protocol``: hyper-parameter protocol of the number, in our vocabulary where it applies.
"""

from __future__ import annotations

from typing import Any

OPENOOD = "OpenOOD v1.5 leaderboard (Jingkang50/OpenOOD branch leaderboard @ f969dfa)"
GRODIN = "GRODIN (ICLR 2022 submission)"
IGOE = "Igoe et al. 2022 (How useful are gradients for OOD detection really?)"

_OPENOOD_PRE = "Resize(32)+CenterCrop(32), CIFAR-10 mean/std normalisation"
_OPENOOD_MODEL = "ResNet-18 32x32, OpenOOD checkpoints s0-s2 (mean of 3)"


def _e(source, tag, model, id_dataset, ood_set, method, metric, value, note="", protocol="", pre=""):
    return {
        "source": source,
        "tag": tag,
        "model": model,
        "id_dataset": id_dataset,
        "ood_set": ood_set,
        "method": method,
        "metric": metric,
        "value": value,
        "note": note,
        "protocol": protocol,
        "preprocessing": pre,
    }


# OpenOOD v1.5's CIFAR-10 / ResNet-18 leaderboard (branch leaderboard @ f969dfa, results/cifar10.csv):
# our registry name -> (near AUROC, std, far AUROC, std) over its 3 cross-entropy checkpoints
OPENOOD_CIFAR10 = {
    "msp": (88.03, 0.25, 90.73, 0.43),
    "odin": (82.87, 1.85, 87.96, 0.61),
    "mahalanobis": (84.20, 2.40, 89.72, 1.36),
    "rmds": (89.80, 0.28, 92.20, 0.21),
    "energy": (87.58, 0.46, 91.21, 0.92),
    "gradnorm": (54.90, 0.98, 57.55, 3.22),
    "react": (87.11, 0.61, 90.42, 1.41),
    "maxlogit": (87.52, 0.47, 91.10, 0.89),
    "vim": (88.68, 0.28, 93.48, 0.24),
    "knn": (90.64, 0.20, 92.96, 0.14),
    "dice": (78.34, 0.79, 84.23, 1.89),
    "ash_b": (75.27, 1.04, 78.49, 2.58),  # OpenOOD's ASH: ASH-B on the pooled penultimate features
    "gen": (88.20, 0.30, 91.35, 0.69),
    "scale": (82.55, 0.36, 86.39, 1.86),
    "nac_ue": (90.93, 0.23, 94.60, 0.49),
    "fdbd": (90.42, 0.0, 93.16, 0.0),  # one checkpoint (ID accuracy 95.22), no std
}
# iODIN on OpenOOD's pipeline and checkpoints (sudarshanregmi/ASCOOD iodin_results/cifar10.csv @ 9f37f87):
# set -> (FPR95 OOD-positive, AUROC), means over the 3 checkpoints
IODIN_CIFAR10 = {
    "near": (55.76, 87.92),
    "far": (37.55, 90.99),
    "CIFAR-100": (61.33, 86.87),
    "TIN": (50.20, 88.96),
    "MNIST": (25.86, 93.45),
    "SVHN": (31.80, 91.55),
    "Textures": (43.36, 89.78),
    "Places365": (49.20, 89.16),
}
# GEN per set on OpenOOD's pipeline (OpenOOD issue #172, 2023-08-08): set -> (FPR95 ID-positive, AUROC)
GEN_CIFAR10 = {"CIFAR-100": (54.86, 87.21), "TIN": (49.96, 89.20), "MNIST": (35.31, 93.83), "SVHN": (45.42, 91.97)}


def _openood() -> list[dict[str, Any]]:
    out = []
    for m, (near, near_sd, far, far_sd) in OPENOOD_CIFAR10.items():
        for group, v, sd, sets in (
            ("near", near, near_sd, "mean(CIFAR-100, TIN)"),
            ("far", far, far_sd, "mean(MNIST, SVHN, Textures, Places365)"),
        ):
            spread = "one checkpoint" if m == "fdbd" else f"+-{sd} over 3 checkpoints"
            out.append(
                _e(
                    OPENOOD,
                    "[V]",
                    _OPENOOD_MODEL,
                    "cifar10",
                    group,
                    m,
                    "auroc",
                    v,
                    f"{spread}; {group} = {sets} (results/cifar10.csv)",
                    "held_out_ood",
                    _OPENOOD_PRE,
                )
            )
    out.append(
        _e(
            OPENOOD,
            "[V]",
            _OPENOOD_MODEL,
            "cifar10",
            "-",
            "-",
            "id_accuracy",
            95.06,
            "ID test accuracy of the OpenOOD CIFAR-10 ResNet-18 checkpoints (+-0.30)",
        )
    )
    per_set = (
        ("iodin", IODIN_CIFAR10, "fpr95_ood_pos", "iODIN on OpenOOD v1.5's pipeline (sudarshanregmi/ASCOOD @ 9f37f87)"),
        ("gen", GEN_CIFAR10, "fpr95_id_pos", "OpenOOD issue #172 (GEN on OpenOOD v1.5's pipeline)"),
    )
    for m, table, fpr_metric, source in per_set:
        for s, (fpr, auc) in table.items():
            for metric, v in ((fpr_metric, fpr), ("auroc", auc)):
                out.append(
                    _e(
                        source,
                        "[V-2nd]",
                        _OPENOOD_MODEL,
                        "cifar10",
                        s,
                        m,
                        metric,
                        v,
                        "mean over OpenOOD's 3 checkpoints",
                        "held_out_ood",
                        _OPENOOD_PRE,
                    )
                )
    out.append(
        _e(
            "GROOD (TMLR 2025), the authors' value on OpenOOD v1.5's CIFAR-10 benchmark",
            "[V-2nd]",
            _OPENOOD_MODEL,
            "cifar10",
            "near",
            "grood",
            "auroc",
            91.16,
            "near = mean(CIFAR-100, TIN)",
            "held_out_ood",
            _OPENOOD_PRE,
        )
    )
    return out


def _grodin() -> list[dict[str, Any]]:
    out = []
    tin = [("msp", 0.954), ("odin", 0.970), ("maxlogit", 0.965), ("grodin_g", 0.983), ("grodin_sg", 0.981)]
    for m, v in tin:
        out.append(
            _e(
                f"{GRODIN} Table 4",
                "[V]",
                "WRN-28-10",
                "cifar10",
                "TIN",
                m,
                "auroc",
                round(v * 100, 2),
                "ROC-AUC (reported as a fraction, +-.001 bootstrap); TIN split 500 val / 9500 test",
                "per_ood_val",
                "not stated in the seed text",
            )
        )
    t5 = {
        ("ResNet-18", "ImageNet-O"): (0.484, 0.628, 0.599, None, 0.760, 0.804),
        ("ResNet-18", "ImageNet-R"): (0.776, 0.840, 0.838, None, 0.852, 0.833),
        ("ResNet-18", "ImageNet-A"): (0.818, 0.848, 0.843, None, 0.853, 0.837),
        ("ResNet-18", "ImageNet-C"): (0.943, 0.974, 0.974, None, 0.985, 0.950),
        ("ResNet-50", "ImageNet-O"): (0.470, 0.599, 0.564, 0.612, 0.735, 0.769),
        ("ResNet-50", "ImageNet-R"): (0.803, 0.863, 0.863, 0.856, 0.877, 0.856),
        ("ResNet-50", "ImageNet-A"): (0.839, 0.872, 0.861, 0.885, 0.877, 0.859),
        ("ResNet-50", "ImageNet-C"): (0.937, 0.969, 0.969, 0.976, 0.982, 0.958),
    }
    methods = ("msp", "odin", "maxlogit", "ensemble5", "grodin_g", "grodin_sg")
    for (model, s), t5_aurocs in t5.items():
        for m, auroc in zip(methods, t5_aurocs):
            if auroc is None:  # ensemble5: not reported for ResNet-18
                continue
            out.append(
                _e(
                    f"{GRODIN} Table 5",
                    "[seed]",
                    model,
                    "imagenet",
                    s,
                    m,
                    "auroc",
                    round(auroc * 100, 2),
                    "ROC-AUC as a fraction in the paper; ImageNet-C = glass blur severity 5",
                    "per_ood_val",
                    "not stated in the seed text",
                )
            )
    abl = {  # RN18, (vanilla, only eps, only T, both)
        "grodin_g": {
            "ImageNet-O": (0.517, 0.517, 0.678, 0.760),
            "ImageNet-R": (0.786, 0.786, 0.839, 0.852),
            "ImageNet-A": (0.826, 0.826, 0.852, 0.853),
            "ImageNet-C": (0.951, 0.951, 0.985, 0.985),
        },
        "grodin_sg": {
            "ImageNet-O": (0.518, 0.538, 0.691, 0.804),
            "ImageNet-R": (0.786, 0.790, 0.787, 0.833),
            "ImageNet-A": (0.826, 0.820, 0.820, 0.837),
            "ImageNet-C": (0.931, 0.937, 0.937, 0.950),
        },
    }
    for m, per_set in abl.items():
        for s, vals in per_set.items():
            for setting, v in zip(("vanilla", "only_eps", "only_T", "both"), vals):
                out.append(
                    _e(
                        f"{GRODIN} Tables 6-7 (ablation)",
                        "[seed]",
                        "ResNet-18",
                        "imagenet",
                        s,
                        f"{m}@{setting}",
                        "auroc",
                        round(v * 100, 2),
                        "vanilla: eps=0,T=1; only_eps: T=1; only_T: eps=0",
                        "per_ood_val",
                    )
                )
    return out


def _imagenet() -> list[dict[str, Any]]:
    sets = ("iNaturalist", "SUN", "Places", "Textures", "avg")
    out = []
    openood_in1k = {  # OpenOOD v1.5 ImageNet-1k / ResNet-50 leaderboard (results/imagenet1k_ood.csv @ f969dfa)
        "msp": (76.02, 85.23),
        "gradnorm": (72.96, 90.25),
        "react": (77.38, 93.67),
        "ash_b": (78.17, 95.74),
        "scale": (81.36, 96.53),
        "nac_ue": (74.43, 95.29),
    }
    for m, (near, far) in openood_in1k.items():
        for group, v, what in (
            ("near", near, "near = mean(SSB-hard, NINCO)"),
            ("far", far, "far = mean(iNaturalist, Textures, OpenImage-O)"),
        ):
            out.append(
                _e(
                    OPENOOD,
                    "[V]",
                    "ResNet-50 (torchvision)",
                    "imagenet",
                    group,
                    m,
                    "auroc",
                    v,
                    f"{what} (results/imagenet1k_ood.csv)",
                    "held_out_ood",
                    "224x224",
                )
            )
    for s, v in zip(sets, (54.11, 46.73, 50.62, 38.12, 47.4)):
        out.append(
            _e(
                IGOE,
                "[seed]",
                "BiT-S-R101x1 (GradNorm setup)",
                "imagenet",
                s,
                "igoe_family_best",
                "fpr95_id_pos",
                v,
                "best member of the N(h)*V(p) family",
            )
        )
    out.append(
        _e(
            "Wu et al. (arXiv 2310.17163)",
            "[seed]",
            "ResNet-50",
            "imagenet",
            "avg",
            "lowdim_best",
            "fpr95_id_pos",
            None,
            "relative only: -11.15 pt average FPR95 vs prior SOTA",
        )
    )
    out.append(
        _e(
            "RG (ICLR 2023 submission)",
            "[seed]",
            "(MOS setup)",
            "imagenet",
            "avg",
            "rg",
            "auroc",
            None,
            "relative only: +2.06 AUROC vs MOS, +8.9 vs ReAct, +5.86 vs GradNorm",
        )
    )
    return out


def _igoe_small() -> list[dict[str, Any]]:
    return [
        _e(
            IGOE,
            "[V-2nd]",
            "unknown",
            "cifar10",
            s,
            "igoe_family_best",
            "auroc",
            v,
            "an aggregator's value for the paper; which member of the N(h)*V(p) family is not stated",
        )
        for s, v in (("SVHN", 92.41), ("LSUN", 89.84))
    ]


REFERENCE: list[dict[str, Any]] = [*_openood(), *_grodin(), *_imagenet(), *_igoe_small()]

TAG_MEANING = {
    "[seed]": "read in the text of the paper the study reproduces",
    "[V]": "read in the primary source named (a leaderboard file at a commit, the paper's table)",
    "[V-2nd]": "read verbatim in an author repository or a public issue thread on the same pipeline",
}


# our OOD set name -> list of (their set name, comparability, what differs in the image list)
def entries(**where: Any) -> list[dict[str, Any]]:
    """Reference entries whose fields equal the given values, e.g. ``entries(id_dataset="cifar10")``."""
    return [dict(e) for e in REFERENCE if all(e.get(k) == v for k, v in where.items())]


from ood_core.reporting.reference_sets import ABSENT_NOTE, ABSENT_SETS, SET_MAP, our_sets_for  # noqa: E402, F401  (re-exported)
