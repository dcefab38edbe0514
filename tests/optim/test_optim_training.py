"""The optimizers in training loops: validation, sparse and None gradients, LR schedulers,
closures, GradScaler, torch.compile, deepcopy/pickle, hooks, dtypes and complex parameters."""

from __future__ import annotations

import copy
import math
import pickle
from typing import Any, Callable

import pytest
import torch
from optim_cases import ATOL, DEVICES, RTOL, assert_same_snapshot, make_params, snapshot
from optim_reference import book_step, init_state

from torch_dlbasics.optim import SGD, AdaGrad, Adam, AdamW, Momentum, Nesterov
from torch_dlbasics.optim._step import use_foreach

ALL = [SGD, Momentum, Nesterov, AdaGrad, Adam]
KIND = {SGD: "sgd", Momentum: "momentum", Nesterov: "nesterov", AdaGrad: "adagrad", Adam: "adam"}


def torch_twin(cls: type, params: Any, **hp: Any) -> torch.optim.Optimizer:
    """The torch built-in that agrees with ``cls(params, **hp)`` (Adam: with eps=0)."""
    if cls is SGD:
        return torch.optim.SGD(params, **hp)
    if cls in (Momentum, Nesterov):
        hp.setdefault("momentum", 0.9)
        return torch.optim.SGD(params, nesterov=cls is Nesterov, **hp)
    if cls is AdaGrad:
        return torch.optim.Adagrad(params, eps=hp.pop("eps", 1e-7), **hp)
    return torch.optim.Adam(params, **hp)


def ours(cls: type, params: Any, **hp: Any) -> torch.optim.Optimizer:
    return cls(params, **hp)


def default_hp(cls: type) -> dict[str, Any]:
    return {"lr": 0.01, "eps": 0.0} if cls is Adam else {"lr": 0.05}


# --------------------------------------------------------------------------------------------
# Validation, in torch's words.
# --------------------------------------------------------------------------------------------
BAD = [
    (SGD, {"lr": -1.0}, "Invalid learning rate: -1.0"),
    (SGD, {"weight_decay": -0.1}, "Invalid weight_decay value: -0.1"),
    (Momentum, {"lr": -1.0}, "Invalid learning rate: -1.0"),
    (Momentum, {"momentum": -0.5}, "Invalid momentum value: -0.5"),
    (Momentum, {"weight_decay": -0.1}, "Invalid weight_decay value: -0.1"),
    (Nesterov, {"lr": -1.0}, "Invalid learning rate: -1.0"),
    (Nesterov, {"momentum": -0.5}, "Invalid momentum value: -0.5"),
    (Nesterov, {"momentum": 0.0}, "Nesterov momentum requires a momentum and zero dampening"),
    (Nesterov, {"weight_decay": -0.1}, "Invalid weight_decay value: -0.1"),
    (AdaGrad, {"lr": -1.0}, "Invalid learning rate: -1.0"),
    (AdaGrad, {"eps": -0.001}, "Invalid epsilon value: -0.001"),
    (AdaGrad, {"weight_decay": -0.1}, "Invalid weight_decay value: -0.1"),
    (Adam, {"lr": -1.0}, "Invalid learning rate: -1.0"),
    (Adam, {"eps": -0.001}, "Invalid epsilon value: -0.001"),
    (Adam, {"betas": (1.0, 0.999)}, "Invalid beta parameter at index 0: 1.0"),
    (Adam, {"betas": (0.9, -0.1)}, "Invalid beta parameter at index 1: -0.1"),
    (Adam, {"weight_decay": -0.1}, "Invalid weight_decay value: -0.1"),
]


@pytest.mark.parametrize(("cls", "kwargs", "message"), BAD)
def test_invalid_hyperparameters_raise_torchs_error(cls: type, kwargs: dict, message: str) -> None:
    w = torch.nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError) as ours_err:
        cls([w], **kwargs)
    assert str(ours_err.value) == message
    with pytest.raises(ValueError) as torch_err:  # the same words as the torch counterpart
        torch_twin(cls, [w], **kwargs)
    assert str(torch_err.value) == message


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("cls", ALL)
def test_sparse_gradient_raises_before_anything_changes(cls: type, foreach: bool) -> None:
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
    opt = cls([{"params": [a]}, {"params": [b]}], foreach=foreach)
    a.grad = torch.ones(3)
    opt.step()
    before, a_before = snapshot(opt), a.detach().clone()
    a.grad = torch.ones(3)
    b.grad = torch.sparse_coo_tensor([[0]], [1.0], (3,), check_invariants=True)
    with pytest.raises(RuntimeError, match=f"{cls.__name__} does not support sparse gradients"):
        opt.step()
    assert torch.equal(a, a_before) and torch.equal(b, torch.ones(3))
    assert_same_snapshot(before, snapshot(opt))


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("cls", ALL)
def test_none_grad_is_skipped_and_keeps_state(cls: type, foreach: bool) -> None:
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
    opt = cls([a, b], foreach=foreach)
    a.grad, b.grad = torch.ones(3), torch.ones(2)
    opt.step()
    b_state = {k: v.clone() for k, v in opt.state[b].items()}
    b_before = b.detach().clone()
    b.grad = None
    opt.step()
    assert torch.equal(b, b_before)
    assert opt.state[b].keys() == b_state.keys()
    assert all(torch.equal(opt.state[b][k], v) for k, v in b_state.items())
    assert not torch.equal(a, torch.ones(3))


def test_foreach_none_choice() -> None:
    small = [torch.zeros(1000) for _ in range(10)]
    large = [torch.zeros(100_000) for _ in range(3)]
    assert use_foreach(None, small) is True
    assert use_foreach(None, large) is False
    assert use_foreach(True, large) is True and use_foreach(False, small) is False
    assert use_foreach(None, large, max_mean_numel=math.inf) is True  # SGD's choice


def test_sgd_foreach_none_is_multi_tensor_on_cpu_for_large_tensors() -> None:
    params = [torch.zeros(100_000, requires_grad=True) for _ in range(3)]
    for p in params:
        p.grad = torch.ones_like(p)
    opt = SGD(params, lr=0.1, weight_decay=0.5)  # weight decay: the gradient goes via scratch
    opt.step()
    views = opt._scratch[("views", (torch.device("cpu"), torch.float32, 0))]  # the foreach path
    assert list(views) == [(torch.Size([100_000]),) * 3]
    assert all(torch.equal(p, torch.full_like(p, -0.1)) for p in params)


# --------------------------------------------------------------------------------------------
# LR schedulers: torch parity where lr is outside the state, the book's form where it is inside.
# --------------------------------------------------------------------------------------------
def _scheduled_run(opt, params, make_sched, steps: int, seed: int = 2):
    """Train with a scheduler; return the hyperparameters of every step and its gradients.
    ``ReduceLROnPlateau`` is fed a loss that stops improving, so it does reduce the lr."""
    sched = make_sched(opt)
    gen = torch.Generator().manual_seed(seed)
    log = []
    for k in range(steps):
        grads = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        hps = [dict(g) for g in opt.param_groups for _ in g["params"]]
        opt.step()
        if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
            sched.step(max(1.0, 5.0 - k))
        else:
            sched.step()
        log.append((hps, grads))
    return log


def _kind(cls: type, hp: dict[str, Any]) -> str:
    """The book's rule a step of ``cls`` followed (SGD with momentum is the book's Momentum)."""
    if issubclass(cls, SGD) and hp["momentum"] != 0:
        return "nesterov" if hp["nesterov"] else "momentum"
    return KIND[cls]


def _book_replay(cls: type, params0: list[torch.Tensor], log) -> list:
    ref = [p.detach().numpy().copy() for p in params0]
    states = [init_state(KIND[cls], r, log[0][0][i]) for i, r in enumerate(ref)]
    for hps, grads in log:
        for i in range(len(ref)):
            ref[i] = book_step(_kind(cls, hps[i]), hps[i], ref[i], grads[i].numpy(), states[i])
    return ref


_lrs = torch.optim.lr_scheduler
SCHEDULERS: dict[str, Callable] = {  # default arguments: OneCycleLR/CyclicLR cycle momentum
    "steplr": lambda opt: _lrs.StepLR(opt, step_size=4, gamma=0.5),
    "onecycle": lambda opt: _lrs.OneCycleLR(opt, max_lr=0.1, total_steps=20),
    "cyclic": lambda opt: _lrs.CyclicLR(opt, base_lr=0.01, max_lr=0.1, step_size_up=4),
    "plateau": lambda opt: _lrs.ReduceLROnPlateau(opt, factor=0.5, patience=1),
    "swalr": lambda opt: torch.optim.swa_utils.SWALR(opt, swa_lr=0.02, anneal_epochs=5),
}
CYCLES_MOMENTUM = ("onecycle", "cyclic")


@pytest.mark.parametrize("sched", list(SCHEDULERS))
@pytest.mark.parametrize("cls", ALL)
def test_schedulers_with_default_arguments_work_as_with_torch(cls: type, sched: str) -> None:
    """Issue 11 item 6, each scheduler with its default arguments: ours follows the book's
    formula step by step under the schedule (an independent float64 replay with the logged
    hyperparameters), and equals torch's counterpart wherever the lr sits outside the state
    (AdaGrad, Adam; SGD while it has no momentum). Where the book's form has nothing to cycle
    (AdaGrad has no momentum) OneCycleLR/CyclicLR refuse as they refuse torch's Adagrad."""
    params = make_params()
    params0 = [p.detach().clone() for p in params]
    opt = cls(params, **default_hp(cls))
    twins = make_params()
    twin = torch_twin(cls, twins, **default_hp(cls))
    if cls is AdaGrad and sched in CYCLES_MOMENTUM:
        with pytest.raises(ValueError) as theirs:
            SCHEDULERS[sched](twin)
        with pytest.raises(ValueError, match=str(theirs.value)):
            SCHEDULERS[sched](opt)
        return
    log = _scheduled_run(opt, params, SCHEDULERS[sched], 20)
    assert len({float(hps[0]["lr"]) for hps, _ in log}) > 2  # the lr did change
    if sched in CYCLES_MOMENTUM:  # and so did the momentum (SGD: from 0 to cycling, as torch's)
        assert len({str(hps[0].get("momentum", hps[0].get("betas"))) for hps, _ in log}) > 2
    for p, r in zip(params, _book_replay(cls, params0, log)):
        torch.testing.assert_close(p.detach(), torch.as_tensor(r), rtol=RTOL, atol=ATOL)
    theirs_log = _scheduled_run(twin, twins, SCHEDULERS[sched], 20)
    assert [float(h[0]["lr"]) for h, _ in log] == [float(h[0]["lr"]) for h, _ in theirs_log]
    lr_outside = cls in (AdaGrad, Adam) or (cls is SGD and sched not in CYCLES_MOMENTUM)
    if lr_outside:
        for p, q in zip(params, twins):
            torch.testing.assert_close(p, q, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("cls", [Momentum, Nesterov])
def test_lr_change_mid_run_momentum_book_vs_torch(cls: type) -> None:
    """The README's worked example: mu=0.9, gradient 1, lr 1.0 then 0.1."""
    w_ours = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))
    w_torch = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))
    o = cls([w_ours], lr=1.0, momentum=0.9)
    t = torch.optim.SGD([w_torch], lr=1.0, momentum=0.9, nesterov=cls is Nesterov)
    moves = []
    for lr in (1.0, 0.1):
        for opt, w in ((o, w_ours), (t, w_torch)):
            opt.param_groups[0]["lr"] = lr
            w.grad = torch.ones((), dtype=torch.float64)
            opt.step()
        moves.append((w_ours.item(), w_torch.item()))
    assert moves[0] == (-1.9, -1.9) if cls is Nesterov else moves[0] == (-1.0, -1.0)
    step2_ours = moves[1][0] - moves[0][0]
    step2_torch = moves[1][1] - moves[0][1]
    if cls is Momentum:  # book: v2 = 0.9*(-1) - 0.1 = -1.0;  torch: -0.1 * (0.9*1 + 1) = -0.19
        assert step2_ours == pytest.approx(-1.0, rel=1e-15)
        assert step2_torch == pytest.approx(-0.19, rel=1e-15)
    else:  # book: 0.81*(-1) - 1.9*0.1 = -1.0;  torch: -0.1*(1 + 0.9*1.9) = -0.271
        assert step2_ours == pytest.approx(-1.0, rel=1e-15)
        assert step2_torch == pytest.approx(-0.271, rel=1e-15)


# --------------------------------------------------------------------------------------------
# Closures, GradScaler, torch.compile, copies, hooks.
# --------------------------------------------------------------------------------------------
def _model(seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1)).to(
        dtype
    )


@pytest.mark.parametrize("cls", ALL)
def test_step_with_closure_returns_loss(cls: type) -> None:
    x = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    m1, m2 = _model(), _model()
    o1, o2 = cls(m1.parameters(), lr=0.01), cls(m2.parameters(), lr=0.01)
    calls: list[torch.Tensor] = []
    for _ in range(3):
        calls.clear()

        def closure() -> torch.Tensor:
            o1.zero_grad()
            loss = m1(x).pow(2).mean()
            loss.backward()
            calls.append(loss)
            return loss

        returned = o1.step(closure)
        assert len(calls) == 1 and returned is calls[0] and returned.requires_grad
        o2.zero_grad()
        m2(x).pow(2).mean().backward()
        assert o2.step() is None
    for p, q in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(p, q)


def _grad_scaler() -> Any:
    try:
        return torch.amp.GradScaler("cpu", init_scale=16.0, growth_interval=1000)
    except (AttributeError, TypeError, RuntimeError) as err:  # torch < 2.3
        pytest.skip(f"no CPU GradScaler: {err}")


@pytest.mark.parametrize("cls", ALL)
def test_grad_scaler_skips_inf_step_and_corrupts_nothing(cls: type) -> None:
    scaler = _grad_scaler()
    xs = torch.randn(4, 5, 4, generator=torch.Generator().manual_seed(0))
    m1, m2 = _model(dtype=torch.float32), _model(dtype=torch.float32)
    o1, o2 = cls(m1.parameters(), lr=0.01), cls(m2.parameters(), lr=0.01)
    for k, x in enumerate(xs):
        o1.zero_grad()
        scaler.scale(m1(x).pow(2).mean()).backward()
        if k == 2:
            next(m1.parameters()).grad[0, 0] = float("inf")
            before = snapshot(o1)
            params_before = [p.detach().clone() for p in m1.parameters()]
        scaler.step(o1)
        scaler.update()
        if k == 2:
            assert scaler.get_scale() == 8.0  # the inf was seen and the scale backed off
            assert all(torch.equal(p, q) for p, q in zip(m1.parameters(), params_before))
            assert_same_snapshot(before, snapshot(o1))
            continue  # the twin (no scaler) skips this step too
        o2.zero_grad()
        m2(x).pow(2).mean().backward()
        o2.step()
    for p, q in zip(m1.parameters(), m2.parameters()):  # power-of-two scaling is exact
        assert torch.isfinite(p).all()
        assert torch.equal(p, q)


@pytest.mark.parametrize("cls", [Momentum, Adam])
def test_torch_compile_training_step(cls: type) -> None:
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    m1, m2 = _model(dtype=torch.float32), _model(dtype=torch.float32)
    o1, o2 = cls(m1.parameters(), lr=0.01), cls(m2.parameters(), lr=0.01)

    def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer) -> torch.Tensor:
        opt.zero_grad()
        loss = model(x).pow(2).mean()
        loss.backward()
        opt.step()
        return loss

    compiled = torch.compile(train_step)
    for _ in range(3):
        torch.testing.assert_close(compiled(m1, o1), train_step(m2, o2))
    for p, q in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(p, q)
    for p, q in zip(m1.parameters(), m2.parameters()):
        for key in o2.state[q]:
            torch.testing.assert_close(o1.state[p][key], o2.state[q][key])


@pytest.mark.parametrize("flags", [{"foreach": None}, {"foreach": True}, {"fused": True}])
@pytest.mark.parametrize("cls", [*ALL, AdamW])
def test_compiled_step_is_one_graph_and_compiles_only_until_state_exists(
    cls: type, flags: dict
) -> None:
    """``torch.compile(opt.step, fullgraph=True)``: no graph break (Adam's step count stays a
    tensor, no ``.item()``), recompiled once when the state appears and never after (the step
    count and lr_t are not baked into the graph), and the same numbers as the eager step.
    ``fused=True`` composes: inside a compiled step it is the same per-tensor graph."""
    import torch._dynamo

    torch._dynamo.reset()
    hp: dict[str, Any] = {"lr": 0.01, **flags}
    if cls in (Adam, AdamW):
        hp.update(eps=1e-7, eps_after_bias_correction=True)
    p1, p2 = make_params("cpu", torch.float32, seed=3), make_params("cpu", torch.float32, seed=3)
    o1, o2 = cls(p1, **hp), cls(p2, **{**hp, "fused": None})
    step = torch.compile(o1.step, fullgraph=True, backend="aot_eager")
    gen = torch.Generator().manual_seed(0)
    for k in range(5):
        for p, q in zip(p1, p2):
            p.grad = torch.randn(p.shape, generator=gen)
            q.grad = p.grad.clone()
        with torch._dynamo.config.patch(error_on_recompile=k >= 2):
            step()
        o2.step()
    for p, q in zip(p1, p2):
        torch.testing.assert_close(p, q)
        for key in o2.state[q]:
            torch.testing.assert_close(o1.state[p][key], o2.state[q][key])


@pytest.mark.parametrize("cls", ALL)
def test_deepcopy_and_pickle_continue_identically(cls: type) -> None:
    x = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    model = _model()
    opt = cls(model.parameters(), lr=0.01)
    for _ in range(2):
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
    pairs = [
        (model, opt),
        *(
            (c["model"], c["opt"])
            for c in (
                copy.deepcopy({"model": model, "opt": opt}),
                pickle.loads(pickle.dumps({"model": model, "opt": opt})),
            )
        ),
    ]
    for m, o in pairs:
        assert all(any(p is q for q in m.parameters()) for g in o.param_groups for p in g["params"])
        for _ in range(2):
            o.zero_grad()
            m(x).pow(2).mean().backward()
            o.step()
    (m0, o0), *copies = pairs
    for m, o in copies:
        for p, q in zip(m0.parameters(), m.parameters()):
            assert torch.equal(p, q)
            assert o0.state[p].keys() == o.state[q].keys()
            assert all(torch.equal(o0.state[p][k], o.state[q][k]) for k in o0.state[p])


@pytest.mark.parametrize("cls", ALL)
def test_optimizer_hooks(cls: type) -> None:
    w = torch.nn.Parameter(torch.ones(2))
    opt = cls([w], lr=0.1)
    calls: list[str] = []
    opt.register_step_pre_hook(lambda o, args, kwargs: calls.append("pre"))
    opt.register_step_post_hook(lambda o, args, kwargs: calls.append("post"))
    opt.register_state_dict_pre_hook(lambda o: calls.append("sd_pre"))

    def sd_post(o: torch.optim.Optimizer, sd: dict) -> dict:
        calls.append("sd_post")
        sd["param_groups"][0]["lr"] = 0.5  # a post hook may edit the state dict
        return sd

    opt.register_state_dict_post_hook(sd_post)
    opt.register_load_state_dict_pre_hook(lambda o, sd: calls.append("load_pre"))
    opt.register_load_state_dict_post_hook(lambda o: calls.append("load_post"))
    w.grad = torch.ones(2)
    opt.step()
    assert calls == ["pre", "post"]
    sd = opt.state_dict()
    assert sd["param_groups"][0]["lr"] == 0.5
    opt.load_state_dict(sd)
    assert calls == ["pre", "post", "sd_pre", "sd_post", "load_pre", "load_post"]
    assert opt.param_groups[0]["lr"] == 0.5


# --------------------------------------------------------------------------------------------
# dtypes, devices, complex parameters.
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("cls", ALL)
def test_low_precision_as_accurate_as_torch(
    cls: type, foreach: bool, dtype: torch.dtype, device: str
) -> None:
    """In low precision ours and torch round differently (Momentum keeps lr inside v, Adam folds
    the bias correction into lr_t): both are compared with the float64 result from the same
    start, and ours must be no less accurate than torch (within a factor 2 plus one ulp)."""
    p1 = [p.detach().to(dtype).requires_grad_() for p in make_params(device)]
    p2 = [p.detach().clone().requires_grad_() for p in p1]
    p64 = [p.detach().double().requires_grad_() for p in p1]
    o1 = cls(p1, foreach=foreach, **default_hp(cls))
    o2 = torch_twin(cls, p2, foreach=foreach, **default_hp(cls))
    o64 = cls(p64, **default_hp(cls))
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        for a, b, c in zip(p1, p2, p64):
            a.grad = torch.randn(a.shape, generator=gen).to(device=device, dtype=dtype)
            b.grad = a.grad.clone()
            c.grad = a.grad.double()
        for o in (o1, o2, o64):
            o.step()
    for a, b, c in zip(p1, p2, p64):
        assert a.dtype == dtype and a.device.type == device
        err_ours = (a.double() - c).abs().max().item()
        err_torch = (b.double() - c).abs().max().item()
        ulp = torch.finfo(dtype).eps * c.abs().max().item()
        assert err_ours <= 2 * err_torch + ulp, (err_ours, err_torch, ulp)
        for key, value in o1.state[a].items():
            assert value.dtype == (dtype if key != "step" else torch.float32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("cls", ALL)
def test_complex_matches_torch(cls: type, foreach: bool, device: str) -> None:
    gen = torch.Generator().manual_seed(0)
    p1 = [
        torch.randn(3, 2, dtype=torch.complex128, generator=gen).to(device).requires_grad_(),
        torch.randn(4, dtype=torch.complex128, generator=gen).to(device).requires_grad_(),
    ]
    p2 = [p.detach().clone().requires_grad_() for p in p1]
    hp = {**default_hp(cls), "weight_decay": 0.1}
    o1 = cls(p1, foreach=foreach, **hp)
    o2 = torch_twin(cls, p2, foreach=foreach, **hp)
    for _ in range(6):
        for a, b in zip(p1, p2):
            a.grad = torch.randn(a.shape, dtype=torch.complex128, generator=gen).to(device)
            b.grad = a.grad.clone()
        o1.step()
        o2.step()
    for a, b in zip(p1, p2):
        torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL)
        if cls not in (Momentum, Nesterov, SGD):
            for key, value in o2.state[b].items():
                torch.testing.assert_close(o1.state[a][key], value, rtol=RTOL, atol=ATOL)


def _buffers(opt: torch.optim.Optimizer) -> dict:
    return {
        k: v for k, v in opt.__dict__.get("_scratch", {}).items() if isinstance(v, torch.Tensor)
    }


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("cls", [Momentum, AdaGrad, Adam])
def test_scratch_buffer_is_reused_and_is_not_state(cls: type, foreach: bool) -> None:
    """The temporaries of a step live in one buffer per (device, dtype, slot) kept across steps:
    Momentum needs one for the decayed gradient, AdaGrad that and its denominator, Adam one for
    both (the gradient is dead when the denominator is formed)."""
    params = make_params()
    opt = cls(params, weight_decay=0.1, foreach=foreach)  # weight decay: the gradient slot too
    gen = torch.Generator().manual_seed(0)

    def step() -> None:
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)
        opt.step()

    step()
    buffers = {k: v.data_ptr() for k, v in _buffers(opt).items()}
    assert len(buffers) == {Momentum: 1, AdaGrad: 2, Adam: 1}[cls]
    for _ in range(3):
        step()
    assert buffers == {k: v.data_ptr() for k, v in _buffers(opt).items()}
    assert "_scratch" not in pickle.loads(pickle.dumps(opt)).__dict__
    assert "_scratch" not in copy.deepcopy(opt).__dict__
    assert all(set(s) <= {"v", "step", "sum", "exp_avg", "exp_avg_sq"} for s in opt.state.values())


@pytest.mark.parametrize("cls", [AdaGrad, Adam])
def test_scratch_views_follow_the_buffer_when_it_grows(cls: type) -> None:
    """A per-tensor group then a larger multi-tensor group: the buffer grows to the larger need
    before the step writes anything; every cached view is a view of the one buffer alive."""
    small = [torch.randn(3, 3, dtype=torch.float64, requires_grad=True)]
    large = [torch.randn(50, dtype=torch.float64, requires_grad=True) for _ in range(4)]
    opt = cls([{"params": small, "foreach": False}, {"params": large, "foreach": True}], lr=0.01)
    for _ in range(3):
        for p in small + large:
            p.grad = torch.randn_like(p)
        opt.step()
    (key,) = _buffers(opt)
    buf = opt._scratch[key]
    assert buf.numel() == 200
    views = [v for vs in opt._scratch[("views", key)].values() for v in vs]  # multi-tensor
    views += list(opt._scratch[("shape views", key)].values())  # per-tensor
    assert len(views) == 5
    for v in views:
        assert v.untyped_storage().data_ptr() == buf.untyped_storage().data_ptr()
