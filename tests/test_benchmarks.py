"""Smoke tests of the benchmark: it runs, writes a complete report, guards the committed one,
and notices a busy machine.

No timing is asserted: the figures live in the benchmark's reports, not in tests.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import math
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
RUN = BENCH / "run.py"

# What issue 15 asks of every row, and of the report's header.
ROW_KEYS = (
    "section",
    "case",
    "title",
    "kind",
    "ours",
    "builtin",
    "status",
    "reason",
    "ours_ms",
    "builtin_ms",
    "ratio",
    "ratio_q1",
    "ratio_q3",
    "ratio_min",
    "ratio_max",
    "ours_faults",
    "builtin_faults",
    "load",
    "attempts",
    "repeats",
    "processes",
    "per_process",
    "target",
    "verdict",
    "met",
)
ENV_KEYS = ("cpu", "cores", "threads", "memory_gib", "torch", "python", "date")
STATUSES = {"ok", "noisy", "unsupported"}
ONE_CASE = "nn/BatchNorm1d/32x64/eval-fwd"


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")) if folder.exists() else []:
        if path.is_file():
            h.update(str(path.relative_to(folder)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def _run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(RUN), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One ``--quick`` run into a temporary folder (one thread: least hurt by a busy box)."""
    out = tmp_path_factory.mktemp("quick")
    before = _digest(BENCH / "results")
    t0 = time.monotonic()
    proc = _run("--quick", "--threads", "1", "--redo", "0", "--out-dir", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {
        "out": out,
        "stdout": proc.stdout,
        "seconds": time.monotonic() - t0,
        "results_unchanged": _digest(BENCH / "results") == before,
        "data": json.loads((out / "cpu.json").read_text()),
    }


def test_quick_run_writes_a_complete_json(quick: dict[str, Any]) -> None:
    data = quick["data"]
    assert data["quick"] is True
    for key in ENV_KEYS:
        assert data["environment"].get(key) is not None, key
    rows = data["rows"]
    assert {r["section"] for r in rows} == {"optim", "nn", "e2e"}
    assert {r["kind"] for r in rows} == {"pair", "bandwidth", "memory"}
    for row in rows:
        missing = [k for k in ROW_KEYS if k not in row]
        assert not missing, (row["case"], missing)
        assert row["status"] in STATUSES, (row["case"], row["status"], row["reason"])
        if row["status"] == "unsupported":
            assert row["reason"], row["case"]
    timed = [r for r in rows if r["kind"] != "memory" and r["status"] in ("ok", "noisy")]
    assert len(timed) >= 20
    for row in timed:
        case = row["case"]
        for key in ("ours_ms", "builtin_ms", "ratio", "ratio_q1", "ratio_q3"):
            assert math.isfinite(row[key]) and row[key] > 0, (case, key, row[key])
        assert row["ratio_min"] <= row["ratio"] <= row["ratio_max"], case
        assert row["ratio_q1"] <= row["ratio_q3"], case
        assert row["ours_faults"] >= 0 and row["builtin_faults"] >= 0, case
        assert row["load"] is None or row["load"] >= 0, case
        assert row["processes"] == len(row["per_process"]) == 1, case
        assert row["attempts"] >= row["processes"] and row["repeats"] >= 5, case
        assert (row["status"] == "noisy") == (row["load"] is not None and row["load"] > 0.10)
    for row in rows:
        if row["kind"] == "memory":
            assert row["ours_bytes"] > 0 and row["builtin_bytes"] > 0, row["case"]
    # The grads are cleared and the train forward keeps autograd on: both sides of every
    # BatchNorm train row ran (no side raised under either regime).
    bn = [r for r in timed if "BatchNorm" in r["case"] and "/train-" in r["case"]]
    assert len(bn) == 6
    targets = data["targets"]
    assert targets and all(t["verdict"] for t in targets)
    groups = {t["group"] for t in targets}
    assert {"BatchNorm eval forward", "Dropout fwd+bwd", "train_mnist CNN throughput"} <= groups


def test_quick_run_says_it_is_a_smoke_check(quick: dict[str, Any]) -> None:
    assert "smoke check only" in quick["stdout"]
    md = (quick["out"] / "cpu.md").read_text()
    assert md.startswith("# torch_dlbasics benchmark")
    assert "smoke check only" in md and "## Targets (issue 15)" in md
    assert (quick["out"] / "workers.jsonl").read_text().strip()
    print(f"quick run: {quick['seconds']:.0f} s")


def _bench_module(name: str) -> Any:
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module(name)


def test_committed_report_changes_only_with_the_flag(
    quick: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert quick["results_unchanged"], "a run without --commit-report touched benchmarks/results"
    run = _bench_module("run")
    for refused in (["--quick", "--commit-report"], ["--only", "SGD", "--commit-report"]):
        with pytest.raises(SystemExit) as exit_:
            run.parse_args(refused)
        assert exit_.value.code == 2
        assert "--commit-report records a full run" in capsys.readouterr().err
    assert run.parse_args(["--commit-report"]).commit_report
    written = run.commit_report(quick["out"], "cpu", tmp_path / "results")
    assert [p.name for p in written] == ["cpu.json", "cpu.md"]
    assert json.loads(written[0].read_text()) == quick["data"]


@contextlib.contextmanager
def _busy_loop() -> Iterator[None]:
    """Another process spinning on one core."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        yield
    finally:
        proc.kill()
        proc.wait()


def test_load_probe_sees_a_busy_loop() -> None:
    common = _bench_module("common")
    with _busy_loop():
        probe = common.LoadProbe().start()
        time.sleep(0.5)
        load = probe.stop()
    if load is None:
        pytest.skip("no /proc here")
    assert load >= 0.5, load  # one busy loop is one core


def test_contention_check_redoes_and_marks_a_row_beside_a_busy_loop() -> None:
    """The worker's own path for one case, in this process, beside a busy loop."""
    worker, report = _bench_module("worker"), _bench_module("report")
    (case,) = [c for c in _bench_module("bench_nn").cases("cpu", True) if c["case"] == ONE_CASE]
    settings = worker.Settings(repeats=5, warmup=1, min_time_s=0.3, redo=1, redo_wait_s=0.0)
    with _busy_loop():
        result = worker.run_case(case, settings)
    if result.get("load") is None:
        pytest.skip("no /proc here")
    assert result["status"] == "noisy", result
    assert result["load"] >= 0.5 and len(result["loads"]) == result["attempts"] == 2
    row = report.summarise(case, [result], "cpu", warmup=1)
    assert row["status"] == "noisy" and row["load"] == result["load"]
    assert row["attempts"] == 2 and row["processes"] == 1
