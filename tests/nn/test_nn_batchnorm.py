"""BatchNorm: parity with torch.nn.BatchNorm*d and with an independent NumPy float64 reference
written from the book's formulas, gradcheck/gradgradcheck, dtypes, layouts, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from torch_dlbasics.nn import BatchNorm1d, BatchNorm2d, BatchNorm3d, functional
from torch_dlbasics.nn.batchnorm import _BatchNorm

DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
    ),
]
CASES = [  # ours, torch's, input shape
    (BatchNorm1d, nn.BatchNorm1d, (6, 4)),
    (BatchNorm1d, nn.BatchNorm1d, (5, 4, 3)),
    (BatchNorm2d, nn.BatchNorm2d, (4, 3, 5, 5)),
    (BatchNorm3d, nn.BatchNorm3d, (3, 3, 2, 3, 4)),
]
CONFIGS = [
    {},
    {"momentum": None},
    {"affine": False},
    {"track_running_stats": False},
]
TOL = {torch.float64: {"rtol": 1e-10, "atol": 1e-12}, torch.float32: {}}  # {}: torch's defaults


class BookBatchNormalization:
    """The book's BatchNormalization (NumPy, float64), step by step, on (N, D) input.

    ``unbiased=True`` stores the unbiased variance in running_var (torch's convention);
    ``unbiased=False`` is the book's. ``momentum`` is the book's (weight of the old value)."""

    def __init__(self, gamma, beta, momentum, eps, running_mean, running_var, unbiased):
        self.gamma, self.beta, self.momentum, self.eps = gamma, beta, momentum, eps
        self.running_mean, self.running_var, self.unbiased = running_mean, running_var, unbiased

    def forward(self, x, train_flg):
        if train_flg:
            mu = x.mean(axis=0)
            xc = x - mu
            var = np.mean(xc**2, axis=0)
            std = np.sqrt(var + self.eps)
            xn = xc / std
            self.batch_size, self.xc, self.xn, self.std = x.shape[0], xc, xn, std
            run_var = var * x.shape[0] / (x.shape[0] - 1) if self.unbiased else var
            self.running_mean = self.momentum * self.running_mean + (1 - self.momentum) * mu
            self.running_var = self.momentum * self.running_var + (1 - self.momentum) * run_var
        else:
            xc = x - self.running_mean
            xn = xc / np.sqrt(self.running_var + self.eps)
            self.train_flg_std = np.sqrt(self.running_var + self.eps)
            self.xn = xn
        self.train_flg = train_flg
        return self.gamma * xn + self.beta

    def backward(self, dout):
        dbeta = dout.sum(axis=0)
        dgamma = np.sum(self.xn * dout, axis=0)
        dxn = self.gamma * dout
        if not self.train_flg:  # eval: mean and std are constants
            return dxn / self.train_flg_std, dgamma, dbeta
        dxc = dxn / self.std
        dstd = -np.sum((dxn * self.xc) / (self.std * self.std), axis=0)
        dvar = 0.5 * dstd / self.std
        dxc += (2.0 / self.batch_size) * self.xc * dvar
        dmu = np.sum(dxc, axis=0)
        dx = dxc - dmu / self.batch_size
        return dx, dgamma, dbeta


def _channels_to_columns(a: np.ndarray) -> np.ndarray:
    """(N, C, *S) -> (N*prod(S), C): per-channel statistics are the book's per-column ones."""
    return np.moveaxis(a, 1, -1).reshape(-1, a.shape[1])


def _columns_to_channels(a: np.ndarray, shape: tuple) -> np.ndarray:
    return np.moveaxis(a.reshape(shape[0], *shape[2:], shape[1]), -1, 1)


def _pair(ours_cls, theirs_cls, c, device, dtype, **kw):
    ours = ours_cls(c, device=device, dtype=dtype, **kw)
    theirs = theirs_cls(c, device=device, dtype=dtype, **kw)
    if ours.affine:
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            ours.weight.copy_(torch.rand(c, generator=g) + 0.5)
            ours.bias.copy_(torch.randn(c, generator=g))
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def _step(module, x, dy):
    x = x.clone().requires_grad_(True)
    y = module(x)
    y.backward(dy)
    grads = [x.grad] + [p.grad.clone() for p in module.parameters()]
    for p in module.parameters():
        p.grad = None
    return y.detach(), grads


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    "config", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "default"
)
@pytest.mark.parametrize(
    "ours_cls,theirs_cls,shape", CASES, ids=lambda v: getattr(v, "__name__", str(v))
)
def test_parity_with_torch_over_train_steps_then_eval(
    ours_cls, theirs_cls, shape, config, dtype, device
):
    ours, theirs = _pair(ours_cls, theirs_cls, shape[1], device, dtype, **config)
    g = torch.Generator().manual_seed(0)
    for step in range(4):
        if step == 3:
            ours.eval(), theirs.eval()
        x = (torch.randn(shape, generator=g, dtype=dtype) * 2 + 0.5).to(device)
        dy = torch.randn(shape, generator=g, dtype=dtype).to(device)
        y1, g1 = _step(ours, x, dy)
        y2, g2 = _step(theirs, x, dy)
        torch.testing.assert_close(y1, y2, **TOL[dtype])
        for a, b in zip(g1, g2):
            torch.testing.assert_close(a, b, **TOL[dtype])
        for (k1, b1), (k2, b2) in zip(ours.state_dict().items(), theirs.state_dict().items()):
            assert k1 == k2
            torch.testing.assert_close(b1, b2, **TOL[dtype])


@pytest.mark.parametrize("ours_cls,shape", [(BatchNorm1d, (7, 3)), (BatchNorm2d, (4, 3, 2, 3))])
def test_matches_numpy_reference_per_channel(ours_cls, shape):
    """torch's form (per-channel, unbiased running var) against the book's code applied per column."""
    c = shape[1]
    bn = ours_cls(c, momentum=0.1, dtype=torch.float64)
    rng = np.random.default_rng(0)
    gamma, beta = rng.random(c) + 0.5, rng.standard_normal(c)
    with torch.no_grad():
        bn.weight.copy_(torch.from_numpy(gamma))
        bn.bias.copy_(torch.from_numpy(beta))
    ref = BookBatchNormalization(gamma, beta, 0.9, 1e-5, np.zeros(c), np.ones(c), unbiased=True)
    for train in (True, True, False):
        bn.train(train)
        x = rng.standard_normal(shape) * 3 + 1
        dout = rng.standard_normal(shape)
        xt = torch.from_numpy(x).requires_grad_(True)
        y = bn(xt)
        y.backward(torch.from_numpy(dout))
        y_ref = _columns_to_channels(ref.forward(_channels_to_columns(x), train), shape)
        dx_ref, dgamma_ref, dbeta_ref = ref.backward(_channels_to_columns(dout))
        np.testing.assert_allclose(y.detach().numpy(), y_ref, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(
            xt.grad.numpy(), _columns_to_channels(dx_ref, shape), rtol=1e-10, atol=1e-12
        )
        np.testing.assert_allclose(bn.weight.grad.numpy(), dgamma_ref, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(bn.bias.grad.numpy(), dbeta_ref, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(
            bn.running_mean.numpy(), ref.running_mean, rtol=1e-10, atol=1e-12
        )
        np.testing.assert_allclose(bn.running_var.numpy(), ref.running_var, rtol=1e-10, atol=1e-12)
        bn.weight.grad = bn.bias.grad = None


@pytest.mark.parametrize("shape", [(6, 5), (4, 2, 3, 3)])
def test_book_form_matches_book_numpy_class(shape):
    """book=True, eps=1e-6, momentum=0.1 (book's 0.9) == the book's BatchNormalization."""
    d = int(np.prod(shape[1:]))
    cls = BatchNorm1d if len(shape) == 2 else BatchNorm2d
    bn = cls(d, eps=1e-6, momentum=0.1, dtype=torch.float64, book=True)
    assert torch.equal(bn.running_var, torch.zeros(d, dtype=torch.float64))
    rng = np.random.default_rng(1)
    gamma, beta = rng.random(d) + 0.5, rng.standard_normal(d)
    with torch.no_grad():
        bn.weight.copy_(torch.from_numpy(gamma))
        bn.bias.copy_(torch.from_numpy(beta))
    ref = BookBatchNormalization(gamma, beta, 0.9, 10e-7, np.zeros(d), np.zeros(d), unbiased=False)
    for train in (True, True, False):
        bn.train(train)
        x = rng.standard_normal(shape) * 2 - 1
        dout = rng.standard_normal(shape)
        xt = torch.from_numpy(x).requires_grad_(True)
        y = bn(xt)
        y.backward(torch.from_numpy(dout))
        y_ref = ref.forward(x.reshape(shape[0], -1), train).reshape(shape)
        dx_ref, dgamma_ref, dbeta_ref = ref.backward(dout.reshape(shape[0], -1))
        np.testing.assert_allclose(y.detach().numpy(), y_ref, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(xt.grad.numpy(), dx_ref.reshape(shape), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(bn.weight.grad.numpy(), dgamma_ref, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(bn.bias.grad.numpy(), dbeta_ref, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(
            bn.running_mean.numpy(), ref.running_mean, rtol=1e-10, atol=1e-12
        )
        np.testing.assert_allclose(bn.running_var.numpy(), ref.running_var, rtol=1e-10, atol=1e-12)
        bn.weight.grad = bn.bias.grad = None


def test_book_form_conv_equals_batchnorm1d_on_flattened_input():
    x = torch.randn(5, 2, 3, 3, dtype=torch.float64)
    book = BatchNorm2d(18, dtype=torch.float64, book=True)
    flat = BatchNorm1d(18, dtype=torch.float64, book=True)
    torch.testing.assert_close(book(x), flat(x.flatten(1)).view_as(x), rtol=0, atol=0)
    torch.testing.assert_close(book.running_var, flat.running_var, rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("layout", ["2d", "3d", "4d", "channels_last"])
def test_gradcheck_and_gradgradcheck(layout, affine, training, device):
    g = torch.Generator().manual_seed(0)
    shape = {"2d": (5, 3), "3d": (3, 2, 4), "4d": (3, 2, 2, 3), "channels_last": (3, 2, 2, 3)}[
        layout
    ]
    x = torch.randn(shape, generator=g, dtype=torch.float64).to(device)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    c = shape[1]
    w = (torch.rand(c, generator=g, dtype=torch.float64) + 0.5).to(device).requires_grad_(affine)
    b = torch.randn(c, generator=g, dtype=torch.float64).to(device).requires_grad_(affine)
    rm = torch.randn(c, generator=g, dtype=torch.float64).to(device)
    rv = (torch.rand(c, generator=g, dtype=torch.float64) + 0.5).to(device)

    def fn(x, w, b):
        return functional.batch_norm(
            x,
            None if training else rm,
            None if training else rv,
            w if affine else None,
            b if affine else None,
            training=training,
        )

    assert torch.autograd.gradcheck(fn, (x, w, b))
    assert torch.autograd.gradgradcheck(fn, (x, w, b))


def test_double_backward_gradient_penalty_matches_torch():
    x = torch.randn(6, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    ours, theirs = _pair(BatchNorm2d, nn.BatchNorm2d, 3, "cpu", torch.float64)
    out = []
    for m in (ours, theirs):
        (gx,) = torch.autograd.grad((m(x) ** 3).sum(), x, create_graph=True)
        penalty = gx.pow(2).sum()
        out.append(torch.autograd.grad(penalty, [x, m.weight, m.bias]))
    for a, b in zip(*out):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_input_with_float32_statistics(dtype, device):
    if dtype == torch.float16 and device == "cpu" and not _builtin_supports_half_cpu():
        pytest.skip("built-in has no float16 CPU kernel")
    ours, theirs = _pair(BatchNorm2d, nn.BatchNorm2d, 3, device, torch.float32)
    g = torch.Generator().manual_seed(0)
    for _ in range(2):
        x = torch.randn(4, 3, 4, 4, generator=g).to(device=device, dtype=dtype)
        dy = torch.randn(4, 3, 4, 4, generator=g).to(device=device, dtype=dtype)
        y1, g1 = _step(ours, x, dy)
        y2, g2 = _step(theirs, x, dy)
        assert y1.dtype == dtype and g1[0].dtype == dtype and g1[1].dtype == torch.float32
        torch.testing.assert_close(y1, y2)
        for a, b in zip(g1, g2):
            torch.testing.assert_close(a, b)
        assert ours.running_mean.dtype == torch.float32
        torch.testing.assert_close(ours.running_mean, theirs.running_mean)
        torch.testing.assert_close(ours.running_var, theirs.running_var)


def _builtin_supports_half_cpu() -> bool:
    try:
        nn.BatchNorm2d(2)(torch.randn(2, 2, 2, 2, dtype=torch.float16))
        return True
    except RuntimeError:
        return False


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "ours_cls,theirs_cls,fmt,shape",
    [
        (BatchNorm2d, nn.BatchNorm2d, torch.channels_last, (3, 4, 3, 5)),
        (BatchNorm3d, nn.BatchNorm3d, torch.channels_last_3d, (2, 4, 2, 3, 2)),
    ],
)
def test_channels_last_keeps_memory_format(ours_cls, theirs_cls, fmt, shape, device):
    ours, theirs = _pair(ours_cls, theirs_cls, shape[1], device, torch.float64)
    x = torch.randn(shape, dtype=torch.float64, device=device).contiguous(memory_format=fmt)
    dy = torch.randn(shape, dtype=torch.float64, device=device).contiguous(memory_format=fmt)
    for train in (True, False):
        ours.train(train), theirs.train(train)
        y1, g1 = _step(ours, x, dy)
        y2, g2 = _step(theirs, x, dy)
        assert y1.is_contiguous(memory_format=fmt) and g1[0].is_contiguous(memory_format=fmt)
        torch.testing.assert_close(y1, y2, rtol=1e-10, atol=1e-12)
        for a, b in zip(g1, g2):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # a gradient in another layout than the input is fine too
    xg = x.clone().requires_grad_(True)
    ours.train()
    ours(xg).backward(dy.contiguous())
    xr = x.clone().requires_grad_(True)
    theirs.train()
    theirs(xr).backward(dy.contiguous())
    torch.testing.assert_close(xg.grad, xr.grad, rtol=1e-10, atol=1e-12)


def test_non_contiguous_input():
    ours, theirs = _pair(BatchNorm1d, nn.BatchNorm1d, 4, "cpu", torch.float64)
    x = torch.randn(5, 3, 4, dtype=torch.float64).transpose(1, 2)  # (5, 4, 3), strided
    dy = torch.randn(5, 4, 3, dtype=torch.float64)
    y1, g1 = _step(ours, x, dy)
    y2, g2 = _step(theirs, x, dy)
    torch.testing.assert_close(y1, y2, rtol=1e-10, atol=1e-12)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_saved_tensors_no_more_than_builtin():
    def saved(module, x):
        tensors = []
        with torch.autograd.graph.saved_tensors_hooks(
            lambda t: tensors.append(t) or t, lambda t: t
        ):
            module(x)
        return tensors

    x = torch.randn(4, 8, 5, 5, requires_grad=True)
    ours, theirs = _pair(BatchNorm2d, nn.BatchNorm2d, 8, "cpu", torch.float32)
    mine = saved(ours, x)
    nbytes = sum(t.numel() * t.element_size() for t in mine)
    assert nbytes <= sum(t.numel() * t.element_size() for t in saved(theirs, x))
    assert nbytes == x.numel() * 4 + 3 * 8 * 4  # input, weight, mean, invstd
    assert sum(t.numel() == x.numel() for t in mine) == 1  # no normalised copy


def test_empty_batch_behaves_as_builtin():
    ours, theirs = _pair(BatchNorm2d, nn.BatchNorm2d, 3, "cpu", torch.float32)
    x = torch.randn(0, 3, 4, 4)
    dy = torch.randn(0, 3, 4, 4)
    for train in (True, False):
        ours.train(train), theirs.train(train)
        y1, g1 = _step(ours, x, dy)
        y2, g2 = _step(theirs, x, dy)
        assert y1.shape == y2.shape == x.shape
        for a, b in zip(g1, g2):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        for b1, b2 in zip(ours.buffers(), theirs.buffers()):
            torch.testing.assert_close(b1, b2, rtol=0, atol=0)


def test_functional_call_and_state_dict_both_ways():
    bn = BatchNorm2d(3)
    ref = nn.BatchNorm2d(3)
    params = {
        "weight": torch.rand(3, requires_grad=True),
        "bias": torch.randn(3, requires_grad=True),
        "running_mean": torch.zeros(3),
        "running_var": torch.ones(3),
        "num_batches_tracked": torch.tensor(0),
    }
    x = torch.randn(4, 3, 2, 2)
    y = torch.func.functional_call(bn, params, (x,))
    y_ref = torch.func.functional_call(
        ref, {k: v.clone() if not v.requires_grad else v for k, v in params.items()}, (x,)
    )
    torch.testing.assert_close(y, y_ref)
    gw = torch.autograd.grad(y.sum() + (y**2).sum(), params["weight"])[0]
    gw_ref = torch.autograd.grad(y_ref.sum() + (y_ref**2).sum(), params["weight"])[0]
    torch.testing.assert_close(gw, gw_ref)
    assert int(params["num_batches_tracked"]) == 1 and int(bn.num_batches_tracked) == 0
    ref.load_state_dict(BatchNorm2d(3).state_dict())
    bn.load_state_dict(nn.BatchNorm2d(3).state_dict())
    assert list(bn.state_dict()) == list(ref.state_dict())


def test_torch_compile_fullgraph_matches_eager():
    import torch._inductor.config as inductor_config

    from torch_dlbasics.nn import Dropout

    torch._dynamo.reset()
    eager = nn.Sequential(BatchNorm2d(3), nn.ReLU(), Dropout(0.3))
    compiled_model = nn.Sequential(BatchNorm2d(3), nn.ReLU(), Dropout(0.3))
    compiled = torch.compile(compiled_model, fullgraph=True)
    x = torch.randn(4, 3, 5, 5)
    with inductor_config.patch(fallback_random=True):  # the same random numbers as eager
        outs = []
        for model in (eager, compiled):
            xi = x.clone().requires_grad_(True)
            torch.manual_seed(0)
            y = model(xi)
            y.backward(torch.ones_like(y))
            outs.append((y.detach(), xi.grad))
    torch.testing.assert_close(outs[0][0], outs[1][0])
    torch.testing.assert_close(outs[0][1], outs[1][1])
    torch.testing.assert_close(eager[0].running_var, compiled_model[0].running_var)


@pytest.mark.parametrize(
    "cls,bad,msg",
    [
        (BatchNorm1d, (2, 3, 4, 5), "expected 2D or 3D input (got 4D input)"),
        (BatchNorm2d, (2, 3, 4), "expected 4D input (got 3D input)"),
        (BatchNorm3d, (2, 3, 4, 5), "expected 5D input (got 4D input)"),
    ],
)
def test_wrong_rank(cls, bad, msg):
    with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        cls(3)(torch.randn(bad))


def test_one_value_per_channel_in_training():
    msg = r"Expected more than 1 value per channel when training, got input size torch.Size\(\[1, 3, 1, 1\]\)"
    with pytest.raises(ValueError, match=msg):
        BatchNorm2d(3)(torch.randn(1, 3, 1, 1))
    with pytest.raises(ValueError, match=msg.replace(", 1, 1", "")):
        BatchNorm1d(3)(torch.randn(1, 3))
    BatchNorm2d(3).eval()(torch.randn(1, 3, 1, 1))  # fine in eval


def test_channel_mismatch():
    with pytest.raises(RuntimeError, match="running_mean should contain 4 elements not 3"):
        BatchNorm2d(3)(torch.randn(2, 4, 3, 3))
    with pytest.raises(RuntimeError, match="weight should contain 3 elements not 4"):
        BatchNorm2d(4, track_running_stats=False)(torch.randn(2, 3, 3, 3))


def test_eps():
    for eps in (0.0, -1.0):
        with pytest.raises(
            ValueError, match=f"batch_norm eps must be positive during training, but got {eps}"
        ):
            functional.batch_norm(torch.randn(4, 3), None, None, training=True, eps=eps)
    bn = BatchNorm1d(3, eps=0.0)
    with pytest.raises(
        ValueError, match=r"batch_norm eps must be positive during training, but got 0\.0"
    ):
        bn(torch.randn(4, 3))
    assert bn.eval()(torch.randn(4, 3)).shape == (4, 3)  # eps=0 allowed in eval, as torch
    bn = BatchNorm1d(3, eps=-1.0)  # refused where torch refuses it: at forward, not here
    with pytest.raises(ValueError, match=r"batch_norm eps must be positive during training"):
        bn(torch.randn(4, 3))
    with pytest.raises(ValueError, match=r"batch_norm eps must be non-negative, but got -1\.0"):
        bn.eval()(torch.randn(4, 3))
    with pytest.raises(RuntimeError, match="running_mean must be defined in evaluation mode"):
        functional.batch_norm(torch.randn(4, 3), None, None, training=False)


def test_base_class_contract_for_subclasses():
    class Custom(_BatchNorm):
        def _check_input_dim(self, input):
            if input.dim() != 4:
                raise ValueError("4D")

    m = Custom(3, momentum=None)
    assert [n for n, _ in m.named_parameters()] == ["weight", "bias"]
    assert [n for n, _ in m.named_buffers()] == [
        "running_mean",
        "running_var",
        "num_batches_tracked",
    ]
    m(torch.randn(2, 3, 2, 2))
    m.reset_running_stats()
    assert int(m.num_batches_tracked) == 0 and torch.equal(m.running_var, torch.ones(3))


@pytest.mark.parametrize("channels_last", [False, True])
def test_float32_statistics_keep_precision_for_a_large_mean(channels_last: bool) -> None:
    """A channel mean 500 times its spread: ``sum(x**2)/M - mean**2`` loses most digits of the
    variance in float32 (a few % off); two centred passes stay within 4x of torch's own error
    against a float64 reference, for the output, ``dx`` and ``running_var``."""
    torch.manual_seed(0)
    x = torch.randn(16, 8, 10, 10) * 2.0 + 1000.0
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x64 = x.double().requires_grad_()
    ref = torch.nn.functional.batch_norm(x64, None, None, training=True)
    dy = torch.randn_like(x64)
    (ref_dx,) = torch.autograd.grad(ref, x64, dy)
    var64 = x64.detach().var((0, 2, 3))  # unbiased, as running_var takes it
    errors = {}
    for name, bn in (("ours", BatchNorm2d(8)), ("torch", torch.nn.BatchNorm2d(8))):
        xi = x.clone().requires_grad_()
        y = bn(xi)
        y.backward(dy.float())
        batch_var = (bn.running_var.double() - 0.9) / 0.1
        errors[name] = (
            (y.double() - ref).abs().max().item(),
            (xi.grad.double() - ref_dx).abs().max().item(),
            ((batch_var - var64).abs() / var64).max().item(),
        )
    for ours, theirs in zip(errors["ours"], errors["torch"]):
        assert ours <= 4 * theirs + 1e-7, errors


@pytest.mark.parametrize(
    "shape,layout,form",
    [
        ((4, 6, 5, 7), "contiguous", "plane"),  # NCHW: one pass per channel plane
        ((4, 6, 5), "contiguous", "plane"),  # (N, C, L)
        ((4, 6, 5, 7), "transposed", "addcmul"),  # not contiguous: addcmul
        ((4, 6, 5, 7), "channels_last", "addcmul"),  # channel innermost: one addcmul
        ((9, 6), "contiguous", "addcmul"),  # 2D
        ((4, 6, 1, 1), "contiguous", "addcmul"),  # no spatial extent: channel innermost
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_affine_form_per_layout(shape, layout, form, dtype) -> None:
    """``_batch_stats.affine`` (the forward's and ``dx``'s elementwise pass) is ``t * scale +
    shift`` in ``t``'s layout, within rounding of a float64 reference, and each layout takes its
    pinned form bit for bit: a change of form, which moves every float32 result (so the
    committed figures), fails here first. The plane form rounds as ``addcmul`` (both fuse the
    multiply and add), so every layout and ``torch.vmap`` give the same values."""
    from torch_dlbasics.nn import _batch_stats as bs

    torch.manual_seed(0)
    t = torch.randn(shape, dtype=dtype)
    if layout == "channels_last":
        t = t.contiguous(memory_format=torch.channels_last)
    elif layout == "transposed":
        t = t.transpose(2, 3)
    scale = torch.rand(shape[1], dtype=dtype) + 0.5
    shift = torch.randn(shape[1], dtype=dtype)
    inner = bs.channel_innermost(t)
    y = bs.affine(t, scale, shift, inner)
    s, b = bs.broadcastable(scale, t), bs.broadcastable(shift, t)
    assert y.shape == t.shape and y.stride() == t.stride()
    if form == "plane":
        zero, one = torch.zeros_like(scale), torch.ones_like(scale)
        plane = torch.batch_norm(t, scale, shift, zero, one, False, 0.0, 0.0, False)
        assert torch.equal(y, plane)
    assert torch.equal(y, torch.addcmul(b, t, s))
    ref = t.double() * s.double() + b.double()
    tol = 2e-7 if dtype == torch.float32 else 1e-15
    torch.testing.assert_close(y.double(), ref, rtol=tol, atol=tol / 2)
    # Where it records a graph (a double backward): addcmul, the same values.
    t_req = t.detach().requires_grad_()
    with torch.enable_grad():
        y_req = bs.affine(t_req, scale, shift, inner)
    assert y_req.grad_fn is not None and "BatchNorm" not in type(y_req.grad_fn).__name__
    assert torch.equal(y_req.detach(), y)
    # under torch.vmap, a batched shift with an unbatched t (out of place: no in-place write
    # of a batched tensor into an unbatched one)
    shifts = torch.randn(3, shape[1], dtype=dtype)
    ys = torch.vmap(lambda sh: bs.affine(t, scale, sh, inner))(shifts)
    for y_i, sh in zip(ys, shifts):
        torch.testing.assert_close(y_i, bs.affine(t, scale, sh, inner), rtol=0, atol=0)


@pytest.mark.parametrize(
    "shape,fmt",
    [
        ((8, 8, 192, 192), torch.contiguous_format),  # (N, C, S) view, three chunks
        ((8, 8, 192, 192), torch.channels_last),  # (M, C) view
        ((8192, 384), torch.contiguous_format),  # 2D
    ],
)
def test_chunk_scratch_is_bit_equal_to_fresh_chunks(shape, fmt, monkeypatch) -> None:
    """Large batches write their centred chunks into one buffer per call: the statistics and
    ``dout`` sums equal, bit for bit, those made with a fresh chunk per slice; a double backward
    and ``torch.vmap`` over such a batch take the fresh chunks and still agree."""
    from torch_dlbasics.nn import _batch_stats as bs

    torch.manual_seed(0)
    x = (torch.randn(shape) * 3 + 5).contiguous(memory_format=fmt)
    dy = torch.randn(shape).contiguous(memory_format=fmt)
    xv, dyv = (bs.channel_view(t, bs.channel_innermost(x)) for t in (x, dy))
    with torch.no_grad():
        assert len(bs.row_chunks(xv)) >= 3 and bs.chunk_scratch(xv, bs.row_chunks(xv)) is not None
        mean, var = bs.mean_var(xv)
        sums = bs.dout_sums(dyv, xv, mean)
        monkeypatch.setattr(bs, "chunk_scratch", lambda v, chunks: None)
        mean_f, var_f = bs.mean_var(xv)
        sums_f = bs.dout_sums(dyv, xv, mean_f)
    monkeypatch.undo()
    for a, b in zip((mean, var, *sums), (mean_f, var_f, *sums_f)):
        assert torch.equal(a, b)
    # double backward (grad mode on in backward): fresh chunks, same first derivative
    bn = BatchNorm2d(shape[1]) if len(shape) == 4 else BatchNorm1d(shape[1])
    xg = x.clone().requires_grad_()
    (g,) = torch.autograd.grad(bn(xg), xg, dy, create_graph=True)
    xr = x.clone().requires_grad_()
    (g_ref,) = torch.autograd.grad(bn(xr), xr, dy)
    torch.testing.assert_close(g, g_ref)
    (g.square().sum()).backward()
    assert xg.grad is not None and torch.isfinite(xg.grad).all()
    # torch.vmap over two such batches: each equals its own call
    xs = torch.stack([x, x.flip(0)])
    ys = torch.vmap(lambda t: functional.batch_norm(t, None, None, training=True))(xs)
    for y_i, x_i in zip(ys, xs):
        torch.testing.assert_close(y_i, functional.batch_norm(x_i, None, None, training=True))
