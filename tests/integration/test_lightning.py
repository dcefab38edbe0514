"""Lightning (``lightning.pytorch``) with our five optimizers, BatchNorm1d and Dropout, side by
side with torch's classes: ``fit`` equals torch's and a hand-written loop; resuming from
``ckpt_path`` is bit-identical to an uninterrupted run; ``precision="bf16-mixed"``;
``sync_batchnorm=True`` recognises our BatchNorm; our ``SyncBatchNormPlugin`` in 2 gloo
processes equals one process on the global batch; ``BaseFinetuning`` treats our BatchNorm as
torch's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("lightning", reason="the integration extra is not installed")

import torch
from integration_cases import (
    F32_STEPS,
    F64_STEPS,
    FIVE,
    PAIRS,
    assert_bit_identical,
    assert_moved,
    assert_ours_matches_torch,
    layers,
    loader,
    make_batches,
    make_net,
    snapshot,
    train_loop,
    world_result,
)
from integration_lightning import LitNet, trainer
from lightning.pytorch.callbacks import BaseFinetuning, ModelCheckpoint
from lightning.pytorch.plugins import TorchSyncBatchNorm
from torch import nn

import torch_dlbasics.nn as dlnn
from torch_dlbasics.integrations.lightning import SyncBatchNormPlugin

BATCHES = make_batches(3, size=8, seed=3)  # one epoch: 3 steps
SEED = 100  # Dropout masks: seed + global step


def fit(lit: LitNet, epochs: int = 2, batches: Any = BATCHES, **kw: Any) -> LitNet:
    trainer(max_epochs=epochs, **kw).fit(lit, loader(batches))
    return lit


@pytest.mark.parametrize("name", FIVE)
def test_fit_with_ours_equals_fit_with_torch(name: str) -> None:
    ours, theirs = LitNet(name, "ours"), LitNet(name, "torch")
    start = snapshot(ours.net)
    fit(ours), fit(theirs)
    end_ours = snapshot(ours.net, ours.trainer.optimizers[0])
    assert_moved(start, end_ours)
    assert_ours_matches_torch(
        PAIRS[name], end_ours, snapshot(theirs.net, theirs.trainer.optimizers[0]), F64_STEPS
    )


@pytest.mark.parametrize("name", FIVE)
def test_fit_equals_hand_written_loop(name: str) -> None:
    """Our optimizer, BatchNorm and Dropout under ``Trainer.fit`` (which steps with a closure)
    give the same bits as the plain loop."""
    lit = fit(LitNet(name, "ours", dropout=0.3, seed=SEED))
    net = make_net("ours", dropout=0.3)
    opt = PAIRS[name].build("ours", net.parameters())
    losses = train_loop(net, opt, BATCHES * 2, seed=SEED)
    assert lit.losses == losses
    assert_bit_identical(snapshot(lit.net, lit.trainer.optimizers[0]), snapshot(net, opt))


@pytest.mark.parametrize("name", FIVE)
def test_resume_from_ckpt_path_is_bit_identical(name: str, tmp_path: Path) -> None:
    """Three epochs, against one epoch, its checkpoint, and a new Trainer and model that
    resume from it for the other two."""
    whole = fit(LitNet(name, "ours", dropout=0.3, seed=SEED), epochs=3)
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1)
    fit(LitNet(name, "ours", dropout=0.3, seed=SEED), 1, enable_checkpointing=True,
        callbacks=[ckpt])  # fmt: skip
    (path,) = tmp_path.glob("epoch=0-*.ckpt")
    resumed = LitNet(name, "ours", dropout=0.3, seed=SEED)
    trainer(max_epochs=3).fit(resumed, loader(BATCHES), ckpt_path=str(path))
    assert resumed.losses == whole.losses[len(BATCHES) :]
    assert_bit_identical(
        snapshot(resumed.net, resumed.trainer.optimizers[0]),
        snapshot(whole.net, whole.trainer.optimizers[0]),
    )
    saved = torch.load(path, weights_only=False)["optimizer_states"][0]
    assert set(saved) == {"state", "param_groups"} and (bool(saved["state"]) or name == "SGD")


@pytest.mark.parametrize("name", FIVE)
def test_bf16_mixed_equals_autocast_loop_and_torch(name: str) -> None:
    """``precision="bf16-mixed"`` is ``torch.autocast("cpu", torch.bfloat16)`` around each
    forward: the same bits as the plain loop under autocast; and ours against torch's under it
    agree to float32 rounding (float32 weights and optimizer state; the bfloat16 activations
    of both BatchNorms round alike here)."""
    batches = [(x.float(), y) for x, y in BATCHES]
    kw = {"batches": batches, "precision": "bf16-mixed"}
    lit = fit(LitNet(name, "ours", dropout=0.3, seed=SEED, dtype=torch.float32), **kw)
    net = make_net("ours", dropout=0.3, dtype=torch.float32)
    opt = PAIRS[name].build("ours", net.parameters())
    losses = train_loop(net, opt, batches * 2, seed=SEED, autocast=torch.bfloat16)
    assert lit.losses == losses
    assert_bit_identical(snapshot(lit.net, lit.trainer.optimizers[0]), snapshot(net, opt))

    ours = fit(LitNet(name, "ours", dtype=torch.float32), **kw)
    theirs = fit(LitNet(name, "torch", dtype=torch.float32), **kw)
    assert_ours_matches_torch(
        PAIRS[name],
        snapshot(ours.net, ours.trainer.optimizers[0]),
        snapshot(theirs.net, theirs.trainer.optimizers[0]),
        F32_STEPS,
    )


def test_sync_batchnorm_true_converts_ours_as_torch() -> None:
    """``Trainer(sync_batchnorm=True)`` applies Lightning's ``TorchSyncBatchNorm``, which calls
    ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``: our BatchNorm is converted as torch's."""
    net = nn.Sequential(dlnn.BatchNorm1d(3), nn.BatchNorm1d(3), dlnn.BatchNorm2d(4))
    params = [(bn.weight, bn.running_mean) for bn in net]
    net = TorchSyncBatchNorm().apply(net)
    for bn, (weight, mean) in zip(net, params):
        assert type(bn) is nn.SyncBatchNorm, type(bn)
        assert bn.weight is weight and bn.running_mean is mean
    assert type(trainer(sync_batchnorm=True)._accelerator_connector._layer_sync).__name__ == (
        "TorchSyncBatchNorm"
    )


def test_sync_batchnorm_plugin_apply_and_revert() -> None:
    """Our plugin converts torch's and our BatchNorm to our SyncBatchNorm sharing their tensors,
    and puts the original layer objects back, holding the tensors the synchronized layers hold
    by then (here: after a dtype conversion made new buffers)."""
    ours1, torch1, ours2 = dlnn.BatchNorm1d(3), nn.BatchNorm1d(3), dlnn.BatchNorm2d(4)
    net = nn.Sequential(ours1, nn.Sequential(torch1, nn.ReLU()), ours2).eval()
    plugin = SyncBatchNormPlugin()
    assert isinstance(plugin, __import__("lightning").pytorch.plugins.LayerSync)
    net = plugin.apply(net)
    synced = [net[0], net[1][0], net[2]]
    for bn, old in zip(synced, (ours1, torch1, ours2)):
        assert type(bn) is dlnn.SyncBatchNorm and not bn.training
        assert bn.weight is old.weight and bn.running_var is old.running_var
    net = net.double()
    net = plugin.revert(net)
    assert net[0] is ours1 and net[1][0] is torch1 and net[2] is ours2
    for bn, old in zip(synced, (ours1, torch1, ours2)):
        assert old.running_var is bn.running_var and old.running_var.dtype == torch.float64
        assert old.weight is bn.weight and not old.training
    alone = dlnn.BatchNorm2d(2)  # the model itself a BatchNorm
    assert plugin.revert(plugin.apply(alone)) is alone


@pytest.mark.parametrize("name", FIVE)
def test_sync_batchnorm_plugin_two_processes_equal_one_process(world: Any, name: str) -> None:
    """``Trainer(strategy="ddp", devices=2, plugins=[SyncBatchNormPlugin()])`` in 2 gloo
    processes, each fed half of every batch, equals one process trained on the whole batches;
    after ``fit`` the model holds its own BatchNorm1d objects again."""
    ranks = world_result(world, "lightning", name)
    net = make_net("ours")
    opt = PAIRS[name].build("ours", net.parameters())
    train_loop(net, opt, world["payload"]["batches"])
    ref = snapshot(net)
    for r in ranks:
        assert r["strategy"] == "DDPStrategy" and r["world_size"] == 2
        assert r["restored"], "the original BatchNorm1d was not put back after fit"
        for part in ("params", "buffers"):
            for key, value in ref[part].items():
                torch.testing.assert_close(r["end"][part][key], value, **F64_STEPS)
    assert_moved(snapshot(make_net("ours")), ranks[0]["end"])


class FreezeFeatures(BaseFinetuning):
    """Train the head (and BatchNorm) first; from epoch 1 also the first Linear, in a group
    of its own (``unfreeze_and_add_param_group``) at a tenth of the lr."""

    def freeze_before_training(self, pl_module: Any) -> None:
        self.freeze(pl_module.net[:3], train_bn=True)

    def finetune_function(self, pl_module: Any, epoch: int, optimizer: Any) -> None:
        if epoch == 1:
            self.unfreeze_and_add_param_group(pl_module.net[0], optimizer, train_bn=True)


def _flags(net: nn.Module) -> list[Any]:
    return [(n, p.requires_grad) for n, p in net.named_parameters()] + [
        (n, m.track_running_stats) for n, m in net.named_modules() if hasattr(m, "momentum")
    ]


@pytest.mark.parametrize("train_bn", [True, False])
def test_finetuning_freeze_treats_our_batchnorm_as_torch(train_bn: bool) -> None:
    """``BaseFinetuning.freeze(train_bn=True)`` keeps BatchNorm trainable; ``train_bn=False``
    freezes it and stops its running statistics: the same flags for ours as for torch's, and
    the same forward afterwards."""
    nets = {side: make_net(side) for side in ("ours", "torch")}
    for net in nets.values():
        BaseFinetuning.freeze(net[:3], train_bn=train_bn)
    assert _flags(nets["ours"]) == _flags(nets["torch"])
    assert nets["ours"][1].weight.requires_grad is train_bn
    x = BATCHES[0][0]
    out = {side: net(x) for side, net in nets.items()}
    torch.testing.assert_close(out["ours"], out["torch"], **F64_STEPS)
    for side, net in nets.items():
        assert isinstance(net[1], layers(side)[0])
    torch.testing.assert_close(nets["ours"][1].running_mean, nets["torch"][1].running_mean)


def torch_adagrad_steps_added_groups() -> bool:
    """torch 2.4's Adagrad makes its state in ``__init__`` only: a group added later fails in
    ``step`` with ``KeyError: 'sum'`` (later versions create it at the first step)."""
    w, extra = torch.zeros(1, requires_grad=True), torch.zeros(1, requires_grad=True)
    opt = torch.optim.Adagrad([w])
    opt.add_param_group({"params": [extra]})
    extra.grad = torch.ones(1)
    try:
        opt.step()
    except KeyError:
        return False
    return True


@pytest.mark.parametrize("name", FIVE)
def test_finetuning_fit_with_ours_equals_torch(name: str) -> None:
    """A ``BaseFinetuning`` callback freezing the features (BatchNorm trainable), then adding
    them to the optimizer as a new param group: ours equals torch's, every parameter and
    state entry."""
    if name == "AdaGrad" and not torch_adagrad_steps_added_groups():
        pytest.skip("this torch's Adagrad cannot step a param group added after __init__")
    runs = {}
    for side in ("ours", "torch"):
        lit = fit(LitNet(name, side), epochs=3, callbacks=[FreezeFeatures()])
        runs[side] = snapshot(lit.net, lit.trainer.optimizers[0])
        assert len(lit.trainer.optimizers[0].param_groups) == 2
    assert_moved(snapshot(make_net("ours")), runs["ours"])
    assert_ours_matches_torch(PAIRS[name], runs["ours"], runs["torch"], F64_STEPS)
