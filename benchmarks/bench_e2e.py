"""End to end: images per second of the main job's CNN, our parts against torch's.

Ours: the CNN as the example builds it (our ``BatchNorm2d`` and ``Dropout``) trained with our
``Adam``; built-in: the same architecture with ``nn.BatchNorm2d``, ``nn.Dropout`` and
``torch.optim.Adam`` (its default path), both at lr 1e-3, from the same weights. One timed call
is a few training steps (forward, cross-entropy, ``zero_grad(set_to_none=True)``, backward,
step) or, for ``eval``, a forward pass in eval mode under ``no_grad``. ``synthetic`` steps use
fixed random tensors of MNIST's shape (the model and optimizer alone); ``real`` steps draw the
next batches from the main job's MNIST ``DataLoader`` (each side its own loader, same seed,
same batches), the data pipeline included as the user pays it. Rows carry ``images`` per call,
from which the report computes images per second and ``throughput_ratio`` (ours / torch
images per second, ``1 / ratio``).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import torch
from common import Pair, Side, Unsupported, case, target
from torch import nn

SECTION = "e2e"
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
THROUGHPUT = target(
    "train_mnist CNN throughput", 1.0, "≥ 1.0x torch's parts", metric="throughput", op=">="
)


def _example_parts() -> tuple[Callable[..., nn.Module], Callable[..., Any]]:
    """The main job's CNN builder and MNIST loaders: the one place that knows where they live."""
    sys.path.insert(0, str(EXAMPLES))
    from _loaders import make_loaders
    from _mnist_cnn import build_model

    return build_model, make_loaders


def cases(device: str, quick: bool) -> list[dict[str, Any]]:
    batch, steps = (8, 1) if quick else (64, 5)
    n_eval = 64 if quick else 1000
    theirs = "torch (nn.BatchNorm2d, nn.Dropout, optim.Adam default)"
    out = []
    for data in ("synthetic", "real"):
        out.append(
            case(
                SECTION,
                f"e2e/train-{data}",
                f"train_mnist CNN train, {data} data, batch {batch} x {steps} steps, Adam",
                builder="train",
                params={"batch": batch, "steps": steps, "data": data, "quick": quick},
                ours="ours (BatchNorm2d, Dropout, Adam)",
                builtin=theirs,
                target=THROUGHPUT,
                extra={"images": batch * steps},
            )
        )
    out.append(
        case(
            SECTION,
            "e2e/eval",
            f"train_mnist CNN eval forward, {n_eval} images",
            builder="evaluate",
            params={"n": n_eval},
            ours="ours (BatchNorm2d, Dropout)",
            builtin="torch (nn.BatchNorm2d, nn.Dropout)",
            extra={"images": n_eval},
        )
    )
    return out


def _models(device: str) -> tuple[nn.Module, nn.Module]:
    build_model, _ = _example_parts()
    torch.manual_seed(0)
    ours = build_model().to(device)
    theirs = build_model(batch_norm=nn.BatchNorm2d, dropout=nn.Dropout).to(device)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def _batches(
    data: str, batch: int, steps: int, quick: bool, device: str
) -> Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]]:
    """A factory of endless batch streams, the same stream from every call."""
    if data == "synthetic":
        g = torch.Generator().manual_seed(0)
        fixed = [
            (
                torch.randn(batch, 1, 28, 28, generator=g),
                torch.randint(0, 10, (batch,), generator=g),
            )
            for _ in range(steps)
        ]

        def synthetic() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            while True:
                for x, t in fixed:
                    yield x.to(device), t.to(device)

        return synthetic

    _, make_loaders = _example_parts()

    def real() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        try:
            loader, _ = make_loaders(None, batch, quick=quick, seed=0)
        except SystemExit as err:  # the example's one-line "MNIST unavailable" exit
            raise Unsupported(f"real MNIST data: {err}") from err

        def endless() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            while True:
                for x, t in loader:
                    yield x.to(device), t.to(device)

        return endless()

    return real


def train(device: str, batch: int, steps: int, data: str, quick: bool) -> Pair:
    """``steps`` training steps per call, each side its own model, optimizer and stream."""
    from torch_dlbasics.optim import Adam

    stream = _batches(data, batch, steps, quick, device)
    ours_model, theirs_model = _models(device)

    def side(model: nn.Module, opt: torch.optim.Optimizer) -> Side:
        criterion = nn.CrossEntropyLoss()
        model.train()
        batches = stream()

        def steps_() -> None:
            for _ in range(steps):
                x, t = next(batches)
                loss = criterion(model(x), t)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

        return Side(steps_)

    return Pair(
        lambda: side(ours_model, Adam(ours_model.parameters(), lr=1e-3)),
        lambda: side(theirs_model, torch.optim.Adam(theirs_model.parameters(), lr=1e-3)),
    )


def evaluate(device: str, n: int) -> Pair:
    """One eval-mode forward of ``n`` images under ``no_grad``."""
    x = torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(1)).to(device)
    ours_model, theirs_model = _models(device)

    def side(model: nn.Module) -> Side:
        model.eval()

        def forward() -> torch.Tensor:
            with torch.no_grad():
                return model(x).argmax(1)

        return Side(forward)

    return Pair(lambda: side(ours_model), lambda: side(theirs_model))
