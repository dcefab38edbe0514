"""The book's overfitting experiment (§6.4), shared by ``overfit_weight_decay.py`` and
``overfit_dropout.py``: they differ only in their two variants and their epochs.

The first 300 training images, 784 -> 6 x 100 (ReLU) -> 10, He initialisation, SGD lr 0.01,
batch 100 drawn as ``np.random.choice(300, 100)``, 3 iterations an epoch; after iterations 0,
3, 6, ... the accuracy on the 300 training images and the 10,000 test images (eval mode), as
the book's ``Trainer`` records them (it also runs 2 more iterations after the last record; they
change no figure). Per seed, both variants start from the same weights and see the same
batches; the figure shows median and min-max over the seeds. ``--quick``: 40 epochs, 2,000
test images.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import _book
import _cli
import _loaders
import _plots
import _results
import torch

N_TRAIN, BATCH_SIZE = 300, 100
QUICK_EPOCHS, QUICK_TEST = 40, 2000


@dataclass(frozen=True)
class Variant:
    label: str
    weight_decay: float = 0.0  # the book's L2: loss + 0.5 * weight_decay * sum(W**2)
    dropout: float | None = None  # our Dropout in the book's form (inverted=False)


def main(
    name: str, doc: str, variants: tuple[Variant, ...], epochs: int, argv: list[str] | None
) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _cli.parser(doc, name, seeds=True).parse_args(argv)
    started = time.perf_counter()
    device = _cli.setup(args)

    epochs, n_test = (QUICK_EPOCHS, QUICK_TEST) if args.quick else (epochs, None)
    iter_per_epoch = N_TRAIN // BATCH_SIZE
    x, t = _loaders.mnist_tensors(args.data_root, True, device, N_TRAIN)
    xt, tt = _loaders.mnist_tensors(args.data_root, False, device, n_test)
    per_seed = {
        s: {v.label: one_seed(v, s, (x, t, xt, tt), epochs) for v in variants} for s in args.seeds
    }

    summary = {
        v.label: {
            **asdict(v),
            **{
                key: _results.spread([_final(per_seed[s][v.label], key) for s in args.seeds])
                for key in ("train", "test", "gap")
            },
        }
        for v in variants
    }
    results = {
        "train_images": N_TRAIN,
        "test_images": len(xt),
        "epochs": epochs,
        "iter_per_epoch": iter_per_epoch,
        "seeds": args.seeds,
        "summary": summary,
        "per_seed": {str(s): runs for s, runs in per_seed.items()},
    }
    _results.write_results(
        args.out, name, results, figure(per_seed, variants, args.seeds), started, argv
    )
    for label, r in summary.items():
        print(f"{label:22s} final train {r['train']['median']:.3f}  test {r['test']['median']:.3f}  "
              f"gap {r['gap']['median']:.3f} [{r['gap']['min']:.3f}, {r['gap']['max']:.3f}]")  # fmt: skip
    return 0


def one_seed(v: Variant, seed: int, data: tuple, epochs: int) -> dict[str, list[float]]:
    from torch_dlbasics.init import init_weights_
    from torch_dlbasics.regularization import l2_penalty

    iter_per_epoch = N_TRAIN // BATCH_SIZE
    batches = _book.book_batches(N_TRAIN, BATCH_SIZE, (epochs - 1) * iter_per_epoch + 1, seed)
    torch.manual_seed(seed)
    model = _book.mlp([100] * 6, dropout=v.dropout, dropout_kwargs={"inverted": False})
    model = init_weights_(model, "he").to(data[0].device)
    penalty = (lambda m: l2_penalty(m, v.weight_decay)) if v.weight_decay else None
    optimizer = _book.make_optimizer("SGD", model.parameters())
    return _book.train_with_evaluation(
        model, optimizer, data, batches, iter_per_epoch, penalty, f"seed {seed} {v.label}"
    )


def _final(acc: dict[str, list[float]], key: str) -> float:
    return acc["train"][-1] - acc["test"][-1] if key == "gap" else acc[key][-1]


def figure(per_seed: dict[int, Any], variants: tuple[Variant, ...], seeds: list[int]) -> Any:
    """One panel per variant: train (solid) and test (dashed) accuracy per epoch."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        1, len(variants), figsize=(5.5 * len(variants), 4), sharey=True, squeeze=False
    )
    for ax, v in zip(axes[0], variants):
        _plots.band(ax, [per_seed[s][v.label]["train"] for s in seeds], "train")
        _plots.band(ax, [per_seed[s][v.label]["test"] for s in seeds], "test", ls="--")
        ax.set(title=v.label, xlabel="epochs", ylim=(0, 1.0))
        ax.legend(loc="lower right")
    axes[0, 0].set_ylabel("accuracy")
    fig.suptitle(
        f"300 MNIST training images, 6 x 100, SGD lr 0.01; {_plots.seeds_note(seeds)}", fontsize=11
    )
    fig.tight_layout()
    return fig
