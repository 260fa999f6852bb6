"""Which parameters a per-sample gradient covers: the ``params`` selection.

``params`` is ``"all"`` (every parameter with requires_grad), a prefix of parameter names
(``"head"``, ``"layer4"`` selects ``layer4.*``; ``"conv1.weight"`` one tensor), a list of such
prefixes, or a callable ``name -> bool``. Selected names follow ``model.named_parameters()`` order,
and so do the columns of flat gradients. :func:`resolve_params` adds ``"last_block"`` (the last
residual stage + head of the zoo's models, Wu et al.'s "which layers" ablation).
"""

from __future__ import annotations

from typing import Callable, Sequence, Union, cast

import torch.nn as nn

__all__ = ["ParamSpec", "last_block_prefixes", "resolve_params", "select_param_names"]

ParamSpec = Union[str, Sequence[str], Callable[[str], bool]]


def select_param_names(model: nn.Module, params: ParamSpec = "all") -> list[str]:
    """Names (``model.named_parameters()`` order) of the trainable parameters selected by ``params``."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    if isinstance(params, str) and params == "all":
        sel = names
    elif callable(params) and not isinstance(params, str):
        sel = [n for n in names if params(n)]
    else:
        prefixes = [params] if isinstance(params, str) else list(params)
        for pre in prefixes:
            if not any(n == pre or n.startswith(pre + ".") for n in names):
                raise ValueError(f"parameter prefix '{pre}' matches no trainable parameter of {type(model).__name__}")
        sel = [n for n in names if any(n == pre or n.startswith(pre + ".") for pre in prefixes)]
    if not sel:
        raise ValueError(f"parameter selection {params!r} selects no trainable parameter")
    return sel


def last_block_prefixes(model: nn.Module) -> list[str]:
    """Parameter-name prefixes of the last residual stage + head for the zoo's models."""
    from ood_core import models as zoo

    if isinstance(model, zoo.ResNet18Cifar):
        return ["layer4", "head"]
    if isinstance(model, zoo.TorchvisionResNet50):
        return ["body.layer4", "head"]
    if isinstance(model, zoo.WideResNet):
        blocks = cast("list[zoo.WideBasic]", list(model.blocks))  # WideResNet.blocks holds WideBasic only
        width = blocks[-1].conv2.out_channels
        last = [i for i, b in enumerate(blocks) if b.conv2.out_channels == width]
        return [f"blocks.{i}" for i in last] + ["bn", "head"]
    if isinstance(model, zoo.SmallCNN):  # no residual stage: the last conv block
        return ["conv3", "bn3", "head"]
    # generic: the highest-numbered top-level child named layerN
    layers = sorted((int(n[5:]), n) for n, _ in model.named_children() if n.startswith("layer") and n[5:].isdigit())
    if layers and hasattr(model, "head"):
        return [layers[-1][1], "head"]
    raise ValueError(f"no 'last_block' rule for {type(model).__name__}; pass a list of parameter prefixes")


def resolve_params(model: nn.Module, params: ParamSpec = "all") -> list[str]:
    """Selected parameter names: ``select_param_names`` plus the ``"last_block"`` shortcut."""
    if isinstance(params, str) and params == "last_block":
        params = last_block_prefixes(model)
    return select_param_names(model, params)
