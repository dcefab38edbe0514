"""Optimizer steps: ours against torch.optim's default, for-loop, foreach and fused paths.

Parameter sets: torchvision ``resnet18``'s (62 tensors, 11.7M elements), one tensor of 100M
elements (bandwidth: 400 MB per tensor) and 2,000 tensors of 1,000 elements (per-tensor
overhead); on CUDA also 32 tensors of 16M. Each row is one optimizer on one set against one
torch implementation, float32, gradients fixed (a step does not touch them). The figures a row
adds are ``numel``, ``tensors`` and ``bytes_per_elem``, the minimal traffic of a step (Adam
reads p, g, m, v and writes p, m, v: 28 B per element; SGD 12; Momentum, Nesterov, AdaGrad 20),
from which the report computes GB/s; ``bandwidth`` rows measure the machine's copy (8 B per
element) and in-place axpy (``y += a x``, 12 B) on the same number of elements, in the same run,
as the physical limit of a read-modify-write step.

Other rows: ``ours foreach`` compares our two code paths; ``compiled`` times our step under
``torch.compile`` against torch's fused kernel (with the compile time); ``sqrt floor`` times
``torch.sqrt`` alone over the set against torch's whole fused AdaGrad step (the floor of any
unfused AdaGrad/Adam step).
"""

from __future__ import annotations

import time
from typing import Any

import torch
from common import Pair, Side, Unsupported, case, target

SECTION = "optim"

# name: (our class's kwargs, torch class, torch kwargs, minimal bytes per float32 element,
#        state tensors per parameter)
OPTIMIZERS: dict[str, tuple[dict[str, Any], str, dict[str, Any], int, int]] = {
    "SGD": ({"lr": 0.01}, "SGD", {"lr": 0.01}, 12, 0),
    "Momentum": ({"lr": 0.01, "momentum": 0.9}, "SGD", {"lr": 0.01, "momentum": 0.9}, 20, 1),
    "Nesterov": (
        {"lr": 0.01, "momentum": 0.9},
        "SGD",
        {"lr": 0.01, "momentum": 0.9, "nesterov": True},
        20,
        1,
    ),
    "AdaGrad": ({"lr": 0.01, "eps": 1e-7}, "Adagrad", {"lr": 0.01, "eps": 1e-7}, 20, 1),
    "Adam": ({"lr": 1e-3, "eps": 1e-7}, "Adam", {"lr": 1e-3, "eps": 1e-7}, 28, 2),
}

FUSED = target("fused=True vs torch fused=True", 1.0, "≤ 1.0x torch fused=True")
FUSED_GPU = target(
    "fused=True vs copy bandwidth (GPU)",
    0.8,
    "≥ 80 % of copy bandwidth",
    metric="copy_fraction",
    op=">=",
)
DEFAULT = target("default path vs torch's default", 1.0, "≤ 1.0x torch default")


def parameter_sets(device: str, quick: bool) -> dict[str, list[list[int]]]:
    """Shapes of each parameter set, by name."""
    if quick:
        return {"16x64K": [[2**16]] * 16}
    sets: dict[str, list[list[int]]] = {}
    try:
        import torchvision

        sets["resnet18"] = [list(p.shape) for p in torchvision.models.resnet18().parameters()]
    except ImportError:  # pragma: no cover - torchvision is in the test/examples extras
        pass
    sets["100M"] = [[100_000_000]]
    sets["2000x1000"] = [[1000]] * 2000
    if device.startswith("cuda"):
        sets["32x16M"] = [[16 * 2**20]] * 32
    return sets


def _numel(shapes: list[list[int]]) -> int:
    return sum(torch.Size(s).numel() for s in shapes)


def _step_case(
    name: str,
    set_name: str,
    shapes: list[list[int]],
    variant: str,
    ours_kw: dict[str, Any],
    torch_kw: dict[str, Any] | None,
    *,
    builder: str = "step_pair",
    ours: str | None = None,
    builtin: str | None = None,
    builtin_ours_kw: dict[str, Any] | None = None,
    target_: dict[str, Any] | None = None,
) -> dict[str, Any]:
    numel = _numel(shapes)
    _, _, _, bpe, state = OPTIMIZERS[name]
    params: dict[str, Any] = {
        "optimizer": name,
        "shapes": shapes,
        "ours_kw": ours_kw,
        "torch_kw": torch_kw,
    }
    if builtin_ours_kw is not None:
        params["builtin_ours_kw"] = builtin_ours_kw
    return case(
        SECTION,
        f"optim/{name}/{set_name}/{variant}",
        f"{name} {set_name} {variant}",
        builder=builder,
        params=params,
        ours=ours or f"ours {_label(ours_kw)}",
        builtin=builtin or f"torch {_label(torch_kw)}",
        target=target_,
        extra={
            "tensors": len(shapes),
            "numel": numel,
            "bytes_per_elem": bpe,
            "bandwidth_case": f"optim/bandwidth/{set_name}",
        },
        bytes_needed=2 * 4 * numel * (2 + state + 2),  # p, g, state, ~2 temporaries; 2 sides
        repeats=10 if numel > 50e6 else None,
    )


def _bandwidth_case(set_name: str, numel: int) -> dict[str, Any]:
    return case(
        SECTION,
        f"optim/bandwidth/{set_name}",
        f"bandwidth {set_name} float32 ({numel:,} elements)",
        kind="bandwidth",
        builder="bandwidth",
        params={"numel": numel},
        ours="axpy y += a*x (12 B/element)",
        builtin="copy y = x (8 B/element)",
        extra={"numel": numel, "bytes_per_elem": 12, "builtin_bytes_per_elem": 8},
        bytes_needed=3 * 4 * numel,
        repeats=10 if numel > 50e6 else None,
    )


def cases(device: str, quick: bool) -> list[dict[str, Any]]:
    """Every optimizer on every set: default and fused=True against torch's (the targets on
    the sets beyond the caches), and on resnet18 the informative rows."""
    out: list[dict[str, Any]] = []
    big = {"16x64K", "100M", "resnet18", "32x16M"}  # beyond the caches (quick: a stand-in)
    fused_target = FUSED_GPU if device.startswith("cuda") else FUSED
    for set_name, shapes in parameter_sets(device, quick).items():
        targeted = set_name in big
        if targeted:
            out.append(_bandwidth_case(set_name, _numel(shapes)))
        for name in OPTIMIZERS:
            args = (name, set_name, shapes)
            out.append(_step_case(*args, "default", {}, {}, target_=DEFAULT if targeted else None))
            out.append(
                _step_case(
                    *args,
                    "fused",
                    {"fused": True},
                    {"fused": True},
                    target_=fused_target if targeted else None,
                )
            )
            if set_name == "resnet18" or (quick and name == "Adam"):
                out.append(
                    _step_case(
                        *args,
                        "ours-foreach",
                        {"foreach": True},
                        None,
                        builtin="ours foreach=False",
                        builtin_ours_kw={"foreach": False},
                    )
                )
            if set_name == "resnet18":
                out.append(_step_case(*args, "vs-for-loop", {}, {"foreach": False}))
                out.append(_step_case(*args, "vs-foreach", {}, {"foreach": True}))
                out.append(
                    _step_case(
                        *args,
                        "compiled",
                        {},
                        {"fused": True},
                        builder="compiled_pair",
                        ours="torch.compile(ours default .step)",
                    )
                )
        if set_name == "resnet18" and not device.startswith("cuda"):
            out.append(
                case(
                    SECTION,
                    f"optim/sqrt-floor/{set_name}",
                    f"sqrt alone over {set_name} (floor of an unfused AdaGrad/Adam)",
                    builder="sqrt_floor",
                    params={"shapes": shapes},
                    ours="torch.sqrt(h, out=)",
                    builtin="torch Adagrad fused=True step",
                    extra={"tensors": len(shapes), "numel": _numel(shapes)},
                )
            )
    return out


def _label(kw: dict[str, Any] | None) -> str:
    if not kw:
        return "default"
    return " ".join(f"{k}={v}" for k, v in kw.items())


def _params(shapes: list[list[int]], device: str) -> list[torch.Tensor]:
    """The same values on every call: parameters with their (fixed) gradients."""
    gen = torch.Generator(device=device).manual_seed(0)
    params = []
    for shape in shapes:
        p = torch.randn(shape, generator=gen, device=device).requires_grad_()
        p.grad = torch.randn(shape, generator=gen, device=device)
        params.append(p)
    return params


def _ours(name: str, shapes: list[list[int]], device: str, kw: dict) -> torch.optim.Optimizer:
    from torch_dlbasics import optim

    cls = getattr(optim, name)
    return cls(_params(shapes, device), **OPTIMIZERS[name][0], **kw)


def _torch(name: str, shapes: list[list[int]], device: str, kw: dict) -> torch.optim.Optimizer:
    _, cls, torch_kw, _, _ = OPTIMIZERS[name]
    return getattr(torch.optim, cls)(_params(shapes, device), **torch_kw, **kw)


def step_pair(
    device: str,
    optimizer: str,
    shapes: list[list[int]],
    ours_kw: dict,
    torch_kw: dict | None,
    builtin_ours_kw: dict | None = None,
) -> Pair:
    """``ours.step`` against torch's (``torch_kw``) or against ours (``builtin_ours_kw``)."""

    def ours() -> Side:
        return Side(_ours(optimizer, shapes, device, ours_kw).step)

    def builtin() -> Side:
        if builtin_ours_kw is not None:
            return Side(_ours(optimizer, shapes, device, builtin_ours_kw).step)
        return Side(_torch(optimizer, shapes, device, torch_kw or {}).step)

    return Pair(ours, builtin)


def compiled_pair(
    device: str, optimizer: str, shapes: list[list[int]], ours_kw: dict, torch_kw: dict | None
) -> Pair:
    """``torch.compile(ours.step)`` (inductor: one loop per tensor) against torch's fused."""

    def ours() -> Side:
        opt = _ours(optimizer, shapes, device, ours_kw)
        step = torch.compile(opt.step)
        t0 = time.perf_counter()
        try:
            step()  # compiles; the second call recompiles once, now that the state exists
            step()
        except Exception as err:  # no C++ compiler / Triton for inductor here
            raise Unsupported(f"torch.compile: {type(err).__name__}: {err}") from err
        return Side(step, info={"compile_s": time.perf_counter() - t0})

    def builtin() -> Side:
        return Side(_torch(optimizer, shapes, device, torch_kw or {}).step)

    return Pair(ours, builtin)


def sqrt_floor(device: str, shapes: list[list[int]]) -> Pair:
    """``torch.sqrt`` over the set against torch's whole fused AdaGrad step."""

    def ours() -> Side:
        h = [torch.rand(s, device=device) + 0.5 for s in shapes]
        out = [torch.empty(s, device=device) for s in shapes]

        def sqrt_alone() -> None:
            for a, b in zip(h, out):
                torch.sqrt(a, out=b)

        return Side(sqrt_alone)

    def builtin() -> Side:
        return Side(_torch("AdaGrad", shapes, device, {"fused": True}).step)

    return Pair(ours, builtin)


def bandwidth(device: str, numel: int) -> Pair:
    """In-place axpy (``y += a x``) and copy (``y = x``) of ``numel`` float32 elements."""
    x = torch.randn(numel, device=device)

    def axpy() -> Side:
        y = torch.randn(numel, device=device)
        return Side(lambda: y.add_(x, alpha=1e-3))

    def copy() -> Side:
        dst = torch.empty(numel, device=device)
        return Side(lambda: dst.copy_(x))

    return Pair(axpy, copy)
