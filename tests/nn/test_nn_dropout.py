"""Dropout: torch.nn.Dropout's semantics, the book's variant, the mask and its RNG."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from torch_dlbasics.nn import Dropout, functional
from torch_dlbasics.nn.dropout import _drop_threshold, _DropoutFunction

DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
    ),
]
# Statistical checks use 6 standard deviations: two-sided normal tail 2.0e-9 per check, so the
# false-failure rate of the whole file (< 20 such checks) is below 1e-7 for any seed.
Z = 6.0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_rate_and_mean_preserved(p, device):
    n = 1 << 20
    torch.manual_seed(1234)
    x = torch.ones(n, device=device)
    y = Dropout(p)(x)
    keep = 1 - p
    sigma = math.sqrt(keep * (1 - keep) / n)
    kept = (y != 0).double().mean().item()
    assert abs(kept - keep) < Z * sigma
    assert abs(y.double().mean().item() - 1.0) < Z * sigma / keep  # E[y] = x
    torch.testing.assert_close(y[y != 0], torch.full_like(y[y != 0], 1 / keep))


@pytest.mark.parametrize("p", [0.0, 1e-6, 0.1, 1 / 3, 0.5, 0.75, 0.999])
def test_mask_resolution_is_2_to_minus_16(p):
    """Over all 2^16 values of the bits, the kept fraction is 1 - round(p * 2^16) / 2^16 (the
    threshold rule at 16 bits, where it can be checked exhaustively; for p not a multiple of
    2^-16 masks use 32 or 64)."""
    bits = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16)
    kept = int((bits >= _drop_threshold(p, 16)).sum())
    assert kept == 2**16 - round(p * 2**16)
    assert abs(kept / 2**16 - (1 - p)) <= 2**-17


@pytest.mark.parametrize("device", DEVICES)
def test_eval_identity_p0_identity_p1_zeros(device):
    x = torch.randn(3, 4, device=device, requires_grad=True)
    assert Dropout(0.5).eval()(x) is x
    assert functional.dropout(x, 0.0) is x
    assert nn.Dropout(0.0)(x).equal(x)  # the built-in: identity too
    y = Dropout(1.0)(x * 1e30)
    assert torch.equal(y, torch.zeros_like(x)) and not y.isnan().any()
    torch.testing.assert_close(y, nn.Dropout(1.0)(x * 1e30))
    (g,) = torch.autograd.grad(y.sum(), x)
    assert torch.equal(g, torch.zeros_like(x))


@pytest.mark.parametrize("device", DEVICES)
def test_backward_is_dout_times_mask_times_scale(device):
    torch.manual_seed(0)
    x = torch.randn(50, 40, device=device, requires_grad=True)
    y = Dropout(0.3)(x)
    keep = y != 0
    torch.testing.assert_close(y, x.detach() * keep / 0.7)
    dout = torch.randn_like(y)
    y.backward(dout)
    torch.testing.assert_close(x.grad, dout * keep / 0.7)


def test_gradcheck_with_mask_fixed():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 5, dtype=torch.float64, generator=g, requires_grad=True)
    keep = torch.rand(4, 5, generator=g) > 0.4

    def fn(x):
        return _DropoutFunction.apply(x, keep, 1 / 0.6, False)

    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


def test_mask_saved_as_bool_one_byte_per_element():
    saved = []
    x = torch.randn(64, 100, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        Dropout(0.5)(x)
    assert [t.dtype for t in saved] == [torch.bool]
    assert sum(t.numel() * t.element_size() for t in saved) == x.numel()


def test_determinism_under_seed():
    x = torch.randn(1000)
    torch.manual_seed(7)
    a = Dropout(0.5)(x)
    torch.manual_seed(7)
    b = Dropout(0.5)(x)
    c = Dropout(0.5)(x)  # generator advanced: a different mask
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_checkpoint_recomputation_reproduces_mask():
    lin = nn.Linear(16, 16).double()
    drop = Dropout(0.5)
    x = torch.randn(8, 16, dtype=torch.float64, requires_grad=True)

    def block(x):
        return drop(lin(x)).tanh()

    torch.manual_seed(3)
    y_ref = block(x)
    g_ref = torch.autograd.grad(y_ref.sum(), [x, lin.weight])
    torch.manual_seed(3)
    y = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
    g = torch.autograd.grad(y.sum(), [x, lin.weight])
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_book_variant_train_and_eval():
    p = 0.25
    torch.manual_seed(0)
    x = torch.rand(1 << 16) + 1.0  # no zeros
    drop = Dropout(p, inverted=False)
    y = drop(x)
    kept = y != 0
    torch.testing.assert_close(y[kept], x[kept], rtol=0, atol=0)  # no scaling in training
    sigma = math.sqrt(p * (1 - p) / x.numel())
    assert abs(kept.double().mean().item() - (1 - p)) < Z * sigma
    torch.testing.assert_close(drop.eval()(x), x * (1 - p), rtol=0, atol=0)  # scaled at test time
    assert "inverted=False" in repr(drop)


def test_inplace_and_channels_last():
    torch.manual_seed(0)
    base = torch.randn(2, 3, 4, 5, requires_grad=True)
    h = base * 1.0
    out = Dropout(0.5, inplace=True)(h)
    assert out is h
    out.sum().backward()
    torch.testing.assert_close(base.grad, (out != 0).float() * 2.0)
    x = torch.randn(2, 3, 4, 5).contiguous(memory_format=torch.channels_last)
    y = Dropout(0.5)(x)
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, x * (y != 0) * 2.0)


def test_invalid_p_message():
    for p in (-0.1, 1.5):
        with pytest.raises(
            ValueError, match=f"dropout probability has to be between 0 and 1, but got {p}"
        ):
            Dropout(p)
        with pytest.raises(
            ValueError, match=f"dropout probability has to be between 0 and 1, but got {p}"
        ):
            functional.dropout(torch.ones(2), p)
