"""Weight initialisation on MNIST: std 0.01 vs Xavier vs He (book fig. 6-15).

Book ch. 6 ``weight_init_compare.py``: 784 -> 4 x 100 (ReLU) -> 10, SGD lr 0.01, batch 128
drawn as ``np.random.choice(60000, 128)``, 2000 iterations; weights set by our
``torch_dlbasics.init.init_weights_(model, scheme)`` with ``0.01`` (a fixed std), ``"xavier"``
(std sqrt(1/n)) and ``"he"`` (std sqrt(2/n)), biases zero. The three networks see the same
batches. Loss recorded after each update, as in the book; smoothed curves in the figure.
``--quick``: 150 iterations, accuracies on 2,000 training and 2,000 test images.
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

NAME = "weight_init_compare"
SCHEMES: dict[str, float | str] = {"std=0.01": 0.01, "Xavier": "xavier", "He": "he"}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _common.parser(__doc__.split("\n")[0], NAME).parse_args(argv)
    started = time.perf_counter()
    device = _common.setup(args)
    import matplotlib.pyplot as plt

    from torch_dlbasics.init import init_weights_
    from torch_dlbasics.optim import SGD

    iterations = 150 if args.quick else 2000
    x, t = _common.mnist_tensors(args.data_root, True, device)
    xt, tt = _common.mnist_tensors(args.data_root, False, device, 2000 if args.quick else None)
    batches = _common.book_batches(len(x), 128, iterations, args.seed)
    n_acc = 2000 if args.quick else len(x)  # training images the final accuracy is measured on

    per_scheme: dict[str, Any] = {}
    for label, scheme in SCHEMES.items():
        torch.manual_seed(args.seed)
        model = _common.mlp([100] * 4).to(device)
        init_weights_(model, scheme)
        losses = _common.train_book_style(
            model, SGD(model.parameters(), lr=0.01), x, t, batches, label
        )
        at = min(1900, iterations - 1)
        per_scheme[label] = {
            "scheme": scheme,
            f"loss_at_{at}": losses[at],
            "loss_mean_last_100": float(np.mean(losses[-100:])),
            "train_accuracy": _common.accuracy(model, x[:n_acc], t[:n_acc]),
            "test_accuracy": _common.accuracy(model, xt, tt),
            "loss": losses,
        }
        print(
            f"{label:9s} loss@{at} {losses[at]:.4f}  test acc {per_scheme[label]['test_accuracy']:.4f}"
        )

    fig, ax = plt.subplots(figsize=(7, 5))
    for label, r in per_scheme.items():
        ax.plot(_common.smooth_curve(r["loss"]), label=label, lw=1.2)
    ax.set(
        xlabel="iterations", ylabel="loss", ylim=(0, 2.5), title="MNIST, 4 x 100 ReLU, SGD lr 0.01"
    )
    ax.legend()
    fig.tight_layout()
    results = {
        "iterations": iterations,
        "batch_size": 128,
        "optimizer": "SGD(lr=0.01)",
        "schemes": per_scheme,
    }
    _common.write_results(args.out, NAME, results, fig, started, argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
