"""The package face: ``dl.nn``, ``dl.init`` and ``dl.data`` after ``import torch_dlbasics as dl``,
loaded on first use so that the import itself costs no more than the optimizers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(code: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return out.stdout


def test_submodules_reachable_as_attributes() -> None:
    out = _run(
        "import json, sys, torch_dlbasics as dl\n"
        "before = sorted(m for m in sys.modules if m.startswith('torch_dlbasics.'))\n"
        "names = [dl.nn.BatchNorm2d.__name__, dl.init.he_.__name__, dl.data.load_mnist.__name__]\n"
        "from torch_dlbasics import nn\n"
        "print(json.dumps({'before': before, 'names': names, 'same': nn is dl.nn,\n"
        "    'dir': [n for n in ('nn', 'init', 'data') if n in dir(dl)]}))\n"
    )
    got = json.loads(out)
    assert got["names"] == ["BatchNorm2d", "he_", "load_mnist"] and got["same"]
    assert got["dir"] == ["nn", "init", "data"]
    loaded = {m.split(".")[1] for m in got["before"]}
    assert not loaded & {"nn", "init", "data"}  # nothing of them loaded by the import itself


def test_unknown_attribute_is_an_attribute_error() -> None:
    import pytest

    import torch_dlbasics as dl

    with pytest.raises(AttributeError, match="has no attribute 'optimizers'"):
        _ = dl.optimizers  # type: ignore[attr-defined]
