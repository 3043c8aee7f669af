"""The batched, resumable, sharded prediction runner.

How a run goes
--------------
1. The input (an :class:`~galnet.data.InputSource`) is cut into chunks of ``chunk_size`` rows.
2. A reader thread reads and prepares the next chunks (``prefetch`` of them) while the network measures the
   current one, in batches of ``batch_size`` (I/O overlapped with compute; memory bounded by the chunk size).
3. Each finished chunk is written atomically as one shard ``<output>.parts/part-<start>.npz`` (and
   ``models-<start>.npz`` with ``save_models``). A ``manifest.json`` fingerprints the input, the model and the
   options, so that ``resume=True`` skips the shards already written and refuses to mix runs.
4. At the end the shards are assembled into the catalog (:func:`galnet.catalog.make_catalog`), after checking
   that every input row appears exactly once; the parts directory is removed unless ``keep_parts``.

With ``workers`` or ``dask_address`` the chunks are spread over Dask workers (:mod:`galnet.predict.dask`),
each of which loads the model once and writes its own shards: the catalog is the same. What measures one
chunk is :mod:`galnet.predict.core`'s; reading is :mod:`galnet.data`'s, the shards and the manifest are
:mod:`galnet.data.shards`'.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..catalog import check_table_writable, make_catalog, table_format, write_table
from ..data import ArraySource, InputSource, open_source
from ..data.shards import (
    MANIFEST_VERSION,
    ResumeError,
    chunk_bounds,
    done_chunks,
    load_shards,
    parts_dir,
    prepare_parts,
    shard_path,
    write_shard,
)
from ..errors import ConfigError, InputDataError
from ..io import atomic_write
from ..params import N_PARAMS
from .core import card_path, chunk_kwargs, get_predictor, process_chunk, resolve_backend, run_context

log = logging.getLogger(__name__)

__all__ = [
    "PredictOptions",
    "PredictError",
    "predict_source",
    "predict_catalog",
    "predict_arrays",
    "assemble",
    "models_path",
    "model_identity",
    "validate_options",
]


class PredictError(ResumeError):
    """A prediction run cannot continue or its shards are inconsistent (lost or duplicated rows)."""


@dataclass
class PredictOptions:
    """Options of a prediction run.

    Attributes
    ----------
    model : str
        Shipped model name (``"hsc-r"``) or path to a model card (``.json``) or its directory.
    backend : {"auto", "onnx", "torch"}
        ``"auto"``: ONNX Runtime when installed (≈1.5–2× faster on CPU, equal to torch within 1e-5),
        else torch eager.
    device : str
        torch device (``"cpu"``, ``"cuda"``); ONNX runs on the CPU.
    threads : int or None
        Intra-op threads of the network (None: leave torch's setting).
    batch_size : int
        Galaxies per network call.
    chunk_size : int
        Rows per shard (the unit of reading, resuming and Dask tasks).
    prefetch : int
        Chunks read ahead by the reader thread.
    chi2 : bool
        Render the predicted model (:func:`galnet.render.render_sersic`) and add ``chi2nu``.
    high_chi2 : float
        ``chi2nu`` above which ``HIGH_CHI2`` is set.
    save_models : bool
        Also write model and residual cubes (``<output stem>.models.fits``; implies ``chi2``).
    progress : bool
        Show a tqdm progress bar (galaxies / s).
    keep_parts : bool
        Keep ``<output>.parts/`` after the catalog is written.
    refiner : callable, optional
        Refines the network's answers with the exact forward model: ``galnet.fit.Refiner(k)`` (K batched
        Levenberg–Marquardt steps, neighbours masked; ``galnet predict --refine K``). Called as
        ``refiner(images, psfs, start, sky_sigma=, sigma=, mask=, gain=, zeropoint=, start_errors=)`` (the
        network's errors) and returning ``(FitResult, n_masked)``. The refined rows get the fit's parameters,
        errors (covariance, correlated-noise and blend terms: :mod:`galnet.fit.uncertainty`) and
        ``chi2nu`` (over the unmasked pixels, σ as ``galnet fit``'s). None: the network alone, whose errors
        are its own predicted ones (NaN for a network without an uncertainty head).
    pixels : callable, optional
        The σ map and mask ``chi2nu`` is computed on (without ``refiner``): ``galnet.fit.FitPixels()``, the
        pixels and σ of ``galnet fit`` (neighbours masked), which the command line passes with ``--chi2``, so
        that predict's and fit's ``chi2nu`` compare. Called as ``pixels(images, psfs, centre, sky_sigma=,
        sigma=, mask=, gain=)`` → ``(sigma, mask, n_masked)``. None: σ from the sky σ (and the model's
        Poisson noise with a gain) on every valid pixel.
    symmetries : {1, 4, 8}
        Test-time symmetry averaging of the network (:class:`galnet.models.Predictor`): that many network
        passes per galaxy.
    detect_snr : float
        Rows whose matched-filter detection S/N near the stamp centre is below this get ``NO_SOURCE`` and NaN
        values (:mod:`galnet.detection`; default 3; 0 disables the test).
    allow_unverified_model : bool
        Accept a model card without a ``weights.sha256`` checksum (refused by default: its weights cannot be
        verified).
    """

    model: str = "hsc-r"
    backend: str = "auto"
    device: str = "cpu"
    threads: int | None = None
    batch_size: int = 512
    chunk_size: int = 4096
    prefetch: int = 1
    chi2: bool = False
    high_chi2: float = 1.5
    save_models: bool = False
    progress: bool = True
    keep_parts: bool = False
    detect_snr: float = 3.0
    allow_unverified_model: bool = False
    refiner: Any = None
    symmetries: int = 1
    pixels: Any = None

    @property
    def refine(self) -> int:
        """Number of refinement steps (0: the network alone)."""
        return int(getattr(self.refiner, "k", 0)) if self.refiner is not None else 0


def validate_options(options: PredictOptions) -> None:
    """Check the numeric options of a run before any work (the CLI checks them at parse time too).

    Raises
    ------
    ConfigError
        Naming the option and the value.
    """
    import math

    for name in ("batch_size", "chunk_size", "prefetch"):
        v = getattr(options, name)
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ConfigError(f"{name} must be a positive integer, got {v!r}")
    th = options.threads
    if th is not None and (isinstance(th, bool) or not isinstance(th, (int, np.integer)) or th < 1):
        raise ConfigError(f"threads must be a positive integer, got {options.threads!r}")
    for name in ("high_chi2", "detect_snr"):
        v = getattr(options, name)
        if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ConfigError(f"{name} must be a finite number >= 0, got {v!r}")


# ============================================================================== shards
def _manifest(source: InputSource, options: PredictOptions, card: dict, card_file: str,
              output: Path) -> dict[str, Any]:
    """Every input identity and option that changes a result (see :mod:`galnet.data.shards`)."""
    return {
        "manifest_version": MANIFEST_VERSION,
        "tool": "galnet predict",
        "input": source.fingerprint(),
        "n_rows": source.n_rows,
        **source.settings(),
        "chunk_size": options.chunk_size,
        "batch_size": options.batch_size,
        "model": model_identity(card, card_file),
        "backend": resolve_backend(options.backend),
        "device": str(options.device),
        "chi2": bool(options.chi2 or options.save_models),
        "high_chi2": float(options.high_chi2),
        "save_models": bool(options.save_models),
        "detect_snr": float(options.detect_snr),
        "refine": options.refine,
        "refine_finish": getattr(options.refiner, "finish_chi2", None),
        "refine_sky": bool(getattr(options.refiner, "fit_sky", False)),
        "refine_finish_iter": getattr(options.refiner, "finish_max_iter", None),
        "chi2_pixels": None if options.pixels is None else repr(options.pixels),
        "symmetries": options.symmetries,
        "output": output.name,
    }


def model_identity(card: dict, card_file: str | os.PathLike) -> dict[str, Any]:
    """Name, weights SHA-256 (from the card, else computed) and card SHA-256 of a model, for manifests."""
    import hashlib

    path = Path(card_file)
    weights = (card.get("weights") or {})
    sha = weights.get("sha256")
    if not sha:
        wpath = path.parent / str(weights.get("file", path.with_suffix(".safetensors").name))
        sha = hashlib.sha256(wpath.read_bytes()).hexdigest() if wpath.is_file() else None
    card_sha = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
    return {"name": card.get("name"), "weights_sha256": sha, "card_sha256": card_sha}


# ============================================================================== the run
def _reader(source: InputSource, todo: list[tuple[int, int]], q: queue.Queue, stop: threading.Event) -> None:
    try:
        for start, end in todo:
            if stop.is_set():
                return
            item: Any = source.read_chunk(start, end)
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.2)
                    break
                except queue.Full:
                    continue
    except BaseException as exc:  # noqa: BLE001 - handed to the main thread
        q.put(exc)
        return
    q.put(None)


def _progress(options: PredictOptions, total: int, initial: int):
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        unit="gal",
        unit_scale=True,
        disable=not options.progress,
        desc="galnet predict",
        smoothing=0.1,
        dynamic_ncols=True,
    )


def predict_source(
    source: InputSource,
    output: str | os.PathLike,
    options: PredictOptions | None = None,
    *,
    resume: bool = False,
    max_chunks: int | None = None,
    on_chunk: Callable[[int, int], None] | None = None,
    workers: int | None = None,
    dask_address: str | None = None,
    dask_processes: bool = True,
):
    """Measure every row of ``source`` and write the catalog ``output``.

    Parameters
    ----------
    source : InputSource
        From :func:`galnet.data.open_source` (or a source class of :mod:`galnet.data`).
    output : path
        Catalog file; the format follows the extension (``.fits`` default, ``.parquet``, ``.csv``, ``.ecsv``).
    options : PredictOptions
    resume : bool
        Continue an interrupted run from the shards in ``<output>.parts/`` (same input, model and options).
    max_chunks : int, optional
        Stop after computing this many new chunks (without writing the catalog); for time-limited jobs.
    on_chunk : callable(start, stop), optional
        Called after each shard is written (progress hooks; tests raise from it to simulate a crash).
    workers : int, optional
        Run on a local Dask cluster of this many worker processes (1 thread each).
    dask_address : str, optional
        Run on an existing Dask scheduler (``tcp://host:8786``).
    dask_processes : bool
        Local cluster with processes (True) or threads (False).

    Returns
    -------
    astropy.table.Table (the catalog written), or None when stopped by ``max_chunks`` before the end.

    Raises
    ------
    PredictError
        Resuming with a different input/model/options, or rows lost or duplicated when assembling.
    """
    options = options or PredictOptions()
    output = Path(output)
    _check_run(source, output, options, max_chunks)
    t0 = time.perf_counter()
    card_file = card_path(options.model)
    predictor = get_predictor(
        card_file, resolve_backend(options.backend), options.device, options.threads,
        options.allow_unverified_model, options.symmetries,
    )
    card = predictor.card
    source.stamp_size, source.psf_size = predictor.image_size, predictor.psf_size
    pdir = parts_dir(output)
    prepare_parts(pdir, _manifest(source, options, card, card_file, output), resume, error=PredictError)
    bounds = chunk_bounds(source.n_rows, options.chunk_size)
    done = done_chunks(pdir, bounds, need_models=options.save_models) if resume else set()
    todo = [b for b in bounds if b[0] not in done]
    if max_chunks is not None:
        todo = todo[:max_chunks]
    n_done_rows = sum(stop - start for start, stop in bounds if start in done)
    if done:
        log.info("resuming: %d of %d chunks already done", len(done), len(bounds))
    ctx = run_context(source, card)
    if workers or dask_address:
        from .dask import run_chunks_dask

        run_chunks_dask(
            source,
            todo,
            options,
            pdir,
            ctx,
            workers=workers,
            address=dask_address,
            processes=dask_processes,
            progress=_progress(options, source.n_rows, n_done_rows),
            on_chunk=on_chunk,
        )
    else:
        _run_chunks_local(source, todo, options, pdir, ctx, predictor, n_done_rows, on_chunk)
    remaining = [b for b in bounds if b[0] not in done and b not in todo]
    if remaining:
        log.info("stopped after %d chunk(s); %d left (run again with --resume)", len(todo), len(remaining))
        return None
    table = assemble(source, pdir, bounds, options, card, ctx, output)
    dt = time.perf_counter() - t0
    log.info("%d galaxies in %.1f s (%.0f /s) -> %s", len(table), dt, len(table) / max(dt, 1e-9), output)
    if not options.keep_parts:
        shutil.rmtree(pdir, ignore_errors=True)
    return table


def _check_run(source: InputSource, output: Path, options: PredictOptions, max_chunks: int | None) -> None:
    """Everything that can be refused before any computation: options, output path and format, an empty
    input, ids and carried columns the catalog's format cannot hold."""
    from ..options import check_output_path

    validate_options(options)
    table_format(output)  # fail early on an unknown extension
    check_output_path(output)  # ... and on an output that cannot be written: before any computation
    if max_chunks is not None and max_chunks < 1:
        raise ConfigError(f"max_chunks must be a positive integer, got {max_chunks!r}")
    if source.n_rows == 0:
        raise InputDataError(f"{source.describe()}: no rows to measure (empty input)")
    # the columns the catalog will have must be writable in its format (e.g. ASCII for FITS)
    check_table_writable(output, source.id_sample(), source.carried_columns())


def _run_chunks_local(source, todo, options, pdir, ctx, predictor, n_done_rows, on_chunk) -> None:
    q: queue.Queue = queue.Queue(maxsize=max(1, options.prefetch))
    stop = threading.Event()
    reader = threading.Thread(
        target=_reader, args=(source, todo, q, stop), daemon=True, name="galnet-predict-reader"
    )
    reader.start()
    kw = chunk_kwargs(options, ctx, source)
    bar = _progress(options, source.n_rows, n_done_rows)
    try:
        while True:
            item = q.get()
            if item is None:
                break
            if isinstance(item, BaseException):
                raise item
            result = process_chunk(item, predictor, **kw)
            write_shard(pdir, result)
            bar.update(len(item))
            if on_chunk is not None:
                on_chunk(item.start, item.stop)
    finally:
        stop.set()
        bar.close()
        reader.join(timeout=5)


def assemble(
    source: InputSource,
    pdir: Path,
    bounds: list[tuple[int, int]],
    options: PredictOptions,
    card: dict,
    ctx: dict,
    output: Path,
):
    """Read every shard, check each row appears exactly once, write and return the catalog."""
    from ..conventions import HSC_PIXEL_SCALE

    parts = load_shards(pdir, bounds, source.n_rows, error=PredictError)

    def cat(key):
        return np.concatenate([p[key] for p in parts]) if parts else np.zeros(0)

    params = cat("params").reshape(-1, N_PARAMS)
    extra: dict[str, Any] = {}
    if "ra" in parts[0]:
        extra["ra"], extra["dec"] = cat("ra"), cat("dec")
    for key in ("chi2nu", "niter", "n_masked", "sky", "sky_err"):
        if key in parts[0]:
            extra[key] = cat(key)
    for k in parts[0]:
        if k.startswith("col:"):
            extra[k[4:]] = cat(k)
    pixel_scale = source.meta.get("pixel_scale") or HSC_PIXEL_SCALE
    meta = {
        "MODEL": str(card.get("name", "?")),
        "MODELSHA": str((card.get("weights") or {}).get("sha256", ""))[:16],
        "INPUT": source.kind,
        "XYFRAME": "image" if source.kind == "image+catalog" else "stamp",
        "BACKEND": resolve_backend(options.backend),
        "NETZP": ctx["zp_model"],
        "REFINE": options.refine,
        "REFSKY": bool(getattr(options.refiner, "fit_sky", False)),
    }
    table = make_catalog(
        cat("ids"),
        params,
        errors=cat("errors").reshape(-1, N_PARAMS) if "errors" in parts[0] else None,
        flags=cat("flags"),
        pixel_scale=float(pixel_scale),
        zeropoint=ctx["zp_in"],
        extra=extra,
        meta=meta,
    )
    if "ra" in extra:
        import astropy.units as u

        table["ra"].unit = u.deg
        table["dec"].unit = u.deg
    write_table(table, output)
    if options.save_models:
        _write_models(pdir, bounds, output)
    return table


def models_path(output: str | os.PathLike) -> Path:
    """``<output stem>.models.fits``: the model and residual cubes of ``save_models``."""
    output = Path(output)
    name = output.name
    for ext in (".fits.gz", ".fits", ".fit", ".parquet", ".ecsv", ".csv"):
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
            break
    return output.with_name(name + ".models.fits")


def _write_models(pdir: Path, bounds, output: Path) -> Path:
    from astropy.io import fits

    models, resid = [], []
    for start, _ in bounds:
        with np.load(shard_path(pdir, start, "models")) as z:
            models.append(z["model"])
            resid.append(z["resid"])
    path = models_path(output)
    hdul = fits.HDUList(
        [
            fits.PrimaryHDU(),
            fits.ImageHDU(np.concatenate(models), name="MODEL"),
            fits.ImageHDU(np.concatenate(resid), name="RESID"),
        ]
    )
    hdul[1].header["BUNIT"] = "counts"
    hdul[1].header["COMMENT"] = "predicted Sersic x PSF model of each stamp (row order of the catalog)"
    hdul[2].header["COMMENT"] = "stamp - model (NaN where masked)"
    return atomic_write(path, lambda tmp: hdul.writeto(tmp, overwrite=True))


# ============================================================================== convenience API
def predict_catalog(
    input_path,
    output,
    *,
    model: str = "hsc-r",
    catalog=None,
    psf=None,
    sky_sigma=None,
    resume: bool = False,
    workers: int | None = None,
    dask_address: str | None = None,
    dask_processes: bool = True,
    max_chunks: int | None = None,
    on_chunk: Callable[[int, int], None] | None = None,
    source_kwargs: dict | None = None,
    **options,
):
    """Measure galaxies from files and write a catalog (the Python form of ``galnet predict``).

    Parameters
    ----------
    input_path : path
        HDF5 split, FITS stamp cube, directory of FITS cutouts, or FITS image (with ``catalog``).
    output : path
        Catalog (``.fits`` default; ``.parquet``, ``.csv``, ``.ecsv``).
    model : str
        ``"hsc-r"`` or a model card path.
    catalog : path or Table, optional
        Source catalog for an image input (RA/Dec or x/y columns).
    psf : path or ndarray, optional
        PSF image or cube (FITS cube / cutouts / image inputs).
    sky_sigma : float, optional
        Sky σ, counts / pixel (default: from the input, else estimated robustly).
    source_kwargs : dict, optional
        More arguments of the reader (``ra_col``, ``x_col``, ``psf_column``, ``zeropoint``, ``gain`` ...).
    **options
        Fields of :class:`PredictOptions` (``backend``, ``batch_size``, ``chunk_size``, ``chi2`` ...).

    Returns
    -------
    astropy.table.Table, or None if stopped early by ``max_chunks``.

    Examples
    --------
    >>> from galnet.predict import predict_catalog
    >>> cat = predict_catalog("field.fits", "field_galnet.fits", catalog="sources.csv",
    ...                       psf="psf.fits", chi2=True)                                # doctest: +SKIP
    """
    opts = PredictOptions(model=str(model), **options)
    source = open_source(input_path, catalog=catalog, psf=psf, sky_sigma=sky_sigma, **(source_kwargs or {}))
    return predict_source(
        source,
        output,
        opts,
        resume=resume,
        max_chunks=max_chunks,
        on_chunk=on_chunk,
        workers=workers,
        dask_address=dask_address,
        dask_processes=dask_processes,
    )


def predict_arrays(
    images,
    psfs,
    sky_sigma=None,
    *,
    model: str = "hsc-r",
    ids=None,
    zeropoint: float | None = None,
    gain: float | None = None,
    pixel_scale: float | None = None,
    chi2: bool = False,
    backend: str = "auto",
    batch_size: int = 512,
    threads: int | None = None,
    device: str = "cpu",
    detect_snr: float = 3.0,
    allow_unverified_model: bool = False,
):
    """Measure in-memory stamps; same checks, flags and columns as :func:`predict_catalog`, no files.

    Parameters
    ----------
    images : ndarray, shape (B, H, W), counts (sky-subtracted)
        NaN pixels are masked, other sizes cropped/padded.
    psfs : ndarray, shape (P, P) or (B, P, P), effective PSF(s) (renormalised / re-centred if needed)
    sky_sigma : float or ndarray (B,), optional
        Counts / pixel; estimated from the stamp borders (MAD) if omitted.
    model : str
        ``"hsc-r"`` or a model card path.
    ids : array_like (B,), optional
    zeropoint, gain, pixel_scale : float, optional
        Of the input (zero point default: the model's).
    chi2 : bool
        Add ``chi2nu`` (renders each prediction).
    detect_snr : float
        ``NO_SOURCE`` threshold (see :class:`PredictOptions`).
    allow_unverified_model : bool
        Accept a model card without a weights checksum.

    Returns
    -------
    astropy.table.Table: ``id, x, y`` (1-based stamp frame), ``mag, re_pix, re_arcsec, n, q, pa``, their
    ``<column>_err`` (the network's calibrated 1-σ errors, as ``galnet predict --refine 0`` writes them),
    [``chi2nu``], ``flags``.
    """
    from ..conventions import HSC_PIXEL_SCALE

    opts = PredictOptions(model=str(model), backend=backend, chi2=chi2, batch_size=batch_size,
                          threads=threads, detect_snr=detect_snr)
    validate_options(opts)
    pred = get_predictor(card_path(model), resolve_backend(backend), device, threads, allow_unverified_model)
    src = ArraySource(
        images, psfs, sky_sigma, ids, {"zeropoint": zeropoint, "gain": gain, "pixel_scale": pixel_scale}
    )
    src.stamp_size, src.psf_size = pred.image_size, pred.psf_size
    ctx = run_context(src, pred.card)
    res = process_chunk(src.read_chunk(0, src.n_rows), pred, **chunk_kwargs(opts, ctx, src))
    extra = {"chi2nu": res["chi2nu"]} if "chi2nu" in res else None
    return make_catalog(
        res["ids"],
        res["params"],
        errors=res.get("errors"),
        flags=res["flags"],
        pixel_scale=pixel_scale or HSC_PIXEL_SCALE,
        zeropoint=ctx["zp_in"],
        extra=extra,
        meta={"MODEL": str(pred.card.get("name", "?"))},
    )

