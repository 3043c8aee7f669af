"""Shared helpers of the benchmark scripts: argument parsing, HSC-like parameters, JSON output.

Timing (interleaved repeats, thread settings, the load check) is in :mod:`_timing`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform

import numpy as np


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="small run, under a minute")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    return p


def hsc_like_params(count: int, seed: int = 0) -> np.ndarray:
    """(count, 7) parameters from the default HSC r-band prior (mag 17–24, Re 0.1–3", n 0.3–8)."""
    rng = np.random.default_rng(seed)
    return np.stack([
        31 + rng.uniform(-2, 2, count),
        31 + rng.uniform(-2, 2, count),
        rng.uniform(17, 24, count),
        np.exp(rng.uniform(np.log(0.1 / 0.168), np.log(3 / 0.168), count)),
        np.exp(rng.uniform(np.log(0.3), np.log(8), count)),
        rng.uniform(0.1, 1.0, count),
        rng.uniform(-90, 90, count),
    ], axis=1)


def emit(figures: dict) -> None:
    """Print the figures as one JSON object on the last line (machine info added)."""
    figures = {"machine": f"{platform.machine()} {os.cpu_count()} cpu", **figures}
    print(json.dumps(figures, sort_keys=False))
