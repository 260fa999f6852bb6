"""ODIN input perturbation (Liang et al. 2018), batched.

    x~ = x - eps * sign(grad_x CE(f(x)/T, yhat)),   yhat = argmax f(x)

i.e. a step that raises the temperature-scaled max softmax. ``space="normalized"`` (default) takes
the step in the normalized input space the model sees (gradnorm_ood's copy of ODIN);
``space="pixel"`` divides the sign by the per-channel normalisation ``std`` so eps is in [0, 1]
pixel units (facebookresearch/odin and OpenOOD). The model is evaluated in eval mode; samples are
independent, so one batched backward of the summed loss gives every sample's input gradient.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ood_core.grads.runtime import autocast, eval_mode, model_device_dtype, upcast

__all__ = ["apply_sign_step", "input_grad_sign", "odin_perturb", "single_element_sign"]

SPACES = ("normalized", "pixel")


def _std_view(std, x: torch.Tensor) -> torch.Tensor:
    if std is None:
        raise ValueError("space='pixel' needs the per-channel normalisation std")
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).reshape(-1)
    if s.numel() not in (1, x.shape[1]):
        raise ValueError(f"std has {s.numel()} entries, input has {x.shape[1]} channels")
    return s.reshape(1, -1, *([1] * (x.dim() - 2))) if s.numel() > 1 else s.reshape(())


def input_grad_sign(
    model: nn.Module, x: torch.Tensor, T: float = 1.0, *, amp_dtype: torch.dtype | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sign(grad_x CE(f(x)/T, argmax f(x))), logits at x)`` for a batch, one forward + backward."""
    dev, pdt = model_device_dtype(model)
    x = x.detach().to(device=dev, dtype=pdt).requires_grad_(True)
    with eval_mode(model), torch.enable_grad():
        with autocast(dev, amp_dtype):
            logits = model(x)
        z = upcast(logits)
        loss = F.cross_entropy(z / float(T), z.argmax(1).detach(), reduction="sum")
        (gx,) = torch.autograd.grad(loss, x)
    return gx.sign(), z.detach()


def apply_sign_step(
    x: torch.Tensor,
    sign: torch.Tensor,
    eps: float,
    *,
    space: str = "normalized",
    std: Sequence[float] | torch.Tensor | None = None,
) -> torch.Tensor:
    """x - eps * sign (normalized space) or x - eps * sign / std (pixel space)."""
    if space not in SPACES:
        raise ValueError(f"space must be one of {SPACES}, got {space!r}")
    step = sign.to(x.dtype)
    if space == "pixel":
        step = step / _std_view(std, x)
    return (x - float(eps) * step).detach()


def odin_perturb(
    model: nn.Module,
    x: torch.Tensor,
    eps: float,
    T: float = 1.0,
    *,
    space: str = "normalized",
    std: Sequence[float] | torch.Tensor | None = None,
    amp_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """ODIN-perturbed inputs x~ (same shape, on the model's device). eps = 0 returns x unchanged."""
    if space not in SPACES:
        raise ValueError(f"space must be one of {SPACES}, got {space!r}")
    dev, pdt = model_device_dtype(model)
    x = x.detach().to(device=dev, dtype=pdt)
    if float(eps) == 0.0:
        return x
    sign, _ = input_grad_sign(model, x, T, amp_dtype=amp_dtype)
    return apply_sign_step(x, sign, eps, space=space, std=std)


def single_element_sign(sign: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """``sign`` kept only at each sample's element of largest |grad| (over channels and positions),
    0 elsewhere: iODIN's one-pixel perturbation (Jingkang50/OpenOOD ``iodin_postprocessor``)."""
    flat = sign.reshape(sign.shape[0], -1)
    top = grad.abs().reshape(grad.shape[0], -1).argmax(1, keepdim=True)
    return torch.zeros_like(flat).scatter_(1, top, flat.gather(1, top)).view_as(sign)
