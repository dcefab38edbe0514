"""Training accuracy with and without our BatchNorm over 16 weight scales (book fig. 6-19).

Book ch. 6 ``batch_norm_test.py``: the first 1,000 training images, 784 -> 5 x 100 -> 10
(Affine -> BatchNorm -> ReLU, or Affine -> ReLU), weights ``randn * w`` for
``w in logspace(0, -4, 16)`` (our ``init_weights_(model, w)``), biases 0, SGD lr 0.01, batch 100
drawn as ``np.random.choice(1000, 100)``, 20 epochs of 10 iterations; after iterations 0, 10,
..., 190 the accuracy on the 1,000 training images in eval mode (running statistics), as the book.
The BatchNorm is ours in the book's form: ``BatchNorm1d(100, eps=1e-6, momentum=0.1,
book=True)`` (book eps 10e-7, book momentum 0.9 = torch's 0.1, running variance starting at 0
and updated with the biased variance). Per seed, both networks of a scale start from the same
weights and see the same batches; the figure shows the median and min-max over the seeds.
``--quick``: 4 scales, 3 epochs, 200 images.
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
import _book
import _cli
import _loaders
import _plots
import _results

NAME = "batch_norm_compare"
BOOK_BN = {"eps": 1e-6, "momentum": 0.1, "book": True}


def networks(w: float, seed: int, device: torch.device) -> tuple[nn.Module, nn.Module]:
    from torch_dlbasics.init import init_weights_

    torch.manual_seed(seed)
    bn_net = init_weights_(_book.mlp([100] * 5, batch_norm=True, batch_norm_kwargs=BOOK_BN), w)
    plain = _book.mlp([100] * 5)
    # The same weight draws for both: copy the Linear layers' weights and biases across.
    bn_linears = [m for m in bn_net if isinstance(m, nn.Linear)]
    for a, b in zip(bn_linears, [m for m in plain if isinstance(m, nn.Linear)]):
        b.load_state_dict(a.state_dict())
    return bn_net.to(device), plain.to(device)


def one_scale(w: float, seed: int, x: torch.Tensor, t: torch.Tensor, batches: torch.Tensor,
              iter_per_epoch: int) -> dict[str, list[float]]:  # fmt: skip
    """Train both networks side by side; their training accuracy after iterations 0, e, 2e, ..."""
    bn_net, plain = networks(w, seed, x.device)
    opts = [_book.make_optimizer("SGD", net.parameters()) for net in (bn_net, plain)]
    criterion = nn.CrossEntropyLoss()
    acc: dict[str, list[float]] = {"batch_norm": [], "plain": []}
    for i, idx in enumerate(batches):
        for net, opt in zip((bn_net, plain), opts):
            opt.zero_grad(set_to_none=True)
            criterion(net(x[idx]), t[idx]).backward()
            opt.step()
        if i % iter_per_epoch == 0:
            acc["batch_norm"].append(_book.accuracy(bn_net, x, t))
            acc["plain"].append(_book.accuracy(plain, x, t))
    return acc


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _cli.parser(__doc__, NAME, seeds=True).parse_args(argv)
    started = time.perf_counter()
    device = _cli.setup(args)
    from tqdm import tqdm

    n_train, epochs, n_scales = (200, 3, 4) if args.quick else (1000, 20, 16)
    batch_size, iter_per_epoch = 100, max(n_train // 100, 1)
    x, t = _loaders.mnist_tensors(args.data_root, True, device, n_train)
    scales = [float(w) for w in np.logspace(0, -4, num=n_scales)]
    per_seed: dict[int, list[dict[str, list[float]]]] = {}
    for seed in args.seeds:
        batches = _book.book_batches(
            n_train, batch_size, (epochs - 1) * iter_per_epoch + 1, seed
        ).to(device)
        per_seed[seed] = [
            one_scale(w, seed, x, t, batches, iter_per_epoch)
            for w in tqdm(scales, desc=f"seed {seed}: weight scales", mininterval=1.0, leave=False)
        ]
    summary = [
        {
            "weight_scale": w,
            **{
                f"final_train_accuracy_{net}": _results.spread([per_seed[s][k][net][-1] for s in args.seeds])
                for net in ("batch_norm", "plain")
            },
        }
        for k, w in enumerate(scales)
    ]  # fmt: skip
    results = {
        "train_images": n_train,
        "epochs": epochs,
        "batch_size": batch_size,
        "seeds": args.seeds,
        "summary": summary,
        "per_seed": {str(s): [{"weight_scale": w, "train_accuracy": a} for w, a in zip(scales, runs)]
                     for s, runs in per_seed.items()},
    }  # fmt: skip
    _results.write_results(
        args.out, NAME, results, figure(per_seed, scales, args.seeds), started, argv
    )
    for r in summary:
        bn, plain = r["final_train_accuracy_batch_norm"], r["final_train_accuracy_plain"]
        print(f"W={r['weight_scale']:<9.4g} final train acc: BN {bn['median']:.3f} [{bn['min']:.3f}, {bn['max']:.3f}]"
              f"  plain {plain['median']:.3f} [{plain['min']:.3f}, {plain['max']:.3f}]")  # fmt: skip
    return 0


def figure(
    per_seed: dict[int, list[dict[str, list[float]]]], scales: list[float], seeds: list[int]
) -> Any:
    import matplotlib.pyplot as plt

    rows = int(np.ceil(len(scales) / 4))
    fig, axes = plt.subplots(
        rows, 4, figsize=(12, 2.6 * rows), sharex=True, sharey=True, squeeze=False
    )
    for k, (ax, w) in enumerate(zip(axes.flat, scales)):
        _plots.band(
            ax, [per_seed[s][k]["batch_norm"] for s in seeds], "Batch Normalization", lw=1.5
        )
        _plots.band(
            ax,
            [per_seed[s][k]["plain"] for s in seeds],
            "Normal (without BatchNorm)",
            ls="--",
            lw=1.5,
        )
        ax.set_title(f"W: {w:.4g}", fontsize=9)
        ax.set_ylim(0, 1.0)
    for ax in axes[-1]:
        ax.set_xlabel("epochs")
    for ax in axes[:, 0]:
        ax.set_ylabel("accuracy")
    axes.flat[0].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"training accuracy, 1,000 MNIST images, 5 x 100, SGD lr 0.01; {_plots.seeds_note(seeds)}",
                 fontsize=11)  # fmt: skip
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    raise SystemExit(_cli.run(main))
