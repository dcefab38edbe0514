"""``ZeroRedundancyOptimizer`` (DDP, 2 gloo processes, our SyncBatchNorm in the model) with each
of our five optimizers: sharding changes nothing against the same optimizer unsharded, ours
equals torch's counterpart sharded the same way, and the consolidated state dict loads into a
fresh ZeRO and goes on exactly as the uninterrupted one."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from integration_cases import (
    F64_STEPS,
    FIVE,
    PAIRS,
    assert_bit_identical,
    assert_ours_matches_torch,
    make_net,
    snapshot,
    world_result,
)


@pytest.mark.parametrize("name", FIVE)
def test_zero_with_ours_equals_unsharded_and_torch(world: Any, name: str) -> None:
    ours = world_result(world, "zero", f"{name}-ours")
    theirs = world_result(world, "zero", f"{name}-torch")
    start = snapshot(make_net("ours"))
    for o, t in zip(ours, theirs):
        # Each rank steps its shard and broadcasts it: the same arithmetic as unsharded.
        assert_bit_identical(o["zero"], o["plain"], "ZeRO vs unsharded")
        assert_ours_matches_torch(PAIRS[name], o["zero"], t["zero"], F64_STEPS)
        for key, value in start["params"].items():
            assert not (value == o["zero"]["params"][key]).all(), f"{key} did not move"
    assert_bit_identical(ours[0]["zero"], ours[1]["zero"], "rank 0 vs rank 1")


@pytest.mark.parametrize("name", FIVE)
def test_zero_consolidated_state_dict_resumes_identically(world: Any, name: str) -> None:
    ours = world_result(world, "zero", f"{name}-ours")
    theirs = world_result(world, "zero", f"{name}-torch")
    for side, runs in (("torch", theirs), ("ours", ours)):
        for o in runs:
            assert_bit_identical(o["zero_resumed"], o["zero"], f"{side}: resumed vs uninterrupted")
    # The consolidated state (on rank 0, by parameter index) is, entry by entry, the state the
    # unsharded optimizer had at that point.
    consolidated, before = ours[0]["consolidated"], ours[0]["plain_state_before"]
    assert {ours[0]["names"][i] for i in consolidated} == set(before)
    for i, entry in consolidated.items():
        ref = before[ours[0]["names"][i]]
        assert entry.keys() == ref.keys()
        for key, value in ref.items():
            assert torch.equal(entry[key], value), f"{ours[0]['names'][i]}.{key}"
