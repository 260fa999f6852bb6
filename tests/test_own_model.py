"""ood_core.api.own_model: a user's classifier as features + linear head (issue #17), its checks, and
per-sample gradients of the wrapped model against a float64 brute-force autograd loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from ood_core.api.own_model import LinearHeadModel, OwnModelError, as_ood_model, check_grad_support, check_head
from ood_core.grads import UnsupportedModuleError, energy_delta, per_sample_sq_norms
from ood_core.models import SmallCNN

RTOL = 1e-6


pytestmark = pytest.mark.usefixtures("one_thread")


def _seeded(model: nn.Module, seed: int = 0) -> nn.Module:
    """float64, random BatchNorm statistics (eval-mode BN is then not the identity), eval mode."""
    gen = torch.Generator().manual_seed(seed)
    model = model.double()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.3 * torch.randn(m.num_features, generator=gen, dtype=torch.float64))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=gen, dtype=torch.float64))
                m.weight.copy_(1 + 0.3 * torch.randn(m.num_features, generator=gen, dtype=torch.float64))
                m.bias.copy_(0.2 * torch.randn(m.num_features, generator=gen, dtype=torch.float64))
    return model.eval()


def _x(shape=(3, 3, 16, 16), seed=1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _resnet18() -> nn.Module:
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    return _seeded(torchvision.models.resnet18(weights=None, num_classes=10))


def _sequential() -> nn.Module:
    torch.manual_seed(0)
    return _seeded(
        nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(4, 5),
        )
    )


class VGGLike(nn.Module):
    """torchvision-VGG layout: ``features`` (a conv stack, NOT the penultimate features) and a
    nested ``classifier = Sequential(Linear, ReLU, Dropout, Linear)``."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2))
        self.classifier = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3))

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


def _vgg() -> nn.Module:
    torch.manual_seed(0)
    return _seeded(VGGLike())


def _loop_sq_norms(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Per-sample ||d logsumexp(f(x_i)) / dtheta||^2 over all parameters, one backward per sample."""
    params = [p for p in model.parameters() if p.requires_grad]
    out = []
    for i in range(x.shape[0]):
        g = torch.autograd.grad(torch.logsumexp(model(x[i : i + 1])[0], 0), params, allow_unused=True)
        out.append(sum(gi.pow(2).sum() for gi in g if gi is not None))
    return torch.stack(out).detach()


def _rel(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _snapshot(model: nn.Module):
    return [(n, m) for n, m in model.named_modules()], [(n, p) for n, p in model.named_parameters()]


# --------------------------------------------------------------------------------------------------
# wrapping


@pytest.mark.parametrize(
    "build, head_name",
    [(_resnet18, "fc"), (_sequential, "5"), (_vgg, "classifier.3")],
    ids=["resnet18", "sequential", "vgg_nested"],
)
def test_automatic_head_is_the_last_linear_and_model_unchanged(build, head_name):
    model = build()
    x = _x()
    before_modules, before_params = _snapshot(model)
    ref = model(x).detach()
    wrapped = as_ood_model(model)
    assert isinstance(wrapped, LinearHeadModel) and wrapped.head_name == head_name
    assert wrapped.head is model.get_submodule(head_name)
    # the user's model: same modules (same objects), same parameters, same forward
    after_modules, after_params = _snapshot(model)
    assert [n for n, _ in after_modules] == [n for n, _ in before_modules]
    assert all(a is b for (_, a), (_, b) in zip(after_modules, before_modules))
    assert all(a is b for (_, a), (_, b) in zip(after_params, before_params))
    assert torch.equal(model(x), ref)
    # the wrapper's parameters are the user's tensors themselves, each once
    wp = list(wrapped.parameters())
    assert len(wp) == len(before_params) and {id(p) for p in wp} == {id(p) for _, p in before_params}
    assert sum(p.numel() for p in wp) == sum(p.numel() for _, p in before_params)
    names = [n for n, _ in wrapped.named_parameters()]
    assert names[-2:] == ["head.weight", "head.bias"] and all(n.startswith("body.") for n in names[:-2])
    # features + head reproduce the model
    check_head(wrapped, x)
    h = wrapped.features(x)
    assert h.shape == (x.shape[0], wrapped.head.in_features)
    assert torch.allclose(wrapped(x), ref, rtol=1e-12, atol=1e-12)
    W, b = wrapped.head_weights()
    assert torch.allclose(h @ W.T + b, ref, rtol=1e-12, atol=1e-12) and not W.requires_grad


def test_wrapper_follows_train_eval_and_shares_weights():
    model = _vgg()
    wrapped = as_ood_model(model)
    wrapped.train()
    assert model.training and model.classifier[2].training
    wrapped.eval()
    assert not model.training and not model.classifier[2].training
    with torch.no_grad():
        model.classifier[3].bias.add_(1.0)  # a change to the user's head is the wrapper's
    assert torch.allclose(wrapped(_x()), model(_x()), rtol=1e-12, atol=1e-12)


def test_study_models_are_returned_as_is():
    m = SmallCNN()
    assert as_ood_model(m) is m


class SwinLike(nn.Module):
    """``features`` and an nn.Linear ``head`` but pooling in between (torchvision's Swin layout): not
    an OODModel, so it takes the automatic route (features = everything before the head)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Conv2d(3, 4, 3)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.pool(self.features(x)).flatten(1))


def test_features_and_head_without_head_weights_are_wrapped():
    model = SwinLike().double()
    w = as_ood_model(model)
    assert isinstance(w, LinearHeadModel) and w.head is model.head
    check_head(w, _x())


def test_explicit_head_and_features():
    model = _vgg()
    x = _x()

    def penultimate(z):
        c = model.classifier
        return c[2](c[1](c[0](torch.flatten(model.features(z), 1))))

    by_name = as_ood_model(model, head="classifier.3", features=penultimate)
    by_module = as_ood_model(model, head=model.classifier[3], features=penultimate)
    for w in (by_name, by_module):
        check_head(w, x)
        assert w.head is model.classifier[3] and not w.head_found
        assert {id(p) for p in w.parameters()} == {id(p) for p in model.parameters()}
        assert torch.allclose(w(x), model(x), rtol=1e-12, atol=1e-12)
    # head= alone (a name): the body route, as for the automatic head
    assert as_ood_model(model, head="classifier.3").head_name == "classifier.3"


def test_head_without_bias_gives_zero_b():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.ReLU(), nn.Linear(6, 3, bias=False)).double()
    x = _x((4, 3, 2, 2))
    w = as_ood_model(model)
    check_head(w, x)
    W, b = w.head_weights()
    assert torch.equal(b, torch.zeros(3, dtype=torch.float64))
    assert torch.allclose(w.features(x) @ W.T + b, model(x), rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------------------------
# errors


class ScaledLogits(nn.Module):
    """The last nn.Linear is followed by another operation (temperature)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        return self.fc(self.body(x)) / 2.0


class TokenHead(nn.Module):
    """The last nn.Linear acts on tokens (N, T, D) and is pooled afterwards: features are 3-D."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x.flatten(2).transpose(1, 2))


def test_last_linear_not_last_operation():
    w = as_ood_model(ScaledLogits().double())
    with pytest.raises(OwnModelError) as e:
        check_head(w, _x((2, 3, 2, 2)))
    msg = str(e.value)
    assert "the last nn.Linear 'fc' is not the model's last operation (model(x) != head(features(x)))" in msg
    assert "pass head= and features= explicitly" in msg and "\n" not in msg


def test_features_not_2d():
    w = as_ood_model(TokenHead().double())
    with pytest.raises(OwnModelError, match=r"features\(x\) must be 2-D \(N, D\), got \(2, 4, 4\)"):
        check_head(w, _x((2, 4, 2, 2)))


def test_no_linear_and_bad_head_names():
    with pytest.raises(OwnModelError, match="Sequential has no nn.Linear layer"):
        as_ood_model(nn.Sequential(nn.Conv2d(3, 3, 1), nn.Flatten()))
    model = _vgg()
    with pytest.raises(OwnModelError, match=r"head='classifier\.9' names no module of VGGLike .*classifier\.3"):
        as_ood_model(model, head="classifier.9")
    with pytest.raises(OwnModelError, match=r"head='classifier\.1' is a ReLU, not an nn.Linear"):
        as_ood_model(model, head="classifier.1")
    with pytest.raises(OwnModelError, match="not a submodule of VGGLike"):
        as_ood_model(model, head=nn.Linear(8, 3))
    with pytest.raises(OwnModelError, match="features= holds parameters that are not the model's"):
        as_ood_model(model, head="classifier.3", features=nn.Linear(16, 8))
    assert issubclass(OwnModelError, ValueError)


def test_explicit_route_mismatch_is_named():
    model = _vgg()
    w = as_ood_model(model, head="classifier.3", features=lambda z: torch.zeros(z.shape[0], 8, dtype=z.dtype))
    with pytest.raises(OwnModelError, match=r"model\(x\) != head\(features\(x\)\) with the head 'classifier\.3'"):
        check_head(w, _x())


# --------------------------------------------------------------------------------------------------
# per-sample gradients of the wrapped model


@pytest.mark.parametrize("build", [_resnet18, _vgg], ids=["resnet18", "vgg_nested"])
def test_all_weights_sq_norms_match_loop(build):
    model = build()
    x = _x((2, 3, 16, 16))
    wrapped = as_ood_model(model)
    check_grad_support(wrapped, x=x)
    ref = _loop_sq_norms(model, x)  # the user's model, its own parameters
    for method in ("hooks", "vmap"):
        logits, sq = per_sample_sq_norms(wrapped, x, energy_delta, method=method)
        assert _rel(sq, ref) <= RTOL, method
        assert torch.allclose(logits, model(x), rtol=1e-12, atol=1e-12)


def _groupnorm_model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
    )


def _grouped_conv_model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3, groups=2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
    )


def _layernorm_model() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(108, 6), nn.LayerNorm(6), nn.ReLU(), nn.Linear(6, 3))


@pytest.mark.parametrize(
    "build, module",
    [
        (_groupnorm_model, "module 'body.1' (GroupNorm)"),
        (_grouped_conv_model, "module 'body.1' (Conv2d) has groups=2"),
        (_layernorm_model, "module 'body.2' (LayerNorm)"),
    ],
    ids=["groupnorm", "grouped_conv", "layernorm"],
)
def test_unsupported_layer_is_named_and_vmap_works(build, module):
    torch.manual_seed(0)
    model = build().double().eval()
    x = _x((3, 3, 6, 6))
    wrapped = as_ood_model(model)
    with pytest.raises(UnsupportedModuleError) as e:
        check_grad_support(wrapped)
    assert module in str(e.value) and "grad_method='vmap'" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UnsupportedModuleError):
        per_sample_sq_norms(wrapped, x, energy_delta)
    _, sq = per_sample_sq_norms(wrapped, x, energy_delta, method="vmap")
    assert _rel(sq, _loop_sq_norms(model, x)) <= RTOL
    check_grad_support(wrapped, params="head")  # the head alone is supported


def test_grad_support_probe_finds_a_layer_called_twice():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(self.lin(self.lin(x.flatten(1))))

    w = as_ood_model(Twice().double())
    check_grad_support(w)  # the static plan cannot see it
    with pytest.raises(UnsupportedModuleError, match="'body.lin' .*more than once.*grad_method='vmap'"):
        check_grad_support(w, x=_x((2, 1, 2, 2)))
