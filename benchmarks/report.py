"""From the workers' raw results to rows, the target table and the Markdown report.

**Row** (one per case; every key present, ``None`` where it does not apply):

=====================  =========================================================================
``section``, ``case``  section (optim, nn, e2e) and the case id (``optim/Adam/resnet18/fused``)
``title``, ``kind``    what is compared; ``pair`` (timed), ``bandwidth`` or ``memory`` (untimed)
``ours``, ``builtin``  the two sides
``status``             ``ok``, ``noisy`` (a process found no quiet attempt), ``unsupported``
                       (a side cannot run here: ``reason``), ``failed`` (an error: ``reason``)
``processes``          processes that produced figures; ``failed_processes`` those that did not
``repeats``            timed calls of each side per process (the fewest), ``warmup`` before them
``ours_ms`` ...        median ms per call, ours and built-in: the median of the processes' medians
``ratio``              ours / built-in: the median over processes of each process's median of
                       per-call ratios (calls paired A B / B A)
``ratio_q1/q3``        the interquartile range *within* processes (the median over processes of
                       each one's quartiles of its per-call ratios)
``ratio_min/max``      the spread *across* processes: the lowest and highest process median
``*_faults``           minor page faults per call (median), each side
``*_first_ms``         the first call of each side (lazy state, compilation), the median process
``load``               other processes' CPU use during the kept attempt, in cores, worst process
``attempts``           timed attempts over all processes (more than ``processes``: redone)
``interleaved``        both sides alive and alternated (``False``: timed one after the other)
``per_process``        each process's own figures
``target``, ``verdict`` the target (issue 15) and ``met`` / ``missed by X`` from the ratio
=====================  =========================================================================

plus the case's figures (``numel``, ``bytes_per_elem``, ``images``...) and those derived from
them: ``ours_GBps``/``builtin_GBps`` (minimal bytes per element x elements / median time),
``ours_pct_of_axpy`` (against the run's own axpy bandwidth row), ``*_images_per_s`` and
``throughput_ratio`` (``1 / ratio``).
"""

from __future__ import annotations

import statistics
from typing import Any, Optional

from common import quantile

TIMING_KEYS = (
    "ours_ms",
    "builtin_ms",
    "ratio",
    "ratio_q1",
    "ratio_q3",
    "ratio_min",
    "ratio_max",
    "ours_faults",
    "builtin_faults",
    "ours_first_ms",
    "builtin_first_ms",
    "load",
    "attempts",
    "repeats",
    "interleaved",
)

ROW_KEYS = (
    "section",
    "case",
    "title",
    "kind",
    "ours",
    "builtin",
    "device",
    "status",
    "reason",
    "processes",
    "failed_processes",
    "warmup",
    *TIMING_KEYS,
    "per_process",
    "target",
    "verdict",
    "met",
)


def _median(values: list[Any]) -> Optional[float]:
    finite = [v for v in values if v is not None]
    return statistics.median(finite) if finite else None


def _process_summary(r: dict[str, Any]) -> dict[str, Any]:
    ratios = [a / b for a, b in zip(r["ours_ms"], r["builtin_ms"]) if b > 0]
    out = {
        "pid": r.get("pid"),
        "status": r["status"],
        "ratio": statistics.median(ratios),
        "ratio_q1": quantile(ratios, 0.25),
        "ratio_q3": quantile(ratios, 0.75),
        "ours_ms": statistics.median(r["ours_ms"]),
        "builtin_ms": statistics.median(r["builtin_ms"]),
        "ours_faults": statistics.median(r["ours_faults"]),
        "builtin_faults": statistics.median(r["builtin_faults"]),
        "ours_first_ms": r["ours_first_ms"],
        "builtin_first_ms": r["builtin_first_ms"],
        "load": r["load"],
        "loads": r["loads"],
        "attempts": r["attempts"],
        "repeats": len(ratios),
        "interleaved": r["interleaved"],
    }
    out.update(r.get("info") or {})
    return out


def summarise(
    case: dict[str, Any], results: list[dict[str, Any]], device: str, warmup: int
) -> dict[str, Any]:
    """One row from the raw results of ``case`` (one per process)."""
    row: dict[str, Any] = dict.fromkeys(ROW_KEYS)
    row.update({k: case[k] for k in ("section", "case", "title", "kind", "ours", "builtin")})
    row.update(device=device, warmup=warmup, target=case.get("target"), per_process=[])
    row.update(case.get("extra") or {})
    good = [r for r in results if r["status"] in ("ok", "noisy")]
    bad = [r for r in results if r["status"] not in ("ok", "noisy")]
    row["failed_processes"] = len([r for r in bad if r["status"] == "failed"])
    row["processes"] = len(good)
    if bad:
        row["reason"] = bad[0].get("reason")
    if not good:
        unsupported = any(r["status"] == "unsupported" for r in bad)
        row["status"] = "unsupported" if unsupported or not bad else "failed"
        if not results:
            row["reason"] = "not run"
        return row
    if case["kind"] == "memory":
        values = good[0]["values"]
        row.update(values, status="ok")
        if values.get("builtin_bytes"):
            row["ratio"] = values["ours_bytes"] / values["builtin_bytes"]
        return row
    procs = [_process_summary(r) for r in good]
    for r in good:
        row.update(r.get("extra") or {})
    row["per_process"] = procs
    ratios = [p["ratio"] for p in procs]
    row.update(
        status="noisy" if any(p["status"] == "noisy" for p in procs) else "ok",
        ratio=statistics.median(ratios),
        ratio_q1=_median([p["ratio_q1"] for p in procs]),
        ratio_q3=_median([p["ratio_q3"] for p in procs]),
        ratio_min=min(ratios),
        ratio_max=max(ratios),
        load=max((p["load"] for p in procs if p["load"] is not None), default=None),
        attempts=sum(p["attempts"] for p in procs),
        repeats=min(p["repeats"] for p in procs),
        interleaved=all(p["interleaved"] for p in procs),
    )
    for key in ("ours_ms", "builtin_ms", "ours_faults", "builtin_faults"):
        row[key] = _median([p[key] for p in procs])
    for key in ("ours_first_ms", "builtin_first_ms", "compile_s"):
        if any(key in p for p in procs):
            row[key] = _median([p.get(key) for p in procs])
    _derive(row)
    return row


def _derive(row: dict[str, Any]) -> None:
    """GB/s from the minimal bytes per element; images per second."""
    numel, bpe = row.get("numel"), row.get("bytes_per_elem")
    if numel and bpe and row["ours_ms"]:
        builtin_bpe = row.get("builtin_bytes_per_elem") or bpe
        row["ours_GBps"] = bpe * numel / row["ours_ms"] / 1e6
        row["builtin_GBps"] = builtin_bpe * numel / row["builtin_ms"] / 1e6
        if row["kind"] == "bandwidth":
            row["axpy_GBps"], row["copy_GBps"] = row["ours_GBps"], row["builtin_GBps"]
    images = row.get("images")
    if images and row["ours_ms"]:
        row["ours_images_per_s"] = images / row["ours_ms"] * 1e3
        row["builtin_images_per_s"] = images / row["builtin_ms"] * 1e3
        row["throughput_ratio"] = 1.0 / row["ratio"]


def link_bandwidth(rows: list[dict[str, Any]]) -> None:
    """``ours_pct_of_axpy``/``builtin_pct_of_axpy``: GB/s against the run's own axpy row."""
    by_case = {r["case"]: r for r in rows}
    for row in rows:
        ref = by_case.get(row.get("bandwidth_case") or "")
        if ref is None or not ref.get("axpy_GBps") or not row.get("ours_GBps"):
            continue
        row["axpy_GBps"] = ref["axpy_GBps"]
        row["copy_GBps"] = ref["copy_GBps"]
        row["ours_pct_of_axpy"] = 100 * row["ours_GBps"] / ref["axpy_GBps"]
        row["builtin_pct_of_axpy"] = 100 * row["builtin_GBps"] / ref["axpy_GBps"]


def verdict(row: dict[str, Any]) -> tuple[Optional[bool], str]:
    """(met, text) for a row with a target: ``met`` or ``missed by X``, with the spread."""
    tgt = row["target"]
    if row["status"] in ("unsupported", "failed") or row["ratio"] is None:
        return None, f"not measured ({row['status']}: {row['reason']})"
    value, higher = tgt["value"], tgt["op"] == ">="
    if tgt["metric"] == "throughput":
        m, best, worst = 1 / row["ratio"], 1 / row["ratio_min"], 1 / row["ratio_max"]
    elif tgt["metric"] == "copy_fraction":  # our GB/s over the run's copy GB/s
        if not row.get("copy_GBps"):
            return None, "not measured (no copy bandwidth row in this run)"
        scale = row["bytes_per_elem"] * row["numel"] / 1e6 / row["copy_GBps"]
        times = [p["ours_ms"] for p in row["per_process"]]
        m, best, worst = scale / row["ours_ms"], scale / min(times), scale / max(times)
    else:
        m, best, worst = row["ratio"], row["ratio_min"], row["ratio_max"]

    def meets(x: float) -> bool:
        return x >= value if higher else x <= value

    if meets(m):
        text = (
            "met"
            if meets(worst)
            else f"met at the median; not in every process (worst {worst:.2f}x)"
        )
        met = True
    else:
        by = (1 - m / value) if higher else (m / value - 1)
        text = f"missed by {by:.0%}"
        if meets(best):
            text += f" (best process {best:.2f}x meets it)"
        elif row["processes"] > 1:
            text += f" in all {row['processes']} processes"
        met = False
    if row["status"] == "noisy":
        text += f"; noisy (others used {row['load']:.2f} cores)"
    return met, text


def apply_targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Fill ``met``/``verdict`` of rows with a target; the target table's entries, in order."""
    table = []
    for row in rows:
        if not row.get("target"):
            continue
        row["met"], row["verdict"] = verdict(row)
        table.append(
            {
                "group": row["target"]["group"],
                "target": row["target"]["text"],
                "case": row["case"],
                "met": row["met"],
                "verdict": row["verdict"],
            }
        )
    return table


# --------------------------------------------------------------------------------------------
# Markdown


def _f(x: Any, digits: int = 3) -> str:
    if x is None:
        return ""
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        if x != 0 and abs(x) < 1000:
            return f"{x:.{digits}g}"
        return f"{x:.0f}"
    return str(x)


def _ratio_cells(r: dict[str, Any]) -> list[str]:
    if r["ratio"] is None:
        return ["", "", ""]
    iqr = f"{_f(r['ratio_q1'])}–{_f(r['ratio_q3'])}" if r["ratio_q1"] is not None else ""
    spread = f"{_f(r['ratio_min'])}–{_f(r['ratio_max'])}" if r["ratio_min"] is not None else ""
    return [f"**{_f(r['ratio'])}**", iqr, spread]


def _figures(r: dict[str, Any]) -> str:
    parts = []
    if r.get("ours_GBps") and r["kind"] != "bandwidth":
        gb = f"{_f(r['ours_GBps'])} / {_f(r['builtin_GBps'])} GB/s"
        if r.get("ours_pct_of_axpy"):
            gb += f" ({r['ours_pct_of_axpy']:.0f} % / {r['builtin_pct_of_axpy']:.0f} % of axpy)"
        parts.append(gb)
    if r.get("ours_images_per_s"):
        parts.append(
            f"{r['ours_images_per_s']:.0f} / {r['builtin_images_per_s']:.0f} img/s "
            f"(throughput {r['throughput_ratio']:.3g}x)"
        )
    if r.get("compile_s") is not None:
        parts.append(f"compile {r['compile_s']:.2f} s")
    return "; ".join(parts)


def _status(r: dict[str, Any]) -> str:
    if r["status"] == "noisy":
        return f"noisy ({_f(r['load'], 2)} cores)"
    if r["status"] in ("unsupported", "failed"):
        return f"{r['status']}: {r['reason']}"
    return r["status"]


def _table(header: list[str], body: list[list[str]]) -> list[str]:
    def clean(c: str) -> str:
        return c.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(clean(c) for c in cells) + " |" for cells in body]
    return lines


PER_PROCESS = {
    "case": "one case per process",
    "section": "one process per section",
    "all": "one process for every case: a smoke check",
}


def markdown(result: dict[str, Any]) -> str:
    """The report: machine, method, the target table, then every section's rows."""
    env, s, rows = result["environment"], result["settings"], result["rows"]
    lines = ["# torch_dlbasics benchmark", ""]
    if result["quick"]:
        lines += [
            "> **Quick run: a smoke check only.** Tiny sizes, one process, few repeats: its",
            "> figures say nothing about speed; the report of record is a full run.",
            "",
        ]
    lines += ["## Machine", ""] + [f"- {k}: {_f(v)}" for k, v in env.items()]
    lines += [
        "",
        "## Method",
        "",
        f"Each case ran in {s['processes']} fresh process(es) "
        f"({PER_PROCESS[s['per_process']]}); in each, {s['warmup']} warm-up calls per side, then at least {s['repeats']} timed "
        f"calls per side (more until an attempt lasts {s['min_time_s']} s), ours and torch "
        "alternated A B, B A, each call timed alone, gradients cleared and outputs freed outside "
        "the clock; the side built first alternates between processes (ours in the 1st, 3rd, "
        "...). `ratio` = ours / torch: the median over processes of each process's median "
        "per-call ratio; IQR = each process's quartiles of those ratios (the median over "
        "processes); `across` = lowest and highest process median. An attempt during which other processes used more than "
        f"{s['max_load']} cores was redone (up to {s['redo']} times); a row still above it is "
        f"`noisy`. Run time {result['duration_s'] / 60:.1f} min.",
    ]
    by_case = {r["case"]: r for r in rows}
    if result["targets"]:
        lines += ["", "## Targets (issue 15)", ""]
        body = []
        for t in result["targets"]:
            r = by_case[t["case"]]
            ratio = _ratio_cells(r)
            body.append(
                [
                    t["group"],
                    r["title"],
                    r["builtin"],
                    *ratio,
                    _figures(r),
                    t["target"],
                    t["verdict"],
                ]
            )
        lines += _table(
            ["target", "case", "against", "ratio", "IQR", "across", "figures", "target", "verdict"],
            body,
        )
    bw = [r for r in rows if r["kind"] == "bandwidth"]
    if bw:
        lines += ["", "## Bandwidth (the physical limit, this run)", ""]
        body = [
            [r["title"], _f(r.get("axpy_GBps")), _f(r.get("copy_GBps")), _status(r)] for r in bw
        ]
        lines += _table(["case", "axpy GB/s (12 B/elem)", "copy GB/s (8 B/elem)", "status"], body)
    for section in dict.fromkeys(r["section"] for r in rows):
        timed = [r for r in rows if r["section"] == section and r["kind"] == "pair"]
        if timed:
            lines += ["", f"## {section}", ""]
            body = [
                [
                    r["title"],
                    r["builtin"],
                    _status(r),
                    _f(r["ours_ms"]),
                    _f(r["builtin_ms"]),
                    *_ratio_cells(r),
                    f"{_f(r['ours_faults'])} / {_f(r['builtin_faults'])}"
                    if r["ours_faults"] is not None
                    else "",
                    f"{_f(r['ours_first_ms'])} / {_f(r['builtin_first_ms'])}"
                    if r["ours_first_ms"] is not None
                    else "",
                    f"{r['processes']}x{_f(r['repeats'])}, {_f(r['attempts'])}"
                    if r["repeats"]
                    else "",
                    _f(r["load"], 2),
                    _figures(r),
                ]
                for r in timed
            ]
            lines += _table(
                [
                    "case",
                    "against",
                    "status",
                    "ours ms",
                    "torch ms",
                    "ratio",
                    "IQR",
                    "across",
                    "faults/call",
                    "first call ms",
                    "procs x repeats, attempts",
                    "load",
                    "figures",
                ],
                body,
            )
        mem = [r for r in rows if r["section"] == section and r["kind"] == "memory"]
        if mem:
            lines += ["", f"## {section}: memory", ""]
            body = [
                [r["title"], _f(r.get("ours_bytes")), _f(r.get("builtin_bytes")), _f(r["ratio"])]
                for r in mem
            ]
            lines += _table(["case", "ours", "torch", "ratio"], body)
    missing = [r for r in rows if r["status"] in ("unsupported", "failed")]
    if missing:
        lines += ["", "## Not measured", ""]
        lines += [f"- `{r['case']}` {r['status']}: {r['reason']}" for r in missing]
    return "\n".join(lines) + "\n"
