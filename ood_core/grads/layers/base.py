"""What a per-layer rule of the hooks engine is, and the error for modules without one.

A rule turns a layer's recorded input ``a`` (n, ...) and output gradient ``g`` (n, ...) of
sum_i <delta_i, f_i> into the per-sample gradients of the layer's selected local parameters
(``local`` subset of {"weight", "bias"}): their summed squared norm, or the gradients written
into views of a flat (n, P) buffer.
"""

from __future__ import annotations

from typing import Protocol, Sequence, TypeVar

import torch
import torch.nn as nn

__all__ = ["LayerRule", "UnsupportedModuleError"]

ModuleT = TypeVar("ModuleT", bound=nn.Module, contravariant=True)  # the module type a rule serves


class UnsupportedModuleError(TypeError):
    """A module holding selected parameters cannot be handled by the hooks engine."""


class LayerRule(Protocol[ModuleT]):
    """Per-sample gradients of one layer type, ``ModuleT`` (see the module docstring)."""

    types: tuple[type[nn.Module], ...]  # the module classes (and subclasses) the rule serves

    def check(self, mod: ModuleT, label: str) -> None:
        """Raise UnsupportedModuleError (message starting with ``label``) for an unsupported setting."""

    def sq_norm(
        self, mod: ModuleT, local: Sequence[str], a: torch.Tensor, g: torch.Tensor, max_bytes: int
    ) -> torch.Tensor:
        """(n,) sum over the ``local`` parameters of per-sample squared gradient norms, in the
        compute dtype of ``g``; ``max_bytes`` bounds the working memory of one sub-chunk."""

    def write_grads(
        self, mod: ModuleT, local: Sequence[str], a: torch.Tensor, g: torch.Tensor, views: dict[str, torch.Tensor]
    ) -> None:
        """Per-sample gradients written into ``views`` ({local name: (n, *param.shape) view of
        the flat output}), without a per-layer temporary of n x |param| where possible."""
