"""Peak memory of ``galnet predict`` against the number of rows: is it flat from 10k to 1M stamps?

Each size is a FITS cube of 61x61 float32 stamps (with ``SKYSIG`` in the header) and one 25x25 PSF,
written cheaply: a block of distinct simulated stamps is rendered once and repeated, appended to
the file in chunks (never held in memory as a whole). ``galnet predict`` then runs on it in a
subprocess (the command a user types, ``python -m galnet.cli predict cube.fits --psf psf.fits -o
out.fits``), and its peak resident memory is read from ``/usr/bin/time -v`` when present, else from
``resource.getrusage(RUSAGE_CHILDREN)`` (one subprocess per measurement, so the maximum is its own).

Memory is *flat* when the peak RSS of the largest size is within ``--tolerance`` (20 %) of the
smallest's. Usage::

    python benchmarks/predict_memory.py --quick          # 10k vs 100k rows (~3 min on 2 cores)
    python benchmarks/predict_memory.py                  # 10k, 100k, 1M (1M: 15 GB cube, ~30 min)
    python benchmarks/predict_memory.py --sizes 10000,50000 --keep /tmp/pm

The last line printed is one JSON object: per size, the peak RSS (MB), the wall time, rows written,
the ratios to the smallest and to the previous size; ``flat`` and the ratio largest / smallest.

Measured (2 loaded cores, chunk size 4096, prefetch 2): 10k rows 839 MB, 100k 1022 MB, 1M 1031 MB.
predict holds up to four chunks at once (the one measured, two queued, one being read), so the peak
is O(chunk size), reached after four chunks: flat from 100k to 1M (+0.9 %); a 10k-row run (3
chunks) stays below that plateau, hence +22 % from 10k to 100k. The thread settings and a load
check are reported as in the other benchmarks (memory does not depend on the load; the times do).
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _timing import check_machine, emit_with_state

STAMP, PSF = 61, 25
#: Distinct stamps rendered and repeated to fill a cube.
BLOCK = 512


def _block(seed: int = 0) -> tuple[np.ndarray, np.ndarray, float]:
    """``BLOCK`` simulated stamps (big-endian float32, as FITS stores them), one PSF and the sky sigma."""
    from galnet.simulate import generate_batch, load_preset

    cfg = load_preset("hsc-r", {"psf": {"fwhm_arcsec": {"kind": "fixed", "value": 0.75}},
                                "noise": {"depth_scatter_mag": 0.0}})
    batch = generate_batch(cfg, BLOCK, seed=seed)
    return batch["images"].astype(">f4"), batch["psfs"][0].astype(np.float64), float(batch["sky_sigma"][0])


def write_cube(path: Path, n: int, block: np.ndarray, sky_sigma: float) -> None:
    """A FITS cube of ``n`` stamps: ``block`` repeated, appended in chunks (memory: one block)."""
    from astropy.io import fits

    hdr = fits.Header()
    hdr["SIMPLE"] = True
    hdr["BITPIX"] = -32
    hdr["NAXIS"] = 3
    hdr["NAXIS1"] = STAMP
    hdr["NAXIS2"] = STAMP
    hdr["NAXIS3"] = n
    hdr["SKYSIG"] = (sky_sigma, "sky noise sigma, counts")
    hdr["MAGZERO"] = 27.0
    raw = block.tobytes()
    per = STAMP * STAMP * 4
    with open(path, "wb") as fh:
        fh.write(hdr.tostring().encode("ascii"))
        left = n
        while left:
            k = min(left, len(block))
            fh.write(raw[: k * per])
            left -= k
        pad = (-(n * per)) % 2880
        fh.write(b"\0" * pad)


def peak_rss_of(cmd: list[str]) -> tuple[float, float, str]:
    """Run ``cmd``; return (peak RSS in MB, wall seconds, how it was measured)."""
    t0 = time.perf_counter()
    if shutil.which("time") and Path("/usr/bin/time").exists():
        proc = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
        m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
        if m:
            return int(m.group(1)) / 1024, wall, "/usr/bin/time -v"
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # ru_maxrss of children is the largest of any child so far: valid when this child is the largest
    return max(after, before) / 1024, wall, "getrusage(RUSAGE_CHILDREN)"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="10k and 100k rows only")
    ap.add_argument("--sizes", help="comma-separated row counts (default 10000,100000,1000000)")
    ap.add_argument("--tolerance", type=float, default=0.2, help="flat: largest within this of smallest")
    ap.add_argument("--threads", type=int, default=2, help="predict --threads")
    ap.add_argument("--keep", help="folder for the inputs and catalogs (default: a temporary folder)")
    ap.add_argument("--extra", default="", help="extra options for galnet predict, e.g. '--chi2'")
    ap.add_argument("--require-idle", action="store_true", help="refuse to run on a loaded machine")
    args = ap.parse_args(argv)
    sizes = ([int(s) for s in args.sizes.split(",")] if args.sizes
             else [10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000])
    state = check_machine(args, threads=args.threads)
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="predict_memory_"))
    work.mkdir(parents=True, exist_ok=True)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)}
    os.environ["PYTHONPATH"] = env["PYTHONPATH"]
    from astropy.io import fits
    from astropy.table import Table

    block, psf, sky = _block()
    fits.writeto(work / "psf.fits", psf, overwrite=True)
    results = {}
    try:
        for n in sizes:
            cube = work / f"cube_{n}.fits"
            out = work / f"cat_{n}.fits"
            t0 = time.perf_counter()
            write_cube(cube, n, block, sky)
            t_write = time.perf_counter() - t0
            out.unlink(missing_ok=True)
            cmd = [sys.executable, "-m", "galnet.cli", "predict", str(cube), "--psf", str(work / "psf.fits"),
                   "-o", str(out), "--refine", "0", "--no-progress", "--threads", str(args.threads),
                   *args.extra.split()]
            rss, wall, how = peak_rss_of(cmd)
            rows = len(Table.read(out, memmap=True))
            results[n] = {"peak_rss_mb": round(rss, 1), "wall_s": round(wall, 1), "rows_out": rows,
                          "input_gb": round(cube.stat().st_size / 1e9, 3), "write_input_s": round(t_write, 1),
                          "measured_with": how}
            print(f"{n:>9,} rows: peak RSS {rss:8.1f} MB, {wall:7.1f} s, {rows:,} rows out", flush=True)
            if not args.keep:
                cube.unlink()
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    lo, hi = results[min(results)], results[max(results)]
    ratio = hi["peak_rss_mb"] / lo["peak_rss_mb"]
    previous = None
    for n in sorted(results):  # growth step by step: a plateau after the first sizes is not a leak
        results[n]["ratio_to_smallest"] = round(results[n]["peak_rss_mb"] / lo["peak_rss_mb"], 3)
        if previous is not None:
            step = results[n]["peak_rss_mb"] / results[previous]["peak_rss_mb"]
            results[n]["ratio_to_previous"] = round(step, 3)
        previous = n
    flat = ratio <= 1 + args.tolerance
    print(f"peak RSS {max(results):,} rows / {min(results):,} rows = {ratio:.2f}: "
          f"{'flat' if flat else 'NOT flat'} (tolerance {args.tolerance:.0%})")
    emit_with_state({"benchmark": "predict_memory", "sizes": {str(k): v for k, v in results.items()},
                     "ratio_largest_smallest": round(ratio, 3), "flat": flat, "tolerance": args.tolerance,
                     "threads": args.threads}, state)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
