"""Optimizer steps: ours against torch.optim's for-loop, foreach and fused implementations.

Parameter sets: torchvision ``resnet18`` (62 tensors, 11.7M elements), 2,000 tensors of 1,000
elements (per-tensor overhead) and, on CUDA, 32 tensors of 16M elements (bandwidth). Each row is
one optimizer on one set against one torch implementation, with ms per step, the GB/s of the
minimal traffic (bytes each element must move: Adam reads p, g, m, v and writes p, m, v, 28 B
per float32 element) and, on CPU, minor page faults per step (fresh temporaries fault). Rows
"copy" give a measured copy bandwidth for scale; rows "ours foreach" compare our two code paths;
rows "ours torch.compile(step)" (resnet18, full runs) time our step compiled by inductor against
torch's fused kernel, with the compile time; the row "sqrt alone" (CPU) times ``torch.sqrt`` over
the set against torch's whole fused AdaGrad step, the floor of any unfused AdaGrad/Adam step.
"""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import compare

from torch_dlbasics.optim import SGD, AdaGrad, Adam, Momentum, Nesterov

SECTION = "optim"

# name: (ours, torch class, torch kwargs, minimal bytes per element for float32)
OPTIMIZERS: dict[str, tuple[Callable[..., torch.optim.Optimizer], type, dict[str, Any], int]] = {
    "SGD": (lambda ps, **kw: SGD(ps, lr=0.01, **kw), torch.optim.SGD, {"lr": 0.01}, 12),
    "Momentum": (
        lambda ps, **kw: Momentum(ps, lr=0.01, momentum=0.9, **kw),
        torch.optim.SGD,
        {"lr": 0.01, "momentum": 0.9},
        20,
    ),
    "Nesterov": (
        lambda ps, **kw: Nesterov(ps, lr=0.01, momentum=0.9, **kw),
        torch.optim.SGD,
        {"lr": 0.01, "momentum": 0.9, "nesterov": True},
        20,
    ),
    "AdaGrad": (
        lambda ps, **kw: AdaGrad(ps, lr=0.01, eps=1e-7, **kw),
        torch.optim.Adagrad,
        {"lr": 0.01, "eps": 1e-7},
        20,
    ),
    "Adam": (
        lambda ps, **kw: Adam(ps, lr=1e-3, eps=1e-7, **kw),
        torch.optim.Adam,
        {"lr": 1e-3, "eps": 1e-7},
        28,
    ),
}


def parameter_sets(device: str, quick: bool) -> dict[str, list[torch.Size]]:
    """Shapes of each parameter set."""
    if quick:
        return {"64x1000": [torch.Size([1000])] * 64}
    sets: dict[str, list[torch.Size]] = {}
    try:
        import torchvision

        sets["resnet18"] = [p.shape for p in torchvision.models.resnet18().parameters()]
    except ImportError:  # pragma: no cover - torchvision is in the test/examples extras
        pass
    sets["2000x1000"] = [torch.Size([1000])] * 2000
    if device.startswith("cuda"):
        sets["32x16M"] = [torch.Size([16 * 2**20])] * 32
    return sets


def _params(shapes: list[torch.Size], device: str) -> list[torch.Tensor]:
    gen = torch.Generator(device=device).manual_seed(0)
    params = []
    for shape in shapes:
        p = torch.randn(shape, generator=gen, device=device).requires_grad_()
        p.grad = torch.randn(shape, generator=gen, device=device)
        params.append(p)
    return params


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def faults_per_step(step: Callable[[], object], n: int = 5) -> float:
    """Minor page faults per call of ``step`` (CPU; the process-wide counter)."""
    step()
    before = _minor_faults()
    for _ in range(n):
        step()
    return (_minor_faults() - before) / n


def _torch_variants(device: str) -> list[tuple[str, dict[str, Any]]]:
    return [
        ("for-loop", {"foreach": False}),
        ("foreach", {"foreach": True}),
        ("fused", {"fused": True}),
    ]


def with_gbps(row: dict, bytes_per_elem: int, numel: int) -> dict:
    """Add the GB/s of the minimal traffic (``bytes_per_elem`` per element) to a timed row."""
    row["ours_GBps"] = bytes_per_elem * numel / row["ours_ms"] / 1e6
    row["builtin_GBps"] = bytes_per_elem * numel / row["builtin_ms"] / 1e6
    return row


def copy_row(set_name: str, numel: int, device: str, repeats: int, warmup: int) -> dict:
    """A copy of the same amount of float32 data: the bandwidth to compare GB/s against."""
    src = torch.randn(numel, device=device)
    dst = torch.empty_like(src)
    row = compare(
        SECTION,
        f"copy {set_name}",
        lambda: dst.copy_(src),
        lambda: dst.copy_(src),
        device=device,
        repeats=repeats,
        warmup=warmup,
        builtin_name="copy_",
    )
    row["ours_GBps"] = 8 * numel / row["ours_ms"] / 1e6
    return row


def compiled_row(
    name: str, set_name: str, shapes: list[torch.Size], device: str, repeats: int, warmup: int
) -> dict | None:
    """Our step under ``torch.compile`` (inductor fuses the formula's ops into one loop per
    tensor) against torch's ``fused=True`` kernel; ``None`` where either cannot run."""
    make_ours, torch_cls, torch_kw, bpe = OPTIMIZERS[name]
    try:
        theirs = torch_cls(_params(shapes, device), **torch_kw, fused=True)
        theirs.step()
        ours = make_ours(_params(shapes, device))
        step = torch.compile(ours.step)
        t0 = time.perf_counter()
        step()  # compiles; the second call recompiles once, now that the state exists
        step()
        compile_s = time.perf_counter() - t0
    except Exception as err:  # no fused kernel here, or no C++ compiler for inductor
        print(f"  skip {name} {set_name} compiled: {type(err).__name__}: {err}", flush=True)
        return None
    numel = sum(s.numel() for s in shapes)
    extra = {"tensors": len(shapes), "numel": numel, "bytes_per_elem": bpe}
    row = compare(
        SECTION,
        f"{name} {set_name} ours torch.compile(step)",
        step,
        theirs.step,
        device=device,
        repeats=repeats,
        warmup=warmup,
        builtin_name="torch fused",
        extra={**extra, "compile_s": compile_s},
    )
    return with_gbps(row, bpe, numel)


def sqrt_floor_row(set_name: str, shapes: list[torch.Size], repeats: int, warmup: int) -> dict:
    """``torch.sqrt`` alone over the parameter set against torch's whole fused AdaGrad step.

    Every unfused AdaGrad/Adam step computes this sqrt as one of its ops; where it alone takes
    most of the fused step's time, no arrangement of separate ops reaches the fused kernel.
    """
    h = [torch.rand(s) + 0.5 for s in shapes]
    out = [torch.empty(s) for s in shapes]
    fused = torch.optim.Adagrad(_params(shapes, "cpu"), lr=0.01, eps=1e-7, fused=True)

    def sqrt_alone() -> None:
        for a, b in zip(h, out):
            torch.sqrt(a, out=b)

    return compare(
        SECTION,
        f"sqrt alone {set_name} (floor of an unfused AdaGrad/Adam)",
        sqrt_alone,
        fused.step,
        repeats=repeats,
        warmup=warmup,
        builtin_name="torch fused AdaGrad step",
        extra={"tensors": len(shapes), "numel": sum(s.numel() for s in shapes)},
    )


def run(device: str, quick: bool) -> list[dict]:
    repeats, warmup = (3, 1) if quick else (20, 3)
    rows: list[dict] = []
    on_cpu = not device.startswith("cuda")
    for set_name, shapes in parameter_sets(device, quick).items():
        numel = sum(s.numel() for s in shapes)
        rows.append(copy_row(set_name, numel, device, repeats, warmup))
        for name, (make_ours, torch_cls, torch_kw, bpe) in OPTIMIZERS.items():
            ours = make_ours(_params(shapes, device))
            extra_base = {"tensors": len(shapes), "numel": numel, "bytes_per_elem": bpe}
            for variant, kw in _torch_variants(device):
                try:
                    theirs = torch_cls(_params(shapes, device), **torch_kw, **kw)
                    theirs.step()
                except (RuntimeError, ValueError) as err:  # e.g. no fused kernel for this device
                    print(f"  skip {name} {variant}: {err}", flush=True)
                    continue
                row = compare(
                    SECTION,
                    f"{name} {set_name}",
                    ours.step,
                    theirs.step,
                    device=device,
                    repeats=repeats,
                    warmup=warmup,
                    builtin_name=f"torch {variant}",
                    extra=dict(extra_base),
                )
                with_gbps(row, bpe, numel)
                if on_cpu:
                    n = 2 if quick else 5
                    row["ours_faults_per_step"] = faults_per_step(ours.step, n)
                    row["builtin_faults_per_step"] = faults_per_step(theirs.step, n)
                rows.append(row)
                print(f"  {row['case']} vs {row['builtin']}: ratio {row['ratio']:.3f}", flush=True)
                del theirs
            # Our two code paths against each other (what foreach=None chooses between).
            loop = make_ours(_params(shapes, device), foreach=False)
            multi = make_ours(_params(shapes, device), foreach=True)
            row = compare(
                SECTION,
                f"{name} {set_name} ours foreach=True",
                multi.step,
                loop.step,
                device=device,
                repeats=repeats,
                warmup=warmup,
                builtin_name="ours foreach=False",
                extra=dict(extra_base),
            )
            rows.append(row)
            del ours, loop, multi
            if not quick and set_name == "resnet18":
                crow = compiled_row(name, set_name, shapes, device, repeats, warmup)
                if crow is not None:
                    rows.append(crow)
                    print(f"  {crow['case']} vs fused: ratio {crow['ratio']:.3f}", flush=True)
        if on_cpu and not quick and set_name == "resnet18":
            rows.append(sqrt_floor_row(set_name, shapes, repeats, warmup))
    return rows


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    for r in run(args.device, args.quick):
        print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()})
