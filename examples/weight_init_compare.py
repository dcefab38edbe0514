"""Weight initialisation on MNIST: std 0.01 vs Xavier vs He (book fig. 6-15).

Book ch. 6 ``weight_init_compare.py``: 784 -> 4 x 100 (ReLU) -> 10, SGD lr 0.01, batch 128
drawn as ``np.random.choice(60000, 128)``, 2000 iterations; weights set by our
``torch_dlbasics.init.init_weights_(model, scheme)`` with ``0.01`` (a fixed std), ``"xavier"``
(std sqrt(1/n)) and ``"he"`` (std sqrt(2/n)), biases zero. Per seed, the three networks see
the same batches. Loss recorded after each update, as in the book; smoothed curves in the
figure, median and min-max over the seeds. ``--quick``: 150 iterations, accuracies on 2,000
training and 2,000 test images.
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
import _cli
import _loaders
import _plots
import _results

NAME = "weight_init_compare"
SCHEMES: dict[str, float | str] = {"std=0.01": 0.01, "Xavier": "xavier", "He": "he"}


def one_seed(seed: int, data: tuple, iterations: int, n_acc: int) -> dict[str, Any]:
    from torch_dlbasics.init import init_weights_

    x, t, xt, tt = data
    batches = _book.book_batches(len(x), 128, iterations, seed)
    runs: dict[str, Any] = {}
    for label, scheme in SCHEMES.items():
        torch.manual_seed(seed)
        model = init_weights_(_book.mlp([100] * 4), scheme).to(x.device)
        optimizer = _book.make_optimizer("SGD", model.parameters())
        losses = _book.train_book_style(model, optimizer, x, t, batches, f"seed {seed} {label}")
        runs[label] = {
            "loss_mean_last_100": float(np.mean(losses[-100:])),
            "train_accuracy": _book.accuracy(model, x[:n_acc], t[:n_acc]),
            "test_accuracy": _book.accuracy(model, xt, tt),
            "loss": losses,
        }
    return runs


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _cli.parser(__doc__, NAME, seeds=True).parse_args(argv)
    started = time.perf_counter()
    device = _cli.setup(args)
    import matplotlib.pyplot as plt

    iterations = 150 if args.quick else 2000
    x, t = _loaders.mnist_tensors(args.data_root, True, device)
    xt, tt = _loaders.mnist_tensors(args.data_root, False, device, 2000 if args.quick else None)
    n_acc = 2000 if args.quick else len(x)  # training images the final accuracy is measured on
    per_seed = {s: one_seed(s, (x, t, xt, tt), iterations, n_acc) for s in args.seeds}

    summary = {
        label: {
            key: _results.spread([per_seed[s][label][key] for s in args.seeds])
            for key in ("loss_mean_last_100", "train_accuracy", "test_accuracy")
        }
        for label in SCHEMES
    }
    fig, ax = plt.subplots(figsize=(7, 5))
    for label in SCHEMES:
        _plots.band(ax, [_book.smooth_curve(per_seed[s][label]["loss"]) for s in args.seeds], label)
    ax.set(xlabel="iterations", ylabel="loss (smoothed)", ylim=(0, 2.5),
           title=f"MNIST, 4 x 100 ReLU, SGD lr 0.01; {_plots.seeds_note(args.seeds)}")  # fmt: skip
    ax.title.set_fontsize(9)
    ax.legend()
    fig.tight_layout()
    results = {
        "iterations": iterations,
        "batch_size": 128,
        "optimizer": "SGD(lr=0.01)",
        "schemes": SCHEMES,
        "seeds": args.seeds,
        "summary": summary,
        "per_seed": {
            str(s): {k: r["loss"] for k, r in runs.items()} for s, runs in per_seed.items()
        },
    }
    _results.write_results(args.out, NAME, results, fig, started, argv)
    for label, r in summary.items():
        loss = r["loss_mean_last_100"]
        print(
            f"{label:9s} mean loss of the last 100 {loss['median']:.4f} [{loss['min']:.4f}, {loss['max']:.4f}]"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(_cli.run(main))
