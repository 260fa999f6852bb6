"""Stage stamps: ``analysis.run`` skips a stage whose inputs and outputs are as its last run left them.

A stamp ``<cache>/stamps/<stage>.json`` is written after a stage succeeds. It holds

* ``inputs``: a hash of the stage's command line (without ``--force`` and ``--debug``), the
  profile's config, library versions, and the content of the files it reads (``input_files``): data
  files (size + mtime), the model checkpoint, the analysis cache (npz cache keys, small files' bytes)
  and, for the notebooks, the tables the benchmark wrote;
* ``code``: the hash of each of the project's source files the stage ran (the stage process lists
  the modules it loaded, ``common.CODE_LIST_ENV``), plus ``EXTRA_CODE`` (the notebooks and the
  package they import in their own kernel);
* ``outputs``: every file the stage wrote or rewrote (found by comparing ``snapshot``-s of its output
  folders, ``output_roots``, before and after it ran), each with its size and mtime.

A stage is current when inputs and code hash the same and every output is still there, untouched
and intact: the files it must leave (``expected_outputs``, whether this run wrote them or reused
them) are there, no output's size or mtime changed, and every zip archive among them (npz, torch
``.pt``) passes its CRC-32 check (``ood_core.cache.zip_problem``).
Files a stage wrote itself are never counted among its own inputs (the notebooks read and write
``figures/<profile>/``). The stages keep their own finer caches: a stage that is not current still
reuses whatever of its work is unchanged.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ood_core.cache import hash_config, npz_key, write_json, zip_problem

from .common import REPO, Context

# Source files a stage depends on beyond the modules its own process loads (globs, repository-relative).
EXTRA_CODE: dict[str, tuple[str, ...]] = {"notebooks": ("notebooks/*.ipynb", "ood_core/**/*.py")}
HASH_BYTES_LIMIT = 64 << 20  # larger files are fingerprinted by size + mtime, not read
NO_RECORD = "no record of a finished run"  # stale_reason of a stage that never finished
ZIP_SUFFIXES = (".npz", ".pt")  # outputs that are zip archives, their members' CRC-32 checked

Snapshot = dict[str, list[int]]  # absolute path -> [size, mtime_ns]


def code_hashes(files: Iterable[str]) -> dict[str, str | None]:
    """sha256 (16 hex digits) of each repository-relative source file; None for a missing one."""
    out: dict[str, str | None] = {}
    for rel in files:
        p = REPO / rel
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()[:16] if p.is_file() else None
    return out


PROJECT_PACKAGES = ("ood_core", "analysis")


def _module_file(module: str) -> Path | None:
    p = REPO.joinpath(*module.split("."))
    return next((f for f in (p.with_suffix(".py"), p / "__init__.py") if f.is_file()), None)


def imported_sources(*start: Path, packages: Iterable[str] = PROJECT_PACKAGES) -> list[Path]:
    """``start`` and every source file of ``packages`` they import, directly or not, with the
    packages' ``__init__.py``: read from the import statements (those inside functions too), so the
    list does not depend on how or how far the code has run."""
    import ast

    packages = tuple(packages)
    todo, seen = [Path(f).resolve() for f in start], set()
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        package = list(f.relative_to(REPO).with_suffix("").parts[:-1])
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                parent = package[: len(package) - node.level + 1] if node.level else []
                base = ".".join(parent + (node.module.split(".") if node.module else []))
                modules = [base, *(f"{base}.{a.name}" for a in node.names)]  # `from pkg import module`
            else:
                continue
            for module in modules:
                parts = module.split(".")
                if parts[0] in packages:
                    todo += [mf for i in range(1, len(parts) + 1) if (mf := _module_file(".".join(parts[:i])))]
    return sorted(seen)


def stage_code(stage: str, loaded: Iterable[str]) -> dict[str, str | None]:
    """Hashes of the files the stage process loaded (``loaded``) and of its ``EXTRA_CODE``."""
    extra = [p.relative_to(REPO).as_posix() for g in EXTRA_CODE.get(stage, ()) for p in REPO.glob(g)]
    return code_hashes(sorted({*loaded, *extra}))


def _npz_content(path: Path) -> str:
    """An npz's cache key if it has one, else the hash of its arrays (zip timestamps do not count)."""
    key = npz_key(path)
    if key is not None:
        return f"key:{key}"
    h = hashlib.sha256()
    with np.load(path, allow_pickle=False) as z:
        for name in sorted(z.files):
            a = z[name]
            h.update(f"{name}:{a.dtype.str}:{a.shape}".encode() + np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def file_fingerprint(path: Path) -> str:
    """Content of a file as a short string: npz arrays, small files' bytes, else size + mtime."""
    st = path.stat()
    if path.suffix == ".npz":
        try:
            return _npz_content(path)
        except Exception:  # unreadable (half-written, corrupt): its size and mtime then
            pass
    if st.st_size <= HASH_BYTES_LIMIT:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return f"{st.st_size}:{st.st_mtime_ns}"


def _files(root: Path) -> Iterable[Path]:
    if root.is_file():
        yield root
    elif root.is_dir():
        yield from (p for p in sorted(root.rglob("*")) if p.is_file())


def snapshot(roots: Iterable[Path]) -> Snapshot:
    """Size and mtime of every file under ``roots`` (a root may be a file)."""
    out: Snapshot = {}
    for root in roots:
        for p in _files(root):
            st = p.stat()
            out[str(p)] = [st.st_size, st.st_mtime_ns]
    return out


def written(before: Snapshot, after: Snapshot) -> Snapshot:
    """Files of ``after`` that are new or changed since ``before``."""
    return {p: v for p, v in after.items() if before.get(p) != v}


def output_roots(stage: str, ctx: Context) -> list[Path]:
    """The folders (and files) a stage writes into."""
    return {
        "train": [ctx.model_dir],
        "extract": [ctx.analysis_dir, ctx.lowdim_dir],
        "benchmark": [ctx.fig_dir, ctx.analysis_dir / "scores"],
        "notebooks": [ctx.fig_dir, ctx.cache_dir / "notebooks", ctx.cache_dir / "notebook_stamps.json"],
    }[stage]


def _data_paths(ctx: Context) -> list[Path]:
    """The files and folders the profile's data sets are read from."""
    from .datasets import all_specs

    paths = [ctx.data_root]
    for spec in all_specs(ctx.cfg).values():
        if isinstance(spec, dict) and "path" in spec:
            p = Path(str(spec["path"])).expanduser()
            paths.append(p if p.is_absolute() else ctx.data_root / p)
    return paths


def _stat(path: Path) -> list[int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _model_files(ctx: Context) -> list[Path]:
    from .train import model_path

    path = model_path(ctx)
    return [path, path.with_name(path.name + ".json")]


def input_files(stage: str, ctx: Context) -> tuple[list[Path], list[Path]]:
    """(files and folders fingerprinted by size + mtime only, roots whose files' content counts)."""
    if stage == "train":
        return _data_paths(ctx) + (_model_files(ctx) if ctx.cfg["model"]["checkpoint"] else []), []
    if stage == "extract":
        return _data_paths(ctx), _model_files(ctx)
    if stage == "benchmark":
        return [], [ctx.analysis_dir]
    return [], [ctx.analysis_dir, ctx.fig_dir]


def _versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for mod in ("numpy", "torch"):
        m = sys.modules.get(mod)
        out[mod] = getattr(m, "__version__", "?") if m else "not loaded"
    return out


def inputs_digest(stage: str, ctx: Context, cmd: list[str], own_outputs: Iterable[str]) -> str:
    """Hash of everything ``stage`` reads; files it wrote itself (``own_outputs``) are left out."""
    own = set(own_outputs)
    stat_paths, content_roots = input_files(stage, ctx)
    contents = {str(p): file_fingerprint(p) for root in content_roots for p in _files(root) if str(p) not in own}
    stats = {str(p): _stat(p) for p in stat_paths}
    command = [a for a in cmd if a not in ("--force", "--debug")]
    return hash_config(stage, command, ctx.cfg, _versions(), stats, contents)


def stamp_path(stage: str, ctx: Context) -> Path:
    return ctx.cache_dir / "stamps" / f"{stage}.json"


def read_stamp(stage: str, ctx: Context) -> dict[str, Any]:
    p = stamp_path(stage, ctx)
    try:
        return json.loads(p.read_text()) if p.is_file() else {}
    except (OSError, ValueError):
        return {}


def expected_outputs(stage: str, ctx: Context) -> list[Path]:
    """The files a finished stage leaves behind, written by this run or reused from an earlier one."""
    if stage == "train":
        return [] if ctx.cfg["model"]["checkpoint"] else [ctx.model_dir / "model.pt"]
    if stage == "extract":
        from .datasets import all_specs

        a = ctx.analysis_dir
        return [
            a / "meta.json",
            a / "head.npz",
            a / "splits.npz",
            *(a / "arrays" / f"{n}.npz" for n in all_specs(ctx.cfg)),
        ]
    if stage == "benchmark":
        return [ctx.fig_dir / "metrics.csv"]
    return []


def short_name(path: Path, ctx: Context) -> str:
    """``path`` relative to the analysis, cache or figures folder holding it (else as given)."""
    for root in (ctx.analysis_dir, ctx.cache_dir, ctx.fig_dir):
        if path.is_relative_to(root):
            return path.relative_to(root).as_posix()
    return str(path)


def _missing_or_changed(stage: str, ctx: Context, outputs: Snapshot) -> str | None:
    """An output not there, or not as the stage left it (size, mtime): one phrase naming it."""
    for p in sorted({Path(p) for p in outputs} | set(expected_outputs(stage, ctx))):
        st = _stat(p)
        if st is None:
            return f"{short_name(p, ctx)} is missing"
        if str(p) in outputs and st != outputs[str(p)]:
            return f"{short_name(p, ctx)} changed since the stage wrote it"
    return None


def _damaged(stage: str, ctx: Context, outputs: Snapshot) -> str | None:
    """A zip archive among the outputs that fails its CRC check: one phrase naming it."""
    for p in sorted({Path(p) for p in outputs} | set(expected_outputs(stage, ctx))):
        if p.suffix in ZIP_SUFFIXES and (why := zip_problem(p)):
            return f"{short_name(p, ctx)} is damaged ({why})"
    return None


def stale_reason(stage: str, ctx: Context, cmd: list[str]) -> str | None:
    """None if ``stage`` ran with these inputs and its outputs are still as it left them, intact;
    else why not (an output's problem names the file). Cheap checks first, the CRC read last."""
    stamp = read_stamp(stage, ctx)
    if not stamp:
        return NO_RECORD
    outputs: Snapshot = stamp.get("outputs", {})
    code = stamp.get("code", {})
    why = _missing_or_changed(stage, ctx, outputs)
    if why:
        return why
    if stage_code(stage, code) != code:
        return "its code changed"
    if stamp.get("inputs") != inputs_digest(stage, ctx, cmd, outputs):
        return "its inputs changed"
    return _damaged(stage, ctx, outputs)


def is_current(stage: str, ctx: Context, cmd: list[str]) -> bool:
    """True if ``stage`` ran with these inputs and its outputs are still as it left them, intact."""
    return stale_reason(stage, ctx, cmd) is None


def forget(stage: str, ctx: Context) -> None:
    """Drop the stamp of a stage about to run (a run that does not finish leaves none)."""
    stamp_path(stage, ctx).unlink(missing_ok=True)


def record(
    stage: str, ctx: Context, cmd: list[str], before: Snapshot, previous: dict[str, Any], loaded: list[str]
) -> Path:
    """Write the stamp of a stage that just succeeded: what it wrote (this run's new or changed files,
    plus those of its previous stamp still present, plus its ``expected_outputs`` it reused), the
    digest of what it read and the hashes of the source files it ran (``loaded``: those its process
    listed)."""
    after = snapshot(output_roots(stage, ctx))
    outputs = {p: v for p, v in previous.get("outputs", {}).items() if p in after}
    outputs.update({str(p): v for p in expected_outputs(stage, ctx) if (v := _stat(p)) is not None})
    outputs.update({p: after[p] for p in outputs if p in after})
    outputs.update(written(before, after))
    stamp = {
        "stage": stage,
        "inputs": inputs_digest(stage, ctx, cmd, outputs),
        "code": stage_code(stage, loaded),
        "outputs": outputs,
    }
    return write_json(stamp_path(stage, ctx), stamp)
