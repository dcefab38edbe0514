"""Spawned worlds shared by the distributed tests: each (world size, backend) is started once
per session and runs every check in ``_workers.world_checks``; the tests compare its results."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from _harness import check_all_ok, run_workers
from _workers import world_checks


def _needs(backend: str, world: int) -> Any:
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if backend == "nccl":
        ok = gpus >= world and torch.distributed.is_nccl_available()
        return pytest.mark.skipif(not ok, reason=f"NCCL with {world} ranks needs {world} GPUs")
    return pytest.mark.skipif(gpus < 1, reason="needs a CUDA device")


def _case(gen: torch.Generator, name: str, C: int, spatial: tuple[int, ...], sizes: list[int],
          steps: int = 2, affine: bool = True, momentum: Any = 0.1, track: bool = True,
          dtype: torch.dtype = torch.float64, mean: float = 0.0) -> dict[str, Any]:  # fmt: skip
    shape = (sum(sizes), C, *spatial)
    return {
        "name": name, "C": C, "sizes": sizes, "affine": affine, "momentum": momentum,
        "track": track, "dtype": dtype,
        "weight": torch.rand(C, generator=gen, dtype=dtype) + 0.5,
        "bias": torch.randn(C, generator=gen, dtype=dtype),
        "steps": [
            (torch.randn(shape, generator=gen, dtype=dtype) * 2 + mean,
             torch.randn(shape, generator=gen, dtype=dtype))
            for _ in range(steps)
        ],
    }  # fmt: skip


def syncbn_cases(world: int) -> list[dict[str, Any]]:
    """Uneven per-rank batch sizes, one rank with a single sample, one with an empty batch."""
    g = torch.Generator().manual_seed(world)
    if world == 2:
        return [
            _case(g, "conv2d", 3, (2, 3), [3, 5]),
            _case(g, "1d-cumulative-no-affine", 4, (), [1, 4], affine=False, momentum=None),
            _case(g, "3d-empty-rank", 2, (3,), [0, 5]),
            _case(g, "5d-no-running-stats", 3, (2, 2, 2), [2, 3], steps=1, track=False),
            _case(g, "float32-mean-1e3", 2, (4, 4), [4, 4], dtype=torch.float32, mean=1e3),
        ]
    return [
        _case(g, "conv2d-empty-rank", 3, (2, 2), [2, 0, 5]),
        _case(g, "1d-cumulative", 5, (), [3, 1, 2], momentum=None),
    ]


def ddp_payload() -> dict[str, Any]:
    g = torch.Generator().manual_seed(3)
    batches = [
        (torch.randn(8, 1, 6, 6, generator=g, dtype=torch.float64),
         torch.randint(0, 3, (8,), generator=g))
        for _ in range(3)
    ]  # fmt: skip
    runs = [("SGD", False), ("Momentum", False), ("Momentum", True)]
    return {"runs": runs, "batches": batches, "lr": 0.1}


_SPAWNED: dict[tuple[int, str], Any] = {}


def spawned(tmp_path_factory: pytest.TempPathFactory, world: int, backend: str) -> Any:
    """Start (once per session) ``world`` processes on ``backend`` running every check."""
    key = (world, backend)
    if key not in _SPAWNED:
        payload: dict[str, Any] = {"cases": syncbn_cases(world)}
        if world == 2:
            payload["ddp"] = ddp_payload()
        outdir = tmp_path_factory.mktemp(f"world{world}-{backend}")
        ranks = check_all_ok(run_workers(world_checks, world, outdir, payload, backend=backend))
        _SPAWNED[key] = {"backend": backend, "world": world, "payload": payload, "ranks": ranks}
    return _SPAWNED[key]


def _param(world: int, backend: str) -> Any:
    marks = [] if backend == "gloo" else [_needs(backend, world)]
    return pytest.param((world, backend), marks=marks, id=f"{backend}-{world}procs")


@pytest.fixture(
    scope="session",
    params=[_param(2, "gloo"), _param(3, "gloo"), _param(2, "gloo-cuda"), _param(2, "nccl"),
            _param(3, "nccl")],
)  # fmt: skip
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Every spawned world: 2 and 3 processes."""
    return spawned(tmp_path_factory, *request.param)


@pytest.fixture(
    scope="session", params=[_param(2, "gloo"), _param(2, "gloo-cuda"), _param(2, "nccl")]
)
def world2(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The 2-process worlds (they also ran the DDP and ZeRO training)."""
    return spawned(tmp_path_factory, *request.param)
