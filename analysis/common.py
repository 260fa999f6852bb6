"""Shared plumbing for the stage scripts: profile + paths + device + run records.

Every stage script accepts the same core options (``add_common_args``) so that
``python -m analysis.<stage> --profile demo`` works on its own and from ``analysis.run``.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ood_core.cache import stable_json, write_json
from ood_core.config import load_profile

REPO = Path(__file__).resolve().parents[1]


def add_common_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--profile", default="demo", help="profile name under analysis/configs/ or a .yaml path (default: demo)")
    p.add_argument("--data-root", default=None, help="root of the data files (default: the profile's data.root, "
                   "else ../shared/data beside the repo if present, else data/)")
    p.add_argument("--cache-dir", default=None, help="cache root (default: cache/<profile>)")
    p.add_argument("--fig-dir", default=None, help="figures and tables (default: figures/<profile>)")
    p.add_argument("--analysis-dir", default=None, help="analysis cache read by scores/notebooks (default: <cache-dir>/analysis)")
    p.add_argument("--device", default=None, choices=["auto", "cpu", "cuda"],
                   help="compute device; an explicit 'cuda' without a GPU is an error (default: profile's, auto)")
    p.add_argument("--force", action="store_true", help="recompute even if a cached output matches")
    return p


@dataclass
class Context:
    """Everything a stage needs to know about where it runs."""

    cfg: dict[str, Any]
    profile: str
    cache_dir: Path
    analysis_dir: Path
    fig_dir: Path
    data_root: Path
    device_name: str
    force: bool

    @property
    def model_dir(self) -> Path:
        return self.cache_dir / "model"

    @property
    def lowdim_dir(self) -> Path:
        return self.cache_dir / "lowdim"

    def device(self):
        import torch

        return torch.device(self.device_name)


def resolve_data_root(cli: str | None, cfg_root: str | None) -> Path:
    """--data-root > profile's data.root > ../shared/data (if present) > data/."""
    if cli:
        return Path(cli).expanduser().resolve()
    if cfg_root:
        p = Path(cfg_root).expanduser()
        return (p if p.is_absolute() else REPO / p).resolve()
    shared = REPO.parent / "shared" / "data"
    return shared.resolve() if shared.is_dir() else (REPO / "data").resolve()


def resolve_device(cli: str | None, cfg_device: str) -> str:
    """An explicit ``--device cuda`` without a GPU fails; a profile asking for cuda falls back with a warning."""
    import torch

    has_cuda = torch.cuda.is_available()
    if cli == "cuda" and not has_cuda:
        raise SystemExit("--device cuda was given but no CUDA GPU is available (torch.cuda.is_available() is False)")
    want = cli or cfg_device or "auto"
    if want == "cuda" and not has_cuda:
        warnings.warn("the profile asks for device 'cuda' but no GPU is available: falling back to CPU", stacklevel=2)
        return "cpu"
    if want == "auto":
        return "cuda" if has_cuda else "cpu"
    return want


def make_context(args: argparse.Namespace) -> Context:
    cfg = load_profile(args.profile)
    profile = cfg["profile"]
    import torch

    if cfg["threads"]:
        torch.set_num_threads(int(cfg["threads"]))
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    cache_dir = Path(args.cache_dir) if args.cache_dir else REPO / "cache" / profile
    analysis_dir = Path(args.analysis_dir) if args.analysis_dir else cache_dir / "analysis"
    fig_dir = Path(args.fig_dir) if args.fig_dir else REPO / "figures" / profile
    return Context(
        cfg=cfg,
        profile=profile,
        cache_dir=cache_dir.resolve(),
        analysis_dir=analysis_dir.resolve(),
        fig_dir=fig_dir.resolve(),
        data_root=resolve_data_root(args.data_root, cfg["data"]["root"]),
        device_name=resolve_device(args.device, cfg["device"]),
        force=bool(args.force),
    )


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


def _determinism_flags() -> dict[str, Any]:
    import torch

    return {
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "threads": torch.get_num_threads(),
    }


def record_run(ctx: Context, stage: str, seconds: float, extra: dict[str, Any] | None = None) -> Path:
    """Append-only run record: config, seed, versions, timings (cache/<profile>/runs/)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    rec = {
        "stage": stage,
        "profile": ctx.profile,
        "seed": ctx.cfg["seed"],
        "device": ctx.device_name,
        "seconds": round(seconds, 3),
        "versions": versions(),
        "deterministic": _determinism_flags(),
        "nondeterministic_ops": list(NONDETERMINISTIC_OPS),
        "config": json.loads(stable_json(ctx.cfg)),
        **(extra or {}),
    }
    return write_json(ctx.cache_dir / "runs" / f"{stamp}-{stage}.json", rec)


NONDETERMINISTIC_OPS: list[str] = []


def _record_nondeterministic(message, category, filename, lineno, file=None, line=None):
    """warnings.showwarning hook: keep torch's 'no deterministic implementation' warnings for the run record."""
    text = str(message)
    if "deterministic" in text and text not in NONDETERMINISTIC_OPS:
        NONDETERMINISTIC_OPS.append(text.splitlines()[0])
    _default_showwarning(message, category, filename, lineno, file, line)


_default_showwarning = warnings.showwarning


def main_guard(fn, *args, **kwargs):
    """Run a stage's entry point; known user errors print one clear line and exit 2 (no traceback).

    Torch runs with ``use_deterministic_algorithms(True, warn_only=True)``; every op that has no
    deterministic implementation (on GPU, e.g. some scatter/index kernels) is collected and written into
    the stage's run record as ``nondeterministic_ops``."""
    from ood_core.checkpoint import CheckpointError
    from ood_core.config import ConfigError
    from ood_core.data import DatasetError

    warnings.showwarning = _record_nondeterministic
    try:
        return fn(*args, **kwargs)
    except (DatasetError, ConfigError, CheckpointError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
