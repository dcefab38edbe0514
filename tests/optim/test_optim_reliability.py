"""The promises, each tested for all the optimizers and paths: a failing step changes nothing
(every failure that can happen inside ``step()`` happens before the first write, and a retry
after fixing the cause equals a clean step); a failed load changes nothing; torch's load-hook
protocol in torch's order; second loads, copies and old checkpoints load."""

from __future__ import annotations

import copy
import pickle
from typing import Any, Callable

import pytest
import torch
from optim_cases import make_params

from torch_dlbasics.optim import SGD, AdaGrad, Adam, AdamW, Momentum, Nesterov, _fused
from torch_dlbasics.optim.convert import from_torch

ALL = [SGD, Momentum, Nesterov, AdaGrad, Adam, AdamW]
HP: dict[type, dict[str, Any]] = {
    SGD: {"lr": 0.1, "weight_decay": 0.1},
    Momentum: {"lr": 0.1, "dampening": 0.1, "maximize": True},
    Nesterov: {"lr": 0.1, "weight_decay": 0.1},
    AdaGrad: {"lr": 0.1, "lr_decay": 0.1, "weight_decay": 0.1},
    Adam: {"lr": 0.01, "amsgrad": True, "weight_decay": 0.1},
    AdamW: {"lr": 0.01},
}
MAIN_STATE = {SGD: None, Momentum: "v", Nesterov: "v", AdaGrad: "sum", Adam: "exp_avg", AdamW: "exp_avg_sq"}  # fmt: skip
PATHS = {"per-tensor": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


@pytest.fixture(autouse=True)
def _fused_on_eager_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch._dynamo

    monkeypatch.setattr(_fused, "BACKEND", "eager")
    torch._dynamo.reset()


def build(cls: type, params: list[torch.Tensor], **flags: Any) -> torch.optim.Optimizer:
    """Two groups: a naive step would update group 0 before reaching a fault in group 1."""
    return cls([{"params": params[:2]}, {"params": params[2:], "lr": 0.05}], **HP[cls], **flags)


def grads(params: list[torch.Tensor], seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)


def everything(opt: torch.optim.Optimizer, params: list[torch.Tensor]) -> Any:
    """Deep copies of every parameter, gradient and state entry (with their dtypes)."""
    return (
        [p.detach().clone() for p in params],
        [None if p.grad is None else p.grad.clone() for p in params],
        copy.deepcopy(opt.state_dict()),
    )


def assert_identical(a: Any, b: Any) -> None:
    (pa, ga, sa), (pb, gb, sb) = a, b
    for x, y in zip(pa, pb):
        assert x.dtype == y.dtype and torch.equal(x, y)
    for x, y in zip(ga, gb):
        assert (x is None) == (y is None)
        if x is not None:
            assert x.layout == y.layout
            assert torch.equal(x.to_dense(), y.to_dense())
    for x, y in zip(sa["param_groups"], sb["param_groups"]):
        assert x.keys() == y.keys()
        for k in x:
            same = torch.equal(x[k], y[k]) if torch.is_tensor(x[k]) else x[k] == y[k]
            assert same, k
    assert sa["state"].keys() == sb["state"].keys()
    for pid in sa["state"]:
        assert sa["state"][pid].keys() == sb["state"][pid].keys()
        for k, v in sa["state"][pid].items():
            w = sb["state"][pid][k]
            assert type(v) is type(w)
            if torch.is_tensor(v):
                assert (v.dtype, v.shape, v.device) == (w.dtype, w.shape, w.device), (pid, k)
                assert v.is_meta or torch.equal(v, w), (pid, k)  # (meta tensors hold no data)


# --------------------------------------------------------------------------------------------
# A failing step changes nothing (issue 12 item 12).
# Each fault: (name, applies to, inject(opt, params) -> undo, error, message).
# --------------------------------------------------------------------------------------------
def _set_group(key: str, value: Any) -> Callable:
    def inject(opt: torch.optim.Optimizer, params: list[torch.Tensor]) -> Callable:
        group = opt.param_groups[1]
        old = group[key]
        group[key] = value

        def undo() -> None:
            group[key] = old

        return undo

    return inject


def _sparse_grad(opt: torch.optim.Optimizer, params: list[torch.Tensor]) -> Callable:
    p = params[-1]
    dense = p.grad
    p.grad = dense.to_sparse()
    return lambda: setattr(p, "grad", dense)


def _grad_data(change: Callable[[torch.Tensor], torch.Tensor]) -> Callable:
    def inject(opt: torch.optim.Optimizer, params: list[torch.Tensor]) -> Callable:
        g = params[-1].grad
        right = g.data
        g.data = change(right)

        def undo() -> None:
            g.data = right

        return undo

    return inject


def _state_entry(change: Callable[[Any], Any], key: str = "main") -> Callable:
    def inject(opt: torch.optim.Optimizer, params: list[torch.Tensor]) -> Callable:
        state = opt.state[params[-1]]
        name = MAIN_STATE[type(opt)] if key == "main" else key
        old = state[name]
        new = change(old)
        if new is None:
            del state[name]
        else:
            state[name] = new

        def undo() -> None:
            state[name] = old

        return undo

    return inject


STATEFUL = [Momentum, Nesterov, AdaGrad, Adam, AdamW]
STEPPED = [AdaGrad, Adam, AdamW]
FAULTS = [
    ("lr tensor of 2 elements", ALL, _set_group("lr", torch.tensor([0.1, 0.2])), ValueError, "Tensor lr must be 1-element"),
    ("lr a string", ALL, _set_group("lr", "0.1"), TypeError, "'lr' must be a number"),
    ("momentum None", [SGD, Momentum, Nesterov], _set_group("momentum", None), TypeError, "'momentum' must be a number"),
    ("eps a string", STEPPED, _set_group("eps", "1e-8"), TypeError, "'eps' must be a number"),
    ("betas not a pair", [Adam, AdamW], _set_group("betas", (0.9,)), TypeError, "'betas' must be a pair"),
    ("sparse gradient", ALL, _sparse_grad, RuntimeError, "does not support sparse gradients"),
    ("gradient of another shape", ALL, _grad_data(lambda g: torch.zeros(5, dtype=g.dtype)), RuntimeError, "the gradient of parameter 3 is"),
    ("gradient of another dtype", ALL, _grad_data(lambda g: g.float()), RuntimeError, "the gradient of parameter 3 is torch.float32"),
    ("state of another dtype", STATEFUL, _state_entry(lambda s: s.float()), RuntimeError, "of parameter 3 is torch.float32"),
    ("state of another shape", STATEFUL, _state_entry(lambda s: s.reshape(-1)[:2].clone()), RuntimeError, r"of parameter 3 is torch.float64 \(2,\)"),
    ("state on another device", STATEFUL, _state_entry(lambda s: s.to("meta")), RuntimeError, "on meta"),
    ("state not a tensor", STATEFUL, _state_entry(lambda s: s.tolist()), RuntimeError, "is a list, not a tensor"),
    ("state entry missing", [AdaGrad, Adam, AdamW], _state_entry(lambda s: None), RuntimeError, "lacks"),
    ("step a number", STEPPED, _state_entry(lambda s: 3, "step"), RuntimeError, "is a int, not a tensor"),
    ("step of another shape", STEPPED, _state_entry(lambda s: s.reshape(1), "step"), RuntimeError, "expected a 0-dim floating point tensor"),
]  # fmt: skip


FAULT_CASES = [
    pytest.param(cls, inject, error, message, id=f"{fault}-{cls.__name__}")
    for fault, applies, inject, error, message in FAULTS
    for cls in ALL
    if cls in applies  # (an optimizer without that hyperparameter or state has no such fault)
]


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize(("cls", "inject", "error", "message"), FAULT_CASES)
def test_a_failing_step_changes_nothing_and_a_retry_equals_a_clean_step(
    cls: type,
    inject: Callable,
    error: type,
    message: str,
    path: str,
) -> None:
    params, twins = make_params(), make_params()
    opt, twin = build(cls, params, **PATHS[path]), build(cls, twins, **PATHS[path])
    for k in range(2):  # state exists
        grads(params, k)
        grads(twins, k)
        opt.step()
        twin.step()
    grads(params, 7)
    grads(twins, 7)
    undo = inject(opt, params)
    before = everything(opt, params)
    with pytest.raises(error, match=message):
        opt.step()
    assert_identical(before, everything(opt, params))
    undo()
    opt.step()  # the retry
    twin.step()  # a clean step from the same point
    assert_identical(everything(twin, twins), everything(opt, params))


@pytest.mark.parametrize("path", ["per-tensor", "foreach"])
@pytest.mark.parametrize("cls", STATEFUL)  # (SGD without momentum has no state)
def test_a_failed_state_allocation_is_undone(cls: type, path: str, monkeypatch) -> None:
    """An allocation that fails while creating state (out of memory) leaves no partial state:
    the state entries created before it are removed again."""
    params = make_params()
    opt = build(cls, params, **PATHS[path])
    for p in params:
        opt.state.pop(p, None)  # AdaGrad creates its state in __init__
    grads(params, 0)
    before = everything(opt, params)
    calls = []
    real = type(opt)._init_state

    def fails_second(self: Any, *args: Any) -> None:
        calls.append(1)
        if len(calls) == 2:
            raise MemoryError("simulated")
        real(self, *args)

    monkeypatch.setattr(type(opt), "_init_state", fails_second)
    with pytest.raises(MemoryError):
        opt.step()
    assert_identical(before, everything(opt, params))
    assert len(opt.state) == 0


# --------------------------------------------------------------------------------------------
# Loading: torch's hook protocol, second loads and copies, old checkpoints (items 13, 14).
# --------------------------------------------------------------------------------------------
def _trained(cls: type, **kw: Any) -> tuple[torch.optim.Optimizer, list[torch.Tensor]]:
    params = make_params()
    opt = build(cls, params, **kw)
    for k in range(3):
        grads(params, k)
        opt.step()
    return opt, params


def _twin(opt: torch.optim.Optimizer, params: list[torch.Tensor]) -> list[torch.Tensor]:
    """Where a copy of (opt, params) ends after :func:`_continue`."""
    c = copy.deepcopy({"opt": opt, "params": params})
    return _continue(c["opt"], c["params"])


def _continue(opt: torch.optim.Optimizer, params: list[torch.Tensor]) -> list[torch.Tensor]:
    for k in range(3, 6):
        grads(params, k)
        opt.step()
    return [p.detach().clone() for p in params]


@pytest.mark.parametrize("cls", ALL)
def test_load_pre_hooks_run_first_and_their_output_is_validated(cls: type) -> None:
    """Issue 12 item 13: a migration pre-hook used to never run (validation came first)."""
    params = make_params()
    torch_cls = {AdaGrad: torch.optim.Adagrad, Adam: torch.optim.Adam, AdamW: torch.optim.AdamW}
    theirs = torch_cls.get(cls, torch.optim.SGD)(params, lr=0.1, **(
        {"momentum": 0.9, "nesterov": cls is Nesterov} if cls in (Momentum, Nesterov) else {}
    ))  # fmt: skip
    grads(params, 0)
    theirs.step()
    opt = cls(params)
    calls: list[str] = []
    migration = opt.register_load_state_dict_pre_hook(
        lambda o, sd: calls.append("pre") or from_torch(o, sd)
    )
    opt.register_load_state_dict_post_hook(lambda o: calls.append("post"))
    opt.load_state_dict(theirs.state_dict())
    assert calls == ["pre", "post"]
    migration.remove()
    # a pre-hook whose output does not fit is refused after it ran, and nothing changes
    before = copy.deepcopy(opt.state_dict())
    opt.register_load_state_dict_pre_hook(
        lambda o, sd: calls.append("pre") or {**sd, "param_groups": []}
    )
    with pytest.raises(ValueError, match="parameter groups"):
        opt.load_state_dict(opt.state_dict())
    assert calls == ["pre", "post", "pre"]  # no post hook for a refused load
    assert str(before) == str(opt.state_dict())


@pytest.mark.parametrize("cls", ALL)
def test_a_state_dict_post_hook_adding_a_key_leaves_it_loadable(cls: type) -> None:
    """Issue 12 item 13: a top-level key added by a post-hook made our own checkpoint
    unloadable into our own optimizer."""
    opt, params = _trained(cls)
    opt.register_state_dict_post_hook(lambda o, sd: {**sd, "saved_by": "me"})
    sd = copy.deepcopy(opt.state_dict())
    assert sd["saved_by"] == "me"
    expected = _twin(opt, params)
    opt.load_state_dict(sd)
    assert all(torch.equal(a, b) for a, b in zip(_continue(opt, params), expected))


@pytest.mark.parametrize("cls", ALL)
def test_a_failing_pre_hook_changes_nothing(cls: type) -> None:
    opt, _params = _trained(cls)
    before = copy.deepcopy(opt.state_dict())

    def broken(o: Any, sd: Any) -> None:
        raise KeyError("a broken migration")

    opt.register_load_state_dict_pre_hook(broken)
    with pytest.raises(KeyError):
        opt.load_state_dict(copy.deepcopy(before))
    assert str(before) == str(opt.state_dict())


@pytest.mark.parametrize("copier", ["same", "deepcopy", "pickle"])
@pytest.mark.parametrize("cls", ALL)
def test_second_load_and_loads_into_copies_work(cls: type, copier: str) -> None:
    """Issue 13 item 1: torch's loader adds 'differentiable' to the defaults; our check then
    demanded it in every saved group, so a second load (accelerate's resume) failed."""
    opt, _params = _trained(cls)
    sd = copy.deepcopy(opt.state_dict())
    target = {"same": lambda o: o, "deepcopy": copy.deepcopy, "pickle": lambda o: pickle.loads(pickle.dumps(o))}[copier](opt)  # fmt: skip
    target.load_state_dict(sd)
    target.load_state_dict(copy.deepcopy(sd))  # and again
    target.load_state_dict(target.state_dict())
    assert "differentiable" in target.defaults


@pytest.mark.parametrize("cls", [AdaGrad, Adam, AdamW])
def test_an_int_step_of_torch_before_1_12_loads_and_continues(cls: type) -> None:
    """Issue 12 item 14: torch itself loads such checkpoints; ours failed."""
    opt, params = _trained(cls)
    sd = copy.deepcopy(opt.state_dict())
    expected = _twin(opt, params)
    for entry in sd["state"].values():
        entry["step"] = int(entry["step"])
    fresh = build(cls, params)
    fresh.load_state_dict(sd)
    for state in fresh.state.values():
        assert torch.is_tensor(state["step"]) and state["step"].dtype == torch.float32
    assert all(torch.equal(a, b) for a, b in zip(_continue(fresh, params), expected))


@pytest.mark.parametrize(
    ("cls", "key"), [(AdaGrad, "sum"), (Adam, "exp_avg"), (AdamW, "step"), (Momentum, "v")]
)
def test_missing_state_keys_are_refused_with_a_clear_message(cls: type, key: str) -> None:
    """Issue 12 item 14: an Adam state without exp_avg was accepted; every later step raised
    ``KeyError``."""
    opt, _ = _trained(cls)
    sd = copy.deepcopy(opt.state_dict())
    del sd["state"][0][key]
    if not sd["state"][0]:
        sd["state"][0]["momentum_buffer"] = torch.zeros(1)  # a torch key in its place
    before = copy.deepcopy(opt.state_dict())
    with pytest.raises(ValueError, match=rf"state of parameter 0 (lacks \['{key}'\]|has keys)"):
        opt.load_state_dict(sd)
    assert str(before) == str(opt.state_dict())


NEW_KEYS = {"dampening", "nesterov", "differentiable", "fused", "lr_decay", "initial_accumulator_value", "capturable"}  # fmt: skip


@pytest.mark.parametrize("cls", ALL)
def test_a_checkpoint_from_before_torchs_signature_loads(cls: type) -> None:
    """Our checkpoints from before torch's signatures lack the new keys: they get the values
    that reproduce what they meant (no dampening, no lr_decay, ...), as torch's __setstate__
    fills its own new keys."""
    params = make_params()
    opt = cls(params, **{k: v for k, v in HP[cls].items() if k not in NEW_KEYS})  # what existed
    for k in range(3):
        grads(params, k)
        opt.step()
    sd = copy.deepcopy(opt.state_dict())
    for group in sd["param_groups"]:
        for key in NEW_KEYS:
            group.pop(key, None)
        if cls is SGD:
            group.pop("momentum")  # our plain SGD had none
    expected = _twin(opt, params)
    fresh = cls(params)
    fresh.load_state_dict(sd)
    assert fresh.param_groups[0].get("nesterov", False) == (cls is Nesterov)
    assert all(torch.equal(a, b) for a, b in zip(_continue(fresh, params), expected))
