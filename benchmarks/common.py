"""What every benchmark section shares: the case description, the probes, the timing loop.

A **case** is one comparison (our part against torch's) or one measurement (a bandwidth, bytes
saved for backward), written as JSON-able data (:func:`case`) so that a fresh worker process
(``worker.py``) can rebuild it from nothing but that data. Each section module (``bench_optim``,
``bench_nn``, ``bench_e2e``) lists its cases with ``cases(device, quick)`` and holds the builder
function each case names. A builder returns a :class:`Pair` of two side factories; a factory
makes a :class:`Side`: the call to time and an untimed ``reset`` run before every timed call
(clearing ``.grad``, for instance), identically on both sides.

:func:`measure_pair` is the timing loop of one case in one process:

1. build both sides and time each one's first call (lazy state, compilation: ``*_first_ms``);
2. ``warmup`` untimed calls of each;
3. an *attempt*: ``repeats`` calls of each, interleaved A B, B A, A B, ... (neither side always
   runs first on a warm or cold cache), each call timed on its own with its minor page faults
   (``getrusage`` before/after), its side's ``reset`` outside the clock, and its result
   dropped only after the clock stops; the repeats grow until the attempt lasts
   ``min_time_s``, so that the load figure below has enough clock ticks behind it;
4. the **contention check**: :class:`LoadProbe` reads the CPU time the *other* processes of the
   machine used during the attempt (the machine's busy jiffies from ``/proc/stat``, steal
   included, minus this process's own from ``/proc/self/stat``), in cores. An attempt above
   ``max_load`` is redone, up to ``redo`` times after a ``redo_wait_s`` pause; the quietest
   attempt is kept, and the result is marked ``noisy`` with its load when none was quiet.

Where both sides do not fit in memory together, the sides are built and timed one after the
other (``interleaved: False``) instead.
"""

from __future__ import annotations

import gc
import math
import os
import resource
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

# --------------------------------------------------------------------------------------------
# Cases


class Unsupported(Exception):
    """Raised by a builder or a side when the case cannot run here (no data, no kernel...)."""


#: Errors from *our* side that mean "this option does not exist (yet)", not "this is broken".
UNSUPPORTED_ERRORS: tuple[type[BaseException], ...] = (
    TypeError,
    ValueError,
    NotImplementedError,
    Unsupported,
)


def case(
    section: str,
    case_id: str,
    title: str,
    *,
    builder: str,
    params: dict[str, Any],
    ours: str,
    builtin: str,
    kind: str = "pair",
    target: Optional[dict[str, Any]] = None,
    extra: Optional[dict[str, Any]] = None,
    repeats: Optional[int] = None,
    bytes_needed: int = 0,
) -> dict[str, Any]:
    """One case as JSON-able data.

    ``section`` is the module holding ``builder``; ``params`` are the builder's keyword
    arguments; ``ours``/``builtin`` say what each side is; ``kind`` is ``"pair"`` (timed),
    ``"bandwidth"`` (timed, two reference kernels) or ``"memory"`` (measured once, untimed);
    ``target`` (see :func:`target`) puts the row in the report's target table; ``extra`` is
    copied into the row (``numel``, ``bytes_per_elem``, ``images``...); ``repeats`` overrides
    the run's repeats; ``bytes_needed`` is the memory both sides need alive together.
    """
    return {
        "section": section,
        "case": case_id,
        "title": title,
        "kind": kind,
        "builder": builder,
        "params": params,
        "ours": ours,
        "builtin": builtin,
        "target": target,
        "extra": dict(extra or {}),
        "repeats": repeats,
        "bytes_needed": int(bytes_needed),
    }


def target(
    group: str, value: float, text: str, *, metric: str = "ratio", op: str = "<="
) -> dict[str, Any]:
    """A row of issue 15's target table: ``metric op value``.

    ``metric`` is ``"ratio"`` (time ours / torch, medians), ``"throughput"`` (ours / torch
    images per second, i.e. ``1 / ratio``) or ``"copy_fraction"`` (our GB/s over the run's copy
    bandwidth row); ``text`` is the target as the report prints it.
    """
    return {"group": group, "metric": metric, "op": op, "value": value, "text": text}


@dataclass
class Side:
    """One side of a pair: ``call`` is timed; ``reset`` (optional) runs before it, untimed."""

    call: Callable[[], object]
    reset: Optional[Callable[[], None]] = None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Pair:
    """Factories of the two sides, and figures the builder adds to the row."""

    ours: Callable[[], Side]
    builtin: Callable[[], Side]
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Settings:
    """How one process times a case."""

    device: str = "cpu"
    repeats: int = 20
    warmup: int = 3
    min_time_s: float = 0.5
    max_repeats: int = 400
    max_load: float = 0.10
    redo: int = 2
    redo_wait_s: float = 1.0


# --------------------------------------------------------------------------------------------
# Probes


def minor_faults() -> int:
    """Minor page faults of this process so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _machine_busy_jiffies() -> Optional[int]:
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    # cpu user nice system idle iowait irq softirq steal guest guest_nice ("user" has guest)
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    return user + nice + system + irq + softirq + steal


def _own_jiffies() -> Optional[int]:
    try:
        with open("/proc/self/stat") as f:
            stat = f.read()
    except OSError:
        return None
    rest = stat[stat.rindex(")") + 2 :].split()  # rest[0] is field 3 ("state")
    return int(rest[11]) + int(rest[12])  # utime, stime: fields 14 and 15, all threads


MIN_PROBE_S = 0.25
"""The shortest window the load probe reads (25 ticks: about 0.08 cores of resolution)."""


class LoadProbe:
    """CPU used by the machine's other processes between :meth:`start` and :meth:`stop`.

    Busy time of all CPUs (``/proc/stat``: user, nice, system, irq, softirq and steal, the
    time a hypervisor gave our virtual CPUs to someone else) minus this process's own
    (``/proc/self/stat``: utime + stime of all its threads), divided by the wall time: the
    number of cores' worth of work that competed with ours. ``None`` without ``/proc``.
    The counters tick at ``SC_CLK_TCK`` (100 Hz), so a window of ``T`` seconds resolves about
    ``2 / (100 T)`` cores: an attempt shorter than :data:`MIN_PROBE_S` (a fast case capped at
    ``max_repeats``) keeps the probe open, idle, until that long, else a busy machine can read 0.
    """

    def start(self) -> LoadProbe:
        self._busy, self._own, self._t = _machine_busy_jiffies(), _own_jiffies(), time.monotonic()
        return self

    def stop(self) -> Optional[float]:
        busy, own, t = _machine_busy_jiffies(), _own_jiffies(), time.monotonic()
        if None in (busy, own, self._busy, self._own) or t <= self._t:
            return None
        others = (busy - self._busy) - (own - self._own)  # type: ignore[operator]
        return max(others, 0) / _TICK / (t - self._t)


def available_memory_bytes(device: str) -> Optional[int]:
    """Free memory on ``device`` (``MemAvailable`` on CPU), or ``None`` when unknown."""
    if device.startswith("cuda"):
        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


# --------------------------------------------------------------------------------------------
# Timing


def quantile(values: list[float], q: float) -> float:
    """Linear-interpolation quantile (``q`` in [0, 1]) of a non-empty list."""
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo, hi = int(pos), min(int(pos) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _clock(device: str) -> Callable[[Side], tuple[float, int]]:
    """A function timing one call of a side: (milliseconds, minor page faults)."""
    cuda = device.startswith("cuda")

    def timed(side: Side) -> tuple[float, int]:
        if side.reset is not None:
            side.reset()
        if cuda:
            torch.cuda.synchronize(device)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            faults = minor_faults()
            start.record()
            out = side.call()
            end.record()
            torch.cuda.synchronize(device)
            faults = minor_faults() - faults
            ms = start.elapsed_time(end)
        else:
            faults = minor_faults()
            t0 = time.perf_counter()
            out = side.call()
            ms = (time.perf_counter() - t0) * 1e3
            faults = minor_faults() - faults
        del out  # freed outside the clock, on both sides alike
        return ms, faults

    return timed


class SideError(Exception):
    """A side failed to build or run; ``which`` is ``"ours"`` or ``"builtin"``."""

    def __init__(self, which: str, error: BaseException) -> None:
        super().__init__(f"{which}: {type(error).__name__}: {error}")
        self.which, self.error = which, error


def _start(which: str, factory: Callable[[], Side], timed: Callable[[Side], Any]) -> tuple:
    try:
        side = factory()
        first_ms, _ = timed(side)
    except Exception as err:
        raise SideError(which, err) from err
    return side, first_ms


def _attempt(
    sides: list[Side], timed: Callable[[Side], tuple[float, int]], repeats: int
) -> tuple[list[list[float]], list[list[int]], Optional[float], float]:
    """``repeats`` interleaved calls of each side; (times, faults, load, seconds)."""
    times: list[list[float]] = [[] for _ in sides]
    faults: list[list[int]] = [[] for _ in sides]
    gc.collect()
    gc.disable()
    probe = LoadProbe().start()
    t0 = time.monotonic()
    try:
        for i in range(repeats):
            order = range(len(sides)) if i % 2 == 0 else reversed(range(len(sides)))
            for k in order:
                ms, nf = timed(sides[k])
                times[k].append(ms)
                faults[k].append(nf)
    finally:
        gc.enable()
    elapsed = time.monotonic() - t0
    if elapsed < MIN_PROBE_S:  # too few clock ticks to resolve the load: observe a while longer
        time.sleep(MIN_PROBE_S - elapsed)
    return times, faults, probe.stop(), elapsed


def _repeats_for(settings: Settings, repeats: int, call_ms: float) -> int:
    """Repeats enough to fill ``min_time_s`` (an even number, within ``max_repeats``)."""
    need = math.ceil(settings.min_time_s * 1e3 / max(call_ms, 1e-3))
    n = min(max(repeats, need), max(settings.max_repeats, repeats))
    return n + (n % 2)


def _time_sides(
    sides: list[Side], settings: Settings, repeats: int
) -> tuple[list[list[float]], list[list[int]], list[Optional[float]]]:
    """Warm up, then attempts until one is quiet (or ``redo`` is spent); the quietest wins."""
    timed = _clock(settings.device)
    warm: list[float] = []
    for _ in range(settings.warmup):
        warm.append(sum(timed(s)[0] for s in sides))
    n = _repeats_for(settings, repeats, statistics.median(warm) if warm else 1.0)
    best: Optional[tuple] = None
    loads: list[Optional[float]] = []
    for attempt in range(settings.redo + 1):
        if attempt:
            time.sleep(settings.redo_wait_s)
        times, faults, load, _ = _attempt(sides, timed, n)
        loads.append(load)
        if best is None or (load is not None and (best[2] is None or load < best[2])):
            best = (times, faults, load)
        if load is None or load <= settings.max_load:
            break
    assert best is not None
    return best[0], best[1], loads


def _quietest(loads: list[Optional[float]]) -> Optional[float]:
    """The load of the attempt that was kept (the quietest)."""
    return min((x for x in loads if x is not None), default=None)


def _result(
    times: list[list[float]],
    faults: list[list[int]],
    loads: list[Optional[float]],
    load: Optional[float],
    firsts: list[float],
    interleaved: bool,
    settings: Settings,
) -> dict[str, Any]:
    return {
        "status": "noisy" if load is not None and load > settings.max_load else "ok",
        "reason": None,
        "interleaved": interleaved,
        "ours_ms": times[0],
        "builtin_ms": times[1],
        "ours_faults": faults[0],
        "builtin_faults": faults[1],
        "ours_first_ms": firsts[0],
        "builtin_first_ms": firsts[1],
        "load": load,
        "loads": loads,
        "attempts": len(loads),
    }


def measure_pair(
    pair: Pair,
    settings: Settings,
    repeats: int,
    *,
    interleaved: bool = True,
    builtin_first: bool = False,
) -> dict[str, Any]:
    """Time one case in this process; the raw result the report summarises.

    ``builtin_first``: build (and first call) torch's side before ours. Of two identical sides,
    the one built first ran 1-4 % slower (our SGD against itself on resnet18's parameters:
    1.01-1.04x; 2-core AMD EPYC VM), so ``run.py`` alternates the order between processes.
    Raises :class:`SideError` when a side cannot be built or fails its first call.
    """
    timed = _clock(settings.device)
    order = [("ours", pair.ours), ("builtin", pair.builtin)]
    if builtin_first:
        order.reverse()
    if interleaved:
        started = {which: _start(which, factory, timed) for which, factory in order}
        (ours, first_ours), (builtin, first_builtin) = started["ours"], started["builtin"]
        times, faults, loads = _time_sides([ours, builtin], settings, repeats)
        info = {**ours.info, **{f"builtin_{k}": v for k, v in builtin.info.items()}}
        firsts = [first_ours, first_builtin]
        out = _result(times, faults, loads, _quietest(loads), firsts, True, settings)
    else:
        # One side alive at a time; each side's own attempts, the noisier load reported.
        parts = []
        info = {}
        for which, factory in order:
            side, first = _start(which, factory, timed)
            t, f, ld = _time_sides([side], settings, repeats)
            prefix = "" if which == "ours" else "builtin_"
            info.update({f"{prefix}{k}": v for k, v in side.info.items()})
            parts.append((t[0], f[0], ld, first))
            del side
            gc.collect()
        if builtin_first:
            parts.reverse()  # [ours, builtin] as in the interleaved case
        n = min(len(parts[0][0]), len(parts[1][0]))
        # Each side keeps its quietest attempt; the row carries the louder of the two.
        kept = [_quietest(part[2]) for part in parts]
        out = _result(
            [parts[0][0][:n], parts[1][0][:n]],
            [parts[0][1][:n], parts[1][1][:n]],
            parts[0][2] + parts[1][2],
            max((x for x in kept if x is not None), default=None),
            [parts[0][3], parts[1][3]],
            False,
            settings,
        )
    out["info"] = info
    out["built_first"] = "builtin" if builtin_first else "ours"
    return out
