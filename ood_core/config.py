"""Profile configuration: YAML files under ``analysis/configs/`` merged over ``DEFAULTS``.

Unknown keys are rejected (a typo is an error naming the key and the file), not ignored, and every
value is type-checked against its default (``batch_size: "64"`` is an error naming the key, the file
and the expected type). Keys whose default is ``None`` take ``None`` or the type in ``NULLABLE``.
Mappings listed in ``FREE_FORM`` (dataset specs, subspace specs, model kwargs) take any keys.

A profile is named after its file: ``analysis/configs/NAME.yaml`` and ``some/dir/NAME.yaml`` are both
profile ``NAME`` (outputs in ``cache/NAME`` and ``figures/NAME``). A ``profile:`` key in the file is
ignored, so a copied config that still says ``profile: demo`` never writes into the demo's folders.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Mapping

import yaml

CONFIG_DIR = Path(__file__).resolve().parents[1] / "analysis" / "configs"
ID_VAL = "id_val"  # the name the ID validation set (data.validation.id) is extracted and cached under

DEFAULTS: dict[str, Any] = {
    "profile": "demo",
    "seed": 0,
    "device": "auto",
    "threads": None,
    "cpu_estimate": None,  # free text shown before a CPU run: how long this profile takes on a CPU
    "data": {
        "root": None,
        "id_name": None,
        "train": {},
        "id_test": {},
        "ood": {},
        "preprocessing": {"size": 32, "channels": 3, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
        "val": {"n_val": 0.2, "seed": 0},
        # sets that only tune (OpenOOD v1.5): `id` = an ID validation set (extracted as ID_VAL), `ood` =
        # {name: spec} of OOD validation sets; empty: every set's seeded `val` rows tune instead
        "validation": {"id": {}, "ood": {}},
        "verify_manifest": False,
    },
    "model": {"name": "small_cnn", "kwargs": {}, "checkpoint": None},
    "train": {
        "epochs": 30,
        "batch_size": 128,
        "lr": 0.1,
        "schedule": "cosine",  # or "onecycle" (ood_core.train.learning_rate)
        "warmup_epochs": 0,
        "momentum": 0.9,
        "nesterov": True,
        "weight_decay": 5e-4,
        "label_smoothing": 0.0,
        "augment": "none",
        "bf16": False,
        "channels_last": False,
        "checkpoint_every": 0,
        "eval_every": 0,
        "half_checkpoint": False,
    },
    "extract": {
        "batch_size": 256,
        "odin_T": [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000],
        "odin_eps": {"start": 0.0, "stop": 0.004, "num": 21},
        "eps_space": "normalized",
        "grodin": True,
        "iodin": True,  # iODIN's one-element perturbation beside every ODIN cell (ood_core/grads/grodin.py)
        "kl_allweights": True,
        "grad_chunk": 64,
        "grodin_test_points": "grid",
        "activation_grads": True,  # NAC-UE / GAIA arrays (ood_core/grads/activations.py)
    },
    "lowdim": {
        "enabled": True,
        "params": "all",
        "normalisation": "nfk",
        "n_samples": None,
        "batch_size": 64,
        "chunk": 16,
        "subspaces": {},
    },
    "benchmark": {
        "protocol": "per_ood_val",  # the headline protocol (metrics.md's first table, reference.md, scores/)
        "protocols": None,  # every protocol reported (the headline first); null: the headline only
        "held_out": None,
        "bootstrap": 100,  # resamples of the AUROC std (metrics.csv) and of the paired differences (paired.csv)
        "methods": None,
        "paired": None,  # paired.csv: method names (every pair) and/or [a, b] pairs; null: best of each family
    },
    "notebooks": {"run": True, "params": {}},
    "seeds": {"runs": []},  # analysis.seeds: benchmark output folders of this profile, one per training seed
}

# Paths whose value is a mapping of user-chosen names / free options.
FREE_FORM = {
    ("data", "train"),
    ("data", "id_test"),
    ("data", "ood"),
    ("data", "validation", "id"),
    ("data", "validation", "ood"),
    ("model", "kwargs"),
    ("lowdim", "subspaces"),
    ("notebooks", "params"),
}


# Paths that take either a list or a mapping (e.g. an explicit eps list or {start, stop, num}).
ANY_SHAPE = {("extract", "odin_eps")}

# The types of the keys whose default is None (None stays allowed), and of keys that take more than
# their default's type (e.g. ``lowdim.params``: "all" / "head" / "last_block" or a list of prefixes).
NULLABLE: dict[tuple[str, ...], tuple[type, ...]] = {
    ("threads",): (int,),
    ("cpu_estimate",): (str,),
    ("data", "root"): (str,),
    ("data", "id_name"): (str,),
    ("model", "checkpoint"): (str,),
    ("lowdim", "n_samples"): (int,),
    ("benchmark", "held_out"): (str,),
    ("benchmark", "methods"): (list,),
    ("benchmark", "protocols"): (list,),
    ("benchmark", "paired"): (list,),
}
ALSO_ALLOWED: dict[tuple[str, ...], tuple[type, ...]] = {
    ("train", "warmup_epochs"): (float,),
    ("lowdim", "params"): (list,),
    ("extract", "odin_eps"): (list, dict),
}


# Lower bounds of numeric keys: path -> (bound, inclusive). A value outside is one error line.
LOWER_BOUNDS: dict[tuple[str, ...], tuple[float, bool]] = {
    ("train", "epochs"): (1, True),
    ("train", "batch_size"): (1, True),
    ("train", "lr"): (0, False),
    ("train", "momentum"): (0, True),
    ("train", "weight_decay"): (0, True),
    ("train", "label_smoothing"): (0, True),
    ("train", "warmup_epochs"): (0, True),
    ("train", "checkpoint_every"): (0, True),
    ("train", "eval_every"): (0, True),
    ("extract", "batch_size"): (1, True),
    ("extract", "grad_chunk"): (1, True),
    ("lowdim", "batch_size"): (1, True),
    ("lowdim", "chunk"): (1, True),
    ("lowdim", "n_samples"): (1, True),
    ("benchmark", "bootstrap"): (0, True),
}
# Keys that take one of a few words.
CHOICES: dict[tuple[str, ...], tuple[str, ...]] = {("train", "schedule"): ("cosine", "onecycle")}


class ConfigError(ValueError):
    """A profile file that cannot be used as written."""


_TYPE_WORDS = {
    bool: "true or false",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "a list",
    dict: "a mapping",
}


def _describe(value: Any) -> str:
    """How a wrong value is shown in an error: the string '64', the number 1.5, null, a list."""
    if value is None:
        return "null"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    return f"a {type(value).__name__}"


def _is_a(value: Any, kind: type) -> bool:
    """isinstance with YAML's view of numbers: a bool is no number, an int is a float."""
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, kind)


def _element_kind(default: list) -> type | None:
    """The type every element of a list-valued key must have, judged from its default."""
    if default and all(_is_a(v, float) for v in default):
        return float
    if default and all(isinstance(v, str) for v in default):
        return str
    return None


def allowed_types(default: Any, path: tuple[str, ...]) -> tuple[type, ...]:
    """The types a value at ``path`` may have (None-able keys: see ``NULLABLE``)."""
    if default is None:
        return NULLABLE.get(path, ())
    base: type = float if _is_a(default, float) and not _is_a(default, int) else type(default)
    return (base, *ALSO_ALLOWED.get(path, ()))


def default_at(path: tuple[str, ...]) -> Any:
    """The value of ``DEFAULTS`` at ``path`` (None where a FREE_FORM mapping holds it)."""
    node: Any = DEFAULTS
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
    return node


def check_type(value: Any, path: tuple[str, ...], source: str) -> None:
    """Raise ``ConfigError`` unless ``value`` has the type of its default (or another allowed one)."""
    default = default_at(path)
    kinds = allowed_types(default, path)
    if not kinds or (value is None and default is None):
        return
    where = ".".join(path)
    if not any(_is_a(value, k) for k in kinds):
        want = " or ".join(_TYPE_WORDS.get(k, k.__name__) for k in kinds)
        want += " or null" if default is None else f" (default: {json.dumps(default)})"
        raise ConfigError(f"{source}: '{where}' must be {want}, got {_describe(value)}")
    bound = LOWER_BOUNDS.get(path)
    if bound is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
        low, inclusive = bound
        if value < low or (value == low and not inclusive):
            rel = ">=" if inclusive else ">"
            raise ConfigError(f"{source}: '{where}' must be {rel} {low:g}, got {_describe(value)}")
    if path in CHOICES and value not in CHOICES[path]:
        raise ConfigError(f"{source}: '{where}' must be one of {', '.join(CHOICES[path])}, got {_describe(value)}")
    elem = _element_kind(default) if isinstance(default, list) and isinstance(value, list) else None
    if elem is None:
        return
    bad = [v for v in value if not _is_a(v, elem)]
    if bad:
        raise ConfigError(f"{source}: every element of '{where}' must be {_TYPE_WORDS[elem]}, got {_describe(bad[0])}")


def _merge(base: dict, override: dict, path: tuple[str, ...], source: str) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        here = path + (key,)
        if key not in base:
            where = ".".join(here)
            raise ConfigError(f"{source}: unknown key '{where}'; allowed keys at this level: {', '.join(sorted(base))}")
        if here in ANY_SHAPE:
            check_type(value, here, source)
            out[key] = copy.deepcopy(value)
        elif here in FREE_FORM:
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: '{'.'.join(here)}' must be a mapping, got {_describe(value)}")
            out[key] = copy.deepcopy(value)
        elif isinstance(base[key], dict) and base[key] and isinstance(value, dict):
            out[key] = _merge(base[key], value, here, source)
        elif isinstance(base[key], dict) and base[key] and value is None:  # an empty section: the defaults
            out[key] = copy.deepcopy(base[key])
        elif isinstance(base[key], dict) and base[key]:
            raise ConfigError(f"{source}: '{'.'.join(here)}' must be a mapping, got {_describe(value)}")
        else:
            check_type(value, here, source)
            out[key] = copy.deepcopy(value)
    return out


def profile_path(name_or_path: str) -> Path:
    """Resolve a profile name (``demo``) or a YAML path to a file."""
    p = Path(name_or_path)
    if p.suffix in {".yaml", ".yml"}:
        if not p.is_file():
            raise ConfigError(f"profile file not found: {p}")
        return p
    candidate = CONFIG_DIR / f"{name_or_path}.yaml"
    if not candidate.is_file():
        known = sorted(q.stem for q in CONFIG_DIR.glob("*.yaml"))
        raise ConfigError(
            f"unknown profile '{name_or_path}'; known profiles: {', '.join(known)} (or give a .yaml path)"
        )
    return candidate


def read_yaml(path: Path) -> dict[str, Any]:
    """The mapping in a YAML file; a syntax error is one line naming the file, line and column."""
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        what = " ".join(str(x) for x in (e.context, e.problem) if x)
        raise ConfigError(f"{where}: not valid YAML ({what})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping (key: value lines) at the top level, got {_describe(raw)}")
    return raw


def load_profile(name_or_path: str, overrides: dict | None = None) -> dict[str, Any]:
    """Load a profile: defaults <- YAML file <- overrides (same strict key check)."""
    path = profile_path(name_or_path)
    raw = read_yaml(path)
    cfg = _merge(DEFAULTS, raw, (), str(path))
    cfg["profile"] = path.stem  # the file names the profile (see the module docstring)
    if overrides:
        cfg = _merge(cfg, overrides, (), "command-line override")
    for role in ("train", "id_test"):
        if not cfg["data"][role]:
            raise ConfigError(f"{path}: 'data.{role}' must name a dataset spec (kind + options)")
    for name, spec in {"train": cfg["data"]["train"], "id_test": cfg["data"]["id_test"], **cfg["data"]["ood"]}.items():
        if not isinstance(spec, dict) or "kind" not in spec:
            raise ConfigError(f"{path}: dataset '{name}' needs a 'kind' (e.g. npz, cifar10, digits, image_folder)")
        check_row_selection(spec, f"{path}: data.{name}")
    if not cfg["data"]["ood"]:
        raise ConfigError(f"{path}: 'data.ood' lists no OOD set")
    check_validation(cfg, str(path))
    check_method_names(cfg, str(path))
    return cfg


def check_method_names(cfg: Mapping[str, Any], source: str) -> None:
    """Every method named in ``benchmark.methods`` / ``benchmark.paired`` is a registered score (one
    line naming the option and the unknown names), so a typo fails before any stage runs."""
    bench = cfg["benchmark"]
    named = {"benchmark.methods": list(bench.get("methods") or [])}
    named["benchmark.paired"] = [
        m for item in bench.get("paired") or [] for m in ([item] if isinstance(item, str) else item)
    ]
    if not any(named.values()):
        return
    from ood_core.scores import registry  # the score modules load only when a profile names methods

    known = set(registry.names())
    for option, names in named.items():
        unknown = [m for m in names if m not in known]
        if unknown:
            raise ConfigError(
                f"{source}: {option} names unknown method(s) {unknown}; "
                "the registered ones: python -m analysis.score --list"
            )


def validation_sets(cfg: Mapping[str, Any]) -> dict[str, dict]:
    """The profile's validation sets by name (``data.validation``): ``ID_VAL`` then each OOD
    validation set; empty when the profile has none."""
    v = cfg["data"].get("validation") or {}  # a hand-built settings dict may leave the section out
    return {ID_VAL: v["id"], **v.get("ood", {})} if v.get("id") else {}


def check_validation(cfg: Mapping[str, Any], source: str) -> None:
    """Raise ``ConfigError`` (one line) unless ``data.validation`` is empty or names an ID set and at
    least one OOD set, each a dataset spec with a ``kind``, under names no other set of the profile has."""
    v, d = cfg["data"]["validation"], cfg["data"]
    if not v["id"] and not v["ood"]:
        return
    if not v["id"] or not v["ood"]:
        missing = "data.validation.id" if not v["id"] else "data.validation.ood"
        raise ConfigError(f"{source}: validation sets need an ID set and at least one OOD set; '{missing}' is empty")
    taken = {"train", "id_test", *d["ood"]}
    for name, spec in validation_sets(cfg).items():
        where = "data.validation.id" if name == ID_VAL else f"data.validation.ood.{name}"
        if not isinstance(spec, dict) or "kind" not in spec:
            raise ConfigError(
                f"{source}: '{where}' must be a dataset spec with a 'kind' (e.g. npz), got {_describe(spec)}"
            )
        if name in taken:
            raise ConfigError(f"{source}: '{where}' takes the name of another set ('{name}'); rename it")
        check_row_selection(spec, f"{source}: {where}")


def check_row_selection(spec: Mapping[str, Any], where: str) -> None:
    """Raise ``ConfigError`` if a dataset spec gives ``openood_split`` (an OpenOOD list such as
    ``test_cifar10``) with another row selection (``rows``: a seeded subset, ``subset``: the loader's
    subset), or not as a string. The list name itself is checked when the set is loaded."""
    split = spec.get("openood_split")
    if split is None:
        return
    if not isinstance(split, str):
        raise ConfigError(
            f"{where}.openood_split must be an OpenOOD list name such as test_cifar10, got {_describe(split)}"
        )
    other = [k for k in ("rows", "subset") if spec.get(k) is not None]
    if other:
        raise ConfigError(f"{where}: 'openood_split' and '{other[0]}' both select rows; give one of them")


def merge_settings(overrides: dict | None, source: str, base: dict | None = None) -> dict[str, Any]:
    """``base`` (default: ``DEFAULTS``) with ``overrides`` merged in under the profile's strict key and
    type checks; ``source`` names where the overrides came from in error messages."""
    return _merge(DEFAULTS if base is None else base, dict(overrides or {}), (), source)


def odin_grid(cfg: Mapping[str, Any]) -> tuple[list[float], list[float]]:
    """The ODIN / GRODIN grid of the profile: (T values, eps values), floats."""
    return [float(t) for t in cfg["extract"]["odin_T"]], odin_eps_grid(cfg)


def odin_eps_grid(cfg: Mapping[str, Any]) -> list[float]:
    """The eps grid of the profile as a list (linspace start..stop, num points)."""
    import numpy as np

    e = cfg["extract"]["odin_eps"]
    if isinstance(e, list):
        return [float(v) for v in e]
    return [float(v) for v in np.round(np.linspace(e["start"], e["stop"], int(e["num"])), 10)]
