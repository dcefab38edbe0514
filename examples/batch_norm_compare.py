"""Training accuracy with and without our BatchNorm over 16 weight scales (book fig. 6-19).

Book ch. 6 ``batch_norm_test.py``: the first 1,000 training images, 784 -> 5 x 100 -> 10
(Affine -> BatchNorm -> ReLU, or Affine -> ReLU), weights ``randn * w`` for
``w in logspace(0, -4, 16)`` (our ``init_weights_(model, w)``), biases 0, SGD lr 0.01, batch 100
drawn as ``np.random.choice(1000, 100)``, 20 epochs of 10 iterations; after iterations 0, 10,
..., 190 the accuracy on the 1,000 training images in eval mode (running statistics), as the book.
The BatchNorm is ours in the book's form: ``BatchNorm1d(100, eps=1e-6, momentum=0.1,
book=True)`` (book eps 10e-7, book momentum 0.9 = torch's 0.1, running variance starting at 0
and updated with the biased variance). Both networks of a scale start from the same weights
(drawn from one seed) and see the same batches. ``--quick``: 4 scales, 3 epochs, 200 images.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common

NAME = "batch_norm_compare"
BOOK_BN = {"eps": 1e-6, "momentum": 0.1, "book": True}


def networks(w: float, seed: int, device: torch.device) -> tuple[nn.Module, nn.Module]:
    from torch_dlbasics.init import init_weights_

    torch.manual_seed(seed)
    bn_net = _common.mlp([100] * 5, batch_norm=True, batch_norm_kwargs=BOOK_BN)
    init_weights_(bn_net, w)
    plain = _common.mlp([100] * 5)
    # The same weight draws for both: copy the Linear layers' weights and biases across.
    bn_linears = [m for m in bn_net if isinstance(m, nn.Linear)]
    for a, b in zip(bn_linears, [m for m in plain if isinstance(m, nn.Linear)]):
        b.load_state_dict(a.state_dict())
    return bn_net.to(device), plain.to(device)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _common.parser(__doc__.split("\n")[0], NAME).parse_args(argv)
    started = time.perf_counter()
    device = _common.setup(args)
    import matplotlib.pyplot as plt
    from tqdm import tqdm

    from torch_dlbasics.optim import SGD

    n_train, epochs, n_scales = (200, 3, 4) if args.quick else (1000, 20, 16)
    batch_size, iter_per_epoch = 100, max(n_train // 100, 1)
    x, t = _common.mnist_tensors(args.data_root, True, device, n_train)
    scales = np.logspace(0, -4, num=n_scales)
    batches = _common.book_batches(
        n_train, batch_size, (epochs - 1) * iter_per_epoch + 1, args.seed
    ).to(device)
    criterion = nn.CrossEntropyLoss()

    per_scale: list[dict[str, Any]] = []
    for w in tqdm(scales, desc="weight scales"):
        bn_net, plain = networks(float(w), args.seed, device)
        opts = [SGD(bn_net.parameters(), lr=0.01), SGD(plain.parameters(), lr=0.01)]
        acc: dict[str, list[float]] = {"batch_norm": [], "plain": []}
        for i, idx in enumerate(batches):
            for net, opt in zip((bn_net, plain), opts):
                opt.zero_grad(set_to_none=True)
                criterion(net(x[idx]), t[idx]).backward()
                opt.step()
            if i % iter_per_epoch == 0:
                acc["batch_norm"].append(_common.accuracy(bn_net, x, t))
                acc["plain"].append(_common.accuracy(plain, x, t))
        per_scale.append({"weight_scale": float(w), "train_accuracy": acc})

    rows = int(np.ceil(len(scales) / 4))
    fig, axes = plt.subplots(
        rows, 4, figsize=(12, 2.6 * rows), sharex=True, sharey=True, squeeze=False
    )
    for ax, r in zip(axes.flat, per_scale):
        ax.plot(r["train_accuracy"]["batch_norm"], label="Batch Normalization", lw=1.5)
        ax.plot(r["train_accuracy"]["plain"], "--", label="Normal (without BatchNorm)", lw=1.5)
        ax.set_title(f"W: {r['weight_scale']:.4g}", fontsize=9)
        ax.set_ylim(0, 1.0)
    for ax in axes[-1]:
        ax.set_xlabel("epochs")
    for ax in axes[:, 0]:
        ax.set_ylabel("accuracy")
    axes.flat[0].legend(fontsize=7, loc="lower right")
    fig.suptitle("training accuracy, 1,000 MNIST images, 5 x 100, SGD lr 0.01", fontsize=11)
    fig.tight_layout()
    results = {
        "train_images": n_train,
        "epochs": epochs,
        "batch_size": batch_size,
        "scales": per_scale,
    }
    _common.write_results(args.out, NAME, results, fig, started, argv)
    for r in per_scale:
        a = r["train_accuracy"]
        print(
            f"W={r['weight_scale']:<9.4g} final train acc: BN {a['batch_norm'][-1]:.3f}  plain {a['plain'][-1]:.3f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
