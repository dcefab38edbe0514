"""Train a small CNN on MNIST with our Adam, BatchNorm2d and Dropout: the README's main job.

    python examples/train_mnist.py                      # 1 epoch, a few minutes on 2 CPU cores
    python examples/train_mnist.py --epochs 3 --device cuda --optimizer momentum
    python examples/train_mnist.py --stop-after-steps 300   # save at step 300 and stop
    python examples/train_mnist.py --resume                 # ... and continue, bit for bit

The model (``_mnist_cnn.build_model``): two conv 3x3 -> BatchNorm2d -> ReLU -> max-pool blocks,
Dropout(0.25), a linear layer. Data: torchvision's MNIST, verified and prepared by
``torch_dlbasics.data``, ``ToTensor`` + ``Normalize``, a ``DataLoader``. The optimizer starts at
the book's settings (``--lr`` overrides its learning rate), which follows a cosine schedule
over the run's steps. Writes ``<out>/train_mnist.{png,json}`` and ``<out>/checkpoint.pt`` (model,
optimizer, scheduler, every RNG state and the position in the data order), saved after every
epoch, at ``--stop-after-steps`` and on Ctrl-C (then exit status 130). ``--resume`` continues
from that checkpoint exactly: the resumed run ends with the same parameters, bit for bit, as
one that never stopped (same device and threads). A bad flag or file: one line, exit status 2.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _book
import _checkpoint
import _cli
import _loaders
import _results
from _mnist_cnn import build_model
from _training import DeferredInterrupt, evaluate, train_one_epoch

__all__ = ["OPTIMIZERS", "build_model", "main"]  # build_model: benchmarks import it from here

NAME = "train_mnist"
OPTIMIZERS = tuple(name.lower() for name in _book.OPTIMIZERS)


def parse(argv: list[str] | None) -> Any:
    p = _cli.parser(__doc__, NAME)
    p.add_argument(
        "--epochs", type=_cli.positive_int, default=1, help="epochs in total (default: %(default)s)"
    )
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="adam", help="(default: %(default)s)")
    p.add_argument(
        "--lr",
        type=_cli.nonnegative_float,
        default=None,
        help="learning rate (default: the book's for the optimizer)",
    )
    p.add_argument(
        "--lr-schedule",
        choices=("cosine", "constant"),
        default="cosine",
        help="cosine: torch's CosineAnnealingLR over all steps, per step (default: %(default)s)",
    )
    p.add_argument(
        "--batch-size", type=_cli.positive_int, default=64, help="(default: %(default)s)"
    )
    p.add_argument(
        "--workers",
        type=_cli.nonnegative_int,
        default=0,
        help="DataLoader worker processes (default: %(default)s)",
    )
    p.add_argument(
        "--resume",
        nargs="?",
        const="",
        default=None,
        metavar="CKPT",
        help="continue from CKPT (default <out>/checkpoint.pt)",
    )
    p.add_argument(
        "--stop-after-steps",
        type=_cli.nonnegative_int,
        default=None,
        metavar="K",
        help="save a checkpoint after K steps in total and stop (to resume later)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse(argv)
    started = time.perf_counter()
    device = _cli.setup(args)

    model = build_model().to(device)
    shown = {k.lower(): k for k in _book.OPTIMIZERS}[args.optimizer]
    lr = _book.OPTIMIZERS[shown]["lr"] if args.lr is None else args.lr
    optimizer = _book.make_optimizer(shown, model.parameters(), lr=lr)
    train_loader, test_loader = _loaders.make_loaders(
        args.data_root, args.batch_size, quick=args.quick, seed=args.seed,
        num_workers=args.workers, pin_memory=device.type == "cuda",
    )  # fmt: skip
    steps_per_epoch = len(train_loader)
    scheduler = None
    if args.lr_schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=args.epochs * steps_per_epoch
        )
    run = {"optimizer": args.optimizer, "lr": lr, "lr_schedule": args.lr_schedule, "batch_size": args.batch_size,
           "seed": args.seed, "quick": args.quick, "epochs": args.epochs}  # fmt: skip
    progress = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "images": 0, "train_seconds": 0.0}
    losses: list[float] = []
    ckpt_path = args.out / "checkpoint.pt"
    if args.resume is not None:
        path = Path(args.resume) if args.resume else ckpt_path
        ckpt = _checkpoint.load(path)
        _checkpoint.check_run(ckpt, run, path)
        _checkpoint.restore(ckpt, path, model, optimizer, scheduler)
        progress, losses = dict(ckpt["progress"]), list(ckpt["losses"])
        print(f"resumed from {path} at epoch {progress['epoch']}, step {progress['global_step']}")

    def save_checkpoint() -> None:
        _checkpoint.save(
            ckpt_path, run=run, model=model.state_dict(), optimizer=optimizer.state_dict(),
            scheduler=None if scheduler is None else scheduler.state_dict(), progress=progress,
            losses=losses, rng=_checkpoint.rng_state(),
        )  # fmt: skip

    with DeferredInterrupt() as stop:  # Ctrl-C: finish the step, save, exit
        while progress["epoch"] < args.epochs and not stop.requested:
            budget = None
            if args.stop_after_steps is not None:
                budget = args.stop_after_steps - progress["global_step"]
                if budget <= 0:
                    break
            train_loader.sampler.set_epoch(
                progress["epoch"], progress["step_in_epoch"] * args.batch_size
            )  # type: ignore[attr-defined]
            t0 = time.perf_counter()
            steps, _ = train_one_epoch(
                model, train_loader, optimizer, device, scheduler, max_steps=budget, losses=losses,
                desc=f"epoch {progress['epoch'] + 1}/{args.epochs}", progress=not args.no_progress, stop=stop,
            )  # fmt: skip
            progress["train_seconds"] += time.perf_counter() - t0
            progress["global_step"] += steps
            progress["images"] += min(steps * args.batch_size, len(train_loader.sampler))  # type: ignore[arg-type]
            progress["step_in_epoch"] += steps
            if progress["step_in_epoch"] >= steps_per_epoch:
                progress["epoch"] += 1
                progress["step_in_epoch"] = 0
            save_checkpoint()
    if progress["epoch"] < args.epochs:  # stopped early: the checkpoint on disk is this state
        save_checkpoint()
        how = "interrupted" if stop.requested else "stopped"
        print(f"{how} after {progress['global_step']} steps; checkpoint in {ckpt_path} (continue with --resume)",
              file=sys.stderr if stop.requested else sys.stdout)  # fmt: skip
        return _cli.EXIT_INTERRUPTED if stop.requested else 0

    accuracy = evaluate(model, test_loader, device)
    n_test = len(test_loader.dataset)  # type: ignore[arg-type]
    results = {
        "test_accuracy": accuracy,
        "test_images": n_test,
        "train_images": len(train_loader.dataset),  # type: ignore[arg-type]
        **run,
        "steps": progress["global_step"],
        "final_loss_mean_last_50": float(np.mean(losses[-50:])) if losses else 0.0,
        "train_seconds": progress["train_seconds"],
        "images_per_second": progress["images"] / max(progress["train_seconds"], 1e-9),
        "device": str(device),
        "losses": losses,
    }
    fig = plot(losses, accuracy, f"CNN, our {shown} + BatchNorm2d + Dropout")
    _results.write_results(args.out, NAME, results, fig, started, argv)
    print(f"test accuracy: {accuracy:.4f} ({round(accuracy * n_test)}/{n_test})")
    return 0


def plot(losses: list[float], accuracy: float, title: str) -> Any:
    """Loss per step (log scale) and its smoothed curve; the test accuracy in the title."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(losses, lw=0.5, alpha=0.4, label="loss per step")
    if len(losses) > 11:
        ax.plot(_book.smooth_curve(losses), lw=1.5, label="smoothed")
    ax.set(
        xlabel="step",
        ylabel="training loss",
        yscale="log",
        title=f"{title}: test accuracy {accuracy:.2%}",
    )
    ax.legend()
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    raise SystemExit(_cli.run(main))
