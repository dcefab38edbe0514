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
from typing import Any, Callable

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


def test_each_timed_call_starts_from_cleared_grads() -> None:
    """fwd+bwd calls do not accumulate into x.grad; train forward builds a graph; eval does not."""
    import torch

    common, bench_nn = _bench_module("common"), _bench_module("bench_nn")
    torch.manual_seed(0)
    x = torch.randn(4, 3, 5, 5, requires_grad=True)
    dy = torch.randn(4, 3, 5, 5)
    m = torch.nn.BatchNorm2d(3)
    m(x).backward(dy)
    once = (x.grad.clone(), m.weight.grad.clone())
    timed = common._clock("cpu")
    side = bench_nn._side(m, x, dy, "train-fwd-bwd")
    for _ in range(3):
        timed(side)
    torch.testing.assert_close((x.grad, m.weight.grad), once)
    assert bench_nn._side(m, x, None, "train-fwd").call().requires_grad
    evaluated = bench_nn._side(m, x, None, "eval-fwd").call()
    assert not evaluated.requires_grad and not m.training


def test_reset_runs_before_every_call() -> None:
    common = _bench_module("common")
    log: list[str] = []

    def factory(name: str) -> Callable[[], Any]:
        def call() -> None:
            assert log[-1] == f"{name} reset", log[-3:]
            log.append(name)

        return lambda: common.Side(call, reset=lambda: log.append(f"{name} reset"))

    settings = common.Settings(repeats=4, warmup=1, min_time_s=0.0, redo=0)
    out = common.measure_pair(common.Pair(factory("a"), factory("b")), settings, 4)
    assert len(out["ours_ms"]) == len(out["builtin_ms"]) == 4
    assert log.count("a") == log.count("a reset") == 1 + 1 + 4  # first, warm-up, timed
    assert log[-4:] == ["b reset", "b", "a reset", "a"]  # A B, then B A


def test_sides_that_do_not_fit_together_run_one_after_the_other() -> None:
    common, worker = _bench_module("common"), _bench_module("worker")
    free = common.available_memory_bytes("cpu")
    if free is None:
        pytest.skip("no /proc/meminfo here")
    assert worker._layout({"bytes_needed": int(free * 1.2)}, "cpu") == (False, None)
    _, reason = worker._layout({"bytes_needed": int(free * 3)}, "cpu")
    assert reason and "GiB" in reason
    made: list[str] = []

    def factory(name: str) -> Callable[[], Any]:
        def make() -> Any:
            made.append(name)
            return common.Side(lambda: made.append(f"{name} call"))

        return make

    settings = common.Settings(repeats=4, warmup=1, min_time_s=0.0, redo=0)
    out = common.measure_pair(
        common.Pair(factory("a"), factory("b")), settings, 4, interleaved=False
    )
    assert out["interleaved"] is False and len(out["ours_ms"]) == len(out["builtin_ms"]) == 4
    assert made.index("b") > max(i for i, m in enumerate(made) if m == "a call")


@pytest.mark.parametrize("interleaved", [True, False])
def test_the_side_built_first_alternates_between_processes(interleaved: bool) -> None:
    """Odd passes build torch's side first (the side built first runs a few per cent slower),
    and the result keeps ours and torch's figures in their places either way."""
    common, run = _bench_module("common"), _bench_module("run")
    cases = [{"case": c, "section": "nn", "kind": "pair"} for c in ("x", "y")]
    jobs = run.plan_jobs(cases, 4, "case")
    assert [(job[0]["case"], job[0]["pass"]) for job in jobs] == [
        (c, k) for k in range(4) for c in ("x", "y")
    ]
    made: list[str] = []

    def factory(name: str, ms: float) -> Callable[[], Any]:
        def make() -> Any:
            made.append(name)
            return common.Side(lambda: time.sleep(ms / 1000))

        return make

    settings = common.Settings(repeats=2, warmup=0, min_time_s=0.0, redo=0)
    for builtin_first in (False, True):
        made.clear()
        pair = common.Pair(factory("ours", 1.0), factory("builtin", 8.0))
        out = common.measure_pair(
            pair, settings, 2, interleaved=interleaved, builtin_first=builtin_first
        )
        assert made == (["builtin", "ours"] if builtin_first else ["ours", "builtin"])
        assert out["built_first"] == ("builtin" if builtin_first else "ours")
        assert max(out["ours_ms"]) < min(out["builtin_ms"])  # each side's times in its place
