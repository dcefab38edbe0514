"""DDP + SyncBatchNorm + our optimizers (plain and sharded by ZeRO) in 2 processes against
single-process training on the full batch; and a rank failing mid-step ends every process."""

from __future__ import annotations

import time
from typing import Any, Callable

import pytest
import torch
from _harness import COLLECTIVE_TIMEOUT_S, run_workers
from _workers import fail_mid_step, make_net
from torch import nn

import torch_dlbasics.optim as optim
from torch_dlbasics.nn import BatchNorm2d

F64 = {"rtol": 1e-10, "atol": 1e-12}

# The same optimizer in ours and as torch's built-in (they agree at constant lr).
OPTIMIZERS: dict[str, tuple[Callable[..., Any], Callable[..., Any]]] = {
    "SGD": (lambda p, lr: optim.SGD(p, lr=lr), lambda p, lr: torch.optim.SGD(p, lr=lr)),
    "Momentum": (
        lambda p, lr: optim.Momentum(p, lr=lr),  # momentum 0.9 by default
        lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9),
    ),
}


def train_single(bn: Any, make_opt: Callable[..., Any], ddp: dict[str, Any]) -> tuple[Any, Any]:
    """One process, the whole batch each step: what DDP with averaged gradients must equal."""
    model = make_net(bn)
    opt = make_opt(model.parameters(), ddp["lr"])
    for x, y in ddp["batches"]:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.state_dict(), opt


@pytest.mark.parametrize("opt_name", ["SGD", "Momentum"])
def test_ddp_syncbn_matches_single_process_full_batch(world2: Any, opt_name: str) -> None:
    ddp = world2["payload"]["ddp"]
    ranks = [r["ddp"][opt_name]["state"] for r in world2["ranks"]]
    for key, value in ranks[0].items():  # every rank ends with identical parameters and buffers
        assert torch.equal(value, ranks[1][key]), key
    ours, builtin = OPTIMIZERS[opt_name]
    for bn, make_opt in ((None, ours), (nn.BatchNorm2d, builtin)):
        ref, _ = train_single(bn or BatchNorm2d, make_opt, ddp)
        assert ref.keys() == ranks[0].keys()
        for key, value in ref.items():
            torch.testing.assert_close(
                ranks[0][key], value, **F64, msg=lambda m, k=key: f"{k}: {m}"
            )
    start, end = make_net().state_dict(), ranks[0]
    assert not torch.equal(start["0.weight"], end["0.weight"])  # training moved the weights


def test_zero_redundancy_optimizer_with_ours_matches_non_sharded(world2: Any) -> None:
    ddp = world2["payload"]["ddp"]
    sharded = [r["ddp"]["Momentum-zero"]["state"] for r in world2["ranks"]]
    plain = world2["ranks"][0]["ddp"]["Momentum"]["state"]
    for key, value in plain.items():
        for rank_state in sharded:
            torch.testing.assert_close(rank_state[key], value, **F64)
    # ZeRO's consolidated optimizer state (on rank 0) equals the non-sharded optimizer's state.
    _, ref_opt = train_single(BatchNorm2d, OPTIMIZERS["Momentum"][0], ddp)
    ref_state = ref_opt.state_dict()["state"]
    consolidated = world2["ranks"][0]["ddp"]["Momentum-zero"]["opt_state"]
    assert consolidated.keys() == ref_state.keys() and len(ref_state) == 6
    for i, entry in ref_state.items():
        assert consolidated[i].keys() == entry.keys()
        for name, value in entry.items():
            torch.testing.assert_close(consolidated[i][name], value, **F64)


def test_rank_failing_mid_step_ends_every_process_with_an_error(tmp_path: Any) -> None:
    deadline = COLLECTIVE_TIMEOUT_S + 40  # the collective timeout, with room for start-up
    start = time.monotonic()
    outcomes = run_workers(fail_mid_step, 2, tmp_path, 1, 0.0, deadline_s=deadline)
    elapsed = time.monotonic() - start
    for o in outcomes:
        assert not o.hung, f"rank {o.rank} hung and was killed after {elapsed:.0f} s"
        assert o.exitcode != 0 and o.error, f"rank {o.rank} ended without an error"
    assert "InjectedFailure: injected failure on rank 1 at step 1" in outcomes[1].error
    # The surviving rank is stopped by its peer's death in backward's collective.
    last_line = outcomes[0].error.strip().splitlines()[-1]
    assert "Error" in last_line and "InjectedFailure" not in outcomes[0].error, last_line


def test_rank_stalling_mid_step_times_out_every_process(tmp_path: Any) -> None:
    """Rank 1 stalls (alive, silent) longer than the collective timeout: rank 0 gives up with
    gloo's timeout error, and rank 1, going on, finds its peer gone and fails too."""
    timeout_s, stall_s = 4.0, 8.0
    outcomes = run_workers(
        fail_mid_step, 2, tmp_path, 1, stall_s, deadline_s=60.0, collective_timeout_s=timeout_s
    )
    for o in outcomes:
        assert not o.hung, f"rank {o.rank} hung and was killed at the deadline"
        assert o.exitcode != 0 and o.error, f"rank {o.rank} ended without an error"
    last_line = outcomes[0].error.strip().splitlines()[-1]
    assert "Timed out" in last_line or "timed out" in last_line, last_line
    assert "Error" in outcomes[1].error.strip().splitlines()[-1]
