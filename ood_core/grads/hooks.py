"""The hooks engine: per-sample parameter gradients from one batched backward.

By the chain rule dL_i/dtheta = J_i^T delta_i with delta_i = dL_i/df_i held constant, so ONE
batched backward of ``sum_i <delta_i, f_i>`` gives, for every module, the gradient of its output
per sample. With the module input recorded by a forward hook, each layer's ``LayerRule``
(``layers/``) turns (input, output gradient) into per-sample gradients, their squared norms, or
their write into a flat (n, P) buffer.

The model is in eval mode inside ``with engine:`` (BatchNorm then uses running statistics, so
samples are independent) and restored afterwards. A module holding selected parameters without a
rule, a parameter shared by two modules, or a module called twice per forward raises
UnsupportedModuleError naming it (``method="vmap"`` handles those).
"""

from __future__ import annotations

import contextlib
from typing import Callable, NamedTuple

import torch
import torch.nn as nn

from ood_core.grads.deltas import DeltaFn
from ood_core.grads.layers import LayerRule, UnsupportedModuleError, rule_for
from ood_core.grads.runtime import autocast, eval_mode, model_device_dtype, upcast
from ood_core.grads.selection import ParamSpec, select_param_names

__all__ = ["DEFAULT_MAX_BYTES", "HookEngine", "run_chunks"]

DEFAULT_MAX_BYTES = 512 * 2**20  # working-memory budget of one layer's per-sample computation


class _Layer(NamedTuple):
    """One module holding selected parameters: its name, the module, the selected local
    parameter names (``weight`` / ``bias``) and the rule that computes their gradients."""

    name: str
    module: nn.Module
    local: list[str]
    rule: LayerRule


def _plan(model: nn.Module, sel: set[str]) -> list[_Layer]:
    """The modules owning the selected parameters (``named_modules`` order), each with its rule;
    shared parameters and parameters other than weight / bias are refused."""
    owners: dict[int, list[str]] = {}
    for mname, mod in model.named_modules(remove_duplicate=False):
        for ln, p in mod.named_parameters(recurse=False):
            owners.setdefault(id(p), []).append(mname)
    plan: list[_Layer] = []
    seen_mods: set[int] = set()
    for mname, mod in model.named_modules():
        local = []
        for ln, p in mod.named_parameters(recurse=False):
            full = f"{mname}.{ln}" if mname else ln
            if full in sel:
                if len(set(owners[id(p)])) > 1:
                    raise UnsupportedModuleError(
                        f"parameter '{full}' is shared by modules {sorted(set(owners[id(p)]))}; "
                        "the hooks engine needs one owner per parameter. Use method='vmap'."
                    )
                local.append(ln)
        if local:
            rule = rule_for(mname, mod)
            if id(mod) in seen_mods:  # pragma: no cover - named_modules deduplicates
                continue
            seen_mods.add(id(mod))
            for ln in local:
                if ln not in ("weight", "bias"):
                    raise UnsupportedModuleError(
                        f"module '{mname}' has an unexpected parameter '{ln}'. Use method='vmap'."
                    )
            plan.append(_Layer(mname, mod, local, rule))
    return plan


class HookEngine:
    """Records module inputs/outputs in one forward and turns any number of logit gradients
    ``delta`` into per-sample squared norms or gradients (one backward each).

        eng = HookEngine(model, params="all")
        with eng:                                   # registers hooks, eval mode
            logits = eng.forward(x)
            sq, gx = eng.sq_norms_and_input_grad(delta, retain_graph=True)
            sq = eng.sq_norms(delta2)
    """

    def __init__(self, model: nn.Module, params: ParamSpec = "all", *, max_bytes: int = DEFAULT_MAX_BYTES):
        self.model = model
        self.max_bytes = int(max_bytes)
        self.names = select_param_names(model, params)
        sel = set(self.names)
        self.plan = _plan(model, sel)
        # parameter name -> (module name, local name) in named_parameters order
        where = {}
        for layer in self.plan:
            for ln in layer.local:
                where[f"{layer.name}.{ln}" if layer.name else ln] = (layer.name, ln)
        self._where = where
        self._shapes = dict((n, p.shape) for n, p in model.named_parameters() if n in sel)
        self._handles: list = []
        self._clone: set[str] = set()  # modules whose output is modified in place downstream
        self._clone_in: set[str] = set()  # modules whose input is modified in place afterwards
        self._ctx: contextlib.ExitStack | None = None
        self._muted = False  # hooks idle (forward_unrecorded)
        self._reset()

    @property
    def num_params(self) -> int:
        return int(sum(torch.Size(s).numel() for s in self._shapes.values()))

    # -- context: hooks + eval mode --
    def __enter__(self) -> "HookEngine":
        self._ctx = contextlib.ExitStack()
        self._ctx.enter_context(eval_mode(self.model))
        for layer in self.plan:
            self._handles.append(layer.module.register_forward_hook(self._make_hook(layer.name)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._reset()
        if self._ctx is not None:
            self._ctx.close()
            self._ctx = None

    def _reset(self) -> None:
        self.inputs: dict[str, torch.Tensor] = {}
        self.outputs: dict[str, torch.Tensor] = {}
        self._versions: dict[str, int] = {}
        self._in_versions: dict[str, int] = {}
        self.logits: torch.Tensor | None = None
        self.x: torch.Tensor | None = None

    def _make_hook(self, mname: str):
        def hook(mod, inp, out):
            if self._muted:
                return None
            if mname in self.outputs:
                raise UnsupportedModuleError(
                    f"module '{mname}' ({type(mod).__name__}) is called more than once per forward; "
                    "per-sample norms of summed contributions need method='vmap'."
                )
            a = inp[0].detach()
            self.inputs[mname] = a.clone() if mname in self._clone_in else a
            self._in_versions[mname] = inp[0]._version
            self.outputs[mname] = out
            self._versions[mname] = out._version
            if mname in self._clone:  # a later in-place op (e.g. ReLU(inplace=True)) would rebase `out`
                return out.clone()
            return None

        return hook

    def forward(self, x: torch.Tensor, *, amp_dtype: torch.dtype | None = None) -> torch.Tensor:
        """Forward pass with recording (x is made a leaf requiring grad, so input gradients are
        available from ``sq_norms_and_input_grad``). Returns the logits, graph kept."""
        if not self._handles:
            raise RuntimeError("HookEngine.forward must be called inside `with engine:`")
        dev, pdt = model_device_dtype(self.model)
        x = x.to(device=dev, dtype=pdt)
        x = x.detach().requires_grad_(True)  # guarantees a graph even with frozen parameters
        for _attempt in range(2):
            self._reset()
            with torch.enable_grad(), autocast(dev, amp_dtype):
                logits = self.model(x)
            changed = {m for m, o in self.outputs.items() if o._version != self._versions[m]}
            changed_in = {
                m for m, a in self.inputs.items() if m not in self._clone_in and a._version != self._in_versions[m]
            }
            if not changed and not changed_in:
                break
            self._clone |= changed
            self._clone_in |= changed_in
        else:  # pragma: no cover
            raise RuntimeError(f"tensors of {sorted(changed | changed_in)} are modified in place; cannot record them")
        missing = [layer.name for layer in self.plan if layer.name not in self.outputs]
        if missing:
            raise UnsupportedModuleError(
                f"modules {missing} hold selected parameters but were not called in forward (parameters "
                "used functionally are invisible to hooks). Use method='vmap' or deselect them."
            )
        self.x, self.logits = x, logits
        return logits

    def forward_unrecorded(self, x: torch.Tensor, *, amp_dtype: torch.dtype | None = None) -> torch.Tensor:
        """Logits of ``x`` with no graph and nothing recorded (the last recorded forward stays usable)."""
        dev, pdt = model_device_dtype(self.model)
        self._muted = True
        try:
            with torch.no_grad(), autocast(dev, amp_dtype):
                return self.model(x.to(device=dev, dtype=pdt))
        finally:
            self._muted = False

    def _backward(
        self, delta: torch.Tensor, retain_graph: bool, input_grad: bool
    ) -> tuple[list[torch.Tensor | None], torch.Tensor | None]:
        """Output gradients of the plan's modules for sum_i <delta_i, f_i> (None for a module the
        loss does not reach), and d/dx of it when ``input_grad`` (else None)."""
        if self.logits is None or self.x is None:
            raise RuntimeError("call forward() first")
        delta = delta.detach().to(device=self.logits.device)
        z = self.logits
        z = z.to(delta.dtype) if z.dtype != delta.dtype else z
        loss = (z * delta).sum()
        targets = [self.outputs[layer.name] for layer in self.plan]
        if input_grad:
            targets.append(self.x)
        grads = torch.autograd.grad(loss, targets, retain_graph=retain_graph, allow_unused=True)
        if not retain_graph:
            self.logits = None
        gx = grads[-1] if input_grad else None
        return list(grads[: len(self.plan)]), gx

    def _sum_sq_norms(self, gs: list[torch.Tensor | None], n: int, device: torch.device) -> torch.Tensor:
        acc = torch.zeros(n, dtype=torch.float64, device=device)
        for layer, g in zip(self.plan, gs):
            if g is None:
                continue
            acc += layer.rule.sq_norm(layer.module, layer.local, self.inputs[layer.name], g, self.max_bytes).to(
                torch.float64
            )
        return acc

    def sq_norms(self, delta: torch.Tensor, *, retain_graph: bool = False) -> torch.Tensor:
        """Per-sample squared norm (N,) float64 of the selected parameters' gradient of sum_i <delta_i, f_i>."""
        gs, _ = self._backward(delta, retain_graph, False)
        return self._sum_sq_norms(gs, delta.shape[0], delta.device)

    def sq_norms_and_input_grad(
        self, delta: torch.Tensor, *, retain_graph: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``sq_norms`` and, from the same backward, d/dx of sum_i <delta_i, f_i> (per sample,
        since samples are independent)."""
        gs, gx = self._backward(delta, retain_graph, True)
        if gx is None:  # autograd.grad(allow_unused=True): the logits do not depend on the input
            raise RuntimeError("the model's logits do not depend on its input: no input gradient")
        return self._sum_sq_norms(gs, delta.shape[0], delta.device), gx

    def grads_flat(
        self, delta: torch.Tensor, *, retain_graph: bool = False, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Materialised per-sample gradients (N, P), columns in ``model.named_parameters()`` order;
        written into ``out`` when given (e.g. a slice of a reused buffer), else a new tensor."""
        gs, _ = self._backward(delta, retain_graph, False)
        n = delta.shape[0]
        dt = upcast(delta).dtype if out is None else out.dtype
        if out is None:
            out = torch.empty(n, self.num_params, dtype=dt, device=delta.device)
        views: dict[str, dict[str, torch.Tensor]] = {}
        off = 0
        for name in self.names:
            shape = self._shapes[name]
            size = torch.Size(shape).numel()
            mname, ln = self._where[name]
            views.setdefault(mname, {})[ln] = out[:, off : off + size].view(n, *shape)
            off += size
        for layer, g in zip(self.plan, gs):
            if g is None:
                for v in views.get(layer.name, {}).values():
                    v.zero_()
            else:
                layer.rule.write_grads(layer.module, layer.local, self.inputs[layer.name], g, views[layer.name])
        return out


def run_chunks(
    eng: HookEngine,
    x: torch.Tensor,
    delta_fn: DeltaFn,
    chunk: int,
    amp_dtype: torch.dtype | None,
    step: Callable[[HookEngine, torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked forward + one backward per chunk with ``eng``: ``(logits (N, C), cat of step(eng, delta))``
    with ``step`` = ``HookEngine.sq_norms`` or ``HookEngine.grads_flat``."""
    logits_all, out_all = [], []
    with eng:
        for s in range(0, x.shape[0], chunk):
            lg = eng.forward(x[s : s + chunk], amp_dtype=amp_dtype)
            out_all.append(step(eng, delta_fn(lg.detach())))
            logits_all.append(upcast(lg.detach()))
    return torch.cat(logits_all), torch.cat(out_all)
