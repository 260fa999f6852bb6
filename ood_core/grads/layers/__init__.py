"""Per-layer rules of the hooks engine: one ``LayerRule`` per supported module type
(Linear, Conv2d with groups = 1, BatchNorm1d/2d with running statistics)."""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from ood_core.grads.layers.base import LayerRule, UnsupportedModuleError
from ood_core.grads.layers.batchnorm import BatchNormRule
from ood_core.grads.layers.conv2d import Conv2dRule
from ood_core.grads.layers.linear import LinearRule

__all__ = ["RULES", "LayerRule", "UnsupportedModuleError", "rule_for"]

# Any: a rule serves the module types in its ``types``, matched at run time by ``rule_for``
RULES: tuple[LayerRule[Any], ...] = (LinearRule(), Conv2dRule(), BatchNormRule())


def rule_for(name: str, mod: nn.Module) -> LayerRule[Any]:
    """The rule serving module ``name``; UnsupportedModuleError (naming it) when there is none or
    the rule refuses the module's configuration."""
    label = f"module '{name or '<root>'}' ({type(mod).__name__})"
    for rule in RULES:
        if isinstance(mod, rule.types):
            rule.check(mod, label)
            return rule
    raise UnsupportedModuleError(
        f"{label} holds trainable parameters but is not supported by the hooks engine "
        "(Linear, Conv2d with groups=1, BatchNorm1d/2d). Use method='vmap'."
    )
