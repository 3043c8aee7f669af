"""Benchmark of ``galnet predict``: galaxies / s end to end, from files on disk to the catalog on disk.

Measures, with an untrained ``galnet-psf`` network (the architecture of the shipped ``hsc-r``; speed does not
depend on the weights):

* the network alone on in-memory arrays (torch eager + channels_last, and ONNX Runtime);
* a FITS cube of stamps + one PSF → FITS catalog, with each backend;
* a large FITS image + a source catalog (x/y) → catalog (stamp cutting included);
* the same cube on a local Dask cluster of 1 and 2 worker processes (1 thread each; the start of the
  cluster and the per-worker model load are included, as a user would see them).

Usage::

    python benchmarks/predict.py --quick        # < 1 minute
    python benchmarks/predict.py                # 16k galaxies

The last printed line is one JSON object with the figures.
"""

from __future__ import annotations

import logging
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from _common import emit, parser


def _make_inputs(tmp: Path, n: int, seed: int = 0) -> dict:
    from astropy.io import fits

    from galnet.render import render_sersic

    rng = np.random.default_rng(seed)
    size = 25
    yy, xx = np.mgrid[:size, :size] - 12.0
    psf = np.exp(-(xx**2 + yy**2) / (2 * 1.9**2))
    psf /= psf.sum()
    base = 64
    params = np.stack(
        [
            31 + rng.uniform(-1, 1, base),
            31 + rng.uniform(-1, 1, base),
            rng.uniform(18, 23, base),
            rng.uniform(1.5, 8, base),
            rng.uniform(0.5, 4, base),
            rng.uniform(0.2, 1, base),
            rng.uniform(-90, 90, base),
        ],
        1,
    )
    gal = render_sersic(
        torch.as_tensor(params, dtype=torch.float32), torch.as_tensor(psf, dtype=torch.float32)
    )
    gal = gal.numpy()
    cube = np.empty((n, 61, 61), np.float32)
    for s in range(0, n, 4096):
        k = min(4096, n - s)
        cube[s : s + k] = gal[rng.integers(0, base, k)] + rng.normal(0, 0.06, (k, 61, 61)).astype(np.float32)
    fits.PrimaryHDU(cube).writeto(tmp / "cube.fits")
    fits.PrimaryHDU(psf.astype(np.float32)).writeto(tmp / "psf.fits")
    # a big image: the galaxies on a 32-px grid (stamps overlap, as in a crowded field), catalog of centres
    side = int(np.ceil(np.sqrt(n)))
    step = 32
    img = rng.normal(0, 0.06, (side * step + 61, side * step + 61)).astype(np.float32)
    xs, ys = [], []
    for i in range(n):
        r, c = divmod(i, side)
        img[r * step : r * step + 61, c * step : c * step + 61] += gal[i % base]
        xs.append(c * step + 31.0 + rng.uniform(-0.5, 0.5))
        ys.append(r * step + 31.0 + rng.uniform(-0.5, 0.5))
    fits.PrimaryHDU(img).writeto(tmp / "image.fits")
    from astropy.table import Table

    Table({"id": np.arange(n), "x": np.array(xs), "y": np.array(ys)}).write(tmp / "sources.fits")
    return {"cube": cube, "psf": psf, "image_shape": img.shape}


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=None, help="galaxies (default 2048 quick, 16384 full)")
    args = p.parse_args()
    warnings.simplefilter("ignore")
    logging.basicConfig(level=logging.WARNING)
    import distributed  # noqa: F401  (configures its loggers on import; quieten them afterwards)

    logging.getLogger("distributed").setLevel(logging.ERROR)
    n = args.n or (2048 if args.quick else 16384)
    threads = args.threads
    torch.set_num_threads(threads)
    from galnet.models import create_model, save_model
    from galnet.predict import predict_catalog
    from galnet.predict.runner import get_predictor

    figures: dict = {"n_galaxies": n, "threads": threads}
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        torch.manual_seed(0)
        card = str(save_model(create_model("galnet-psf"), tmp / "model", "bench"))
        t0 = time.perf_counter()
        data = _make_inputs(tmp, n)
        print(f"inputs: {n} stamps, image {data['image_shape']} ({time.perf_counter() - t0:.1f} s to make)")
        sky = np.full(n, 0.06, np.float32)
        # ---- network alone
        for backend in ("torch", "onnx"):
            t0 = time.perf_counter()
            pred = get_predictor(card, backend, "cpu", threads)
            load = time.perf_counter() - t0
            pred.predict(data["cube"][:512], data["psf"], sky[:512])
            m = min(n, 8192)
            t0 = time.perf_counter()
            out = pred.predict(data["cube"][:m], data["psf"], sky[:m], batch_size=512)
            rate = m / (time.perf_counter() - t0)
            figures[f"network_{backend}_gal_per_s"] = round(rate)
            figures[f"model_load_{backend}_s"] = round(load, 2)
            if backend == "torch":
                ref = out
            else:
                figures["onnx_vs_torch_max_abs_diff"] = float(np.abs(out - ref).max())
            print(f"network {backend}: {rate:,.0f} gal/s (load {load:.2f} s)")
        # ---- end to end: FITS cube → catalog
        common = {"model": card, "progress": False, "threads": threads, "batch_size": 512, "chunk_size": 4096}
        for backend in ("torch", "onnx"):
            t0 = time.perf_counter()
            predict_catalog(
                tmp / "cube.fits",
                tmp / f"cube_{backend}.fits",
                psf=tmp / "psf.fits",
                sky_sigma=0.06,
                backend=backend,
                **common,
            )
            dt = time.perf_counter() - t0
            figures[f"e2e_cube_{backend}_gal_per_s"] = round(n / dt)
            print(f"end to end, FITS cube -> catalog, {backend}: {n / dt:,.0f} gal/s ({dt:.1f} s)")
        t0 = time.perf_counter()
        predict_catalog(
            tmp / "cube.fits", tmp / "cube_est.fits", psf=tmp / "psf.fits", backend="onnx", **common
        )
        dt = time.perf_counter() - t0
        figures["e2e_cube_onnx_sky_estimated_gal_per_s"] = round(n / dt)
        print(f"end to end, FITS cube, sky sigma from the borders, onnx: {n / dt:,.0f} gal/s")
        # ---- end to end: image + catalog
        t0 = time.perf_counter()
        predict_catalog(
            tmp / "image.fits",
            tmp / "image_cat.fits",
            catalog=tmp / "sources.fits",
            psf=tmp / "psf.fits",
            backend="onnx",
            sky_sigma=0.06,
            **common,
        )
        dt = time.perf_counter() - t0
        figures["e2e_image_catalog_onnx_gal_per_s"] = round(n / dt)
        print(f"end to end, image + catalog -> catalog, onnx: {n / dt:,.0f} gal/s ({dt:.1f} s)")
        # ---- Dask 1 vs 2 worker processes
        for w in (1, 2):
            t0 = time.perf_counter()
            predict_catalog(
                tmp / "cube.fits",
                tmp / f"dask{w}.fits",
                psf=tmp / "psf.fits",
                sky_sigma=0.06,
                backend="onnx",
                workers=w,
                **{**common, "threads": 1, "chunk_size": 2048},
            )
            dt = time.perf_counter() - t0
            figures[f"e2e_dask_{w}_workers_gal_per_s"] = round(n / dt)
            print(
                f"Dask, {w} worker process(es) x 1 thread, onnx: {n / dt:,.0f} gal/s "
                f"({dt:.1f} s, incl. start)"
            )
    emit(figures)


if __name__ == "__main__":
    main()
