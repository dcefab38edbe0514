"""What the integration tests share: the optimizer pairs (ours and the torch built-in that it
equals), the tiny model, the synthetic batches and the comparisons.

Every pair is configured where the book's form and torch's agree: a constant learning rate
(Momentum and Nesterov keep lr inside the velocity, so under a changing lr they differ from
torch's SGD by design) and, for Adam, ``eps_after_bias_correction=True`` (torch adds eps after
the bias correction, the book before it). Arguments are passed by keyword only, so the tests
do not depend on the positional order of our constructors.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any, Optional

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

import torch_dlbasics.nn as dlnn
import torch_dlbasics.optim as dloptim

F64_STEPS = {"rtol": 1e-10, "atol": 1e-12}
"""Ours against torch's after a few float64 training steps (same formula, other operation
order, rounding differences grown over the steps)."""

F32_STEPS = {"rtol": 1e-5, "atol": 1e-6}
"""The same in float32."""

FIVE = ["SGD", "Momentum", "Nesterov", "AdaGrad", "Adam"]
"""Our five optimizers, as named in :data:`PAIRS`."""


@dataclass(frozen=True)
class Pair:
    """One of our optimizers and its torch counterpart, with the arguments under which they
    compute the same update; ``velocity`` marks ours keeping ``v = -lr * momentum_buffer``."""

    ours: str
    ours_kw: dict[str, Any]
    theirs: str
    theirs_kw: dict[str, Any]
    velocity: bool = False

    def build(self, side: str, params: Any, foreach: Optional[bool] = None) -> Any:
        """``side="ours"``: our optimizer; ``"torch"``: the built-in."""
        if side == "ours":
            return getattr(dloptim, self.ours)(params, **self.ours_kw, foreach=foreach)
        return getattr(torch.optim, self.theirs)(params, **self.theirs_kw, foreach=foreach)

    def torch_form(self, side: str, entry: dict[str, Any], lr: float) -> dict[str, Any]:
        """One parameter's optimizer state in torch's names and units, ``lr`` its group's
        (``None`` values of torch's stateless SGD dropped)."""
        entry = {k: v for k, v in entry.items() if v is not None}
        if side == "ours" and self.velocity:
            return {"momentum_buffer": entry["v"] / -lr}
        return entry


_OURS_ONLY = ("eps_after_bias_correction", "decoupled_weight_decay")


def _pair(ours: str, theirs: str, lr: float, velocity: bool = False, **kw: Any) -> Pair:
    theirs_kw = {k: v for k, v in kw.items() if k not in _OURS_ONLY}
    if ours == "Nesterov":
        theirs_kw["nesterov"] = True
    return Pair(ours, {"lr": lr, **kw}, theirs, {"lr": lr, **theirs_kw}, velocity)


def _pairs(weight_decay: float, suffix: str) -> dict[str, Pair]:
    wd = {"weight_decay": weight_decay} if weight_decay else {}
    return {
        "SGD" + suffix: _pair("SGD", "SGD", 0.05, **wd),
        "Momentum" + suffix: _pair("Momentum", "SGD", 0.05, True, momentum=0.9, **wd),
        "Nesterov" + suffix: _pair("Nesterov", "SGD", 0.05, True, momentum=0.9, **wd),
        "AdaGrad" + suffix: _pair("AdaGrad", "Adagrad", 0.05, eps=1e-10, **wd),
        "Adam" + suffix: _pair(
            "Adam", "Adam", 0.01, eps=1e-8, eps_after_bias_correction=True, **wd
        ),
    }


PAIRS: dict[str, Pair] = {
    **_pairs(0.0, ""),
    **_pairs(0.01, "-wd"),  # coupled L2 in the gradient, as torch's weight_decay
    "AdamW": _pair(
        "Adam", "AdamW", 0.01, eps=1e-8, eps_after_bias_correction=True,
        decoupled_weight_decay=True, weight_decay=0.1,
    ),
}  # fmt: skip
"""Ours and the built-in it equals; ``-wd``: with weight decay; ``AdamW``: decoupled decay."""

FSDP2_CONFIGS = [*FIVE, *(f"{n}-wd" for n in FIVE), "AdamW"]
"""FSDP2: each optimizer without and with weight decay, and AdamW's decoupled decay."""

HAS_LIGHTNING = importlib.util.find_spec("lightning") is not None


# --------------------------------------------------------------------------------------------
# The model and the data.
# --------------------------------------------------------------------------------------------
IN, HIDDEN, CLASSES = 6, 8, 3


def layers(side: str) -> tuple[type[nn.Module], type[nn.Module]]:
    """(BatchNorm1d, Dropout) of ``side``: ours or torch's."""
    if side == "ours":
        return dlnn.BatchNorm1d, dlnn.Dropout
    return nn.BatchNorm1d, nn.Dropout


def make_net(
    side: str, dropout: float = 0.0, dtype: torch.dtype = torch.float64, seed: int = 0
) -> nn.Sequential:
    """Linear -> BatchNorm1d -> ReLU [-> Dropout] -> Linear, the same initial weights for both
    sides (seeded; BatchNorm starts at weight 1, bias 0 in both). The first Linear has no bias:
    BatchNorm's beta is the bias (one before it would get a zero gradient)."""
    bn, drop = layers(side)
    torch.manual_seed(seed)
    mods: list[nn.Module] = [nn.Linear(IN, HIDDEN, bias=False), bn(HIDDEN), nn.ReLU()]
    if dropout:
        mods.append(drop(dropout))
    mods.append(nn.Linear(HIDDEN, CLASSES))
    return nn.Sequential(*mods).to(dtype)


def make_batches(
    n: int, size: int = 8, seed: int = 1, dtype: torch.dtype = torch.float64
) -> list[tuple[Tensor, Tensor]]:
    """``n`` synthetic batches (x, class labels); the mean is off zero so BatchNorm matters."""
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(size, IN, generator=g, dtype=dtype) * 2 + 1,
         torch.randint(0, CLASSES, (size,), generator=g))
        for _ in range(n)
    ]  # fmt: skip


def loader(batches: list[tuple[Tensor, Tensor]]) -> DataLoader:
    """The batches again, in order (the rows of equal-sized batches, re-batched)."""
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    return DataLoader(TensorDataset(x, y), batch_size=len(batches[0][0]), shuffle=False)


def loss_fn(out: Tensor, y: Tensor) -> Tensor:
    return nn.functional.cross_entropy(out, y)


def train_loop(
    model: nn.Module,
    opt: Any,
    batches: list[tuple[Tensor, Tensor]],
    seed: Optional[int] = None,
    accumulate: int = 1,
    autocast: Optional[torch.dtype] = None,
) -> list[float]:
    """The hand-written loop every framework run is compared with. ``seed``: reseed before each
    step's forward with ``seed + step`` (how the framework runs draw their Dropout masks);
    ``accumulate``: average the gradients of that many batches per step; ``autocast``: each
    forward under ``torch.autocast("cpu", autocast)`` (one region per forward: autocast caches
    its casts of the weights until the region ends)."""
    losses = []
    model.train()
    for i, (x, y) in enumerate(batches):
        if seed is not None:
            torch.manual_seed(seed + i // accumulate)
        with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
            loss = loss_fn(model(x), y)
        (loss / accumulate).backward()
        losses.append(loss.item())
        if (i + 1) % accumulate == 0:
            opt.step()
            opt.zero_grad()
    return losses


# --------------------------------------------------------------------------------------------
# Snapshots and comparisons.
# --------------------------------------------------------------------------------------------
def full(t: Any) -> Any:
    """A DTensor's global value (a plain tensor is returned as it is), detached, on CPU."""
    if hasattr(t, "full_tensor"):
        t = t.full_tensor()
    return t.detach().cpu().clone() if isinstance(t, Tensor) else t


def snapshot(model: nn.Module, opt: Any = None) -> dict[str, Any]:
    """Parameters, buffers and, with ``opt``, the per-parameter optimizer state and the lr of
    each parameter's group, keyed by parameter name."""
    out: dict[str, Any] = {
        "params": {n: full(p) for n, p in model.named_parameters()},
        "buffers": {n: full(b) for n, b in model.named_buffers()},
    }
    if opt is not None:
        out["state"] = {
            n: {k: full(v) for k, v in opt.state[p].items()}
            for n, p in model.named_parameters()
            if p in opt.state
        }
        group_lr = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
        out["lr"] = {n: group_lr[id(p)] for n, p in model.named_parameters() if id(p) in group_lr}
    return out


def assert_bit_identical(a: dict[str, Any], b: dict[str, Any], what: str = "") -> None:
    """Two snapshots are the same bits: every parameter, buffer and state entry."""
    assert a.keys() == b.keys(), what
    for part in a:
        assert a[part].keys() == b[part].keys(), f"{what} {part}"
        for name, value in a[part].items():
            other = b[part][name]
            if isinstance(value, dict):
                assert value.keys() == other.keys(), f"{what} {part} {name}"
                for key, v in value.items():
                    assert torch.equal(v, other[key]), f"{what} {part} {name}.{key}"
            elif isinstance(value, Tensor):
                assert torch.equal(value, other), f"{what} {part} {name}"
            else:
                assert value == other, f"{what} {part} {name}"


def assert_ours_matches_torch(
    pair: Pair, ours: dict[str, Any], theirs: dict[str, Any], tol: dict[str, float]
) -> None:
    """Ours and torch's snapshots agree: parameters and buffers (the same names, torch's
    BatchNorm and ours have the same state_dict keys) and every optimizer state entry in
    torch's names and units."""
    for part in ("params", "buffers"):
        assert ours[part].keys() == theirs[part].keys(), part
        for name, value in theirs[part].items():
            torch.testing.assert_close(
                ours[part][name], value, **tol, msg=lambda m, n=f"{part} {name}": f"{n}: {m}"
            )
    if "state" in theirs:
        assert ours["state"].keys() == theirs["state"].keys()
        assert ours["lr"] == theirs["lr"]
        for name, entry in theirs["state"].items():
            mine = pair.torch_form("ours", ours["state"][name], ours["lr"][name])
            ref = pair.torch_form("torch", entry, theirs["lr"][name])
            assert mine.keys() == ref.keys(), f"state of {name}: {sorted(mine)} vs {sorted(ref)}"
            for key, value in ref.items():
                torch.testing.assert_close(
                    mine[key], value, **tol, msg=lambda m, n=name, k=key: f"{n}.{k}: {m}"
                )


def assert_moved(start: dict[str, Any], end: dict[str, Any]) -> None:
    """Training changed every parameter (a comparison of two untrained models proves nothing)."""
    for name, value in start["params"].items():
        assert not torch.equal(value, end["params"][name]), f"{name} did not move"


def world_result(world: dict[str, Any], part: str, key: str) -> list[Any]:
    """Each rank's result of one check of the spawned world, or its traceback as the failure."""
    per_rank = [r[part][key] for r in world["ranks"]]
    for rank, entry in enumerate(per_rank):
        if entry["error"] is not None:
            pytest.fail(f"{part} {key} failed on rank {rank}:\n{entry['error']}", pytrace=False)
    return [entry["result"] for entry in per_rank]
