"""BatchNorm and Dropout, ours vs torch.nn, forward+backward timing and saved-for-backward bytes.

``run(device, quick)`` returns rows made by ``common.compare`` (timing) plus memory rows of the
same shape (``ratio`` = ours / built-in bytes; no timing columns).
"""

from __future__ import annotations

from typing import Callable

import torch
from common import compare
from torch import nn

from torch_dlbasics import nn as dl_nn


def _saved_bytes(fn: Callable[[], object]) -> int:
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


def _peak_cuda_bytes(fn: Callable[[], object], device: str) -> int:
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def _cases(quick: bool) -> tuple[list, list]:
    if quick:
        bn = [("BatchNorm2d", (8, 16, 14, 14), False), ("BatchNorm1d", (32, 64), False)]
        drop = [(64, 256)]
    else:
        bn = [
            ("BatchNorm2d", (64, 64, 56, 56), False),
            ("BatchNorm2d", (64, 64, 56, 56), True),
            ("BatchNorm2d", (256, 256, 14, 14), False),
            ("BatchNorm2d", (256, 256, 14, 14), True),
            ("BatchNorm1d", (256, 1024), False),
        ]
        drop = [(64, 4096), (64, 64, 56, 56)]
    return bn, drop


def _bn_rows(name: str, shape: tuple, channels_last: bool, device: str, kw: dict) -> list[dict]:
    c = shape[1]
    ours = getattr(dl_nn, name)(c, device=device)
    theirs = getattr(nn, name)(c, device=device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(shape, device=device).contiguous(memory_format=fmt).requires_grad_(True)
    dy = torch.randn(shape, device=device).contiguous(memory_format=fmt)
    case = f"{name} {tuple(shape)}" + (" channels_last" if channels_last else "")

    def fwd(m: nn.Module) -> Callable[[], None]:
        def call() -> None:
            with torch.no_grad():
                m(x)

        return call

    def fb(m: nn.Module) -> Callable[[], None]:
        return lambda: m(x).backward(dy)

    kw = {**kw, "builtin_name": f"nn.{name}"}
    return [
        compare("nn", f"{case} train fwd", fwd(ours), fwd(theirs), **kw),
        compare("nn", f"{case} train fwd+bwd", fb(ours), fb(theirs), **kw),
        _memory_row(
            case, lambda: ours(x), lambda: theirs(x), fb(ours), fb(theirs), device, f"nn.{name}"
        ),
    ]


def _dropout_rows(shape: tuple, device: str, kw: dict) -> list[dict]:
    x = torch.randn(shape, device=device, requires_grad=True)
    dy = torch.randn(shape, device=device)
    ours, theirs = dl_nn.Dropout(0.5), nn.Dropout(0.5)
    case = f"Dropout p=0.5 {tuple(shape)}"

    def fb(m: nn.Module) -> Callable[[], None]:
        return lambda: m(x).backward(dy)

    kw = {**kw, "builtin_name": "nn.Dropout"}
    return [
        compare("nn", f"{case} fwd+bwd", fb(ours), fb(theirs), **kw),
        _memory_row(
            case, lambda: ours(x), lambda: theirs(x), fb(ours), fb(theirs), device, "nn.Dropout"
        ),
    ]


def run(device: str, quick: bool) -> list[dict]:
    kw = {"device": device, "repeats": 3 if quick else 20, "warmup": 1 if quick else 3}
    bn_cases, drop_cases = _cases(quick)
    rows: list[dict] = []
    for name, shape, channels_last in bn_cases:
        rows += _bn_rows(name, shape, channels_last, device, kw)
    for shape in drop_cases:
        rows += _dropout_rows(shape, device, kw)
    return rows


def _memory_row(
    case: str,
    ours_fwd: Callable[[], object],
    theirs_fwd: Callable[[], object],
    ours_fb: Callable[[], object],
    theirs_fb: Callable[[], object],
    device: str,
    builtin_name: str,
) -> dict:
    ours_b, theirs_b = _saved_bytes(ours_fwd), _saved_bytes(theirs_fwd)
    row = {
        "section": "nn-memory",
        "case": f"{case} saved for backward (bytes)",
        "builtin": builtin_name,
        "device": device,
        "ours_bytes": ours_b,
        "builtin_bytes": theirs_b,
        "ratio": ours_b / theirs_b,
        "ratio_q1": ours_b / theirs_b,
        "ratio_q3": ours_b / theirs_b,
    }
    if device.startswith("cuda"):
        ours_p, theirs_p = _peak_cuda_bytes(ours_fb, device), _peak_cuda_bytes(theirs_fb, device)
        row.update({"ours_peak_bytes": ours_p, "builtin_peak_bytes": theirs_p})
    return row
