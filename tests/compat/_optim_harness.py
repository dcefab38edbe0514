"""The harness of ``test_optim_db.py``: torch's own optimizer test database, run against ours.

The cases come from ``torch.testing._internal.common_optimizers.optim_db`` (it ships in the
torch wheel): every CPU constructor config (``optim_inputs_func`` with the ``foreach`` /
``differentiable`` / ``fused`` variants torch derives from it), every error input
(``optim_error_inputs_func``) and every scheduler input. The harness is ours: each config is
built twice with the same constructor arguments, once with torch's class and once with ours,
stepped on the same parameters and gradients, and compared parameter by parameter and state
entry by state entry (ours through ``convert.to_torch``, which also maps ``v`` to torch's
``momentum_buffer``).

Where the book's maths deliberately differs (:data:`DIFFERENCES`), the case is a *documented
difference*: ours with the same arguments is checked against the independent float64 reference
of the book's formula (``tests/optim/optim_reference.py``), and ours built in torch's form (the
torch defaults passed explicitly, Adam's ``eps_after_bias_correction=True``) must equal torch's.

Outcomes are counted in :data:`OUTCOMES` (``passed`` / ``documented difference`` /
``unsupported``); :func:`counts` summarises them, and when ``TORCH_DLBASICS_COMPAT_JSON`` names
a file the test module writes the counts and every case there (``runs/compat_optim.json`` by
convention).
"""

from __future__ import annotations

import copy
import inspect
import json
import math
import os
import pickle
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "optim"))
from optim_reference import book_step, init_state

from torch_dlbasics.optim import SGD, AdaGrad, Adam, AdamW, _fused
from torch_dlbasics.optim.convert import to_torch


def load_optim_db() -> Any:
    """torch's database module, or ``None`` where this torch lacks it. Importing it sets an env
    variable (inductor's cache dir) as a side effect: the environment is restored."""
    env = dict(os.environ)
    try:
        from torch.testing._internal import common_optimizers
    except Exception:  # pragma: no cover - a torch without the testing internals
        return None
    finally:
        os.environ.clear()
        os.environ.update(env)
    return common_optimizers


OURS: dict[str, type] = {"SGD": SGD, "Adagrad": AdaGrad, "Adam": Adam, "AdamW": AdamW}
"""torch's class name -> the class of ours that README pairs with it."""

DIFFERENCES: dict[str, str] = {
    "book defaults": (
        "the book's defaults stay ours: SGD lr=0.01 (torch 1e-3), AdaGrad eps=1e-7 (torch "
        "1e-10), Adam/AdamW eps=1e-7 (torch 1e-8); a config that leaves them to the default "
        "runs the book's values"
    ),
    "Adam's eps": (
        "the book adds eps to sqrt(v) before the bias correction, torch after "
        "(eps_after_bias_correction=True gives torch's); they differ by O(eps)"
    ),
    "torch's float32 step size": (
        "torch's differentiable Adam/AdamW computes the bias corrections from the float32 step "
        "tensor in float32 (about 1e-7 relative in float64); ours in float64 on every path"
    ),
    "momentum under a changing lr": (
        "the book keeps lr inside the velocity (v = mu*v - lr*g): a scheduled lr acts on new "
        "gradients only, torch's buffer is scaled by the new lr as a whole"
    ),
}
"""Why a case may differ from torch by design: each documented-difference case names one."""

OUTCOMES: list[dict[str, Any]] = []


def record(optimizer: str, kind: str, desc: str, outcome: str, reason: str = "") -> None:
    OUTCOMES.append(
        {"optimizer": optimizer, "kind": kind, "case": desc, "outcome": outcome, "reason": reason}
    )


def counts() -> dict[str, Any]:
    """``{"passed": n, "documented difference": n, "unsupported": n, "by optimizer": ...}``."""
    total = Counter(o["outcome"] for o in OUTCOMES)
    by: dict[str, Counter] = {}
    for o in OUTCOMES:
        by.setdefault(o["optimizer"], Counter())[o["outcome"]] += 1
    return {
        "torch": torch.__version__,
        **{k: total.get(k, 0) for k in ("passed", "documented difference", "unsupported")},
        "by optimizer": {k: dict(v) for k, v in sorted(by.items())},
        "differences": DIFFERENCES,
    }


def write_json() -> None:
    path = os.environ.get("TORCH_DLBASICS_COMPAT_JSON")
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps({**counts(), "cases": OUTCOMES}, indent=1, default=str))


# --------------------------------------------------------------------------------------------
# Building both sides.
# --------------------------------------------------------------------------------------------
def make_params(dtype: torch.dtype, differentiable: bool) -> list[torch.Tensor]:
    """A weight, a bias and a 0-dim parameter (torch's differentiable configs step non-leaf
    clones, as torch's own tests do)."""
    gen = torch.Generator().manual_seed(0)
    shapes = [(4, 3), (4,), ()]
    base = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    params = [b.to(dtype).requires_grad_() for b in base]
    return [p.clone() for p in params] if differentiable else params


def grad_steps(n: int, dtype: torch.dtype) -> list[list[Optional[torch.Tensor]]]:
    """Gradients per step; the bias has none at step 2 (its state must stay as it was)."""
    gen = torch.Generator().manual_seed(1)
    shapes = [(4, 3), (4,), ()]
    out = []
    for k in range(n):
        grads = [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in shapes]
        out.append([None if (k == 2 and i == 1) else g for i, g in enumerate(grads)])
    return out


def torch_form(info: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` with torch's defaults written out and Adam's eps after bias correction: the
    arguments under which ours computes torch's formula."""
    sig = inspect.signature(info.optim_cls.__init__).parameters
    out = {
        name: p.default
        for name, p in sig.items()
        if p.default is not inspect.Parameter.empty and name not in kwargs
    }
    out.update(kwargs)
    if info.name in ("Adam", "AdamW"):
        out["eps_after_bias_correction"] = True
    return out


def differences(
    info: Any, kwargs: dict[str, Any], scheduled: bool = False, dtype: Any = None
) -> list[str]:
    """The documented differences that apply to ``OURS[info.name](**kwargs)``."""
    found = []
    adam = info.name in ("Adam", "AdamW")
    if adam and kwargs.get("differentiable") and dtype == torch.float64:
        found.append("torch's float32 step size")
    ours_sig = inspect.signature(OURS[info.name].__init__).parameters
    theirs_sig = inspect.signature(info.optim_cls.__init__).parameters
    for name in ("lr", "eps"):
        if name in theirs_sig and name not in kwargs:
            if ours_sig[name].default != theirs_sig[name].default:
                found.append("book defaults")
                break
    if adam:
        found.append("Adam's eps")
    if scheduled and info.name == "SGD" and kwargs.get("momentum", 0) != 0:
        found.append("momentum under a changing lr")
    return found


def build(cls: type, params: list[torch.Tensor], kwargs: dict[str, Any]) -> Any:
    return cls(params, **{k: _clone(v) for k, v in kwargs.items()})


def _clone(v: Any) -> Any:
    if torch.is_tensor(v):
        return v.clone()
    if isinstance(v, tuple):
        return tuple(_clone(x) for x in v)
    return v


# --------------------------------------------------------------------------------------------
# Running and comparing.
# --------------------------------------------------------------------------------------------
def run(
    opt: Any,
    params: list[torch.Tensor],
    steps: list[list[Optional[torch.Tensor]]],
    schedulers: Callable[[Any], list[Any]] = lambda opt: [],
) -> list[list[dict[str, Any]]]:
    """Step ``opt`` through ``steps`` (with its schedulers); the hyperparameters of each step."""
    scheds = schedulers(opt)
    log = []
    for k, grads in enumerate(steps):
        for p, g in zip(params, grads):
            p.grad = None if g is None else g.clone()
        log.append([_frozen(group) for group in opt.param_groups for _ in group["params"]])
        opt.step()
        for s in scheds:
            if isinstance(s, torch.optim.lr_scheduler.ReduceLROnPlateau):
                s.step(max(1.0, 4.0 - k))  # a loss that stops improving
            else:
                s.step()
    return log


def _frozen(group: dict[str, Any]) -> dict[str, Any]:
    """A copy of a group's hyperparameters as they are now (a tensor lr is changed in place)."""
    return {k: _clone(v) if k != "params" else v for k, v in group.items()}


def tolerance(dtype: torch.dtype) -> dict[str, float]:
    if dtype == torch.float64:
        return {"rtol": 1e-11, "atol": 1e-13}
    return {"rtol": 2e-5, "atol": 2e-6}


def compare_with_torch(
    ours: Any, theirs: Any, p_ours: list, p_theirs: list, dtype, loose: bool = False
) -> None:
    """Every parameter, every state entry (ours in torch's names), the state-dict keys
    (``loose``: to float32 rounding, for torch's float32 step sizes)."""
    tol = tolerance(torch.float32 if loose else dtype)
    for a, b in zip(p_ours, p_theirs):
        torch.testing.assert_close(a.detach(), b.detach(), **tol)
    converted = to_torch(ours)
    sd_theirs = theirs.state_dict()
    assert converted["state"].keys() == sd_theirs["state"].keys()
    for pid, entry in sd_theirs["state"].items():
        mine = converted["state"][pid]
        assert mine.keys() == entry.keys(), (pid, mine.keys(), entry.keys())
        for key, value in entry.items():
            got = mine[key]
            if torch.is_tensor(value):
                assert got.dtype == value.dtype and got.device == value.device, (pid, key)
                torch.testing.assert_close(got.detach(), value.detach(), **tol)
            else:
                assert got == value
    keys_ours = set(ours.state_dict()["param_groups"][0])
    keys_theirs = set(sd_theirs["param_groups"][0])
    extra = {
        "eps_after_bias_correction",
        "decoupled_weight_decay",
    }  # ours; torch < 2.6 lacks the latter
    assert keys_theirs <= keys_ours and keys_ours - keys_theirs <= extra


def compare_with_reference(
    info: Any, opt: Any, params: list, params0: list, steps: list, log: list, dtype
) -> None:
    """Ours against the float64 reference of the book's formula with the logged hyperparameters."""

    def real(t: torch.Tensor) -> np.ndarray:
        t = t.detach().to(torch.complex128 if t.is_complex() else torch.float64)
        return (torch.view_as_real(t) if t.is_complex() else t).numpy().copy()

    def kind(hp: dict[str, Any]) -> str:
        if info.name == "SGD":
            return "sgd" if hp["momentum"] == 0 else "nesterov" if hp["nesterov"] else "momentum"
        return {"Adagrad": "adagrad"}.get(info.name, "adam")

    ref = [real(p) for p in params0]
    states = [init_state(kind(log[0][i]), r, log[0][i]) for i, r in enumerate(ref)]
    for hps, grads in zip(log, steps):
        for i, g in enumerate(grads):
            if g is not None:
                ref[i] = book_step(kind(hps[i]), hps[i], ref[i], real(g), states[i])
    tol = {"rtol": 1e-10, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 2e-4, "atol": 2e-5}
    for p, r in zip(params, ref):
        torch.testing.assert_close(torch.as_tensor(real(p)), torch.as_tensor(r), **tol)


def compare_16bit(ours: list, theirs: list, exact: list, dtype: torch.dtype) -> None:
    """16-bit: ours and torch round differently; ours must be as close to the float64 run."""
    for a, b, c in zip(ours, theirs, exact):
        c = c.detach().double()
        err_ours = (a.detach().double() - c).abs().max().item()
        err_torch = (b.detach().double() - c).abs().max().item()
        ulp = torch.finfo(dtype).eps * max(1.0, c.abs().max().item())
        assert err_ours <= 2 * err_torch + 4 * ulp, (err_ours, err_torch, ulp)


def copies_continue_alike(opt: Any, params: list, grads: list) -> None:
    """deepcopy and pickle round trips step like the original."""
    pack = {"opt": opt, "params": params}
    copies = [copy.deepcopy(pack), pickle.loads(pickle.dumps(pack))]
    results = []
    for c in [pack, *copies]:
        for p, g in zip(c["params"], grads):
            p.grad = None if g is None else g.clone()
        c["opt"].step()
        results.append([p.detach().clone() for p in c["params"]])
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other))


def fused_on_eager_kernels() -> Any:
    """fused=True configs: dynamo's graph on eager kernels (exact, no inductor compile time;
    inductor itself is tested in tests/optim/test_optim_flags.py)."""
    import torch._dynamo

    old = _fused.BACKEND
    _fused.BACKEND = "eager"
    torch._dynamo.reset()
    return old


def finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)
