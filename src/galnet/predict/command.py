"""``galnet predict``: measure galaxies with a trained network and write a galnet catalog.

Inputs: an HDF5 split from ``galnet simulate``; a FITS cube of stamps (with ``--psf``); a directory of FITS
cutouts; or a FITS image with ``--catalog`` (RA/Dec or x/y), from which 61x61 stamps are cut. Output rows
follow the input rows one to one; problems are flagged (``galnet.flags``), never dropped. Runs are written in
shards (``<output>.parts/``) and continue with ``--resume``; ``--workers``/``--dask`` spread them over Dask.
See docs/predict.md.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from ..options import (
    check_output_path,
    finite_float,
    nonnegative_float,
    nonnegative_int,
    positive_float,
    positive_int,
)

log = logging.getLogger(__name__)

__all__ = ["add_arguments", "run", "plot_quicklook", "summary_counts"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "input",
        help="HDF5 split (.h5), FITS stamp cube, directory of FITS cutouts, or FITS image (with --catalog)",
    )
    parser.add_argument(
        "-o", "--output", required=True, help="catalog (.fits default; .parquet, .csv, .ecsv)"
    )
    parser.add_argument(
        "--model", default="hsc-r", help="shipped model name or model card path (default hsc-r)"
    )
    _add_input_arguments(parser.add_argument_group("inputs"))
    _add_run_arguments(parser.add_argument_group("run"))


def _add_input_arguments(g) -> None:
    """Options of the input: catalog and its columns, PSF, noise, zero point, gain, pixel scale."""
    g.add_argument("--catalog", help="source catalog for an image input (FITS/CSV/ECSV/Parquet)")
    g.add_argument("--psf", help="PSF FITS: one image, or a cube with one PSF per row")
    g.add_argument("--psf-column", help="catalog column with a PSF FITS file per source")
    g.add_argument(
        "--sky-sigma", type=positive_float, help="sky noise, counts/px (default: input, else robust estimate)"
    )
    g.add_argument(
        "--sigma",
        metavar="FILE|HDU",
        help="per-pixel sigma, counts: a FITS cube (one plane per stamp) for a stamp cube or cutout "
        "folder; an image of the image's shape, or an HDU of the image file, with --catalog",
    )
    g.add_argument(
        "--variance",
        metavar="FILE|HDU",
        help="per-pixel variance, counts^2 (instead of --sigma); zero, negative or NaN variances are masked",
    )
    g.add_argument(
        "--mask",
        metavar="FILE|HDU",
        help="bad pixels (non-zero = bad), as --sigma; a bit-plane mask "
        "with MP_* plane names uses --mask-planes",
    )
    g.add_argument(
        "--mask-planes",
        metavar="LIST",
        help="comma-separated mask planes that exclude a pixel (HSC/LSST coadds; default "
        "NO_DATA,BAD,SAT,INTRP,EDGE,CR,SUSPECT). An HSC coadd (IMAGE, MASK, VARIANCE HDUs) is "
        "read with its variance and mask planes and FLUXMAG0 zero point automatically",
    )
    g.add_argument("--ra-col", help="catalog RA column (degrees; needs a WCS)")
    g.add_argument("--dec-col", help="catalog Dec column (degrees)")
    g.add_argument("--x-col", help="catalog x column (pixels)")
    g.add_argument("--y-col", help="catalog y column (pixels)")
    g.add_argument(
        "--xy-origin",
        type=int,
        choices=(0, 1),
        default=1,
        help="catalog x/y are 1-based (FITS, SExtractor; default) or 0-based (photutils)",
    )
    g.add_argument("--id-col", help="catalog id column (default: id/ID/NUMBER..., else the row number)")
    g.add_argument("--image-hdu", help="HDU of the image / cube (number or name)")
    g.add_argument(
        "--zeropoint",
        type=finite_float,
        help="input zero point, mag for 1 count (default: header/meta, else the model's)",
    )
    g.add_argument("--gain", type=positive_float, help="e-/count for the chi2 sigma (default: header/meta)")
    g.add_argument(
        "--pixel-scale", type=positive_float, help="arcsec/px for re_arcsec (default: meta/WCS, else 0.168)"
    )


def _add_run_arguments(r) -> None:
    """Options of the run: model runtime, sizes, refinement (:func:`_add_refine_arguments`), χ², shards,
    Dask, progress."""
    r.add_argument(
        "--backend",
        default="auto",
        choices=("auto", "onnx", "torch"),
        help="network runtime (auto: ONNX Runtime if installed)",
    )
    r.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    r.add_argument("--threads", type=positive_int, help="network threads (default: torch's)")
    r.add_argument("--batch-size", type=positive_int, default=512)
    r.add_argument("--chunk-size", type=positive_int, default=4096, help="rows per shard / Dask task")
    _add_refine_arguments(r)
    r.add_argument(
        "--symmetries",
        type=int,
        choices=(1, 4, 8),
        default=1,
        help="test-time symmetry averaging: average the network over 4 (flips) or 8 (flips and transposes) "
        "symmetric copies of each stamp; that many times the network's cost (default 1: none)",
    )
    r.add_argument(
        "--mask-neighbours",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="with --refine or --chi2: mask other sources on the stamp first, as galnet fit (default: yes)",
    )
    r.add_argument("--chi2", action="store_true", help="add chi2nu of the predicted model (renders it)")
    r.add_argument(
        "--high-chi2", type=nonnegative_float, default=1.5, help="chi2nu above which HIGH_CHI2 is set"
    )
    r.add_argument(
        "--detect-snr",
        type=nonnegative_float,
        default=3.0,
        help="rows whose detection S/N near the stamp centre is below this get NO_SOURCE and NaN "
        "values (galnet.detection; default 3; 0: no test)",
    )
    r.add_argument(
        "--allow-unverified-model",
        action="store_true",
        help="accept a model card without a weights sha256 checksum",
    )
    r.add_argument(
        "--save-models",
        action="store_true",
        help="write model and residual cubes to <output stem>.models.fits (implies --chi2)",
    )
    r.add_argument("--resume", action="store_true", help="continue an interrupted run from <output>.parts/")
    r.add_argument(
        "--max-chunks", type=positive_int, help="stop after this many new chunks (continue with --resume)"
    )
    r.add_argument(
        "--keep-parts", action="store_true", help="keep <output>.parts/ after the catalog is written"
    )
    r.add_argument("--workers", type=positive_int, help="local Dask cluster of N processes (1 thread each)")
    r.add_argument("--dask", metavar="ADDRESS", help="Dask scheduler address, e.g. tcp://scheduler:8786")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.add_argument(
        "--quicklook",
        metavar="PNG",
        help="also draw a quick-look plot (image + ellipses for an "
        "image input, else stamps / models / residuals)",
    )


def _add_refine_arguments(r) -> None:
    """Options of the refinement (``--refine K`` and what it does with each row)."""
    r.add_argument(
        "--refine",
        type=nonnegative_int,
        default=5,
        metavar="K",
        help="refine the network's answers with K batched Levenberg-Marquardt steps of the exact forward "
        "model (neighbours masked as in galnet fit); writes the fit's errors and chi2nu. Default 5: on real "
        "HSC galaxies the fitter's median chi2nu, at a few ms per galaxy. 0: the network alone, ~20x faster "
        "(docs/network.md: accuracy and speed of each K)",
    )
    r.add_argument(
        "--refine-finish",
        type=nonnegative_float,
        default=1.5,
        metavar="CHI2",
        help="with --refine: rows whose chi2nu after the K steps is above this are fitted on to convergence "
        "(as galnet fit) and keep the better answer (default 1.5; 0: K steps for every row)",
    )
    r.add_argument(
        "--refine-finish-iter",
        type=positive_int,
        default=30,
        metavar="N",
        help="with --refine: iteration limit of that finishing fit (default 30; galnet fit's is 100)",
    )
    r.add_argument(
        "--refine-workers",
        type=positive_int,
        metavar="N",
        help="with --refine: worker processes (one thread each) that share the refinement; the same "
        "parameters, errors and chi2nu for any N (default: the cores this process may use, 1 with --workers "
        "or --dask)",
    )
    r.add_argument(
        "--refine-sky",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="with --refine: fit a constant sky per stamp with the galaxy (writes sky, sky_err, counts/px); "
        "cut-outs of survey coadds rarely have a zero local background (default: yes)",
    )


def _hdu(value):
    if value is None:
        return None
    return int(value) if str(value).lstrip("-").isdigit() else value


def run(args: argparse.Namespace) -> int:
    from ..data.shards import parts_dir
    from .runner import PredictOptions, predict_catalog

    check_output_path(args.output, option="--output")
    if args.quicklook:
        check_output_path(args.quicklook, option="--quicklook")
    args._interrupt_hint = (
        f"finished shards are kept in {parts_dir(args.output)}/; "
        "rerun the same command with --resume to continue"
    )

    src_kw = {
        k: v
        for k, v in {
            "ra_col": args.ra_col,
            "dec_col": args.dec_col,
            "x_col": args.x_col,
            "y_col": args.y_col,
            "id_col": args.id_col,
            "psf_column": args.psf_column,
            "zeropoint": args.zeropoint,
            "gain": args.gain,
            "pixel_scale": args.pixel_scale,
            "image_hdu": _hdu(args.image_hdu),
            "sigma": _hdu(args.sigma),
            "variance": _hdu(args.variance),
            "mask": _hdu(args.mask),
            "mask_planes": None
            if args.mask_planes is None
            else [p for p in args.mask_planes.split(",") if p],
        }.items()
        if v is not None
    }
    if args.catalog:
        src_kw["xy_origin"] = args.xy_origin
    elif any(k in src_kw for k in ("ra_col", "dec_col", "x_col", "y_col", "id_col", "psf_column")):
        log.warning("catalog column options are ignored without --catalog")
        for k in ("ra_col", "dec_col", "x_col", "y_col", "id_col", "psf_column"):
            src_kw.pop(k, None)
    opts = PredictOptions(
        model=args.model,
        backend=args.backend,
        device=args.device,
        threads=args.threads,
        batch_size=args.batch_size,
        chunk_size=args.chunk_size,
        chi2=args.chi2 or args.save_models,
        high_chi2=args.high_chi2,
        save_models=args.save_models,
        progress=not args.no_progress,
        keep_parts=args.keep_parts,
        refiner=getattr(args, "refiner", None),
        pixels=getattr(args, "pixels", None),
        symmetries=args.symmetries,
        detect_snr=args.detect_snr,
        allow_unverified_model=args.allow_unverified_model,
    )
    table = predict_catalog(
        args.input,
        args.output,
        catalog=args.catalog,
        psf=args.psf,
        sky_sigma=args.sky_sigma,
        resume=args.resume,
        workers=args.workers,
        dask_address=args.dask,
        max_chunks=args.max_chunks,
        source_kwargs=src_kw,
        **{k: v for k, v in vars(opts).items()},
    )
    if table is None:
        print(f"galnet predict: stopped after {args.max_chunks} chunk(s); continue with --resume")
        return 0
    print(f"galnet predict: {summary_counts(table['flags'])} -> {args.output}")
    if args.quicklook:
        plot_quicklook(
            table, args.quicklook, image=args.input if args.catalog else None, image_hdu=_hdu(args.image_hdu)
        )
        print(f"galnet predict: quick-look plot -> {args.quicklook}")
    return 0


def summary_counts(flags) -> str:
    """``"N rows (M measured, a BAD_INPUT, b NO_SOURCE, c FAILED)"``: rows with any of
    :data:`galnet.flags.NOT_MEASURED` are not counted as measured."""
    from ..flags import Flag, any_set, measured

    flags = np.asarray(flags, dtype=np.int64)
    parts = [f"{int(measured(flags).sum())} measured"]
    for f in (Flag.BAD_INPUT, Flag.NO_SOURCE, Flag.FAILED):
        parts.append(f"{int(any_set(flags, f).sum())} {f.name}")
    return f"{len(flags)} rows ({', '.join(parts)})"


def plot_quicklook(table, path, *, image=None, image_hdu=None, max_ellipses: int = 500) -> Path:
    """A quick-look PNG of a predict catalog.

    Parameters
    ----------
    table : astropy Table
        Output of ``galnet predict``.
    path : path
        PNG to write.
    image : path, optional
        The FITS image of an image + catalog run: drawn (asinh stretch) with an ellipse per galaxy
        (semi-major ``re_pix``, axis ratio ``q``, angle ``pa`` from +y), next to histograms of mag, re, n, q.
        Without it only the histograms are drawn.
    image_hdu : int or str, optional
    max_ellipses : int
        At most this many ellipses (the brightest).

    Returns
    -------
    Path of the PNG.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Ellipse

    from ..flags import measured

    ok = measured(table["flags"])
    fig = plt.figure(figsize=(11, 5.2) if image is not None else (9, 3), layout="constrained")
    if image is not None:
        from astropy.io import fits

        gs = fig.add_gridspec(2, 4, width_ratios=[2.2, 2.2, 1, 1])
        ax = fig.add_subplot(gs[:, :2])
        with fits.open(image) as hdul:
            hdu = hdul[image_hdu] if image_hdu is not None else next(h for h in hdul if h.data is not None)
            data = np.asarray(hdu.data, dtype=float)
        finite = np.isfinite(data)
        med = np.median(data[finite])
        sig = 1.4826 * np.median(np.abs(data[finite] - med))
        ax.imshow(
            np.arcsinh((data - med) / (3 * sig)),
            origin="lower",
            cmap="gray_r",
            vmin=-1,
            vmax=np.percentile(np.arcsinh((data[finite] - med) / (3 * sig)), 99.7),
        )
        sel = np.flatnonzero(ok)
        sel = sel[np.argsort(np.asarray(table["mag"])[sel])][:max_ellipses]
        for i in sel:
            row = table[i]
            a = 2 * float(row["re_pix"])
            ax.add_patch(
                Ellipse(
                    (row["x"] - 1, row["y"] - 1),
                    width=a * float(row["q"]),
                    height=a,
                    angle=float(row["pa"]),
                    fill=False,
                    color="tab:red",
                    lw=1,
                )
            )
        for i in np.flatnonzero(~ok):
            if np.isfinite(table["x_in"][i]) if "x_in" in table.colnames else False:
                ax.plot(table["x_in"][i] - 1, table["y_in"][i] - 1, "x", color="tab:blue")
        ax.set_xlim(-0.5, data.shape[1] - 0.5)
        ax.set_ylim(-0.5, data.shape[0] - 0.5)
        model = table.meta.get("MODEL", "?")
        ax.set_title(f"{Path(image).name}: {int(ok.sum())} galaxies, model {model}\n(ellipses: 2 re, q, pa)")
        ax.set_xlabel("x - 1 (pixels)")
        ax.set_ylabel("y - 1 (pixels)")
        cells = [gs[0, 2], gs[0, 3], gs[1, 2], gs[1, 3]]
    else:
        gs = fig.add_gridspec(1, 4)
        cells = [gs[0, i] for i in range(4)]
    for cell, (col, label) in zip(
        cells, [("mag", "mag"), ("re_pix", "re (px)"), ("n", "Sérsic n"), ("q", "q")]
    ):
        a = fig.add_subplot(cell)
        v = np.asarray(table[col], dtype=float)[ok]
        v = v[np.isfinite(v)]
        a.hist(v, bins=max(5, min(30, v.size // 2 or 1)), color="0.4")
        a.set_xlabel(label)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
