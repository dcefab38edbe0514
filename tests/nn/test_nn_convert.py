"""convert_model on a torchvision resnet18: same outputs and gradients, train and eval."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from torch_dlbasics import nn as dl_nn
from torch_dlbasics.nn import convert_model

torchvision = pytest.importorskip("torchvision")


def test_resnet18_same_outputs_and_grads_train_and_eval():
    torch.manual_seed(0)
    theirs = torchvision.models.resnet18(weights=None, num_classes=10).double()
    ours = convert_model(copy.deepcopy(theirs))
    kinds = {type(m) for m in ours.modules()}
    assert dl_nn.BatchNorm2d in kinds and nn.BatchNorm2d not in kinds
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    # 4x3x32x32: layer4 still sees 4 values per channel (2x3x32x32 leaves 2, where BN is so
    # ill-conditioned that torch itself differs from a plain-autograd reference by 1e-9).
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    for train in (True, True, False):
        ours.train(train), theirs.train(train)
        outs = []
        for model in (ours, theirs):
            model.zero_grad()
            y = model(x)
            (y * torch.arange(10.0, dtype=torch.float64)).sum().backward()
            outs.append((y.detach(), [p.grad.clone() for p in model.parameters()]))
        torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-9, atol=1e-10)
        for a, b in zip(outs[0][1], outs[1][1]):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
        for (k1, b1), (k2, b2) in zip(ours.state_dict().items(), theirs.state_dict().items()):
            assert k1 == k2
            torch.testing.assert_close(b1, b2, rtol=1e-10, atol=1e-12)


def test_carries_parameters_buffers_mode_and_dropout():
    bn = nn.BatchNorm1d(4, eps=1e-3, momentum=None, track_running_stats=True)
    bn.eval()
    net = nn.Sequential(nn.Linear(3, 4), bn, nn.Dropout(0.2, inplace=True))
    out = convert_model(net)
    assert out is net  # children replaced in place, like convert_sync_batchnorm
    new_bn, new_drop = out[1], out[2]
    assert isinstance(new_bn, dl_nn.BatchNorm1d) and isinstance(new_drop, dl_nn.Dropout)
    assert new_bn.weight is bn.weight and new_bn.running_var is bn.running_var
    assert (new_bn.eps, new_bn.momentum, new_bn.training) == (1e-3, None, False)
    assert (new_drop.p, new_drop.inplace, new_drop.training) == (0.2, True, True)
    assert isinstance(convert_model(nn.BatchNorm2d(3, affine=False)), dl_nn.BatchNorm2d)
