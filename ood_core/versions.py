"""Versions of the libraries a result depends on (recorded with every run and every API evaluation)."""

from __future__ import annotations

import platform
import sys


def versions() -> dict[str, str]:
    """Versions of the libraries a result depends on."""
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for mod in ("torch", "torchvision", "numpy", "scipy", "sklearn", "matplotlib"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # pragma: no cover - optional
            out[mod] = "absent"
    try:
        import torch

        out["cuda_device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
        # CPU kernels differ by instruction set (e.g. AVX2 vs AVX512): CPU training rounds
        # differently across machines, so a rerun is bit-identical only on the same capability.
        out["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    except Exception:  # pragma: no cover
        pass
    return out
