"""Shared plumbing for the stage scripts: profile + paths + device + run records.

Every stage script accepts the same core options (``add_common_args``) so that
``python -m analysis.<stage> --profile demo`` works on its own and from ``analysis.run``.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import signal
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from ood_core.cache import stable_json, write_json
from ood_core.config import load_profile, profile_path
from ood_core.versions import versions  # noqa: F401  (re-exported)

from . import CHILD_ENV

REPO = Path(__file__).resolve().parents[1]


def one_line_errors(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Make ``p`` report a bad command line as one ``error: ...`` line (no usage block) and exit 2,
    and give it ``--debug`` (full tracebacks instead of one-line errors, see ``main_guard``)."""

    def error(message: str) -> NoReturn:
        print(f"error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)

    p.error = error  # type: ignore[method-assign]
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    return p


def add_common_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    one_line_errors(p)
    p.add_argument(
        "--profile",
        default="demo",
        help="profile name under analysis/configs/ or a .yaml path; a profile is named after its "
        "file (my.yaml -> profile 'my', whatever its 'profile:' key says) (default: demo)",
    )
    p.add_argument(
        "--data-root",
        default=None,
        help="root of the data files (default: the profile's data.root, "
        "else ../shared/data beside the repo if present, else data/)",
    )
    p.add_argument("--cache-dir", default=None, help="cache root (default: cache/<profile>)")
    p.add_argument("--fig-dir", default=None, help="figures and tables (default: figures/<profile>)")
    p.add_argument(
        "--analysis-dir", default=None, help="analysis cache read by scores/notebooks (default: <cache-dir>/analysis)"
    )
    p.add_argument(
        "--device",
        default=None,
        choices=["auto", "cpu", "cuda"],
        help="compute device; an explicit 'cuda' without a GPU is an error (default: profile's, auto)",
    )
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
    profile_file: Path | None = None

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
    """--data-root > profile's data.root > $OOD_SHARED_DATA or ../shared/data (if present) > data/."""
    if cli:
        return Path(cli).expanduser().resolve()
    if cfg_root:
        p = Path(cfg_root).expanduser()
        return (p if p.is_absolute() else REPO / p).resolve()
    from ood_core.data.verify import shared_data_dir

    shared = shared_data_dir()
    return shared.resolve() if shared.is_dir() else (REPO / "data").resolve()


def resolve_device(cli: str | None, cfg_device: str) -> str:
    """An explicit ``--device cuda`` without a GPU fails; a profile asking for cuda falls back with a warning."""
    import torch

    has_cuda = torch.cuda.is_available()
    if cli == "cuda" and not has_cuda:
        raise SystemExit("--device cuda was given but no CUDA GPU is available (torch.cuda.is_available() is False)")
    want = cli or cfg_device or "auto"
    if want == "cuda" and not has_cuda:
        print(
            "warning: the profile asks for device 'cuda' but no GPU is available: falling back to CPU "
            "(pass --device cpu to silence this)",
            file=sys.stderr,
            flush=True,
        )
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
        profile_file=profile_path(args.profile).resolve(),
    )


def profile_estimate_line(ctx: Context, stage: str) -> str | None:
    """The profile's ``cpu_estimate`` in full, for a stage about to run on the CPU."""
    text = ctx.cfg.get("cpu_estimate")
    if not text or ctx.device_name != "cpu":
        return None
    return f"[{stage}] the profile's CPU estimate (cpu_estimate in its YAML): {text}"


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


# In a stage started by analysis.run (CHILD_ENV set) the run says "interrupted" once for all stages,
# and the stage lists the project's source files it ran in the file CODE_LIST_ENV names (stamps.py).
CODE_LIST_ENV = "OOD_STAGE_CODE_LIST"
INTERRUPTED = "interrupted: run the same command again to resume (finished work is kept)"
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
# OS errors that are the machine's state, not a bug: a full disk, a read-only place, no permission.
DISK_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT}


# Registry look-ups whose KeyError means a wrong name in a profile or on the command line:
# (module file, function) -> what to check.
LOOKUPS: dict[tuple[str, str], str] = {
    ("ood_core/scores/registry.py", "get"): "score names (--methods, --scores or the profile's benchmark.methods)",
    ("ood_core/models.py", "build_model"): "the profile's model.name",
    ("ood_core/data/base.py", "load_dataset"): "the 'kind' of the profile's data sets",
}


def _raised_in(e: BaseException) -> tuple[str, str]:
    """(file relative to the repository, function) of the frame that raised ``e``."""
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return "", ""
    code = tb.tb_frame.f_code
    path = Path(code.co_filename).resolve()
    rel = path.relative_to(REPO).as_posix() if path.is_relative_to(REPO) else path.as_posix()
    return rel, code.co_name


def user_error(e: BaseException) -> str | None:
    """The one-line message for an expected error (config, CLI, data, analysis cache, checkpoint,
    disk), else None."""
    from ood_core.analysis_cache import AnalysisCacheError
    from ood_core.cache import DamagedFileError
    from ood_core.checkpoint import CheckpointError
    from ood_core.config import ConfigError
    from ood_core.data import DatasetError

    if isinstance(e, (DatasetError, ConfigError, CheckpointError, AnalysisCacheError)):
        return str(e)
    if isinstance(e, DamagedFileError):
        return f"{e}; run the stage that wrote it again (./run_all.sh rebuilds a damaged cached file)"
    if isinstance(e, FileNotFoundError):
        return f"{e.filename}: file not found" if e.filename else str(e)
    if isinstance(e, OSError) and e.errno in DISK_ERRNOS:
        where = e.filename or "a file"
        if e.errno in (errno.EACCES, errno.EPERM):
            return f"{where}: {e.strerror} (point --cache-dir / --fig-dir to a folder you may write)"
        return f"cannot write {where}: {e.strerror} (free some space or point --cache-dir / --fig-dir elsewhere)"
    if isinstance(e, KeyError) and _raised_in(e) in LOOKUPS:
        return f"{e.args[0] if e.args else e} (check {LOOKUPS[_raised_in(e)]})"
    return None


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def project_sources() -> list[str]:
    """The repository's source files among the modules loaded in this process (relative paths)."""
    out = set()
    for mod in list(sys.modules.values()):
        f = getattr(mod, "__file__", None)
        p = Path(f).resolve() if isinstance(f, str) and os.path.isabs(f) else None
        if p is not None and p.suffix == ".py" and p.is_relative_to(REPO) and ".venv" not in p.parts:
            out.add(p.relative_to(REPO).as_posix())
    return sorted(out)


def _write_code_list() -> None:
    target = os.environ.get(CODE_LIST_ENV)
    if target:
        Path(target).write_text(json.dumps(project_sources()))


def main_guard(fn, *args, **kwargs):
    """Run a stage's entry point; expected errors print one ``error: ...`` line and exit 2.

    Expected errors are those of ``user_error`` (config, data, checkpoint, a wrong name, a full or
    read-only disk) and ``SystemExit("message")``; with ``--debug`` they show the full traceback.
    Anything else is a bug and keeps its traceback. Ctrl-C exits with code 130 and one line saying
    to rerun the same command (a stage started by ``analysis.run`` leaves that line to the run).

    Torch runs with ``use_deterministic_algorithms(True, warn_only=True)``; every op that has no
    deterministic implementation (on GPU, e.g. some scatter/index kernels) is collected and written into
    the stage's run record as ``nondeterministic_ops``."""
    debug = "--debug" in sys.argv[1:]
    warnings.showwarning = _record_nondeterministic
    try:
        result = fn(*args, **kwargs)
        _write_code_list()
        return result
    except KeyboardInterrupt:
        if debug:
            raise
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not print a traceback
        if not os.environ.get(CHILD_ENV):
            print(f"\n{INTERRUPTED}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_INTERRUPTED) from None
    except SystemExit as e:
        if isinstance(e.code, str) and not debug:
            print(f"error: {_one_line(e.code)}", file=sys.stderr)
            raise SystemExit(EXIT_USER_ERROR) from None
        raise
    except Exception as e:
        msg = None if debug else user_error(e)
        if msg is None:
            raise
        print(f"error: {_one_line(msg)}", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR) from None
