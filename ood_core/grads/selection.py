"""Which parameters a per-sample gradient covers: the ``params`` selection.

``params`` is ``"all"`` (every parameter with requires_grad), a prefix of parameter names
(``"head"``, ``"layer4"`` selects ``layer4.*``; ``"conv1.weight"`` one tensor), a list of such
prefixes, or a callable ``name -> bool``. Selected names follow ``model.named_parameters()`` order,
and so do the columns of flat gradients.
"""
from __future__ import annotations

from typing import Callable, Sequence, Union

import torch.nn as nn

__all__ = ["ParamSpec", "select_param_names"]

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
                raise ValueError(
                    f"parameter prefix '{pre}' matches no trainable parameter of {type(model).__name__}"
                )
        sel = [n for n in names if any(n == pre or n.startswith(pre + ".") for pre in prefixes)]
    if not sel:
        raise ValueError(f"parameter selection {params!r} selects no trainable parameter")
    return sel
