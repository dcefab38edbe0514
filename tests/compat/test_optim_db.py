"""torch's optimizer test database (``optim_db``) run against our optimizers, side by side with
torch's classes: every CPU config, error input and scheduler input of SGD, Adagrad, Adam and
AdamW. See ``_optim_harness.py`` for the harness, the documented differences and the counts
(``TORCH_DLBASICS_COMPAT_JSON=runs/compat_optim.json`` writes them)."""

from __future__ import annotations

import re
import warnings
from typing import Any

import pytest
import torch
import torch._dynamo
from _optim_harness import (
    DIFFERENCES,
    OURS,
    build,
    compare_16bit,
    compare_with_reference,
    compare_with_torch,
    copies_continue_alike,
    counts,
    differences,
    fused_on_eager_kernels,
    grad_steps,
    load_optim_db,
    make_params,
    record,
    run,
    torch_form,
    write_json,
)

from torch_dlbasics.optim import _fused

DB = load_optim_db()
pytestmark = pytest.mark.skipif(DB is None, reason="this torch ships no optim_db")
INFOS = {i.name: i for i in (DB.optim_db if DB else []) if i.name in OURS}
STEPS = 5
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.complex64]


def _configs() -> list[Any]:
    """(info, kwargs, desc) for every CPU config, with torch's foreach/differentiable/fused."""
    out = []
    for name, info in INFOS.items():
        derive = getattr(DB, "_get_optim_inputs_including_global_cliquey_kwargs", None)
        inputs = derive("cpu", torch.float32, info) if derive else info.optim_inputs_func("cpu")
        for oi in inputs:
            out.append(pytest.param(name, oi.kwargs, oi.desc, id=f"{name}-{oi.desc}"))
    return out


@pytest.fixture(scope="module", autouse=True)
def _report() -> Any:
    old = fused_on_eager_kernels()
    yield
    _fused.BACKEND = old
    write_json()


def _inputs_for(info: Any, dtype: torch.dtype) -> dict[str, Any]:
    """torch's own per-dtype adjustments of its configs (Adam: eps=0.1 in float16)."""
    return {oi.desc: oi.kwargs for oi in info.optim_inputs_func("cpu", dtype)}


@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("name", "kwargs", "desc"), _configs())
def test_config_steps_as_torchs(name: str, kwargs: dict, desc: str, dtype: torch.dtype) -> None:
    """One config, one dtype: ours with torch's constructor arguments, 5 steps (one with a
    None gradient), every parameter and state entry against torch's (or, for a documented
    difference, against the book's float64 reference, and ours in torch's form against
    torch's); 16-bit: no less accurate than torch; float32: deepcopy and pickle continue alike."""
    info, ours_cls = INFOS[name], OURS[name]
    if kwargs.get("fused"):
        torch._dynamo.reset()  # each config compiles afresh (not past the recompile limit)
    kwargs = dict(kwargs)
    base_desc = desc.split(" & ")[0]
    kwargs.update(
        {k: v for k, v in _inputs_for(info, dtype).get(base_desc, {}).items() if k == "eps"}
    )
    if dtype.is_complex and (kwargs.get("fused") or not info.supports_complex):
        pytest.skip("torch's fused kernels take real floating point parameters only")
    if kwargs.get("fused") and dtype not in (torch.float32, torch.float64):
        pytest.skip("fused: compiled in float32 and float64 here (16-bit: tests/optim)")
    differentiable = bool(kwargs.get("differentiable"))
    steps = grad_steps(STEPS, dtype)
    diffs = differences(info, kwargs, dtype=dtype)

    p_theirs = make_params(dtype, differentiable)
    theirs = build(info.optim_cls, p_theirs, kwargs)
    run(theirs, p_theirs, steps)

    p_ours = make_params(dtype, differentiable)
    ours = build(ours_cls, p_ours, kwargs)
    log = run(ours, p_ours, steps)
    low = dtype in (torch.float16, torch.bfloat16)
    if diffs and not low:  # the book's form: against the float64 reference
        params0 = make_params(dtype, False)
        compare_with_reference(info, ours, p_ours, params0, steps, log, dtype)
    # torch's form of ours (the same arguments where nothing differs) equals torch
    p_form = make_params(dtype, differentiable)
    form = build(ours_cls, p_form, torch_form(info, kwargs) if diffs else kwargs)
    run(form, p_form, steps)
    if low:  # ours and torch round differently: both against torch's float64 run
        p64 = make_params(torch.float64, differentiable)
        exact = build(info.optim_cls, p64, {k: v for k, v in kwargs.items() if k != "fused"})
        run(exact, p64, grad_steps(STEPS, torch.float64))
        compare_16bit(p_form, p_theirs, p64, dtype)
    else:
        loose = "torch's float32 step size" in diffs
        compare_with_torch(form, theirs, p_form, p_theirs, dtype, loose)
    if dtype == torch.float32 and not differentiable:
        copies_continue_alike(form, p_form, steps[0])
    outcome = "documented difference" if diffs else "passed"
    record(name, "config", f"{desc} [{dtype}]", outcome, "; ".join(diffs))


def _error_inputs() -> list[Any]:
    out = []
    for name, info in INFOS.items():
        if info.optim_error_inputs_func is None:
            continue
        for err in info.optim_error_inputs_func("cpu", torch.float32):
            desc = err.optimizer_error_input.desc
            out.append(pytest.param(name, err, id=f"{name}-{desc}"))
    return out


@pytest.mark.parametrize(("name", "err"), _error_inputs())
def test_error_input_raises_torchs_error(name: str, err: Any) -> None:
    """The same exception type, and torch's regex on our message."""
    info = INFOS[name]
    oi = err.optimizer_error_input

    def attempt(cls: type) -> None:
        params = oi.params
        if params is None:
            params = [torch.nn.Parameter(torch.randn(2, 2))]
        opt = cls(params, **oi.kwargs)
        if err.error_on == DB.OptimizerErrorEnum.STEP_ERROR:
            for group in opt.param_groups:
                for p in group["params"]:
                    p.grad = torch.rand_like(p)
            opt.step()

    for cls in (info.optim_cls, OURS[name]):
        if issubclass(err.error_type, Warning):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                attempt(cls)
            assert any(
                issubclass(w.category, err.error_type)
                and re.search(err.error_regex, str(w.message))
                for w in caught
            ), (cls, [str(w.message) for w in caught])
        else:
            with pytest.raises(err.error_type, match=err.error_regex):
                attempt(cls)
    record(name, "error input", oi.desc, "passed")


def _scheduler_inputs() -> list[Any]:
    out = []
    for name, info in INFOS.items():
        for k in range(len(info.scheduler_inputs)):
            for oi in info.optim_inputs_func("cpu"):
                out.append(
                    pytest.param(name, k, oi.kwargs, oi.desc, id=f"{name}-sched{k}-{oi.desc}")
                )
    return out


@pytest.mark.parametrize(("name", "k", "kwargs", "desc"), _scheduler_inputs())
def test_scheduler_input_schedules_as_torchs(name: str, k: int, kwargs: dict, desc: str) -> None:
    """torch's scheduler inputs over every config: the same learning rates; the same steps
    where the lr is outside the state; the book's formula (float64 reference) where it is
    inside (Momentum/Nesterov), and torch's form equal to torch."""
    info, ours_cls = INFOS[name], OURS[name]
    schedulers = info.scheduler_inputs[k]
    dtype = torch.float64
    steps = grad_steps(16, dtype)  # StepLR(step_size=10), ReduceLROnPlateau(patience=10) act

    def make(opt: Any) -> list[Any]:
        return [make_sched(opt) for make_sched in schedulers]

    diffs = differences(info, kwargs, scheduled=True)
    p_theirs = make_params(dtype, False)
    theirs = build(info.optim_cls, p_theirs, kwargs)
    log_theirs = run(theirs, p_theirs, steps, make)
    p_ours = make_params(dtype, False)
    ours = build(ours_cls, p_ours, kwargs)
    log = run(ours, p_ours, steps, make)
    lrs_ours = [float(h[0]["lr"]) for h in log]
    lrs_theirs = [float(h[0]["lr"]) for h in log_theirs]
    if "book defaults" not in diffs:
        assert lrs_ours == lrs_theirs and len(set(lrs_ours)) > 1
    if diffs:
        compare_with_reference(info, ours, p_ours, make_params(dtype, False), steps, log, dtype)
        p_form = make_params(dtype, False)
        form = build(ours_cls, p_form, torch_form(info, kwargs))
        log_form = run(form, p_form, steps, make)
        assert [float(h[0]["lr"]) for h in log_form] == lrs_theirs
        if "momentum under a changing lr" not in diffs:
            compare_with_torch(form, theirs, p_form, p_theirs, dtype)
    else:
        compare_with_torch(ours, theirs, p_ours, p_theirs, dtype)
    record(
        name,
        "scheduler input",
        f"{k}: {desc}",
        "documented difference" if diffs else "passed",
        "; ".join(diffs),
    )


@pytest.mark.parametrize("name", [n for n in ("SGD", "Adagrad") if n in INFOS])
def test_sparse_gradients_are_refused_clearly(name: str) -> None:
    """torch's SGD and Adagrad take sparse gradients (``supports_sparse``); ours refuse them
    before anything changes, naming the torch class to use: unsupported, counted."""
    info = INFOS[name]
    assert info.supports_sparse
    w = torch.nn.Parameter(torch.ones(3))
    w.grad = torch.sparse_coo_tensor([[0]], [1.0], (3,))
    opt = OURS[name]([w], lr=0.1)
    with pytest.raises(RuntimeError, match="does not support sparse gradients"):
        opt.step()
    assert torch.equal(w, torch.ones(3))
    record(name, "sparse gradients", "supports_sparse", "unsupported", "sparse gradients")


def test_counts_cover_every_case_without_unexplained_failures() -> None:
    """Runs last in this module: every recorded documented difference names a known reason."""
    summary = counts()
    for outcome in summary["by optimizer"].values():
        assert set(outcome) <= {"passed", "documented difference", "unsupported"}
    from _optim_harness import OUTCOMES

    for o in OUTCOMES:
        if o["outcome"] == "documented difference":
            assert all(r in DIFFERENCES for r in o["reason"].split("; ")), o
