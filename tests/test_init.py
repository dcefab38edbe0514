"""The book's Xavier / He initialisations against the torch calls they equal."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from torch_dlbasics.init import he_, init_weights_, xavier_

SHAPES = [(30, 20), (8, 6, 3, 3), (4, 2, 3)]  # Linear, Conv2d, Conv1d weights


@pytest.mark.parametrize("shape", SHAPES)
def test_same_generator_same_tensor_as_kaiming_normal(shape):
    def gen():
        return torch.Generator().manual_seed(42)

    ref = nn.init.kaiming_normal_(
        torch.empty(shape), mode="fan_in", nonlinearity="linear", generator=gen()
    )
    assert torch.equal(xavier_(torch.empty(shape), generator=gen()), ref)
    ref = nn.init.kaiming_normal_(
        torch.empty(shape), mode="fan_in", nonlinearity="relu", generator=gen()
    )
    assert torch.equal(he_(torch.empty(shape), generator=gen()), ref)


def test_empirical_std():
    # 500k samples: the sample std's relative standard error is 1/sqrt(2n) = 0.1%; allow 1% (10 sigma).
    w = torch.empty(1000, 125, 2, 2, dtype=torch.float64)  # fan_in = 500
    assert abs(xavier_(w).std().item() / math.sqrt(1 / 500) - 1) < 0.01
    assert abs(he_(w).std().item() / math.sqrt(2 / 500) - 1) < 0.01
    assert abs(w.mean().item()) < 10 * math.sqrt(2 / 500) / math.sqrt(w.numel())


@pytest.mark.parametrize("scheme", ["xavier", "he", 0.01])
def test_init_weights_every_linear_and_conv(scheme):
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(36, 5))
    bn_state = {k: v.clone() for k, v in net[1].state_dict().items()}
    init_weights_(net, scheme, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    for layer in (net[0], net[3]):
        fan_in = layer.weight[0].numel()
        std = {"xavier": math.sqrt(1 / fan_in), "he": math.sqrt(2 / fan_in)}.get(scheme, scheme)
        expected = torch.empty_like(layer.weight).normal_(0.0, std, generator=g)  # std * randn
        assert torch.equal(layer.weight, expected)
        assert torch.equal(layer.bias, torch.zeros_like(layer.bias))
    for k, v in net[1].state_dict().items():
        assert torch.equal(v, bn_state[k])


def test_bad_scheme():
    with pytest.raises(ValueError, match="Invalid init scheme: 'glorot'"):
        init_weights_(nn.Linear(2, 2), "glorot")
    with pytest.raises(ValueError, match=r"Invalid init std: -1\.0"):
        init_weights_(nn.Linear(2, 2), -1.0)
    with pytest.raises(ValueError, match="fewer than 2 dimensions"):
        he_(torch.empty(3))
