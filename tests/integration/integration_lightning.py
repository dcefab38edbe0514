"""The LightningModule of the Lightning tests (single process and the spawned world), and the
Trainer they all use: CPU, no logger, no progress bar, nothing written unless asked."""

from __future__ import annotations

from typing import Any, Optional

import lightning.pytorch as L
import torch
from integration_cases import PAIRS, loss_fn, make_net
from torch import Tensor, nn


class LitNet(L.LightningModule):
    """:func:`integration_cases.make_net` trained with one side of a :data:`PAIRS` entry.

    ``seed``: each step reseeds with ``seed + global_step`` before its forward, so the Dropout
    masks are a function of the step, as in ``train_loop(seed=...)`` (Lightning's checkpoint
    does not hold the global RNG state)."""

    def __init__(
        self,
        pair: str,
        side: str = "ours",
        *,
        net: Optional[nn.Module] = None,
        dropout: float = 0.0,
        dtype: torch.dtype = torch.float64,
        seed: Optional[int] = None,
        foreach: Optional[bool] = None,
    ) -> None:
        super().__init__()
        self.pair, self.side, self.seed, self.foreach = PAIRS[pair], side, seed, foreach
        self.net = net if net is not None else make_net(side, dropout, dtype)
        self.losses: list[float] = []

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        if self.seed is not None:
            torch.manual_seed(self.seed + self.global_step)
        x, y = batch
        loss = loss_fn(self.net(x), y)
        self.losses.append(loss.item())
        return loss

    def configure_optimizers(self) -> Any:
        trainable = [p for p in self.parameters() if p.requires_grad]
        return self.pair.build(self.side, trainable, self.foreach)


def trainer(**kw: Any) -> L.Trainer:
    """A quiet CPU Trainer; ``kw`` overrides (``max_epochs``, ``callbacks``, ...)."""
    options: dict[str, Any] = {
        "accelerator": "cpu", "devices": 1, "logger": False, "enable_checkpointing": False,
        "enable_progress_bar": False, "enable_model_summary": False, "num_sanity_val_steps": 0,
        "max_epochs": 1,
    }  # fmt: skip
    options.update(kw)
    return L.Trainer(**options)
