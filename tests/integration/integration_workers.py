"""Bodies of the distributed integration checks, run in each rank of one spawned 2-process gloo
world (``tests/distributed/_harness.py``): FSDP2, distributed checkpoint, ZeRO, Lightning DDP.

They only train and return snapshots; every comparison happens in the parent test process.
Each check records its own traceback instead of raising, so one failing case fails its own
test and the others still run (the failures met here are the same on every rank, so both
ranks leave the case at the same point and meet at the barrier after it).
"""

from __future__ import annotations

import io
import os
import traceback
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from integration_cases import PAIRS, Pair, loss_fn, make_net, snapshot
from torch import Tensor, nn

import torch_dlbasics.optim as dloptim
from torch_dlbasics.nn import SyncBatchNorm

FSDP2_MIN_TORCH = (2, 6)
"""``fully_shard`` on CPU meshes: torch 2.4's creates CUDA streams even for a CPU mesh."""


def fsdp2_supported() -> bool:
    version = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
    return version >= FSDP2_MIN_TORCH


def attempt(fn: Callable[..., Any], *args: Any) -> dict[str, Any]:
    """``{"result": fn(*args), "error": None}``, or the traceback in ``error``; then a barrier."""
    try:
        out = {"result": fn(*args), "error": None}
    except Exception:
        out = {"result": None, "error": traceback.format_exc()}
    dist.barrier()
    return out


def rank_part(x: Tensor, rank: int, world: int) -> Tensor:
    """This rank's contiguous share of a global batch."""
    n = len(x) // world
    return x[rank * n : (rank + 1) * n]


def sharded_steps(
    model: nn.Module, opt: Any, batches: list[tuple[Tensor, Tensor]], rank: int, world: int
) -> None:
    for x, y in batches:
        opt.zero_grad()
        loss_fn(model(rank_part(x, rank, world)), rank_part(y, rank, world)).backward()
        opt.step()


# --------------------------------------------------------------------------------------------
# FSDP2 (fully_shard) and the distributed checkpoint.
# --------------------------------------------------------------------------------------------
def _fully_shard() -> Any:
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:  # torch < 2.6
        from torch.distributed._composable.fsdp import fully_shard
    return fully_shard


def sharded_net(side: str, mesh: Any, seed: int = 0, sync: bool = False) -> nn.Module:
    """The model with each Linear and then the whole sharded over ``mesh`` (BatchNorm's weight
    and bias are sharded with the root, its buffers stay per rank). ``sync``: BatchNorm made our
    SyncBatchNorm, so that its buffers are the same on every rank."""
    fully_shard = _fully_shard()
    model = make_net(side, seed=seed)
    if sync:
        model = SyncBatchNorm.convert_sync_batchnorm(model)
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def fsdp2_case(
    rank: int, world: int, mesh: Any, side: str, pair: Pair, foreach: bool, batches: list
) -> dict[str, Any]:
    model = sharded_net(side, mesh)
    sharded = all(hasattr(p, "full_tensor") for p in model.parameters())
    opt = pair.build(side, model.parameters(), foreach)
    start = snapshot(model)
    sharded_steps(model, opt, batches, rank, world)
    return {"start": start, "end": snapshot(model, opt), "sharded": sharded}


def dcp_case(
    rank: int, world: int, mesh: Any, side: str, pair: Pair, batches: list, ckpt_dir: str
) -> dict[str, Any]:
    """Uninterrupted steps, against half the steps, a ``torch.distributed.checkpoint`` save of
    model and optimizer, a load into a fresh (differently initialised) model and optimizer, and
    the other half of the steps. The model's BatchNorm is our SyncBatchNorm: the checkpoint
    keeps one copy of a plain (not DTensor) buffer, so buffers must agree across ranks."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    half = len(batches) // 2
    model = sharded_net("ours", mesh, sync=True)
    opt = pair.build(side, model.parameters())
    sharded_steps(model, opt, batches, rank, world)
    uninterrupted = snapshot(model, opt)

    model = sharded_net("ours", mesh, sync=True)
    opt = pair.build(side, model.parameters())
    sharded_steps(model, opt, batches[:half], rank, world)
    saved = snapshot(model, opt)
    dcp.save(
        {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)},
        checkpoint_id=ckpt_dir,
    )
    model = sharded_net("ours", mesh, seed=1, sync=True)
    opt = pair.build(side, model.parameters())
    state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)}
    dcp.load(state, checkpoint_id=ckpt_dir)
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, opt, state["optim"])
    loaded = snapshot(model, opt)
    sharded_steps(model, opt, batches[half:], rank, world)
    return {"uninterrupted": uninterrupted, "saved": saved, "loaded": loaded,
            "resumed": snapshot(model, opt)}  # fmt: skip


def fsdp2_checks(rank: int, world: int, payload: dict[str, Any]) -> dict[str, Any]:
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (world,))
    batches = payload["batches"]
    out: dict[str, Any] = {}
    for name, foreach in payload["fsdp2"]:
        for side in ("ours", "torch"):
            key = f"{name}-foreach={foreach}-{side}"
            out[key] = attempt(fsdp2_case, rank, world, mesh, side, PAIRS[name], foreach, batches)
    for name in payload["dcp"]:
        for side in ("ours", "torch"):
            ckpt = str(Path(payload["dir"]) / f"dcp-{name}-{side}")
            out[f"dcp-{name}-{side}"] = attempt(
                dcp_case, rank, world, mesh, side, PAIRS[name], batches, ckpt
            )
    return out


# --------------------------------------------------------------------------------------------
# DDP + ZeroRedundancyOptimizer (our SyncBatchNorm in the model).
# --------------------------------------------------------------------------------------------
def zero_case(rank: int, world: int, name: str, side: str, batches: list) -> dict[str, Any]:
    """DDP steps with ``side``'s optimizer sharded by ZeRO, and without ZeRO; then ZeRO's
    consolidated state dict loaded into a fresh ZeRO on a copy of the model, one more step of
    each, against going on uninterrupted."""
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel as DDP

    pair = PAIRS[name]
    opt_class = getattr(dloptim, pair.ours) if side == "ours" else getattr(torch.optim, pair.theirs)
    kw = pair.ours_kw if side == "ours" else pair.theirs_kw

    def net() -> nn.Module:
        return SyncBatchNorm.convert_sync_batchnorm(make_net("ours"))

    *head, last = batches
    model, ddp_model, twin = net(), net(), net()
    zero_ddp, ddp = DDP(model), DDP(ddp_model)
    zero = ZeroRedundancyOptimizer(zero_ddp.parameters(), optimizer_class=opt_class, **kw)
    plain = pair.build(side, ddp.parameters())
    sharded_steps(zero_ddp, zero, head, rank, world)
    sharded_steps(ddp, plain, head, rank, world)
    plain_before = snapshot(ddp_model, plain)["state"]
    zero.consolidate_state_dict(to=0)
    state = [zero.state_dict() if rank == 0 else None]
    dist.broadcast_object_list(state, src=0)
    saved = _through_a_file(state[0])  # rank 0's holds the live state tensors
    twin.load_state_dict(model.state_dict())
    twin_ddp = DDP(twin)
    zero2 = ZeroRedundancyOptimizer(twin_ddp.parameters(), optimizer_class=opt_class, **kw)
    zero2.load_state_dict(_through_a_file(saved))  # ZeRO writes into the dict it loads
    for m, o in ((zero_ddp, zero), (twin_ddp, zero2), (ddp, plain)):
        sharded_steps(m, o, [last], rank, world)
    return {
        "zero": snapshot(model),
        "zero_resumed": snapshot(twin),
        "plain": snapshot(ddp_model),
        "plain_state_before": plain_before,
        "names": [n for n, _ in model.named_parameters()],
        "consolidated": saved["state"],
    }


def _through_a_file(obj: Any) -> Any:
    """``obj`` saved and loaded again, as a checkpoint (no tensor shared with the live state)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def zero_checks(rank: int, world: int, payload: dict[str, Any]) -> dict[str, Any]:
    return {
        f"{name}-{side}": attempt(zero_case, rank, world, name, side, payload["batches"])
        for name in payload["zero"]
        for side in ("ours", "torch")
    }


# --------------------------------------------------------------------------------------------
# Lightning DDP with our SyncBatchNormPlugin.
# --------------------------------------------------------------------------------------------
def lightning_case(rank: int, world: int, name: str, batches: list) -> dict[str, Any]:
    """``Trainer(strategy="ddp", plugins=[SyncBatchNormPlugin()])`` in this already started
    world (Lightning sees ``LOCAL_RANK`` and the process group and starts nothing itself),
    each rank fed its half of every global batch."""
    from integration_cases import loader
    from integration_lightning import LitNet, trainer

    from torch_dlbasics.integrations.lightning import SyncBatchNormPlugin

    lit = LitNet(name, "ours")
    bn = lit.net[1]
    local = [(rank_part(x, rank, world), rank_part(y, rank, world)) for x, y in batches]
    tr = trainer(
        devices=world, strategy="ddp", plugins=[SyncBatchNormPlugin()],
        use_distributed_sampler=False, max_epochs=1,
    )  # fmt: skip
    tr.fit(lit, loader(local))
    return {
        "end": snapshot(lit.net),
        "restored": lit.net[1] is bn,
        "strategy": type(tr.strategy).__name__,
        "world_size": tr.world_size,
    }


def lightning_checks(rank: int, world: int, payload: dict[str, Any]) -> dict[str, Any]:
    from _harness import free_port

    os.environ.update(
        LOCAL_RANK=str(rank), RANK=str(rank), NODE_RANK="0", WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()),
    )  # fmt: skip
    return {
        name: attempt(lightning_case, rank, world, name, payload["batches"])
        for name in payload["lightning"]
    }


def world_checks(rank: int, world: int, device: torch.device, payload: dict[str, Any]) -> Any:
    """Everything the spawned world checks (each process imports torch and Lightning once)."""
    out: dict[str, Any] = {}
    if payload["fsdp2"] or payload["dcp"]:
        out["fsdp2"] = fsdp2_checks(rank, world, payload)
    out["zero"] = zero_checks(rank, world, payload)
    if payload["lightning"]:
        out["lightning"] = lightning_checks(rank, world, payload)
    return out
