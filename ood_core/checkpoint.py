"""Safe checkpoints: ``torch.load(weights_only=True)`` only, with a sha256 sidecar checked on load.

A checkpoint ``model.pt`` is a plain dict of tensors (the state dict); ``model.pt.json`` beside it
holds its sha256, the model name and kwargs, config, seed, test accuracy and library versions.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import torch

from ood_core.cache import atomic_path, sha256_file, write_json


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, tampered with, or unsafe to load."""


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def save_checkpoint(path: Path, state_dict: dict[str, torch.Tensor], meta: dict[str, Any], half: bool = False) -> dict:
    """Write the state dict atomically (optionally float16), then its sidecar with the sha256."""
    path = Path(path)
    sd = {
        k: (v.detach().cpu().half() if half and v.is_floating_point() else v.detach().cpu())
        for k, v in state_dict.items()
    }
    with atomic_path(path, ".pt") as tmp:
        torch.save(sd, tmp)
    meta = {**meta, "sha256": sha256_file(path), "file": path.name, "dtype": "float16" if half else "float32"}
    write_json(_sidecar(path), meta)
    return meta


def load_state_dict_file(path: Path, expected_sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Load a state dict with ``weights_only=True``; refuse pickled code; check sha256 if given."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if expected_sha256 is not None:
        actual = sha256_file(path)
        if actual != expected_sha256:
            raise CheckpointError(
                f"checkpoint {path}: sha256 mismatch (expected {expected_sha256}, got {actual}); "
                "the file is corrupt or was replaced"
            )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError) as e:
        raise CheckpointError(
            f"checkpoint {path} needs pickle code execution to load and was refused "
            f"(only weights_only=True checkpoints are accepted): {str(e).splitlines()[0]}"
        ) from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"checkpoint {path}: expected a dict of tensors (a state dict)")
    return {k: v.float() if v.is_floating_point() else v for k, v in obj.items()}


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load a checkpoint written by ``save_checkpoint``; its sidecar sha256 must match."""
    path = Path(path)
    side = _sidecar(path)
    if not side.is_file():
        raise CheckpointError(f"checkpoint {path}: metadata file {side.name} is missing (sha256 cannot be checked)")
    meta = json.loads(side.read_text())
    return load_state_dict_file(path, meta.get("sha256")), meta
