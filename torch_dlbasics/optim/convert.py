"""Checkpoints of the five optimizers to and from their ``torch.optim`` counterparts.

State keys (``optimizer.state_dict()["state"][i]``) and how they map to ``torch.optim``:

==========================  ==============================  =========================================
ours                        key(s)                          torch.optim counterpart
==========================  ==============================  =========================================
SGD (momentum 0)            (no state)                      ``SGD(momentum=0)``: no state
SGD, Momentum, Nesterov     ``v``                           ``SGD(momentum>0)``: ``momentum_buffer =
                                                            -v / lr``
AdaGrad (``Adagrad``)       ``step``, ``sum`` (= book h)    ``Adagrad``: same keys, same values
Adam, AdamW                 ``step``, ``exp_avg`` (= m),    ``Adam``/``AdamW``: same keys, same values
                            ``exp_avg_sq`` (= v),
                            ``max_exp_avg_sq`` (amsgrad)
==========================  ==============================  =========================================

The param-group keys are torch's (plus Adam's ``eps_after_bias_correction``), so a group moves
as it is; what needs converting is the book's velocity (lr inside it) and Adam's eps placement.
:func:`to_torch` / :func:`from_torch` do that and refuse what has no counterpart. An AdaGrad
state dict of either side loads directly into the other.

>>> import torch
>>> from torch_dlbasics.optim import Momentum
>>> from torch_dlbasics.optim.convert import from_torch, to_torch
>>> w = torch.nn.Parameter(torch.ones(2))
>>> ours = Momentum([w], lr=0.1, momentum=0.9)
>>> w.grad = torch.ones(2)
>>> _ = ours.step()
>>> theirs = torch.optim.SGD([w], lr=0.1, momentum=0.9)
>>> theirs.load_state_dict(to_torch(ours))
>>> theirs.state[w]["momentum_buffer"]
tensor([1., 1.])
>>> ours.load_state_dict(from_torch(ours, theirs.state_dict()))
>>> ours.state[w]["v"]
tensor([-0.1000, -0.1000])
"""

from __future__ import annotations

import copy
from typing import Any

from torch import Tensor
from torch.optim import Optimizer

from ._hyperparameters import scalar_value
from .adagrad import AdaGrad
from .adam import Adam
from .sgd import SGD

__all__ = ["from_torch", "momentum_buffer_to_v", "to_torch", "v_to_momentum_buffer"]

_SUPPORTED = "torch.optim.SGD, Adagrad, Adam and AdamW"


def v_to_momentum_buffer(v: Tensor, lr: Any) -> Tensor:
    """Torch's ``momentum_buffer`` from the book's velocity: ``buf = -v / lr`` (constant lr)."""
    lr = scalar_value(lr)
    if lr == 0:
        raise ValueError(
            "cannot convert a velocity to a momentum_buffer at lr=0 (buf = -v / lr); "
            "convert at a step where lr > 0"
        )
    return v / -lr


def momentum_buffer_to_v(buf: Tensor, lr: Any) -> Tensor:
    """The book's velocity from torch's ``momentum_buffer``: ``v = -lr * buf`` (constant lr).

    Refuses ``lr == 0``: ``v`` would be 0 and the momentum lost (the start of a warm-up)."""
    lr = scalar_value(lr)
    if lr == 0:
        raise ValueError(
            "cannot convert a momentum_buffer to a velocity at lr=0 (v = -lr * buf would "
            "lose the momentum); convert at a step where lr > 0"
        )
    return buf * -lr


def _kind(optimizer: Optimizer) -> str:
    for cls, kind in ((SGD, "SGD"), (AdaGrad, "AdaGrad"), (Adam, "Adam")):
        if isinstance(optimizer, cls):
            return kind
    raise TypeError(f"expected a torch_dlbasics.optim optimizer, got {type(optimizer).__name__}")


def to_torch(optimizer: Optimizer) -> dict[str, Any]:
    """A state dict of ``optimizer`` (ours) that loads into its torch.optim counterpart.

    SGD, Momentum, Nesterov -> ``torch.optim.SGD``; AdaGrad -> ``torch.optim.Adagrad``;
    Adam -> ``torch.optim.Adam`` (``torch.optim.AdamW`` when ``decoupled_weight_decay``).
    Raises ``ValueError`` where torch has no equivalent: Adam with a book-form ``eps > 0``
    (torch adds eps after bias correction; build ours with ``eps_after_bias_correction=True``),
    a velocity at ``lr == 0``.
    """
    kind = _kind(optimizer)
    sd = optimizer.state_dict()
    groups = []
    for g in sd["param_groups"]:
        group = {k: v for k, v in g.items() if k != "eps_after_bias_correction"}
        if kind == "Adam" and g["eps"] != 0 and not g["eps_after_bias_correction"]:
            raise ValueError(
                "Adam with the book's eps (added before bias correction) has no torch.optim "
                "equivalent; use eps=0 or eps_after_bias_correction=True"
            )
        groups.append(group)
    lr_of = {pid: g["lr"] for g in sd["param_groups"] for pid in g["params"]}
    state: dict[Any, dict[str, Any]] = {}
    for pid, entry in sd["state"].items():
        if kind == "SGD":
            if "v" in entry:
                state[pid] = {"momentum_buffer": v_to_momentum_buffer(entry["v"], lr_of[pid])}
        else:
            state[pid] = {k: v.clone() if isinstance(v, Tensor) else v for k, v in entry.items()}
    return {"state": state, "param_groups": copy.deepcopy(groups)}


_MARKS = {
    # keys a torch group of the counterpart always has, and keys that mark another class
    "SGD": ({"lr", "momentum", "nesterov"}, {"alpha", "centered", "betas", "lr_decay"}),
    "AdaGrad": ({"lr", "lr_decay", "initial_accumulator_value", "eps"}, {"betas", "momentum"}),
    "Adam": ({"lr", "betas", "eps", "amsgrad"}, {"momentum_decay", "momentum", "lr_decay"}),
}
_STATE = {
    "SGD": {"momentum_buffer"},
    "AdaGrad": {"step", "sum"},
    "Adam": {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"},
}


def from_torch(optimizer: Optimizer, state_dict: dict[str, Any]) -> dict[str, Any]:
    """A torch.optim counterpart's ``state_dict`` made loadable into ``optimizer`` (ours).

    Torch's hyperparameters carry over with their meaning (``dampening``, ``nesterov``,
    ``lr_decay``, ``initial_accumulator_value`` included); Adam's torch eps is mapped with
    ``eps_after_bias_correction=True``, so the maths stays exactly torch's. Raises
    ``ValueError`` for a state dict of another torch class (``RAdam``, ``NAdam``, ``Adamax``,
    ...) and for a momentum buffer at ``lr == 0``.
    """
    kind = _kind(optimizer)
    needs, marks = _MARKS[kind]
    groups = []
    for i, g in enumerate(state_dict["param_groups"]):
        keys = set(g) - {"params"}
        if not needs <= keys or keys & marks:
            raise ValueError(
                f"param group {i} (hyperparameters {sorted(keys)}) is not from the torch "
                f"counterpart of {kind}; from_torch converts {_SUPPORTED} state dicts"
            )
        group = dict(g)
        if kind == "Adam":
            # torch.optim.AdamW before torch 2.6 saves no such flag: keep the target's.
            target = optimizer.param_groups[min(i, len(optimizer.param_groups) - 1)]
            group.setdefault("decoupled_weight_decay", target["decoupled_weight_decay"])
            group["betas"] = tuple(g["betas"])
            group["eps_after_bias_correction"] = True
        groups.append(group)
    lr_of = {pid: g["lr"] for g in state_dict["param_groups"] for pid in g["params"]}
    state: dict[Any, dict[str, Any]] = {}
    for pid, entry in state_dict["state"].items():
        if not set(entry) <= _STATE[kind]:
            raise ValueError(
                f"state of parameter {pid} has keys {sorted(entry)}: not from the torch "
                f"counterpart of {kind}; from_torch converts {_SUPPORTED} state dicts"
            )
        if kind == "SGD":
            if entry.get("momentum_buffer") is not None:
                buf = entry["momentum_buffer"]
                state[pid] = {"v": momentum_buffer_to_v(buf, lr_of[pid])}
        else:
            state[pid] = {k: v.clone() if isinstance(v, Tensor) else v for k, v in entry.items()}
    return {"state": state, "param_groups": copy.deepcopy(groups)}
