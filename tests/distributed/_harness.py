"""Start ``world_size`` processes on localhost with ``torch.multiprocessing`` and collect results.

Every run gets its own free TCP port, each rank's result (or its traceback) comes back through a
file, and the parent kills whatever is still alive at the deadline, so no test can hang.
"""

from __future__ import annotations

import os
import socket
import time
import traceback
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

COLLECTIVE_TIMEOUT_S = 20.0  # gloo/NCCL give up on a collective after this long


def free_port() -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def device_for(backend: str, rank: int) -> torch.device:
    """``gloo``: CPU; ``gloo-cuda``: every rank on cuda:0; ``nccl``: one GPU per rank."""
    if backend == "gloo":
        return torch.device("cpu")
    if backend == "gloo-cuda":
        return torch.device("cuda", 0)
    return torch.device("cuda", rank)


@dataclass
class Outcome:
    rank: int
    exitcode: Optional[int]
    hung: bool
    result: Any
    error: Optional[str]


def _entry(
    fn: Callable[..., Any], rank: int, world_size: int, port: int, backend: str, outdir: str,
    args: tuple[Any, ...], collective_timeout_s: float,
) -> None:  # fmt: skip
    torch.set_num_threads(1)
    out = Path(outdir)
    try:
        device = device_for(backend, rank)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(
            "nccl" if backend == "nccl" else "gloo",
            init_method=f"tcp://127.0.0.1:{port}",
            rank=rank,
            world_size=world_size,
            timeout=timedelta(seconds=collective_timeout_s),
        )
        result = fn(rank, world_size, device, *args)
        torch.save(result, out / f"rank{rank}.pt")
        dist.barrier()
        dist.destroy_process_group()
    except BaseException:
        (out / f"rank{rank}.err").write_text(traceback.format_exc())
        os._exit(1)  # a broken group may block in destructors: leave at once


def run_workers(
    fn: Callable[..., Any],
    world_size: int,
    outdir: Path,
    *args: Any,
    backend: str = "gloo",
    deadline_s: float = 90.0,
    collective_timeout_s: float = COLLECTIVE_TIMEOUT_S,
) -> list[Outcome]:
    """Run ``fn(rank, world_size, device, *args)`` in ``world_size`` fresh processes."""
    ctx = mp.get_context("spawn")
    port = free_port()
    procs = [
        ctx.Process(
            target=_entry,
            args=(fn, r, world_size, port, backend, str(outdir), args, collective_timeout_s),
            daemon=True,
        )
        for r in range(world_size)
    ]
    for p in procs:
        p.start()
    end = time.monotonic() + deadline_s
    for p in procs:
        p.join(max(0.0, end - time.monotonic()))
    outcomes = []
    for r, p in enumerate(procs):
        hung = p.is_alive()
        if hung:
            p.kill()
            p.join()
        res_file, err_file = outdir / f"rank{r}.pt", outdir / f"rank{r}.err"
        result = torch.load(res_file, weights_only=True) if res_file.exists() else None
        error = err_file.read_text() if err_file.exists() else None
        outcomes.append(Outcome(r, p.exitcode, hung, result, error))
    return outcomes


def check_all_ok(outcomes: list[Outcome]) -> list[Any]:
    """The per-rank results, or an AssertionError naming every rank that failed or hung."""
    bad = [
        f"rank {o.rank}: {'hung (killed at the deadline)' if o.hung else f'exit code {o.exitcode}'}"
        f"\n{o.error or ''}"
        for o in outcomes
        if o.hung or o.exitcode != 0
    ]
    assert not bad, "distributed workers failed:\n" + "\n".join(bad)
    return [o.result for o in outcomes]
