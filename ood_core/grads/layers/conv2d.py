"""Per-sample gradients of ``nn.Conv2d`` (any stride / padding / dilation / padding mode, groups = 1).

With U_i = unfold(x_i) (Cin k k, L) and G_i (Cout, L) the output gradient: dW_i = G_i U_i^T,
||dW_i||^2 by ``outer_sq_norms`` (Gram trick or materialised), db_i = sum_l G_i. On the CPU, layers
with >= ``GROUPED_MIN_POSITIONS`` output positions take dW_i instead from one grouped convolution
backward with the batch as groups (no im2col copy).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ood_core.grads.layers.base import UnsupportedModuleError
from ood_core.grads.layers.outer import outer_bytes_per_sample, outer_sq_norms, sub_chunks
from ood_core.grads.runtime import compute_dtype

__all__ = ["GROUPED_MIN_POSITIONS", "Conv2dRule", "grouped_route_ok", "unfold_patches", "weight_grads_grouped"]

GROUPED_MIN_POSITIONS = 256  # output positions from which oneDNN's grouped weight-gradient beats unfold + bmm


def unfold_patches(mod: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """(n, Cin*kh*kw, L) patches exactly as Conv2d sees them (``F.unfold``'s layout: channel, then
    kernel row, then kernel column), built from strided views of the padded batch and one copy:
    the same ops whatever the batch size (``F.unfold``'s im2col loops over the samples)."""
    if isinstance(mod.padding, str) or mod.padding_mode != "zeros":
        mode = "constant" if mod.padding_mode == "zeros" else mod.padding_mode
        x = F.pad(x, mod._reversed_padding_repeated_twice, mode=mode)
    elif any(mod.padding):
        ph, pw = mod.padding
        x = F.pad(x, (pw, pw, ph, ph))
    (kh, kw), (sh, sw), (dh, dw) = mod.kernel_size, mod.stride, mod.dilation
    n, c = x.shape[:2]
    p = x.unfold(2, dh * (kh - 1) + 1, sh).unfold(3, dw * (kw - 1) + 1, sw)  # (n, c, oh, ow, kh', kw')
    p = p[..., ::dh, ::dw]  # (n, c, oh, ow, kh, kw)
    oh, ow = p.shape[2], p.shape[3]
    return p.permute(0, 1, 4, 5, 2, 3).reshape(n, c * kh * kw, oh * ow)


def grouped_route_ok(mod: nn.Conv2d, a: torch.Tensor, L: int) -> bool:
    """Per-sample conv weight gradients by one grouped convolution backward (the batch as groups):
    no im2col copy; faster on the CPU for the large-spatial early layers (measured: ResNet-18 layer1
    3.4x, layer2 1.6x; slower from 8 x 8 on)."""
    return (
        mod.groups == 1
        and not isinstance(mod.padding, str)
        and mod.padding_mode == "zeros"
        and a.device.type == "cpu"
        and L >= GROUPED_MIN_POSITIONS
    )


def weight_grads_grouped(mod: nn.Conv2d, a: torch.Tensor, G: torch.Tensor, hw: Sequence[int]) -> torch.Tensor:
    """(n, Co, Cin kh kw) per-sample weight gradients: conv weight-gradient of the batch folded into
    the channels with groups = n, so sample i only meets its own input and output gradient;
    ``hw`` = the output's spatial shape (that of the output gradient)."""
    n, co = G.shape[0], mod.out_channels
    x = a.to(G.dtype).reshape(1, n * mod.in_channels, *a.shape[2:])
    w_shape = (n * co, mod.in_channels, *mod.kernel_size)
    gw = torch.ops.aten.convolution_backward(
        G.reshape(1, n * co, *hw),
        x,
        torch.empty(w_shape, dtype=G.dtype),
        None,
        mod.stride,
        mod.padding,
        mod.dilation,
        False,
        (0, 0),
        n,
        (False, True, False),
    )[1]
    return gw.reshape(n, co, -1)


class Conv2dRule:
    """``LayerRule`` of nn.Conv2d with groups = 1."""

    types: tuple[type[nn.Module], ...] = (nn.Conv2d,)

    def check(self, mod: nn.Conv2d, label: str) -> None:
        if mod.groups != 1:
            raise UnsupportedModuleError(
                f"{label} has groups={mod.groups}; the hooks engine supports groups=1 only. Use method='vmap'."
            )

    def sq_norm(
        self, mod: nn.Conv2d, local: Sequence[str], a: torch.Tensor, g: torch.Tensor, max_bytes: int
    ) -> torch.Tensor:
        dt = compute_dtype(g)
        n = g.shape[0]
        out = torch.zeros(n, dtype=dt, device=g.device)
        co = mod.out_channels
        G = g.reshape(n, co, -1)
        L = G.shape[2]
        if "weight" in local:
            k = mod.in_channels * mod.kernel_size[0] * mod.kernel_size[1]
            elsize = torch.finfo(dt).bits // 8
            if grouped_route_ok(mod, a, L):
                for sl in sub_chunks(n, (co * k + co * L + k * L) * elsize, max_bytes):
                    w = weight_grads_grouped(mod, a[sl], G[sl].to(dt), g.shape[2:])
                    out[sl] += w.pow(2).sum(dim=(1, 2))
            else:
                for sl in sub_chunks(n, outer_bytes_per_sample(co, k, L, elsize), max_bytes):
                    U = unfold_patches(mod, a[sl]).to(dt)
                    if U.shape[2] != L:
                        raise RuntimeError(f"unfold of {mod} gave {U.shape[2]} positions, output has {L}")
                    out[sl] += outer_sq_norms(G[sl].to(dt), U)
        if "bias" in local:
            out += G.to(dt).sum(2).pow(2).sum(1)
        return out

    def write_grads(
        self, mod: nn.Conv2d, local: Sequence[str], a: torch.Tensor, g: torch.Tensor, views: dict[str, torch.Tensor]
    ) -> None:
        dt = next(iter(views.values())).dtype
        n = g.shape[0]
        G = g.reshape(n, mod.out_channels, -1).to(dt)
        if "weight" in local:
            w = views["weight"].view(n, mod.out_channels, -1)
            if grouped_route_ok(mod, a, G.shape[2]):
                w.copy_(weight_grads_grouped(mod, a, G, g.shape[2:]))
            else:
                torch.bmm(G, unfold_patches(mod, a).to(dt).transpose(1, 2), out=w)
        if "bias" in local:
            views["bias"].copy_(G.sum(2))
