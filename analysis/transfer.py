"""Split a large file into parts that fit the device tool's 64 MiB carry limit, and join them back.

    python -m analysis.transfer split ../shared/data/cifar10_train.npz --out .transfer --max-mb 48
    python -m analysis.transfer join .transfer/cifar10_train.npz.parts.json --out /root/data/

``split`` writes ``<name>.partNN`` files and ``<name>.parts.json`` (sizes and sha256 of every part and
of the whole file). ``join`` checks each part's sha256, concatenates them atomically and checks the
whole file's sha256, so a truncated or mixed-up transfer is an error, never a silently bad dataset.
Used by the cifar10 GPU runbook (docs/gpu_runbook.md): one part per device call while it stays warm.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ood_core.cache import atomic_path, sha256_file, write_json


def split_file(path: Path, out_dir: Path, max_bytes: int) -> Path:
    """Split ``path`` into parts of at most ``max_bytes``; return the parts manifest path."""
    path, out_dir = Path(path), Path(out_dir)
    if max_bytes <= 0:
        raise ValueError(f"--max-mb must be positive, got {max_bytes} bytes")
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = []
    with open(path, "rb") as f:
        i = 0
        while block := f.read(max_bytes):
            part = out_dir / f"{path.name}.part{i:02d}"
            with atomic_path(part) as tmp:
                tmp.write_bytes(block)
            parts.append({"file": part.name, "size": len(block), "sha256": sha256_file(part)})
            i += 1
    manifest = out_dir / f"{path.name}.parts.json"
    write_json(manifest, {"name": path.name, "size": path.stat().st_size, "sha256": sha256_file(path), "parts": parts})
    return manifest


def join_parts(manifest: Path, out_dir: Path) -> Path:
    """Join the parts listed in ``manifest`` into ``out_dir/<name>``, checking every sha256."""
    manifest = Path(manifest)
    meta = json.loads(manifest.read_text())
    target = Path(out_dir) / meta["name"]
    with atomic_path(target) as tmp, open(tmp, "wb") as out:
        for p in meta["parts"]:
            part = manifest.parent / p["file"]
            if not part.is_file():
                raise FileNotFoundError(f"{manifest}: part {p['file']} is missing (expected {len(meta['parts'])} parts)")
            if sha256_file(part) != p["sha256"]:
                raise ValueError(f"{part}: sha256 mismatch (the part is corrupt or from another file)")
            out.write(part.read_bytes())
        out.flush()
        out.close()
        got = sha256_file(tmp)
        if got != meta["sha256"]:
            raise ValueError(f"{target}: joined sha256 {got} != expected {meta['sha256']}")
    return target


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("split", help="split FILE into parts")
    s.add_argument("file", type=Path)
    s.add_argument("--out", type=Path, default=Path(".transfer"))
    s.add_argument("--max-mb", type=float, default=48.0)
    j = sub.add_parser("join", help="join the parts of a manifest")
    j.add_argument("manifest", type=Path)
    j.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    if a.cmd == "split":
        print(split_file(a.file, a.out, int(a.max_mb * 2**20)))
    else:
        print(join_parts(a.manifest, a.out))


if __name__ == "__main__":
    main()
