"""BatchNorm and Dropout, ours against ``torch.nn``: train forward, train forward+backward,
eval forward, and the bytes saved for backward.

Every timed row runs the module as a user would. ``train fwd``: train mode, autograd on, the
input requiring grad (as a conv's output does), the output and its graph freed after the clock
stops; ``train fwd+bwd``: the same plus ``backward(dy)``, with ``x.grad``, ``weight.grad`` and
``bias.grad`` set to ``None`` before each call, outside the clock, on both sides (so no call
accumulates into the previous one's gradient); ``eval fwd``: eval mode under ``no_grad``.
Both sides read the same ``x`` and ``dy``. Rows carry ``bytes_per_elem``, the minimal traffic
per element (eval 8 B: read x, write y; train forward 12 B: one statistics pass, one affine
pass; forward+backward 32 B: backward adds a reduction pass over dy and x and one pass writing
dx; Dropout 16.25 B: x, y, dy, dx and a mask of one bit written and read) for the GB/s column.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from common import Pair, Side, case, target
from torch import nn

SECTION = "nn"

MODES = {"train-fwd": 12, "train-fwd-bwd": 32, "eval-fwd": 8}


def _shapes(quick: bool) -> tuple[list[tuple[str, tuple[int, ...], bool]], list[tuple]]:
    if quick:
        bn = [
            ("BatchNorm2d", (8, 16, 14, 14), False),
            ("BatchNorm2d", (8, 16, 14, 14), True),
            ("BatchNorm1d", (32, 64), False),
        ]
        return bn, [(64, 256)]
    bn = []
    for shape in ((64, 64, 56, 56), (256, 256, 14, 14), (32, 128, 28, 28)):
        bn += [("BatchNorm2d", shape, False), ("BatchNorm2d", shape, True)]
    bn += [("BatchNorm1d", (256, 1024), False), ("BatchNorm1d", (4096, 512), False)]
    return bn, [(64, 4096), (64, 64, 56, 56)]


def _target(name: str, mode: str, device: str) -> dict[str, Any] | None:
    if mode == "eval-fwd":
        return target("BatchNorm eval forward", 1.0, "≤ 1.0x native")
    if mode != "train-fwd-bwd":
        return None
    if name == "BatchNorm1d":
        return target("BatchNorm1d train fwd+bwd", 1.5, "≤ 1.5x native")
    if device.startswith("cuda"):
        return target("BatchNorm2d train fwd+bwd", 1.2, "≤ 1.2x cuDNN")
    return target("BatchNorm2d train fwd+bwd", 1.0, "≤ 1.0x native")


def cases(device: str, quick: bool) -> list[dict[str, Any]]:
    bn, drop = _shapes(quick)
    bw_ref = "optim/bandwidth/16x64K" if quick else "optim/bandwidth/resnet18"
    out = []
    for name, shape, channels_last in bn:
        layout = " channels_last" if channels_last else ""
        label = f"{name} {tuple(shape)}{layout}"
        slug = f"nn/{name}/{'x'.join(map(str, shape))}{'-cl' if channels_last else ''}"
        numel = torch.Size(shape).numel()
        for mode, bpe in MODES.items():
            out.append(
                case(
                    SECTION,
                    f"{slug}/{mode}",
                    f"{label} {mode.replace('-', ' ').replace('fwd bwd', 'fwd+bwd')}",
                    builder="batchnorm",
                    params={"name": name, "shape": list(shape), "channels_last": channels_last}
                    | {"mode": mode},
                    ours=f"torch_dlbasics.nn.{name}",
                    builtin=f"nn.{name}",
                    target=_target(name, mode, device),
                    extra={"numel": numel, "bytes_per_elem": bpe, "bandwidth_case": bw_ref},
                    bytes_needed=8 * 4 * numel,
                )
            )
        out.append(_memory_case(name, shape, channels_last, f"{slug}/saved-bytes", label))
    for shape in drop:
        slug = f"nn/Dropout/{'x'.join(map(str, shape))}"
        label = f"Dropout p=0.5 {tuple(shape)}"
        out.append(
            case(
                SECTION,
                f"{slug}/train-fwd-bwd",
                f"{label} train fwd+bwd",
                builder="dropout",
                params={"shape": list(shape), "p": 0.5},
                ours="torch_dlbasics.nn.Dropout",
                builtin="nn.Dropout",
                target=target("Dropout fwd+bwd", 0.7, "≤ 0.7x nn.Dropout"),
                extra={
                    "numel": torch.Size(shape).numel(),
                    "bytes_per_elem": 16.25,
                    "bandwidth_case": bw_ref,
                },
                bytes_needed=8 * 4 * torch.Size(shape).numel(),
            )
        )
        out.append(_memory_case("Dropout", shape, False, f"{slug}/saved-bytes", label))
    return out


def _memory_case(
    name: str, shape: tuple[int, ...], channels_last: bool, case_id: str, label: str
) -> dict[str, Any]:
    return case(
        SECTION,
        case_id,
        f"{label} saved for backward (bytes)",
        kind="memory",
        builder="saved_bytes",
        params={"name": name, "shape": list(shape), "channels_last": channels_last},
        ours=f"torch_dlbasics.nn.{name}",
        builtin=f"nn.{name}",
    )


def _input(shape: list[int], device: str, channels_last: bool) -> torch.Tensor:
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(shape, generator=gen, device=device)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _module(cls: type, shape: list[int], device: str) -> nn.Module:
    if cls.__name__.startswith("Dropout"):
        return cls(0.5)
    return cls(shape[1], device=device)


def _clear_grads(x: torch.Tensor, m: nn.Module) -> Callable[[], None]:
    def clear() -> None:
        x.grad = None
        for p in m.parameters():
            p.grad = None

    return clear


def _side(m: nn.Module, x: torch.Tensor, dy: torch.Tensor | None, mode: str) -> Side:
    if mode == "eval-fwd":
        m.eval()

        def eval_forward() -> torch.Tensor:
            with torch.no_grad():
                return m(x)

        return Side(eval_forward)
    m.train()
    if mode == "train-fwd":
        return Side(lambda: m(x))  # autograd on: the graph a training step builds
    assert dy is not None
    return Side(lambda: m(x).backward(dy), reset=_clear_grads(x, m))


def batchnorm(device: str, name: str, shape: list[int], channels_last: bool, mode: str) -> Pair:
    """One BatchNorm module of each kind on the same input, in ``mode``."""
    from torch_dlbasics import nn as dl_nn

    x = _input(shape, device, channels_last)
    dy = None
    if mode != "eval-fwd":
        x.requires_grad_(True)
        dy = _input(shape, device, channels_last).mul_(0.5)
    return Pair(
        lambda: _side(_module(getattr(dl_nn, name), shape, device), x, dy, mode),
        lambda: _side(_module(getattr(nn, name), shape, device), x, dy, mode),
    )


def dropout(device: str, shape: list[int], p: float) -> Pair:
    """Dropout(p) forward+backward, train mode."""
    from torch_dlbasics import nn as dl_nn

    x = _input(shape, device, False).requires_grad_(True)
    dy = _input(shape, device, False).mul_(0.5)
    return Pair(
        lambda: _side(dl_nn.Dropout(p), x, dy, "train-fwd-bwd"),
        lambda: _side(nn.Dropout(p), x, dy, "train-fwd-bwd"),
    )


def _saved(m: nn.Module, x: torch.Tensor) -> int:
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        m(x)
    return total


def _peak_cuda_bytes(m: nn.Module, x: torch.Tensor, dy: torch.Tensor, device: str) -> int:
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    m(x).backward(dy)
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def saved_bytes(device: str, name: str, shape: list[int], channels_last: bool) -> dict[str, Any]:
    """Bytes each side saves for backward (and, on CUDA, its peak during forward+backward)."""
    from torch_dlbasics import nn as dl_nn

    x = _input(shape, device, channels_last).requires_grad_(True)
    ours = _module(getattr(dl_nn, name), shape, device)
    theirs = _module(getattr(nn, name), shape, device)
    values: dict[str, Any] = {"ours_bytes": _saved(ours, x), "builtin_bytes": _saved(theirs, x)}
    if device.startswith("cuda"):
        dy = torch.ones_like(x)
        values["ours_peak_bytes"] = _peak_cuda_bytes(ours, x, dy, device)
        values["builtin_peak_bytes"] = _peak_cuda_bytes(theirs, x, dy, device)
    return values
