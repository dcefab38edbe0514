"""Train train_mnist.py's CNN with DistributedDataParallel and our SyncBatchNorm (CPU or GPU).

    torchrun --nproc_per_node=2 examples/train_mnist_ddp.py --quick     # CPU, gloo
    torchrun --nproc_per_node=2 examples/train_mnist_ddp.py             # 1 epoch (GPU: NCCL)
    torchrun --nproc_per_node=2 examples/train_mnist_ddp.py --device cpu --threads 1
    python examples/train_mnist_ddp.py --quick                          # one process, no torchrun

Every process builds the same model (``_mnist_cnn.build_model()``: our BatchNorm2d and Dropout), converts its
BatchNorm2d layers with ``SyncBatchNorm.convert_sync_batchnorm`` (batch statistics over the
global batch, on CPU too, where ``torch.nn.SyncBatchNorm`` refuses) and wraps it in DDP. A
``DistributedSampler`` gives each process its share of every epoch; ``--batch-size`` is the
global batch (default 64, as train_mnist.py), split evenly over the processes, so the run takes
as many steps with the same optimizer and cosine schedule as the one-process example. Backend:
NCCL for ``--device cuda`` (one GPU per process, ``cuda:LOCAL_RANK``), gloo for the CPU;
``--backend gloo --device cuda`` lets several processes share one GPU.
Rank 0 evaluates the trained model on the test set, prints the accuracy and writes
``<out>/train_mnist_ddp.{json,png}``.
"""

from __future__ import annotations

import math
import os
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _book
import _cli
import _loaders
import _results
from _mnist_cnn import build_model
from _training import evaluate, train_one_epoch
from train_mnist import OPTIMIZERS, plot

NAME = "train_mnist_ddp"


def init_distributed(backend: str) -> tuple[int, int, int]:
    """Join torchrun's process group (or make a one-process group); return rank, world, local rank."""
    if "RANK" not in os.environ:  # not started by torchrun: a group of one on a free local port
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(port))  # fmt: skip
    dist.init_process_group(backend, timeout=timedelta(minutes=5))
    return dist.get_rank(), dist.get_world_size(), int(os.environ["LOCAL_RANK"])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = _cli.parser(__doc__, NAME)
    p.add_argument("--epochs", type=_cli.positive_int, default=1, help="(default: %(default)s)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="adam",
                   help="(default: %(default)s)")  # fmt: skip
    p.add_argument("--lr", type=_cli.nonnegative_float, default=None,
                   help="(default: the book's for the optimizer)")  # fmt: skip
    p.add_argument("--batch-size", type=_cli.positive_int, default=64,
                   help="global batch, split over the processes (default: %(default)s)")  # fmt: skip
    p.add_argument("--backend", choices=("nccl", "gloo"), default=None,
                   help="(default: nccl on cuda, gloo on cpu; gloo on cuda lets processes share a GPU)")  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    started = time.perf_counter()
    device = _cli.setup(args)  # same seed everywhere: every rank builds the same model
    backend = args.backend or ("nccl" if device.type == "cuda" else "gloo")
    rank, world, local_rank = init_distributed(backend)
    try:
        return train(args, argv, device, rank, world, local_rank, started)
    finally:  # also when a rank fails (bad data folder, ...): the others then fail, not hang
        dist.destroy_process_group()


def train(args: Any, argv: list[str], device: torch.device, rank: int, world: int, local_rank: int,
          started: float) -> int:  # fmt: skip
    from torch_dlbasics.nn.syncbatchnorm import SyncBatchNorm

    if device.type == "cuda":  # one GPU per process (gloo: processes may share one)
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    if args.batch_size % world:
        raise _cli.ExampleError(
            f"--batch-size {args.batch_size} is not divisible by {world} processes"
        )
    per_rank_batch = args.batch_size // world

    # Rank 0 prepares the data first (from the offline mirror if need be), the others then read it.
    if rank != 0:
        dist.barrier()
    train_loader, test_loader = _loaders.make_loaders(
        args.data_root, per_rank_batch, quick=args.quick
    )
    if rank == 0:
        dist.barrier()
    sampler = DistributedSampler(
        train_loader.dataset, num_replicas=world, rank=rank, seed=args.seed
    )
    loader = DataLoader(train_loader.dataset, batch_size=per_rank_batch, sampler=sampler)

    model = SyncBatchNorm.convert_sync_batchnorm(build_model()).to(device)
    ddp = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    shown = {k.lower(): k for k in _book.OPTIMIZERS}[args.optimizer]
    lr = _book.OPTIMIZERS[shown]["lr"] if args.lr is None else args.lr
    optimizer = _book.make_optimizer(shown, ddp.parameters(), lr=lr)
    steps_per_epoch = math.ceil(len(sampler) / per_rank_batch)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=args.epochs * steps_per_epoch
    )

    losses: list[float] = []
    steps, train_seconds = 0, 0.0
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        t0 = time.perf_counter()
        n, _ = train_one_epoch(
            ddp, loader, optimizer, device, scheduler, losses=losses,
            desc=f"epoch {epoch + 1}/{args.epochs}", progress=rank == 0 and not args.no_progress,
        )  # fmt: skip
        train_seconds += time.perf_counter() - t0
        steps += n

    if rank == 0:  # eval: running statistics, no communication, so rank 0 alone (not via DDP)
        accuracy = evaluate(model, test_loader, device)
        images = steps * args.batch_size
        results = {
            "launch": f"torchrun --nproc_per_node={world} examples/{NAME}.py {' '.join(argv)}",
            "test_accuracy": accuracy,
            "test_images": len(test_loader.dataset),  # type: ignore[arg-type]
            "train_images": len(train_loader.dataset),  # type: ignore[arg-type]
            "processes": world,
            "backend": dist.get_backend(),
            "device": str(device),
            "optimizer": args.optimizer,
            "lr": lr,
            "global_batch": args.batch_size,
            "epochs": args.epochs,
            "quick": args.quick,
            "steps": steps,
            "train_seconds": train_seconds,
            "images_per_second": images / max(train_seconds, 1e-9),
            "losses_rank0": losses,
        }
        title = f"DDP x{world} + SyncBatchNorm, our {shown}"
        fig = plot(losses, accuracy, title)
        _results.write_results(args.out, NAME, results, fig, started, argv)
        print(f"test accuracy: {accuracy:.4f} ({world} processes, {dist.get_backend()}, "
              f"{steps} steps, {train_seconds:.1f} s training)")  # fmt: skip
    dist.barrier()
    return 0


if __name__ == "__main__":
    raise SystemExit(_cli.run(main))
