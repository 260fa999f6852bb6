"""The hooks engine's launch count: the ops of one all-weights batch do not grow with the batch."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from ood_core.grads import kl_uniform_delta, per_sample_sq_norms
from ood_core.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _aten_ops(fn) -> Counter:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return Counter(e.name for e in prof.events() if e.name.startswith("aten::"))


def test_all_weights_batch_op_count_does_not_grow_with_batch():
    """Per-sample work is batched (grouped convolutions, bmm, batched unfold): ResNet-18's
    all-weights squared norms launch the same aten ops at batch 8 as at batch 32."""
    torch.manual_seed(0)
    model = build_model("resnet18_cifar", num_classes=10).eval()
    counts = {}
    for n in (8, 32):
        x = torch.randn(n, 3, 32, 32)
        counts[n] = _aten_ops(lambda: per_sample_sq_norms(model, x, kl_uniform_delta, params="all"))
    assert sum(counts[8].values()) > 100  # the profile saw the engine's ops
    grown = {op: (counts[8][op], counts[32][op]) for op in counts[32] if counts[32][op] != counts[8][op]}
    assert not grown, f"ops whose count changes with the batch size (batch 8, batch 32): {grown}"
