"""State dicts: torch's load protocol with our checks in between; old checkpoints restored.

``load_state_dict`` runs torch's protocol in torch's order: the load pre-hooks first (a
migration hook may rewrite the state dict), then :func:`check_state_dict` on what the hooks
handed over, then torch's own load (cast to the parameters' devices and dtypes, ``__setstate__``),
then the load post-hooks. The check raises ``ValueError`` before anything is loaded, so a
refused load changes nothing.

What a state dict must look like, per optimizer class (the class attributes the check reads):

* every param group has the class's ``_REQUIRED`` hyperparameters and none of another
  optimizer's (torch's or ours), so a state dict of a different optimizer is refused; keys of
  neither (an LR scheduler's ``initial_lr``, ``param_names``, a user's own) are welcome;
* hyperparameters in ``_FILL`` may be missing (checkpoints from before the key existed): they
  get the value that reproduces what those checkpoints meant, as torch's ``__setstate__`` does;
* per-parameter state is empty or has every key of ``_STATE_KEYS`` but those in
  ``_LATE_STATE`` (created at the next step), each a tensor shaped like its parameter (``step``:
  0-dim, or the plain number of torch < 1.12 checkpoints, converted on load).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Callable

import torch
from torch import Tensor
from torch.optim import Optimizer

__all__ = ["check_state_dict", "load_state_dict", "restore_groups", "step_dtype"]

KNOWN_HYPERPARAMETERS = frozenset({
    # ours and torch's SGD, Adagrad, Adam, AdamW
    "lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize", "foreach",
    "differentiable", "fused", "lr_decay", "initial_accumulator_value", "eps", "betas",
    "amsgrad", "capturable", "decoupled_weight_decay", "eps_after_bias_correction",
    # torch's other optimizers
    "rho", "alpha", "centered", "lambd", "t0", "etas", "step_sizes", "momentum_decay",
    "max_iter", "max_eval", "tolerance_grad", "tolerance_change", "history_size",
    "line_search_fn", "beta2_decay", "d", "ns_coefficients", "ns_steps",
    "adjust_lr_fn",
})  # fmt: skip
"""Param-group keys that name some optimizer's hyperparameter: in a loaded group, one that is
not the target class's own marks a state dict of another optimizer."""

_HINT = " (a torch.optim checkpoint? use torch_dlbasics.optim.convert.from_torch)"


def step_dtype(fused_or_capturable: bool) -> torch.dtype:
    """dtype of a ``step`` tensor, as torch: float32 on the device for fused/capturable, else
    float32 on the CPU (float64 when that is the default dtype)."""
    if fused_or_capturable:
        return torch.float32
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def check_state_dict(optimizer: Optimizer, state_dict: Any) -> None:
    """Raise ``ValueError`` unless ``state_dict`` fits ``optimizer``; changes nothing."""
    name = type(optimizer).__name__
    if not isinstance(state_dict, Mapping) or not {"state", "param_groups"} <= set(state_dict):
        raise ValueError(
            f"{name}.load_state_dict: expected a dict with keys 'state' and 'param_groups'"
        )
    groups, saved_groups = optimizer.param_groups, state_dict["param_groups"]
    if not isinstance(saved_groups, (list, tuple)) or len(groups) != len(saved_groups):
        n = len(saved_groups) if isinstance(saved_groups, (list, tuple)) else saved_groups
        raise ValueError(
            f"{name}.load_state_dict: loaded state dict has {n} parameter groups, "
            f"the optimizer has {len(groups)}"
        )
    required = frozenset(optimizer._REQUIRED)
    ours = required | frozenset(optimizer._FILL)
    foreign = KNOWN_HYPERPARAMETERS - ours
    params_by_id: dict[Any, Tensor] = {}
    for i, (group, saved) in enumerate(zip(groups, saved_groups)):
        keys = set(saved) - {"params"} if isinstance(saved, Mapping) else set()
        if not isinstance(saved, Mapping) or not required <= keys or keys & foreign:
            raise ValueError(
                f"{name}.load_state_dict: param group {i} has hyperparameters {sorted(keys)}, "
                f"{name} has {sorted(ours)}: the state dict comes from a different optimizer "
                f"class{_HINT}"
            )
        saved_params = saved.get("params")
        if not isinstance(saved_params, (list, tuple)) or len(group["params"]) != len(saved_params):
            n = len(saved_params) if isinstance(saved_params, (list, tuple)) else saved_params
            raise ValueError(
                f"{name}.load_state_dict: param group {i} has {n} parameters in "
                f"the loaded state dict, {len(group['params'])} in the optimizer"
            )
        params_by_id.update(zip(saved_params, group["params"]))
    state = state_dict["state"]
    if not isinstance(state, Mapping):
        raise ValueError(f"{name}.load_state_dict: 'state' is a {type(state).__name__}, not a dict")
    allowed = frozenset(optimizer._STATE_KEYS)
    needed = allowed - frozenset(optimizer._LATE_STATE)
    for pid, entry in state.items():
        if pid not in params_by_id:
            raise ValueError(f"{name}.load_state_dict: state for unknown parameter id {pid}")
        p = params_by_id[pid]
        if not isinstance(entry, Mapping) or not set(entry) <= allowed:
            raise ValueError(
                f"{name}.load_state_dict: state of parameter {pid} has keys "
                f"{sorted(entry) if isinstance(entry, Mapping) else entry!r}, {name} uses "
                f"{sorted(allowed)}: the state dict comes from a different optimizer "
                f"class{_HINT}"
            )
        if entry and not needed <= set(entry):
            raise ValueError(
                f"{name}.load_state_dict: state of parameter {pid} lacks "
                f"{sorted(needed - set(entry))} (it has {sorted(entry)}): an incomplete "
                "checkpoint"
            )
        for key, value in entry.items():
            if key == "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                continue  # torch < 1.12 saved the step count as a number
            want = () if key == "step" else tuple(p.shape)
            if not isinstance(value, Tensor) or tuple(value.shape) != want:
                got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise ValueError(
                    f"{name}.load_state_dict: state {key!r} of parameter {pid} has shape {got}, "
                    f"expected {want}: different parameter layout"
                )


def load_state_dict(
    optimizer: Optimizer, state_dict: Any, torch_load: Callable[[Any], None]
) -> None:
    """torch's protocol (pre-hooks, load, post-hooks) with :func:`check_state_dict` between the
    pre-hooks and the load; ``torch_load`` is ``torch.optim.Optimizer.load_state_dict`` bound to
    the optimizer."""
    if isinstance(state_dict, Mapping):
        state_dict = dict(state_dict)  # shallow copy, as torch: a hook may replace entries
    pre_hooks = getattr(optimizer, "_optimizer_load_state_dict_pre_hooks", OrderedDict())
    for hook in list(pre_hooks.values()):
        result = hook(optimizer, state_dict)
        if result is not None:
            state_dict = result
    check_state_dict(optimizer, state_dict)
    optimizer._optimizer_load_state_dict_pre_hooks = OrderedDict()  # they ran: not again
    try:
        torch_load(state_dict)
    finally:
        optimizer._optimizer_load_state_dict_pre_hooks = pre_hooks


def restore_groups(optimizer: Optimizer) -> None:
    """After a load or unpickling: fill hyperparameters a checkpoint predates (``_FILL``) and
    turn number step counts (torch < 1.12) into tensors, on the devices torch would use."""
    for group in optimizer.param_groups:
        for key, value in optimizer._FILL.items():
            group.setdefault(key, value)
        on_device = bool(group.get("fused") or group.get("capturable"))
        for p in group["params"]:
            state = optimizer.state.get(p)
            if state and "step" in state and not isinstance(state["step"], Tensor):
                state["step"] = torch.tensor(
                    float(state["step"]),
                    dtype=step_dtype(on_device),
                    device=p.device if on_device else "cpu",
                )
