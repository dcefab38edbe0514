"""Shared set-up for the optimizer tests: the cases (ours, torch counterpart, hyperparameters),
the parameters (non-contiguous, 0-dim, several groups) and the gradient sequence (with None)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import pytest
import torch

from torch_dlbasics.optim import SGD, AdaGrad, Adam, AdamW, Momentum, Nesterov

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
    ),
]

# float64 parity: a few ulps per step of accumulated rounding, far below any formula difference
RTOL, ATOL = 1e-12, 1e-14


@dataclass
class Case:
    kind: str  # the reference's name for the update rule
    ours: type
    groups: list[dict[str, Any]]  # hyperparameters of our two param groups
    torch_cls: Optional[type] = None  # the torch built-in that must agree (None: book only)
    torch_groups: list[dict[str, Any]] = field(default_factory=list)
    common: dict[str, Any] = field(default_factory=dict)  # constructor arguments of both
    foreach_refused: bool = False  # torch refuses foreach=True here (Adam's tensor lr/betas)

    def make_ours(self, params: list[torch.Tensor], **kw: Any) -> torch.optim.Optimizer:
        return self.ours(param_groups(params, self.groups), **_copy(self.common), **kw)

    def make_torch(self, params: list[torch.Tensor]) -> torch.optim.Optimizer:
        assert self.torch_cls is not None
        return self.torch_cls(param_groups(params, self.torch_groups), **_copy(self.common))


def _copy(hps: dict[str, Any]) -> dict[str, Any]:
    """Tensor hyperparameters cloned: each optimizer gets its own (a scheduler edits in place)."""
    return {
        k: v.clone() if torch.is_tensor(v) else tuple(map(_clone, v)) if k == "betas" else v
        for k, v in hps.items()
    }


def _clone(x: Any) -> Any:
    return x.clone() if torch.is_tensor(x) else x


def param_groups(params: list[torch.Tensor], hps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Group 0: the non-contiguous matrix and a vector; group 1: the 0-dim scalar and a matrix."""
    return [{"params": params[:2], **_copy(hps[0])}, {"params": params[2:], **_copy(hps[1])}]


_F64 = {"dtype": torch.float64}  # torch computes its step size in the tensors' dtype
_SGD1 = {"lr": 0.05, "weight_decay": 0.1, "maximize": True}
_MOM0 = {"lr": 0.1, "momentum": 0.9}
_MOM1 = {"lr": 0.03, "momentum": 0.5, "weight_decay": 0.01, "maximize": True}
_ADAGRAD = [
    {"lr": 0.1, "eps": 1e-7},
    {"lr": 0.3, "eps": 1e-3, "weight_decay": 0.05, "maximize": True},
]
_ADAM_EPS0 = [
    {"lr": 0.01, "eps": 0.0},
    {
        "lr": 0.02,
        "betas": (0.8, 0.99),
        "eps": 0.0,
        "weight_decay": 0.1,
        "amsgrad": True,
        "maximize": True,
    },
]
_ADAM_TORCH_EPS = [
    {"lr": 0.01, "eps": 1e-3},
    {"lr": 0.05, "betas": (0.5, 0.9), "eps": 1e-2, "amsgrad": True},
]
_ADAMW = [
    {"lr": 0.01, "weight_decay": 0.1, "eps": 1e-8},
    {"lr": 0.03, "weight_decay": 0.01, "eps": 0.0, "amsgrad": True, "maximize": True},
]

_DAMPENED = {"lr": 0.03, "momentum": 0.5, "dampening": 0.3, "weight_decay": 0.01, "maximize": True}
_NESTEROV = {"lr": 0.03, "momentum": 0.5, "nesterov": True, "weight_decay": 0.01}
_ADAGRAD_TORCH = [
    {"lr": 0.1, "eps": 1e-7, "lr_decay": 0.05},
    {"lr": 0.3, "eps": 1e-3, "lr_decay": 0.5, "weight_decay": 0.05, "maximize": True},
]
_TENSOR_LR = [
    {"lr": torch.tensor(0.01, **_F64), "eps": 1e-3},
    {"lr": torch.tensor(0.05, **_F64), "betas": (0.5, 0.9), "eps": 1e-2, "amsgrad": True},
]
_TENSOR_BETAS = [
    {"lr": 0.01, "betas": (torch.tensor(0.8, **_F64), torch.tensor(0.99, **_F64)), "eps": 1e-3},
    {
        "lr": torch.tensor(0.02, **_F64),
        "betas": (torch.tensor(0.5, **_F64), torch.tensor(0.9, **_F64)),
        "eps": 0.0,
    },
]

CASES: dict[str, Case] = {
    "sgd": Case("sgd", SGD, [{"lr": 0.1}, _SGD1], torch.optim.SGD, [{"lr": 0.1}, _SGD1]),
    "sgd_tensor_lr": Case(
        "sgd",
        SGD,
        [{"lr": torch.tensor(0.1, **_F64)}, {**_SGD1, "lr": torch.tensor(0.05, **_F64)}],
        torch.optim.SGD,
        [{"lr": torch.tensor(0.1, **_F64)}, {**_SGD1, "lr": torch.tensor(0.05, **_F64)}],
    ),
    # SGD with momentum is the book's Momentum (torch's SGD with momentum), dampening included.
    "sgd_momentum": Case("momentum", SGD, [_MOM0, _DAMPENED], torch.optim.SGD, [_MOM0, _DAMPENED]),
    "sgd_nesterov": Case(
        "nesterov",
        SGD,
        [{**_MOM0, "nesterov": True}, _NESTEROV],
        torch.optim.SGD,
        [{**_MOM0, "nesterov": True}, _NESTEROV],
    ),
    "momentum": Case("momentum", Momentum, [_MOM0, _MOM1], torch.optim.SGD, [_MOM0, _MOM1]),
    "nesterov": Case(
        "nesterov",
        Nesterov,
        [_MOM0, _MOM1],
        torch.optim.SGD,
        [{**_MOM0, "nesterov": True}, {**_MOM1, "nesterov": True}],
    ),
    "momentum_dampening": Case(
        "momentum", Momentum, [_MOM0, _DAMPENED], torch.optim.SGD, [_MOM0, _DAMPENED]
    ),
    "adagrad": Case("adagrad", AdaGrad, _ADAGRAD, torch.optim.Adagrad, _ADAGRAD),
    # torch's lr_decay and initial_accumulator_value (the latter a constructor argument: torch's
    # constructor initializes every group's state with it)
    "adagrad_torch_args": Case(
        "adagrad",
        AdaGrad,
        _ADAGRAD_TORCH,
        torch.optim.Adagrad,
        _ADAGRAD_TORCH,
        common={"initial_accumulator_value": 0.2},
    ),
    "adagrad_tensor_lr": Case(
        "adagrad",
        AdaGrad,
        [{**g, "lr": torch.tensor(g["lr"], **_F64)} for g in _ADAGRAD],
        torch.optim.Adagrad,
        [{**g, "lr": torch.tensor(g["lr"], **_F64)} for g in _ADAGRAD],
    ),
    "adam_eps0": Case("adam", Adam, _ADAM_EPS0, torch.optim.Adam, _ADAM_EPS0),
    "adam_torch_eps": Case(
        "adam",
        Adam,
        [{**g, "eps_after_bias_correction": True} for g in _ADAM_TORCH_EPS],
        torch.optim.Adam,
        _ADAM_TORCH_EPS,
    ),
    "adamw": Case(
        "adam",
        Adam,
        [{**g, "decoupled_weight_decay": True, "eps_after_bias_correction": True} for g in _ADAMW],
        torch.optim.AdamW,
        _ADAMW,
    ),
    "adamw_class": Case(
        "adam",
        AdamW,
        [{**g, "eps_after_bias_correction": True} for g in _ADAMW],
        torch.optim.AdamW,
        _ADAMW,
    ),
    "adam_tensor_lr": Case(
        "adam",
        Adam,
        [{**g, "eps_after_bias_correction": True} for g in _TENSOR_LR],
        torch.optim.Adam,
        _TENSOR_LR,
        foreach_refused=True,
    ),
    "adam_tensor_betas": Case(
        "adam",
        Adam,
        [{**g, "eps_after_bias_correction": True} for g in _TENSOR_BETAS],
        torch.optim.Adam,
        _TENSOR_BETAS,
        foreach_refused=True,
    ),
    # The book's own Adam (eps=1e-7 before bias correction): no torch form, book only.
    "adam_book": Case(
        "adam",
        Adam,
        [
            {"lr": 0.01},
            {"lr": 0.05, "betas": (0.8, 0.99), "eps": 1e-3, "weight_decay": 0.1, "amsgrad": True},
        ],
    ),
}
TORCH_CASES = [name for name, c in CASES.items() if c.torch_cls is not None]


def make_params(
    device: str = "cpu", dtype: torch.dtype = torch.float64, seed: int = 0
) -> list[torch.Tensor]:
    """[non-contiguous (4, 6), (4,), 0-dim, (3, 3)] leaf parameters, the same for every seed use."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(6, 4, generator=gen, dtype=torch.float64).t()
    b = torch.randn(4, generator=gen, dtype=torch.float64)
    c = torch.randn((), generator=gen, dtype=torch.float64)
    d = torch.randn(3, 3, generator=gen, dtype=torch.float64)
    out = [x.to(device=device, dtype=dtype).requires_grad_() for x in (a, b, c, d)]
    assert not out[0].is_contiguous() and out[2].dim() == 0
    return out


def grad_sequence(steps: int = 24, seed: int = 1) -> list[list[Optional[np.ndarray]]]:
    """Per step, per parameter a float64 gradient, or None: d at step 0 (lazy state starts
    late), c at step 7, a at steps 10 and 11 (its Adam step count lags behind)."""
    rng = np.random.default_rng(seed)
    shapes = [(4, 6), (4,), (), (3, 3)]
    seq = []
    for k in range(steps):
        grads: list[Optional[np.ndarray]] = [rng.standard_normal(s) for s in shapes]
        if k == 0:
            grads[3] = None
        if k == 7:
            grads[2] = None
        if k in (10, 11):
            grads[0] = None
        seq.append(grads)
    return seq


def set_grads(params: list[torch.Tensor], grads: list[Optional[np.ndarray]]) -> None:
    for p, g in zip(params, grads):
        p.grad = None if g is None else torch.as_tensor(g).to(device=p.device, dtype=p.dtype)


def snapshot(opt: torch.optim.Optimizer) -> dict[str, Any]:
    """Deep copy of the optimizer's param groups and state (to prove nothing changed)."""
    import copy

    return copy.deepcopy(opt.state_dict())


def assert_same_snapshot(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    for pid in a["state"]:
        assert a["state"][pid].keys() == b["state"][pid].keys()
        for key in a["state"][pid]:
            assert torch.equal(a["state"][pid][key], b["state"][pid][key]), (pid, key)


def run(make: Callable[[list[torch.Tensor]], torch.optim.Optimizer], device: str, steps: int):
    """Build params and optimizer, yield (params, optimizer) after each step of grad_sequence."""
    params = make_params(device)
    opt = make(params)
    for grads in grad_sequence(steps):
        set_grads(params, grads)
        opt.step()
        yield params, opt
