"""SyncBatchNorm in one process (no process group): exactly our BatchNorm; conversion; errors."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from torch_dlbasics.nn import BatchNorm1d, BatchNorm2d
from torch_dlbasics.nn.syncbatchnorm import SyncBatchNorm


@pytest.mark.parametrize(
    ("ours_cls", "shape", "kwargs"),
    [
        (BatchNorm2d, (4, 3, 2, 5), {}),
        (BatchNorm1d, (6, 3), {"momentum": None}),
        (BatchNorm1d, (5, 3, 4), {"affine": False}),
        (BatchNorm2d, (4, 3, 2, 2), {"track_running_stats": False}),
    ],
)
def test_without_process_group_it_is_our_batchnorm(
    ours_cls: Any, shape: tuple[int, ...], kwargs: dict[str, Any]
) -> None:
    assert not torch.distributed.is_initialized()
    sync, ours = SyncBatchNorm(3, **kwargs), ours_cls(3, **kwargs)
    torch_bn = getattr(nn, ours_cls.__name__)(3, **kwargs)
    gen = torch.Generator().manual_seed(0)
    for train in (True, True, False):
        x = torch.randn(shape, generator=gen)
        dy = torch.randn(shape, generator=gen)
        outs = []
        for bn in (sync, ours, torch_bn):
            bn.train(train)
            xi = x.clone().requires_grad_()
            out = bn(xi)
            out.backward(dy)
            outs.append((out, xi.grad, dict(bn.named_buffers())))
        (o_s, g_s, b_s), (o_o, g_o, b_o), (o_t, g_t, b_t) = outs
        assert torch.equal(o_s, o_o) and torch.equal(g_s, g_o)  # the same code path
        torch.testing.assert_close(o_s, o_t)  # and torch's numbers (float32 tolerance)
        torch.testing.assert_close(g_s, g_t)
        assert b_s.keys() == b_o.keys() == b_t.keys()
        for k in b_s:
            assert torch.equal(b_s[k], b_o[k]), k
            torch.testing.assert_close(b_s[k], b_t[k])


def test_convert_sync_batchnorm_torch_and_ours() -> None:
    net = nn.Sequential(
        nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2), BatchNorm2d(2),
        nn.Sequential(nn.Flatten(), nn.BatchNorm1d(2 * 9).double(), nn.SyncBatchNorm(18)),
        BatchNorm1d(18, affine=False, track_running_stats=False),
    )  # fmt: skip
    net[3][1].eval()
    before = dict(net.named_parameters()), dict(net.named_buffers())
    converted = SyncBatchNorm.convert_sync_batchnorm(net, process_group="pg-sentinel")
    bns = [converted[1], converted[2], converted[3][1], converted[3][2], converted[4]]
    assert all(type(m) is SyncBatchNorm and m.process_group == "pg-sentinel" for m in bns)
    assert type(converted[0]) is nn.Conv2d and type(converted[3][0]) is nn.Flatten
    # The very same tensors: dtype, device, values and optimizer references carry over.
    for name, p in converted.named_parameters():
        assert p is before[0][name], name
    for name, b in converted.named_buffers():
        assert b is before[1][name], name
    assert converted[3][1].weight.dtype == torch.float64 and not converted[3][1].training
    assert converted[4].running_mean is None and converted[4].weight is None
    assert converted[1].momentum == 0.1 and converted[1].eps == 1e-5
    # state_dict keys are torch's: a SyncBatchNorm loads into torch's BatchNorm and back.
    ref = nn.BatchNorm2d(2)
    ref.load_state_dict(converted[1].state_dict())
    SyncBatchNorm(2).load_state_dict(ref.state_dict())


def test_convert_refuses_the_books_per_activation_batchnorm() -> None:
    with pytest.raises(ValueError, match="book=True"):
        SyncBatchNorm.convert_sync_batchnorm(nn.Sequential(BatchNorm1d(4, book=True)))


def test_errors_in_torchs_words() -> None:
    with pytest.raises(ValueError, match=r"^expected at least 2D input \(got 1D input\)$"):
        SyncBatchNorm(3)(torch.randn(3))
    with pytest.raises(
        ValueError, match=r"^SyncBatchNorm number of input channels should be non-zero$"
    ):
        SyncBatchNorm(0)(torch.randn(2, 0))
    with pytest.raises(ValueError, match=r"^Expected more than 1 value per channel when training"):
        SyncBatchNorm(3)(torch.randn(1, 3))
    with pytest.raises(RuntimeError, match=r"^running_mean should contain 4 elements not 3$"):
        SyncBatchNorm(3)(torch.randn(2, 4))
