"""Mode bookkeeping: every helper that switches a model's mode puts each module back as it was,
including a BatchNorm frozen in eval mode inside a model that is training (fine-tuning)."""

import pytest
import torch
from torch import nn

from robust_nb import attacks, evaluation
from robust_nb.models import summary
from robust_nb.modes import model_device, model_dtype, model_mode


def _half_frozen():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Flatten(), nn.Linear(4 * 8 * 8, 3))
    model.train()
    model[1].eval()                                   # the frozen BN
    return model


def _modes(model):
    return [m.training for m in model.modules()]


def test_model_mode_restores_each_module_also_on_errors():
    model = _half_frozen()
    before = _modes(model)
    with model_mode(model, training=False):
        assert not any(_modes(model))
    assert _modes(model) == before
    with pytest.raises(RuntimeError, match="boom"), model_mode(model, training=True):
        assert all(_modes(model))
        raise RuntimeError("boom")
    assert _modes(model) == before == [True, True, False, True, True, True]


@pytest.mark.parametrize("use", [
    lambda m, x, y: attacks.pgd(m, x, y, eps=0.1, alpha=0.05, steps=2),
    lambda m, x, y: attacks.square(m, x, y, eps=0.1, queries=5),
    lambda m, x, y: evaluation.predict_logits(m, x),
    lambda m, x, y: summary.count_flops(m, (1, 8, 8)),
    lambda m, x, y: summary.feature_shapes(m, (1, 8, 8)),
    lambda m, x, y: summary.layer_gradient_norms(m, x, y),
    lambda m, x, y: summary.feature_maps(m, x, "1"),
], ids=["pgd", "square", "predict_logits", "count_flops", "feature_shapes",
        "layer_gradient_norms", "feature_maps"])
def test_helpers_leave_a_frozen_batchnorm_frozen(use):
    model = _half_frozen()
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    stats = model[1].running_mean.clone()
    use(model, x, y)
    assert _modes(model) == [True, True, False, True, True, True]
    assert torch.equal(model[1].running_mean, stats)      # the frozen BN never saw a batch


def test_model_device_and_dtype():
    model = _half_frozen()
    assert model_device(model) == torch.device("cpu") and model_dtype(model) == torch.float32
    assert model_dtype(model.double()) == torch.float64
    buffers_only = nn.BatchNorm2d(3, affine=False).half()      # no parameters, float buffers
    assert model_dtype(buffers_only) == torch.float16
    assert model_device(nn.ReLU()) == torch.device("cpu") and model_dtype(nn.ReLU()) is None
