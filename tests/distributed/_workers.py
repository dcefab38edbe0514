"""Bodies of the distributed tests, run in each spawned rank by ``_harness.run_workers``.

They only compute and return tensors; every comparison happens in the parent test process.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from torch_dlbasics.nn.batchnorm import BatchNorm2d
from torch_dlbasics.nn.syncbatchnorm import SyncBatchNorm


def rank_slice(sizes: list[int], rank: int) -> slice:
    start = sum(sizes[:rank])
    return slice(start, start + sizes[rank])


def make_net(bn: Any = BatchNorm2d) -> nn.Module:
    """A small conv net with our BatchNorm2d; seeded, so every process builds the same one."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3),
        bn(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 3),
    ).double()


def run_syncbn_case(rank: int, device: torch.device, case: dict[str, Any]) -> dict[str, Any]:
    """Train-mode steps of one SyncBatchNorm on this rank's part of each global batch."""
    part = rank_slice(case["sizes"], rank)
    bn = SyncBatchNorm(
        case["C"], momentum=case["momentum"], affine=case["affine"],
        track_running_stats=case["track"], device=device, dtype=case["dtype"],
    )  # fmt: skip
    if case["affine"]:
        with torch.no_grad():
            bn.weight.copy_(case["weight"])
            bn.bias.copy_(case["bias"])
    res: dict[str, Any] = {"out": [], "dx": [], "dw": [], "db": []}
    for x_full, dy_full in case["steps"]:
        x = x_full[part].to(device).requires_grad_()
        out = bn(x)
        out.backward(dy_full[part].to(device))
        res["out"].append(out.detach().cpu())
        res["dx"].append(x.grad.cpu())
        if case["affine"]:
            res["dw"].append(bn.weight.grad.cpu())
            res["db"].append(bn.bias.grad.cpu())
            bn.weight.grad = bn.bias.grad = None
    res["buffers"] = {k: v.cpu() for k, v in bn.named_buffers()}
    bn.eval()  # eval: running statistics, no communication
    x_eval = case["steps"][-1][0][part].to(device)
    res["eval_out"] = bn(x_eval).cpu()
    return res


def syncbn_checks(rank: int, world: int, device: torch.device, cases: list[dict[str, Any]]) -> Any:
    results: dict[str, Any] = {
        "cases": {c["name"]: run_syncbn_case(rank, device, c) for c in cases}
    }
    # A global count of 1 value per channel: every rank (not just the one holding it) must raise.
    bn = SyncBatchNorm(3, device=device, dtype=torch.float64)
    x = torch.randn(1 if rank == 0 else 0, 3, dtype=torch.float64, device=device)
    try:
        bn(x)
        results["one_value_error"] = None
    except ValueError as e:
        results["one_value_error"] = str(e)
    results["one_value_buffers"] = {k: v.cpu() for k, v in bn.named_buffers()}  # untouched?
    # process_group: a group of one behaves exactly as our BatchNorm (no communication);
    # in 3 processes, ranks 0 and 2 synchronize among themselves while rank 1 stays out.
    singles = [dist.new_group([r]) for r in range(world)]  # every rank creates every group
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(rank), dtype=torch.float64)
    results["single_in"] = x
    bn = SyncBatchNorm(3, process_group=singles[rank], dtype=torch.float64).to(device)
    results["single_out"] = bn(x.to(device)).detach().cpu()
    results["single_buffers"] = {k: v.cpu() for k, v in bn.named_buffers()}
    if world == 3:
        pair = dist.new_group([0, 2])
        if rank != 1:
            bn = SyncBatchNorm(3, process_group=pair, dtype=torch.float64).to(device)
            results["pair_out"] = bn(x.to(device)).detach().cpu()
    # torch's own SyncBatchNorm on this device: record whether it runs and what it gives.
    torch_bn = nn.SyncBatchNorm(3, device=device, dtype=torch.float64)
    ours = SyncBatchNorm(3, device=device, dtype=torch.float64)
    x = torch.arange(12.0, dtype=torch.float64, device=device).view(4, 3) * (rank + 1)
    results["ours_vs_torch_input"] = x.cpu()
    results["ours_out"] = ours(x).detach().cpu()
    try:
        results["torch_out"] = torch_bn(x).detach().cpu()
        results["torch_error"] = None
    except Exception as e:  # CPU: ValueError; on CUDA it may lack a collective of this backend
        results["torch_out"] = None
        results["torch_error"] = f"{type(e).__name__}: {e}"
    return results


def train_ddp(
    rank: int, world: int, device: torch.device, opt_name: str, zero: bool,
    batches: list[tuple[torch.Tensor, torch.Tensor]], lr: float,
) -> dict[str, Any]:  # fmt: skip
    """Steps of DDP + SyncBatchNorm + our optimizer (optionally sharded by ZeRO) on this rank's
    half of each batch."""
    from torch.distributed.optim import ZeroRedundancyOptimizer

    import torch_dlbasics.optim as optim

    opt_class = getattr(optim, opt_name)
    model = SyncBatchNorm.convert_sync_batchnorm(make_net()).to(device)
    ddp = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    if zero:
        opt: Any = ZeroRedundancyOptimizer(ddp.parameters(), optimizer_class=opt_class, lr=lr)
    else:
        opt = opt_class(ddp.parameters(), lr=lr)
    for x, y in batches:
        part = rank_slice([len(x) // world] * world, rank)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(ddp(x[part].to(device)), y[part].to(device))
        loss.backward()
        opt.step()
    res: dict[str, Any] = {"state": {k: v.cpu() for k, v in model.state_dict().items()}}
    if zero:
        opt.consolidate_state_dict(to=0)
        if rank == 0:
            sd = opt.state_dict()
            res["opt_state"] = {
                i: {k: v.cpu() if torch.is_tensor(v) else v for k, v in s.items()}
                for i, s in sd["state"].items()
            }
    return res


def ddp_checks(
    rank: int, world: int, device: torch.device, runs: list[tuple[str, bool]],
    batches: list[tuple[torch.Tensor, torch.Tensor]], lr: float,
) -> dict[str, Any]:  # fmt: skip
    return {
        f"{name}{'-zero' if zero else ''}": train_ddp(rank, world, device, name, zero, batches, lr)
        for name, zero in runs
    }


def world_checks(rank: int, world: int, device: torch.device, payload: dict[str, Any]) -> Any:
    """Everything one spawn of ``world`` processes checks (each process imports torch once)."""
    res = {"syncbn": syncbn_checks(rank, world, device, payload["cases"])}
    if "ddp" in payload:
        res["ddp"] = ddp_checks(rank, world, device, **payload["ddp"])
    return res


class InjectedFailure(RuntimeError):
    pass


def fail_mid_step(
    rank: int, world: int, device: torch.device, failing_rank: int, stall_s: float
) -> None:
    """DDP + SyncBatchNorm training where ``failing_rank``, between forward and backward of the
    second step, raises (``stall_s == 0``) or stalls for ``stall_s`` seconds and then goes on;
    the other ranks are then waiting in a collective of their backward."""
    import time

    import torch_dlbasics.optim as optim

    model = SyncBatchNorm.convert_sync_batchnorm(make_net()).to(device)
    ddp = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    opt = optim.SGD(ddp.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(1)
    for step in range(3):
        x = torch.randn(4, 1, 6, 6, generator=gen, dtype=torch.float64).to(device)
        loss = ddp(x).square().mean()
        if step == 1 and rank == failing_rank:
            if stall_s == 0:
                raise InjectedFailure(f"injected failure on rank {rank} at step {step}")
            time.sleep(stall_s)
        opt.zero_grad()
        loss.backward()
        opt.step()
    dist.barrier()
