"""SGD, Momentum, Nesterov, AdaGrad and Adam training the same MLP on MNIST (book fig. 6-9).

Book ch. 6 ``optimizer_compare_mnist.py``: 784 -> 4 x 100 (ReLU) -> 10, He initialisation,
batch 128 drawn as ``np.random.choice(60000, 128)``, 2000 iterations, every optimizer at its
book setting (``_book.OPTIMIZERS``). Per seed, all five see the same batches and start from
the same weights (the book draws each network's weights separately). The loss recorded at an
iteration is, as in the book, the batch's loss right after that iteration's update; the figure
shows the book's smoothed curves, median and min-max over the seeds, with the losses at
iteration 1900 that the book's notebook prints marked. ``--quick``: 150 iterations,
accuracies on 2,000 training and 2,000 test images.
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

NAME = "optimizer_compare_mnist"
BOOK_LOSS_AT_1900 = {"SGD": 0.15, "Momentum": 0.05, "AdaGrad": 0.016, "Adam": 0.032}
AT = 1900  # the iteration whose loss the book's notebook prints last


def one_seed(seed: int, data: tuple, iterations: int, n_acc: int, progress: bool) -> dict[str, Any]:
    from torch_dlbasics.init import init_weights_

    x, t, xt, tt = data
    batches = _book.book_batches(len(x), 128, iterations, seed)
    runs: dict[str, Any] = {}
    for name in _book.OPTIMIZERS:
        torch.manual_seed(seed)  # the same initial weights for every optimizer
        model = init_weights_(_book.mlp([100] * 4), "he").to(x.device)
        optimizer = _book.make_optimizer(name, model.parameters())
        losses = _book.train_book_style(
            model, optimizer, x, t, batches, f"seed {seed} {name}", progress
        )
        runs[name] = {
            "loss_at": losses[min(AT, iterations - 1)],
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

    iterations = 150 if args.quick else 2000
    x, t = _loaders.mnist_tensors(args.data_root, True, device)
    xt, tt = _loaders.mnist_tensors(args.data_root, False, device, 2000 if args.quick else None)
    n_acc = 2000 if args.quick else len(x)  # training images the final accuracy is measured on
    per_seed = {s: one_seed(s, (x, t, xt, tt), iterations, n_acc, True) for s in args.seeds}

    at = min(AT, iterations - 1)
    summary = {
        name: {
            f"loss_at_{at}": _results.spread([per_seed[s][name]["loss_at"] for s in args.seeds]),
            "loss_mean_last_100": _results.spread([per_seed[s][name]["loss_mean_last_100"] for s in args.seeds]),
            "train_accuracy": _results.spread([per_seed[s][name]["train_accuracy"] for s in args.seeds]),
            "test_accuracy": _results.spread([per_seed[s][name]["test_accuracy"] for s in args.seeds]),
            "book_loss_at_1900": BOOK_LOSS_AT_1900.get(name),
        }
        for name in _book.OPTIMIZERS
    }  # fmt: skip
    results = {
        "iterations": iterations,
        "batch_size": 128,
        "hidden": [100] * 4,
        "seeds": args.seeds,
        "settings": _book.OPTIMIZERS,
        "summary": summary,
        "per_seed": {
            str(s): {n: r["loss"] for n, r in runs.items()} for s, runs in per_seed.items()
        },
    }
    _results.write_results(
        args.out, NAME, results, figure(per_seed, args.seeds, iterations), started, argv
    )
    for name, r in summary.items():
        loss, acc = r[f"loss_at_{at}"], r["test_accuracy"]
        print(f"{name:9s} loss@{at} {loss['median']:.4f} [{loss['min']:.4f}, {loss['max']:.4f}]  "
              f"test acc {acc['median']:.4f}")  # fmt: skip
    return 0


def figure(per_seed: dict[int, Any], seeds: list[int], iterations: int) -> Any:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for i, name in enumerate(_book.OPTIMIZERS):
        color = f"C{i}"
        curves = [_book.smooth_curve(per_seed[s][name]["loss"]) for s in seeds]
        _plots.band(ax, curves, name, color=color)
        if name in BOOK_LOSS_AT_1900 and iterations > AT:
            _plots.book_mark(ax, BOOK_LOSS_AT_1900[name], AT, color=color, label=None)
    if iterations > AT:
        ax.plot(
            [],
            [],
            marker="*",
            color="0.5",
            mec="k",
            mew=0.5,
            ls="none",
            label="book, iteration 1900",
        )
    ax.set(xlabel="iterations", ylabel="loss (smoothed)", ylim=(0, 1),
           title=f"MNIST, 4 x 100 ReLU, He init, batch 128; {_plots.seeds_note(seeds)}")  # fmt: skip
    ax.title.set_fontsize(9)
    ax.legend()
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    raise SystemExit(_cli.run(main))
