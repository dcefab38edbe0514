"""The fused path (``fused=True``): the per-tensor update function under ``torch.compile``.

The same readable update function, traced for the parameters of a step with a gradient
(``fullgraph=True``: one graph per call, so a compile error raises before that call writes
anything); inductor then fuses each tensor's update into one loop (CPU: C++, CUDA: Triton).
Nothing of the maths is written twice.

Chunks: the parameters go to the compiled function :data:`CHUNK` at a time, in order, with
static shapes. Chunks of the same shapes, dtypes and states are the same graph, compiled once:
2000 parameters of one shape compile two graphs (a full chunk and the rest) instead of one
graph of 2000 updates, whose compile time grows with its size. A group of at most
:data:`CHUNK` parameters is one graph, as before. A step whose first chunk fails to compile
raises before anything is written; a later chunk that fails (after earlier chunks wrote) runs
the same update uncompiled, with a warning, so no step is left half done.

Recompiles: the learning rate and the step counts enter the graph as tensors, so an LR
scheduler does not recompile. Other hyperparameters are Python numbers baked into the graph:
changing one (a scheduler cycling ``momentum`` or ``betas``) recompiles, and so does a new set
of parameters with gradients. Past dynamo's recompile limit (raised to that limit times the
number of distinct chunks of a step) such a chunk runs the same update uncompiled (a warning
says so; nothing is written before the compiled call would have run). Each update function
has its own compile cache (its own code object), so the five optimizers do not share one
limit.

Calls after the first: dynamo checks its guards on every call, which on CPU cost more than the
kernel's margin (resnet18's 62 parameters, 125 tensors: 0.5-0.8 ms a step on this 2-core AMD
EPYC, against a 3 ms SGD step). So each compiled graph is kept here with the order of its
inputs among the call's tensors and dynamo's own check of those tensors (``TensorGuards``:
type, dtype, device, shape, strides, ``requires_grad``, dispatch keys), and a later call whose
tensors pass that check, with the same hyperparameters, the same first-step arguments per
parameter and the same global state (grad and inference mode, default dtype, deterministic
algorithms; no torch function mode but ``torch.device`` contexts, no dispatch mode, the default
compile stance), calls the graph directly. Anything else (a tensor passed twice, another
mode, a torch without ``TensorGuards``) goes through dynamo as before. Values are the same
either way: it is the same graph. Under a torch dispatch mode, which dynamo does not compile,
the update runs uncompiled.

This room is the one to tune for speed; the tests compare it with the per-tensor path step by
step.
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import Tensor

__all__ = ["DEVICES", "Call", "calls", "check_available", "run", "scalars"]

DEVICES = ("cpu", "cuda")
"""Devices with an inductor backend here: C++ on CPU, Triton on CUDA."""

BACKEND = "inductor"
"""The ``torch.compile`` backend (tests also use ``"eager"``: dynamo's graph run op by op,
bit-identical to the per-tensor path, without inductor's compile time)."""

INDUCTOR_OPTIONS = {"realize_opcount_threshold": 4}
"""Compute a chain of more than 4 ops once, into a buffer, instead of inlining it into every loop
that reads it. Inductor inlines such chains up to 30 ops by default, which puts Adam's bias
correction (``lr_t``: two ``pow``, a ``sqrt``, a divide, all on the 0-dim step count) inside the
per-element loop, recomputed for every vector: 2.0-2.9x torch's ``fused=True`` Adam/AdamW on one
10M-element float32 tensor, against 1.03-1.16x with this threshold (this 2-core AMD EPYC, torch
2.14.1, 2 threads). The other optimizers' updates have no such chain and time the same either way."""

CHUNK = 64
"""Parameters per compiled call. Inductor's compile time grows with the number of updates in a
graph (cold, on this 2-core AMD EPYC with torch 2.14.1: 19 s for resnet18's 62 tensors, 227 s
for 2000 tensors of 1000 elements); chunks of repeated shapes reuse one graph. resnet18's
parameter set stays one graph."""

try:  # dynamo's check of a tensor's layout, as its guards make it (C++)
    from torch._C._dynamo.guards import TensorGuards
except ImportError:  # pragma: no cover - a torch whose guards live elsewhere
    TensorGuards = getattr(getattr(torch._C._dynamo, "guards", None), "TensorGuards", None)


@dataclass
class _Graph:
    """A compiled graph called without dynamo: its inputs' positions among the call's tensors
    (:func:`_tensors`) and dynamo's check of those tensors."""

    guards: Any
    fn: Callable[..., Any]
    order: tuple[int, ...]


_AVAILABLE: set[str] = set()
_COMPILED: dict[tuple[Callable[..., None], str], tuple[Callable[..., None], ...]] = {}
_GRAPHS: dict[tuple[Any, ...], list[_Graph]] = {}
_CAUGHT: list[tuple[list[Any], Callable[..., Any]]] = []  # the backend's graphs of one call
_WARNED: set[Callable[..., None]] = set()


def check_available(device: torch.device) -> None:
    """Raise ``RuntimeError`` unless inductor can compile for ``device`` (checked once)."""
    kind = device.type
    if kind in _AVAILABLE or kind not in DEVICES or BACKEND != "inductor":
        return  # other devices are refused with torch's fused message by the engine
    if kind == "cpu":
        found, what = _cxx() is not None, "a C++ compiler (g++ or clang++, or set CXX)"
    else:
        from torch.utils._triton import has_triton

        found, what = has_triton(), "Triton"
    if not found:
        raise RuntimeError(
            f"fused=True compiles the update with torch.compile (inductor), which needs {what} "
            f"for {kind} tensors, and none was found; use fused=None (the default paths) or "
            "install it"
        )
    _AVAILABLE.add(kind)


def _cxx() -> Optional[str]:
    names = [os.environ.get("CXX")]
    try:
        from torch._inductor import config

        names += [c for c in config.cpp.cxx if isinstance(c, str)]
    except Exception:  # pragma: no cover - an inductor without this setting
        pass
    for name in [*names, "g++", "c++", "clang++"]:
        if name and shutil.which(name):
            return name
    return None


def scalars(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The learning rate as a 0-dim tensor (a new value does not recompile); other tensor
    hyperparameters (betas) as numbers, as on the eager paths (dynamo of torch 2.4 cannot
    trace them as tensors in ``addcmul_``'s value or ``lerp_``'s weight)."""
    out = {k: v.item() if isinstance(v, Tensor) and k != "lr" else v for k, v in kwargs.items()}
    lr = out.get("lr")
    if isinstance(lr, Tensor):
        out["lr"] = lr.reshape(())
    elif lr is not None:
        out["lr"] = _lr_tensor(float(lr))
    return out


_LR: dict[str, Tensor] = {}


def _lr_tensor(lr: float) -> Tensor:
    """A float64 0-dim tensor of ``lr``, the same one while ``lr`` stays (graphs only read it)."""
    key = lr.hex()  # (keeps -0.0 apart from 0.0)
    t = _LR.get(key)
    if t is None:
        if len(_LR) >= 64:
            _LR.clear()
        t = _LR[key] = torch.tensor(lr, dtype=torch.float64)
    return t


@dataclass
class Call:
    """One compiled call: a chunk of parameters, its tensors and the kept graph that takes them."""

    args: tuple[Any, ...]
    tensors: Optional[list[Tensor]]  # None: a tensor passed twice (dynamo only)
    key: Optional[tuple[Any, ...]]  # None: dynamo only (also under another global state)
    graph: Optional[_Graph] = None


def calls(
    update: Callable[..., None],
    params: list[Tensor],
    grads: list[Tensor],
    states: list[dict[str, Any]],
    state_args: tuple[Optional[str], ...],
    n_scratch: int,
    kwargs: list[dict[str, Any]],
    which: list[int],
) -> list[Call]:
    """The compiled calls of a step, :data:`CHUNK` parameters each, in order, each with the kept
    graph whose check its tensors pass (reads only). Parameter ``i`` takes the keyword
    arguments ``kwargs[which[i]]`` (state that existed, state created this step; one dict where
    they are the same, so the first step runs the later steps' graph)."""
    is_step = [key == "step" for key in state_args]
    constants, state = _constants(kwargs), _global_state()
    out = []
    for start in range(0, len(params), CHUNK):
        end = start + CHUNK
        columns = [
            None if key is None else [state[key] for state in states[start:end]]
            for key in state_args
        ]
        args = (params[start:end], grads[start:end], columns, is_step, n_scratch, kwargs)
        args += (which[start:end],)
        tensors = _tensors(args)
        key = None
        if constants is not None and state is not None and tensors is not None:
            key = (update, BACKEND, len(tensors), tuple(args[-1]), constants, state)
        call = Call(args, tensors, key)
        call.graph = _known(call)
        out.append(call)
    return out


def run(update: Callable[..., None], calls: list[Call]) -> None:
    """Run the calls of a step: a kept graph directly, others through dynamo (compiling).
    Under a torch dispatch mode (a profiler, a flop counter), which dynamo does not compile,
    the same update runs uncompiled, so the mode sees its ops."""
    compiled, plain = _compiled(update)
    if torch._C._len_torch_dispatch_stack():
        for call in calls:
            plain(*call.args)
        return
    for n, call in enumerate(calls):
        if call.graph is not None:
            call.graph.fn(*[call.tensors[i] for i in call.graph.order])  # type: ignore[index]
            continue
        try:  # (_CAUGHT is empty here: emptied after every compiled call)
            with _recompile_limit_for(len(calls)):
                compiled(*call.args)
        except Exception as err:  # nothing of this chunk ran: fullgraph=True traces first
            if not (_recompile_limit(err) or n > 0):
                raise  # nothing of the step was written
            _warn_once(update, err)
            plain(*call.args)
        else:
            _keep(call)
        finally:
            del _CAUGHT[:]


def _tensors(args: tuple[Any, ...]) -> Optional[list[Tensor]]:
    """Every tensor of a compiled call, in a fixed order; ``None`` where one is passed twice
    (dynamo deduplicates it: the graph would have fewer inputs)."""
    params, grads, columns, _, _, kwargs, _ = args
    tensors = [*params, *grads]
    for column in columns:
        if column is not None:
            tensors += column
    if len(set(map(id, tensors))) != len(tensors):
        return None
    seen: set[int] = set()
    for kw in kwargs:  # (the two dicts may share a learning rate: one input)
        for v in kw.values():
            if isinstance(v, Tensor) and id(v) not in seen:
                seen.add(id(v))
                tensors.append(v)
    return tensors


def _constants(kwargs: list[dict[str, Any]]) -> Optional[tuple[Any, ...]]:
    """The hyperparameters baked into the graph (all but tensors), as a cache key; ``None``
    where one is not a plain number, bool, ``None`` or tuple of them."""
    out = []
    for kw in kwargs:
        for k, v in kw.items():
            if isinstance(v, Tensor):
                out.append((k, Tensor))
            elif (
                v is None
                or type(v) in (bool, int, float)
                or (type(v) is tuple and all(type(x) in (bool, int, float) for x in v))
            ):
                out.append((k, type(v), v))
            else:
                return None
        out.append(None)  # (the end of one dict)
    return tuple(out)


def _global_state() -> Optional[tuple[Any, ...]]:
    """The global state the graph was compiled under; ``None`` where dynamo would run or
    trace something else (a torch function or dispatch mode, a compile stance)."""
    if torch._C._len_torch_dispatch_stack() or not _only_device_modes():
        return None
    stance = getattr(getattr(torch._dynamo, "eval_frame", None), "_stance", None)
    if stance is not None and stance.stance != "default":
        return None
    return (
        torch.is_grad_enabled(),
        torch.is_inference_mode_enabled(),
        torch.get_default_dtype(),
        torch.are_deterministic_algorithms_enabled(),
    )


def _only_device_modes() -> bool:
    """No torch function mode but ``torch.device(...)`` contexts (``set_default_device``),
    which only change where new tensors go: the update makes none."""
    if not torch._C._len_torch_function_stack():
        return True
    from torch.utils._device import DeviceContext

    modes = torch.overrides._get_current_function_mode_stack()
    return all(type(mode) is DeviceContext for mode in modes)


def _known(call: Call) -> Optional[_Graph]:
    """The kept graph for the call's hyperparameters and its tensors' layout, if there is one."""
    if call.key is None:
        return None
    for graph in _GRAPHS.get(call.key, ()):
        if graph.guards.check(*call.tensors):
            return graph
    return None


def _keep(call: Call) -> None:
    """Keep the graph the backend compiled in this call (if it compiled exactly one, whose
    inputs are all among the call's tensors) for :func:`_known`."""
    if call.key is None or TensorGuards is None or len(_CAUGHT) != 1:
        return
    inputs, fn = _CAUGHT[0]
    tensors = call.tensors
    assert tensors is not None
    position = {id(t): i for i, t in enumerate(tensors)}
    order = tuple(position.get(id(x), -1) for x in inputs)
    if -1 in order:
        return
    try:
        guards = TensorGuards(*tensors, dynamic_dims_sizes=None, dynamic_dims_strides=None)
    except TypeError:  # pragma: no cover - an older signature
        return
    _GRAPHS.setdefault(call.key, []).append(_Graph(guards, fn, order))


def _warn_once(update: Callable[..., None], err: Exception) -> None:
    if update in _WARNED:
        return
    _WARNED.add(update)
    if _recompile_limit(err):
        why = (
            "torch.compile reached its recompile limit (many different sets of parameters "
            "with gradients, or changing hyperparameters other than lr)"
        )
    else:
        why = f"a chunk of parameters failed to compile after earlier chunks were updated ({err})"
    warnings.warn(
        f"fused=True ({update.__name__}): {why}; such steps run the same update uncompiled",
        stacklevel=5,
    )


@contextmanager
def _recompile_limit_for(chunks: int) -> Iterator[None]:
    """dynamo's recompile limit times ``chunks``: every distinct chunk is one cache entry of
    the one compiled function."""
    from torch._dynamo import config

    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    if chunks <= 1:
        yield
        return
    with config.patch(**{name: getattr(config, name) * chunks}):
        yield


def _recompile_limit(err: Exception) -> bool:
    """dynamo's 'too many recompiles' under fullgraph=True (its type differs across versions)."""
    name = type(err).__name__
    if name in ("FailOnRecompileLimitHit", "RecompileLimitExceeded", "CacheLimitExceeded"):
        return True
    text = str(err).lower()
    return name == "Unsupported" and ("recompile limit" in text or "cache_size_limit" in text)


def _compiled(update: Callable[..., None]) -> tuple[Callable[..., None], Callable[..., None]]:
    fn = _COMPILED.get((update, BACKEND))
    if fn is None:
        from ._step import StepCount

        def apply(
            params: list[Tensor],
            grads: list[Tensor],
            columns: list[Optional[list[Tensor]]],
            is_step: list[bool],
            n_scratch: int,
            kwargs: list[dict[str, Any]],
            which: list[int],
        ) -> None:
            for i in range(len(params)):
                state = [
                    None if c is None else StepCount([c[i]]) if step else c[i]
                    for c, step in zip(columns, is_step)
                ]
                update(params[i], grads[i], *state, *([None] * n_scratch), **kwargs[which[i]])

        # A code object of its own: dynamo keeps its compile cache per code object.
        apply.__code__ = apply.__code__.replace(co_name=f"fused_{update.__name__}")
        # Static shapes: chunks of other shapes are other graphs, not one dynamic graph.
        compiled = torch.compile(apply, fullgraph=True, dynamic=False, backend=_backend(BACKEND))
        fn = compiled, apply
        _COMPILED[update, BACKEND] = fn
    return fn


def _backend(name: str) -> Callable[..., Any]:
    """The backend ``name`` ("inductor" with :data:`INDUCTOR_OPTIONS`, or "eager"), which also
    hands each graph it compiles, with its example inputs, to :func:`_keep`."""

    def backend(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable[..., Any]:
        if name == "inductor":
            from torch._inductor.compile_fx import compile_fx

            fn = compile_fx(gm, example_inputs, config_patches=INDUCTOR_OPTIONS)
        else:
            fn = gm.forward
        _CAUGHT.append((list(example_inputs), fn))
        return fn

    return backend
