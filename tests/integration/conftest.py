"""The integration suite's spawned world: 2 gloo processes on 127.0.0.1, started once per
session (by the first test that asks for it), running every distributed check of
``integration_workers.world_checks``; the tests compare what it returns."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "distributed"))  # _harness

from _harness import check_all_ok, run_workers
from integration_cases import FIVE, FSDP2_CONFIGS, HAS_LIGHTNING, make_batches
from integration_workers import fsdp2_supported, world_checks

WORLD = 2


def world_payload(tmp: Path) -> dict[str, Any]:
    fsdp2 = fsdp2_supported()
    return {
        "batches": make_batches(3, size=8, seed=2),
        "fsdp2": [(n, fe) for n in FSDP2_CONFIGS for fe in (False, True)] if fsdp2 else [],
        "dcp": [*FIVE, "AdamW"] if fsdp2 else [],
        "zero": FIVE,
        "lightning": FIVE if HAS_LIGHTNING else [],
        "dir": str(tmp),
    }


_WORLD: dict[str, Any] = {}


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``{"payload": ..., "ranks": [rank 0's results, rank 1's]}`` of the one spawned world."""
    if not _WORLD:
        tmp = tmp_path_factory.mktemp("integration-world")
        payload = world_payload(tmp)
        outcomes = run_workers(world_checks, WORLD, tmp, payload, deadline_s=240.0)
        _WORLD.update(payload=payload, ranks=check_all_ok(outcomes))
    return _WORLD
