"""When the layers call their Function's ``forward`` directly (nothing to record for autograd)
and when they go through ``Function.apply``; the signature each Function carries."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import torch
from torch import nn
from torch.autograd import forward_ad as fwAD

from torch_dlbasics.nn import BatchNorm1d, BatchNorm2d, Dropout
from torch_dlbasics.nn import batchnorm as bn_module
from torch_dlbasics.nn import dropout as dropout_module
from torch_dlbasics.nn._autograd import records
from torch_dlbasics.nn.syncbatchnorm import SyncBatchNormFunction

FUNCTIONS = [
    bn_module._BatchNormFunction,
    bn_module._BatchNormFunctionJvp,
    dropout_module._DropoutFunction,
    dropout_module._DropoutFunctionJvp,
    SyncBatchNormFunction,
]


def _refuse_apply(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: Any) -> None:
        raise AssertionError("Function.apply called with nothing to record")

    for cls in FUNCTIONS:
        monkeypatch.setattr(cls, "apply", refuse)


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize(
    "shape,fmt",
    [((8, 6), None), ((4, 6, 5, 5), None), ((4, 6, 5, 5), torch.channels_last)],
    ids=["2d", "nchw", "channels_last"],
)
def test_batchnorm_without_grad_skips_apply_with_the_same_result(
    shape: tuple, fmt: Any, training: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    x = torch.randn(shape) * 3 + 1
    if fmt is not None:
        x = x.contiguous(memory_format=fmt)
    layer = (BatchNorm1d if len(shape) == 2 else BatchNorm2d)(shape[1])
    with torch.no_grad():
        layer.weight.uniform_(0.5, 2)
        layer.bias.uniform_(-1, 1)
        layer.running_mean.uniform_(-1, 1)
        layer.running_var.uniform_(0.5, 2)
    twin = (BatchNorm1d if len(shape) == 2 else BatchNorm2d)(shape[1])
    twin.load_state_dict(layer.state_dict())
    layer.train(training)
    twin.train(training)
    with torch.no_grad():  # through apply (called by hand): the reference
        expected = bn_module._BatchNormFunctionJvp.apply(
            x, twin.weight, twin.bias, twin.running_mean, twin.running_var, training, twin.eps
        )[0]
    _refuse_apply(monkeypatch)
    with torch.no_grad():
        y = layer(x)
    assert torch.equal(y, expected)
    assert y.stride() == expected.stride()
    if training:  # the module still updates its running statistics and counter
        assert int(layer.num_batches_tracked) == 1
        assert not torch.equal(layer.running_mean, twin.running_mean)
    # grad mode on, but nothing requires grad: no Function either
    layer.weight.requires_grad_(False)
    layer.bias.requires_grad_(False)
    layer.eval()
    layer(x)


@pytest.mark.parametrize("inplace", [False, True])
def test_dropout_without_grad_skips_apply_with_the_same_result(
    inplace: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    x = torch.randn(64, 32)
    torch.manual_seed(3)
    expected = Dropout(0.3, inplace=inplace)(x.clone().requires_grad_() + 0).detach()
    _refuse_apply(monkeypatch)
    torch.manual_seed(3)
    with torch.no_grad():
        y = Dropout(0.3, inplace=inplace)(x.clone())
    assert torch.equal(y, expected)


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_forward_mode_of_an_input_that_does_not_require_grad(training: bool) -> None:
    """A dual tensor does not require grad: the layers still go through the Function (its
    ``jvp``), as torch's layers give a tangent."""
    torch.manual_seed(0)
    x = torch.randn(6, 4, 3, 3, dtype=torch.float64)
    t = torch.randn_like(x)
    ours, theirs = BatchNorm2d(4).double(), nn.BatchNorm2d(4).double()
    with torch.no_grad():
        ours.running_mean.uniform_(-1, 1)
        ours.running_var.uniform_(0.5, 2)
    theirs.load_state_dict(ours.state_dict())
    for m in (ours, theirs):
        m.train(training)
        m.weight.requires_grad_(False)
        m.bias.requires_grad_(False)
    tangents = []
    for m in (ours, theirs):
        with fwAD.dual_level():
            y = m(fwAD.make_dual(x, t))
            tangents.append(fwAD.unpack_dual(y).tangent)
    assert tangents[0] is not None
    torch.testing.assert_close(tangents[0], tangents[1], rtol=1e-10, atol=1e-12)
    # Dropout: the tangent is the mask times the scale, as its output over its input
    torch.manual_seed(5)
    with fwAD.dual_level():
        y = Dropout(0.5)(fwAD.make_dual(x, torch.ones_like(x)))
        y_primal, y_tangent = fwAD.unpack_dual(y)
    assert y_tangent is not None
    assert torch.equal(y_tangent, y_primal / x)


def test_records_inside_transforms_and_with_grad() -> None:
    x = torch.randn(3, 4)
    assert not records(x, None)
    assert records(x.requires_grad_(), None)
    with torch.no_grad():
        assert not records(x)
    seen: list[bool] = []

    def probe(v: torch.Tensor) -> torch.Tensor:
        seen.append(records(v))
        return v

    torch.func.vmap(probe)(torch.randn(2, 3))
    with fwAD.dual_level():
        assert records(torch.randn(2))  # a dual level is open: any tensor may carry a tangent
    assert seen == [True]


@pytest.mark.parametrize("function", FUNCTIONS, ids=lambda f: f.__name__)
def test_each_function_carries_its_forward_signature(function: type) -> None:
    """``Function.apply`` binds the arguments to ``forward``'s signature on every call; the
    signature set once at class definition is the one the code defines."""
    forward = function.forward
    code = forward.__code__
    sig = forward.__signature__
    assert inspect.signature(forward) is sig
    assert list(sig.parameters) == list(code.co_varnames[: code.co_argcount])
    defaults = forward.__defaults__ or ()
    with_default = [p.default for p in sig.parameters.values() if p.default is not p.empty]
    assert tuple(with_default) == defaults
