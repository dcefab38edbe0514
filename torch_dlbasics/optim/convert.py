"""Checkpoints for the five optimizers: validation, conversion to and from ``torch.optim``.

Also home of the bookkeeping the five ``step()`` methods share (collecting the gradients with
the sparse check, the gradient with maximize / weight decay applied, the reused scratch buffer,
the choice of code path), so that each optimizer file holds only its own formula.

State keys (``optimizer.state_dict()["state"][i]``) and how they map to ``torch.optim``:

=============  ==============================  =====================================================
ours           key(s)                          torch.optim counterpart
=============  ==============================  =====================================================
SGD            (no state)                      ``SGD(momentum=0)``: no state
Momentum       ``v``                           ``SGD(momentum>0)``: ``momentum_buffer = -v / lr``
Nesterov       ``v``                           ``SGD(nesterov=True)``: ``momentum_buffer = -v / lr``
AdaGrad        ``step``, ``sum`` (= book h)    ``Adagrad``: same keys, same values
Adam           ``step``, ``exp_avg`` (= m),    ``Adam``/``AdamW``: same keys, same values
               ``exp_avg_sq`` (= v),
               ``max_exp_avg_sq`` (amsgrad)
=============  ==============================  =====================================================

The param-group keys differ (torch has ``dampening``, ``lr_decay``, ``capturable``, ...), so a
state dict is moved with :func:`to_torch` / :func:`from_torch`, which also check that the
hyperparameters mean the same thing in both.

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

import torch
from torch import Tensor
from torch.optim import Optimizer

__all__ = [
    "check_state_dict",
    "from_torch",
    "momentum_buffer_to_v",
    "to_torch",
    "v_to_momentum_buffer",
]


# --------------------------------------------------------------------------------------------
# Momentum / Nesterov: the book keeps lr inside the velocity, torch keeps it outside.
# --------------------------------------------------------------------------------------------
def v_to_momentum_buffer(v: Tensor, lr: float) -> Tensor:
    """Torch's ``momentum_buffer`` from the book's velocity: ``buf = -v / lr`` (constant lr)."""
    if lr == 0:
        raise ValueError("cannot convert a velocity to a momentum_buffer at lr=0")
    return v / -lr


def momentum_buffer_to_v(buf: Tensor, lr: float) -> Tensor:
    """The book's velocity from torch's ``momentum_buffer``: ``v = -lr * buf`` (constant lr)."""
    return buf * -lr


# --------------------------------------------------------------------------------------------
# Validation before loading (nothing in the live optimizer changes when it fails).
# --------------------------------------------------------------------------------------------
_HYPERPARAMETERS = {
    "lr", "momentum", "dampening", "nesterov", "weight_decay", "maximize", "foreach", "eps",
    "lr_decay", "initial_accumulator_value", "betas", "amsgrad", "decoupled_weight_decay",
    "eps_after_bias_correction", "capturable", "differentiable", "fused",
}  # fmt: skip
"""Param-group keys of the five optimizers and their torch counterparts. Other keys in a
loaded group (``initial_lr``, ``max_lr`` from LR schedulers, ``param_names``, a user's own)
are allowed; a key of another optimizer, or a missing one of ours, is not."""


def check_state_dict(optimizer: Optimizer, state_dict: dict[str, Any], state_keys: Any) -> None:
    """Raise ``ValueError`` unless ``state_dict`` fits ``optimizer``; changes nothing.

    ``state_keys(group) -> set[str]`` gives the per-parameter state keys the optimizer class
    writes for a param group with those hyperparameters.
    """
    name = type(optimizer).__name__
    hint = " (a torch.optim checkpoint? use torch_dlbasics.optim.convert.from_torch)"
    if not isinstance(state_dict, dict) or set(state_dict) != {"state", "param_groups"}:
        raise ValueError(
            f"{name}.load_state_dict: expected a dict with keys 'state' and 'param_groups'"
        )
    groups, saved_groups = optimizer.param_groups, state_dict["param_groups"]
    if len(groups) != len(saved_groups):
        raise ValueError(
            f"{name}.load_state_dict: loaded state dict has {len(saved_groups)} parameter groups, "
            f"the optimizer has {len(groups)}"
        )
    expected_keys = set(optimizer.defaults)
    foreign = _HYPERPARAMETERS - expected_keys  # another optimizer's hyperparameters
    params_by_id: dict[Any, tuple[Tensor, dict[str, Any]]] = {}
    for i, (group, saved) in enumerate(zip(groups, saved_groups)):
        keys = set(saved) - {"params"}
        if not expected_keys <= keys or keys & foreign:
            raise ValueError(
                f"{name}.load_state_dict: param group {i} has hyperparameters {sorted(keys)}, "
                f"{name} has {sorted(expected_keys)}: the state dict comes from a different "
                f"optimizer class{hint}"
            )
        if len(group["params"]) != len(saved["params"]):
            raise ValueError(
                f"{name}.load_state_dict: param group {i} has {len(saved['params'])} parameters in "
                f"the loaded state dict, {len(group['params'])} in the optimizer"
            )
        for p, pid in zip(group["params"], saved["params"]):
            params_by_id[pid] = (p, saved)
    for pid, entry in state_dict["state"].items():
        if pid not in params_by_id:
            raise ValueError(f"{name}.load_state_dict: state for unknown parameter id {pid}")
        p, saved = params_by_id[pid]
        allowed = state_keys(saved)
        if not isinstance(entry, dict) or not set(entry) <= allowed:
            raise ValueError(
                f"{name}.load_state_dict: state of parameter {pid} has keys "
                f"{sorted(entry) if isinstance(entry, dict) else entry!r}, {name} uses "
                f"{sorted(allowed)}: the state dict comes from a different optimizer class{hint}"
            )
        for key, value in entry.items():
            want = () if key == "step" else tuple(p.shape)
            if not isinstance(value, Tensor) or tuple(value.shape) != want:
                got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise ValueError(
                    f"{name}.load_state_dict: state {key!r} of parameter {pid} has shape {got}, "
                    f"expected {want}: different parameter layout"
                )


# --------------------------------------------------------------------------------------------
# Conversion to and from torch.optim state dicts.
# --------------------------------------------------------------------------------------------
def _kind(optimizer: Optimizer) -> str:
    name = type(optimizer).__name__
    if name not in ("SGD", "Momentum", "Nesterov", "AdaGrad", "Adam") or not type(
        optimizer
    ).__module__.startswith("torch_dlbasics"):
        raise TypeError(
            f"expected a torch_dlbasics.optim optimizer, got {type(optimizer).__name__}"
        )
    return name


def to_torch(optimizer: Optimizer) -> dict[str, Any]:
    """A state dict of ``optimizer`` (ours) that loads into its torch.optim counterpart.

    SGD, Momentum, Nesterov -> ``torch.optim.SGD``; AdaGrad -> ``torch.optim.Adagrad``;
    Adam -> ``torch.optim.Adam`` (``torch.optim.AdamW`` when ``decoupled_weight_decay``).
    Raises ``ValueError`` where torch has no equivalent: Adam with a book-form ``eps > 0``
    (torch adds eps after bias correction; build ours with ``eps_after_bias_correction=True``).
    """
    kind = _kind(optimizer)
    sd = optimizer.state_dict()
    groups = []
    for g in sd["param_groups"]:
        common = {
            "params": g["params"],
            "lr": g["lr"],
            "weight_decay": g["weight_decay"],
            "maximize": g["maximize"],
            "foreach": g["foreach"],
            "differentiable": False,
        }
        if kind in ("SGD", "Momentum", "Nesterov"):
            momentum = 0.0 if kind == "SGD" else g["momentum"]
            common.update(momentum=momentum, dampening=0.0, nesterov=kind == "Nesterov", fused=None)
        elif kind == "AdaGrad":
            common.update(eps=g["eps"], lr_decay=0.0, initial_accumulator_value=0.0, fused=None)
        else:
            if g["eps"] != 0 and not g["eps_after_bias_correction"]:
                raise ValueError(
                    "Adam with the book's eps (added before bias correction) has no torch.optim "
                    "equivalent; use eps=0 or eps_after_bias_correction=True"
                )
            common.update(
                betas=g["betas"],
                eps=g["eps"],
                amsgrad=g["amsgrad"],
                capturable=False,
                fused=None,
                decoupled_weight_decay=g["decoupled_weight_decay"],
            )
        groups.append(common)
    lr_of = {pid: g["lr"] for g in sd["param_groups"] for pid in g["params"]}
    state: dict[Any, dict[str, Tensor]] = {}
    for pid, entry in sd["state"].items():
        if kind in ("Momentum", "Nesterov"):
            state[pid] = {"momentum_buffer": v_to_momentum_buffer(entry["v"], lr_of[pid])}
        else:
            state[pid] = {k: v.clone() for k, v in entry.items()}
    return {"state": state, "param_groups": groups}


def from_torch(optimizer: Optimizer, state_dict: dict[str, Any]) -> dict[str, Any]:
    """A torch.optim counterpart's ``state_dict`` made loadable into ``optimizer`` (ours).

    Checks that torch's hyperparameters have a meaning here (``dampening == 0``, the right
    ``nesterov`` flag, ``lr_decay == 0``) and raises ``ValueError`` otherwise. Adam's torch eps is
    mapped with ``eps_after_bias_correction=True``, so the maths stays exactly torch's.
    """
    kind = _kind(optimizer)
    groups = []
    for i, g in enumerate(state_dict["param_groups"]):
        need = {
            "SGD": "nesterov",
            "Momentum": "nesterov",
            "Nesterov": "nesterov",
            "AdaGrad": "lr_decay",
            "Adam": "betas",
        }[kind]
        if need not in g:
            raise ValueError(
                f"param group {i} is not from the torch counterpart of {kind} (no {need!r})"
            )
        ours: dict[str, Any] = {
            "params": g["params"],
            "lr": g["lr"],
            "weight_decay": g["weight_decay"],
            "maximize": g.get("maximize", False),
            "foreach": g.get("foreach"),
        }
        if kind in ("SGD", "Momentum", "Nesterov"):
            if g.get("dampening", 0) != 0:
                raise ValueError(f"param group {i}: dampening={g['dampening']} has no book form")
            if kind == "SGD" and g["momentum"] != 0:
                raise ValueError(
                    f"param group {i}: momentum={g['momentum']}, load it into Momentum"
                )
            if kind != "SGD" and (g["momentum"] == 0 or g["nesterov"] != (kind == "Nesterov")):
                raise ValueError(
                    f"param group {i}: momentum={g['momentum']}, nesterov={g['nesterov']} "
                    f"does not describe {kind}"
                )
            if kind != "SGD":
                ours["momentum"] = g["momentum"]
        elif kind == "AdaGrad":
            if g["lr_decay"] != 0:
                raise ValueError(f"param group {i}: lr_decay={g['lr_decay']} has no book form")
            ours["eps"] = g["eps"]
        else:
            ours.update(
                betas=tuple(g["betas"]),
                eps=g["eps"],
                amsgrad=g["amsgrad"],
                # torch.optim.AdamW before torch 2.6 saves no such flag: keep the target's.
                decoupled_weight_decay=g.get(
                    "decoupled_weight_decay",
                    optimizer.param_groups[min(i, len(optimizer.param_groups) - 1)][
                        "decoupled_weight_decay"
                    ],
                ),
                eps_after_bias_correction=True,
            )
        groups.append(ours)
    lr_of = {pid: g["lr"] for g in state_dict["param_groups"] for pid in g["params"]}
    state: dict[Any, dict[str, Tensor]] = {}
    for pid, entry in state_dict["state"].items():
        if kind in ("Momentum", "Nesterov"):
            if entry.get("momentum_buffer") is not None:
                state[pid] = {"v": momentum_buffer_to_v(entry["momentum_buffer"], lr_of[pid])}
        elif kind == "SGD":
            continue
        else:
            state[pid] = {k: v.clone() for k, v in entry.items()}
    return {"state": state, "param_groups": copy.deepcopy(groups)}


# --------------------------------------------------------------------------------------------
# Bookkeeping shared by the five step() methods.
# --------------------------------------------------------------------------------------------
def use_foreach(
    foreach: bool | None, params: list[Tensor], max_mean_numel: float | None = None
) -> bool:
    """The multi-tensor path or the per-tensor loop; ``foreach=None`` picks by measurement.

    Measured (benchmarks/bench_optim.py, README): on CUDA the ``torch._foreach_*`` path always
    wins (one launch per op for many tensors); on CPU it wins only where Python's per-tensor
    overhead dominates, i.e. for many small tensors (mean size below ``max_mean_numel``,
    default :data:`FOREACH_MAX_MEAN_NUMEL`); for large tensors the loop is faster (each op's
    output is still in cache for the next). Both paths give bit-identical results (tested),
    so the choice affects speed only.
    """
    if foreach is not None:
        return foreach
    if not params or _compiling():
        return False
    if params[0].device.type == "cuda":  # tensors of other devices are grouped apart anyway
        return True
    sample = params[:: max(1, len(params) // 64)]  # the mean size from <= 64 evenly spaced tensors
    limit = FOREACH_MAX_MEAN_NUMEL if max_mean_numel is None else max_mean_numel
    return sum(map(Tensor.numel, sample)) < limit * len(sample)


FOREACH_MAX_MEAN_NUMEL = 32768
"""CPU: use the multi-tensor path when the mean tensor size is below this (see use_foreach)."""


def params_with_grads(
    optimizer: Optimizer,
) -> list[tuple[dict[str, Any], list[Tensor], list[Tensor]]]:
    """Per param group: the group, its parameters that have a gradient, and those gradients.

    ``None`` gradients are skipped (the parameter and its state stay as they are). A sparse
    gradient raises ``RuntimeError`` here, before any parameter or state has changed.
    """
    out = []
    for group in optimizer.param_groups:
        params, grads = [], []
        for p in group["params"]:
            g = p.grad
            if g is not None:
                if g.is_sparse:
                    raise RuntimeError(
                        f"{type(optimizer).__name__} does not support sparse gradients; "
                        "nothing was updated"
                    )
                params.append(p)
                grads.append(g)
        out.append((group, params, grads))
    return out


def _compiling() -> bool:
    is_compiling = getattr(torch.compiler, "is_compiling", None)
    return bool(is_compiling and is_compiling())


def scratch(optimizer: Optimizer, tensors: list[Tensor], slot: int) -> list[Tensor]:
    """Views shaped like ``tensors`` into one flat buffer kept across steps.

    One buffer per (device, dtype, slot), grown to the largest request; it is not optimizer
    state (not in ``state_dict``, dropped by pickling). The views are cached too (per shape for
    the per-tensor path, per list of shapes for the multi-tensor path), so a step makes no new
    tensor objects. Under ``torch.compile`` fresh tensors are returned instead: the compiler
    plans the memory itself (contiguous ones: dynamo refuses a non-contiguous ``out=``, which
    ``empty_like`` of a transposed parameter would be).
    """
    if _compiling():
        return [torch.empty(t.shape, dtype=t.dtype, device=t.device) for t in tensors]
    cache: dict[Any, Any] = optimizer.__dict__.setdefault("_scratch", {})
    t0 = tensors[0]
    key = (t0.device, t0.dtype, slot)
    shape_views: dict[torch.Size, Tensor] = cache.setdefault(("shape views", key), {})
    if len(tensors) == 1:  # per-tensor path
        view = shape_views.get(t0.shape)
        if view is None:
            n = t0.numel()
            view = shape_views[t0.shape] = _buffer(cache, key, n, t0)[:n].view(t0.shape)
        return [view]
    shapes = tuple(t.shape for t in tensors)
    views = cache.get(("views", key))
    if views is None or views[0] != shapes:
        sizes = [t.numel() for t in tensors]
        chunks = _buffer(cache, key, sum(sizes), t0)[: sum(sizes)].split(sizes)
        views = cache[("views", key)] = (shapes, [c.view(s) for c, s in zip(chunks, shapes)])
    return views[1]


def _buffer(cache: dict[Any, Any], key: Any, n: int, like: Tensor) -> Tensor:
    """The flat buffer for ``key`` with room for ``n`` elements; growing it drops old views."""
    buf = cache.get(key)
    if buf is None or buf.numel() < n:
        buf = cache[key] = torch.empty(n, dtype=like.dtype, device=like.device)
        cache.pop(("views", key), None)
        cache[("shape views", key)].clear()
    return buf


def effective_grad(
    optimizer: Optimizer, p: Tensor, g: Tensor, weight_decay: float, maximize: bool
) -> Tensor:
    """``g = -g`` when maximizing, then ``g = g + weight_decay * p`` (torch's coupled L2).

    Written into the scratch buffer (slot 0), so ``p.grad`` itself never changes; use the result
    before asking for the next one.
    """
    if not maximize and weight_decay == 0:
        return g
    (out,) = scratch(optimizer, [g], 0)
    if maximize:
        torch.neg(g, out=out)
    else:
        out.copy_(g)
    if weight_decay != 0:
        out.add_(p, alpha=weight_decay)
    return out


def effective_grads_foreach(
    optimizer: Optimizer,
    params: list[Tensor],
    grads: list[Tensor],
    weight_decay: float,
    maximize: bool,
) -> list[Tensor]:
    """:func:`effective_grad` for lists of tensors of one device and dtype."""
    if not maximize and weight_decay == 0:
        return grads
    out = scratch(optimizer, grads, 0)
    torch._foreach_copy_(out, grads)
    if maximize:
        torch._foreach_neg_(out)
    if weight_decay != 0:
        torch._foreach_add_(out, params, alpha=weight_decay)
    return out
