"""Checkpoints: bit-exact resume through torch.save/torch.load(weights_only=True), conversion
to and from torch.optim, and loads that must fail without touching the live optimizer."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from optim_cases import (
    ATOL,
    CASES,
    RTOL,
    assert_same_snapshot,
    grad_sequence,
    make_params,
    set_grads,
    snapshot,
)

from torch_dlbasics.optim import SGD, AdaGrad, Adam, Momentum, Nesterov
from torch_dlbasics.optim.convert import (
    from_torch,
    momentum_buffer_to_v,
    to_torch,
    v_to_momentum_buffer,
)

STEPS, SAVE_AT = 24, 11  # SAVE_AT: after step 11, while parameter a's grad has just been None


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("name", list(CASES))
def test_resume_is_bit_exact(name: str, foreach: bool) -> None:
    case = CASES[name]
    if foreach and case.foreach_refused:
        pytest.skip("torch refuses foreach=True with a tensor lr/betas (capturable=False)")
    grads = grad_sequence(STEPS)
    params = make_params()
    opt = case.make_ours(params, foreach=foreach)
    buffer = io.BytesIO()
    for k, g in enumerate(grads):
        set_grads(params, g)
        opt.step()
        if k + 1 == SAVE_AT:
            torch.save({"params": [p.detach() for p in params], "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    ckpt = torch.load(buffer, weights_only=True)
    resumed = [p.clone().requires_grad_() for p in ckpt["params"]]
    opt2 = case.make_ours(resumed, foreach=foreach)
    opt2.load_state_dict(ckpt["opt"])
    for g in grads[SAVE_AT:]:
        set_grads(resumed, g)
        opt2.step()
    for p, q in zip(params, resumed):
        assert torch.equal(p, q)
        assert opt.state[p].keys() == opt2.state[q].keys()
        for key in opt.state[p]:
            assert torch.equal(opt.state[p][key], opt2.state[q][key]), key
            assert opt.state[p][key].dtype == opt2.state[q][key].dtype


# --------------------------------------------------------------------------------------------
# Conversion both ways: run k steps in one, convert, finish in the other; compare with torch.
# --------------------------------------------------------------------------------------------
CONVERTIBLE = [name for name, case in CASES.items() if case.torch_cls is not None]


def _continue(opt: torch.optim.Optimizer, params: list[torch.Tensor], grads: list) -> None:
    for g in grads:
        set_grads(params, g)
        opt.step()


@pytest.mark.parametrize("direction", ["ours_to_torch", "torch_to_ours"])
@pytest.mark.parametrize("name", CONVERTIBLE)
def test_conversion_continues_like_torch(name: str, direction: str) -> None:
    case = CASES[name]
    grads = grad_sequence(STEPS)
    # Reference: torch all the way.
    ref_params = make_params()
    _continue(case.make_torch(ref_params), ref_params, grads)

    params = make_params()
    first = case.make_ours(params) if direction == "ours_to_torch" else case.make_torch(params)
    _continue(first, params, grads[:SAVE_AT])
    data = io.BytesIO()
    torch.save(first.state_dict(), data)
    data.seek(0)
    saved = torch.load(data, weights_only=True)
    if direction == "ours_to_torch":
        second = case.make_torch(params)
        second.load_state_dict(to_torch(first))
    else:
        second = case.make_ours(params)
        second.load_state_dict(from_torch(second, saved))
    _continue(second, params, grads[SAVE_AT:])
    for p, q in zip(params, ref_params):
        torch.testing.assert_close(p, q, rtol=RTOL, atol=ATOL)


def test_velocity_conversion_functions() -> None:
    buf = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    v = momentum_buffer_to_v(buf, lr=0.1)
    assert torch.equal(v, torch.tensor([-0.1, 0.2, -0.05], dtype=torch.float64))
    torch.testing.assert_close(v_to_momentum_buffer(v, lr=0.1), buf, rtol=RTOL, atol=0)
    with pytest.raises(ValueError, match="at lr=0"):
        v_to_momentum_buffer(v, lr=0.0)
    with pytest.raises(ValueError, match="at lr=0"):
        momentum_buffer_to_v(buf, lr=0.0)


def test_momentum_state_maps_to_buffer_in_torch_state_dict() -> None:
    params = make_params()
    opt = Momentum(params, lr=0.1, momentum=0.9)
    set_grads(params, grad_sequence(1)[0])
    opt.step()
    sd = to_torch(opt)
    assert set(sd["state"][0]) == {"momentum_buffer"}
    torch.testing.assert_close(sd["state"][0]["momentum_buffer"], opt.state[params[0]]["v"] / -0.1)
    assert sd["param_groups"][0]["nesterov"] is False and sd["param_groups"][0]["dampening"] == 0.0


def test_to_torch_refuses_book_eps_adam() -> None:
    opt = Adam(make_params())  # eps=1e-7 added before bias correction: no torch equivalent
    with pytest.raises(ValueError, match=r"has no torch\.optim equivalent"):
        to_torch(opt)


@pytest.mark.parametrize(
    ("ours", "torch_opt", "message"),
    [
        (Adam, lambda ps: torch.optim.SGD(ps, lr=0.1), "not from the torch counterpart of Adam"),
        (Adam, lambda ps: torch.optim.RAdam(ps), "not from the torch counterpart of Adam"),
        (Adam, lambda ps: torch.optim.NAdam(ps), "not from the torch counterpart of Adam"),
        (Adam, lambda ps: torch.optim.Adamax(ps), "not from the torch counterpart of Adam"),
        (AdaGrad, lambda ps: torch.optim.Adam(ps), "not from the torch counterpart of AdaGrad"),
        (SGD, lambda ps: torch.optim.RMSprop(ps, momentum=0.9), "counterpart of SGD"),
        (Momentum, lambda ps: torch.optim.Adagrad(ps), "not from the torch counterpart of SGD"),
    ],
)
def test_from_torch_refuses_other_torch_classes(ours, torch_opt, message) -> None:
    """Each names what it converts (item 14: RAdam/NAdam/Adamax raised ``KeyError: 'amsgrad'``)."""
    params = make_params()
    theirs = torch_opt(params)
    for p in params:
        p.grad = torch.ones_like(p)
    theirs.step()
    with pytest.raises(ValueError, match=message) as err:
        from_torch(ours(params), theirs.state_dict())
    assert "SGD, Adagrad, Adam and AdamW" in str(err.value)


@pytest.mark.parametrize("cls", [SGD, Momentum, Nesterov])
@pytest.mark.parametrize("direction", ["from_torch", "to_torch"])
def test_velocity_at_lr_zero_is_refused_both_ways(cls: type, direction: str) -> None:
    """Item 5: at lr = 0 (the start of a warm-up) ``v = -lr * buf`` would silently drop the
    momentum (``[1, 1, 1]`` became ``[-0, -0, -0]``); both directions refuse instead."""
    w = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    w.grad = torch.ones(3, dtype=torch.float64)
    if direction == "from_torch":
        theirs = torch.optim.SGD([w], lr=0.1, momentum=0.9, nesterov=cls is Nesterov)
        theirs.step()
        theirs.param_groups[0]["lr"] = 0.0
        assert torch.equal(theirs.state[w]["momentum_buffer"], torch.ones(3, dtype=torch.float64))
        ours = cls([w], lr=0.1, momentum=0.9)
        with pytest.raises(ValueError, match="at lr=0"):
            from_torch(ours, theirs.state_dict())
    else:
        ours = cls([w], lr=0.1, momentum=0.9)
        ours.step()
        ours.param_groups[0]["lr"] = 0.0
        with pytest.raises(ValueError, match="at lr=0"):
            to_torch(ours)


# --------------------------------------------------------------------------------------------
# Loads that must fail and leave the live optimizer untouched (issue 6, "Checkpoints and faults").
# --------------------------------------------------------------------------------------------
def _trained(cls: type, params: list[torch.Tensor], **kw) -> torch.optim.Optimizer:
    opt = cls([{"params": params[:2]}, {"params": params[2:], "lr": 0.05}], **kw)
    _steps(opt, params)
    return opt


def _steps(opt: torch.optim.Optimizer, params: list[torch.Tensor], n: int = 3) -> None:
    gen = torch.Generator().manual_seed(3)
    for _ in range(n):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)
        opt.step()


@pytest.mark.parametrize(
    ("target", "source"),
    [(Momentum, Adam), (Adam, AdaGrad), (AdaGrad, SGD), (Nesterov, AdaGrad), (Adam, Momentum)],
)
def test_load_from_other_class_fails_and_changes_nothing(target: type, source: type) -> None:
    params = make_params()
    live = _trained(target, params)
    before = snapshot(live)
    with pytest.raises(ValueError, match="comes from a different optimizer class"):
        live.load_state_dict(_trained(source, make_params()).state_dict())
    assert_same_snapshot(before, snapshot(live))


def test_load_torch_state_dict_directly_fails_with_hint() -> None:
    params = make_params()
    live = _trained(Adam, params)
    before = snapshot(live)
    theirs = torch.optim.Adam([{"params": params[:2]}, {"params": params[2:]}])
    with pytest.raises(ValueError, match=r"use torch_dlbasics\.optim\.convert\.from_torch"):
        live.load_state_dict(theirs.state_dict())
    assert_same_snapshot(before, snapshot(live))


def test_load_with_wrong_state_key_fails() -> None:
    params = make_params()
    live = _trained(Adam, params)
    before = snapshot(live)
    bad = snapshot(live)
    bad["state"][0]["momentum_buffer"] = bad["state"][0].pop("exp_avg")
    with pytest.raises(
        ValueError, match=r"state of parameter 0 has keys .*different optimizer class"
    ):
        live.load_state_dict(bad)
    assert_same_snapshot(before, snapshot(live))


@pytest.mark.parametrize("cls", [SGD, Momentum, Nesterov, AdaGrad, Adam])
@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ("one_group", "has 1 parameter groups, the optimizer has 2"),
        (
            "group_size",
            "param group 0 has 3 parameters in the loaded state dict, 2 in the optimizer",
        ),
        ("shape", "has shape \\(5,\\), expected \\(4,\\): different parameter layout"),
    ],
)
def test_load_other_layout_fails_and_changes_nothing(cls: type, layout: str, message: str) -> None:
    params = make_params()
    live = _trained(cls, params)
    before = snapshot(live)
    other = make_params()
    if layout == "one_group":
        source = cls(other)
    elif layout == "group_size":
        source = cls([{"params": other[:3]}, {"params": other[3:]}])
    else:
        other[1] = torch.zeros(5, dtype=torch.float64, requires_grad=True)
        source = _trained(cls, other)
        if not source.state:  # SGD keeps no state: nothing of that shape to check
            pytest.skip("SGD has no per-parameter state")
    _steps(source, other, 1)
    with pytest.raises(ValueError, match=message):
        live.load_state_dict(source.state_dict())
    assert_same_snapshot(before, snapshot(live))


def test_truncated_file_fails_and_changes_nothing(tmp_path: Path) -> None:
    params = make_params()
    live = _trained(Adam, params)
    before = snapshot(live)
    path = tmp_path / "opt.pt"
    torch.save(live.state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(RuntimeError):  # torch's zip reader: "failed finding central directory"
        live.load_state_dict(torch.load(path, weights_only=True))
    assert_same_snapshot(before, snapshot(live))
    # and the live optimizer still works
    set_grads(params, grad_sequence(1)[0])
    live.step()


@pytest.mark.parametrize("cls", [SGD, Momentum, Nesterov, AdaGrad, Adam])
def test_resume_with_lr_scheduler_is_bit_exact(cls: type) -> None:
    """Schedulers add keys to the param groups (initial_lr, max_lr, ...): they load fine."""
    grads = grad_sequence(STEPS)
    cycle = cls in (Momentum, Nesterov, Adam)

    def build(params: list[torch.Tensor]):
        opt = cls([{"params": params[:2]}, {"params": params[2:], "weight_decay": 0.01}])
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=0.05, total_steps=STEPS, cycle_momentum=cycle
        )
        return opt, sched

    params = make_params()
    opt, sched = build(params)
    buffer = io.BytesIO()
    for k, g in enumerate(grads):
        set_grads(params, g)
        opt.step()
        sched.step()
        if k + 1 == SAVE_AT:
            torch.save(
                {"params": [p.detach() for p in params], "opt": opt.state_dict(),
                 "sched": sched.state_dict()},
                buffer,
            )  # fmt: skip
    buffer.seek(0)
    ckpt = torch.load(buffer, weights_only=True)
    assert "initial_lr" in ckpt["opt"]["param_groups"][0]
    resumed = [p.clone().requires_grad_() for p in ckpt["params"]]
    opt2, sched2 = build(resumed)
    opt2.load_state_dict(ckpt["opt"])
    sched2.load_state_dict(ckpt["sched"])
    for g in grads[SAVE_AT:]:
        set_grads(resumed, g)
        opt2.step()
        sched2.step()
    for p, q in zip(params, resumed):
        assert torch.equal(p, q)
        for key in opt.state[p]:
            assert torch.equal(opt.state[p][key], opt2.state[q][key]), key
