"""accelerate with our five optimizers, BatchNorm1d and Dropout, side by side with torch's:
``Accelerator.prepare`` and gradient accumulation equal the hand-written loop and torch's
classes; ``save_state`` / ``load_state`` resumes bit-identically to an uninterrupted run
(accelerate restores the RNG state, so the Dropout masks go on as they would have)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("accelerate", reason="the integration extra is not installed")

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from integration_cases import (
    F64_STEPS,
    FIVE,
    PAIRS,
    assert_bit_identical,
    assert_moved,
    assert_ours_matches_torch,
    loader,
    loss_fn,
    make_batches,
    make_net,
    snapshot,
    train_loop,
)

BATCHES = make_batches(6, size=8, seed=4)
SEED = 200


@pytest.fixture(autouse=True)
def fresh_accelerate_state() -> Iterator[None]:
    """accelerate keeps its state in process-wide singletons: each test starts from none."""
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def prepared(name: str, side: str, accumulate: int = 1, dropout: float = 0.0) -> tuple:
    acc = Accelerator(cpu=True, gradient_accumulation_steps=accumulate)
    net = make_net(side, dropout)
    opt = PAIRS[name].build(side, net.parameters())
    return (acc, *acc.prepare(net, opt, loader(BATCHES)))


def run_epoch(acc: Any, net: Any, opt: Any, dl: Any, seed: Any = None) -> list[float]:
    """accelerate's loop: ``accumulate`` decides when ``opt.step`` really steps."""
    losses = []
    for i, (x, y) in enumerate(dl):
        with acc.accumulate(net):
            if seed is not None:
                torch.manual_seed(seed + i // acc.gradient_accumulation_steps)
            loss = loss_fn(net(x), y)
            acc.backward(loss)
            losses.append(loss.item())
            opt.step()
            opt.zero_grad()
    return losses


@pytest.mark.parametrize("name", FIVE)
def test_prepare_and_gradient_accumulation_equal_hand_written_loop(name: str) -> None:
    """Two batches per step: the same bits as the loop that averages them itself."""
    acc, net, opt, dl = prepared(name, "ours", accumulate=2, dropout=0.3)
    losses = run_epoch(acc, net, opt, dl, seed=SEED)
    ref = make_net("ours", dropout=0.3)
    ref_opt = PAIRS[name].build("ours", ref.parameters())
    assert losses == train_loop(ref, ref_opt, BATCHES, seed=SEED, accumulate=2)
    assert_moved(snapshot(make_net("ours", dropout=0.3)), snapshot(net))
    assert_bit_identical(snapshot(net, opt.optimizer), snapshot(ref, ref_opt))


@pytest.mark.parametrize("name", FIVE)
def test_prepare_and_gradient_accumulation_ours_equals_torch(name: str) -> None:
    runs = {}
    for side in ("ours", "torch"):
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
        acc, net, opt, dl = prepared(name, side, accumulate=2)
        run_epoch(acc, net, opt, dl)
        runs[side] = snapshot(net, opt.optimizer)
    assert_ours_matches_torch(PAIRS[name], runs["ours"], runs["torch"], F64_STEPS)


@pytest.mark.parametrize("name", FIVE)
def test_save_state_load_state_resume_is_bit_identical(name: str, tmp_path: Path) -> None:
    """Two epochs, against one epoch, ``save_state``, a new Accelerator, model and optimizer
    that ``load_state`` and run the second. ``prepare`` already loaded the optimizer's state
    dict once; ``load_state`` loads it a second time."""
    acc, net, opt, dl = prepared(name, "ours", dropout=0.3)
    torch.manual_seed(SEED)
    whole = run_epoch(acc, net, opt, dl) + run_epoch(acc, net, opt, dl)
    uninterrupted = snapshot(net, opt.optimizer)

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    acc, net, opt, dl = prepared(name, "ours", dropout=0.3)
    torch.manual_seed(SEED)
    first = run_epoch(acc, net, opt, dl)
    acc.save_state(str(tmp_path / "state"))
    saved = snapshot(net, opt.optimizer)

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    acc, net, opt, dl = prepared(name, "ours", dropout=0.3)
    torch.manual_seed(SEED + 1)  # load_state must restore the RNG
    acc.load_state(str(tmp_path / "state"))
    assert_bit_identical(snapshot(net, opt.optimizer), saved, "loaded vs saved")
    second = run_epoch(acc, net, opt, dl)
    assert first + second == whole
    assert_bit_identical(snapshot(net, opt.optimizer), uninterrupted, "resumed vs uninterrupted")
