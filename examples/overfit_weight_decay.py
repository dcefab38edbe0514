"""Overfitting 300 MNIST images, without and with weight decay 0.1 (book figs. 6-20 and 6-21).

Book ch. 6 ``overfit_weight_decay.py``: the first 300 training images, 784 -> 6 x 100 (ReLU)
-> 10, He initialisation, SGD lr 0.01, batch 100 drawn as ``np.random.choice(300, 100)``,
201 epochs of 3 iterations; after iterations 0, 3, ..., 600 the accuracy on the 300 training
images and the 10,000 test images. Weight decay as the book: the loss gets our
``torch_dlbasics.regularization.l2_penalty(model, 0.1)`` = ``0.5 * 0.1 * sum(W**2)`` over the
weight matrices (not the biases). Both runs start from the same weights and see the same
batches. ``--quick``: 40 epochs, 2,000 test images.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common

NAME = "overfit_weight_decay"
WEIGHT_DECAY = 0.1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _common.parser(__doc__.split("\n")[0], NAME).parse_args(argv)
    started = time.perf_counter()
    device = _common.setup(args)

    from torch_dlbasics.init import init_weights_
    from torch_dlbasics.optim import SGD
    from torch_dlbasics.regularization import l2_penalty

    epochs, n_test = (40, 2000) if args.quick else (201, None)
    n_train, batch_size = 300, 100
    iter_per_epoch = max(n_train // batch_size, 1)
    x, t = _common.mnist_tensors(args.data_root, True, device, n_train)
    xt, tt = _common.mnist_tensors(args.data_root, False, device, n_test)
    batches = _common.book_batches(
        n_train, batch_size, (epochs - 1) * iter_per_epoch + 1, args.seed
    )

    runs: dict[str, Any] = {}
    for label, wd in (
        ("without weight decay", 0.0),
        (f"weight decay {WEIGHT_DECAY}", WEIGHT_DECAY),
    ):
        torch.manual_seed(args.seed)
        model = init_weights_(_common.mlp([100] * 6), "he").to(device)
        penalty = (lambda m, wd=wd: l2_penalty(m, wd)) if wd else None
        runs[label] = _common.train_with_evaluation(
            model,
            SGD(model.parameters(), lr=0.01),
            (x, t, xt, tt),
            batches,
            iter_per_epoch,
            penalty,
            label,
        )
    fig = _common.plot_train_test(runs, "300 MNIST training images, 6 x 100, SGD lr 0.01")
    summary = {
        label: {
            "weight_decay": wd,
            "final_train_accuracy": acc["train"][-1],
            "final_test_accuracy": acc["test"][-1],
            "gap": acc["train"][-1] - acc["test"][-1],
            "accuracy": acc,
        }
        for (label, acc), wd in zip(runs.items(), (0.0, WEIGHT_DECAY))
    }
    results = {"train_images": n_train, "test_images": len(xt), "epochs": epochs, "runs": summary}
    _common.write_results(args.out, NAME, results, fig, started, argv)
    for label, r in summary.items():
        print(
            f"{label:22s} train {r['final_train_accuracy']:.3f}  test {r['final_test_accuracy']:.3f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
