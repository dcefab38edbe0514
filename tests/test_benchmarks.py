"""Smoke test of the benchmark: ``benchmarks/run.py --quick`` runs and writes a complete JSON.

No timing is asserted: the figures live in the committed report, not in tests.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quick_benchmark_writes_complete_json(tmp_path: Path) -> None:
    out = tmp_path / "quick.json"
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--out", str(out)],
        check=True,
        cwd=tmp_path,
        timeout=600,
    )
    data = json.loads(out.read_text())
    assert data["quick"] is True
    for key in ("date", "torch", "device", "cpu", "threads"):
        assert key in data["environment"], key
    sections = {row["section"] for row in data["rows"]}
    assert {"optim", "nn", "e2e"} <= sections, sections
    assert all("case" in row and "section" in row for row in data["rows"])
    timed = [row for row in data["rows"] if "ours_ms" in row]
    assert timed, "no timed rows"
    for row in timed:
        for key in ("ours_ms", "builtin_ms", "ratio", "ratio_q1", "ratio_q3"):
            assert math.isfinite(row[key]) and row[key] > 0, (row["case"], key, row[key])
    assert out.with_suffix(".md").read_text().startswith("# torch_dlbasics benchmark")
