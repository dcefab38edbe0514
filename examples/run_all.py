"""Regenerate every figure and every number the docs quote: the chapter's experiments, then docs/results.md.

    python examples/run_all.py                  # full: docs/figures/*.{png,json} and docs/results.md
    python examples/run_all.py --quick          # CI budget: docs/figures/quick/*.json (what the tests rerun)
    python examples/run_all.py --only batch_norm_compare --jobs 2

Each experiment runs as its own process (``--threads 1 --device cpu``, so results do not depend
on ``--jobs`` or the machine's core count; this checkout's ``torch_dlbasics`` first on
``PYTHONPATH``) with the seeds below, writing into ``runs/run_all/<mode>-<dest>/<experiment>/``; its JSON (and, in full mode, its figures) are then copied
to the destination. Incremental and resumable: an experiment whose outputs exist and whose
fingerprint (the package's and the examples' source, torch's version, its command line) is
unchanged is skipped, so a killed run continues with what is missing (the §6.5 search also
resumes inside its study); ``--force`` reruns everything. Last, ``results.json`` (every number
the docs quote, formatted) and, in full mode, ``docs/results.md`` are written from the JSON
(``_report.py``); ``tests/test_results.py`` checks both against the committed files.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _cli
import _report

EXAMPLES = Path(__file__).resolve().parent
REPO = EXAMPLES.parent
SEEDS5 = ["--seeds", "0", "1", "2", "3", "4"]

# experiment -> its runs: (script, flags in full mode, flags in quick mode, sub-folder)
EXPERIMENTS: dict[str, list[tuple[str, list[str], list[str], str]]] = {
    "optimizer_paths": [("optimizer_paths", [], [], "")],
    "weight_init_activation_histogram": [("weight_init_activation_histogram", SEEDS5, [], "")],
    "optimizer_compare_mnist": [("optimizer_compare_mnist", SEEDS5, [], "")],
    "weight_init_compare": [("weight_init_compare", SEEDS5, [], "")],
    "batch_norm_compare": [("batch_norm_compare", SEEDS5, [], "")],
    "overfit_weight_decay": [("overfit_weight_decay", SEEDS5, [], "")],
    "overfit_dropout": [("overfit_dropout", SEEDS5, [], "")],
    "hyperparameter_optimization": [
        ("hyperparameter_optimization", ["--sampler", "random", "tpe", "--seeds", "0", "1", "2", "--no-progress"],
         ["--no-progress"], ""),
    ],
    "train_mnist": [
        ("train_mnist", ["--seed", str(s), "--no-progress"], ["--no-progress"] if s == 0 else None, f"seed{s}")
        for s in (0, 1, 2)
    ],
}  # fmt: skip


def code_fingerprint() -> str:
    """The package's and the examples' code (not this runner or the report; docstrings and
    comments left out, so editing prose reruns nothing) and torch's version."""
    import torch

    h = hashlib.sha256(torch.__version__.encode())
    files = sorted((REPO / "torch_dlbasics").rglob("*.py")) + sorted(EXAMPLES.glob("*.py"))
    for f in files:
        if f.name not in ("run_all.py", "_report.py"):
            h.update(f.relative_to(REPO).as_posix().encode() + _code(f.read_text()).encode())
    return h.hexdigest()[:16]


def _code(source: str) -> str:
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):  # fmt: skip
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


def runs_of(name: str, quick: bool) -> list[tuple[str, list[str], str]]:
    return [(script, quick_flags if quick else full, sub) for script, full, quick_flags, sub in EXPERIMENTS[name]
            if (quick_flags if quick else full) is not None]  # fmt: skip


def run_experiment(
    name: str, key: str, args: argparse.Namespace, work: Path, dest: Path
) -> tuple[float, float]:
    """Run one experiment's processes; copy its outputs to ``dest``; return its wall and CPU seconds."""
    started = time.perf_counter()
    marker = work / name / ".fingerprint"
    if marker.is_file() and marker.read_text() != key:  # another code state: start afresh
        shutil.rmtree(work / name)
    (work / name).mkdir(parents=True, exist_ok=True)
    marker.write_text(key)  # the same state resumes (the §6.5 studies keep their finished trials)
    cpu_seconds = 0.0
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    for script, flags, sub in runs_of(name, args.quick):
        out = work / name / sub
        argv = [*(["--quick"] if args.quick else []), "--device", "cpu", "--threads", "1", "--out", str(out),
                *(["--data-root", str(args.data_root)] if args.data_root else []), *flags]  # fmt: skip
        log = work / f"{name}{'-' + sub if sub else ''}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as f:
            proc = subprocess.Popen(
                [sys.executable, str(EXAMPLES / f"{script}.py"), *argv],
                stdout=f,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env=env,
            )
            code, cpu = _wait(proc)
            cpu_seconds += cpu
        if code:
            tail = log.read_text().strip().splitlines()[-1:] or ["(no output)"]
            raise _cli.ExampleError(f"{name}: exit status {code}: {tail[0]} (log: {log})")
        suffix = f"_{sub}" if sub and sub != "seed0" else ""
        figures = (
            [] if args.quick or suffix else sorted(out.glob(f"{script}*.png"))
        )  # seed 0's only
        for produced in sorted(out.glob(f"{script}*.json")) + figures:
            target = dest / produced.name.replace(script, script + suffix, 1)
            shutil.copyfile(produced, target)
    return time.perf_counter() - started, cpu_seconds


def _wait(proc: subprocess.Popen) -> tuple[int, float]:
    """Exit status and CPU seconds (user + system) of a child: on one thread, about the wall
    time it takes on an otherwise idle machine, whatever else runs meanwhile."""
    if hasattr(os, "wait4"):
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        return proc.returncode, usage.ru_utime + usage.ru_stime
    return proc.wait(), float("nan")


def main(argv: list[str] | None = None) -> int:
    p = _cli.Parser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n", 1)[1],
                    formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument(
        "--quick", action="store_true", help="CI budget: writes docs/figures/quick/*.json only"
    )
    p.add_argument(
        "--only",
        nargs="+",
        choices=list(EXPERIMENTS),
        default=None,
        metavar="NAME",
        help="these experiments only",
    )
    p.add_argument("--force", action="store_true", help="rerun experiments that are up to date")
    p.add_argument(
        "--jobs",
        type=_cli.positive_int,
        default=1,
        help="experiments at a time (default: %(default)s)",
    )
    p.add_argument(
        "--dest", type=Path, default=None, help="default: docs/figures (quick: docs/figures/quick)"
    )
    p.add_argument("--data-root", type=Path, default=None, help="as the examples' --data-root")
    p.add_argument("--no-page", action="store_true", help="do not write docs/results.md")
    args = p.parse_args(argv)  # fmt: skip
    mode = "quick" if args.quick else "full"
    dest = args.dest or REPO / "docs" / "figures" / ("quick" if args.quick else "")
    work = (
        REPO
        / "runs"
        / "run_all"
        / f"{mode}-{hashlib.sha256(str(dest.resolve()).encode()).hexdigest()[:8]}"
    )
    for folder, flag in ((dest, "--dest"), (work, "runs/")):
        _cli.make_folder(folder, flag)
    state_file = dest / "run_all.json"
    state: dict[str, Any] = json.loads(state_file.read_text()) if state_file.is_file() else {}
    fingerprint = code_fingerprint()

    def key(name: str) -> str:
        return hashlib.sha256(
            json.dumps([fingerprint, runs_of(name, args.quick)]).encode()
        ).hexdigest()[:16]

    todo = [n for n in (args.only or EXPERIMENTS) if args.force or state.get(n, {}).get("fingerprint") != key(n)
            or not (dest / f"{n}.json").is_file()]  # fmt: skip
    for n in args.only or EXPERIMENTS:
        if n not in todo:
            print(f"{n}: up to date ({state[n]['seconds']:.0f} s when it ran)")

    lock = threading.Lock()

    def one(name: str) -> None:
        print(f"{name}: running", flush=True)
        seconds, cpu = run_experiment(name, key(name), args, work, dest)
        with lock:
            record(name, seconds, cpu)

    def record(name: str, seconds: float, cpu: float) -> None:
        state[name] = {"fingerprint": key(name), "seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1),
                       "jobs": args.jobs, "load_average": [round(x, 2) for x in os.getloadavg()],
                       "finished": time.strftime("%Y-%m-%d %H:%M:%S")}  # fmt: skip
        state_file.write_text(
            json.dumps(state, indent=1, sort_keys=True) + "\n"
        )  # after each: resumable
        print(f"{name}: done in {seconds:.0f} s ({cpu:.0f} s of CPU)", flush=True)

    with ThreadPoolExecutor(args.jobs) as pool:
        for f in [pool.submit(one, n) for n in todo]:
            f.result()

    numbers = _report.numbers(dest)
    (dest / "results.json").write_text(json.dumps(numbers, indent=1, sort_keys=True) + "\n")
    if not args.quick and not args.no_page and args.dest is None:
        page = REPO / "docs" / "results.md"
        page.write_text(_report.render(dest, numbers))
        print(f"wrote {dest / 'results.json'} and {page}")
        for other in [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]:
            if other != page and _report.refresh_markers(other, numbers):
                print(f"updated the quoted results in {other.relative_to(REPO)}")
    wall = sum(state[n]["seconds"] for n in EXPERIMENTS if n in state)
    cpu = sum(state[n].get("cpu_seconds", float("nan")) for n in EXPERIMENTS if n in state)
    print(f"experiments as last run: {wall:.0f} s wall, {cpu:.0f} s of CPU in total")
    return 0


if __name__ == "__main__":
    raise SystemExit(_cli.run(main))
