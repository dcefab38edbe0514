"""Argument validation shared by the five optimizers, in ``torch.optim``'s words.

The constructors call these before ``Optimizer.__init__`` (a refused argument builds nothing);
the engine calls :func:`check_step_values` at the start of every step, before anything is
written, so that a value a user or a scheduler put into a param group later cannot fail
half-way through a step. Messages are torch 2.14's, so code that catches torch's errors
catches ours.
"""

from __future__ import annotations

import numbers
from typing import Any, Optional

from torch import Tensor

__all__ = [
    "check_betas",
    "check_engine_flags",
    "check_lr",
    "check_non_negative",
    "check_step_values",
    "scalar_value",
]


def check_lr(lr: Any) -> None:
    """A learning rate: a non-negative number or 1-element tensor."""
    if isinstance(lr, Tensor) and lr.numel() != 1:
        raise ValueError("Tensor lr must be 1-element")
    if not 0.0 <= lr:
        raise ValueError(f"Invalid learning rate: {lr}")


def check_non_negative(name: str, value: Any) -> None:
    """``Invalid <name> value: <value>`` unless ``value >= 0`` (torch's wording)."""
    if not 0.0 <= value:
        label = {"eps": "epsilon"}.get(name, name)
        raise ValueError(f"Invalid {label} value: {value}")


def check_betas(betas: Any, *, foreach: Optional[bool], capturable: bool) -> tuple[Any, Any]:
    """Adam's ``(beta1, beta2)``: each in [0, 1), both floats or both 1-element tensors.

    Returns the pair with tensors squeezed to 0-dim (as torch stores them). A tensor beta with
    ``foreach=True`` and ``capturable=False`` is refused as torch refuses it.
    """
    for i, beta in enumerate(betas[:2]):  # (before comparing: torch's check is ambiguous then)
        if isinstance(beta, Tensor) and beta.numel() != 1:
            raise ValueError(f"Tensor betas[{i}] must be 1-element")
    if not 0.0 <= betas[0] < 1.0:
        raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
    if not 0.0 <= betas[1] < 1.0:
        raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
    floats = isinstance(betas[0], float) and isinstance(betas[1], float)
    tensors = isinstance(betas[0], Tensor) and isinstance(betas[1], Tensor)
    if not (floats or tensors):
        raise ValueError("betas must be either both floats or both Tensors")
    if tensors:
        if foreach and not capturable:
            raise ValueError(
                "betas[0] as a Tensor is not supported for capturable=False and foreach=True"
            )
        return betas[0].reshape(()), betas[1].reshape(())
    return betas[0], betas[1]


def check_engine_flags(
    *, foreach: Optional[bool], fused: Optional[bool], differentiable: bool
) -> None:
    """torch's refusals for combinations of the engineering flags (``RuntimeError``)."""
    if fused:
        if differentiable:
            raise RuntimeError("`fused` does not support `differentiable`")
        if foreach:
            raise RuntimeError("`fused` and `foreach` cannot be `True` together.")


def scalar_value(x: Any) -> Any:
    """A 1-element tensor hyperparameter as a Python number (one read); numbers as they are."""
    return x.item() if isinstance(x, Tensor) else x


def check_step_values(name: str, group: dict[str, Any], keys: tuple[str, ...]) -> None:
    """Before a step: every numeric hyperparameter in ``keys`` is a real number or a 1-element
    tensor (``betas``: a pair of them). Ranges are not re-checked (torch does not either: a
    schedule may set any value); what is refused here would otherwise fail inside the step."""
    for key in keys:
        value = group.get(key)
        values = value if key == "betas" else (value,)
        if key == "betas" and not (isinstance(value, (tuple, list)) and len(value) == 2):
            raise TypeError(f"{name}: param group 'betas' must be a pair, got {value!r}")
        for v in values:
            if isinstance(v, Tensor):
                if v.numel() != 1:
                    what = "lr" if key == "lr" else key
                    raise ValueError(f"Tensor {what} must be 1-element")
                if v.is_complex():
                    raise TypeError(f"{name}: param group {key!r} must be real, got {v!r}")
            elif not isinstance(v, numbers.Real):
                raise TypeError(
                    f"{name}: param group {key!r} must be a number or a 1-element tensor, "
                    f"got {type(v).__name__}"
                )
