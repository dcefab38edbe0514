"""Train a small CNN on MNIST with our Adam, BatchNorm2d and Dropout: the README's main job.

    python examples/train_mnist.py                      # 1 epoch, a few minutes on 2 CPU cores
    python examples/train_mnist.py --epochs 3 --device cuda --optimizer momentum
    python examples/train_mnist.py --stop-after-steps 300   # save at step 300 and stop
    python examples/train_mnist.py --resume                 # ... and continue, bit for bit

The model: conv 3x3 (32) -> BatchNorm2d -> ReLU -> max-pool 2, conv 3x3 (64) -> BatchNorm2d ->
ReLU -> max-pool 2, Dropout(0.25), linear 3136 -> 10. Data: torchvision's MNIST (prepared by
``torch_dlbasics.data`` from an offline mirror when torchvision cannot download it), ``ToTensor``
+ ``Normalize``, a ``DataLoader``. The learning rate follows a cosine schedule over the run's
steps. Writes ``<out>/train_mnist.{png,json}`` and ``<out>/checkpoint.pt`` (model, optimizer,
scheduler, every RNG state and the position in the data order; saved after every epoch and at
``--stop-after-steps``). ``--resume`` continues from that checkpoint exactly: the resumed run
ends with the same parameters, bit for bit, as one that never stopped (same device and threads).

``build_model``, ``make_loaders``, ``train_one_epoch`` and ``evaluate`` are importable (the DDP
example uses them).
"""

from __future__ import annotations

import math
import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler, Subset

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common

NAME = "train_mnist"
QUICK_TRAIN, QUICK_TEST = 2048, 1000
MEAN, STD = 0.1307, 0.3081  # MNIST's training-set pixel mean and standard deviation


def build_model(
    batch_norm: Callable[[int], nn.Module] | None = None,
    dropout: Callable[[float], nn.Module] | None = None,
) -> nn.Sequential:
    """The CNN, with our BatchNorm2d and Dropout unless other classes are passed (benchmarks)."""
    from torch_dlbasics.nn import BatchNorm2d, Dropout

    bn = batch_norm or BatchNorm2d
    drop = dropout or Dropout
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1, bias=False),  # the BatchNorm's beta is the bias
        bn(32),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1, bias=False),
        bn(64),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        drop(0.25),
        nn.Linear(64 * 7 * 7, 10),
    )


def make_optimizer(name: str, params: Any, lr: float | None = None) -> torch.optim.Optimizer:
    """One of our five optimizers at the book's default learning rate (or ``lr``)."""
    from torch_dlbasics.optim import SGD, AdaGrad, Adam, Momentum, Nesterov

    choices: dict[str, Callable[[float | None], torch.optim.Optimizer]] = {
        "sgd": lambda lr: SGD(params, lr=lr or 0.01),
        "momentum": lambda lr: Momentum(params, lr=lr or 0.01, momentum=0.9),
        "nesterov": lambda lr: Nesterov(params, lr=lr or 0.01, momentum=0.9),
        "adagrad": lambda lr: AdaGrad(params, lr=lr or 0.01),
        "adam": lambda lr: Adam(params, lr=lr or 0.001),
    }
    return choices[name](lr)


OPTIMIZERS = ("adam", "sgd", "momentum", "nesterov", "adagrad")


class EpochSampler(Sampler[int]):
    """A fresh permutation each epoch, drawn from ``(seed, epoch)`` alone, that can start mid-epoch.

    Because the order depends on nothing but the seed and the epoch, a resumed run gets the
    same batches as the uninterrupted one: ``set_epoch(epoch, start)`` skips the ``start``
    samples already seen without loading them.
    """

    def __init__(self, n: int, seed: int = 0) -> None:
        self.n, self.seed, self.epoch, self.start = n, seed, 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g)[self.start :].tolist())

    def __len__(self) -> int:
        return self.n - self.start


def make_loaders(
    data_root: str | Path | None,
    batch_size: int = 64,
    *,
    quick: bool = False,
    seed: int = 0,
    num_workers: int = 0,
    train_sampler: Sampler[int] | None = None,
    pin_memory: bool = False,
) -> tuple[DataLoader, DataLoader]:
    """Train and test DataLoaders over torchvision's MNIST (quick: the first 2048 / 1000 images).

    The train loader shuffles with :class:`EpochSampler` unless ``train_sampler`` is given
    (e.g. a ``DistributedSampler`` built over ``train_loader.dataset``).
    """
    from torchvision import transforms

    from torch_dlbasics.data import MNISTUnavailableError, load_mnist

    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((MEAN,), (STD,))])
    try:
        train: Any = load_mnist(data_root, train=True, transform=transform)
        test: Any = load_mnist(data_root, train=False, transform=transform)
    except MNISTUnavailableError as e:
        sys.exit(f"error: {e}")
    if quick:
        train, test = Subset(train, range(QUICK_TRAIN)), Subset(test, range(QUICK_TEST))
    sampler = train_sampler if train_sampler is not None else EpochSampler(len(train), seed)
    kw = {
        "num_workers": num_workers,
        "pin_memory": pin_memory,
        "persistent_workers": num_workers > 0,
    }
    # Its own generator: otherwise each new iterator draws a worker base seed from torch's
    # global RNG, which the resumed run would then draw once more than the uninterrupted one.
    generator = torch.Generator().manual_seed(seed)
    train_loader = DataLoader(
        train, batch_size=batch_size, sampler=sampler, generator=generator, **kw
    )
    test_loader = DataLoader(test, batch_size=1000, shuffle=False, **kw)
    return train_loader, test_loader


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    device: torch.device | str,
    scheduler: Any = None,
    *,
    max_steps: int | None = None,
    losses: list[float] | None = None,
    desc: str = "train",
    progress: bool = True,
) -> tuple[int, float]:
    """Train over ``loader`` (from where its sampler starts), at most ``max_steps`` steps.

    Appends each step's loss to ``losses``; returns (steps taken, images per second).
    """
    from tqdm import tqdm

    model.train()
    criterion = nn.CrossEntropyLoss()
    steps, images, pending = 0, 0, []
    n_total = len(loader.sampler) if hasattr(loader.sampler, "__len__") else None  # type: ignore[arg-type]
    bar = tqdm(
        total=n_total, desc=desc, unit="img", unit_scale=True, disable=not progress, mininterval=1.0
    )
    start = time.perf_counter()
    for x, t in loader:
        x, t = x.to(device, non_blocking=True), t.to(device, non_blocking=True)
        loss = criterion(model(x), t)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        pending.append(loss.detach())
        steps += 1
        images += len(t)
        bar.update(len(t))
        if steps % 50 == 0:  # one device sync every 50 steps, not every step
            bar.set_postfix(loss=f"{pending[-1].item():.4f}")
        if max_steps is not None and steps >= max_steps:
            break
        if len(pending) >= 50:
            if losses is not None:
                losses.extend(torch.stack(pending).tolist())
            pending = []
    if losses is not None and pending:
        losses.extend(torch.stack(pending).tolist())
    bar.close()
    seconds = time.perf_counter() - start
    return steps, images / seconds if seconds > 0 else 0.0


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device | str) -> float:
    """Accuracy on ``loader`` in eval mode (running statistics, no dropout); mode restored."""
    was_training = model.training
    model.eval()
    correct = total = 0
    for x, t in loader:
        pred = model(x.to(device)).argmax(1)
        correct += int((pred == t.to(device)).sum())
        total += len(t)
    model.train(was_training)
    return correct / max(total, 1)


# --- checkpoints ---------------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """Every RNG the run touches, in types ``torch.load(weights_only=True)`` accepts."""
    name, key, pos, has_gauss, gauss = np.random.get_state()
    version, internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": name,
            "key": key.tolist(),
            "pos": pos,
            "has_gauss": has_gauss,
            "gauss": gauss,
        },
        "python": {"version": version, "internal": list(internal), "gauss": py_gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (n["name"], np.array(n["key"], dtype=np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, **parts: Any) -> None:
    """``torch.save`` to a temporary name, then rename: a crash never leaves half a checkpoint."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(parts, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        sys.exit(f"error: --resume: no checkpoint at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated or foreign file: say so, do not guess
        sys.exit(f"error: --resume: cannot read {path}: {type(e).__name__}: {e}")


# --- the run -------------------------------------------------------------------------------------


def plot(losses: list[float], accuracy: float, title: str) -> Any:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(losses, lw=0.5, alpha=0.4, label="loss per step")
    if len(losses) > 11:
        ax.plot(_common.smooth_curve(losses), lw=1.5, label="smoothed")
    ax.set(
        xlabel="step",
        ylabel="training loss",
        yscale="log",
        title=f"{title}: test accuracy {accuracy:.2%}",
    )
    ax.legend()
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = _common.parser(__doc__.split("\n")[0], NAME)
    p.add_argument("--epochs", type=int, default=1, help="epochs in total (default: %(default)s)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="adam", help="(default: %(default)s)")
    p.add_argument(
        "--lr",
        type=float,
        default=None,
        help="learning rate (default: the book's for the optimizer)",
    )
    p.add_argument("--lr-schedule", choices=("cosine", "constant"), default="cosine",
                   help="cosine: torch's CosineAnnealingLR over all steps, per step (default: %(default)s)")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=64, help="(default: %(default)s)")
    p.add_argument(
        "--workers", type=int, default=0, help="DataLoader worker processes (default: %(default)s)"
    )
    p.add_argument("--resume", nargs="?", const="", default=None, metavar="CKPT",
                   help="continue from CKPT (default <out>/checkpoint.pt)")  # fmt: skip
    p.add_argument("--stop-after-steps", type=int, default=None, metavar="K",
                   help="save a checkpoint after K steps in total and stop (to resume later)")  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    started = time.perf_counter()
    device = _common.setup(args)
    random.seed(args.seed)

    model = build_model().to(device)
    optimizer = make_optimizer(args.optimizer, model.parameters(), args.lr)
    train_loader, test_loader = make_loaders(
        args.data_root, args.batch_size, quick=args.quick, seed=args.seed,
        num_workers=args.workers, pin_memory=device.type == "cuda",
    )  # fmt: skip
    steps_per_epoch = math.ceil(len(train_loader.dataset) / args.batch_size)  # type: ignore[arg-type]
    scheduler = None
    if args.lr_schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=args.epochs * steps_per_epoch
        )
    run = {"optimizer": args.optimizer, "lr": args.lr, "lr_schedule": args.lr_schedule,
           "batch_size": args.batch_size, "seed": args.seed, "quick": args.quick, "epochs": args.epochs}  # fmt: skip
    progress = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "images": 0, "train_seconds": 0.0}
    losses: list[float] = []
    ckpt_path = args.out / "checkpoint.pt"

    if args.resume is not None:
        path = Path(args.resume) if args.resume else ckpt_path
        ckpt = load_checkpoint(path)
        if ckpt["run"] != run:
            diff = {k: (ckpt["run"].get(k), v) for k, v in run.items() if ckpt["run"].get(k) != v}
            sys.exit(
                f"error: --resume: the checkpoint was made with other settings (saved, now): {diff}"
            )
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(ckpt["scheduler"])
        progress, losses = dict(ckpt["progress"]), list(ckpt["losses"])
        set_rng_state(ckpt["rng"])
        print(f"resumed from {path} at epoch {progress['epoch']}, step {progress['global_step']}")

    def checkpoint() -> None:
        save_checkpoint(
            ckpt_path, run=run, model=model.state_dict(), optimizer=optimizer.state_dict(),
            scheduler=None if scheduler is None else scheduler.state_dict(), progress=progress, losses=losses, rng=rng_state(),
        )  # fmt: skip

    while progress["epoch"] < args.epochs:
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
            desc=f"epoch {progress['epoch'] + 1}/{args.epochs}", progress=not args.no_progress,
        )  # fmt: skip
        progress["train_seconds"] += time.perf_counter() - t0
        progress["global_step"] += steps
        progress["images"] += min(steps * args.batch_size, len(train_loader.sampler))  # type: ignore[arg-type]
        progress["step_in_epoch"] += steps
        if progress["step_in_epoch"] >= steps_per_epoch:
            progress["epoch"] += 1
            progress["step_in_epoch"] = 0
        checkpoint()
    if progress["epoch"] < args.epochs:
        print(
            f"stopped after {progress['global_step']} steps; checkpoint in {ckpt_path} (continue with --resume)"
        )
        return 0

    accuracy = evaluate(model, test_loader, device)
    n_train = len(train_loader.dataset)  # type: ignore[arg-type]
    results = {
        "test_accuracy": accuracy,
        "test_images": len(test_loader.dataset),  # type: ignore[arg-type]
        "train_images": n_train,
        **run,
        "steps": progress["global_step"],
        "final_loss_mean_last_50": float(np.mean(losses[-50:])) if losses else 0.0,
        "train_seconds": progress["train_seconds"],
        "images_per_second": progress["images"] / max(progress["train_seconds"], 1e-9),
        "device": str(device),
        "losses": losses,
    }
    shown = {"sgd": "SGD", "adagrad": "AdaGrad"}.get(args.optimizer, args.optimizer.capitalize())
    fig = plot(losses, accuracy, f"CNN, our {shown} + BatchNorm2d + Dropout")
    _common.write_results(args.out, NAME, results, fig, started, argv)
    print(
        f"test accuracy: {accuracy:.4f} ({round(accuracy * len(test_loader.dataset))}/{len(test_loader.dataset)})"
    )  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
