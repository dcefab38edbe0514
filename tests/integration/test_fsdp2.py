"""FSDP2 (``fully_shard``, parameters become DTensors) with 2 gloo processes on CPU: each of our
optimizers, on both code paths, without and with weight decay, equals its torch counterpart on
the same sharded model (our BatchNorm1d and torch's inside); and the distributed checkpoint
(``torch.distributed.checkpoint`` with ``get/set_optimizer_state_dict``) round-trips our
optimizer state and resumes bit-identically to an uninterrupted run, as it does torch's."""

from __future__ import annotations

from typing import Any

import pytest
from integration_cases import (
    F64_STEPS,
    FIVE,
    FSDP2_CONFIGS,
    PAIRS,
    assert_bit_identical,
    assert_moved,
    assert_ours_matches_torch,
    world_result,
)
from integration_workers import FSDP2_MIN_TORCH, fsdp2_supported

pytestmark = pytest.mark.skipif(
    not fsdp2_supported(),
    reason=f"fully_shard on a CPU mesh needs torch >= {'.'.join(map(str, FSDP2_MIN_TORCH))}",
)


@pytest.mark.parametrize("foreach", [False, True], ids=["per-tensor", "foreach"])
@pytest.mark.parametrize("name", FSDP2_CONFIGS)
def test_sharded_training_equals_torch_optimizer(world: Any, name: str, foreach: bool) -> None:
    ours = world_result(world, "fsdp2", f"{name}-foreach={foreach}-ours")
    theirs = world_result(world, "fsdp2", f"{name}-foreach={foreach}-torch")
    for o, t in zip(ours, theirs):
        assert o["sharded"] and t["sharded"], "fully_shard left plain parameters"
        assert_bit_identical(o["start"], t["start"], "initial weights")
        assert_moved(o["start"], o["end"])
        # Parameters and optimizer state everywhere; BatchNorm's buffers per rank (each rank
        # normalises its own half of the batch, in both models).
        assert_ours_matches_torch(PAIRS[name], o["end"], t["end"], F64_STEPS)
    for part in ("params", "state"):  # global values: the same on both ranks
        assert_bit_identical({part: ours[0]["end"][part]}, {part: ours[1]["end"][part]}, part)


@pytest.mark.parametrize("side", ["ours", "torch"])
@pytest.mark.parametrize("name", [*FIVE, "AdamW"])
def test_distributed_checkpoint_round_trip_and_resume(world: Any, name: str, side: str) -> None:
    """``side="torch"``: the same with torch's optimizer, the control."""
    for r in world_result(world, "fsdp2", f"dcp-{name}-{side}"):
        # What was loaded into a fresh, differently initialised model and optimizer is exactly
        # what was saved: every parameter, BatchNorm buffer and optimizer state entry.
        assert_bit_identical(r["loaded"], r["saved"], "loaded vs saved")
        assert r["saved"]["state"] or name == "SGD", "no optimizer state was saved"
        assert_moved(r["saved"], r["resumed"])
        assert_bit_identical(r["resumed"], r["uninterrupted"], "resumed vs uninterrupted")
