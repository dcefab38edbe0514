"""The rules a hostile user checks, for BatchNorm, SyncBatchNorm and Dropout: a refused input
changes nothing, bad input gets torch's words, never a silent wrong answer (issue 12, items 2,
3, 4, 6, 8, 11); statistics as robust as the input's dtype allows."""

from __future__ import annotations

import copy
import math
from typing import Any, Callable

import pytest
import torch
from torch import nn

from torch_dlbasics.nn import BatchNorm1d, BatchNorm2d, BatchNorm3d, Dropout, SyncBatchNorm
from torch_dlbasics.nn import functional as F
from torch_dlbasics.nn.dropout import _keep_probability, _mask_bits

ONE_VALUE = "Expected more than 1 value per channel when training"


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_unchanged(module: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = module.state_dict()
    assert after.keys() == before.keys()
    for k, v in before.items():
        assert torch.equal(after[k], v), f"{k} moved: {before[k]} -> {after[k]}"


def refused_inputs() -> list[Any]:
    """(name, module factory, bad call, error type, message): every refusal a training step of
    our BatchNorm layers can meet."""
    vmap = torch.vmap
    cases: list[Any] = [
        ("1d-one-value", lambda: BatchNorm1d(3), lambda m: m(torch.randn(1, 3)), ValueError, ONE_VALUE),
        ("2d-one-value", lambda: BatchNorm2d(3), lambda m: m(torch.randn(1, 3, 1, 1)), ValueError, ONE_VALUE),
        ("book-2d-one-sample", lambda: BatchNorm2d(18, book=True), lambda m: m(torch.randn(1, 2, 3, 3)), ValueError, ONE_VALUE),
        ("book-1d-3d-one-sample", lambda: BatchNorm1d(12, book=True), lambda m: m(torch.randn(1, 3, 4)), ValueError, ONE_VALUE),
        ("book-3d-one-sample", lambda: BatchNorm3d(16, book=True), lambda m: m(torch.randn(1, 2, 2, 2, 2)), ValueError, ONE_VALUE),
        ("wrong-rank", lambda: BatchNorm2d(3), lambda m: m(torch.randn(2, 3, 4)), ValueError, "expected 4D input"),
        ("channels", lambda: BatchNorm2d(3), lambda m: m(torch.randn(2, 4, 3, 3)), RuntimeError, "running_mean should contain 4 elements not 3"),
        ("eps-zero", lambda: BatchNorm1d(3, eps=0.0), lambda m: m(torch.randn(4, 3)), ValueError, "eps must be positive"),
        ("eps-negative", lambda: BatchNorm1d(3, eps=-1.0), lambda m: m(torch.randn(4, 3)), ValueError, "eps must be positive"),
        ("integer", lambda: BatchNorm1d(3), lambda m: m(torch.ones(4, 3, dtype=torch.long)), NotImplementedError, "\"batch_norm\" not implemented for 'Long'"),
        ("cumulative-integer", lambda: BatchNorm1d(3, momentum=None), lambda m: m(torch.ones(4, 3, dtype=torch.int32)), NotImplementedError, "not implemented for 'Int'"),
        ("vmap-running-stats", lambda: BatchNorm1d(3), lambda m: vmap(m)(torch.randn(2, 4, 3)), RuntimeError, "Batch norm got a batched tensor"),
        ("jacrev-running-stats", lambda: BatchNorm1d(3), lambda m: torch.func.jacrev(m)(torch.randn(4, 3)), RuntimeError, ""),
        ("sync-rank", lambda: SyncBatchNorm(3), lambda m: m(torch.randn(3)), ValueError, "expected at least 2D input"),
        ("sync-one-value", lambda: SyncBatchNorm(3), lambda m: m(torch.randn(1, 3)), ValueError, ONE_VALUE),
        ("sync-zero-channels", lambda: SyncBatchNorm(0), lambda m: m(torch.randn(2, 0)), ValueError, "number of input channels should be non-zero"),
        ("sync-channels", lambda: SyncBatchNorm(3), lambda m: m(torch.randn(2, 4)), RuntimeError, "running_mean should contain 4 elements not 3"),
    ]  # fmt: skip
    return [pytest.param(*c[1:], id=c[0]) for c in cases]


@pytest.mark.parametrize(("make", "call", "error", "message"), refused_inputs())
def test_a_refused_input_changes_nothing(
    make: Callable[[], nn.Module], call: Callable[[nn.Module], Any], error: type, message: str
) -> None:
    """Every check happens before ``num_batches_tracked`` or a running statistic moves (torch
    itself counts the refused batch: ``nn.BatchNorm1d(3)(torch.randn(1, 3))`` leaves 1)."""
    module = make()
    with torch.no_grad():
        for b in module.buffers():
            if b.is_floating_point():
                b.add_(0.25)  # a state that a wrong write (a zero, a reset) would disturb
    before = snapshot(module)
    with pytest.raises(error, match=message):
        call(module)
    assert_unchanged(module, before)


def test_torch_counts_a_refused_batch_and_we_do_not() -> None:
    theirs, ours = nn.BatchNorm1d(3), BatchNorm1d(3)
    for m in (theirs, ours):
        with pytest.raises(ValueError, match=ONE_VALUE):
            m(torch.randn(1, 3))
    assert int(theirs.num_batches_tracked) == 1  # torch's flaw, which we promise better than
    assert int(ours.num_batches_tracked) == 0


@pytest.mark.parametrize(
    ("cls", "flat", "x_shape"),
    [(BatchNorm2d, 18, (1, 2, 3, 3)), (BatchNorm1d, 12, (1, 3, 4)), (BatchNorm3d, 16, (1, 2, 2, 2, 2))],
)  # fmt: skip
def test_book_form_refuses_a_batch_of_one_as_its_flattened_batchnorm1d(
    cls: Any, flat: int, x_shape: tuple[int, ...]
) -> None:
    """Per-activation statistics of one sample are the sample itself: the output would be beta
    and running_var driven to 0. BatchNorm1d(C*H*W) on the flattened input refuses, so does
    the book's form on the unflattened one (and the functional form)."""
    x = torch.randn(x_shape)
    with pytest.raises(ValueError, match=ONE_VALUE):
        BatchNorm1d(flat, book=True)(x.flatten(1))
    with pytest.raises(ValueError, match=ONE_VALUE):
        cls(flat, book=True)(x)
    with pytest.raises(ValueError, match=ONE_VALUE):
        F.batch_norm(x, None, None, training=True, book=True)
    cls(flat, book=True).eval()(x)  # fine in eval
    cls(flat, book=True)(torch.randn(2, *x_shape[1:]))  # and with two samples


@pytest.mark.parametrize("training", [True, False])
def test_functional_needs_both_running_statistics_or_neither(training: bool) -> None:
    x = torch.randn(4, 3)
    rm, rv = torch.full((3,), 0.5), torch.full((3,), 2.0)
    for args in ((rm, None), (None, rv)):
        kept = [t.clone() for t in args if t is not None]
        if training:
            error, msg = ValueError, "running_mean and running_var must either both be None"
        else:
            error, msg = RuntimeError, "must be defined in evaluation mode"
        with pytest.raises(error, match=msg):
            F.batch_norm(x, *args, training=training)
        assert all(torch.equal(t, k) for t, k in zip([t for t in args if t is not None], kept))
        clones = [None if t is None else t.clone() for t in args]
        try:  # torch's words (torch 2.4 goes on with one buffer instead, as we used to)
            torch.nn.functional.batch_norm(x, *clones, training=training)
        except (ValueError, RuntimeError) as e:
            assert isinstance(e, error) and msg in str(e)


@pytest.mark.parametrize("dtype", [torch.long, torch.int32, torch.uint8, torch.bool])
@pytest.mark.parametrize("inplace", [False, True])
def test_dropout_refuses_integer_input_in_torchs_words(dtype: torch.dtype, inplace: bool) -> None:
    """Torch refuses what it cannot scale: ``Dropout(0.3)`` of 7 is 10, not 7 (the truncated
    value we used to return). The book's form is refused alike in training (a mask on an
    integer tensor is no dropout torch knows) and in eval (its ``1 - p`` scaling)."""
    x = torch.full((64,), 7).to(dtype)
    original = x.clone()
    with pytest.raises(RuntimeError, match="result type Float can't be cast to the desired") as e:
        Dropout(0.3, inplace=inplace)(x)
    with pytest.raises(RuntimeError) as theirs:
        nn.Dropout(0.3, inplace=inplace)(x)
    assert str(e.value) == str(theirs.value)
    for training in (True, False):
        with pytest.raises(RuntimeError, match="result type Float can't be cast"):
            F.dropout(x, 0.3, training=training, inplace=inplace, inverted=False)
    assert torch.equal(x, original)
    # What torch passes through, so do we: eval, p=0, p=1 (all zeros).
    assert Dropout(0.3).eval()(x) is x and Dropout(0.0)(x) is x
    assert torch.equal(Dropout(1.0)(x.clone()), nn.Dropout(1.0)(x.clone()))


@pytest.mark.parametrize("p", [float("nan"), -1e-9, 1.0 + 1e-9])
def test_dropout_refuses_p_outside_the_unit_interval_nan_included(p: float) -> None:
    with pytest.raises(ValueError, match="dropout probability has to be between 0 and 1"):
        Dropout(p)
    with pytest.raises(ValueError, match="dropout probability has to be between 0 and 1"):
        F.dropout(torch.ones(3), p)


PS = [0.0, 1e-7, 0.1, 0.3, 0.5, 0.9, 0.99, 0.998, 0.999, 0.99999, 1 - 1e-9, 1 - 2**-40, 1 - 2**-53]


@pytest.mark.parametrize("p", PS)
def test_dropout_scale_is_the_inverse_of_the_keep_probability_used(p: float) -> None:
    """E[y] = scale * q * x = x: the scale is 1/q for the q the mask actually has (exactly,
    in float64), and q is 1 - p to 2^-24 relative (2^-12 within 2^-41 of p = 1)."""
    bits = _mask_bits(p)
    q = _keep_probability(p, bits)
    assert q > 0.0
    assert abs(q / (1 - p) - 1) <= (2**-24 if 1 - p >= 2**-41 else 2**-12)
    x = torch.ones(4, dtype=torch.float64)
    torch.manual_seed(0)
    y = F.dropout(x, p)
    kept = y[y != 0]
    torch.testing.assert_close(kept, torch.full_like(kept, 1 / q), rtol=1e-15, atol=0)


def test_dropout_unbiased_near_p_one() -> None:
    """p = 0.99999 over 2^24 elements: the mean output is 1 (today's 16-bit mask gave 1.5)."""
    p, n = 0.99999, 1 << 24
    torch.manual_seed(5)
    y = Dropout(p)(torch.ones(n))
    q = 1 - p
    sigma = math.sqrt((1 - q) / (q * n))  # std of the mean of n values 0 or 1/q
    assert abs(y.double().mean().item() - 1.0) < 6 * sigma
    assert abs((y != 0).double().mean().item() - q) < 6 * math.sqrt(q * (1 - q) / n)


@pytest.mark.parametrize("p", [0.5, 0.99999])
def test_dropout_saves_one_byte_per_element_whatever_the_mask_bits(p: float) -> None:
    saved: list[torch.Tensor] = []
    x = torch.randn(64, 100, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        Dropout(p)(x)
    assert [t.dtype for t in saved] == [torch.bool]
    assert sum(t.numel() * t.element_size() for t in saved) == x.numel()


@pytest.mark.parametrize(
    ("dtype", "value"),
    [(torch.float32, 1e30), (torch.float32, -3e38), (torch.float64, 1e300), (torch.bfloat16, 1e38),
     (torch.float16, 6e4)],
)  # fmt: skip
@pytest.mark.parametrize("channels_last", [False, True])
def test_constant_input_near_the_top_of_the_range_keeps_finite_statistics(
    dtype: torch.dtype, value: float, channels_last: bool
) -> None:
    """A constant channel has mean = its value and variance 0, exactly, wherever the dtype can
    hold it (``sum(x) / M`` overflows float32 near 1e30, and an inexact mean makes
    ``(x - mean)**2`` overflow: running_var was left inf for good, every eval output 0)."""
    x = torch.full((5, 3, 7, 3), value, dtype=dtype)  # M = 105: an inexact sum / M
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    stat = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    bn = BatchNorm2d(3, dtype=stat)
    y = bn(x)
    assert torch.equal(bn.running_var, torch.full((3,), 0.9, dtype=stat))
    v = torch.tensor(value, dtype=dtype).to(stat)
    torch.testing.assert_close(bn.running_mean, (0.1 * v).expand(3), rtol=1e-6, atol=0)
    sync = SyncBatchNorm(3, dtype=stat)  # the same statistics in SyncBatchNorm's local path
    sync(x)
    assert torch.equal(sync.running_var, bn.running_var)
    # The output takes torch's one-pass form x * gamma/std + (beta - mean * gamma/std) (as the
    # built-in does): finite as long as x * gamma/std is (here std = sqrt(eps)).
    if abs(value) / math.sqrt(bn.eps) < torch.finfo(stat).max:
        assert torch.isfinite(y).all() and torch.isfinite(bn.eval()(x)).all()


def test_large_mean_float32_statistics_as_precise_as_its_spread_allows() -> None:
    """Mean 1e6 times the spread: the centred statistics keep the variance to float32 rounding
    of the spread (the mean taken around a pivot loses nothing to the mean's magnitude)."""
    torch.manual_seed(0)
    x = torch.randn(16, 4, 8, 8, dtype=torch.float64) + 1e6
    x32 = x.float()
    bn = BatchNorm2d(4, momentum=1.0)
    bn(x32)
    want = x32.double().var((0, 2, 3))  # the float32 data's own variance, unbiased
    torch.testing.assert_close(bn.running_var.double(), want, rtol=1e-3, atol=0)


def test_vmap_refusal_leaves_a_cumulative_counter_alone() -> None:
    bn = BatchNorm1d(3, momentum=None)
    bn(torch.randn(4, 3))
    before = snapshot(bn)
    with pytest.raises(RuntimeError, match="Batch norm got a batched tensor"):
        torch.vmap(bn)(torch.randn(2, 4, 3))
    assert_unchanged(bn, before)
    clone = copy.deepcopy(bn)
    bn(torch.ones(4, 3)), clone(torch.ones(4, 3))  # and it goes on as if nothing had happened
    assert_unchanged(bn, snapshot(clone))
