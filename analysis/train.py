"""Stage 1 — train the profile's model (or take the checkpoint the profile names).

    python -m analysis.train --profile demo

Writes ``<cache>/model/model.pt`` (a plain state dict, loadable with ``weights_only=True``) and
``model.pt.json`` (sha256, config, seed, test accuracy, library versions, training log). Skipped when
a checkpoint made from the same config exists (``--force`` retrains). With ``train.checkpoint_every``
> 0 a partial checkpoint is kept so an interrupted run resumes from its last saved epoch.
"""

from __future__ import annotations

import argparse
import json
import shlex
import time
from pathlib import Path

import torch

from ood_core.cache import hash_config, sha256_file
from ood_core.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from ood_core.models import OODModel, build_model
from ood_core.train import accuracy, seed_everything, train_model

from .common import Context, add_common_args, make_context, profile_estimate_line, record_run, versions
from .datasets import load_named, spec_key


def train_key(ctx: Context) -> str:
    c = ctx.cfg
    return hash_config(c["model"], c["train"], spec_key(c, "train"), spec_key(c, "id_test"), c["seed"])


def model_path(ctx: Context) -> Path:
    """The checkpoint the later stages use: the profile's ``model.checkpoint`` or the trained one."""
    ck = ctx.cfg["model"]["checkpoint"]
    if ck:
        p = Path(ck).expanduser()
        from .common import REPO

        return p if p.is_absolute() else REPO / p
    return ctx.model_dir / "model.pt"


# Where the weights of a model that the project does not train come from (model.name -> source).
WEIGHTS_SOURCES = {
    "resnet50_tv": "torchvision's ResNet-50 IMAGENET1K_V1 weights, "
    "https://download.pytorch.org/models/resnet50-0676ba61.pth",
}


def retrain_command(ctx: Context) -> str:
    """The train stage's command for this context (it retrains a checkpoint that fails its sha256)."""
    from ood_core.config import CONFIG_DIR

    from .common import REPO, resolve_data_root

    f = ctx.profile_file
    cmd = [
        "python",
        "-m",
        "analysis.train",
        "--profile",
        ctx.profile if f is None or f.parent == CONFIG_DIR.resolve() else str(f),
    ]
    if ctx.cache_dir != (REPO / "cache" / ctx.profile).resolve():
        cmd += ["--cache-dir", str(ctx.cache_dir)]
    if ctx.data_root != resolve_data_root(None, ctx.cfg["data"]["root"]):
        cmd += ["--data-root", str(ctx.data_root)]
    return shlex.join(cmd)


def repair_hint(ctx: Context) -> str:
    """What to do about a damaged checkpoint of this profile."""
    ck = ctx.cfg["model"]["checkpoint"]
    if not ck:
        return f"retrain it: {retrain_command(ctx)}"
    where = ctx.profile_file or "the profile"
    return f"restore {ck} (e.g. git checkout -- {ck}) or set model.checkpoint: null in {where} to train the model"


def require_profile_checkpoint(ctx: Context) -> Path:
    """The profile's ``model.checkpoint`` file; if it is missing, say where to put which file."""
    path = model_path(ctx)
    if path.is_file():
        return path
    m = ctx.cfg["model"]
    where = f" ({ctx.profile_file})" if ctx.profile_file else ""
    what = WEIGHTS_SOURCES.get(m["name"], f"a state dict of model '{m['name']}' saved with torch.save")
    raise CheckpointError(
        f"profile '{ctx.profile}'{where} names model.checkpoint '{m['checkpoint']}', which does not "
        f"exist: put {what} at {path}, or set model.checkpoint: null to train the model"
    )


def _verified_checkpoint(path: Path, key: str) -> str | None:
    """Why the trained checkpoint at ``path`` cannot be reused for ``key`` (None: it can)."""
    side = path.with_name(path.name + ".json")
    if not (side.is_file() and path.is_file()):
        return "no trained model yet"
    meta = json.loads(side.read_text())
    if meta.get("cache_key") != key:
        return "the profile's model or training config changed"
    if meta.get("sha256") != sha256_file(path):
        return f"{path} does not match the sha256 in {side.name} (corrupt or replaced)"
    return None


def load_model(ctx: Context) -> tuple[OODModel, dict]:
    """Build the profile's model and load its checkpoint (sha256-checked, weights only)."""
    m = ctx.cfg["model"]
    path = model_path(ctx)
    if m["checkpoint"]:
        require_profile_checkpoint(ctx)
    if m["checkpoint"] and not path.with_name(path.name + ".json").is_file():
        # a foreign weights file (e.g. torchvision's ResNet-50): weights_only load, sha256 recorded
        from ood_core.checkpoint import load_state_dict_file

        meta = {"sha256": sha256_file(path), "source": str(path)}
        if m["name"] == "resnet50_tv":
            return build_model(m["name"], weights_path=str(path), **m["kwargs"]).eval(), meta
        state = load_state_dict_file(path)
    else:
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: no trained model yet; run the train stage (python -m analysis.train --profile {ctx.profile})"
            )
        try:
            state, meta = load_checkpoint(path)
        except CheckpointError as e:
            raise CheckpointError(f"{e}; {repair_hint(ctx)}") from None
        if not m["checkpoint"] and meta.get("cache_key") not in (None, train_key(ctx)):
            raise FileNotFoundError(
                f"{path} was trained from another configuration than profile '{ctx.profile}' now has; "
                "run the train stage again (python -m analysis.train)"
            )
    model = build_model(m["name"], **m["kwargs"])
    model.load_state_dict(state)
    return model.eval(), meta


def _tensors(ctx: Context, name: str):
    from ood_core.extraction.arrays import Preprocess

    ds = load_named(ctx, name)
    num_classes = ctx.cfg["model"]["kwargs"].get("num_classes")
    if num_classes is not None:
        ds.check_labels(int(num_classes))
    pre = Preprocess(**ctx.cfg["data"]["preprocessing"])
    return pre(ds.images, torch.device("cpu")), torch.as_tensor(ds.labels)


def run(ctx: Context) -> Path:
    path = model_path(ctx)
    if ctx.cfg["model"]["checkpoint"]:
        require_profile_checkpoint(ctx)
        print(f"[train] using the profile's checkpoint {path} (no training)")
        return path
    key = train_key(ctx)
    why = _verified_checkpoint(path, key)
    if why is None and not ctx.force:
        print(f"[train] cached: {path}")
        return path
    if why and path.is_file():
        print(f"[train] retraining: {why}")
    t0 = time.perf_counter()
    note = profile_estimate_line(ctx, "train")
    if note:
        print(note, flush=True)
    seed = int(ctx.cfg["seed"])
    seed_everything(seed)
    x_tr, y_tr = _tensors(ctx, "train")
    x_te, y_te = _tensors(ctx, "id_test")
    m = ctx.cfg["model"]
    model = build_model(m["name"], **m["kwargs"])
    tcfg = ctx.cfg["train"]
    partial = ctx.model_dir / "partial.pt"
    start, opt_state, rng_state = 0, None, None
    history: list[dict] = []  # per-epoch rows, carried over a resumed run
    seconds_before = 0.0  # training seconds of the runs this one resumes
    if partial.is_file() and not ctx.force:
        try:
            state, meta = load_checkpoint(partial)
        except CheckpointError as e:  # a damaged partial checkpoint: start again from epoch 0
            print(f"[train] ignoring the partial checkpoint: {e}")
            state, meta = {}, {}
        if meta.get("cache_key") == key:
            model.load_state_dict({k: v for k, v in state.items() if not k.startswith("__opt__")})
            start = int(meta["epoch"])
            history = list(meta.get("history", []))
            seconds_before = float(meta.get("train_seconds", 0.0))
            resume = ctx.model_dir / "partial_opt.pt"
            blob = torch.load(resume, weights_only=True) if resume.is_file() else None
            if isinstance(blob, dict) and "optimizer" in blob:
                opt_state, rng_state = blob["optimizer"], blob["rng"]
            else:  # an older partial checkpoint: the optimizer state alone
                opt_state = blob
            print(f"[train] resuming from epoch {start}")

    def on_epoch_end(epoch: int, net: torch.nn.Module, opt: torch.optim.Optimizer, rng: torch.Tensor) -> None:
        every = int(tcfg["checkpoint_every"])
        if every and epoch % every == 0 and epoch < tcfg["epochs"]:
            from ood_core.cache import atomic_path

            with atomic_path(ctx.model_dir / "partial_opt.pt", ".pt") as tmp:
                torch.save({"optimizer": opt.state_dict(), "rng": rng}, tmp)
            save_checkpoint(
                partial,
                net.state_dict(),
                {
                    "cache_key": key,
                    "epoch": epoch,
                    "history": history,
                    "train_seconds": seconds_before + time.perf_counter() - t_run,
                },
            )

    device = ctx.device()
    t_run = time.perf_counter()
    result = train_model(
        model, x_tr, y_tr, x_te, y_te, tcfg, seed, device, on_epoch_end, start, opt_state, rng_state, history
    )
    model.cpu().eval()
    meta = {
        "cache_key": key,
        "model": m,
        "seed": seed,
        "test_accuracy": result.test_accuracy,
        "train_seconds": round(seconds_before + result.train_seconds, 2),  # all runs of a resumed training
        "resumed_from_epoch": start or None,
        "device": ctx.device_name,
        "versions": versions(),
        "train_config": tcfg,
        "history": result.history,
    }
    save_checkpoint(path, model.state_dict(), meta, half=bool(tcfg["half_checkpoint"]))
    if tcfg["half_checkpoint"]:  # report the accuracy of the weights as saved (float16 -> float32)
        reloaded, _ = load_model(ctx)
        acc16 = accuracy(reloaded, x_te, y_te)
        meta["test_accuracy_saved_weights"] = acc16
        save_checkpoint(path, reloaded.state_dict(), meta, half=True)
    partial.unlink(missing_ok=True)
    (ctx.model_dir / "partial_opt.pt").unlink(missing_ok=True)
    record_run(ctx, "train", time.perf_counter() - t0, {"test_accuracy": result.test_accuracy})
    print(
        f"[train] test accuracy {result.test_accuracy:.4f} in {result.train_seconds:.1f}s on {ctx.device_name}; saved {path}"
    )
    return path


def main(argv: list[str] | None = None) -> None:
    p = add_common_args(
        argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    )
    p.add_argument("--seed", type=int, default=None, help="training seed (default: the profile's seed)")
    p.add_argument(
        "--resume-from",
        default=None,
        metavar="DIR",
        help="a folder holding a partial checkpoint (partial.pt, partial.pt.json, partial_opt.pt) of this "
        "profile and seed, e.g. one committed under checkpoints/partial/: copied into the cache, then resumed",
    )
    args = p.parse_args(argv)
    ctx = make_context(args)
    if args.seed is not None:
        ctx.cfg["seed"] = args.seed
    if args.resume_from:
        seed_partial(Path(args.resume_from), ctx.model_dir)
    run(ctx)


PARTIAL_FILES = ("partial.pt", "partial.pt.json", "partial_opt.pt")


def seed_partial(src: Path, model_dir: Path) -> None:
    """Copy a partial checkpoint from ``src`` into ``model_dir`` unless one is there already (the
    train stage then resumes from it when its cache key matches, else starts again and says so)."""
    missing = [f for f in PARTIAL_FILES if not (src / f).is_file()]
    if missing:
        raise SystemExit(f"--resume-from {src}: missing {', '.join(missing)}")
    if (model_dir / "partial.pt").is_file():
        print(f"[train] {model_dir / 'partial.pt'} exists; --resume-from {src} not copied")
        return
    import shutil

    model_dir.mkdir(parents=True, exist_ok=True)
    for f in PARTIAL_FILES:
        shutil.copy2(src / f, model_dir / f)
    print(f"[train] partial checkpoint copied from {src}")


if __name__ == "__main__":
    from .common import main_guard

    main_guard(main)
