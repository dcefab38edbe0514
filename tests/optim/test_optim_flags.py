"""torch's signatures and flags: every argument of torch's SGD/Adagrad/Adam/AdamW accepted with
its meaning; ``fused`` (inductor), ``capturable``, ``differentiable``; tensor ``lr``/``betas``;
the errors torch raises, in its words; FSDP2's DTensor parameters on both paths; the per-tensor
and multi-tensor paths bit-identical in every dtype."""

from __future__ import annotations

import inspect
import re
import socket
from typing import Any, Callable, ClassVar

import pytest
import torch
from optim_cases import assert_same_snapshot, grad_sequence, make_params, set_grads, snapshot

import torch_dlbasics.optim._step as engine
from torch_dlbasics.optim import SGD, AdaGrad, Adagrad, Adam, AdamW, Momentum, Nesterov, _fused

ALL = [SGD, Momentum, Nesterov, AdaGrad, Adam, AdamW]
TWIN = {
    SGD: torch.optim.SGD,
    Momentum: torch.optim.SGD,
    Nesterov: torch.optim.SGD,
    AdaGrad: torch.optim.Adagrad,
    Adam: torch.optim.Adam,
    AdamW: torch.optim.AdamW,
}
KW: dict[type, dict[str, Any]] = {  # a configuration where ours equals torch's exactly
    SGD: {"lr": 0.1, "momentum": 0.9, "dampening": 0.2, "weight_decay": 0.1},
    Momentum: {"lr": 0.1, "momentum": 0.8, "weight_decay": 0.1, "maximize": True},
    Nesterov: {"lr": 0.1, "momentum": 0.8, "nesterov": True, "weight_decay": 0.1},
    AdaGrad: {"lr": 0.1, "lr_decay": 0.1, "weight_decay": 0.1, "eps": 1e-3},
    Adam: {"lr": 0.01, "amsgrad": True, "weight_decay": 0.1, "eps": 1e-3},
    AdamW: {"lr": 0.01, "weight_decay": 0.1, "eps": 1e-3},
}


def ours(cls: type, params: Any, **kw: Any) -> torch.optim.Optimizer:
    if cls in (Adam, AdamW):
        kw.setdefault("eps_after_bias_correction", True)
    return cls(params, **kw)


def _steps(opt: torch.optim.Optimizer, params: list[torch.Tensor], n: int = 4, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(n):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device)
        opt.step()


@pytest.fixture
def kept(monkeypatch) -> dict:
    """fused=True with an empty store of kept graphs (so compiles can be counted) and the eager
    backend (dynamo's graph run op by op, without inductor's compile time)."""
    import torch._dynamo

    torch._dynamo.reset()  # (a graph is kept when it compiles: none may be cached already)
    graphs: dict = {}
    monkeypatch.setattr(_fused, "BACKEND", "eager")
    monkeypatch.setattr(_fused, "_GRAPHS", graphs)
    return graphs


# --------------------------------------------------------------------------------------------
# Signatures: torch's order, torch's keyword-only flags, ours keyword-only at the end.
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", ALL)
def test_signature_is_a_superset_of_torchs(cls: type) -> None:
    mine = list(inspect.signature(cls.__init__).parameters.values())[1:]
    theirs = list(inspect.signature(TWIN[cls].__init__).parameters.values())[1:]
    if cls is not AdamW and TWIN[cls] is torch.optim.AdamW:  # pragma: no cover
        raise AssertionError
    positional = [p.name for p in theirs if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert [p.name for p in mine if p.kind is p.POSITIONAL_OR_KEYWORD] == positional
    mine_kw = {p.name for p in mine if p.kind is p.KEYWORD_ONLY}
    theirs_kw = {p.name for p in theirs if p.kind is p.KEYWORD_ONLY}
    if cls is Adam:  # torch < 2.6 has no decoupled_weight_decay: ours is keyword-only as 2.14's
        theirs_kw |= {"decoupled_weight_decay"}
    assert theirs_kw <= mine_kw
    assert mine_kw - theirs_kw <= {"eps_after_bias_correction"}  # the book-only flag, last
    assert mine[-1].name in theirs_kw | {"eps_after_bias_correction"}


def test_adagrad_positional_arguments_mean_torchs() -> None:
    """Issue 11: ``AdaGrad(p, 0.01, 1e-7)`` set eps here and lr_decay in torch."""
    w = torch.nn.Parameter(torch.ones(2))
    ours_opt, theirs = AdaGrad([w], 0.01, 0.5), torch.optim.Adagrad([w], 0.01, 0.5)
    assert ours_opt.param_groups[0]["lr_decay"] == theirs.param_groups[0]["lr_decay"] == 0.5
    assert Adagrad is AdaGrad


@pytest.mark.parametrize("cls", ALL)
def test_every_torch_argument_is_accepted_with_torchs_meaning(cls: type) -> None:
    """Each optimizer built with every argument torch's takes (non-default where the maths
    allows) steps exactly as torch's does with the same arguments."""
    kw = dict(KW[cls])
    flags = {"maximize": True, "foreach": False, "differentiable": False, "fused": None}
    if cls in (Adam, AdamW):
        flags["capturable"] = False
    kw.update({k: v for k, v in flags.items() if k not in kw})
    p1, p2 = make_params(), make_params()
    o1, o2 = ours(cls, p1, **kw), TWIN[cls](p2, **kw)
    _steps(o1, p1)
    _steps(o2, p2)
    for a, b in zip(p1, p2):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


# --------------------------------------------------------------------------------------------
# Errors in torch's words, raised before anything is built.
# --------------------------------------------------------------------------------------------
ERRORS = [
    (SGD, {"lr": torch.tensor([0.1, 0.2])}, ValueError, "Tensor lr must be 1-element"),
    (AdaGrad, {"lr": torch.tensor([0.1, 0.2])}, ValueError, "Tensor lr must be 1-element"),
    (Adam, {"lr": torch.tensor([0.1, 0.2])}, ValueError, "Tensor lr must be 1-element"),
    (AdaGrad, {"lr_decay": -0.5}, ValueError, "Invalid lr_decay value: -0.5"),
    (
        AdaGrad,
        {"initial_accumulator_value": -1.0},
        ValueError,
        "Invalid initial_accumulator_value value: -1.0",
    ),
    (SGD, {"nesterov": True}, ValueError, "Nesterov momentum requires a momentum and zero dampening"),
    (
        SGD,
        {"nesterov": True, "momentum": 0.9, "dampening": 0.1},
        ValueError,
        "Nesterov momentum requires a momentum and zero dampening",
    ),
    (
        Adam,
        {"lr": torch.tensor(0.01), "foreach": True},
        ValueError,
        "lr as a Tensor is not supported for capturable=False and foreach=True",
    ),
    (Adam, {"betas": (0.9, torch.tensor(0.99))}, ValueError, "betas must be either both floats or both Tensors"),
    (Adam, {"betas": (torch.tensor(0.9), 0.99)}, ValueError, "betas must be either both floats or both Tensors"),
    (
        Adam,
        {"betas": (torch.tensor(0.9), torch.tensor(0.99)), "foreach": True},
        ValueError,
        r"betas\[0\] as a Tensor is not supported for capturable=False and foreach=True",
    ),
    (SGD, {"fused": True, "foreach": True}, RuntimeError, "`fused` and `foreach` cannot be `True` together"),
    (AdaGrad, {"fused": True, "differentiable": True}, RuntimeError, "`fused` does not support `differentiable`"),
    (Adam, {"fused": True, "differentiable": True}, RuntimeError, "`fused` does not support `differentiable`"),
    (AdamW, {"fused": True, "foreach": True}, RuntimeError, "`fused` and `foreach` cannot be `True` together"),
]  # fmt: skip


TORCH_VERSION = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2])


@pytest.mark.parametrize(("cls", "kwargs", "error", "message"), ERRORS)
def test_refused_arguments_raise_torchs_error(cls, kwargs, error, message) -> None:
    w = torch.nn.Parameter(torch.ones(2))
    with pytest.raises(error, match=message):
        cls([w], **kwargs)
    try:
        TWIN[cls]([w], **kwargs)
    except Exception as err:  # torch raises the same (2.14; 2.4 fails otherwise or later)
        same = isinstance(err, error) and re.search(message, str(err))
        assert same or TORCH_VERSION < (2, 14), err
    else:  # older torch (2.4) does not check tensor lr/betas yet; 2.14 does
        assert TORCH_VERSION < (2, 14), f"torch accepted {kwargs}"


def test_multi_element_tensor_beta_gets_the_clear_message() -> None:
    """torch compares ``0 <= beta < 1`` first and fails with 'Boolean value of Tensor with more
    than one value is ambiguous'; we check the size first and say so."""
    w = torch.nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError, match=r"Tensor betas\[0\] must be 1-element"):
        Adam([w], betas=(torch.tensor([0.9, 0.8]), torch.tensor(0.99)))


# --------------------------------------------------------------------------------------------
# Tensor lr and betas: on every path, or refused with torch's words (never half-applied).
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(), (1,)], ids=["0-dim", "1-element"])
@pytest.mark.parametrize("path", ["per-tensor", "foreach", "none", "fused"])
@pytest.mark.parametrize("cls", ALL)
def test_tensor_lr_works_on_every_path_as_a_float_lr(
    cls: type, path: str, shape: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 11: ``Adam([p], lr=torch.tensor(0.01)).step()`` crashed inside step() after the
    step count and moments were applied."""
    monkeypatch.setattr(_fused, "BACKEND", "eager")
    flags = {"per-tensor": {"foreach": False}, "foreach": {"foreach": True}}.get(path, {})
    if path == "fused":
        flags = {"fused": True}
    if path == "foreach" and cls in (Adam, AdamW):
        pytest.skip("torch refuses a tensor lr with foreach=True (capturable=False)")
    kw = dict(KW[cls])
    p1, p2 = make_params(), make_params()
    lr = torch.full(shape, kw.pop("lr"), dtype=torch.float64)
    o1, o2 = ours(cls, p1, lr=lr, **kw, **flags), ours(cls, p2, lr=float(lr), **kw, **flags)
    _steps(o1, p1)
    _steps(o2, p2)
    for a, b in zip(p1, p2):
        assert torch.equal(a, b)


@pytest.mark.parametrize("foreach", [False, None])
@pytest.mark.parametrize("cls", [Adam, AdamW])
def test_tensor_betas_work_as_float_betas(cls: type, foreach: Any) -> None:
    p1, p2 = make_params(), make_params()
    betas = (torch.tensor(0.8, dtype=torch.float64), torch.tensor(0.95, dtype=torch.float64))
    o1 = ours(cls, p1, lr=0.01, betas=betas, foreach=foreach)
    o2 = ours(cls, p2, lr=0.01, betas=(0.8, 0.95), foreach=foreach)
    _steps(o1, p1)
    _steps(o2, p2)
    for a, b in zip(p1, p2):
        assert torch.equal(a, b)


def test_tensor_lr_set_later_with_foreach_is_refused_before_any_write() -> None:
    params = make_params()
    opt = Adam(params, foreach=True)
    _steps(opt, params, 1)
    before, p_before = snapshot(opt), [p.detach().clone() for p in params]
    opt.param_groups[0]["lr"] = torch.tensor(0.01)
    with pytest.raises(RuntimeError, match="lr as a Tensor is not supported"):
        opt.step()
    opt.param_groups[0]["lr"] = 0.001
    assert_same_snapshot(before, snapshot(opt))
    assert all(torch.equal(p, q) for p, q in zip(params, p_before))


# --------------------------------------------------------------------------------------------
# fused=True: the update compiled by inductor.
# --------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cls", ALL)
def test_fused_inductor_matches_per_tensor_and_torch_fused(cls: type, dtype: torch.dtype) -> None:
    """Inductor's fused step of the same update function: equal to the per-tensor path to
    rounding, step counts float32 on the parameter's device (as torch's fused), and equal to
    torch's own ``fused=True`` on the contiguous parameters. (torch's CPU fused kernels pair
    the elements of a transposed parameter with the wrong gradient elements when the gradient
    is contiguous, in torch 2.4 and 2.14: see ``test_torch_fused_cpu_mispairs_...`` below.)"""
    import torch._dynamo

    torch._dynamo.reset()
    kw = KW[cls]
    p1, p2, p3 = (make_params(dtype=dtype) for _ in range(3))
    o1, o2 = ours(cls, p1, fused=True, **kw), ours(cls, p2, foreach=False, **kw)
    o3 = TWIN[cls](p3, fused=True, **kw)
    for o, p in ((o1, p1), (o2, p2), (o3, p3)):
        _steps(o, p, 3)
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-13}
    for a, b, c in zip(p1, p2, p3):
        torch.testing.assert_close(a, b, **tol)
        if a.is_contiguous():
            torch.testing.assert_close(a, c, **tol)
        for key, value in o1.state[a].items():
            torch.testing.assert_close(value, o2.state[b][key].to(value.device), **tol)
            if key == "step":
                assert value.dtype == torch.float32 and value.device == a.device


@pytest.mark.parametrize("torch_cls", [torch.optim.SGD, torch.optim.Adagrad, torch.optim.Adam])
def test_torch_fused_cpu_mispairs_a_transposed_parameter_ours_does_not(torch_cls, monkeypatch):
    """A documented difference: torch's ``fused=True`` on CPU walks a transposed parameter and
    its contiguous gradient in memory order, so it updates each element with another element's
    gradient. Ours (the update compiled by dynamo) matches the per-tensor path."""
    monkeypatch.setattr(_fused, "BACKEND", "eager")
    mine = {torch.optim.SGD: SGD, torch.optim.Adagrad: AdaGrad, torch.optim.Adam: Adam}[torch_cls]
    gen = torch.Generator().manual_seed(0)
    base, grad = torch.randn(6, 4, generator=gen), torch.randn(4, 6, generator=gen)
    a, b, c = (base.clone().t().requires_grad_() for _ in range(3))
    for p in (a, b, c):
        p.grad = grad.clone()  # contiguous, the parameter is not
    torch_cls([a], lr=0.1, fused=True).step()
    torch_cls([b], lr=0.1, foreach=False).step()
    ours(mine, [c], lr=0.1, fused=True).step()
    assert not torch.allclose(a, b)  # torch's fused kernel: elements mispaired
    torch.testing.assert_close(c, b)


def test_fused_does_not_recompile_when_a_scheduler_changes_lr(monkeypatch, kept) -> None:
    """The lr enters the compiled graph as a tensor: a StepLR schedule compiles once (plus once
    when the state appears), the step count likewise."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    monkeypatch.setattr(_fused, "BACKEND", "eager")
    torch._dynamo.reset()
    counters.clear()
    params = make_params()
    opt = Adam(params, lr=0.1, fused=True)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    gen = torch.Generator().manual_seed(0)
    for _ in range(6):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == 0.1 * 0.5**6
    assert counters["stats"]["unique_graphs"] <= 2


def test_fused_past_the_recompile_limit_runs_uncompiled(monkeypatch, kept) -> None:
    import torch._dynamo

    monkeypatch.setattr(_fused, "BACKEND", "eager")
    torch._dynamo.reset()
    params = [torch.randn(n, dtype=torch.float64, requires_grad=True) for n in range(1, 14)]
    twins = [p.detach().clone().requires_grad_() for p in params]
    opt, twin = SGD(params, lr=0.1, fused=True), SGD(twins, lr=0.1, foreach=False)
    with pytest.warns(UserWarning, match="recompile limit"):
        for k in range(len(params)):  # each step a new set of parameters with gradients
            for i, (p, q) in enumerate(zip(params, twins)):
                p.grad = torch.ones_like(p) if i <= k else None
                q.grad = None if p.grad is None else p.grad.clone()
            opt.step()
            twin.step()
    assert all(torch.equal(p, q) for p, q in zip(params, twins))


def _repeated_params(n: int = 7) -> list[torch.Tensor]:
    """``n`` parameters: (2, 3) and (5,) repeating, then a 0-dim, a transposed one last."""
    gen = torch.Generator().manual_seed(4)
    shapes = [(2, 3), (5,)] * ((n - 2) // 2) + [()]
    out = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    out.append(torch.randn(3, 2, generator=gen, dtype=torch.float64).t())
    return [p.requires_grad_() for p in out]


@pytest.mark.parametrize("cls", ALL)
def test_fused_chunks_equal_one_call_and_reuse_one_graph(cls, monkeypatch, kept) -> None:
    """CHUNK parameters per compiled call: every state entry bit-equal to the whole group in
    one call, and equal to the per-tensor path to rounding, with a None gradient on one step.
    Chunks of the same shapes run one graph, and the step that creates the state runs the same
    graph as later steps (where its hyperparameters are the same)."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    monkeypatch.setattr(_fused, "BACKEND", "eager")
    torch._dynamo.reset()
    counters.clear()
    kw = dict(KW[cls])
    kw.pop("dampening", None)  # (dampening != 0: the first step is another graph, as torch's)
    p1, p2, p3 = _repeated_params(8), _repeated_params(8), _repeated_params(8)
    o1, o2 = ours(cls, p1, fused=True, **kw), ours(cls, p2, fused=True, **kw)
    o3 = ours(cls, p3, foreach=False, **kw)
    gen = torch.Generator().manual_seed(5)
    graphs = 0
    for step in range(4):
        for a, b, c in zip(p1, p2, p3):
            a.grad = torch.randn(a.shape, generator=gen, dtype=a.dtype)
            b.grad, c.grad = a.grad.clone(), a.grad.clone()
        if step == 2:
            p1[1].grad = p2[1].grad = p3[1].grad = None  # the chunks shift: other graphs
        before = counters["stats"]["unique_graphs"]
        monkeypatch.setattr(_fused, "CHUNK", 2)
        o1.step()
        graphs += counters["stats"]["unique_graphs"] - before
        monkeypatch.setattr(_fused, "CHUNK", 64)
        o2.step()
        o3.step()
        for a, b, c in zip(p1, p2, p3):
            assert torch.equal(a, b)
            torch.testing.assert_close(a, c, rtol=1e-12, atol=1e-13)
            assert o1.state[a].keys() == o2.state[b].keys() == o3.state[c].keys()
            for key, value in o1.state[a].items():
                assert torch.equal(value, o2.state[b][key]), key
                torch.testing.assert_close(
                    value.to(o3.state[c][key]), o3.state[c][key], rtol=1e-12, atol=1e-13
                )
    # 8 parameters, 4 chunks: [(2,3),(5,)] x3 and [0-dim, transposed], 2 graphs; the step
    # without p1[1]'s gradient, 4 chunks of other shapes ([(2,3),(2,3)], [(5,),(2,3)], ...);
    # the step after it runs the first 2 graphs again. (A graph per chunk and step: 16.)
    assert graphs == 2 + 4, graphs


def test_fused_recompile_limit_counts_every_chunk(monkeypatch, kept) -> None:
    """A step of more distinct chunks than dynamo's recompile limit still compiles them all."""
    import torch._dynamo

    monkeypatch.setattr(_fused, "BACKEND", "eager")
    monkeypatch.setattr(_fused, "CHUNK", 1)
    torch._dynamo.reset()
    params = [torch.randn(n, dtype=torch.float64, requires_grad=True) for n in range(1, 14)]
    twins = [p.detach().clone().requires_grad_() for p in params]
    opt, twin = SGD(params, lr=0.1, fused=True), SGD(twins, lr=0.1, foreach=False)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(2):
            for p, q in zip(params, twins):
                p.grad = torch.ones_like(p)
                q.grad = torch.ones_like(q)
            opt.step()
            twin.step()
    assert all(torch.equal(p, q) for p, q in zip(params, twins))


def _failing_chunk(monkeypatch, fail_at: int) -> list[int]:
    """The compiled call raises (as a compile error would, before the call writes anything)
    at call number ``fail_at``; returns the list of calls made, compiled or not."""
    return _dynamo_calls(monkeypatch, fail_at)


def test_fused_first_chunk_failing_to_compile_raises_and_changes_nothing(monkeypatch, kept) -> None:
    monkeypatch.setattr(_fused, "BACKEND", "eager")
    monkeypatch.setattr(_fused, "CHUNK", 2)
    _failing_chunk(monkeypatch, fail_at=1)
    params = _repeated_params(6)
    opt = Adam(params, fused=True)
    for p in params:
        p.grad = torch.ones_like(p)
    before = [p.detach().clone() for p in params]
    with pytest.raises(RuntimeError, match="C\\+\\+ compile failed"):
        opt.step()
    assert all(torch.equal(p, q) for p, q in zip(params, before))
    assert all(not torch.any(s["exp_avg"]) and s["step"] == 0 for s in opt.state.values())


def test_fused_later_chunk_failing_to_compile_completes_the_step_uncompiled(
    monkeypatch, kept
) -> None:
    """After earlier chunks wrote, a chunk that fails to compile runs the same update
    uncompiled (with a warning): the step is whole, equal to the per-tensor path."""
    monkeypatch.setattr(_fused, "BACKEND", "eager")
    monkeypatch.setattr(_fused, "CHUNK", 2)
    monkeypatch.setattr(_fused, "_WARNED", set())
    calls = _failing_chunk(monkeypatch, fail_at=2)
    p1, p2 = _repeated_params(6), _repeated_params(6)
    o1, o2 = Adam(p1, fused=True), Adam(p2, foreach=False)
    for a, b in zip(p1, p2):
        a.grad = torch.ones_like(a)
        b.grad = torch.ones_like(b)
    with pytest.warns(UserWarning, match="failed to compile after earlier chunks were updated"):
        o1.step()
    o2.step()
    assert calls == [2, 2, 2]
    for a, b in zip(p1, p2):
        assert torch.equal(a, b)
        for key, value in o1.state[a].items():
            assert torch.equal(value.to(o2.state[b][key].device), o2.state[b][key]), key


# Kept graphs: after a chunk compiles, later steps call its graph without dynamo.
def _assert_equal(p1: list, o1: torch.optim.Optimizer, p2: list, o2: torch.optim.Optimizer, **tol):
    """Parameters and every state entry equal (bit-equal without ``tol``)."""
    for a, b in zip(p1, p2):
        torch.testing.assert_close(a, b, **(tol or {"rtol": 0, "atol": 0}))
        assert o1.state[a].keys() == o2.state[b].keys()
        for key, value in o1.state[a].items():
            other = o2.state[b][key].to(value)
            torch.testing.assert_close(value, other, **(tol or {"rtol": 0, "atol": 0}))


def _dynamo_calls(monkeypatch, fail_at: int = 0) -> list[int]:
    """Counts the compiled calls that go through dynamo (each chunk's first, or a changed one);
    call number ``fail_at`` (from 1; 0: none) raises instead, as a compile error would."""
    calls: list[int] = []
    real = _fused._compiled

    def compiled_of(update):
        compiled, plain = real(update)

        def counted(*args):
            calls.append(len(args[0]))
            if len(calls) == fail_at:
                raise RuntimeError("inductor: C++ compile failed")
            return compiled(*args)

        return counted, plain

    monkeypatch.setattr(_fused, "_compiled", compiled_of)
    return calls


@pytest.mark.parametrize("cls", ALL)
def test_fused_kept_graphs_run_without_dynamo_and_equal_the_per_tensor_path(
    cls: type, kept: dict, monkeypatch
) -> None:
    """Steps after the first of each graph skip dynamo and its guards: every state entry
    bit-equal to the same steps through dynamo (the same graph), and equal to the per-tensor
    path to rounding (a tensor learning rate inside the graph), through steps with a None
    gradient (other chunks: through dynamo once, then kept too)."""
    calls = _dynamo_calls(monkeypatch)
    p1, p2, p3 = make_params(), make_params(), make_params()
    o1, o2 = ours(cls, p1, fused=True, **KW[cls]), ours(cls, p2, fused=True, **KW[cls])
    o3 = ours(cls, p3, foreach=False, **KW[cls])
    gen = torch.Generator().manual_seed(3)
    through_dynamo = []
    for step in range(7):
        for i, (a, b, c) in enumerate(zip(p1, p2, p3)):
            g = torch.randn(a.shape, generator=gen, dtype=a.dtype)
            g = None if step in (3, 4) and i == 1 else g
            a.grad, b.grad, c.grad = (None, None, None) if g is None else (g, g.clone(), g.clone())
        before = len(calls)
        o1.step()
        through_dynamo.append(len(calls) - before)
        monkeypatch.setattr(_fused, "_GRAPHS", {})  # o2: through dynamo every step
        o2.step()
        monkeypatch.setattr(_fused, "_GRAPHS", kept)
        o3.step()
        _assert_equal(p1, o1, p2, o2)
        _assert_equal(p1, o1, p3, o3, rtol=1e-12, atol=1e-13)
    # Through dynamo: step 0, step 1 where the first step's arguments differ (SGD's
    # dampening), step 3 (p[1] without a gradient); every other step a kept graph.
    first_differs = cls is SGD
    assert through_dynamo == [1, int(first_differs), 0, 1, 0, 0, 0] and kept


def test_fused_kept_graph_is_not_used_for_other_layouts_or_hyperparameters(
    kept: dict, monkeypatch
) -> None:
    """Gradients of another layout (other strides) and a changed momentum go through dynamo
    (its guards fail, it compiles) and are kept in turn; a kept graph never runs for tensors
    or hyperparameters other than its own."""
    calls = _dynamo_calls(monkeypatch)
    p1, p2 = make_params(), make_params()
    o1, o2 = SGD(p1, lr=0.1, momentum=0.9, fused=True), SGD(p2, lr=0.1, momentum=0.9)

    def step(grads: list[torch.Tensor]) -> int:
        for a, b, g in zip(p1, p2, grads):
            a.grad, b.grad = g.clone(), g.clone()
        before = len(calls)
        o1.step()
        o2.step()
        _assert_equal(p1, o1, p2, o2, rtol=1e-12, atol=1e-13)
        return len(calls) - before

    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in p1]
    assert [step(grads) for _ in range(3)] == [1, 0, 0]
    turned = [g if g.dim() < 2 else g.t().contiguous().t() for g in grads]  # other strides
    assert [step(turned) for _ in range(2)] == [1, 0]
    assert [step(grads) for _ in range(2)] == [0, 0]  # (the first layout's graph is kept)
    for o in (o1, o2):
        o.param_groups[0]["momentum"] = 0.5
    assert [step(grads) for _ in range(2)] == [1, 0]


@pytest.mark.parametrize("kw", [{}, {"momentum": 0.9}], ids=["plain", "momentum"])
def test_fused_kept_graphs_stand_in_for_the_per_parameter_checks(kw: dict, kept, monkeypatch):
    """Once every chunk has a kept graph, a step makes no other check of its tensors (the
    graph's check implies them) and creates nothing; plain SGD, without state, too."""
    p1, p2 = make_params(), make_params()
    o1, o2 = SGD(p1, lr=0.1, fused=True, **kw), SGD(p2, lr=0.1, **kw)
    _steps(o1, p1, 2)
    _steps(o2, p2, 2)

    def no_checks(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("per-parameter checks with kept graphs")

    monkeypatch.setattr(engine, "_check_params", no_checks)
    _steps(o1, p1, 2, seed=7)
    monkeypatch.undo()
    _steps(o2, p2, 2, seed=7)
    _assert_equal(p1, o1, p2, o2, rtol=1e-12, atol=1e-13)


def test_fused_refused_input_after_kept_graphs_changes_nothing(kept: dict) -> None:
    """A state entry of the wrong shape or dtype once graphs are kept: the kept graph's check
    fails, so the checks run and refuse it with the usual error before anything is written."""
    params = make_params()
    opt = Adam(params, lr=0.1, fused=True)
    _steps(opt, params, 3)
    assert kept
    opt.state[params[3]]["exp_avg"] = torch.zeros(9, dtype=params[3].dtype)
    opt.state[params[1]]["exp_avg_sq"] = torch.zeros(4, dtype=torch.float32)
    before, values = snapshot(opt), [p.detach().clone() for p in params]
    with pytest.raises(RuntimeError, match=r"state 'exp_avg_sq' of parameter 1 is torch\.float32"):
        opt.step()
    assert_same_snapshot(snapshot(opt), before)
    assert all(torch.equal(p, v) for p, v in zip(params, values))


def test_fused_without_a_kept_graph_when_a_tensor_is_passed_twice_or_a_mode_is_on(
    kept: dict, monkeypatch
) -> None:
    """Two parameters with one gradient tensor (dynamo passes it once: no kept graph for it):
    through dynamo every step. A torch dispatch mode active (dynamo does not compile under
    one): the same update uncompiled, whose ops the mode sees. The per-tensor path's values."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Seen(TorchDispatchMode):
        ops: ClassVar[list] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(func)
            return func(*args, **(kwargs or {}))

    calls = _dynamo_calls(monkeypatch)
    p1 = [torch.randn(3, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    p2 = [p.detach().clone().requires_grad_() for p in p1]
    o1, o2 = SGD(p1, lr=0.1, fused=True), SGD(p2, lr=0.1)
    shared = torch.ones(3, dtype=torch.float64)
    for _ in range(3):
        for a, b in zip(p1, p2):
            a.grad, b.grad = shared, shared.clone()
        o1.step()
        o2.step()
    assert len(calls) == 3 and not kept and all(torch.equal(a, b) for a, b in zip(p1, p2))
    for a, b in zip(p1, p2):
        a.grad, b.grad = torch.ones(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    o1.step(), o1.step(), o2.step(), o2.step()
    assert kept and len(calls) == 4  # (a new graph, then kept)
    with Seen():
        assert _fused._global_state() is None
        o1.step()
    o2.step()
    assert len(calls) == 4 and Seen.ops
    _assert_equal(p1, o1, p2, o2, rtol=1e-12, atol=1e-13)


def test_fused_kept_graph_runs_inside_a_default_device_context(kept: dict, monkeypatch) -> None:
    """``torch.device(...)`` (or ``set_default_device``) is a torch function mode that only
    places new tensors: kept graphs still run there."""
    calls = _dynamo_calls(monkeypatch)
    params = make_params()
    opt = Adam(params, lr=0.1, fused=True)
    _steps(opt, params, 2)
    with torch.device("cpu"):
        assert _fused._global_state() is not None
        _steps(opt, params, 2)
    assert len(calls) == 1 and kept


def test_fused_learning_rate_tensor_is_one_per_value() -> None:
    assert _fused._lr_tensor(0.1) is _fused._lr_tensor(0.1)
    zero, minus_zero = _fused._lr_tensor(0.0), _fused._lr_tensor(-0.0)
    assert zero is not minus_zero and torch.signbit(minus_zero) and not torch.signbit(zero)
    assert _fused._lr_tensor(0.1).dtype == torch.float64 and _fused._lr_tensor(0.1).dim() == 0


def test_fused_without_a_cpp_compiler_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.setattr(_fused, "_cxx", lambda: None)
    monkeypatch.setattr(_fused, "_AVAILABLE", set())
    params = make_params()
    opt = Adam(params, fused=True)
    set_grads(params, grad_sequence(1)[0])
    with pytest.raises(RuntimeError, match=r"needs a C\+\+ compiler .* use fused=None"):
        opt.step()
    assert not opt.state


def test_fused_refuses_complex_parameters_before_any_write() -> None:
    w = torch.nn.Parameter(torch.ones(2, dtype=torch.complex64))
    w.grad = torch.ones(2, dtype=torch.complex64)
    opt = Adam([w], fused=True)
    with pytest.raises(RuntimeError, match="`fused=True` requires all the params to be floating"):
        opt.step()
    assert not opt.state and torch.equal(w, torch.ones(2, dtype=torch.complex64))


# --------------------------------------------------------------------------------------------
# capturable=True: torch's refusal on CPU; the device-side step counts (no host read).
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [Adam, AdamW])
def test_capturable_on_cpu_is_refused_as_torch_before_any_write(cls: type) -> None:
    params = make_params()
    opt = cls(params, capturable=True)
    set_grads(params, grad_sequence(1)[0])
    before = [p.detach().clone() for p in params]
    with pytest.raises(AssertionError) as ours_err:
        opt.step()
    assert not opt.state and all(torch.equal(p, q) for p, q in zip(params, before))
    theirs = TWIN[cls](make_params(), capturable=True)
    for p in theirs.param_groups[0]["params"]:
        p.grad = torch.ones_like(p)
    with pytest.raises(AssertionError) as torch_err:
        theirs.step()
    assert str(ours_err.value) == str(torch_err.value)


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize(
    "kw",
    [
        {"lr": 0.01, "amsgrad": True, "weight_decay": 0.1, "maximize": True},
        {"lr": torch.tensor(0.01), "betas": (torch.tensor(0.8), torch.tensor(0.99)), "eps": 1e-3},
        {"lr": 0.02, "decoupled_weight_decay": True, "weight_decay": 0.1},
    ],
)
def test_capturable_keeps_step_counts_on_the_device_and_reads_nothing_back(
    kw: dict, foreach: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a CUDA graph capture needs, checked on CPU (made a capturable device here): the
    step counts stay tensors, no ``.item()`` / ``.tolist()`` runs during the step, and the
    result equals the default path's (step sizes in float64 on the device; torch's capturable
    computes them in float32)."""
    monkeypatch.setattr(engine, "_capturable_devices", lambda: ["cpu", "cuda"])
    p1, p2 = make_params(), make_params()
    o1 = Adam(p1, capturable=True, foreach=foreach, eps_after_bias_correction=True, **kw)
    plain = {
        k: (float(v) if torch.is_tensor(v) else tuple(map(float, v)) if k == "betas" else v)
        for k, v in kw.items()
    }
    o2 = Adam(p2, foreach=False, eps_after_bias_correction=True, **plain)
    gen = torch.Generator().manual_seed(0)
    real_item, real_tolist = torch.Tensor.item, torch.Tensor.tolist
    for k in range(5):
        for i, (a, b) in enumerate(zip(p1, p2)):
            a.grad = (
                None if (k == 2 and i == 1) else torch.randn(a.shape, generator=gen, dtype=a.dtype)
            )
            b.grad = None if a.grad is None else a.grad.clone()

        def no_host_read(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError("host read during a capturable step")

        monkeypatch.setattr(torch.Tensor, "item", no_host_read)
        monkeypatch.setattr(torch.Tensor, "tolist", no_host_read)
        o1.step()
        monkeypatch.setattr(torch.Tensor, "item", real_item)
        monkeypatch.setattr(torch.Tensor, "tolist", real_tolist)
        o2.step()
    for a, b in zip(p1, p2):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)  # float64 step sizes
        assert o1.state[a]["step"].dtype == torch.float32


# --------------------------------------------------------------------------------------------
# differentiable=True: gradcheck as torch's test_optim (TestDifferentiableOptimizer) does.
# --------------------------------------------------------------------------------------------
def _diff_fn(p, grad, opt_state, opt_class, kwargs, *ignored):
    """One step of a fresh optimizer on a copy of ``p`` with the given state (torch's recipe)."""
    p = p.clone()
    p.grad = grad
    opt = opt_class([p], **kwargs)
    opt.state[p].update({k: v.clone() if torch.is_tensor(v) else v for k, v in opt_state.items()})
    opt.step()
    return (p, *(v for v in opt.state[p].values() if torch.is_tensor(v) and v.requires_grad))


def _rand() -> torch.Tensor:
    return torch.rand(10, dtype=torch.float64, requires_grad=True)


def _adam_state() -> dict[str, torch.Tensor]:
    return {
        "step": torch.tensor(10.0, dtype=torch.float64),
        "exp_avg": _rand(),
        "exp_avg_sq": _rand(),
        "max_exp_avg_sq": _rand(),
    }


DIFFERENTIABLE = {
    "SGD": (SGD, {"lr": 0.9, "momentum": 0.9}, lambda: {"v": _rand()}),
    "Nesterov": (Nesterov, {"lr": 0.9, "weight_decay": 0.1, "maximize": True}, lambda: {"v": _rand()}),
    "AdaGrad": (AdaGrad, {"lr": 0.9, "weight_decay": 0.1, "lr_decay": 0.1},
                lambda: {"step": torch.tensor(10.0, dtype=torch.float64), "sum": _rand()}),
    "Adam": (Adam, {"lr": 0.9, "amsgrad": True, "weight_decay": 0.1}, _adam_state),
    "AdamW": (AdamW, {"lr": 0.9, "amsgrad": True}, _adam_state),
}  # fmt: skip


@pytest.mark.parametrize("name", list(DIFFERENTIABLE))
def test_differentiable_step_passes_gradcheck(name: str) -> None:
    torch.manual_seed(0)
    cls, kw, make_state = DIFFERENTIABLE[name]
    state = make_state()
    args = (_rand(), _rand(), state, cls, {**kw, "differentiable": True}, *state.values())
    assert torch.autograd.gradcheck(_diff_fn, args)


def _multistep(params, grad, opt_state, opt_class, kwargs, *ignored):
    """Two steps through a small loss; the meta-gradient of the last loss with respect to the
    tensor hyperparameters (torch's ``_multistep_backprop_diff_hyperparams_fn``)."""
    params = params.clone()
    params.grad = grad
    kwargs = dict(kwargs)
    if "beta1" in kwargs:
        kwargs["betas"] = (kwargs.pop("beta1"), kwargs.pop("beta2"))
    kwargs = {k: v.clone() if torch.is_tensor(v) else v for k, v in kwargs.items()}
    hyper = [v for v in kwargs.values() if torch.is_tensor(v) and v.requires_grad]
    hyper += list(kwargs.get("betas", ()))
    opt = opt_class([params], **kwargs)
    opt.state[params].update(
        {k: v.clone() if torch.is_tensor(v) else v for k, v in opt_state.items()}
    )
    x, y = torch.tensor([1.0], dtype=torch.float64), torch.tensor([2.0], dtype=torch.float64)
    for _ in range(2):
        loss = torch.nn.functional.mse_loss(x * params.sum(), y)
        loss.backward(inputs=(params,), create_graph=True)
        opt.step()
        opt.zero_grad()
    loss.backward(inputs=tuple(hyper), create_graph=True)
    assert all(h.grad is not None for h in hyper)
    return (
        loss,
        *(v for v in opt.state[params].values() if torch.is_tensor(v) and v.requires_grad),
        *hyper,
    )


def _t(x: float) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64, requires_grad=True)


HYPER = {
    "SGD lr": (SGD, {"lr": _t(0.001), "momentum": 0.9}),
    "SGD lr, weight_decay": (SGD, {"lr": _t(0.001), "weight_decay": _t(0.9), "momentum": 0.9}),
    "Adam lr": (Adam, {"lr": _t(0.001), "amsgrad": True}),
    "Adam weight_decay": (Adam, {"weight_decay": _t(0.999), "amsgrad": True}),
    "Adam betas": (Adam, {"beta1": _t(0.9), "beta2": _t(0.999), "lr": _t(0.001)}),
    "AdamW all": (AdamW, {"lr": _t(0.001), "weight_decay": _t(0.999), "beta1": _t(0.9), "beta2": _t(0.999)}),
}  # fmt: skip


@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True")
@pytest.mark.parametrize("name", list(HYPER))
def test_differentiable_hyperparameters_get_gradients(name: str) -> None:
    torch.manual_seed(0)
    cls, kw = HYPER[name]
    coupled = torch.is_tensor(kw.get("weight_decay")) and cls is not AdamW
    if coupled and not engine.tensor_alpha_dispatches():
        pytest.skip("this torch refuses a tensor alpha in torch.add (refused up front: tested)")
    state = _adam_state() if cls in (Adam, AdamW) else {"v": _rand()}
    kw = {**kw, "differentiable": True}
    assert torch.autograd.gradcheck(
        _multistep, (_rand(), _rand(), state, cls, kw, *state.values(), *kw.values())
    )


@pytest.mark.parametrize("cls", ALL)
def test_differentiable_refuses_a_leaf_parameter_before_any_write(cls: type) -> None:
    """An in-place update of a leaf that requires grad cannot be recorded: torch fails in the
    middle of its step; ours refuses before anything moved."""
    params = make_params()
    opt = cls(params, differentiable=True)
    set_grads(params, grad_sequence(1)[0])
    before = [p.detach().clone() for p in params]
    with pytest.raises(RuntimeError, match="a leaf Variable that requires grad"):
        opt.step()
    assert all(torch.equal(p, q) for p, q in zip(params, before))
    assert all(set(s) <= {"step", "sum"} for s in opt.state.values())  # AdaGrad's eager state


# --------------------------------------------------------------------------------------------
# Paths: bit-identical per dtype (issue 12 item 15).
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.complex64]
)
@pytest.mark.parametrize("cls", ALL)
def test_foreach_and_per_tensor_are_bit_identical_in_every_dtype(cls: type, dtype) -> None:
    """foreach=None chooses between the two paths by tensor size; since they are bit-identical
    on CPU in every dtype, the choice never changes a result. (In 16-bit, CPU's
    ``torch._foreach_mul_`` would round its scalar first: see ``TensorList.mul_``.)"""
    kw = {**KW[cls], "eps": 1e-2} if cls in (AdaGrad, Adam, AdamW) else KW[cls]
    a = [p.detach().to(dtype).requires_grad_() for p in make_params()]
    b = [p.detach().clone().requires_grad_() for p in a]
    oa, ob = ours(cls, a, foreach=True, **kw), ours(cls, b, foreach=False, **kw)
    gen = torch.Generator().manual_seed(1)
    for k in range(8):
        for i, (x, y) in enumerate(zip(a, b)):
            none = (k in (2, 3) and i == 1) or (k == 0 and i == 3)
            x.grad = None if none else torch.randn(x.shape, generator=gen).to(dtype)
            y.grad = None if none else x.grad.clone()
        oa.step()
        ob.step()
    for x, y in zip(a, b):
        assert torch.equal(x, y)
        for key in ob.state[y]:
            assert torch.equal(oa.state[x][key], ob.state[y][key]), key


# --------------------------------------------------------------------------------------------
# DTensor parameters (FSDP2's): both paths, in a one-process gloo group.
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mesh() -> Any:
    dist = torch.distributed
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("no gloo")
    try:
        from torch.distributed.tensor import distribute_tensor  # noqa: F401
    except ImportError:  # torch < 2.5
        pytest.importorskip("torch.distributed._tensor")
    from torch.distributed.device_mesh import init_device_mesh

    started = not dist.is_initialized()
    if started:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    yield init_device_mesh("cpu", (1,))
    if started:
        dist.destroy_process_group()


def _distribute() -> Callable:
    try:
        from torch.distributed.tensor import Shard, distribute_tensor
    except ImportError:  # torch < 2.5
        from torch.distributed._tensor import Shard, distribute_tensor
    return lambda t, mesh: distribute_tensor(t, mesh, [Shard(0)])


@pytest.mark.parametrize("foreach", [False, True, None])
@pytest.mark.parametrize("cls", ALL)
def test_dtensor_parameters_equal_plain_ones(cls: type, foreach: Any, mesh: Any) -> None:
    """Issue 13 item 2: FSDP2 parameters are DTensors; the reused scratch buffer (a plain
    tensor) broke every op with weight decay or Adam's/AdaGrad's denominator."""
    shard = _distribute()
    gen = torch.Generator().manual_seed(0)
    plain = [
        torch.randn(6, 4, generator=gen).requires_grad_(),
        torch.randn(4, generator=gen).requires_grad_(),
    ]
    dts = [torch.nn.Parameter(shard(p.detach().clone(), mesh)) for p in plain]
    kw = {**KW[cls], "maximize": True}
    o1, o2 = ours(cls, dts, foreach=foreach, **kw), ours(cls, plain, foreach=foreach, **kw)
    for _ in range(3):
        for d, p in zip(dts, plain):
            g = torch.randn(p.shape, generator=gen)
            p.grad = g.clone()
            d.grad = shard(g, mesh)
        o1.step()
        o2.step()
    for d, p in zip(dts, plain):
        assert type(d.data).__name__ == "DTensor"
        assert torch.equal(d.full_tensor(), p)
        for key, value in o2.state[p].items():
            mine = o1.state[d][key]
            assert torch.equal(mine.full_tensor() if key != "step" else mine, value), key
