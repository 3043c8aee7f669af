"""The batched, resumable, sharded prediction runner.

How a run goes
--------------
1. The input (an :class:`~galnet.predict.inputs.InputSource`) is cut into chunks of ``chunk_size`` rows.
2. A reader thread reads and prepares the next chunks (``prefetch`` of them) while the network measures the
   current one, in batches of ``batch_size`` (I/O overlapped with compute; memory bounded by the chunk size).
3. Each finished chunk is written atomically as one shard ``<output>.parts/part-<start>.npz`` (and
   ``models-<start>.npz`` with ``save_models``). A ``manifest.json`` fingerprints the input, the model and the
   options, so that ``resume=True`` skips the shards already written and refuses to mix runs.
4. At the end the shards are assembled into the catalog (:func:`galnet.catalog.make_catalog`), after checking
   that every input row appears exactly once; the parts directory is removed unless ``keep_parts``.

With ``workers`` or ``dask_address`` the chunks are spread over Dask workers (:mod:`galnet.predict.dask`),
each of which loads the model once and writes its own shards: the catalog is the same.
"""

from __future__ import annotations

import functools
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

from ..errors import ConfigError, GalnetError, InputDataError, ModelCardError
from ..flags import Flag
from ..manifest import (
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
from .inputs import Chunk, InputSource, open_source

log = logging.getLogger(__name__)

__all__ = [
    "PredictOptions",
    "PredictError",
    "predict_source",
    "predict_catalog",
    "predict_arrays",
    "process_chunk",
    "training_prior",
    "model_zeropoint",
    "get_predictor",
    "resolve_backend",
    "parts_dir",
    "chunk_bounds",
    "write_shard",
    "load_shards",
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
        ``refiner(images, psfs, start, sky_sigma=, sigma=, mask=, gain=, zeropoint=)`` and returning
        ``(FitResult, n_masked)``. The refined rows get the fit's parameters, covariance errors and
        ``chi2nu`` (over the unmasked pixels, σ as ``galnet fit``'s). None: the network alone, whose errors
        are its own predicted ones (NaN for a network without an uncertainty head).
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


# ============================================================================== model helpers
def resolve_backend(backend: str) -> str:
    """``"auto"`` → ``"onnx"`` if onnxruntime is importable, else ``"torch"``; others unchanged."""
    if backend == "auto":
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return "torch"
        return "onnx"
    if backend not in ("torch", "onnx"):
        raise InputDataError(f"backend must be 'auto', 'torch' or 'onnx', got {backend!r}")
    return backend


@functools.lru_cache(maxsize=4)
def get_predictor(card_path: str, backend: str, device: str = "cpu", threads: int | None = None,
                  allow_unverified: bool = False, symmetries: int = 1):
    """A :class:`galnet.models.Predictor`, loaded once per process (cached: Dask workers reuse it).

    Parameters
    ----------
    card_path : str
        JSON model card.
    backend, device, threads
        See :class:`PredictOptions`.
    allow_unverified : bool
        Accept a card without a ``weights.sha256`` checksum.
    symmetries : {1, 4, 8}
        Test-time symmetry averaging (:class:`galnet.models.Predictor`).

    Raises
    ------
    ModelCardError
        The card has no checksum (and ``allow_unverified`` is False), or the card or its weights cannot be
        loaded (corrupt, not safetensors, a pickle ...): the message names the file.
    """
    import torch

    from ..models import Predictor, load_card

    if threads:
        torch.set_num_threads(int(threads))
    try:
        model, card = load_card(card_path, device=device, require_checksum=not allow_unverified)
    except GalnetError:
        raise
    except Exception as exc:  # noqa: BLE001 - safetensors / torch raise many types for bad weights
        raise ModelCardError(
            f"{card_path}: cannot load the model weights ({type(exc).__name__}: {exc})") from exc
    return Predictor(model, card, device=device, backend=resolve_backend(backend), num_threads=threads,
                     symmetries=symmetries)


def _card_dataset_meta(card: dict) -> dict:
    tr = card.get("training") or {}
    meta = tr.get("dataset_meta") or {}
    return meta if isinstance(meta, dict) else {}


def model_zeropoint(card: dict) -> float:
    """Zero point (mag for 1 count) of the network's training data: card, else its preset, else 27."""
    from ..conventions import DEFAULT_ZEROPOINT

    meta = _card_dataset_meta(card)
    for v in (
        card.get("zeropoint"),
        meta.get("zeropoint"),
        (meta.get("preset") or {}).get("zeropoint") if isinstance(meta.get("preset"), dict) else None,
    ):
        if isinstance(v, (int, float)):
            return float(v)
    return DEFAULT_ZEROPOINT


def training_prior(card: dict, stamp_size: int = 61) -> dict[str, tuple[float, float]]:
    """The box of the training prior, per parameter, in the model-stamp frame.

    Read from the card (``prior`` entry, or the simulation config stored under
    ``training.dataset_meta.preset`` / ``training.preset``); else the ``hsc-r`` preset priors.

    Returns
    -------
    dict ``name → (low, high)`` for ``x, y`` (1-based stamp pixels), ``mag`` (model zero point), ``re``
    (pixels), ``n``, ``q``; ``pa`` is cyclic and never out of prior.
    """
    from ..simulate.config import SimulationConfig, load_preset

    if isinstance(card.get("prior"), dict):
        return {k: (float(v[0]), float(v[1])) for k, v in card["prior"].items()}
    cfg = None
    meta = _card_dataset_meta(card)
    tr = card.get("training") or {}
    for cand in (meta.get("preset"), tr.get("preset")):
        try:
            if isinstance(cand, dict):
                cfg = SimulationConfig.from_dict(cand)
            elif isinstance(cand, str) and cand:
                cfg = load_preset(cand)
        except GalnetError as exc:
            log.debug("training prior from card entry failed: %s", exc)
            cfg = None
        if cfg is not None:
            break
    if cfg is None:
        cfg = load_preset("hsc-r")
    pr = cfg.priors
    c = (stamp_size + 1) / 2

    def box(prior, scale: float = 1.0) -> tuple[float, float]:
        lo, hi = prior.low, prior.high
        if prior.kind == "fixed":
            lo = hi = prior.value
        elif prior.kind == "table":
            t = prior.table()
            lo, hi = float(np.min(t)), float(np.max(t))
        lo = -np.inf if lo is None else float(lo) * scale
        hi = np.inf if hi is None else float(hi) * scale
        return lo, hi

    dx, dy = box(pr.dx), box(pr.dy)
    re_lo, re_hi = box(pr.re_arcsec, 1.0 / cfg.pixel_scale)
    re_hi = min(re_hi, pr.re_max_fraction * (stamp_size - 1) / 2)
    return {
        "x": (c + dx[0], c + dx[1]),
        "y": (c + dy[0], c + dy[1]),
        "mag": box(pr.mag),
        "re": (re_lo, re_hi),
        "n": box(pr.n),
        "q": box(pr.q),
    }


def _out_of_prior(params: np.ndarray, prior: dict[str, tuple[float, float]]) -> np.ndarray:
    from ..params import index

    out = np.zeros(len(params), bool)
    for name, (lo, hi) in prior.items():
        if name == "pa":
            continue
        col = params[:, index(name)]
        out |= (col < lo) | (col > hi)
    return out


# ============================================================================== one chunk
def _render_chi2(
    chunk: Chunk,
    params: np.ndarray,
    ok: np.ndarray,
    *,
    zeropoint: float,
    gain: float | None,
    want_models: bool,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """chi2nu (B,), model cube (B, S, S) or None, BAD_SIGMA rows (B,) for the rows ``ok``."""
    import torch

    from ..params import bad_parameter_rows
    from ..render import render_sersic

    b, s = len(chunk), chunk.images.shape[-1]
    chi2nu = np.full(b, np.nan)
    models = np.full((b, s, s), np.nan, np.float32) if want_models else None
    bad_sig = np.zeros(b, bool)
    bad_par, _ = bad_parameter_rows(params)
    rows = np.flatnonzero(ok & ~bad_par)
    for start in range(0, rows.size, 256):
        r = rows[start : start + 256]
        with torch.inference_mode():
            m = render_sersic(
                torch.as_tensor(params[r], dtype=torch.float32),
                torch.as_tensor(chunk.psfs[r]),
                shape=(s, s),
                zeropoint=zeropoint,
                validate=False,
            ).numpy()
        if models is not None:
            models[r] = m
        img = chunk.images[r].astype(np.float64)
        if chunk.sigma_maps is not None:
            sig = chunk.sigma_maps[r].astype(np.float64)
        else:
            var = chunk.sky_sigma[r].astype(np.float64)[:, None, None] ** 2
            if gain:
                var = var + np.maximum(m, 0.0) / float(gain)
            sig = np.sqrt(np.broadcast_to(var, img.shape))
        good = np.isfinite(sig) & (sig > 0)
        if chunk.mask is not None:
            good &= ~chunk.mask[r]
        bad_sig[r] = (~(np.isfinite(sig) & (sig > 0))).reshape(len(r), -1).any(axis=1)
        resid2 = np.where(good, (img - m) / np.where(good, sig, 1.0), 0.0) ** 2
        ndof = good.reshape(len(r), -1).sum(axis=1) - params.shape[1]
        with np.errstate(invalid="ignore", divide="ignore"):
            chi2nu[r] = np.where(ndof > 0, resid2.reshape(len(r), -1).sum(axis=1) / ndof, np.nan)
    return chi2nu, models, bad_sig


def _refine(chunk: Chunk, refiner, params: np.ndarray, errors: np.ndarray, flags: np.ndarray,
            ok: np.ndarray, *, zeropoint: float, gain: float | None, high_chi2: float) -> dict[str, Any]:
    """Refine the rows ``ok`` in place (params, errors, flags); returns ``chi2nu``, ``niter``, ``n_masked``.

    A row whose refinement fails (non-finite result) keeps the network's answer and is flagged
    ``NOT_CONVERGED``.
    """
    b = len(chunk)
    chi2nu = np.full(b, np.nan)
    niter = np.zeros(b, dtype=np.int64)
    n_masked = np.zeros(b, dtype=np.int64)
    idx = np.flatnonzero(ok & np.all(np.isfinite(params), axis=1))
    if idx.size:
        psfs = chunk.psfs if chunk.psfs.ndim == 2 else chunk.psfs[idx]
        res, nm = refiner(
            chunk.images[idx], psfs, params[idx],
            sky_sigma=chunk.sky_sigma[idx],
            sigma=None if chunk.sigma_maps is None else chunk.sigma_maps[idx],
            mask=None if chunk.mask is None else chunk.mask[idx],
            gain=gain, zeropoint=zeropoint,
        )
        good = np.all(np.isfinite(res.params), axis=1)
        params[idx[good]] = res.params[good]
        errors[idx[good]] = res.errors[good]
        errors[idx[~good]] = np.nan
        chi2nu[idx] = res.chi2nu
        niter[idx] = res.niter
        n_masked[idx] = nm
        # the network's answer stands where the refinement failed: not BAD_INPUT / FAILED / NO_SOURCE
        fit_flags = res.flags & ~int(Flag.BAD_INPUT | Flag.FAILED | Flag.NO_SOURCE)
        flags[idx] |= fit_flags
        flags[idx[~good]] |= int(Flag.NOT_CONVERGED)
        for i in np.flatnonzero(~good):
            log.warning("id %s: refinement failed (%s); the network's answer is kept",
                        chunk.ids[idx[i]], res.messages[i].strip().rstrip(";") or "no finite result")
    flags[np.nan_to_num(chi2nu, nan=0.0) > high_chi2] |= int(Flag.HIGH_CHI2)
    return {"chi2nu": chi2nu, "niter": niter, "n_masked": n_masked}


def process_chunk(
    chunk: Chunk,
    predictor,
    *,
    prior: dict | None,
    zp_in: float,
    zp_model: float,
    gain: float | None = None,
    batch_size: int = 512,
    chi2: bool = False,
    high_chi2: float = 1.5,
    save_models: bool = False,
    source: InputSource | None = None,
    detect_snr: float = 3.0,
    refiner=None,
) -> dict[str, Any]:
    """Measure one chunk.

    Parameters
    ----------
    chunk : Chunk
    predictor : galnet.models.Predictor
    prior : dict or None
        :func:`training_prior` box (``OUT_OF_PRIOR``), or None to skip.
    zp_in, zp_model : float
        Zero points of the input and of the network's training data: ``mag = mag_net + zp_in - zp_model``.
    gain : float or None
        e- / count, for the Poisson term of the χ² σ.
    source : InputSource, optional
        Converts positions to RA/Dec when it has a WCS.
    refiner : callable, optional
        :attr:`PredictOptions.refiner`.
    detect_snr : float
        ``NO_SOURCE`` threshold of :func:`galnet.detection.no_source` (0: no test).

    Returns
    -------
    dict of arrays: ``rows`` (B,), ``ids``, ``params`` (B, 7) in the output frame, ``errors`` (B, 7),
    ``flags``, optional ``chi2nu``, ``niter`` and ``n_masked`` (refined runs), ``ra``, ``dec``,
    ``model``/``resid`` (B, S, S), and ``col:<name>`` carried columns.
    """
    b = len(chunk)
    params = np.full((b, 7), np.nan)
    errors = np.full((b, 7), np.nan)
    flags = chunk.flags.copy()
    ok = ~chunk.bad
    if detect_snr > 0 and ok.any():  # blank stamps: NO_SOURCE, not measured
        from ..detection import no_source

        idx = np.flatnonzero(ok)
        sig = chunk.sigma_maps[idx] if chunk.sigma_maps is not None else chunk.sky_sigma[idx]
        blank, snr = no_source(chunk.images[idx], sig, mask=None if chunk.mask is None else chunk.mask[idx],
                               threshold=detect_snr)
        for i in idx[blank][:5]:
            log.warning("row %d (id %s): no detectable source (detection S/N %.2f < %g); flagged NO_SOURCE",
                        chunk.start + i, chunk.ids[i], snr[np.searchsorted(idx, i)], detect_snr)
        flags[idx[blank]] |= int(Flag.NO_SOURCE)
        ok[idx[blank]] = False
    if ok.any():
        idx = np.flatnonzero(ok)
        psfs = chunk.psfs if chunk.psfs.ndim == 2 else chunk.psfs[idx]
        with np.errstate(all="ignore"):
            params[idx], errors[idx] = predictor.predict_with_errors(
                chunk.images[idx], psfs, chunk.sky_sigma[idx], batch_size=batch_size
            )
        failed = idx[~np.isfinite(params[idx]).all(axis=1)]
        for i in failed[:5]:
            log.warning("row %d (id %s): the network returned non-finite values; flagged FAILED",
                        chunk.start + i, chunk.ids[i])
        params[failed] = np.nan
        errors[failed] = np.nan
        flags[failed] |= int(Flag.FAILED)
        ok[failed] = False
    if prior is not None:
        flags[ok & _out_of_prior(np.nan_to_num(params, nan=0.0), prior)] |= int(Flag.OUT_OF_PRIOR)
    out: dict[str, Any] = {"rows": np.arange(chunk.start, chunk.stop, dtype=np.int64), "ids": chunk.ids}
    if refiner is not None:  # chi2nu from the refinement (neighbours masked, as galnet fit)
        out.update(_refine(chunk, refiner, params, errors, flags, ok, zeropoint=zp_model, gain=gain,
                           high_chi2=high_chi2))
    if (chi2 and refiner is None) or save_models:
        chi2nu, models, bad_sig = _render_chi2(
            chunk, params, ok, zeropoint=zp_model, gain=gain, want_models=save_models
        )
        if refiner is None:
            flags[bad_sig] |= int(Flag.BAD_SIGMA)
            flags[np.nan_to_num(chi2nu, nan=0.0) > high_chi2] |= int(Flag.HIGH_CHI2)
            out["chi2nu"] = chi2nu
        if save_models:
            out["model"] = models
            img = np.where(chunk.mask, np.nan, chunk.images) if chunk.mask is not None else chunk.images
            out["resid"] = (img - models).astype(np.float32)
    # to the output frame: position offset, zero point
    params[:, 0] += chunk.offset[:, 0]
    params[:, 1] += chunk.offset[:, 1]
    params[:, 2] += zp_in - zp_model
    out["params"] = params
    out["errors"] = errors
    out["flags"] = flags
    if source is not None and source.has_wcs:
        ra, dec = source.pixel_to_world(params[:, 0], params[:, 1])
        out["ra"], out["dec"] = ra, dec
    for k, v in chunk.columns.items():
        out[f"col:{k}"] = v
    return out


# ============================================================================== shards
# the shard files and the manifest are galnet.manifest's (shared with galnet fit)


def _manifest(source: InputSource, options: PredictOptions, card: dict, card_path: str,
              output: Path) -> dict[str, Any]:
    """Every input identity and option that changes a result (see :mod:`galnet.manifest`)."""
    return {
        "manifest_version": MANIFEST_VERSION,
        "tool": "galnet predict",
        "input": source.fingerprint(),
        "n_rows": source.n_rows,
        **source.settings(),
        "chunk_size": options.chunk_size,
        "batch_size": options.batch_size,
        "model": model_identity(card, card_path),
        "backend": resolve_backend(options.backend),
        "device": str(options.device),
        "chi2": bool(options.chi2 or options.save_models),
        "high_chi2": float(options.high_chi2),
        "save_models": bool(options.save_models),
        "detect_snr": float(options.detect_snr),
        "refine": options.refine,
        "symmetries": options.symmetries,
        "output": output.name,
    }


def model_identity(card: dict, card_path: str | os.PathLike) -> dict[str, Any]:
    """Name, weights SHA-256 (from the card, else computed) and card SHA-256 of a model, for manifests."""
    import hashlib

    path = Path(card_path)
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
        From :func:`galnet.predict.inputs.open_source` (or a reader class).
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
    validate_options(options)
    output = Path(output)
    from ..catalog import _format_for, check_table_writable
    from ..options import check_output_path

    _format_for(output)  # fail early on an unknown extension
    check_output_path(output)  # ... and on an output that cannot be written: before any computation
    if max_chunks is not None and max_chunks < 1:
        raise ConfigError(f"max_chunks must be a positive integer, got {max_chunks!r}")
    if source.n_rows == 0:
        raise InputDataError(f"{source.describe()}: no rows to measure (empty input)")
    # the columns the catalog will have must be writable in its format (e.g. ASCII for FITS)
    check_table_writable(output, source.id_sample(), source.carried_columns())
    t0 = time.perf_counter()
    card_path = _card_path(options.model)
    predictor = get_predictor(
        card_path, resolve_backend(options.backend), options.device, options.threads,
        options.allow_unverified_model, options.symmetries,
    )
    card = predictor.card
    source.stamp_size, source.psf_size = predictor.image_size, predictor.psf_size
    pdir = parts_dir(output)
    prepare_parts(pdir, _manifest(source, options, card, card_path, output), resume, error=PredictError)
    bounds = chunk_bounds(source.n_rows, options.chunk_size)
    done = done_chunks(pdir, bounds, need_models=options.save_models) if resume else set()
    todo = [b for b in bounds if b[0] not in done]
    if max_chunks is not None:
        todo = todo[:max_chunks]
    n_done_rows = sum(stop - start for start, stop in bounds if start in done)
    if done:
        log.info("resuming: %d of %d chunks already done", len(done), len(bounds))
    ctx = _run_context(source, options, card)
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


def _card_path(model: str) -> str:
    from ..models import resolve_model_path

    return str(resolve_model_path(model))


def _run_context(source: InputSource, options: PredictOptions, card: dict) -> dict[str, Any]:
    zp_model = model_zeropoint(card)
    zp_in = source.meta.get("zeropoint")
    return {
        "zp_model": zp_model,
        "zp_in": float(zp_in) if zp_in is not None else zp_model,
        "gain": source.meta.get("gain"),
        "prior": training_prior(card, source.stamp_size),
    }


def _chunk_kwargs(options: PredictOptions, ctx: dict, source: InputSource) -> dict[str, Any]:
    return {
        "prior": ctx["prior"],
        "zp_in": ctx["zp_in"],
        "zp_model": ctx["zp_model"],
        "gain": ctx["gain"],
        "batch_size": options.batch_size,
        "chi2": options.chi2,
        "high_chi2": options.high_chi2,
        "save_models": options.save_models,
        "source": source,
        "detect_snr": options.detect_snr,
        "refiner": options.refiner,
    }


def _run_chunks_local(source, todo, options, pdir, ctx, predictor, n_done_rows, on_chunk) -> None:
    q: queue.Queue = queue.Queue(maxsize=max(1, options.prefetch))
    stop = threading.Event()
    reader = threading.Thread(
        target=_reader, args=(source, todo, q, stop), daemon=True, name="galnet-predict-reader"
    )
    reader.start()
    kw = _chunk_kwargs(options, ctx, source)
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
    from ..catalog import make_catalog, write_table
    from ..conventions import HSC_PIXEL_SCALE

    parts = load_shards(pdir, bounds, source.n_rows, error=PredictError)

    def cat(key):
        return np.concatenate([p[key] for p in parts]) if parts else np.zeros(0)

    params = cat("params").reshape(-1, 7)
    extra: dict[str, Any] = {}
    if "ra" in parts[0]:
        extra["ra"], extra["dec"] = cat("ra"), cat("dec")
    for key in ("chi2nu", "niter", "n_masked"):
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
    }
    table = make_catalog(
        cat("ids"),
        params,
        errors=cat("errors").reshape(-1, 7) if "errors" in parts[0] else None,
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
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    hdul.writeto(tmp, overwrite=True)
    os.replace(tmp, path)
    return path


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


class _ArraySource(InputSource):
    kind = "arrays"

    def __init__(self, images, psfs, sky_sigma, ids, meta) -> None:
        super().__init__()
        self.images = np.asarray(images)
        if self.images.ndim == 2:
            self.images = self.images[None]
        if self.images.ndim != 3:
            raise InputDataError(f"images must have shape (B, H, W), got {self.images.shape}")
        self.n_rows = len(self.images)
        self.psfs = np.asarray(psfs, dtype=float)
        if self.psfs.ndim == 3 and len(self.psfs) != self.n_rows:
            raise InputDataError(f"{len(self.psfs)} PSFs for {self.n_rows} images")
        if self.psfs.ndim == 2:
            from .inputs import prepare_psf

            self.psfs, self.psf_fixed = prepare_psf(self.psfs, self.psf_size, name="psfs")
        from .inputs import _check_sky_option

        sky_sigma = _check_sky_option(sky_sigma, "sky_sigma")
        self.sky = (
            None if sky_sigma is None else np.broadcast_to(np.asarray(sky_sigma, float), (self.n_rows,))
        )
        if ids is not None and len(ids) != self.n_rows:
            raise InputDataError(f"{len(ids)} ids for {self.n_rows} images")
        from ..catalog import unique_ids

        self.ids = np.arange(self.n_rows) if ids is None else unique_ids(ids, where="ids")
        self.meta = meta

    def read_chunk(self, start, stop):
        from .inputs import _finish

        names = [f"row {i}" for i in range(start, stop)]
        psfs = self.psfs[start:stop] if self.psfs.ndim == 3 else self.psfs
        fixed = None if self.psfs.ndim == 3 else np.full(stop - start, self.psf_fixed)
        return _finish(
            start,
            self.ids[start:stop],
            self.images[start:stop],
            psfs,
            None if self.sky is None else self.sky[start:stop],
            names=names,
            psf_fixed=fixed,
            stamp_size=self.stamp_size,
            psf_size=self.psf_size,
            sky_given=self.sky is not None,
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
    astropy.table.Table: ``id, x, y`` (1-based stamp frame), ``mag, re_pix, re_arcsec, n, q, pa``,
    [``chi2nu``], ``flags``.
    """
    from ..catalog import make_catalog
    from ..conventions import HSC_PIXEL_SCALE

    opts = PredictOptions(model=str(model), backend=backend, chi2=chi2, batch_size=batch_size,
                          threads=threads, detect_snr=detect_snr)
    validate_options(opts)
    pred = get_predictor(_card_path(model), resolve_backend(backend), device, threads, allow_unverified_model)
    src = _ArraySource(
        images, psfs, sky_sigma, ids, {"zeropoint": zeropoint, "gain": gain, "pixel_scale": pixel_scale}
    )
    src.stamp_size, src.psf_size = pred.image_size, pred.psf_size
    ctx = _run_context(src, opts, pred.card)
    res = process_chunk(src.read_chunk(0, src.n_rows), pred, **_chunk_kwargs(opts, ctx, src))
    extra = {"chi2nu": res["chi2nu"]} if "chi2nu" in res else None
    return make_catalog(
        res["ids"],
        res["params"],
        flags=res["flags"],
        pixel_scale=pixel_scale or HSC_PIXEL_SCALE,
        zeropoint=ctx["zp_in"],
        extra=extra,
        meta={"MODEL": str(pred.card.get("name", "?"))},
    )

