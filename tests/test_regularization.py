"""L2 penalty: value, gradient, and equivalence with SGD's weight_decay on the weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torch_dlbasics.regularization import l2_penalty, param_groups_weight_decay


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3)).double()


def test_value_over_weights_only():
    net = _net()
    wd = 0.3
    expected = (
        0.5
        * wd
        * sum((w.detach().double() ** 2).sum().item() for w in (net[0].weight, net[3].weight))
    )
    assert l2_penalty(net, wd).item() == pytest.approx(expected, rel=1e-14)


def test_gradient_is_weight_decay_times_w():
    net = _net()
    l2_penalty(net, 0.3).backward()
    for name, p in net.named_parameters():
        if p.ndim >= 2:
            torch.testing.assert_close(p.grad, 0.3 * p.detach(), rtol=1e-14, atol=0)
        else:
            assert p.grad is None, name  # biases and BN gamma/beta: no penalty


def test_penalty_in_loss_equals_sgd_weight_decay_on_weights():
    wd, lr = 0.1, 0.05
    a, b = _net(), _net()
    opt_a = torch.optim.SGD(param_groups_weight_decay(a, wd), lr=lr)
    opt_b = torch.optim.SGD(b.parameters(), lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        x = torch.randn(8, 4, generator=g, dtype=torch.float64)
        t = torch.randn(8, 3, generator=g, dtype=torch.float64)
        opt_a.zero_grad()
        nn.functional.mse_loss(a(x), t).backward()
        opt_a.step()
        opt_b.zero_grad()
        (nn.functional.mse_loss(b(x), t) + l2_penalty(b, wd)).backward()
        opt_b.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-12, atol=1e-14)


def test_param_groups_and_errors():
    net = _net()
    decay, no_decay = param_groups_weight_decay(net, 0.2)
    assert decay["weight_decay"] == 0.2 and no_decay["weight_decay"] == 0.0
    assert [p.ndim for p in decay["params"]] == [2, 2]
    assert len(no_decay["params"]) == 4  # two Linear biases, BN weight and bias
    with pytest.raises(ValueError, match="Invalid weight_decay value: -1"):
        l2_penalty(net, -1)
    with pytest.raises(ValueError, match="Invalid weight_decay value: -1"):
        param_groups_weight_decay(net, -1)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reduced_precision_weights_accumulate_in_float32(dtype):
    """A float16 Linear(1000, 1000) of ones at wd 1e-4: the sum of squares (1e6) overflows
    float16, the penalty (50) does not; squares are summed in float32 as torch's reductions
    accumulate them, and the result comes back in the weights' dtype."""
    net = nn.Linear(1000, 1000).to(dtype)
    with torch.no_grad():
        net.weight.fill_(1.0)
    penalty = l2_penalty(net, 1e-4)
    assert penalty.dtype == dtype
    assert penalty.item() == pytest.approx(50.0, rel=torch.finfo(dtype).eps)
    penalty.backward()
    torch.testing.assert_close(net.weight.grad, torch.full_like(net.weight, 1e-4))
    assert net.bias.grad is None
