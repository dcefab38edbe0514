"""Step-for-step parity of the five optimizers with the torch built-ins and with the book.

Every case: float64, 24 steps, two param groups with different hyperparameters, a non-contiguous
and a 0-dim parameter, steps where some gradients are None. After every step every parameter
and every state entry is compared with the torch counterpart (where it agrees: see the cases)
and with an independent NumPy reference of the book's formulas, on each path: per-tensor
(``foreach=False``), multi-tensor (``foreach=True``, ``torch._foreach_*``) and fused
(``fused=True``: the update under ``torch.compile``; here with the ``eager`` backend, dynamo's
graph run op by op; inductor itself is tested in ``test_optim_flags.py``). The
multi-tensor and fused paths are compared with the per-tensor path exactly.
"""

from __future__ import annotations

import pytest
import torch
from optim_cases import (
    ATOL,
    CASES,
    DEVICES,
    RTOL,
    TORCH_CASES,
    grad_sequence,
    make_params,
    run,
    set_grads,
)
from optim_reference import book_step, init_state

from torch_dlbasics.optim import _fused

STEPS = 24
PATHS = {"per-tensor": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


@pytest.fixture(autouse=True)
def _fused_on_eager_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    """fused=True with dynamo's graph run op by op (exact), a fresh compile cache per test."""
    import torch._dynamo

    monkeypatch.setattr(_fused, "BACKEND", "eager")
    torch._dynamo.reset()


def _path(case, path: str) -> dict:
    if path == "foreach" and case.foreach_refused:
        pytest.skip("torch refuses foreach=True with a tensor lr/betas (capturable=False)")
    return PATHS[path]


def _torch_twin(case, params):
    try:
        return case.make_torch(params)
    except (TypeError, ValueError, RuntimeError) as err:  # an older torch without the argument
        pytest.skip(f"torch {torch.__version__} cannot build the twin: {err}")


def _close(actual: torch.Tensor, expected: object) -> None:
    expected = torch.as_tensor(expected, dtype=torch.float64)
    torch.testing.assert_close(
        actual.detach().cpu().to(torch.float64), expected, rtol=RTOL, atol=ATOL
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("name", list(CASES))
def test_matches_book_reference(name: str, path: str, device: str) -> None:
    case = CASES[name]
    params = make_params(device)
    opt = case.make_ours(params, **_path(case, path))
    hps = [g for g in opt.param_groups for _ in g["params"]]
    ref = [p.detach().cpu().numpy().copy() for p in params]
    ref_state = [init_state(case.kind, r, hp) for r, hp in zip(ref, hps)]
    for grads in grad_sequence(STEPS):
        set_grads(params, grads)
        assert opt.step() is None
        for i, (p, g) in enumerate(zip(params, grads)):
            if g is not None:
                ref[i] = book_step(case.kind, hps[i], ref[i], g, ref_state[i])
            _close(p, ref[i])
            state = opt.state[p] if p in opt.state else {}
            assert set(state) == set(ref_state[i]), (i, set(state), set(ref_state[i]))
            for key, value in ref_state[i].items():
                _close(state[key], value)


def _torch_state(kind: str, theirs: torch.optim.Optimizer, p: torch.Tensor, lr: float) -> dict:
    """Torch's state of ``p`` in our names (momentum_buffer -> v = -lr * buffer)."""
    state = theirs.state[p] if p in theirs.state else {}
    if kind in ("momentum", "nesterov"):
        return {"v": -lr * state["momentum_buffer"]} if "momentum_buffer" in state else {}
    return dict(state)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("name", TORCH_CASES)
def test_matches_torch(name: str, path: str, device: str) -> None:
    case = CASES[name]
    kw = _path(case, path)
    _torch_twin(case, make_params(device))
    ours = run(lambda ps: case.make_ours(ps, **kw), device, STEPS)
    theirs = run(case.make_torch, device, STEPS)
    for (p_ours, o_ours), (p_theirs, o_theirs) in zip(ours, theirs):
        lrs = [float(g["lr"]) for g in o_ours.param_groups for _ in g["params"]]
        for p, q, lr in zip(p_ours, p_theirs, lrs):
            torch.testing.assert_close(p, q, rtol=RTOL, atol=ATOL)
            expected = _torch_state(case.kind, o_theirs, q, lr)
            state = o_ours.state[p] if p in o_ours.state else {}
            assert set(state) == set(expected)
            for key, value in expected.items():
                assert state[key].dtype == value.dtype, key  # e.g. step: float32 as torch's
                assert state[key].device == value.device, key  # fused: step on the device
                torch.testing.assert_close(state[key], value, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("path", ["foreach", "fused"])
@pytest.mark.parametrize("name", list(CASES))
def test_paths_equal_per_tensor(name: str, path: str, device: str) -> None:
    """The multi-tensor path is bit-identical to the per-tensor path; the fused path agrees to
    rounding (its learning rate is a tensor, multiplied apart from ``add_``'s alpha), and its
    step counts live on the parameters' device as torch's fused steps do."""
    case = CASES[name]
    kw = _path(case, path)
    loop = run(lambda ps: case.make_ours(ps, foreach=False), device, STEPS)
    other = run(lambda ps: case.make_ours(ps, **kw), device, STEPS)

    def same(a: torch.Tensor, b: torch.Tensor) -> None:
        if path == "foreach":
            assert torch.equal(a, b)
        else:
            torch.testing.assert_close(a, b.to(a.device), rtol=RTOL, atol=ATOL)

    for (p_loop, o_loop), (p_other, o_other) in zip(loop, other):
        for p, q in zip(p_loop, p_other):
            same(p, q)
            s, t = (o_loop.state.get(p, {}), o_other.state.get(q, {}))
            assert set(s) == set(t)
            for key in s:
                same(s[key], t[key])
                if key == "step" and path == "fused":
                    assert t[key].device == q.device and t[key].dtype == torch.float32


def test_book_adam_differs_from_torch_with_eps() -> None:
    """The Adam epsilon note: book form and torch form differ by O(eps) (so the switch matters)."""
    grads = grad_sequence(3)
    out = {}
    for after in (False, True):
        params = make_params()
        opt = CASES["adam_book"].ours(
            [{"params": params, "eps": 1e-3, "eps_after_bias_correction": after}]
        )
        for g in grads:
            set_grads(params, g)
            opt.step()
        out[after] = params[1].detach().clone()
    assert not torch.allclose(out[False], out[True], rtol=1e-6, atol=0)
