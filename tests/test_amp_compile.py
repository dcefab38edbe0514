"""Mixed precision (``torch.autocast`` + ``GradScaler``) through our BatchNorm and optimizers,
against the built-ins under the same autocast; ``torch.compile(fullgraph=True)`` of a model with
our BatchNorm2d and Dropout against eager."""

from __future__ import annotations

import copy
from typing import Any, Callable

import pytest
import torch
from torch import nn

from torch_dlbasics.nn import BatchNorm2d, Dropout
from torch_dlbasics.optim import SGD, AdaGrad, Adam, AdamW, Momentum, Nesterov

AMP_DEVICES = [
    pytest.param("cpu", torch.bfloat16, id="cpu-bfloat16"),
    pytest.param(
        "cuda", torch.float16, id="cuda-float16",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
    ),
]  # fmt: skip

# Ours and the built-in they equal (Momentum, Nesterov: torch's SGD momentum at constant lr;
# Adam, AdamW: eps after bias correction, as torch places it).
OPTIMIZERS: dict[str, tuple[Callable[..., Any], Callable[..., Any]]] = {
    "SGD": (lambda p: SGD(p, lr=0.1), lambda p: torch.optim.SGD(p, lr=0.1)),
    "Momentum": (
        lambda p: Momentum(p, lr=0.1, momentum=0.9),
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
    ),
    "Nesterov": (
        lambda p: Nesterov(p, lr=0.1, momentum=0.9),
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True),
    ),
    "AdaGrad": (
        lambda p: AdaGrad(p, lr=0.1, eps=1e-7),
        lambda p: torch.optim.Adagrad(p, lr=0.1, eps=1e-7),
    ),
    "Adam": (
        lambda p: Adam(p, lr=1e-2, eps=1e-8, eps_after_bias_correction=True),
        lambda p: torch.optim.Adam(p, lr=1e-2, eps=1e-8),
    ),
    "AdamW": (
        lambda p: AdamW(p, lr=1e-2, eps=1e-8, eps_after_bias_correction=True),
        lambda p: torch.optim.AdamW(p, lr=1e-2, eps=1e-8),
    ),
}


def make_net(bn: Any, device: str, dropout: Any = None) -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.Conv2d(1, 4, 3, bias=False), bn(4), nn.ReLU()]  # BN's beta is the bias
    if dropout is not None:
        layers.append(dropout(0.5))
    layers += [nn.Flatten(), nn.Linear(4 * 6 * 6, 3)]
    return nn.Sequential(*layers).to(device)


def grad_scaler(device: str, **kw: Any) -> Any:
    """``torch.amp.GradScaler(device)`` (torch >= 2.3), else the CUDA-only class."""
    if hasattr(torch.amp, "GradScaler"):
        return torch.amp.GradScaler(device, **kw)
    return torch.cuda.amp.GradScaler(**kw)  # pragma: no cover (torch < 2.3, CUDA)


def amp_run(model: nn.Module, opt: Any, device: str, dtype: torch.dtype, steps: int) -> Any:
    """``steps`` of autocast forward, scaled backward, ``scaler.step``; the record of each.
    ``dtype=torch.float64``: the same steps without autocast (the float64 reference)."""
    amp = dtype in (torch.float16, torch.bfloat16)
    scaler = grad_scaler(device, init_scale=2.0**8, enabled=amp)
    gen = torch.Generator().manual_seed(1)
    record = []
    for _ in range(steps):
        x = torch.randn(6, 1, 8, 8, generator=gen).to(device, torch.float32 if amp else dtype)
        y = torch.randint(0, 3, (6,), generator=gen).to(device)
        with torch.autocast(device, dtype=dtype if amp else torch.bfloat16, enabled=amp):
            h = model[1](model[0](x))  # conv (autocast dtype) -> BatchNorm
            out = model[2:](h)
            loss = nn.functional.cross_entropy(out.float(), y)
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)  # unscales the gradients in place, then steps
        scaler.update()
        record.append({
            "bn_out": h.detach(), "loss": loss.detach(), "scale": scaler.get_scale(),
            "grads": [p.grad.clone() for p in model.parameters()],
            "params": [p.detach().clone() for p in model.parameters()],
            "buffers": [b.clone() for b in model.buffers()],
        })  # fmt: skip
    return record


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """``|a - b| / |b|`` in the 2-norm, in float64."""
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.parametrize(("device", "dtype"), AMP_DEVICES)
def test_autocast_batchnorm_matches_builtin(device: str, dtype: torch.dtype) -> None:
    """One autocast + GradScaler step through our BatchNorm2d and through torch's, from the same
    parameters: output, unscaled gradients, updated parameters and running statistics within
    2 eps of the autocast dtype of each other (relative 2-norm; torch's own bfloat16 rtol,
    1.6e-2, is 2 eps), and ours no farther from the float64 step than torch's, give or take."""
    tol = 2 * torch.finfo(dtype).eps
    nets = [make_net(BatchNorm2d, device), make_net(nn.BatchNorm2d, device)]
    ref_net = make_net(nn.BatchNorm2d, device).double()
    ours, builtin, ref = (
        amp_run(net, torch.optim.SGD(net.parameters(), lr=0.1), device, d, steps=1)[0]
        for net, d in ((nets[0], dtype), (nets[1], dtype), (ref_net, torch.float64))
    )
    assert ours["bn_out"].dtype == builtin["bn_out"].dtype == dtype  # the input's dtype
    assert ours["scale"] == builtin["scale"] == 2.0**8  # no overflow: the scale stays
    for name in ("bn_out", "grads", "params", "buffers"):
        a, b, r = ours[name], builtin[name], ref[name]
        for i, (x, y, z) in enumerate(zip(*((t,) if torch.is_tensor(t) else t for t in (a, b, r)))):
            if not x.is_floating_point():  # num_batches_tracked
                assert torch.equal(x, y)
                continue
            assert x.dtype == y.dtype
            assert rel_err(x, y) <= tol, f"{name}[{i}]: ours vs torch {rel_err(x, y):.2e}"
            assert rel_err(x, z) <= rel_err(y, z) + tol, f"{name}[{i}]: farther from float64"


@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
@pytest.mark.parametrize(("device", "dtype"), AMP_DEVICES)
def test_gradscaler_steps_our_optimizers_as_builtins(
    device: str, dtype: torch.dtype, opt_name: str
) -> None:
    """Our optimizer and torch's, each behind its own GradScaler, fed the same scaled gradients
    (computed under autocast through our BatchNorm2d) for 3 steps: the scalers unscale them
    alike and the parameters move alike, to float32 rounding of the two (equivalent) update
    formulas (rtol 1e-5 of the total update)."""
    ours_opt, torch_opt = OPTIMIZERS[opt_name]
    net_a, net_b = make_net(BatchNorm2d, device), make_net(BatchNorm2d, device)
    opt_a, opt_b = ours_opt(net_a.parameters()), torch_opt(net_b.parameters())
    scaler_a, scaler_b = (
        grad_scaler(device, init_scale=2.0**8),
        grad_scaler(device, init_scale=2.0**8),
    )
    start = [p.detach().clone() for p in net_a.parameters()]
    gen = torch.Generator().manual_seed(2)
    for _ in range(3):
        x = torch.randn(6, 1, 8, 8, generator=gen).to(device)
        y = torch.randint(0, 3, (6,), generator=gen).to(device)
        with torch.autocast(device, dtype=dtype):
            loss = nn.functional.cross_entropy(net_a(x).float(), y)
        opt_a.zero_grad()
        scaler_a.scale(loss).backward()
        scaler_b.scale(loss)  # the same scale (no backward: the gradients are copied below)
        for p_a, p_b in zip(net_a.parameters(), net_b.parameters()):
            p_b.grad = p_a.grad.clone()  # the same scaled gradients for torch's optimizer
        scaler_a.step(opt_a)
        scaler_b.step(opt_b)
        scaler_a.update()
        scaler_b.update()
        assert scaler_a.get_scale() == scaler_b.get_scale() == 2.0**8
        for p_a, p_b, p0 in zip(net_a.parameters(), net_b.parameters(), start):
            assert torch.equal(p_a.grad, p_b.grad)  # unscaled in place, alike
            d_a, d_b = p_a.detach() - p0, p_b.detach() - p0  # the total updates so far
            torch.testing.assert_close(d_a, d_b, rtol=1e-5, atol=1e-5 * float(d_b.abs().max()))
    assert all(not torch.equal(p.detach(), p0) for p, p0 in zip(net_a.parameters(), start))


@pytest.mark.parametrize(("device", "dtype"), AMP_DEVICES)
def test_gradscaler_skips_our_optimizer_step_on_inf(device: str, dtype: torch.dtype) -> None:
    net = make_net(BatchNorm2d, device)
    opt = Momentum(net.parameters(), lr=0.1)
    scaler = grad_scaler(device, init_scale=2.0**8)
    before = [p.detach().clone() for p in net.parameters()]
    with torch.autocast(device, dtype=dtype):
        loss = net(torch.randn(4, 1, 8, 8, device=device)).float().square().mean()
    scaler.scale(loss).backward()
    net[0].weight.grad[0, 0, 0, 0] = float("inf")  # an overflow in the scaled gradients
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() == 2.0**7  # halved (backoff 0.5)
    assert len(opt.state) == 0  # our step never ran: no velocity created
    for p, b in zip(net.parameters(), before):
        assert torch.equal(p, b)


def step_record(net: nn.Module, x: torch.Tensor, out: torch.Tensor, w: torch.Tensor) -> Any:
    (out * w).sum().backward()
    return {
        "out": out.detach(), "dx": x.grad,
        "grads": [p.grad for p in net.parameters()],
        "buffers": [b.clone() for b in net.buffers()],
    }  # fmt: skip


def test_compile_fullgraph_same_seed_same_dropout_as_eager() -> None:
    """``torch.compile(fullgraph=True)`` (the ``aot_eager`` backend: dynamo's capture and
    AOTAutograd over our Functions, eager kernels): with the same seed the dropout mask, the
    output, the input and parameter gradients and the running statistics equal eager's."""
    eager = make_net(BatchNorm2d, "cpu", dropout=Dropout).double()
    compiled_net = copy.deepcopy(eager)
    compiled = torch.compile(compiled_net, fullgraph=True, backend="aot_eager")
    x = torch.randn(6, 1, 8, 8, dtype=torch.float64)
    w = torch.randn(6, 3, dtype=torch.float64)
    records = []
    for net, fn in ((eager, eager), (compiled_net, compiled)):
        xi = x.clone().requires_grad_()
        torch.manual_seed(123)
        records.append(step_record(net, xi, fn(xi), w))
    e, c = records
    torch.manual_seed(124)  # another mask gives another output: equal outputs mean equal masks
    assert not torch.allclose(copy.deepcopy(eager)(x), e["out"])
    for name in ("out", "dx", "grads", "buffers"):
        torch.testing.assert_close(c[name], e[name], rtol=1e-10, atol=1e-12)


@pytest.mark.slow
def test_compile_fullgraph_inductor_batchnorm_dropout_matches_eager() -> None:
    """The default backend (inductor generates the kernels), training mode, Dropout last. Its
    random numbers need not be eager's (its own Philox stream, or eager's generator through
    another algorithm, depending on the torch version), so the eager side applies the mask the
    compiled model drew (read off its output: zero where dropped, ``2 h`` where kept)."""
    eager = make_net(BatchNorm2d, "cpu").double()[:3]  # conv -> BatchNorm2d -> ReLU
    compiled_net = nn.Sequential(*copy.deepcopy(eager), Dropout(0.5))
    compiled = torch.compile(compiled_net, fullgraph=True)
    x = torch.randn(6, 1, 8, 8, dtype=torch.float64)
    w = torch.randn(6, 4, 6, 6, dtype=torch.float64)
    xc = x.clone().requires_grad_()
    c = step_record(compiled_net, xc, compiled(xc), w)
    xe = x.clone().requires_grad_()
    h = eager(xe)
    keep = c["out"] != 0
    assert 0.2 < keep[h > 0].double().mean() < 0.8  # a dropout mask, not all or nothing
    e = step_record(eager, xe, h * keep / 0.5, w)  # eager with the compiled model's mask
    for name in ("out", "dx", "grads", "buffers"):
        torch.testing.assert_close(c[name], e[name], rtol=1e-10, atol=1e-12)


def test_compile_dynamic_batch_size_matches_eager() -> None:
    """``torch.compile(dynamic=True, fullgraph=True)``: two batch sizes through one compiled
    graph give eager's output and input gradient (torch 2.11's dynamo used to fail here on a
    Python loop over the symbolic batch size inside our Function)."""
    eager = make_net(BatchNorm2d, "cpu").double()
    compiled = torch.compile(
        copy.deepcopy(eager), fullgraph=True, dynamic=True, backend="aot_eager"
    )
    for n in (6, 7):
        x = torch.randn(n, 1, 8, 8, dtype=torch.float64)
        results = []
        for fn in (eager, compiled):
            xi = x.clone().requires_grad_()
            out = fn(xi)
            (dx,) = torch.autograd.grad(out.square().sum(), xi)
            results.append((out.detach(), dx))
        for e, c in zip(*results):
            torch.testing.assert_close(c, e, rtol=1e-10, atol=1e-12)
