"""torch's own module test database, run against our BatchNorm side by side with torch's.

The cases come from torch: ``torch.testing._internal.common_modules.module_db`` (shipped in the
wheel) holds a ``ModuleInfo`` for ``nn.BatchNorm1d/2d/3d`` with constructor arguments, sample
inputs and error inputs. For every CPU sample, in training and in eval, each check below builds
torch's class and ours from the same constructor arguments and the same state, runs both, and
compares; most checks are those of torch's ``test/test_modules.py`` (forward, factory kwargs,
repr, pickle, non-contiguous inputs, gradcheck/gradgradcheck of the total and every partial
derivative, memory formats, train/eval difference, meta-device construction, error inputs),
plus outputs/gradients/buffers over several steps, ``state_dict``, deepcopy, float16/bfloat16,
``functional_call``, ``torch.export``, autocast, ``torch.compile(fullgraph=True)``, ``vmap`` and
batched gradients, and the book's form (``book=True``) against the book's formulas.

module_db has no entry for ``nn.Dropout*`` or ``nn.SyncBatchNorm`` (torch 2.4 to 2.14): those
are covered by ``tests/nn``. Entries or attributes missing on an older torch are skipped over.

Outcomes: every case passes, or is skipped with a reason that starts with
``documented difference:`` (ours deliberately differs, and the check says how) or
``unsupported:`` (the case does not apply; torch's own class fails it too, or the torch in use
lacks the feature). ``python -m pytest tests/compat/test_module_db.py -rs`` lists them; the last
test writes the counts to ``runs/compat/module_db.json`` (``{"passed": n, "documented
difference": n, "unsupported": n, "reasons": {...}}``), which the docs quote.
"""

from __future__ import annotations

import copy
import io
import json
import math
import pickle
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from torch import nn

from torch_dlbasics.nn import BatchNorm1d, BatchNorm2d, BatchNorm3d

common_modules = pytest.importorskip(
    "torch.testing._internal.common_modules",
    reason="torch's module_db needs the test extra (expecttest)",
)

OURS: dict[type[nn.Module], type[nn.Module]] = {
    nn.BatchNorm1d: BatchNorm1d,
    nn.BatchNorm2d: BatchNorm2d,
    nn.BatchNorm3d: BatchNorm3d,
}
INFOS = [info for info in getattr(common_modules, "module_db", []) if info.module_cls in OURS]
TOL = {
    torch.float64: {"rtol": 1e-10, "atol": 1e-10},
    torch.float32: {"rtol": 1e-5, "atol": 1e-5},
    torch.bfloat16: {"rtol": 1.6e-2, "atol": 1e-2},
    torch.float16: {"rtol": 1e-3, "atol": 1e-3},
}
OUTCOMES: dict[str, list[str]] = defaultdict(list)
REASONS: dict[str, int] = defaultdict(int)


# --- the cases: every sample of every entry, in training and eval -------------------------


def samples(
    info: Any, dtype: torch.dtype = torch.float64, training: bool = True, **kw: Any
) -> list:
    kw.setdefault("requires_grad", False)
    return list(info.module_inputs_func(info, device="cpu", dtype=dtype, training=training, **kw))


def _cases() -> list[Any]:
    out = []
    for info in INFOS:
        for i, s in enumerate(samples(info)):
            if s.forward_input is None:
                continue
            for training in (True, False):
                name = f"{info.name}-{s.desc or i}-{'train' if training else 'eval'}"
                out.append(pytest.param(info, i, training, id=name))
    return out


CASES = _cases()


def sample(info: Any, index: int, dtype: torch.dtype = torch.float64, **kw: Any) -> Any:
    torch.manual_seed(index)  # torch's make_tensor draws from the global generator
    return samples(info, dtype, **kw)[index]


def constructor(s: Any) -> tuple[tuple, dict]:
    return tuple(s.constructor_input.args), dict(s.constructor_input.kwargs)


def forward_input(s: Any) -> torch.Tensor:
    return s.forward_input.args[0]


def pair(info: Any, s: Any, dtype: torch.dtype, training: bool) -> tuple[nn.Module, nn.Module]:
    """Ours and torch's from the sample's constructor arguments, in the same non-trivial state
    (parameters and running statistics drawn at random), in ``training`` mode."""
    args, kwargs = constructor(s)
    theirs = info.module_cls(*args, **kwargs).to(dtype)
    ours = OURS[info.module_cls](*args, **kwargs).to(dtype)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in theirs.parameters():
            p.copy_(torch.rand(p.shape, generator=g) + 0.5)
        if theirs.running_mean is not None:
            theirs.running_mean.copy_(torch.randn(theirs.running_mean.shape, generator=g))
            theirs.running_var.copy_(torch.rand(theirs.running_var.shape, generator=g) + 0.5)
    ours.load_state_dict(theirs.state_dict())
    return ours.train(training), theirs.train(training)


def batches(x: torch.Tensor, n: int, seed: int = 1) -> list[torch.Tensor]:
    """The sample's input, then ``n - 1`` more of its shape and dtype."""
    g = torch.Generator().manual_seed(seed)
    more = [(torch.randn(x.shape, generator=g) * 3 + 1).to(x.dtype) for _ in range(n - 1)]
    return [x.detach(), *more]


def step(m: Callable[..., torch.Tensor], module: nn.Module, x: torch.Tensor, dy_seed: int) -> dict:
    """One forward and backward: output, input and parameter gradients, buffers after."""
    xi = x.detach().clone().requires_grad_(x.is_floating_point())
    y = m(xi)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(dy_seed)).to(y.dtype)
    if y.requires_grad:
        y.backward(dy)
    rec = {
        "out": y.detach(),
        "dx": xi.grad,
        "grads": [None if p.grad is None else p.grad.clone() for p in module.parameters()],
        "buffers": {k: v.clone() for k, v in module.named_buffers()},
    }
    module.zero_grad(set_to_none=True)
    return rec


def assert_same(a: Any, b: Any, dtype: torch.dtype, what: str = "") -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys(), what
        for k in a:
            assert_same(a[k], b[k], dtype, f"{what}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), what
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, dtype, f"{what}[{i}]")
    elif a is None or b is None:
        assert a is None and b is None, what
    else:
        assert a.dtype == b.dtype and a.shape == b.shape, what
        if a.is_floating_point():
            tol = dict(TOL[dtype])
            if dtype in (torch.float16, torch.bfloat16) and b.numel():  # 2 ulp of the scale
                tol["atol"] = max(tol["atol"], 2 * torch.finfo(dtype).eps * float(b.abs().max()))
            torch.testing.assert_close(a, b, **tol, msg=lambda m: f"{what}: {m}")
        else:
            assert torch.equal(a, b), what


def passed(request: pytest.FixtureRequest) -> None:
    OUTCOMES["passed"].append(request.node.nodeid)


def documented(request: pytest.FixtureRequest, reason: str) -> None:
    _skip(request, "documented difference", reason)


def unsupported(request: pytest.FixtureRequest, reason: str) -> None:
    _skip(request, "unsupported", reason)


def _skip(request: pytest.FixtureRequest, kind: str, reason: str) -> None:
    OUTCOMES[kind].append(request.node.nodeid)
    REASONS[f"{kind}: {reason}"] += 1
    pytest.skip(f"{kind}: {reason}")


# --- the checks ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("info", "index", "training"), CASES)
def test_steps_outputs_gradients_buffers(request, info, index, training, dtype) -> None:
    """test_modules' test_forward, extended: three steps of forward and backward, every output,
    input gradient, parameter gradient and buffer compared with torch's; then the ``float()``
    / ``double()`` method keeps parameters and buffers in that dtype, as test_forward checks."""
    s = sample(info, index, dtype)
    ours, theirs = pair(info, s, dtype, training)
    for k, x in enumerate(batches(forward_input(s), 3)):
        assert_same(step(ours, ours, x, k), step(theirs, theirs, x, k), dtype, f"step {k}")
    (ours.double() if dtype == torch.float64 else ours.float())(forward_input(s))
    assert all(
        t.dtype == dtype for t in [*ours.parameters(), *ours.buffers()] if t.is_floating_point()
    )
    passed(request)


@pytest.mark.parametrize(("info", "index", "training"), CASES)
def test_state_dict_repr_pickle_deepcopy(request, info, index, training) -> None:
    """test_repr and test_pickle, plus ``state_dict`` keys and values exchanged both ways and a
    deepcopy: each copy computes what the original does."""
    s = sample(info, index)
    ours, theirs = pair(info, s, torch.float64, training)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert repr(ours) == repr(theirs) and str(ours) == str(theirs)
    x = forward_input(s)
    clones = [copy.deepcopy(ours), pickle.loads(pickle.dumps(ours))]
    buf = io.BytesIO()
    torch.save(ours, buf)
    buf.seek(0)
    clones.append(torch.load(buf, weights_only=False))
    swapped = OURS[info.module_cls](*constructor(s)[0], **constructor(s)[1]).double()
    swapped.load_state_dict(theirs.state_dict())
    clones.append(swapped.train(training))
    want = ours(x)
    for c in clones:
        assert type(c) is type(ours)
        assert_same(c(x), want, torch.float64, "copy")
    theirs.load_state_dict(ours.state_dict())
    passed(request)


@pytest.mark.parametrize(("info", "index", "training"), CASES)
def test_non_contiguous_tensors(request, info, index, training) -> None:
    """test_non_contiguous_tensors: inputs and output gradients made non-contiguous (every
    other element of a doubled last dim) give the contiguous results, for ours and torch's."""
    s = sample(info, index)
    x = forward_input(s)
    if x.dim() == 0:
        unsupported(request, "a 0-dim input cannot be made non-contiguous")

    def nc(t: torch.Tensor) -> torch.Tensor:
        return torch.repeat_interleave(t, 2, dim=-1)[..., ::2].detach()

    results = []
    for m in pair(info, s, torch.float64, training):
        per_module = []
        dy = torch.randn(x.shape, dtype=x.dtype, generator=torch.Generator().manual_seed(3))
        for xin, dyin in ((x, dy), (nc(x), dy), (x, nc(dy)), (nc(x), nc(dy))):
            xi = xin.clone() if xin.is_contiguous() else xin.detach().requires_grad_(False)
            xi = xi.requires_grad_()
            y = m(xi)
            y.backward(dyin)
            per_module.append((y.detach(), xi.grad, [p.grad.clone() for p in m.parameters()]))
            m.zero_grad(set_to_none=True)
        for other in per_module[1:]:
            assert_same(other, per_module[0], torch.float64, "non-contiguous")
        results.append(per_module[0])
    assert_same(results[0], results[1], torch.float64, "ours vs torch")
    passed(request)


@pytest.mark.parametrize("check", ["gradcheck", "gradgradcheck"])
@pytest.mark.parametrize(("info", "index", "training"), CASES)
def test_gradients(request, info, index, training, check) -> None:
    """test_grad / test_gradgrad: gradcheck and gradgradcheck (with batched gradients) of the
    total derivative (input and parameters), and of each partial derivative alone (in
    gradcheck's fast mode, a random projection of the Jacobian, to keep the suite short)."""
    s = sample(info, index, requires_grad=True)
    ours, _ = pair(info, s, torch.float64, training)
    x = forward_input(s)
    if x.numel() == 0:
        unsupported(request, "an empty batch has no derivative to check (torch's skips it too)")
    params = list(ours.parameters())
    run = torch.autograd.gradcheck if check == "gradcheck" else torch.autograd.gradgradcheck
    state = {k: v.clone() for k, v in ours.named_buffers()}

    def fn(*flat: torch.Tensor) -> torch.Tensor:
        for k, v in ours.named_buffers():  # each evaluation from the same running statistics
            v.copy_(state[k])
        return torch.func.functional_call(
            ours, dict(zip([n for n, _ in ours.named_parameters()], flat[1:])), (flat[0],)
        )

    inputs = [x, *(p.detach().clone().requires_grad_() for p in params)]
    assert run(fn, inputs, check_batched_grad=True)
    for i in range(len(inputs)):  # partial derivatives: one input requires grad at a time
        partial = [t.detach().requires_grad_(j == i) for j, t in enumerate(inputs)]
        assert run(fn, partial, check_batched_grad=True, fast_mode=True)  # (a random projection)
    passed(request)


def _mem_formats(x: torch.Tensor) -> tuple[list, list]:
    last = {4: [torch.channels_last], 5: [torch.channels_last_3d]}.get(x.dim(), [])
    return [torch.contiguous_format, *last], [torch.preserve_format, torch.contiguous_format, *last]


@pytest.mark.parametrize(("info", "index", "training"), CASES)
def test_memory_format(request, info, index, training) -> None:
    """test_memory_format: every input and module memory format gives the contiguous output and
    gradients, and the output (and its input gradient) in the input's memory format."""
    s = sample(info, index, requires_grad=True)
    x0 = forward_input(s)
    in_formats, module_formats = _mem_formats(x0)
    for m in pair(info, s, torch.float64, training):
        want = step(m, m, x0, 5)
        for fin in in_formats:
            x = x0.detach().clone().to(memory_format=fin)
            for fmod in module_formats:
                m.to(memory_format=fmod)
                got = step(m, m, x, 5)
                assert_same(got["out"], want["out"], torch.float64, f"{fin}/{fmod} out")
                assert_same(got["dx"], want["dx"], torch.float64, f"{fin}/{fmod} dx")
                assert_same(got["grads"], want["grads"], torch.float64, f"{fin}/{fmod} grads")
                for t in (got["out"], got["dx"]):
                    fmt = fin if fin != torch.contiguous_format else torch.contiguous_format
                    assert t.is_contiguous(memory_format=fmt), (fin, fmod)
    passed(request)


@pytest.mark.parametrize(("info", "index", "training"), CASES)
def test_train_and_eval_differ_and_repr(request, info, index, training) -> None:
    """test_if_train_and_eval_modes_differ: without its ``training`` attribute the forward fails
    on reading it, for ours as for torch's (the entry says train_and_eval_differ)."""
    s = sample(info, index)
    assert getattr(info, "train_and_eval_differ", True)
    for m in pair(info, s, torch.float64, training):
        delattr(m, "training")
        with pytest.raises(AttributeError, match="'training'"):
            m(forward_input(s))
    passed(request)


@pytest.mark.parametrize(("info", "index", "training"), CASES)
def test_factory_kwargs_and_meta_device(request, info, index, training) -> None:
    """test_factory_kwargs and test_device_ctx_init: ``device``/``dtype`` reach every parameter
    and buffer, and construction under ``torch.device('meta')`` gives meta tensors with the
    metadata of the CPU ones (ours and torch's alike)."""
    s = sample(info, index)
    args, kwargs = constructor(s)
    cls = OURS[info.module_cls]
    for dtype in (torch.float32, torch.float64):
        for m in (
            cls(*args, **kwargs, device="cpu", dtype=dtype),
            info.module_cls(*args, **kwargs, device="cpu", dtype=dtype),
        ):
            for t in [*m.parameters(), *m.buffers()]:
                assert t.device.type == "cpu" and (t.dtype == dtype or not t.is_floating_point())
    with torch.device("meta"):
        metas = [cls(*args, **kwargs), info.module_cls(*args, **kwargs)]
    cpu = cls(*args, **kwargs)
    for meta in metas:
        for a, b in zip([*meta.parameters(), *meta.buffers()], [*cpu.parameters(), *cpu.buffers()]):
            assert a.is_meta and (a.shape, a.dtype, a.stride(), a.requires_grad) == (
                b.shape,
                b.dtype,
                b.stride(),
                b.requires_grad,
            )
    meta = cls(*args, **kwargs, device="meta").to_empty(device="cpu")
    meta.reset_parameters()
    assert_same(dict(meta.state_dict()), dict(cpu.state_dict()), torch.float32, "to_empty")
    passed(request)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("info", "index", "training"), CASES)
def test_reduced_precision(request, info, index, training, dtype) -> None:
    """float16/bfloat16 inputs to a float32 module (how mixed precision meets BatchNorm), and a
    module converted to that dtype: ours against torch's, steps, gradients and buffers."""
    s = sample(info, index, torch.float32)
    x = forward_input(s).to(dtype)
    ours, theirs = pair(info, s, torch.float32, training)
    for k, xk in enumerate(batches(x, 2)):
        assert_same(step(ours, ours, xk, k), step(theirs, theirs, xk, k), dtype, f"step {k}")
    ours, theirs = (m.to(dtype) for m in pair(info, s, torch.float32, training))
    try:
        want = step(theirs, theirs, x, 7)
    except RuntimeError as e:
        unsupported(
            request, f"torch's own class has no {dtype} CPU kernel for a {dtype} module ({e})"
        )
    got = step(ours, ours, x, 7)
    # Both rounded to the dtype: each no farther from the float64 step than the other, give or
    # take 2 ulp of the scale (ours computes in float32 inside; torch's kernels may not).
    m64 = pair(info, s, torch.float64, training)[0]
    ref64 = step(m64, m64, x.double(), 7)
    for name in ("out", "dx"):
        if got[name] is None or not got[name].numel():
            continue
        err = [float((r[name].double() - ref64[name]).abs().max()) for r in (got, want)]
        slack = 2 * torch.finfo(dtype).eps * float(ref64[name].abs().max())
        assert err[0] <= err[1] + slack, (name, err, slack)
    passed(request)


@pytest.mark.parametrize(("info", "index", "training"), CASES)
def test_functional_call(request, info, index, training) -> None:
    """``torch.func.functional_call`` with given parameters and buffers: outputs and parameter
    gradients as torch's, the given buffers updated (the module's own left alone)."""
    s = sample(info, index)
    ours, theirs = pair(info, s, torch.float64, training)
    x = forward_input(s)
    results = []
    for m in (ours, theirs):
        state = {
            k: v.detach()
            .clone()
            .requires_grad_(v.is_floating_point() and k in dict(m.named_parameters()))
            for k, v in m.state_dict().items()
        }
        own = {k: v.clone() for k, v in m.state_dict().items()}
        y = torch.func.functional_call(m, state, (x,))
        wrt = [v for v in state.values() if v.requires_grad]
        grads = torch.autograd.grad(y.square().sum(), wrt) if wrt else []
        assert_same(dict(m.state_dict()), own, torch.float64, "module untouched")
        results.append((y.detach(), list(grads), {k: v.detach() for k, v in state.items()}))
    assert_same(results[0], results[1], torch.float64, "functional_call")
    passed(request)


@pytest.mark.parametrize(("info", "index", "training"), CASES)
def test_torch_export(request, info, index, training) -> None:
    """``torch.export.export``: the exported program computes eager's output and, in training,
    moves its buffers as eager moves the module's."""
    s = sample(info, index)
    ours, theirs = pair(info, s, torch.float64, training)
    x = forward_input(s)
    torch_error = None
    try:
        torch.export.export(copy.deepcopy(theirs), (x,))
    except Exception as e:  # torch's own class fails: momentum=None's float(num_batches_tracked)
        torch_error = f"{type(e).__name__}"
    program = torch.export.export(copy.deepcopy(ours), (x,)).module()
    for k, xk in enumerate(batches(x, 2)):
        assert_same(program(xk), ours(xk), torch.float64, f"export step {k}")
        kept = dict(program.named_buffers())  # (torch 2.4 keeps only the buffers it uses)
        if torch.__version__ >= "2.5":
            assert {k for k, _ in ours.named_buffers()} == kept.keys()
        theirs_kept = {k: v for k, v in ours.named_buffers() if k in kept}
        assert_same(kept, theirs_kept, torch.float64, "buffers")
    if torch_error is not None:
        unsupported(request, f"torch's own class cannot be exported here ({torch_error}); ours can")
    passed(request)


@pytest.mark.parametrize(("info", "index", "training"), CASES)
def test_autocast(request, info, index, training) -> None:
    """Under ``torch.autocast('cpu', dtype=torch.bfloat16)``: float32 and bfloat16 inputs, ours
    as torch's (BatchNorm runs in its input's dtype, statistics in float32)."""
    s = sample(info, index, torch.float32)
    ours, theirs = pair(info, s, torch.float32, training)
    for xk in (forward_input(s), forward_input(s).to(torch.bfloat16)):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            a, b = step(ours, ours, xk, 1), step(theirs, theirs, xk, 1)
        assert_same(
            a, b, torch.bfloat16 if xk.dtype == torch.bfloat16 else torch.float32, "autocast"
        )
    passed(request)


@pytest.mark.slow
@pytest.mark.parametrize(("info", "index", "training"), CASES)
def test_torch_compile_fullgraph(request, info, index, training) -> None:
    """``torch.compile(fullgraph=True)`` (aot_eager: dynamo's capture and AOTAutograd over our
    Function): two steps equal eager's outputs, gradients and buffers."""
    s = sample(info, index)
    ours, theirs = pair(info, s, torch.float64, training)
    eager = copy.deepcopy(ours)
    torch._dynamo.reset()
    compiled = torch.compile(ours, fullgraph=True, backend="aot_eager")
    for k, xk in enumerate(batches(forward_input(s), 2)):
        assert_same(
            step(compiled, ours, xk, k), step(eager, eager, xk, k), torch.float64, f"step {k}"
        )
    try:
        torch._dynamo.reset()
        torch.compile(theirs, fullgraph=True, backend="aot_eager")(forward_input(s))
    except Exception as e:
        unsupported(
            request,
            f"torch's own class does not compile with fullgraph=True here ({type(e).__name__}); ours does",
        )
    passed(request)


@pytest.mark.parametrize(("info", "index", "training"), CASES)
def test_vmap_and_batched_gradients(request, info, index, training) -> None:
    """``torch.vmap`` over a stack of inputs and ``is_grads_batched`` gradients, as torch's:
    where torch's runs (eval, or no running statistics), ours gives its numbers; where it
    refuses (training with running statistics), ours refuses in its words, buffers untouched."""
    s = sample(info, index)
    ours, theirs = pair(info, s, torch.float64, training)
    x = forward_input(s)
    xs = torch.stack(batches(x, 2))
    try:
        want = torch.vmap(theirs)(xs)
    except RuntimeError as e:
        before = {k: v.clone() for k, v in ours.state_dict().items()}
        with pytest.raises(RuntimeError, match=str(e).split("\n")[0][:40]):
            torch.vmap(ours)(xs)
        assert_same(dict(ours.state_dict()), before, torch.float64, "refused vmap")
        unsupported(
            request,
            "vmap of a training step that updates running statistics (torch refuses it too)",
        )
    assert_same(torch.vmap(ours)(xs), want, torch.float64, "vmap")
    grads = []
    for m in (ours, theirs):
        xi = x.detach().clone().requires_grad_()
        y = m(xi)
        vs = torch.randn(3, *y.shape, dtype=y.dtype, generator=torch.Generator().manual_seed(2))
        grads.append(
            torch.autograd.grad(
                y, [xi, *m.parameters()], vs, is_grads_batched=True, allow_unused=True
            )
        )
    assert_same(list(grads[0]), list(grads[1]), torch.float64, "batched grads")
    passed(request)


@pytest.mark.parametrize(("info", "index", "training"), CASES)
def test_book_form_against_the_books_formulas(request, info, index, training) -> None:
    """``book=True`` for the same sample: documented differences from torch's class (per
    activation statistics of the flattened input, running_var from 0 with the biased batch
    variance), checked against those formulas: torch's BatchNorm1d on ``x.flatten(1)`` for the
    output and gradients, the book's running statistics written out."""
    s = sample(info, index)
    x = forward_input(s)
    args, kwargs = constructor(s)
    d = math.prod(x.shape[1:])
    book = OURS[info.module_cls](d, *args[1:], **kwargs, book=True).double().train(training)
    ref = nn.BatchNorm1d(d, *args[1:], **kwargs).double().train(training)
    ref.load_state_dict(book.state_dict())
    rm = None if book.running_mean is None else book.running_mean.clone()
    rv = None if book.running_var is None else book.running_var.clone()
    assert rv is None or torch.equal(rv, torch.zeros(d, dtype=torch.float64))  # the book's start
    for k, xk in enumerate(batches(x, 2)):
        got = step(book, book, xk, k)
        want = step(lambda t: ref(t.flatten(1)).view(t.shape), ref, xk, k)
        assert_same(
            [got["out"], got["dx"], got["grads"]],
            [want["out"], want["dx"], want["grads"]],
            torch.float64,
            "book",
        )
        if rm is not None and training and xk.shape[0] > 0:
            flat = xk.flatten(1)
            m = book.momentum if book.momentum is not None else 1.0 / (k + 1)
            rm = (1 - m) * rm + m * flat.mean(0)
            rv = (1 - m) * rv + m * flat.var(0, correction=0)  # biased: the book's
            assert_same(
                [book.running_mean, book.running_var], [rm, rv], torch.float64, "book stats"
            )
    documented(
        request,
        "book=True normalises per activation (num_features = C*H*W) and keeps the biased variance from 0: checked against those formulas",
    )


def _error_cases() -> list[Any]:
    out = []
    for info in INFOS:
        func = getattr(info, "module_error_inputs_func", None)
        if func is None:
            continue
        for i, _ in enumerate(
            func(info, device="cpu", dtype=torch.float32, requires_grad=False, training=True)
        ):
            out.append(pytest.param(info, i, id=f"{info.name}-error{i}"))
    return out or [pytest.param(None, 0, id="no-error-inputs")]


@pytest.mark.parametrize(("info", "index"), _error_cases())
def test_error_inputs(request, info, index) -> None:
    """test_errors: each error input raises the same error type, matching the same regex, at
    the same stage (construction or forward) for ours as for torch's."""
    if info is None:
        unsupported(request, "this torch's module_db has no error inputs for BatchNorm")
    err = info.module_error_inputs_func(
        info, device="cpu", dtype=torch.float32, requires_grad=False, training=True
    )[index]
    s = err.module_error_input
    args, kwargs = constructor(s)
    for cls in (info.module_cls, OURS[info.module_cls]):
        if err.error_on == common_modules.ModuleErrorEnum.CONSTRUCTION_ERROR:
            with pytest.raises(err.error_type, match=err.error_regex):
                cls(*args, **kwargs)
        else:
            m = cls(*args, **kwargs)
            before = {k: v.clone() for k, v in m.state_dict().items()}
            with pytest.raises(err.error_type, match=err.error_regex):
                m(*s.forward_input.args, **s.forward_input.kwargs)
            if cls is not info.module_cls:  # and ours changed nothing (torch counts the batch)
                assert_same(dict(m.state_dict()), before, torch.float32, "refused")
    passed(request)


def test_zz_counts() -> None:
    """Writes the counts of this run to runs/compat/module_db.json (quoted by the docs)."""
    counts = {k: len(v) for k, v in OUTCOMES.items()}
    report = {
        "torch": torch.__version__,
        "entries": [info.name for info in INFOS],
        "cases": len(CASES),
        **{k: counts.get(k, 0) for k in ("passed", "documented difference", "unsupported")},
        "reasons": dict(sorted(REASONS.items())),
    }
    out = Path(__file__).resolve().parents[2] / "runs" / "compat" / "module_db.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
