"""SGD, Momentum, Nesterov, AdaGrad and Adam training the same MLP on MNIST (book fig. 6-9).

Book ch. 6 ``optimizer_compare_mnist.py``: 784 -> 4 x 100 (ReLU) -> 10, He initialisation,
batch 128 drawn as ``np.random.choice(60000, 128)``, 2000 iterations, every optimizer at its
book default (SGD lr 0.01; Momentum lr 0.01, 0.9; Nesterov lr 0.01, 0.9; AdaGrad lr 0.01;
Adam lr 0.001, betas 0.9/0.999). All five see the same batches and start from the same
weights (the book draws each network's weights separately). The loss recorded at an iteration
is, as in the book, the batch's loss right after that iteration's update; the figure shows the
book's smoothed curves. ``--quick``: 150 iterations, accuracies on 2,000 training and 2,000 test images.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common

NAME = "optimizer_compare_mnist"
BOOK_LOSS_AT_1900 = {"SGD": 0.15, "Momentum": 0.05, "AdaGrad": 0.016, "Adam": 0.032}


def make(name: str, params: Any) -> torch.optim.Optimizer:
    from torch_dlbasics.optim import SGD, AdaGrad, Adam, Momentum, Nesterov

    return {
        "SGD": lambda: SGD(params, lr=0.01),
        "Momentum": lambda: Momentum(params, lr=0.01, momentum=0.9),
        "Nesterov": lambda: Nesterov(params, lr=0.01, momentum=0.9),
        "AdaGrad": lambda: AdaGrad(params, lr=0.01, eps=1e-7),
        "Adam": lambda: Adam(params, lr=0.001, betas=(0.9, 0.999), eps=1e-7),
    }[name]()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _common.parser(__doc__.split("\n")[0], NAME).parse_args(argv)
    started = time.perf_counter()
    device = _common.setup(args)
    import matplotlib.pyplot as plt

    from torch_dlbasics.init import init_weights_

    iterations = 150 if args.quick else 2000
    x, t = _common.mnist_tensors(args.data_root, True, device)
    xt, tt = _common.mnist_tensors(args.data_root, False, device, 2000 if args.quick else None)
    batches = _common.book_batches(len(x), 128, iterations, args.seed)
    n_acc = 2000 if args.quick else len(x)  # training images the final accuracy is measured on

    per_opt: dict[str, Any] = {}
    for name in ("SGD", "Momentum", "Nesterov", "AdaGrad", "Adam"):
        torch.manual_seed(args.seed)  # the same initial weights for every optimizer
        model = _common.mlp([100] * 4).to(device)
        init_weights_(model, "he")
        losses = _common.train_book_style(
            model, make(name, model.parameters()), x, t, batches, name
        )
        at = min(1900, iterations - 1)
        per_opt[name] = {
            f"loss_at_{at}": losses[at],
            "loss_mean_last_100": float(np.mean(losses[-100:])),
            "book_loss_at_1900": BOOK_LOSS_AT_1900.get(name),
            "train_accuracy": _common.accuracy(model, x[:n_acc], t[:n_acc]),
            "test_accuracy": _common.accuracy(model, xt, tt),
            "loss": losses,
        }
        print(
            f"{name:9s} loss@{at} {losses[at]:.4f}  test acc {per_opt[name]['test_accuracy']:.4f}"
        )

    fig, ax = plt.subplots(figsize=(7, 5))
    for name, r in per_opt.items():
        ax.plot(_common.smooth_curve(r["loss"]), label=name, lw=1.2)
    ax.set(
        xlabel="iterations",
        ylabel="loss",
        ylim=(0, 1),
        title="MNIST, 4 x 100 ReLU, He init, batch 128",
    )
    ax.legend()
    fig.tight_layout()
    results = {
        "iterations": iterations,
        "batch_size": 128,
        "hidden": [100] * 4,
        "optimizers": per_opt,
    }
    _common.write_results(args.out, NAME, results, fig, started, argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
