"""Benchmark torch_dlbasics against the torch built-ins, side by side in one process.

Usage::

    python benchmarks/run.py                   # full CPU run, writes benchmarks/results/
    python benchmarks/run.py --device cuda     # GPU run (CUDA events)
    python benchmarks/run.py --quick           # smoke run: tiny sizes, few repeats

Each section module (``bench_optim``, ``bench_nn``, ``bench_e2e``) has
``run(device: str, quick: bool) -> list[dict]`` returning rows made by ``common.compare``
(or rows of the same shape for memory figures). This driver prints the environment and a
table of ratios ours / built-in, and writes the JSON and a Markdown report.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib
import json
import os
import platform
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

SECTIONS = ("bench_optim", "bench_nn", "bench_e2e")


def environment(device: str) -> dict:
    """What the figures came from: torch, CPU or card, threads, date."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    env = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": device,
        "cpu": cpu,
        "threads": torch.get_num_threads(),
    }
    if device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return env


def _fmt(x: object) -> str:
    if isinstance(x, float):
        return f"{x:.3g}" if abs(x) < 1000 else f"{x:.0f}"
    return str(x)


def markdown(env: dict, rows: list[dict]) -> str:
    """The report: environment, then one table per section."""
    lines = ["# torch_dlbasics benchmark", ""]
    lines += [f"- {k}: {v}" for k, v in env.items()]
    sections: dict[str, list[dict]] = {}
    for row in rows:
        sections.setdefault(row["section"], []).append(row)
    for name, srows in sections.items():
        keys = ["case", "builtin", "ours_ms", "builtin_ms", "ratio", "ratio_q1", "ratio_q3"]
        extra = sorted({k for r in srows for k in r} - set(keys) - {"section", "device", "repeats"})
        cols = [k for k in keys if any(k in r for r in srows)] + extra
        lines += ["", f"## {name}", "", "| " + " | ".join(cols) + " |"]
        lines.append("|" + "---|" * len(cols))
        for r in srows:
            lines.append("| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, few repeats")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument(
        "--sections", nargs="*", default=list(SECTIONS), help="which sections to run"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON path (default benchmarks/results/<device>.json)",
    )
    parser.add_argument(
        "--report", type=Path, default=None, help="Markdown path (default next to the JSON)"
    )
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda given but torch.cuda.is_available() is False")
    env = environment(args.device)
    print(" | ".join(f"{k}: {v}" for k, v in env.items()), flush=True)

    rows: list[dict] = []
    for name in args.sections:
        module = importlib.import_module(name)
        print(f"== {name}", flush=True)
        for row in module.run(args.device, args.quick):
            rows.append(row)
            ratio = (
                f"ratio {row['ratio']:.3f} [{row['ratio_q1']:.3f}, {row['ratio_q3']:.3f}]"
                if "ratio" in row
                else ""
            )
            rest = {
                k: v
                for k, v in row.items()
                if k not in ("section", "ratio", "ratio_q1", "ratio_q3", "device", "repeats")
            }
            print(f"  {ratio}  {' '.join(f'{k}={_fmt(v)}' for k, v in rest.items())}", flush=True)

    tag = args.device.replace(":", "") + ("-quick" if args.quick else "")
    out = args.out or HERE / "results" / f"{tag}.json"
    report = args.report or out.with_suffix(".md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"environment": env, "quick": args.quick, "rows": rows}, indent=1))
    report.write_text(markdown(env, rows))
    print(f"wrote {out} and {report}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    raise SystemExit(main())
