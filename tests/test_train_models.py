"""Model zoo contract (features + head) and the training loop's augmentation and learning."""

from __future__ import annotations

import pytest
import torch

from ood_core.models import MODELS, build_model
from ood_core.train import random_shift, train_model


@pytest.mark.parametrize(
    "name,kwargs,shape",
    [
        ("small_cnn", {"num_classes": 5, "in_channels": 1}, (2, 1, 8, 8)),
        ("resnet18_cifar", {"num_classes": 10}, (2, 3, 32, 32)),
        ("wrn28_10", {"num_classes": 10}, (1, 3, 32, 32)),
    ],
)
def test_models_expose_features_and_linear_head(name, kwargs, shape):
    torch.manual_seed(0)
    m = build_model(name, **kwargs).eval()
    x = torch.randn(shape)
    h = m.features(x)
    W, b = m.head_weights()
    assert h.ndim == 2 and W.shape == (kwargs["num_classes"], h.shape[1])
    torch.testing.assert_close(m(x), h @ W.T + b)


def test_unknown_model_lists_known_ones():
    with pytest.raises(KeyError, match="unknown model 'resnet19'; known models: " + ", ".join(sorted(MODELS))):
        build_model("resnet19")


def test_random_shift_is_a_crop_of_the_padded_image():
    x = torch.arange(3 * 2 * 5 * 5, dtype=torch.float32).reshape(3, 2, 5, 5)
    g = torch.Generator().manual_seed(3)
    y = random_shift(x, g, pad=2, flip=False)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(3):  # each output is some 5x5 window of its padded input (checked exhaustively)
        assert any(torch.equal(y[i], padded[i, :, r : r + 5, c : c + 5]) for r in range(5) for c in range(5))
    assert torch.equal(random_shift(x, g, pad=0, flip=False), x)


def test_training_learns_a_separable_toy_problem():
    torch.manual_seed(0)
    x = torch.randn(256, 1, 8, 8)
    y = (x.mean(dim=(1, 2, 3)) > 0).long()
    cfg = {
        "epochs": 15,
        "batch_size": 32,
        "lr": 0.1,
        "momentum": 0.9,
        "nesterov": True,
        "weight_decay": 0.0,
        "label_smoothing": 0.0,
        "augment": "none",
        "bf16": False,
        "channels_last": False,
    }
    model = build_model("small_cnn", num_classes=2, in_channels=1, width=4)
    res = train_model(model, x[:192], y[:192], x[192:], y[192:], cfg, seed=0, device=torch.device("cpu"))
    assert res.test_accuracy > 0.8, res.history


def test_resumed_training_equals_an_uninterrupted_run():
    """A run resumed from its epoch-2 partial state (weights, optimizer, shuffling/augmentation
    generator) ends with exactly the weights of the run that was never interrupted."""
    import copy

    torch.manual_seed(0)
    x = torch.randn(96, 1, 8, 8)
    y = (x.mean(dim=(1, 2, 3)) > 0).long()
    cfg = {
        "epochs": 4,
        "batch_size": 32,
        "lr": 0.1,
        "momentum": 0.9,
        "nesterov": True,
        "weight_decay": 5e-4,
        "label_smoothing": 0.0,
        "augment": "shift",
        "bf16": False,
        "channels_last": False,
    }
    saved = {}

    cfg["eval_every"] = 1
    history: list[dict] = []

    def keep(epoch, net, opt, rng):
        if epoch == 2:
            saved.update(
                model=copy.deepcopy(net.state_dict()),
                opt=copy.deepcopy(opt.state_dict()),
                rng=rng.clone(),
                history=copy.deepcopy(history),
            )

    cpu = torch.device("cpu")
    full = build_model("small_cnn", num_classes=2, in_channels=1, width=4)
    res_full = train_model(
        full, x[:64], y[:64], x[64:], y[64:], cfg, seed=0, device=cpu, on_epoch_end=keep, history=history
    )
    resumed = build_model("small_cnn", num_classes=2, in_channels=1, width=4)
    resumed.load_state_dict(saved["model"])
    res_resumed = train_model(
        resumed,
        x[:64],
        y[:64],
        x[64:],
        y[64:],
        cfg,
        seed=0,
        device=cpu,
        start_epoch=2,
        optimizer_state=saved["opt"],
        rng_state=saved["rng"],
        history=saved["history"],
    )
    for k, v in full.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k

    # the resumed run's curve holds every epoch, the ones before the resume included
    def curve(res):
        return [(h["epoch"], h.get("loss"), h.get("test_accuracy")) for h in res.history]

    assert len(saved["history"]) == 5 and [h["epoch"] for h in res_full.history] == [1, 2, 3, 4, 4]
    assert curve(res_resumed) == curve(res_full)
    assert "test_accuracy" in res_full.history[0]  # eval_every: 1


def test_resnet50_loads_torchvision_weights_from_a_local_file(tmp_path):
    import torchvision

    torch.manual_seed(0)
    ref = torchvision.models.resnet50(weights=None, num_classes=7).eval()
    path = tmp_path / "resnet50.pth"
    torch.save(ref.state_dict(), path)
    m = build_model("resnet50_tv", num_classes=7, weights_path=str(path)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref(x))
        assert m.features(x).shape == (2, 2048)
