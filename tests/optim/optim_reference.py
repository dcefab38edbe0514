"""Independent NumPy float64 references of the book's five update rules, for the tests.

Written from the book's formulas (§6.1 and the book's code, Nesterov as corrected in 2021; torch's
dampening, lr_decay and initial_accumulator_value as torch's documentation states them), one
parameter at a time, without torch. ``state`` is a dict per parameter using the same keys
as the optimizers under test (``v``; ``sum``/``step``; ``step``/``exp_avg``/``exp_avg_sq``/
``max_exp_avg_sq``), so that every entry can be compared.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def init_state(kind: str, p: np.ndarray, hp: dict[str, Any]) -> dict[str, Any]:
    """State before the first step (AdaGrad's is created eagerly, like torch's)."""
    if kind == "adagrad":
        return {"step": 0.0, "sum": np.full_like(p, hp.get("initial_accumulator_value", 0.0))}
    return {}


def book_step(
    kind: str, hp: dict[str, Any], p: np.ndarray, g: np.ndarray, state: dict[str, Any]
) -> np.ndarray:
    """One update of parameter ``p`` (returned, new array) with gradient ``g``; updates ``state``."""
    lr = float(hp["lr"])  # a tensor lr is read as a number
    wd = hp.get("weight_decay", 0.0)
    if hp.get("maximize", False):
        g = -g
    decoupled = kind == "adam" and hp.get("decoupled_weight_decay", False)
    if decoupled:
        p = p * (1.0 - lr * wd)
    elif wd != 0:
        g = g + wd * p

    if kind == "sgd":
        return p - lr * g

    if kind == "momentum":
        mu = hp["momentum"]
        tau = hp.get("dampening", 0.0) if "v" in state else 0.0  # torch: the first step undamped
        v = state.get("v", np.zeros_like(p))
        v = mu * v - (1 - tau) * lr * g
        state["v"] = v
        return p + v

    if kind == "nesterov":  # corrected 2021 version: p uses v before its update
        mu = hp["momentum"]
        v = state.get("v", np.zeros_like(p))
        p = p + mu * mu * v - (1 + mu) * lr * g
        state["v"] = mu * v - lr * g
        return p

    if kind == "adagrad":
        eps = hp["eps"]
        h = state["sum"] + g * g
        state["sum"] = h
        state["step"] += 1.0
        clr = lr / (1 + (state["step"] - 1) * hp.get("lr_decay", 0.0))  # torch's lr_decay
        return p - clr * g / (np.sqrt(h) + eps)

    if kind == "adam":
        b1, b2 = (float(b) for b in hp["betas"])
        eps = hp["eps"]
        t = state.get("step", 0.0) + 1.0
        m = state.get("exp_avg", np.zeros_like(p))
        v = state.get("exp_avg_sq", np.zeros_like(p))
        m = m + (1 - b1) * (g - m)
        v = v + (1 - b2) * (g * g - v)
        state.update(step=t, exp_avg=m, exp_avg_sq=v)
        v_hat = v
        if hp.get("amsgrad", False):
            v_hat = np.maximum(state.get("max_exp_avg_sq", np.zeros_like(p)), v)
            state["max_exp_avg_sq"] = v_hat
        if hp.get("eps_after_bias_correction", False):  # torch's form, written as torch documents
            m_hat = m / (1 - b1**t)
            v_hat = v_hat / (1 - b2**t)
            return p - lr * m_hat / (np.sqrt(v_hat) + eps)
        lr_t = lr * math.sqrt(1 - b2**t) / (1 - b1**t)  # the book's Adam (§6.1.6)
        return p - lr_t * m / (np.sqrt(v_hat) + eps)

    raise ValueError(kind)
