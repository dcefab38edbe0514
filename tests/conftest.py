"""Shared by every test: the devices to run on and the tolerances to compare with.

``device`` is a fixture parametrised over ``cpu`` and ``cuda`` (skipped without a GPU); tests
that need a list use :data:`DEVICES` for ``pytest.mark.parametrize``. Tolerances are named for
what they compare, so a test says which kind of agreement it claims.
"""

from __future__ import annotations

import pytest
import torch

DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
    ),
]

FLOAT64_EXACT = {"rtol": 1e-12, "atol": 1e-14}
"""Two float64 computations of the same formula in a different order of operations."""

FLOAT32_ROUNDING = {"rtol": 1e-5, "atol": 1e-6}
"""float32 results that agree to rounding (another summation order or kernel)."""


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> str:
    return request.param
