"""Timing that holds on a shared machine: interleaved repeats, thread settings, and a load check.

Every benchmark script that quotes a speed, or compares two sides (galnet vs GalSim, eager vs ONNX,
galnet vs Imfit ...), times them with :func:`interleaved`: all sides in the same process, in
alternating order (A B C, C B A, A B C ...), at least three repeats, so that a burst of load from
another job hits every side alike; the median and the best of the repeats are reported. Ratios are
quoted from medians (robust) and from bests (the machine's capability).

:func:`machine_state` says whether the machine is loaded: the 1-minute load average against the
cores, the CPU time other processes used while this one slept for a moment (``/proc/stat``), and
whether a short calibrated busy loop in torch got the CPU share it asked for. A script calls
:func:`check_machine` first: with ``--require-idle`` a loaded machine is refused (exit status 3),
otherwise a one-line warning is printed and the JSON carries ``"loaded": true``.

Typical use::

    ap = argparse.ArgumentParser()
    add_timing_args(ap)                       # --repeats (>= 3), --require-idle
    args = ap.parse_args()
    state = check_machine(args, threads=torch.get_num_threads())
    runs = interleaved({"galnet": lambda: render(...), "galsim": lambda: galsim(...)}, repeats=args.repeats)
    figures = {**rates(runs["galnet"], count, "galnet_stamps_per_s"), ...,
               **ratio(runs["galnet"], runs["galsim"], "ratio", per_a=count, per_b=n_galsim)}
    emit_with_state(figures, state)           # one JSON object, last line
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from galnet.options import usable_cores

__all__ = [
    "Timing",
    "add_timing_args",
    "thread_settings",
    "machine_state",
    "check_machine",
    "interleaved",
    "rates",
    "ratio",
    "timing_figures",
    "emit_with_state",
    "MIN_REPEATS",
    "EXIT_LOADED",
]

#: Fewest repeats of each side.
MIN_REPEATS = 3
#: Exit status of a benchmark refused with ``--require-idle`` on a loaded machine.
EXIT_LOADED = 3


@dataclass
class Timing:
    """Wall-clock seconds of each repeat of one side, and the side's last return value."""

    name: str
    seconds: list[float] = field(default_factory=list)
    result: Any = None

    @property
    def median(self) -> float:
        """Median seconds per call."""
        return float(statistics.median(self.seconds))

    @property
    def best(self) -> float:
        """Fewest seconds per call."""
        return float(min(self.seconds))


def add_timing_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--repeats`` (default 3, at least 3) and ``--require-idle`` to a benchmark's parser."""

    def repeats(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < MIN_REPEATS:
            raise argparse.ArgumentTypeError(f"must be >= {MIN_REPEATS}, got {text!r}")
        return value

    parser.add_argument("--repeats", type=repeats, default=MIN_REPEATS,
                        help=f"timed repeats of each side, interleaved (>= {MIN_REPEATS}; "
                             f"default {MIN_REPEATS})")
    parser.add_argument("--require-idle", action="store_true",
                        help=f"refuse to run (exit status {EXIT_LOADED}) if the machine is loaded")
    return parser


def thread_settings() -> dict[str, Any]:
    """Threads the timings ran with: torch intra/inter-op threads, the OpenMP/BLAS environment, cores."""
    out: dict[str, Any] = {}
    try:
        import torch

        out["torch_threads"] = torch.get_num_threads()
        out["torch_interop_threads"] = torch.get_num_interop_threads()
    except ImportError:
        pass
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        out[var] = os.environ.get(var)
    out["cpu_count"] = os.cpu_count()
    out["usable_cores"] = usable_cores()
    return out


def _loadavg() -> list[float] | None:
    try:
        with open("/proc/loadavg") as fh:
            return [float(v) for v in fh.read().split()[:3]]
    except (OSError, ValueError):
        return None


def _cpu_ticks() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    try:
        with open("/proc/stat") as fh:
            parts = fh.readline().split()
    except OSError:
        return None
    values = [int(v) for v in parts[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return sum(values) - idle, sum(values)


def _others_busy_cores(interval: float) -> float | None:
    """Cores' worth of CPU that other processes used while this one slept ``interval`` seconds."""
    a = _cpu_ticks()
    own0 = os.times()
    time.sleep(interval)
    b = _cpu_ticks()
    own1 = os.times()
    if a is None or b is None or b[1] == a[1]:
        return None
    busy_share = (b[0] - a[0]) / (b[1] - a[1])  # of all cores
    total_cores = os.cpu_count() or 1
    own = (own1.user - own0.user + own1.system - own0.system) / interval
    return max(0.0, busy_share * total_cores - own)


def _busy_loop_share(threads: int, seconds: float) -> float | None:
    """CPU time / (wall time x threads) of a torch matmul loop on ``threads`` threads (1.0: uncontended)."""
    try:
        import torch
    except ImportError:
        return None
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        a = torch.randn(256, 256)
        a @ a  # warm-up
        t0, c0 = time.perf_counter(), time.process_time()
        while time.perf_counter() - t0 < seconds:
            a @ a
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        torch.set_num_threads(before)
    return cpu / (wall * max(1, threads))


def machine_state(
    threads: int | None = None, *, interval: float = 0.5, busy_s: float = 0.3
) -> dict[str, Any]:
    """Whether this machine is loaded, measured now (about ``interval + busy_s`` seconds).

    Parameters
    ----------
    threads : int, optional
        Threads the benchmark will use (default: torch's); the busy loop runs on as many.
    interval : float
        Seconds of sleep during which the other processes' CPU use is measured.
    busy_s : float
        Seconds of the calibrated busy loop.

    Returns
    -------
    dict
        ``loadavg`` (1, 5, 15 min), ``usable_cores``, ``others_busy_cores`` (cores' worth of CPU
        used by other processes), ``busy_loop_cpu_share`` (CPU share the loop got per thread, 1 =
        uncontended), ``loaded`` (bool) and ``reasons`` (list of str). Loaded means any of: the
        1-minute load average > cores - 0.5; other processes busy on > 0.5 core while we slept;
        the busy loop got < 80 % of its threads' CPU time.
    """
    if threads is None:
        try:
            import torch

            threads = torch.get_num_threads()
        except ImportError:
            threads = 1
    cores = usable_cores()
    load = _loadavg()
    others = _others_busy_cores(interval)
    share = _busy_loop_share(min(threads, cores), busy_s)
    reasons = []
    if load is not None and load[0] > cores - 0.5:
        reasons.append(f"1-min load average {load[0]:.2f} > {cores} cores - 0.5")
    if others is not None and others > 0.5:
        reasons.append(f"other processes used {others:.2f} cores while this one slept")
    if share is not None and share < 0.8:
        reasons.append(
            f"a busy loop on {min(threads, cores)} thread(s) got {100 * share:.0f}% of its CPU time"
        )
    return {"loadavg": load, "usable_cores": cores,
            "others_busy_cores": None if others is None else round(others, 2),
            "busy_loop_cpu_share": None if share is None else round(share, 3), "loaded": bool(reasons),
            "reasons": reasons}


def check_machine(args: argparse.Namespace, threads: int | None = None) -> dict[str, Any]:
    """Measure :func:`machine_state`; refuse a loaded machine with ``--require-idle``, else warn.

    Prints the thread settings and the state (one line each). Returns the state with
    ``thread_settings`` added, for :func:`emit_with_state`.
    """
    state = machine_state(threads)
    state["thread_settings"] = thread_settings()
    print("threads: " + ", ".join(f"{k}={v}" for k, v in state["thread_settings"].items()), flush=True)
    if state["loaded"]:
        msg = "machine loaded: " + "; ".join(state["reasons"])
        if getattr(args, "require_idle", False):
            print(f"refused ({msg}); rerun on an idle machine or without --require-idle", file=sys.stderr)
            print(json.dumps({"refused": True, "loaded": True, "reasons": state["reasons"]}))
            sys.exit(EXIT_LOADED)
        print(f"WARNING: {msg}; the timings below may be slow and noisy", file=sys.stderr, flush=True)
    else:
        print(f"machine idle: load average {state['loadavg']}, other processes "
              f"{state['others_busy_cores']} cores", flush=True)
    return state


def interleaved(sides: dict[str, Callable[[], Any]], *, repeats: int = MIN_REPEATS,
                warmup: bool = True) -> dict[str, Timing]:
    """Time every side ``repeats`` times, interleaved, in this process.

    Repeat ``r`` runs the sides in the given order when ``r`` is even and in reverse when odd
    (A B C, C B A, ...), so slow drifts and bursts of load fall on all sides alike.

    Parameters
    ----------
    sides : dict name -> callable
        Each callable does one unit of work (e.g. render N stamps) and may return a result.
    repeats : int
        Timed calls of each side (at least :data:`MIN_REPEATS`).
    warmup : bool
        Call each side once, untimed, first (caches, lazy initialisation).

    Returns
    -------
    dict name -> Timing
    """
    repeats = max(MIN_REPEATS, int(repeats))
    out = {name: Timing(name) for name in sides}
    if warmup:
        for name, fn in sides.items():
            out[name].result = fn()
    names = list(sides)
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            t0 = time.perf_counter()
            result = sides[name]()
            out[name].seconds.append(time.perf_counter() - t0)
            out[name].result = result
    return out


def rates(t: Timing, count: float, key: str, digits: int = 1) -> dict[str, float]:
    """``{key: count / median, key_best: count / best}`` (e.g. stamps per second)."""
    return {key: round(count / t.median, digits), f"{key}_best": round(count / t.best, digits)}


def ratio(a: Timing, b: Timing, key: str, *, per_a: float = 1.0, per_b: float = 1.0, digits: int = 2) -> dict:
    """Speed ratio of side ``a`` over side ``b`` (rates ``per_a / seconds`` and ``per_b / seconds``).

    Returns ``{key: median-based ratio, key_best: best-based ratio}``.
    """
    return {key: round((per_a / a.median) / (per_b / b.median), digits),
            f"{key}_best": round((per_a / a.best) / (per_b / b.best), digits)}


def timing_figures(runs: dict[str, Timing]) -> dict[str, dict[str, Any]]:
    """Every side's repeats: ``{name: {"median_s", "best_s", "seconds": [...]}}`` for the JSON."""
    return {name: {"median_s": round(t.median, 5), "best_s": round(t.best, 5),
                   "seconds": [round(s, 5) for s in t.seconds]} for name, t in runs.items()}


def emit_with_state(figures: dict[str, Any], state: dict[str, Any]) -> None:
    """Print ``figures`` with the machine, thread settings and load state as one JSON object (last line)."""
    out = {"machine": f"{platform.machine()} {os.cpu_count()} cpu", **figures,
           "loaded": state.get("loaded"), "load": {k: state.get(k) for k in (
               "loadavg", "usable_cores", "others_busy_cores", "busy_loop_cpu_share", "reasons")},
           "thread_settings": state.get("thread_settings")}
    print(json.dumps(out))
