"""Benchmark torch_dlbasics against the torch built-ins, side by side, in several fresh processes.

Usage::

    python benchmarks/run.py                    # full CPU run -> runs/bench/<time>-cpu/
    python benchmarks/run.py --quick            # smoke check only: tiny sizes, one process
    python benchmarks/run.py --only 'BatchNorm2d/.*/train-fwd-bwd' --processes 5
    python benchmarks/run.py --list             # the case ids, nothing run
    python benchmarks/run.py --device cuda      # GPU run (CUDA events)
    python benchmarks/run.py --commit-report    # full run, also written to benchmarks/results/

Each case (``bench_optim``, ``bench_nn``, ``bench_e2e`` list them) is timed in ``--processes``
fresh processes (``worker.py``), ours and torch interleaved in each, the side built first
alternating between processes (it runs a few per cent slower). The passes go round all
cases in turn, so that one case's processes are minutes apart; a case found unsupported is not
retried. ``report.py`` turns the raw results into rows (median ratio, IQR within processes,
spread across processes, page faults, the other processes' CPU load) and the target table of
issue 15. A run writes ``<device>.json``, ``<device>.md``, the raw ``workers.jsonl`` and
``workers.log`` under ``runs/bench/<time>-<device>/`` (or ``--out-dir``); the committed report
``benchmarks/results/<device>.{json,md}`` changes only with ``--commit-report``, which a quick
run refuses. A full CPU run (4 processes per case) takes about 50 minutes on 2 quiet cores,
much of it compiling the ``fused=True`` cases' first steps (one graph per 64 tensors); it
prints its progress.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib
import importlib.metadata
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from report import apply_targets, link_bandwidth, markdown, summarise

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

SECTIONS = ("optim", "nn", "e2e")
WORKER = HERE / "worker.py"
RESULTS = HERE / "results"


# --------------------------------------------------------------------------------------------
# The machine


def _cpuinfo() -> tuple[str, int | None]:
    """CPU model and physical cores (distinct (physical id, core id) pairs)."""
    model, cores, phys, core = platform.processor() or platform.machine(), set(), None, None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "model name":
                    model = value
                elif key == "physical id":
                    phys = value
                elif key == "core id":
                    core = value
                elif not key and core is not None:
                    cores.add((phys, core))
                    phys = core = None
        if core is not None:
            cores.add((phys, core))
    except OSError:
        pass
    return model, len(cores) or None


def _memory_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _git() -> str | None:
    try:
        rev = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "torch_dlbasics", "benchmarks"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (rev + (" (uncommitted changes)" if dirty else "")) or None


def environment(device: str) -> dict[str, Any]:
    """What the figures came from: machine, software, date."""
    model, cores = _cpuinfo()
    env: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": device,
        "cpu": model,
        "cores": cores,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "threads": torch.get_num_threads(),
        "memory_gib": _memory_gib(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "commit": _git(),
        "loadavg_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    try:
        env["torchvision"] = importlib.metadata.version("torchvision")
    except importlib.metadata.PackageNotFoundError:
        pass
    if device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
        env["cuda"] = torch.version.cuda
    return env


# --------------------------------------------------------------------------------------------
# Cases and jobs


def collect_cases(device: str, quick: bool, sections: list[str], only: str | None) -> list[dict]:
    cases = []
    for name in sections:
        cases += importlib.import_module(f"bench_{name}").cases(device, quick)
    ids = [c["case"] for c in cases]
    if len(ids) != len(set(ids)):
        raise RuntimeError(f"duplicate case ids: {sorted(i for i in ids if ids.count(i) > 1)}")
    if only:
        pattern = re.compile(only)
        cases = [c for c in cases if pattern.search(c["case"])]
    return cases


def plan_jobs(cases: list[dict], processes: int, per_process: str) -> list[list[dict]]:
    """Worker jobs in run order: pass after pass over the cases (round robin).

    ``per_process="case"``: one case per fresh process (memory cases, measured once, share
    one); ``"section"``: a section's cases share one; ``"all"``: one process per pass over
    every case (quick runs: a smoke check, not a measurement).
    """
    timed = [c for c in cases if c["kind"] != "memory"]
    if per_process == "all":
        rest = [[{**c, "pass": k} for c in timed] for k in range(1, processes)]
        return [[{**c, "pass": 0} for c in cases], *rest]
    jobs: list[list[dict]] = []
    for k in range(processes):
        tagged = [{**c, "pass": k} for c in timed]  # odd passes build torch's side first
        if per_process == "case":
            jobs += [[c] for c in tagged]
        else:
            for section in dict.fromkeys(c["section"] for c in tagged):
                jobs.append([c for c in tagged if c["section"] == section])
    memory = [c for c in cases if c["kind"] == "memory"]
    if memory:
        jobs.append(memory)
    return jobs


def run_job(
    job: list[dict], settings: dict, threads: int | None, timeout: float, log: Path
) -> list[dict]:
    """One fresh worker process over ``job``; a crash or timeout fails its unfinished cases."""
    with tempfile.TemporaryDirectory(prefix="bench-job-") as tmp:
        job_file, out_file = Path(tmp) / "job.json", Path(tmp) / "out.json"
        job_file.write_text(json.dumps({"cases": job, "settings": settings, "threads": threads}))
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        error = None
        with log.open("a") as f:
            f.write(f"\n=== {' '.join(c['case'] for c in job)}\n")
            f.flush()
            try:
                proc = subprocess.run(
                    [sys.executable, str(WORKER), str(job_file), str(out_file)],
                    stdout=f,
                    stderr=subprocess.STDOUT,
                    cwd=ROOT,
                    env=env,
                    timeout=timeout,
                )
                if proc.returncode:
                    error = f"worker exited with status {proc.returncode} (see workers.log)"
            except subprocess.TimeoutExpired:
                error = f"worker timed out after {timeout:.0f} s"
        done = json.loads(out_file.read_text())["results"] if out_file.exists() else []
    finished = {r["case"] for r in done}
    for c in job:
        if c["case"] not in finished:
            done.append({"case": c["case"], "status": "failed", "reason": error or "no result"})
    return done


# --------------------------------------------------------------------------------------------
# CLI


def _progress(r: dict, case: dict) -> str:
    if r["status"] in ("unsupported", "failed"):
        return f"{r['status']}: {r['reason']}"
    if case["kind"] == "memory":
        return "measured"
    ratios = sorted(a / b for a, b in zip(r["ours_ms"], r["builtin_ms"]) if b > 0)
    med = ratios[len(ratios) // 2]
    load = "" if r["load"] is None else f", others' load {r['load']:.2f} cores"
    return f"ratio {med:.3f}, {r['attempts']} attempt(s){load}, {r['status']}"


def _clock(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--quick", action="store_true", help="smoke check only: tiny sizes, 1 process")
    p.add_argument("--sections", nargs="*", default=list(SECTIONS), choices=SECTIONS)
    p.add_argument("--only", default=None, help="regular expression on the case ids")
    p.add_argument("--list", action="store_true", help="print the case ids and exit")
    p.add_argument("--processes", type=int, default=None, help="fresh processes per case (4; 1)")
    p.add_argument(
        "--per-process",
        choices=("case", "section", "all"),
        default=None,
        help="one case per process (full default), a section, or all cases (quick default)",
    )
    p.add_argument("--repeats", type=int, default=None, help="timed calls per side (20; 5)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls per side (3; 1)")
    p.add_argument("--min-time", type=float, default=None, help="seconds per attempt (0.5; 0.05)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    p.add_argument(
        "--max-load", type=float, default=0.10, help="others' CPU, in cores, that makes a row noisy"
    )
    p.add_argument("--redo", type=int, default=None, help="redos of a noisy attempt (2; 1)")
    p.add_argument("--redo-wait", type=float, default=None, help="seconds before a redo (1; 0.2)")
    p.add_argument("--timeout", type=float, default=1200, help="seconds per worker process")
    p.add_argument("--out-dir", type=Path, default=None, help="default runs/bench/<time>-<device>")
    p.add_argument(
        "--commit-report",
        action="store_true",
        help="also write benchmarks/results/<device>.{json,md} (the committed report)",
    )
    p.add_argument("--results-dir", type=Path, default=RESULTS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.commit_report and (args.quick or args.only):
        p.error("--commit-report records a full run; not with --quick (smoke only) or --only")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda given but torch.cuda.is_available() is False")
    q = args.quick
    for name, full, quick in (
        ("processes", 4, 1),  # even: each side built first in half of them
        ("per_process", "case", "all"),
        ("repeats", 20, 5),
        ("warmup", 3, 1),
        ("min_time", 0.5, 0.05),
        ("redo", 2, 1),
        ("redo_wait", 1.0, 0.2),
    ):
        if getattr(args, name) is None:
            setattr(args, name, quick if q else full)
    if args.processes < 1 or args.repeats < 2:
        p.error("--processes must be >= 1 and --repeats >= 2")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cases = collect_cases(args.device, args.quick, args.sections, args.only)
    if args.list:
        for c in cases:
            print(c["case"], f"({c['kind']}, target)" if c["target"] else f"({c['kind']})")
        return 0
    if not cases:
        print("no case matches", file=sys.stderr)
        return 2
    tag = args.device.replace(":", "")
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    run_dir = args.out_dir or ROOT / "runs" / "bench" / f"{stamp}-{tag}"
    run_dir.mkdir(parents=True, exist_ok=True)
    settings = {
        "device": args.device,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "min_time_s": args.min_time,
        "max_load": args.max_load,
        "redo": args.redo,
        "redo_wait_s": args.redo_wait,
    }
    env = environment(args.device)
    banner = (
        "QUICK RUN: a smoke check only, its figures say nothing about speed. " if args.quick else ""
    )
    print(banner + " | ".join(f"{k}: {v}" for k, v in env.items()), flush=True)
    jobs = plan_jobs(cases, args.processes, args.per_process)
    print(
        f"{len(cases)} cases, {args.processes} process(es) each: {len(jobs)} worker processes "
        f"-> {run_dir}",
        flush=True,
    )
    by_case = {c["case"]: c for c in cases}
    raw: dict[str, list[dict]] = {c["case"]: [] for c in cases}
    log, jsonl = run_dir / "workers.log", run_dir / "workers.jsonl"
    log.write_text("")
    jsonl.write_text("")
    t0 = time.monotonic()
    threads = None
    unsupported: set[str] = set()  # a side that cannot run here will not in the next pass
    for i, job in enumerate(jobs, 1):
        job = [c for c in job if c["case"] not in unsupported]
        if not job:
            continue
        results = run_job(job, settings, args.threads, args.timeout, log)
        unsupported |= {r["case"] for r in results if r["status"] == "unsupported"}
        with jsonl.open("a") as f:
            for r in results:
                f.write(json.dumps(r) + "\n")
        elapsed = time.monotonic() - t0
        left = elapsed / i * (len(jobs) - i)
        for r in results:
            raw[r["case"]].append(r)
            print(
                f"[{i}/{len(jobs)} {_clock(elapsed)}, ~{_clock(left)} left] {r['case']}: "
                + _progress(r, by_case[r["case"]]),
                flush=True,
            )
        threads = threads or _worker_threads(results)
    env["threads"] = threads or env["threads"]
    env["loadavg_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    rows = [summarise(c, raw[c["case"]], args.device, args.warmup) for c in cases]
    link_bandwidth(rows)
    result = {
        "schema": 2,
        "quick": args.quick,
        "environment": env,
        "settings": {**settings, "processes": args.processes, "per_process": args.per_process},
        "duration_s": time.monotonic() - t0,
        "targets": apply_targets(rows),
        "rows": rows,
    }
    out_json, out_md = run_dir / f"{tag}.json", run_dir / f"{tag}.md"
    out_json.write_text(json.dumps(result, indent=1))
    out_md.write_text(markdown(result))
    print(f"wrote {out_json} and {out_md} ({_clock(result['duration_s'])})")
    if args.commit_report:
        for path in commit_report(run_dir, tag, args.results_dir):
            print(f"committed report: {path}")
    if args.quick:
        print("QUICK RUN: a smoke check only; the report of record is a full run.")
    summary = {
        s: sum(r["status"] == s for r in rows) for s in ("ok", "noisy", "unsupported", "failed")
    }
    print("rows: " + ", ".join(f"{v} {k}" for k, v in summary.items()))
    return 0


def commit_report(run_dir: Path, tag: str, results_dir: Path = RESULTS) -> list[Path]:
    """Copy a run's ``<tag>.json`` and ``<tag>.md`` into the committed report's folder."""
    results_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for suffix in (".json", ".md"):
        dst = results_dir / f"{tag}{suffix}"
        shutil.copyfile(run_dir / f"{tag}{suffix}", dst)
        written.append(dst)
    return written


def _worker_threads(results: list[dict]) -> int | None:
    """Threads the workers ran with (they report torch.get_num_threads)."""
    for r in results:
        if r.get("threads"):
            return int(r["threads"])
    return None


if __name__ == "__main__":
    raise SystemExit(main())
