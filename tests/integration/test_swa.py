"""Stochastic weight averaging (``torch.optim.swa_utils``) with our five optimizers and our
BatchNorm1d, side by side with torch's: ``AveragedModel`` averages the same weights, ``SWALR``
anneals our optimizers' lr as torch's, and ``update_bn`` recomputes our BatchNorm's running
statistics for the averaged weights as it does torch's."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from integration_cases import (
    F64_STEPS,
    FIVE,
    PAIRS,
    assert_moved,
    assert_ours_matches_torch,
    loader,
    loss_fn,
    make_batches,
    make_net,
    snapshot,
)
from torch.optim.swa_utils import SWALR, AveragedModel, update_bn

BATCHES = make_batches(3, size=8, seed=5)
EPOCHS, SWA_START = 4, 1


def swa_lr(name: str) -> float:
    """SGD, AdaGrad, Adam: anneal to a fifth of the lr (their updates read the current lr, as
    torch's do). Momentum, Nesterov: the book keeps lr inside the velocity, so under a changing
    lr they differ from torch's SGD by design; SWALR holds their lr (``swa_lr`` = lr)."""
    lr = PAIRS[name].ours_kw["lr"]
    return lr if PAIRS[name].velocity else lr / 5


def swa_run(name: str, side: str) -> dict[str, Any]:
    net = make_net(side)
    opt = PAIRS[name].build(side, net.parameters())
    averaged = AveragedModel(net)
    sched = SWALR(opt, swa_lr=swa_lr(name), anneal_epochs=2)
    lrs = []
    for epoch in range(EPOCHS):
        for x, y in BATCHES:
            opt.zero_grad()
            loss_fn(net(x), y).backward()
            opt.step()
        if epoch >= SWA_START:
            averaged.update_parameters(net)
            sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    before = snapshot(averaged.module)
    update_bn(loader(BATCHES), averaged)
    return {"net": snapshot(net, opt), "swa": snapshot(averaged.module), "before": before,
            "n_averaged": averaged.n_averaged.item(), "lrs": lrs, "averaged": averaged}  # fmt: skip


@pytest.mark.parametrize("name", FIVE)
def test_swa_ours_equals_torch(name: str) -> None:
    ours, theirs = swa_run(name, "ours"), swa_run(name, "torch")
    assert ours["lrs"] == theirs["lrs"]
    assert ours["n_averaged"] == theirs["n_averaged"] == EPOCHS - SWA_START
    assert_moved(snapshot(make_net("ours")), ours["net"])
    assert_ours_matches_torch(PAIRS[name], ours["net"], theirs["net"], F64_STEPS)
    assert_ours_matches_torch(PAIRS[name], ours["swa"], theirs["swa"], F64_STEPS)


@pytest.mark.parametrize("name", ["SGD", "Adam"])
def test_update_bn_recomputes_our_running_statistics(name: str) -> None:
    """After ``update_bn`` the averaged model's BatchNorm holds the cumulative average (torch's
    ``momentum=None``) of the batch statistics of its own features over the loader: the mean of
    the batch means and of the unbiased batch variances, one count per batch; its momentum is
    given back."""
    run = swa_run(name, "ours")
    module = run["averaged"].module
    with torch.no_grad():
        feats = [module[0](x) for x, _ in BATCHES]  # what BatchNorm sees
    mean = torch.stack([f.mean(0) for f in feats]).mean(0)
    var = torch.stack([f.var(0, unbiased=True) for f in feats]).mean(0)
    bn = module[1]
    torch.testing.assert_close(bn.running_mean, mean, **F64_STEPS)
    torch.testing.assert_close(bn.running_var, var, **F64_STEPS)
    assert int(bn.num_batches_tracked) == len(BATCHES) and bn.momentum == 0.1
    assert not torch.equal(run["before"]["buffers"]["1.running_mean"], bn.running_mean)
