"""What every example shares: the command line, MNIST as tensors, the book's network, JSON/PNG output.

Not part of the package: the scripts import it as a sibling module (``examples/`` is put on
``sys.path`` when a script runs). The network is the book's ``MultiLayerNet`` /
``MultiLayerNetExtend`` (Affine [-> BatchNorm] -> ReLU [-> Dropout], ..., Affine, softmax with
cross-entropy), built from ``torch.nn.Linear`` and our BatchNorm1d / Dropout.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from torch_dlbasics.data import MNISTUnavailableError, default_root, load_mnist

EXAMPLES = Path(__file__).resolve().parent


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def parser(description: str | None, name: str) -> argparse.ArgumentParser:
    """The options every example has: --device, --out, --data-root, --quick, --seed, --threads."""
    p = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--device", default=default_device(), help="cpu, cuda or cuda:N (default: %(default)s)"
    )
    p.add_argument(
        "--out", type=Path, default=Path("runs") / name, help="output folder (default: %(default)s)"
    )
    p.add_argument(
        "--data-root",
        type=Path,
        default=default_root(),
        help="where MNIST/raw/ lives or is prepared (default: $TORCH_DLBASICS_DATA or %(default)s)",
    )
    p.add_argument("--quick", action="store_true", help="tiny budget, same code path (for CI)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads on the CPU")
    return p


def setup(args: argparse.Namespace) -> torch.device:
    """Seed, threads, the output folder, headless plotting (the scripts only write files);
    return the device (a clear error if CUDA is missing)."""
    import matplotlib

    matplotlib.use("Agg")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit(f"error: --device {args.device} given, but torch.cuda.is_available() is False")
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    return device


def mnist_tensors(
    data_root: Path, train: bool, device: torch.device, limit: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST as the book loads it (``normalize=True``, flattened): x = byte / 255 in (N, 784), labels."""
    try:
        ds = load_mnist(data_root, train=train)
    except MNISTUnavailableError as e:
        sys.exit(f"error: {e}")
    x = ds.data[:limit].reshape(-1, 784).to(torch.float32).div_(255.0)
    return x.to(device), ds.targets[:limit].to(device)


def mlp(
    hidden: list[int],
    *,
    batch_norm: bool = False,
    dropout: float | None = None,
    activation: type[nn.Module] = nn.ReLU,
    batch_norm_kwargs: dict[str, Any] | None = None,
    dropout_kwargs: dict[str, Any] | None = None,
) -> nn.Sequential:
    """The book's MultiLayerNet(Extend): 784 -> hidden... -> 10 (weights set by the caller).

    Hidden layer: Linear -> [our BatchNorm1d] -> activation -> [our Dropout].
    """
    from torch_dlbasics.nn import BatchNorm1d, Dropout

    layers: list[nn.Module] = []
    sizes = [784, *hidden]
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        layers.append(nn.Linear(n_in, n_out))
        if batch_norm:
            layers.append(BatchNorm1d(n_out, **(batch_norm_kwargs or {})))
        layers.append(activation())
        if dropout is not None:
            layers.append(Dropout(dropout, **(dropout_kwargs or {})))
    layers.append(nn.Linear(sizes[-1], 10))
    return nn.Sequential(*layers)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, t: torch.Tensor, batch: int = 10000) -> float:
    """Accuracy in eval mode (the book's ``predict(train_flg=False)``), model left as it was."""
    was_training = model.training
    model.eval()
    correct = sum(
        int((model(x[i : i + batch]).argmax(1) == t[i : i + batch]).sum())
        for i in range(0, len(x), batch)
    )
    model.train(was_training)
    return correct / len(x)


def smooth_curve(x: list[float] | np.ndarray) -> np.ndarray:
    """The book's ``common.util.smooth_curve``: an 11-tap Kaiser window (beta 2), mirrored ends."""
    x = np.asarray(x, dtype=np.float64)
    window_len = 11
    s = np.r_[x[window_len - 1 : 0 : -1], x, x[-1:-window_len:-1]]
    w = np.kaiser(window_len, 2)
    y = np.convolve(w / w.sum(), s, mode="valid")
    return y[5 : len(y) - 5]


def _check_finite(obj: Any, where: str = "$") -> None:
    if isinstance(obj, float) and not math.isfinite(obj):
        raise ValueError(f"non-finite number at {where}: {obj}")
    if isinstance(obj, dict):
        for k, v in obj.items():
            _check_finite(v, f"{where}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_finite(v, f"{where}[{i}]")


def machine() -> dict[str, Any]:
    """Where the numbers came from."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu
            )
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def write_results(
    out: Path, name: str, results: dict[str, Any], fig: Any, started: float, argv: list[str]
) -> Path:
    """Save ``<out>/<name>.png`` and ``<out>/<name>.json`` (finite numbers only); print where."""
    import matplotlib.pyplot as plt

    results = {
        "command": " ".join(["python", f"examples/{name}.py", *argv]),
        **results,
        "seconds": round(time.perf_counter() - started, 2),
        "machine": machine(),
    }
    _check_finite(results)
    png, js = out / f"{name}.png", out / f"{name}.json"
    fig.savefig(png, dpi=80)
    plt.close(fig)
    js.write_text(json.dumps(results, indent=1, allow_nan=False) + "\n")
    print(f"wrote {png} and {js}")
    return js


def book_batches(n: int, batch_size: int, iterations: int, seed: int) -> torch.Tensor:
    """Index batches as the book draws them (``np.random.choice(n, batch_size)``: with replacement).

    Drawn once from their own generator, so every network of a comparison sees the same batches.
    """
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, n, (iterations, batch_size), generator=g)


def train_book_style(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    t: torch.Tensor,
    batches: torch.Tensor,
    desc: str,
) -> list[float]:
    """The book's loop: per batch, gradient, update, then the batch's loss *after* the update.

    (``optimizer_compare_mnist.py`` / ``weight_init_compare.py`` append ``network.loss(x_batch,
    t_batch)`` computed after ``optimizer.update``.) Returns that loss per iteration.
    """
    from tqdm import tqdm

    criterion = nn.CrossEntropyLoss()
    model.train()
    losses = []
    for idx in tqdm(batches.to(x.device), desc=desc, mininterval=1.0):
        xb, tb = x[idx], t[idx]
        optimizer.zero_grad(set_to_none=True)
        criterion(model(xb), tb).backward()
        optimizer.step()
        with torch.no_grad():
            losses.append(criterion(model(xb), tb).detach())
    return torch.stack(losses).tolist()


def train_with_evaluation(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    batches: torch.Tensor,
    iter_per_epoch: int,
    penalty: Any = None,
    desc: str = "train",
) -> dict[str, list[float]]:
    """The book's overfitting loops: update per batch; after iterations 0, e, 2e, ... (e =
    ``iter_per_epoch``) the accuracy on the whole training and test sets (eval mode).

    ``penalty(model)`` is added to the loss (the book's weight decay ``0.5 * lambda * sum W**2``).
    """
    from tqdm import tqdm

    x, t, xt, tt = data
    criterion = nn.CrossEntropyLoss()
    acc: dict[str, list[float]] = {"train": [], "test": []}
    for i, idx in enumerate(tqdm(batches.to(x.device), desc=desc, mininterval=1.0)):
        model.train()
        loss = criterion(model(x[idx]), t[idx])
        if penalty is not None:
            loss = loss + penalty(model)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i % iter_per_epoch == 0:
            acc["train"].append(accuracy(model, x, t))
            acc["test"].append(accuracy(model, xt, tt))
    return acc


def plot_train_test(runs: dict[str, dict[str, list[float]]], title: str) -> Any:
    """One panel per run: train (solid, circles) and test (dashed, squares) accuracy per epoch."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(5.5 * len(runs), 4), sharey=True, squeeze=False)
    for ax, (label, acc) in zip(axes[0], runs.items()):
        epochs = np.arange(len(acc["train"]))
        ax.plot(epochs, acc["train"], marker="o", markevery=10, ms=4, label="train")
        ax.plot(epochs, acc["test"], marker="s", markevery=10, ms=4, ls="--", label="test")
        ax.set(title=label, xlabel="epochs", ylim=(0, 1.0))
        ax.legend(loc="lower right")
    axes[0, 0].set_ylabel("accuracy")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig
