"""Where the network's bright-end error comes from: neighbours, or the stamp's flux it fails to read?

On a split of ``galnet simulate`` (use a validation split), for galaxies brighter than ``--bright``:

1. the network's NMAD of mag, re (fractional) and x per number of neighbours on the stamp
   (``n_neighbours``): if blending set the floor, isolated galaxies would be far more precise;
2. what the stamp's total counts hold: the aperture magnitude ``zp − 2.5 log10(Σ image)`` corrected by the
   median ``mag − mag_ap`` in 12 × 12 cells of the *true* log n and log re (fitted on the even rows,
   measured on the odd ones), against the network's mag NMAD on the same rows, per magnitude bin.

Usage::

    python benchmarks/network_floor.py --data data/hsc200/val.h5 [--n 20000] [--model hsc-r] [--quick]

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse

import h5py
import numpy as np

from _common import emit
from limit import MAG_BINS, deltas
from real_hsc import network_answers

#: The information-limit bins, with the brightest magnitudes of the hsc-r prior (17–18) in front.
BINS = ((17.0, MAG_BINS[0]), *zip(MAG_BINS[:-1], MAG_BINS[1:]))


def cell_index(values: np.ndarray, n_cells: int = 12) -> np.ndarray:
    """Quantile cell (0 … n_cells − 1) of each value."""
    edges = np.quantile(values, np.linspace(0, 1, n_cells + 1)[1:-1])
    return np.searchsorted(edges, values)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="HDF5 split of galnet simulate (a validation split)")
    ap.add_argument("--n", type=int, default=20000, help="first N stamps (default 20000)")
    ap.add_argument("--model", default="hsc-r")
    ap.add_argument("--bright", type=float, default=20.5, help="magnitude limit of part 1 (default 20.5)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="2,000 stamps")
    args = ap.parse_args(argv)
    n = 2000 if args.quick else args.n
    from galnet.conventions import DEFAULT_ZEROPOINT
    from galnet.data import read_meta
    from galnet.train.metrics import nmad

    zp = float(read_meta(args.data).get("zeropoint") or DEFAULT_ZEROPOINT)
    with h5py.File(args.data, "r") as f:
        images = np.asarray(f["images"][:n], dtype=np.float32)
        psfs, sky = f["psfs"][:n], f["sky_sigma"][:n]
        truth = np.asarray(f["params"][:n], dtype=np.float64)
        n_nb = np.asarray(f["n_neighbours"][:n]) if "n_neighbours" in f else np.zeros(len(truth), int)
    est, _ = network_answers(images, psfs, sky, args.model, args.threads)
    d = deltas(truth, est)
    d_mag, d_re, d_x = d["mag"], d["re"], d["x"]
    bright = truth[:, 2] < args.bright
    by_neighbours = []
    for k in range(int(n_nb.max()) + 1):
        rows = bright & (n_nb == k)
        if rows.sum() >= 20:
            by_neighbours.append({"n_neighbours": k, "n": int(rows.sum()), "mag": nmad(d_mag[rows]),
                                  "re": nmad(d_re[rows]), "x": nmad(d_x[rows])})
    flux = images.reshape(len(images), -1).sum(1).astype(np.float64)
    mag_ap = zp - 2.5 * np.log10(np.maximum(flux, 1e-3))
    cell = cell_index(np.log10(truth[:, 4])) * 12 + cell_index(np.log10(truth[:, 3]))
    even = np.arange(len(truth)) % 2 == 0
    correction = np.full(144, np.nan)
    for c in range(144):
        rows = even & (cell == c)
        if rows.sum() >= 5:
            correction[c] = np.median((truth[:, 2] - mag_ap)[rows])
    d_ap = mag_ap + correction[cell] - truth[:, 2]
    aperture = []
    for lo, hi in BINS:
        rows = ~even & (truth[:, 2] >= lo) & (truth[:, 2] < hi)
        aperture.append({"bin": [lo, hi], "n": int(rows.sum()), "network_mag": nmad(d_mag[rows]),
                         "aperture_true_profile_mag": nmad(d_ap[rows])})
    print(f"mag < {args.bright}: network NMAD by number of neighbours (mag, re fractional, x px)")
    for r in by_neighbours:
        print(f"  {r['n_neighbours']} neighbours (N={r['n']}): {r['mag']:.4f} {r['re']:.4f} {r['x']:.4f}")
    print("mag NMAD per bin, odd rows: network / aperture magnitude corrected with the true n and re")
    for r in aperture:
        print(f"  {r['bin'][0]:g}–{r['bin'][1]:g} (N={r['n']}): {r['network_mag']:.4f} / "
              f"{r['aperture_true_profile_mag']:.4f}")
    res = {"benchmark": "network_floor", "data": args.data, "n": len(truth), "model": args.model,
           "bright": args.bright, "by_neighbours": by_neighbours, "aperture": aperture}
    emit(res)
    return res


if __name__ == "__main__":
    main()
