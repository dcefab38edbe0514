"""The book's side of the experiments: its optimizer settings, its MLP, its training loops.

- :data:`OPTIMIZERS`: the one table of the book's optimizer settings (``common/optimizer.py``,
  §6.1), used by every example; :func:`make_optimizer` builds ours from it.
- :func:`mlp`: the book's ``MultiLayerNet`` / ``MultiLayerNetExtend`` (Affine [-> BatchNorm] ->
  activation [-> Dropout], ..., Affine; softmax with cross-entropy is the loss), built from
  ``torch.nn.Linear`` and our BatchNorm1d / Dropout; weights are set by the caller.
- :func:`book_batches`, :func:`train_book_style`, :func:`train_with_evaluation`: the book's
  loops (``np.random.choice`` batches, loss after the update, the ``Trainer``'s per-epoch
  accuracies); :func:`accuracy`; :func:`smooth_curve` (``common/util.py``).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from torch import nn

# The book's optimizers at the book's defaults (§6.1; eps 1e-7 is the book's constant).
OPTIMIZERS: dict[str, dict[str, Any]] = {
    "SGD": {"lr": 0.01},
    "Momentum": {"lr": 0.01, "momentum": 0.9},
    "Nesterov": {"lr": 0.01, "momentum": 0.9},
    "AdaGrad": {"lr": 0.01, "eps": 1e-7},
    "Adam": {"lr": 0.001, "betas": (0.9, 0.999), "eps": 1e-7},
}


def make_optimizer(name: str, params: Any, **overrides: Any) -> torch.optim.Optimizer:
    """Our optimizer ``name`` (a key of :data:`OPTIMIZERS`, any case) at the book's settings,
    with ``overrides`` (e.g. ``lr=0.1``) on top."""
    import torch_dlbasics.optim as optim

    key = {k.lower(): k for k in OPTIMIZERS}[name.lower()]
    return getattr(optim, key)(params, **{**OPTIMIZERS[key], **overrides})


def mlp(
    hidden: list[int],
    *,
    batch_norm: bool = False,
    dropout: float | None = None,
    activation: type[nn.Module] = nn.ReLU,
    batch_norm_kwargs: dict[str, Any] | None = None,
    dropout_kwargs: dict[str, Any] | None = None,
) -> nn.Sequential:
    """784 -> hidden... -> 10; a hidden layer is Linear -> [our BatchNorm1d] -> activation -> [our Dropout]."""
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


def book_batches(n: int, batch_size: int, iterations: int, seed: int) -> torch.Tensor:
    """Index batches as the book draws them (``np.random.choice(n, batch_size)``: with replacement).

    Drawn once from their own generator, so every network of a comparison sees the same batches.
    """
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, n, (iterations, batch_size), generator=g)


def _bar(iterable: Any, desc: str, progress: bool) -> Any:
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, mininterval=1.0, disable=not progress, leave=False)


def train_book_style(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    t: torch.Tensor,
    batches: torch.Tensor,
    desc: str,
    progress: bool = True,
) -> list[float]:
    """The book's loop: per batch, gradient, update, then the batch's loss *after* the update.

    (``optimizer_compare_mnist.py`` / ``weight_init_compare.py`` append ``network.loss(x_batch,
    t_batch)`` computed after ``optimizer.update``.) Returns that loss per iteration.
    """
    criterion = nn.CrossEntropyLoss()
    model.train()
    losses = []
    for idx in _bar(batches.to(x.device), desc, progress):
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
    penalty: Callable[[nn.Module], torch.Tensor] | None = None,
    desc: str = "train",
    progress: bool = True,
) -> dict[str, list[float]]:
    """The book's ``Trainer``: update per batch; after iterations 0, e, 2e, ... (e =
    ``iter_per_epoch``) the accuracy on the whole training and test sets (eval mode).

    ``penalty(model)`` is added to the loss (the book's weight decay ``0.5 * lambda * sum W**2``).
    """
    x, t, xt, tt = data
    criterion = nn.CrossEntropyLoss()
    acc: dict[str, list[float]] = {"train": [], "test": []}
    for i, idx in enumerate(_bar(batches.to(x.device), desc, progress)):
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
