"""One optimizer step: closure, gradients, validation, state, path choice, the one dispatch.

Every ``step()`` of the five optimizers is :func:`run_step`. It works in three phases so that a
failing step changes nothing:

1. **plan** (reads only): collect the parameters that have a gradient, check everything that
   could fail later (hyperparameter types, sparse gradients, a gradient or a state entry of the
   wrong shape, dtype or device, what ``fused`` / ``capturable`` / ``differentiable`` require),
   choose the path and the batches;
2. **allocate**: create missing state and reserve the scratch buffers (undone if an allocation
   fails);
3. **update**: call the optimizer's update function once per batch.

A ``fused=True`` step whose tensors pass the check of graphs compiled for tensors that passed
phase 1 (:mod:`._fused` keeps them) skips the rest of phase 1 and phase 2: that check implies
phase 1's, and every state entry exists.

The optimizer class tells the engine, per param group, which update function runs and with
which keyword arguments (``_update``), which state entries it takes after ``p, g`` (``_state_args``;
``"step"`` is the step count ``t``), how fresh state looks (``_init_state``) and which scratch
arguments are worth a kept buffer (``_scratch``). The update function receives

* on the **per-tensor** path: tensors, one parameter at a time;
* on the **multi-tensor** path: :class:`~._foreach.TensorList` s of one device and dtype
  (and, here, one step count, so every scalar is a single Python float);
* on the **fused** path: tensors, inside ``torch.compile`` (see :mod:`._fused`).

The step count ``t`` is a :class:`StepCount` (``t += 1`` advances the state tensor and gives
the count as a float, or a float64 tensor under ``torch.compile``, so ``beta2 ** t`` is float64
arithmetic on every path), except with ``capturable=True``: a :class:`DeviceStepCount`, whose
counts stay on the device (nothing is read back).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import Tensor
from torch.optim import Optimizer

from . import _fused, _scratch
from ._foreach import GradList, TensorList, tensor_alpha_dispatches
from ._hyperparameters import check_step_values, scalar_value

__all__ = [
    "FOREACH_MAX_MEAN_NUMEL",
    "DeviceStepCount",
    "StepCount",
    "compiling",
    "run_step",
    "use_foreach",
]

FOREACH_MAX_MEAN_NUMEL = 32768
"""CPU: ``foreach=None`` takes the multi-tensor path when the mean tensor size is below this."""

try:  # DTensor registers itself here when torch.distributed.tensor is imported
    from torch.optim.optimizer import _foreach_supported_types as _FOREACH_TYPES
except ImportError:  # pragma: no cover - older torch
    _FOREACH_TYPES = [Tensor, torch.nn.Parameter]

_PLAIN_TYPES = (Tensor, torch.nn.Parameter)
_PLAIN_SET = frozenset(_PLAIN_TYPES)
_EMPTY: dict[str, Any] = {}


class StepCount:
    """The step count ``t`` of one tensor, or of a batch of tensors that share it.

    ``t += 1`` adds 1 to the state tensor(s) ``step`` in place and rebinds ``t`` to the new
    count as a Python float (under ``torch.compile``: a float64 0-dim tensor), which the update
    function then uses in its step-size arithmetic: float64 on every path, whatever the dtype of
    the state tensor (float32, as torch's).
    """

    __slots__ = ("tensors",)

    def __init__(self, tensors: list[Tensor]) -> None:
        self.tensors = tensors

    def __iadd__(self, n: int) -> Any:
        if len(self.tensors) == 1:
            self.tensors[0].add_(n)
        else:
            torch._foreach_add_(self.tensors, n)
        if _is_compiling():  # no host read inside a graph: a float64 0-dim tensor instead
            return self.tensors[0].to(torch.float64)
        return self.tensors[0].item()


class DeviceStepCount(TensorList):
    """The step counts of ``capturable=True``: ``t += 1`` adds 1 on the device and gives the
    counts as float64 device tensors (step-size arithmetic in float64, nothing read back)."""

    __slots__ = ()

    def __iadd__(self, n: int) -> TensorList:  # type: ignore[override]
        self.add_(n)
        return TensorList(t.to(torch.float64) for t in self)


_is_compiling = getattr(torch.compiler, "is_compiling", lambda: False)


def compiling() -> bool:
    """Whether this code is being traced by ``torch.compile``."""
    return bool(_is_compiling())


def use_foreach(
    foreach: Optional[bool], params: list[Tensor], max_mean_numel: Optional[float] = None
) -> bool:
    """The multi-tensor path or the per-tensor loop; ``foreach=None`` picks by measurement.

    On CUDA the ``torch._foreach_*`` path always wins (one launch per op for many tensors); on
    CPU it wins where Python's per-tensor overhead dominates, i.e. for many small tensors (mean
    size below ``max_mean_numel``, default :data:`FOREACH_MAX_MEAN_NUMEL`); for large tensors
    the loop is faster (each op's output is still in cache for the next). On CPU both paths give
    bit-identical results in every dtype (tested), so the choice affects speed only. Tensor
    types that foreach ops do not take (as torch decides) get the loop, tensor subclasses they
    take (FSDP2's DTensor) the multi-tensor path.
    """
    if foreach is not None:
        return foreach
    if not params or compiling() or any(type(p) not in _FOREACH_TYPES for p in params):
        return False
    if params[0].device.type != "cpu" or any(type(p) not in _PLAIN_TYPES for p in params):
        return True  # (DTensor: the foreach ops are the ones its sharding rules cover best)
    limit = FOREACH_MAX_MEAN_NUMEL if max_mean_numel is None else max_mean_numel
    return _small_tensors(params, limit)


def _small_tensors(params: list[Tensor], limit: float) -> bool:
    sample = params[:: max(1, len(params) // 64)]  # the mean size from <= 64 evenly spaced tensors
    return sum(map(Tensor.numel, sample)) < limit * len(sample)


@dataclass
class _Batch:
    """Tensors updated by one call of the update function (or, per-tensor, one call each)."""

    indices: list[int]  # into the plan's params
    kwargs: dict[str, Any]
    scratch: list[Optional[int]]  # per scratch argument: the buffer slot, or None (fresh tensor)


@dataclass
class _Plan:
    group: dict[str, Any]
    update: Callable[..., None]
    path: str  # "per-tensor", "lists", "one-by-one", "grad" (differentiable) or "fused"
    params: list[Tensor]
    grads: list[Tensor]
    states: list[Optional[dict[str, Any]]]  # None: no state yet (made in phase 2)
    fresh: list[bool]
    state_args: tuple[Optional[str], ...]
    tensor_steps: bool  # the update gets step tensors, not StepCount
    complex: bool  # some parameters are complex (updated as pairs of reals)
    batches: list[_Batch] = field(default_factory=list)
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = field(default_factory=dict)
    calls: Optional[list[_fused.Call]] = None  # fused: the calls of kept graphs (then no groups,
    # no batches)


def run_step(optimizer: Optimizer, closure: Optional[Callable[[], Any]]) -> Any:
    """``optimizer.step(closure)``: returns the closure's loss (``None`` without a closure)."""
    loss = None
    if closure is not None:
        with torch.enable_grad():
            loss = closure()
    differentiable = bool(optimizer.defaults.get("differentiable", False))
    with torch.set_grad_enabled(differentiable):
        plans = []
        first = 0
        for group in optimizer.param_groups:
            plan = _plan(optimizer, group, first)
            first += len(group["params"])
            if plan is not None:
                plans.append(plan)
        _allocate(optimizer, plans)
        for plan in plans:
            _dispatch(optimizer, plan)
    return loss


# --------------------------------------------------------------------------------------------
# Phase 1: plan and validate (nothing is written).
# --------------------------------------------------------------------------------------------
def _plan(optimizer: Optimizer, group: dict[str, Any], first: int) -> Optional[_Plan]:
    name = type(optimizer).__name__
    params = list(group["params"])
    grads = [p.grad for p in params]
    where = list(range(first, first + len(params)))
    if any(g is None for g in grads):
        keep = [i for i, g in enumerate(grads) if g is not None]
        params, grads, where = (
            [params[i] for i in keep],
            [grads[i] for i in keep],
            [where[i] for i in keep],
        )
    if not params:
        return None
    check_step_values(name, group, optimizer._NUMERIC)
    update, kwargs = optimizer._update(group, False)
    kwargs_fresh = optimizer._update(group, True)[1]
    state_args = optimizer._state_args(group)
    is_compiling = compiling()
    fused = bool(group.get("fused")) and not is_compiling
    capturable = bool(group.get("capturable")) and not is_compiling
    differentiable = bool(group.get("differentiable")) and torch.is_grad_enabled()
    if fused:  # [0] for state that existed, [1] for state created now (one dict where the
        # arguments are the same: one graph for the first step and later ones)
        fused_kwargs = [_fused.scalars(kwargs)]
        fresh_kw = kwargs != kwargs_fresh
        if fresh_kw:
            fused_kwargs.append(_fused.scalars(kwargs_fresh))
        if not (capturable or differentiable):
            known = _known_fused_calls(
                optimizer, group, update, params, grads, state_args, fused_kwargs
            )
            if known is not None:  # every tensor passed the check of a graph compiled for
                # tensors that passed the checks below: nothing else to check or create
                calls, states = known
                fresh = [False] * len(params)
                plan = _Plan(group, update, "fused", params, grads, states, fresh, state_args,
                             tensor_steps=False, complex=False, calls=calls)  # fmt: skip
                return plan
    states, groups, plain = _check_params(
        optimizer, params, grads, where, state_args, fused, capturable, differentiable
    )
    fresh = [not state for state in states]
    is_complex = any(dtype.is_complex for _, dtype in groups)
    path = _choose_path(
        optimizer, group, params, plain, is_compiling, fused, capturable, differentiable
    )
    if fused:
        _fused.check_available(params[0].device)

    needs_grad = [k for k, v in kwargs.items() if any(_requires_grad(x) for x in _flat([v]))]
    tensor_scalars = capturable or (differentiable and bool(needs_grad))
    coupled = "weight_decay" in needs_grad and not kwargs.get("decoupled_weight_decay")
    if differentiable and coupled and not tensor_alpha_dispatches():
        raise TypeError(
            f"{name}: a weight_decay tensor that requires grad (added to the gradient with "
            "torch.add(g, p, alpha=weight_decay)) needs a newer torch: this one refuses a "
            "tensor alpha; use a float weight_decay"
        )
    plan = _Plan(
        group, update, path, params, grads, states, fresh, state_args, capturable, is_complex
    )
    plan.groups = groups
    # Which scratch arguments get a kept buffer (the others get None: a fresh tensor).
    keep = path != "fused" and not is_compiling and not differentiable and plain
    slots = [
        j if (keep and need) else None for j, need in enumerate(optimizer._scratch_slots(group))
    ]

    everything = list(range(len(params)))
    if path == "fused":
        old = _Batch(everything, fused_kwargs[0], slots)
        plan.batches = [old, _Batch(everything, fused_kwargs[-1], slots) if fresh_kw else old]
    elif path == "per-tensor":  # [0] for state that existed, [1] for state created now
        convert = _as_tensors if is_compiling else _as_floats
        plan.batches = [_Batch(everything, convert(kw), slots) for kw in (kwargs, kwargs_fresh)]
    else:
        plan.batches = _list_batches(optimizer, plan, kwargs, kwargs_fresh, slots, tensor_scalars)
    return plan


def _choose_path(
    optimizer: Optimizer,
    group: dict[str, Any],
    params: list[Tensor],
    plain: bool,
    is_compiling: bool,
    fused: bool,
    capturable: bool,
    differentiable: bool,
) -> str:
    if is_compiling:  # one graph of per-tensor ops: the compiler fuses them
        return "per-tensor"
    if fused:
        return "fused"
    if differentiable:
        return "grad"
    if capturable:
        return "lists"
    foreach = group.get("foreach")
    if foreach is None and plain and params[0].device.type == "cpu":  # (the common case)
        limit = getattr(optimizer, "_foreach_max_mean_numel", None)  # optional hook
        limit = limit(group) if limit is not None else None
        foreach = _small_tensors(params, FOREACH_MAX_MEAN_NUMEL if limit is None else limit)
    elif foreach is None:
        foreach = use_foreach(None, params)
    if foreach:
        return "lists"
    return "per-tensor" if plain else "one-by-one"  # subclasses: through the foreach ops


def _known_fused_calls(
    optimizer: Optimizer,
    group: dict[str, Any],
    update: Callable[..., None],
    params: list[Tensor],
    grads: list[Tensor],
    state_args: tuple[Optional[str], ...],
    kwargs: list[dict[str, Any]],
) -> Optional[tuple[list[_fused.Call], list[Optional[dict[str, Any]]]]]:
    """``fused=True`` where every parameter has its state (if the update takes any): the step's
    compiled calls and the states, if each call has a kept graph whose check its tensors pass,
    else ``None``. That check is dynamo's, of every tensor's type, dtype, device, shape,
    strides and dispatch keys against the tensors the graph was compiled for, which passed
    :func:`_check_params`; so it implies those checks, and they are not made again."""
    states: list[Optional[dict[str, Any]]]
    if any(key is not None for key in state_args):
        get = optimizer.state.get
        states = [get(p) for p in params]
        if not all(states):
            return None
    else:  # (plain SGD: no state)
        states = [None] * len(params)
    n_scratch = len(optimizer._scratch_slots(group))
    try:
        calls = _fused.calls(
            update, params, grads, states, state_args, n_scratch, kwargs, [0] * len(params)
        )
    except KeyError:  # a state entry missing: the checks name it
        return None
    return (calls, states) if all(call.graph is not None for call in calls) else None


def _check_params(
    optimizer: Optimizer,
    params: list[Tensor],
    grads: list[Tensor],
    where: list[int],
    state_args: tuple[Optional[str], ...],
    fused: bool,
    capturable: bool,
    differentiable: bool,
) -> tuple[list[Optional[dict[str, Any]]], dict[tuple[torch.device, torch.dtype], list[int]], bool]:
    """Everything per parameter that could fail later. Returns each parameter's state (``None``
    where there is none yet), the parameters' indices per (device, dtype), and whether all
    parameters and gradients are plain tensors (not subclasses such as DTensor).

    The common case costs little per parameter: cheap checks in Python, the devices of all
    tensors at once by torch's own grouping (C++). Anything unusual, or an error, goes through
    :func:`_check_each`, which names what is wrong.
    """
    get = optimizer.state.get
    states = [get(p) or None for p in params]
    types = set(map(type, params)) | set(map(type, grads))
    plain = types <= _PLAIN_SET
    groups = None
    if not (_is_compiling() or differentiable):
        groups = _quick_check(optimizer, params, grads, states, state_args, fused or capturable)
    if groups is None:
        groups = _check_each(
            optimizer, params, grads, states, where, state_args, fused, capturable, differentiable
        )
    if fused:
        for device, dtype in groups:
            if not (dtype.is_floating_point and device.type in _fused.DEVICES):
                raise RuntimeError(
                    "`fused=True` requires all the params to be floating point Tensors of "
                    f"supported devices: {list(_fused.DEVICES)} but {dtype} and {device.type}"
                )
    if capturable:
        devices = _capturable_devices()
        if any(device.type not in devices for device, _ in groups):
            raise AssertionError(
                "If capturable=True, params and state_steps must be on supported devices: "
                f"{devices}."
            )
    return states, groups, plain


def _quick_check(
    optimizer: Optimizer,
    params: list[Tensor],
    grads: list[Tensor],
    states: list[Optional[dict[str, Any]]],
    state_args: tuple[Optional[str], ...],
    step_on_device: bool,
) -> Optional[dict[tuple[torch.device, torch.dtype], list[int]]]:
    """The groups per (device, dtype) when everything is as it should be, else ``None``."""
    keys = [k for k in state_args if k is not None and k != "step"]
    has_step = "step" in state_args
    late = optimizer._LATE_STATE
    for p, g, state in zip(params, grads, states):
        dtype = p.dtype
        if g.is_sparse or g.dtype is not dtype or not g.is_same_size(p):
            return None
        if state is not None:
            for key in keys:
                v = state.get(key)
                if v is None:
                    if key not in late:
                        return None
                elif not (isinstance(v, Tensor) and v.dtype is dtype and v.is_same_size(p)):
                    return None
            if has_step:
                step = state.get("step")
                if not (isinstance(step, Tensor) and step.dim() == 0 and step.is_floating_point()):
                    return None
    columns: list[list[Any]] = [params, grads]
    columns += [[s.get(k) if s else None for s in states] for k in keys]
    if has_step and step_on_device:  # fused/capturable: steps on the parameters' devices
        columns.append([s.get("step") if s else None for s in states])
    try:  # raises unless each index's tensors share a device (dtype: checked above)
        grouped = Optimizer._group_tensors_by_device_and_dtype(columns, with_indices=True)
    except RuntimeError:
        return None
    return {key: list(indices) for key, (_, indices) in grouped.items()}


def _check_each(
    optimizer: Optimizer,
    params: list[Tensor],
    grads: list[Tensor],
    states: list[Optional[dict[str, Any]]],
    where: list[int],
    state_args: tuple[Optional[str], ...],
    fused: bool,
    capturable: bool,
    differentiable: bool,
) -> dict[tuple[torch.device, torch.dtype], list[int]]:
    """Parameter by parameter, raising an error that names what is wrong."""
    name = type(optimizer).__name__
    keys = [k for k in state_args if k is not None and k != "step"]
    has_step = "step" in state_args
    late = optimizer._LATE_STATE
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, (p, g, state, idx) in enumerate(zip(params, grads, states, where)):
        shape, dtype, device = p.shape, p.dtype, p.device
        if (device, dtype) not in groups:  # (not setdefault: torch 2.4's dynamo traces this)
            groups[device, dtype] = []
        groups[device, dtype].append(i)
        if g.is_sparse:
            hint = ", please consider SparseAdam instead" if name in ("Adam", "AdamW") else ""
            raise RuntimeError(
                f"{name} does not support sparse gradients{hint}; nothing was updated"
            )
        if (g.shape, g.dtype, g.device) != (shape, dtype, device):
            raise RuntimeError(
                f"{name}.step: the gradient of parameter {idx} is {_describe(g)} but the "
                f"parameter is {_describe(p)}; nothing was updated"
            )
        step = None
        if state is not None:
            for key in keys:
                value = state.get(key)
                if value is None:
                    if key not in late:
                        _missing(name, state, keys, idx, late)
                elif not (
                    isinstance(value, Tensor)
                    and value.shape == shape
                    and value.dtype == dtype
                    and value.device == device
                ):
                    _wrong_state(name, key, value, p, idx)
            if has_step:
                step = state.get("step")
                if step is None:
                    _missing(name, state, ["step"], idx, late)
                elif not (
                    isinstance(step, Tensor)
                    and step.dim() == 0
                    and step.is_floating_point()
                    and (not fused or step.device == device)
                ):
                    _wrong_step(name, step, p, idx, fused)
        if capturable and step is not None and step.device != device:
            devices = _capturable_devices()
            raise AssertionError(
                "If capturable=True, params and state_steps must be on supported devices: "
                f"{devices}."
            )
        if differentiable and p.is_leaf and p.requires_grad:
            raise RuntimeError(
                "a leaf Variable that requires grad is being used in an in-place operation."
            )
        if differentiable and step is not None and step.requires_grad:
            raise RuntimeError("`requires_grad` is not supported for `step` in differentiable mode")
    return groups


def _missing(name: str, state: dict, keys: list, idx: int, late: tuple) -> None:
    missing = [k for k in keys if k not in state and k not in late]
    raise RuntimeError(
        f"{name}.step: the state of parameter {idx} lacks {missing} (it has "
        f"{sorted(state)}); nothing was updated"
    )


def _wrong_state(name: str, key: str, value: Any, p: Tensor, idx: int) -> None:
    if not isinstance(value, Tensor):
        raise RuntimeError(
            f"{name}.step: state {key!r} of parameter {idx} is a {type(value).__name__}, "
            "not a tensor; nothing was updated"
        )
    raise RuntimeError(
        f"{name}.step: state {key!r} of parameter {idx} is {_describe(value)} but the "
        f"parameter is {_describe(p)}; nothing was updated"
    )


def _wrong_step(name: str, step: Any, p: Tensor, idx: int, on_device: bool) -> None:
    if not isinstance(step, Tensor):
        raise RuntimeError(
            f"{name}.step: state 'step' of parameter {idx} is a {type(step).__name__}, "
            "not a tensor; nothing was updated"
        )
    where = f" on {p.device}" if on_device else ""
    raise RuntimeError(
        f"{name}.step: state 'step' of parameter {idx} is {_describe(step)}, expected a "
        f"0-dim floating point tensor{where}; nothing was updated"
    )


def _list_batches(
    optimizer: Optimizer,
    plan: _Plan,
    kwargs: dict[str, Any],
    kwargs_fresh: dict[str, Any],
    slots: list[Optional[int]],
    tensor_scalars: bool,
) -> list[_Batch]:
    """Multi-tensor batches: one device and dtype and, unless the step counts stay tensors, one
    step count each; state created now apart where the update's arguments differ for it (the
    first step of SGD's momentum is not dampened)."""
    fresh = plan.fresh
    split_fresh = kwargs != kwargs_fresh
    counts: Optional[list[float]] = None
    if "step" in plan.state_args and not plan.tensor_steps:
        known = [state["step"] for state in plan.states if state is not None]
        values = iter(torch.stack(known).tolist() if known else ())
        counts = [0.0 if f else next(values) for f in fresh]
        if min(counts) == max(counts):
            counts = None  # one count for all: no split
    buckets: list[tuple[torch.device, bool, list[int]]] = []
    for (device, _), indices in plan.groups.items():
        if plan.path == "one-by-one":  # DTensor with foreach=False: lists of one
            buckets += [(device, fresh[i] and split_fresh, [i]) for i in indices]
        elif counts is None and not (split_fresh and any(fresh[i] for i in indices)):
            buckets.append((device, False, indices))
        else:
            split: dict[Any, list[int]] = {}
            for i in indices:
                split.setdefault((fresh[i] and split_fresh, counts and counts[i]), []).append(i)
            buckets += [(device, is_fresh, part) for (is_fresh, _), part in split.items()]
    batches = []
    for device, is_fresh, indices in buckets:
        kw = kwargs_fresh if is_fresh else kwargs
        if tensor_scalars:
            kw = _as_tensor_lists(kw, len(indices), device)
        else:
            kw = _as_floats(kw)
        batches.append(_Batch(indices, kw, slots))
    return batches


def _requires_grad(x: Any) -> bool:
    return isinstance(x, Tensor) and x.requires_grad


def _flat(values: Any) -> list[Any]:
    out = []
    for v in values:
        out.extend(v if isinstance(v, (tuple, list)) else (v,))
    return out


def _as_floats(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Eager paths: tensor hyperparameters read once as Python numbers."""
    return {k: scalar_value(v) for k, v in kwargs.items()}


def _as_tensors(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Under torch.compile: tensor hyperparameters stay tensors (no host read in the graph)."""
    return {k: v.reshape(()) if isinstance(v, Tensor) else v for k, v in kwargs.items()}


def _as_tensor_lists(kwargs: dict[str, Any], n: int, device: torch.device) -> dict[str, Any]:
    """Tensor hyperparameters as one 0-dim tensor per tensor of the batch, on its device."""
    return {
        k: TensorList([v.reshape(()).to(device, non_blocking=True)] * n)
        if isinstance(v, Tensor)
        else v
        for k, v in kwargs.items()
    }


def _capturable_devices() -> list[str]:
    try:
        from torch.optim.optimizer import _get_capturable_supported_devices

        return list(_get_capturable_supported_devices())
    except ImportError:  # pragma: no cover - older torch
        return ["cuda"]


def _describe(t: Tensor) -> str:
    return f"{t.dtype} {tuple(t.shape)} on {t.device}"


# --------------------------------------------------------------------------------------------
# Phase 2: create state, reserve scratch (undone on failure).
# --------------------------------------------------------------------------------------------
def _allocate(optimizer: Optimizer, plans: list[_Plan]) -> None:
    created: list[tuple[Tensor, list[str], bool]] = []
    try:
        needs: dict[_scratch.Key, int] = {}
        for plan in plans:
            if plan.calls is not None:  # (kept graphs: every state entry exists)
                continue
            keys = [k for k in plan.state_args if k is not None]
            complete = None not in plan.states and not set(keys) & set(optimizer._LATE_STATE)
            for i, (p, state) in enumerate(zip(plan.params, [] if complete else plan.states)):
                missing = [k for k in keys if state is None or k not in state]
                if missing:  # (no entry is made for a parameter that needs no state, as torch)
                    created.append((p, missing, p in optimizer.state))
                    state = plan.states[i] = optimizer.state[p]
                    optimizer._init_state(p, plan.group, state)
            _add_needs(plan, needs)
        _scratch.reserve(optimizer, needs)
    except BaseException:
        for p, missing, had in created:
            state = optimizer.state[p]
            for k in missing:
                state.pop(k, None)
            if not had and not state:
                del optimizer.state[p]
        raise


def _add_needs(plan: _Plan, needs: dict[_scratch.Key, int]) -> None:
    """The scratch elements the plan needs, per (device, dtype, slot)."""
    slots = [slot for slot in plan.batches[0].scratch if slot is not None]
    if not slots:
        return
    real = _real if plan.complex else _same
    if plan.path == "per-tensor":  # one tensor at a time: the largest of each device, dtype
        for indices in plan.groups.values():
            t = real(plan.params[indices[0]])  # (a complex group: twice the reals)
            n = max(plan.params[i].numel() for i in indices) * (
                2 if t is not plan.params[indices[0]] else 1
            )
            for slot in slots:
                key = (t.device, t.dtype, slot)
                needs[key] = max(needs.get(key, 0), n)
        return
    for batch in plan.batches:
        tensors = [real(plan.params[i]) for i in batch.indices]
        n = sum(t.numel() for t in tensors)
        for slot in slots:
            key = (tensors[0].device, tensors[0].dtype, slot)
            needs[key] = max(needs.get(key, 0), n)


def _same(t: Tensor) -> Tensor:
    return t


def _real(t: Tensor) -> Tensor:
    return torch.view_as_real(t) if t.is_complex() else t


# --------------------------------------------------------------------------------------------
# Phase 3: the update.
# --------------------------------------------------------------------------------------------
def _dispatch(optimizer: Optimizer, plan: _Plan) -> None:
    if plan.calls is not None:
        _fused.run(plan.update, plan.calls)
        return
    states = [_EMPTY if state is None else state for state in plan.states]
    if plan.path == "fused":
        old, new = plan.batches
        kwargs = [old.kwargs] if new is old else [old.kwargs, new.kwargs]
        which = [0] * len(plan.fresh) if new is old else [int(f) for f in plan.fresh]
        calls = _fused.calls(
            plan.update,
            plan.params,
            plan.grads,
            states,
            plan.state_args,
            len(old.scratch),
            kwargs,
            which,
        )
        _fused.run(plan.update, calls)
        return
    if plan.path == "per-tensor":
        _per_tensor(optimizer, plan, states)
        return
    if plan.path == "grad":
        _differentiable(plan, states)
        return
    real = _real if plan.complex else _same
    everything = len(plan.batches) == 1 and not plan.complex
    for batch in plan.batches:
        idx = batch.indices
        if everything and len(idx) == len(plan.params):
            p, g = TensorList(plan.params), TensorList(plan.grads)
        else:
            p = TensorList([real(plan.params[i]) for i in idx])
            g = TensorList([real(plan.grads[i]) for i in idx])
        args: list[Any] = [p, g]
        for key in plan.state_args:
            if key is None:
                args.append(None)
            elif key == "step":
                steps = [states[i]["step"] for i in idx]
                args.append(DeviceStepCount(steps) if plan.tensor_steps else StepCount(steps))
            else:
                args.append(TensorList([real(states[i][key]) for i in idx]))
        for slot in batch.scratch:
            key = (p[0].device, p[0].dtype, slot)
            args.append(None if slot is None else TensorList(_scratch.views(optimizer, key, p)))
        plan.update(*args, **batch.kwargs)


def _per_tensor(optimizer: Optimizer, plan: _Plan, states: list[dict[str, Any]]) -> None:
    update, state_args = plan.update, plan.state_args
    real = _real if plan.complex else _same
    old, new = plan.batches
    slots = old.scratch
    views = [None if slot is None else _scratch.shape_views(optimizer, slot) for slot in slots]
    for p, g, state, fresh in zip(plan.params, plan.grads, states, plan.fresh):
        p, g = real(p), real(g)
        args: list[Any] = [p, g]
        for key in state_args:
            if key is None:
                args.append(None)
            elif key == "step":
                args.append(StepCount([state["step"]]))
            else:
                args.append(real(state[key]))
        for view in views:
            args.append(None if view is None else view(p))
        update(*args, **(new if fresh else old).kwargs)


def _differentiable(plan: _Plan, states: list[dict[str, Any]]) -> None:
    """The update on :class:`~._foreach.GradList` s (out of place), written back afterwards."""
    for batch in plan.batches:
        idx = batch.indices
        work = GradList(_real(plan.params[i]).clone() for i in idx)
        g = GradList(_real(plan.grads[i]) for i in idx)
        args: list[Any] = [work, g]
        columns: dict[str, GradList] = {}
        for key in plan.state_args:
            if key is None:
                args.append(None)
            elif key == "step":
                args.append(StepCount([states[i]["step"] for i in idx]))
            else:
                columns[key] = GradList(_real(states[i][key]) for i in idx)
                args.append(columns[key])
        args.extend([None] * len(batch.scratch))
        plan.update(*args, **batch.kwargs)
        for j, i in enumerate(idx):
            p = plan.params[i]
            _real(p).copy_(work[j])
            for key, column in columns.items():
                states[i][key] = torch.view_as_complex(column[j]) if p.is_complex() else column[j]
