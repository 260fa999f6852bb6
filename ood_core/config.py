"""Profile configuration: YAML files under ``analysis/configs/`` merged over ``DEFAULTS``.

Unknown keys are rejected (a typo is an error naming the key and the file), not ignored.
Mappings listed in ``FREE_FORM`` (dataset specs, subspace specs, model kwargs) take any keys.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

CONFIG_DIR = Path(__file__).resolve().parents[1] / "analysis" / "configs"

DEFAULTS: dict[str, Any] = {
    "profile": "demo",
    "seed": 0,
    "device": "auto",
    "threads": None,
    "data": {
        "root": None,
        "id_name": None,
        "train": {},
        "id_test": {},
        "ood": {},
        "preprocessing": {"size": 32, "channels": 3, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
        "val": {"n_val": 0.2, "seed": 0},
        "verify_manifest": False,
    },
    "model": {"name": "small_cnn", "kwargs": {}, "checkpoint": None},
    "train": {
        "epochs": 30,
        "batch_size": 128,
        "lr": 0.1,
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
        "kl_allweights": True,
        "grad_chunk": 64,
        "grodin_test_points": "grid",
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
        "protocol": "per_ood_val",
        "held_out": None,
        "bootstrap": 100,
        "methods": None,
    },
    "notebooks": {"run": True, "params": {}},
}

# Paths whose value is a mapping of user-chosen names / free options.
FREE_FORM = {
    ("data", "train"),
    ("data", "id_test"),
    ("data", "ood"),
    ("model", "kwargs"),
    ("lowdim", "subspaces"),
    ("notebooks", "params"),
}


# Paths that take either a list or a mapping (e.g. an explicit eps list or {start, stop, num}).
ANY_SHAPE = {("extract", "odin_eps")}


class ConfigError(ValueError):
    """A profile file that cannot be used as written."""


def _merge(base: dict, override: dict, path: tuple[str, ...], source: str) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        here = path + (key,)
        if key not in base:
            where = ".".join(here)
            raise ConfigError(
                f"{source}: unknown key '{where}'; allowed keys at this level: {', '.join(sorted(base))}"
            )
        if here in ANY_SHAPE:
            out[key] = copy.deepcopy(value)
        elif here in FREE_FORM:
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: '{'.'.join(here)}' must be a mapping, got {type(value).__name__}")
            out[key] = copy.deepcopy(value)
        elif isinstance(base[key], dict) and base[key] and isinstance(value, dict):
            out[key] = _merge(base[key], value, here, source)
        elif isinstance(base[key], dict) and base[key] and value is not None:
            raise ConfigError(f"{source}: '{'.'.join(here)}' must be a mapping, got {type(value).__name__}")
        else:
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
        raise ConfigError(f"unknown profile '{name_or_path}'; known profiles: {', '.join(known)} (or give a .yaml path)")
    return candidate


def load_profile(name_or_path: str, overrides: dict | None = None) -> dict[str, Any]:
    """Load a profile: defaults <- YAML file <- overrides (same strict key check)."""
    path = profile_path(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    cfg = _merge(DEFAULTS, raw, (), str(path))
    if overrides:
        cfg = _merge(cfg, overrides, (), "command-line override")
    for role in ("train", "id_test"):
        if not cfg["data"][role]:
            raise ConfigError(f"{path}: 'data.{role}' must name a dataset spec (kind + options)")
    for name, spec in {"train": cfg["data"]["train"], "id_test": cfg["data"]["id_test"], **cfg["data"]["ood"]}.items():
        if not isinstance(spec, dict) or "kind" not in spec:
            raise ConfigError(f"{path}: dataset '{name}' needs a 'kind' (e.g. npz, cifar10, digits, image_folder)")
    if not cfg["data"]["ood"]:
        raise ConfigError(f"{path}: 'data.ood' lists no OOD set")
    return cfg


def odin_eps_grid(cfg: dict) -> list[float]:
    """The eps grid of the profile as a list (linspace start..stop, num points)."""
    import numpy as np

    e = cfg["extract"]["odin_eps"]
    if isinstance(e, list):
        return [float(v) for v in e]
    return [float(v) for v in np.round(np.linspace(e["start"], e["stop"], int(e["num"])), 10)]
