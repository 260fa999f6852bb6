"""A user's classifier as the study's model (issue #17): ``features(x) -> h`` (N, D), ``head`` (an
``nn.Linear``, logits = head(h) = W h + b), ``forward(x) = head(features(x))``, ``head_weights()``.

    model = as_ood_model(torchvision.models.resnet18(num_classes=10))   # head = the last nn.Linear
    check_head(model, x_probe)            # model(x) == head(features(x)), else OwnModelError
    check_grad_support(model, x=x_probe)  # the hooks engine covers every weight, else use vmap

The automatic route wraps the model in a :class:`LinearHeadModel`: ``body`` is a shallow copy of
the user's model whose head slot is ``nn.Identity()`` (only the containers on the path to the head
are copied; every layer is shared, the user's model is not modified) and ``head`` is the user's own
``nn.Linear``. Parameter names become ``body.*`` and ``head.*``; the parameters are the user's
tensors themselves, each once, so per-sample gradients cover every weight.

A head without bias is supported: ``head_weights()`` returns b = 0 (logits = W h exactly).
"""

from __future__ import annotations

import copy
from typing import Callable, TypeGuard

import torch
import torch.nn as nn

from ood_core.grads.hooks import HookEngine
from ood_core.grads.layers import UnsupportedModuleError
from ood_core.grads.runtime import eval_mode, model_device_dtype
from ood_core.grads.selection import ParamSpec, resolve_params
from ood_core.models import OODModel

__all__ = ["LinearHeadModel", "OwnModelError", "as_ood_model", "check_grad_support", "check_head", "float32_copy"]

RTOL, ATOL = 1e-5, 1e-6  # model(x) vs head(features(x)) on the probe batch, eval mode

Features = Callable[[torch.Tensor], torch.Tensor]


class OwnModelError(ValueError):
    """A user's model cannot be read as features + linear head; the message is one line."""


def _linear_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def _name_of(model: nn.Module, module: nn.Module) -> str | None:
    """The dotted name of ``module`` inside ``model`` (``named_modules`` order), None if absent."""
    return next((n for n, m in model.named_modules() if m is module), None)


def _strip(module: nn.Module, path: str) -> nn.Module:
    """A shallow copy of ``module`` whose submodule at dotted ``path`` is ``nn.Identity()``. The
    containers along the path are copied with their own child table; parameters, buffers and every
    other submodule are the originals (shared), so ``module`` itself is left unchanged."""
    if not path:
        return nn.Identity()
    child, _, rest = path.partition(".")
    new = copy.copy(module)
    new.__dict__["_modules"] = module._modules.copy()
    sub = module._modules[child]
    if sub is None:
        raise OwnModelError(f"module path '{path}' passes through an empty slot '{child}'")
    new._modules[child] = _strip(sub, rest)
    return new


class LinearHeadModel(OODModel):
    """A user's classifier split into ``body`` (the model with its head slot replaced by
    ``nn.Identity()``) and ``head`` (the user's ``nn.Linear``, at ``head_name`` in the model).

    ``features(x)`` is ``body(x)``, or the user's ``features`` callable when one is given. The user's
    model is kept (not as a submodule, so no parameter appears twice) for :func:`check_head`, and
    follows the wrapper's train / eval mode.
    """

    def __init__(self, model: nn.Module, head_name: str, *, features: Features | None = None, found: bool = False):
        super().__init__()
        head = model.get_submodule(head_name)
        if not isinstance(head, nn.Linear):
            raise OwnModelError(f"'{head_name}' is a {type(head).__name__}, not an nn.Linear")
        self.body = _strip(model, head_name)
        self.head = head
        self.head_name = head_name
        self.head_found = found  # True: the head is the model's last nn.Linear (automatic route)
        self.original: nn.Module
        self.features_fn: Features | None
        object.__setattr__(self, "original", model)  # plain attributes: not registered as submodules
        object.__setattr__(self, "features_fn", features)
        self.train(model.training)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) if self.features_fn is None else self.features_fn(x)

    def head_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(W, b)`` of the head, detached; b = 0 for a head without bias."""
        W = self.head.weight.detach()
        b = self.head.bias
        return W, (torch.zeros(W.shape[0], dtype=W.dtype, device=W.device) if b is None else b.detach())

    def train(self, mode: bool = True) -> LinearHeadModel:
        self.original.train(mode)
        if isinstance(self.features_fn, nn.Module):
            self.features_fn.train(mode)
        return super().train(mode)

    def extra_repr(self) -> str:
        return f"head_name={self.head_name!r}"


def _is_ood_model(model: nn.Module) -> TypeGuard[OODModel]:
    """An ``OODModel``, or duck-typed: callable ``features`` and ``head_weights``, ``head`` an nn.Linear."""
    if isinstance(model, OODModel):
        return True
    return (
        isinstance(getattr(model, "head", None), nn.Linear)
        and callable(getattr(model, "features", None))
        and callable(getattr(model, "head_weights", None))
    )


def _head_name(model: nn.Module, head: str | nn.Module | None) -> str:
    """The dotted name of the head: the last nn.Linear (``head=None``), the module named ``head``,
    or the module ``head`` itself; OwnModelError when there is none or it is not an nn.Linear."""
    cls = type(model).__name__
    linears = _linear_names(model)
    known = f"its nn.Linear layers: {', '.join(linears[-5:]) or 'none'}"
    if head is None:
        if not linears:
            raise OwnModelError(
                f"{cls} has no nn.Linear layer: the OOD scores need a final linear head (logits = W h + b)"
            )
        return linears[-1]
    if isinstance(head, str):
        mod = dict(model.named_modules()).get(head)
        if mod is None or not head:
            raise OwnModelError(f"head='{head}' names no module of {cls} ({known})")
        name = head
    elif isinstance(head, nn.Module):
        found = _name_of(model, head)
        if found is None:
            raise OwnModelError(f"head= ({type(head).__name__}) is not a submodule of {cls}; pass the full classifier")
        name = found
        mod = head
    else:
        raise OwnModelError(f"head= must be a module name (str) or an nn.Linear, got {type(head).__name__}")
    if not isinstance(mod, nn.Linear):
        raise OwnModelError(f"head='{name}' is a {type(mod).__name__}, not an nn.Linear ({known})")
    return name


def as_ood_model(
    model: nn.Module, *, head: str | nn.Module | None = None, features: Features | None = None
) -> OODModel:
    """The study's model interface for a user's classifier ``model`` (an ``nn.Module`` mapping
    x (N, C, H, W) -> logits (N, K)).

    * ``model`` already has ``features``, ``head`` (nn.Linear) and ``head_weights`` (an ``OODModel``
      or duck-typed), no ``head`` / ``features`` given: returned as is.
    * ``head``: None (the last nn.Linear in ``named_modules`` order), a dotted name (``"fc"``,
      ``"classifier.1"``) or the nn.Linear module itself; it must be a submodule of ``model``.
    * ``features``: None (the model with the head slot replaced by ``nn.Identity``), or a module /
      callable x -> h (N, D) holding no parameters outside ``model`` (e.g. ``model.forward_features``).

    Returns a :class:`LinearHeadModel` (parameters: the user's, named ``body.*`` / ``head.*``).
    Raises OwnModelError for a missing or non-linear head; :func:`check_head` then verifies on a
    probe batch that model(x) == head(features(x)).
    """
    if head is None and features is None and _is_ood_model(model):
        return model
    if not isinstance(model, nn.Module):
        raise OwnModelError(f"model must be a torch nn.Module, got {type(model).__name__}")
    name = _head_name(model, head)
    if features is not None:
        if not callable(features):
            raise OwnModelError(f"features= must be a module or callable x -> h, got {type(features).__name__}")
        if isinstance(features, nn.Module):
            own = {id(p) for p in model.parameters()}
            outside = [n for n, p in features.named_parameters() if id(p) not in own]
            if outside:
                raise OwnModelError(
                    f"features= holds parameters that are not the model's (e.g. '{outside[0]}'); "
                    "pass the classifier that contains it as model"
                )
    wrapped = LinearHeadModel(model, name, features=features, found=head is None and features is None)
    if {id(p) for p in wrapped.parameters()} != {id(p) for p in model.parameters()}:  # pragma: no cover
        raise OwnModelError(f"the wrapped {type(model).__name__} does not hold exactly the model's parameters")
    return wrapped


def check_head(model: OODModel, x: torch.Tensor) -> None:
    """Verify on a probe batch ``x`` (model inputs, N >= 1) that ``features(x)`` is 2-D (N, D) and
    that the user's model gives head(features(x)) (allclose, rtol 1e-5, atol 1e-6, eval mode), for a
    model from :func:`as_ood_model`. Raises OwnModelError (one line) otherwise."""
    original = getattr(model, "original", model)
    name = getattr(model, "head_name", "head")
    head = f"last nn.Linear '{name}'" if getattr(model, "head_found", False) else f"head '{name}'"
    dev, pdt = model_device_dtype(model)
    x = x.to(device=dev, dtype=pdt)
    with torch.no_grad(), eval_mode(model), eval_mode(original):
        ref = original(x)
        h = model.features(x)
        if not isinstance(h, torch.Tensor) or h.ndim != 2:
            got = tuple(h.shape) if isinstance(h, torch.Tensor) else type(h).__name__
            raise OwnModelError(
                f"features(x) must be 2-D (N, D), got {got} (input of the {head}); "
                "pass features= returning the pooled penultimate features"
            )
        if h.shape[1] != model.head.in_features:
            raise OwnModelError(
                f"features(x) has D = {h.shape[1]} but the {head} takes {model.head.in_features} inputs; "
                "pass head= and features= explicitly"
            )
        out = model.head(h)
    if not isinstance(ref, torch.Tensor) or ref.shape != out.shape:
        ref_got = tuple(ref.shape) if isinstance(ref, torch.Tensor) else type(ref).__name__
        raise OwnModelError(
            f"model(x) gave {ref_got} but head(features(x)) gives {tuple(out.shape)} (the {head}); "
            "the model must return the logits tensor (N, K)"
        )
    if not torch.allclose(ref, out, rtol=RTOL, atol=ATOL):
        diff = f"max |diff| {float((ref - out).abs().max()):.3g}"
        if getattr(model, "head_found", False):
            raise OwnModelError(
                f"the {head} is not the model's last operation (model(x) != head(features(x))); "
                f"pass head= and features= explicitly ({diff})"
            )
        raise OwnModelError(f"model(x) != head(features(x)) with the {head} ({diff}); check head= and features=")


def check_grad_support(model: nn.Module, params: ParamSpec = "all", *, x: torch.Tensor | None = None) -> None:
    """Raise ``UnsupportedModuleError`` naming the first module (``named_modules`` order) holding
    selected trainable parameters that the hooks engine cannot handle (the engine's own plan: layer
    type and configuration, shared parameters). With a probe batch ``x`` the engine also runs one
    forward, which finds modules called twice or not called. ``params``: as in
    ``ood_core.grads.selection`` (``"all"``, prefixes, a predicate; ``"last_block"`` where defined)."""
    try:
        eng = HookEngine(model, resolve_params(model, params))
        if x is not None:
            with eng:
                eng.forward(x)
    except UnsupportedModuleError as e:
        msg = str(e).replace("method='vmap'", "grad_method='vmap'")
        if "grad_method='vmap'" not in msg:  # pragma: no cover - every engine message names vmap
            msg += " Use grad_method='vmap'."
        raise UnsupportedModuleError(msg) from None


HALF_DTYPES = (torch.float16, torch.bfloat16)


def float32_copy(model: OODModel) -> tuple[OODModel, str | None]:
    """``model`` itself when no parameter or buffer is float16 / bfloat16; else a float32 copy (the
    user's model is left as it is) and the line saying so. Per-sample gradient norms are sums of
    squares over every weight, which overflow float16 (max 65504) and lose digits in bfloat16; the
    copy's forward scores are those of the float32 model. A ``features=`` function that is neither a
    module nor a module's method cannot be copied with the model: OwnModelError asks for a float32 model."""
    tensors = [*model.parameters(), *model.buffers()]
    half = sorted({str(t.dtype).replace("torch.", "") for t in tensors if t.dtype in HALF_DTYPES})
    if not half:
        return model, None
    fn = getattr(model, "features_fn", None)
    if fn is not None and not isinstance(fn, nn.Module) and not isinstance(getattr(fn, "__self__", None), nn.Module):
        raise OwnModelError(
            f"the model is {'/'.join(half)} and features= is a plain function that cannot be cast with it: "
            "pass model.float() (the gradient passes run in float32)"
        )
    copy32 = copy.deepcopy(model).float()
    return (
        copy32,
        f"note: the model is {'/'.join(half)}; evaluated on a float32 copy (per-sample gradient norms overflow float16)",
    )
