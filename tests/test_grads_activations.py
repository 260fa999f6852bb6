"""Activation gradients of one batched backward (grads/activations.py) against a float64 loop that
runs one sample at a time and writes every reduction out in numpy; the extraction's arrays."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from ood_core.grads.activations import activation_arrays, bn_modules, nac_key, stage_names
from ood_core.models import OODModel

pytestmark = pytest.mark.usefixtures("one_thread")


def _stage(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class TinyStages(OODModel):
    """Three conv + BN + ReLU stages named like a ResNet's, global average pooling, linear head."""

    def __init__(self, classes: int = 4):
        super().__init__()
        self.layer1, self.layer2, self.layer3 = _stage(2, 3, 1), _stage(3, 4, 2), _stage(4, 5, 1)
        self.head = nn.Linear(5, classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self.layer3(self.layer2(self.layer1(x))), 1).flatten(1)


def tiny_model(seed: int = 0) -> TinyStages:
    torch.manual_seed(seed)
    m = TinyStages()
    for bn in m.modules():  # non-trivial running statistics (eval mode uses them)
        if isinstance(bn, nn.BatchNorm2d):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 1.5)
            bn.weight.data.uniform_(0.5, 1.5)
            bn.bias.data.uniform_(-0.3, 0.3)
    return m.eval()


def _one_sample(model: nn.Module, x: torch.Tensor, names: list[str], loss: str) -> tuple[dict, dict]:
    """Activations and their gradients of ``loss`` for ONE sample (float64, hooks, autograd)."""
    mods = dict(model.named_modules())
    acts: dict[str, torch.Tensor] = {}
    hs = [mods[n].register_forward_hook(lambda _m, _i, o, n=n: acts.__setitem__(n, o)) for n in names]
    h = model.features(x)
    f = model.head(h)
    logp = torch.log_softmax(f, 1)
    L = {"kl": -logp.mean(), "max": f.max(), "logp": logp.sum(), "h": h.sum()}[loss]
    g = torch.autograd.grad(L, [acts[n] for n in names])
    for hd in hs:
        hd.remove()
    return {n: acts[n][0].detach().numpy() for n in names}, {n: gi[0].numpy() for n, gi in zip(names, g)}


def brute_force(model: nn.Module, x: torch.Tensor) -> dict[str, np.ndarray]:
    """The arrays of :func:`activation_arrays`, one sample at a time in float64, reductions in numpy."""
    m = model.double()
    stages, bns = stage_names(m), bn_modules(m)
    inner = bn_modules(m, stages[-2:])
    out: dict[str, list] = {}
    for xi in x.double():
        xi = xi[None]
        z, g = _one_sample(m, xi, stages, "kl")
        for s in stages:  # (sum over positions of z) * (sum over positions of dKL/dz), per channel
            out.setdefault(nac_key(s), []).append(z[s].sum((1, 2)) * g[s].sum((1, 2)))
        _, g = _one_sample(m, xi, bns, "max")
        fr = np.concatenate([(g[n] != 0).mean((1, 2)) for n in bns])
        out.setdefault("gaia_z", []).append(np.mean(fr**2))
        _, go = _one_sample(m, xi, stages[-1:], "logp")
        m_out = np.abs(go[stages[-1]].mean((1, 2))).mean()
        _, gi = _one_sample(m, xi, inner, "h")
        a = np.concatenate([gi[n].mean((1, 2)) for n in inner])
        out.setdefault("gaia_a", []).append(np.mean((a / np.sqrt(m_out)) ** 2))
    return {k: np.asarray(v) for k, v in out.items()}


def test_names():
    m = tiny_model()
    assert stage_names(m) == ["layer1", "layer2", "layer3"]
    assert bn_modules(m) == ["layer1.1", "layer2.1", "layer3.1"]
    assert bn_modules(m, ["layer2", "layer3"]) == ["layer2.1", "layer3.1"]
    assert nac_key("body.layer3") == "nac_layer3"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_batched_equals_per_sample_loop(dtype):
    torch.manual_seed(1)
    x = torch.randn(6, 2, 6, 6)
    model = tiny_model()
    got = activation_arrays(model.to(dtype), x.to(dtype))
    want = brute_force(tiny_model(), x)
    assert set(got) == {"nac_layer1", "nac_layer2", "nac_layer3", "gaia_z", "gaia_a"}
    rtol = 1e-10 if dtype == torch.float64 else 1e-6
    for k, v in want.items():
        g = got[k].double().numpy()
        assert g.shape == v.shape, k
        scale = np.abs(v).max()
        assert np.abs(g - v).max() <= rtol * scale + 1e-300, (k, np.abs(g - v).max() / scale)
    # GAIA-Z counts exact zeros: the float32 batch sees the same ReLU pattern here
    assert np.array_equal(got["gaia_z"].double().numpy(), want["gaia_z"]) or dtype == torch.float32


def test_one_batch_is_the_batch_of_ones():
    """A sample's arrays do not depend on the rest of its batch (eval-mode BN, summed loss)."""
    torch.manual_seed(2)
    x = torch.randn(5, 2, 6, 6, dtype=torch.float64)
    m = tiny_model().double()
    full = activation_arrays(m, x)
    parts = [activation_arrays(m, x[i : i + 1]) for i in range(5)]
    for k in full:
        assert torch.allclose(full[k], torch.cat([p[k] for p in parts]), rtol=1e-12, atol=0), k


def test_switches_and_no_stages():
    m = tiny_model()
    x = torch.randn(3, 2, 6, 6)
    assert set(activation_arrays(m, x, nac=False)) == {"gaia_z", "gaia_a"}
    assert set(activation_arrays(m, x, gaia=False)) == {"nac_layer1", "nac_layer2", "nac_layer3"}
    assert set(activation_arrays(m, x, stages=[])) == {"gaia_z"}  # GAIA-A needs two stages
    assert activation_arrays(m, x, stages=[], gaia=False) == {}
    assert m.training is False and all(p.grad is None for p in m.parameters())


def test_extract_arrays_switch():
    """``extract.activation_grads`` adds the arrays (float32, one row per image) and their timing."""
    from ood_core.api.inputs import as_source
    from ood_core.config import DEFAULTS
    from ood_core.extraction.arrays import extract_arrays

    torch.manual_seed(3)
    x = torch.randn(7, 2, 6, 6)
    y = torch.arange(7) % 4
    m = tiny_model()
    cfg = {**DEFAULTS["extract"], "batch_size": 3, "grodin": False, "kl_allweights": False}
    src = as_source((x, y), name="tiny")
    on = extract_arrays(m, src, cfg, torch.device("cpu"))
    off = extract_arrays(m, src, {**cfg, "activation_grads": False}, torch.device("cpu"))
    assert DEFAULTS["extract"]["activation_grads"] is True
    assert {"nac_layer1", "nac_layer2", "nac_layer3", "gaia_z", "gaia_a"} <= set(on.arrays)
    assert not any(k.startswith(("nac_", "gaia_")) for k in off.arrays)
    assert on.arrays["nac_layer2"].shape == (7, 4) and on.arrays["gaia_a"].dtype == np.float32
    assert "activation_grads" in on.seconds
    ref = activation_arrays(m, x)
    for k, v in ref.items():
        np.testing.assert_allclose(on.arrays[k], v.numpy(), rtol=1e-5, atol=1e-7)
