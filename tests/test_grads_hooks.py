"""The hooks engine's launch count: the ops of one all-weights batch do not grow with the batch."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from ood_core.grads import kl_uniform_delta, per_sample_sq_norms
from ood_core.grads.layers import conv2d
from ood_core.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")

# ops that only make views (no kernel, no data touched)
VIEW_OPS = {"aten::select", "aten::as_strided", "aten::view", "aten::reshape", "aten::_reshape_alias"}


def _aten_ops(fn) -> Counter:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return Counter(e.name for e in prof.events() if e.name.startswith("aten::"))


@pytest.mark.parametrize("route", ["unfold_bmm", "cpu_grouped"])
def test_all_weights_batch_op_count_does_not_grow_with_batch(route, monkeypatch):
    """Per-sample work is batched: ResNet-18's all-weights squared norms launch the same aten ops at
    batch 8 as at batch 32. ``unfold_bmm`` is the route a GPU takes (every op counted); on the CPU the
    large-spatial convs take one grouped convolution backward per layer, inside which aten makes one
    view per group (sample): view ops are not counted there."""
    if route == "unfold_bmm":
        monkeypatch.setattr(conv2d, "GROUPED_MIN_POSITIONS", 10**9)
    torch.manual_seed(0)
    model = build_model("resnet18_cifar", num_classes=10).eval()
    counts = {}
    for n in (8, 32):
        x = torch.randn(n, 3, 32, 32)
        ops = _aten_ops(lambda: per_sample_sq_norms(model, x, kl_uniform_delta, params="all"))
        counts[n] = ops if route == "unfold_bmm" else Counter({k: v for k, v in ops.items() if k not in VIEW_OPS})
    assert sum(counts[8].values()) > 100  # the profile saw the engine's ops
    grown = {op: (counts[8][op], counts[32][op]) for op in counts[32] if counts[32][op] != counts[8][op]}
    assert not grown, f"ops whose count changes with the batch size (batch 8, batch 32): {grown}"


@pytest.mark.parametrize(
    "kw",
    [
        dict(kernel_size=3, padding=1),
        dict(kernel_size=3, stride=2, padding=1),
        dict(kernel_size=(3, 2), stride=(2, 1), padding=(2, 0), dilation=(2, 3)),
        dict(kernel_size=3, padding="same", padding_mode="reflect"),
        dict(kernel_size=1, stride=2),
    ],
)
def test_unfold_patches_equal_f_unfold(kw):
    mod = torch.nn.Conv2d(3, 4, **kw)
    x = torch.randn(5, 3, 9, 8, dtype=torch.float64)
    got = conv2d.unfold_patches(mod, x)
    if isinstance(mod.padding, str) or mod.padding_mode != "zeros":
        xp = torch.nn.functional.pad(x, mod._reversed_padding_repeated_twice, mode=mod.padding_mode)
        want = torch.nn.functional.unfold(xp, mod.kernel_size, dilation=mod.dilation, stride=mod.stride)
    else:
        want = torch.nn.functional.unfold(
            x, mod.kernel_size, dilation=mod.dilation, padding=mod.padding, stride=mod.stride
        )
    assert torch.equal(got, want)
