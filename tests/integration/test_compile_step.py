"""``torch.compile`` of a whole training step (forward through our BatchNorm1d and Dropout,
backward, our optimizer's step) for each of our five optimizers: compiled once (nothing is
recompiled after the optimizer state exists) and the same numbers as eager, step by step."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch._dynamo
import torch._dynamo.testing
from integration_cases import (
    F32_STEPS,
    F64_STEPS,
    FIVE,
    PAIRS,
    assert_moved,
    loss_fn,
    make_batches,
    make_net,
    snapshot,
)
from torch import Tensor, nn

BATCHES = make_batches(5, size=8, seed=6)
SEED = 300


def train_step(net: nn.Module, opt: Any, x: Tensor, y: Tensor) -> Tensor:
    opt.zero_grad()
    loss = loss_fn(net(x), y)
    loss.backward()
    opt.step()
    return loss.detach()


def tolerance(name: str) -> dict[str, float]:
    """Compiled, Adam keeps its step count a tensor (no ``.item()`` in the graph) and computes
    the bias correction from it: in the step's float32, as torch's Adam does under compile,
    where eager uses the Python float. So Adam agrees to float32 rounding, the others exactly."""
    return F32_STEPS if name == "Adam" else F64_STEPS


def compare_compiled(name: str, backend: str, dropout: float) -> None:
    tol = tolerance(name)
    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounterWithBackend(backend)
    compiled = torch.compile(train_step, backend=counter)
    nets = [make_net("ours", dropout), make_net("ours", dropout)]
    opts = [PAIRS[name].build("ours", n.parameters()) for n in nets]
    frames = []
    for k, (x, y) in enumerate(BATCHES):
        torch.manual_seed(SEED + k)
        eager = train_step(nets[0], opts[0], x, y)
        torch.manual_seed(SEED + k)
        # From the third step on the optimizer state exists: nothing may be compiled again.
        with torch._dynamo.config.patch(error_on_recompile=k >= 2):
            loss = compiled(nets[1], opts[1], x, y)
        torch.testing.assert_close(loss, eager, **tol)
        frames.append(counter.frame_count)
    assert frames[0] > 0 and frames[1] == frames[-1], frames
    ours, ref = snapshot(nets[1], opts[1]), snapshot(nets[0], opts[0])
    assert_moved(snapshot(make_net("ours", dropout)), ours)
    for part in ("params", "buffers", "state"):
        torch.testing.assert_close(ours[part], ref[part], **tol)


@pytest.mark.parametrize("name", FIVE)
def test_compiled_training_step_compiles_once_and_matches_eager(name: str) -> None:
    """The ``aot_eager`` backend (dynamo's capture and AOTAutograd over our Functions, eager
    kernels): the same Dropout masks as eager from the same seed."""
    compare_compiled(name, "aot_eager", dropout=0.3)


@pytest.mark.slow
def test_compiled_training_step_inductor_matches_eager() -> None:
    """The default backend (inductor generates the kernels), Adam, no Dropout (inductor draws
    its own random numbers)."""
    compare_compiled("Adam", "inductor", dropout=0.0)
