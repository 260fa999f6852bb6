"""Device, dtype and mode helpers shared by the gradient code: where the model lives, float32
arithmetic for half-precision tensors, eval mode for a call, optional autocast."""

from __future__ import annotations

import contextlib
from typing import ContextManager, Iterator

import torch
import torch.nn as nn

__all__ = ["autocast", "compute_dtype", "eval_mode", "exact_float32", "model_device_dtype", "upcast"]


def upcast(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32 when it is float16 / bfloat16, else unchanged."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def compute_dtype(t: torch.Tensor) -> torch.dtype:
    """The dtype ``upcast(t)`` would have: float32 for float16 / bfloat16, else ``t.dtype``."""
    return torch.float32 if t.dtype in (torch.float16, torch.bfloat16) else t.dtype


def model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and dtype of the model's first parameter (CPU / default dtype if it has none)."""
    for p in model.parameters():
        return p.device, p.dtype
    return torch.device("cpu"), torch.get_default_dtype()


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """The model in eval mode for the block; its training flag restored afterwards."""
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


def autocast(device: torch.device, amp_dtype: torch.dtype | None) -> ContextManager:
    """``torch.autocast`` to ``amp_dtype`` on ``device``'s type; a no-op context when None."""
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


@contextlib.contextmanager
def exact_float32() -> Iterator[None]:
    """TF32 off for cuDNN convolutions and CUDA matmuls inside the block (restored afterwards):
    the cached arrays are float32 arithmetic (with TF32, an H100 put the all-weights norms 5.4e-4
    from the per-image autograd loop, against 1.1e-7 on the CPU). No effect on the CPU."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old
