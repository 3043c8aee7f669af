"""Benchmark of ``galnet predict``: galaxies / s end to end, from files on disk to the catalog on disk.

Measures, with an untrained ``galnet-psf`` network (the architecture of the shipped ``hsc-r``; speed does not
depend on the weights):

* the network alone on in-memory arrays (torch eager + channels_last, and ONNX Runtime);
* a FITS cube of stamps + one PSF → FITS catalog, with each backend; the same with a variance cube and a
  bad-pixel mask cube (``--variance``, ``--mask``: the survey inputs);
* a large FITS image + a source catalog (x/y) → catalog (stamp cutting included);
* the same cube on a local Dask cluster of 1 and 2 worker processes (1 thread each; the start of the
  cluster and the per-worker model load are included, as a user would see them).

Usage::

    python benchmarks/predict.py --quick        # < 1 minute
    python benchmarks/predict.py                # 16k galaxies

The last printed line is one JSON object with the figures.

Every side (network alone per backend, each end-to-end run, Dask 1 and 2 workers) is timed in this
process, interleaved, ``--repeats`` times (>= 3); rates are quoted from the median and the best
repeat. The thread settings and a load check come first (``--require-idle`` refuses a loaded
machine; else ``"loaded": true`` in the JSON). ``--quick`` (1024 galaxies) leaves Dask out unless
``--dask`` is given (a cluster start per repeat does not fit in a minute).
"""

from __future__ import annotations

import logging
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from _common import parser
from _timing import add_timing_args, check_machine, emit_with_state, interleaved, rates, timing_figures


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
    # survey planes for the cube: variance (sky + a bright-pixel term, a few bad pixels) and a bad-pixel mask
    var = np.full((n, 61, 61), 0.06**2, np.float32)
    var[:, 0, :3] = 0.0  # zero variances: masked, never divided by
    mask = np.zeros((n, 61, 61), np.int16)
    mask[:, 60, 57:] = 1
    fits.PrimaryHDU(var).writeto(tmp / "variance.fits")
    fits.PrimaryHDU(mask).writeto(tmp / "mask.fits")
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
    p.add_argument("--n", type=int, default=None, help="galaxies (default 1024 quick, 16384 full)")
    p.add_argument("--dask", action="store_true", help="time Dask 1 and 2 workers also with --quick")
    add_timing_args(p)
    args = p.parse_args()
    warnings.simplefilter("ignore")
    logging.basicConfig(level=logging.WARNING)
    import distributed  # noqa: F401  (configures its loggers on import; quieten them afterwards)

    logging.getLogger("distributed").setLevel(logging.ERROR)
    n = args.n or (1024 if args.quick else 16384)
    threads = args.threads
    torch.set_num_threads(threads)
    state = check_machine(args, threads=threads)
    from galnet.models import create_model, save_model
    from galnet.predict import predict_catalog
    from galnet.predict.core import get_predictor

    figures: dict = {"n_galaxies": n, "threads": threads, "repeats": args.repeats}
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        torch.manual_seed(0)
        card = str(save_model(create_model("galnet-psf"), tmp / "model", "bench"))
        t0 = time.perf_counter()
        data = _make_inputs(tmp, n)
        print(f"inputs: {n} stamps, image {data['image_shape']} ({time.perf_counter() - t0:.1f} s to make)")
        sky = np.full(n, 0.06, np.float32)
        m = min(n, 8192)
        predictors = {}
        for backend in ("torch", "onnx"):
            t0 = time.perf_counter()
            predictors[backend] = get_predictor(card, backend, "cpu", threads)
            figures[f"model_load_{backend}_s"] = round(time.perf_counter() - t0, 2)
        common = {"model": card, "progress": False, "threads": threads, "batch_size": 512, "chunk_size": 4096}
        calls = {"n": 0}

        def e2e(inp, **kw):
            def run():
                calls["n"] += 1  # a new output each call: no resume, no overwrite check
                predict_catalog(tmp / inp, tmp / f"out{calls['n']}.fits", psf=tmp / "psf.fits",
                                **{**common, **kw})
            return run

        sides = {
            "network_torch": lambda: predictors["torch"].predict(data["cube"][:m], data["psf"], sky[:m],
                                                                 batch_size=512),
            "network_onnx": lambda: predictors["onnx"].predict(data["cube"][:m], data["psf"], sky[:m],
                                                               batch_size=512),
            "e2e_cube_torch": e2e("cube.fits", sky_sigma=0.06, backend="torch"),
            "e2e_cube_onnx": e2e("cube.fits", sky_sigma=0.06, backend="onnx"),
            "e2e_cube_onnx_sky_estimated": e2e("cube.fits", backend="onnx"),
            "e2e_cube_onnx_variance_mask": e2e("cube.fits", backend="onnx",
                                               source_kwargs={"variance": tmp / "variance.fits",
                                                              "mask": tmp / "mask.fits"}),
            "e2e_image_catalog_onnx": e2e("image.fits", catalog=tmp / "sources.fits", sky_sigma=0.06,
                                          backend="onnx"),
        }
        if args.dask or not args.quick:
            for w in (1, 2):
                sides[f"e2e_dask_{w}_workers"] = e2e("cube.fits", sky_sigma=0.06, backend="onnx", workers=w,
                                                     threads=1, chunk_size=2048)
        runs = interleaved(sides, repeats=args.repeats)
    for name, t in runs.items():
        figures.update(rates(t, m if name.startswith("network") else n, f"{name}_gal_per_s", digits=0))
    out_t, out_o = runs["network_torch"].result, runs["network_onnx"].result
    figures["onnx_vs_torch_max_abs_diff"] = float(np.abs(out_o - out_t).max())
    figures["timings"] = timing_figures(runs)
    for name in runs:
        print(f"{name}: {figures[name + '_gal_per_s']:,.0f} gal/s (median of {args.repeats}; best "
              f"{figures[name + '_gal_per_s_best']:,.0f})")
    emit_with_state(figures, state)

if __name__ == "__main__":
    main()
