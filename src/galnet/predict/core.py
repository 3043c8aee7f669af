"""The measuring core of ``galnet predict``, shared by the local runner and the Dask workers.

* the model: :func:`resolve_backend`, :func:`get_predictor` (loaded once per process), :func:`card_path`,
  :func:`model_zeropoint`, :func:`training_prior` (the ``OUT_OF_PRIOR`` box);
* one chunk: :func:`process_chunk` measures a :class:`~galnet.data.Chunk` (NO_SOURCE test, network, optional
  refinement and χ², output frame), with the keyword arguments :func:`chunk_kwargs` builds from the run's
  options and :func:`run_context`.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import numpy as np

from ..data import Chunk, InputSource
from ..errors import GalnetError, InputDataError, ModelCardError
from ..flags import Flag
from ..params import IX_MAG, IX_X, IX_Y, N_PARAMS

log = logging.getLogger(__name__)

__all__ = [
    "resolve_backend",
    "get_predictor",
    "card_path",
    "model_zeropoint",
    "training_prior",
    "process_chunk",
    "run_context",
    "chunk_kwargs",
]


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
    pixels=None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """chi2nu (B,), model cube (B, S, S) or None, BAD_SIGMA rows (B,) for the rows ``ok``.

    With ``pixels`` (:attr:`PredictOptions.pixels`) σ and the mask are ``galnet fit``'s (neighbours masked
    around the predicted position); else σ is the sky σ (plus the model's Poisson noise with a gain) or the
    input's σ map, on every valid pixel.
    """
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
        pix_mask = None if chunk.mask is None else chunk.mask[r]
        if pixels is not None:
            sig, pix_mask, _ = pixels(
                img, chunk.psfs if chunk.psfs.ndim == 2 else chunk.psfs[r], params[r][:, [IX_X, IX_Y]],
                sky_sigma=chunk.sky_sigma[r].astype(np.float64),
                sigma=None if chunk.sigma_maps is None else chunk.sigma_maps[r].astype(np.float64),
                mask=pix_mask, gain=gain,
            )
            sig = np.asarray(sig, dtype=np.float64)
        elif chunk.sigma_maps is not None:
            sig = chunk.sigma_maps[r].astype(np.float64)
        else:
            var = chunk.sky_sigma[r].astype(np.float64)[:, None, None] ** 2
            if gain:
                var = var + np.maximum(m, 0.0) / float(gain)
            sig = np.sqrt(np.broadcast_to(var, img.shape))
        good = np.isfinite(sig) & (sig > 0)
        if pix_mask is not None:
            good &= ~np.asarray(pix_mask, bool)
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
    fit_sky = bool(getattr(refiner, "fit_sky", False))
    sky, sky_err = np.full(b, np.nan), np.full(b, np.nan)
    idx = np.flatnonzero(ok & np.all(np.isfinite(params), axis=1))
    if idx.size:
        psfs = chunk.psfs if chunk.psfs.ndim == 2 else chunk.psfs[idx]
        res, nm = refiner(
            chunk.images[idx], psfs, params[idx],
            sky_sigma=chunk.sky_sigma[idx],
            sigma=None if chunk.sigma_maps is None else chunk.sigma_maps[idx],
            mask=None if chunk.mask is None else chunk.mask[idx],
            gain=gain, zeropoint=zeropoint, start_errors=errors[idx],
        )
        good = np.all(np.isfinite(res.params), axis=1)
        params[idx[good]] = res.params[good]
        errors[idx[good]] = res.errors[good]
        errors[idx[~good]] = np.nan
        chi2nu[idx] = res.chi2nu
        niter[idx] = res.niter
        n_masked[idx] = nm
        if fit_sky:
            sky[idx[good]], sky_err[idx[good]] = res.sky[good], res.sky_err[good]
        # the network's answer stands where the refinement failed: not BAD_INPUT / FAILED / NO_SOURCE
        fit_flags = res.flags & ~int(Flag.BAD_INPUT | Flag.FAILED | Flag.NO_SOURCE)
        flags[idx] |= fit_flags
        flags[idx[~good]] |= int(Flag.NOT_CONVERGED)
        for i in np.flatnonzero(~good):
            log.warning("id %s: refinement failed (%s); the network's answer is kept",
                        chunk.ids[idx[i]], res.messages[i].strip().rstrip(";") or "no finite result")
    flags[np.nan_to_num(chi2nu, nan=0.0) > high_chi2] |= int(Flag.HIGH_CHI2)
    out = {"chi2nu": chi2nu, "niter": niter, "n_masked": n_masked}
    if fit_sky:
        out.update(sky=sky, sky_err=sky_err)
    return out


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
    pixels=None,
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
    pixels : callable, optional
        :attr:`PredictOptions.pixels` (the σ and mask of ``chi2nu``).
    detect_snr : float
        ``NO_SOURCE`` threshold of :func:`galnet.detection.no_source` (0: no test).

    Returns
    -------
    dict of arrays: ``rows`` (B,), ``ids``, ``params`` (B, 7) in the output frame, ``errors`` (B, 7),
    ``flags``, optional ``chi2nu``, ``niter`` and ``n_masked`` (refined runs), ``sky`` and ``sky_err``
    (counts / px; refined with a fitted sky), ``ra``, ``dec``,
    ``model``/``resid`` (B, S, S), and ``col:<name>`` carried columns.
    """
    b = len(chunk)
    params = np.full((b, N_PARAMS), np.nan)
    errors = np.full((b, N_PARAMS), np.nan)
    flags = chunk.flags.copy()
    ok = ~chunk.bad
    if detect_snr > 0 and ok.any():  # blank stamps: NO_SOURCE, not measured
        _flag_no_source(chunk, ok, flags, detect_snr)
    if ok.any():
        _measure(chunk, predictor, ok, params, errors, flags, batch_size)
    if prior is not None:
        flags[ok & _out_of_prior(np.nan_to_num(params, nan=0.0), prior)] |= int(Flag.OUT_OF_PRIOR)
    out: dict[str, Any] = {"rows": np.arange(chunk.start, chunk.stop, dtype=np.int64), "ids": chunk.ids}
    if refiner is not None:  # chi2nu from the refinement (neighbours masked, as galnet fit)
        out.update(_refine(chunk, refiner, params, errors, flags, ok, zeropoint=zp_model, gain=gain,
                           high_chi2=high_chi2))
    if (chi2 and refiner is None) or save_models:
        chi2nu, models, bad_sig = _render_chi2(
            chunk, params, ok, zeropoint=zp_model, gain=gain, want_models=save_models, pixels=pixels
        )
        if refiner is None:
            flags[bad_sig] |= int(Flag.BAD_SIGMA)
            flags[np.nan_to_num(chi2nu, nan=0.0) > high_chi2] |= int(Flag.HIGH_CHI2)
            out["chi2nu"] = chi2nu
        if save_models:
            out["model"] = models
            img = np.where(chunk.mask, np.nan, chunk.images) if chunk.mask is not None else chunk.images
            if "sky" in out:  # the refinement's fitted sky is part of its model
                models = models + np.nan_to_num(out["sky"])[:, None, None].astype(np.float32)
                out["model"] = models
            out["resid"] = (img - models).astype(np.float32)
    # to the output frame: position offset, zero point
    params[:, IX_X] += chunk.offset[:, 0]
    params[:, IX_Y] += chunk.offset[:, 1]
    params[:, IX_MAG] += zp_in - zp_model
    out["params"] = params
    out["errors"] = errors
    out["flags"] = flags
    if source is not None and source.has_wcs:
        ra, dec = source.pixel_to_world(params[:, IX_X], params[:, IX_Y])
        out["ra"], out["dec"] = ra, dec
    for k, v in chunk.columns.items():
        out[f"col:{k}"] = v
    return out


def _flag_no_source(chunk: Chunk, ok: np.ndarray, flags: np.ndarray, detect_snr: float) -> None:
    """Rows ``ok`` without a detectable source: ``NO_SOURCE`` in ``flags``, dropped from ``ok`` (in place)."""
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


def _measure(chunk: Chunk, predictor, ok: np.ndarray, params: np.ndarray, errors: np.ndarray,
             flags: np.ndarray, batch_size: int) -> None:
    """The network's parameters and errors of the rows ``ok`` (in place); non-finite answers are
    ``FAILED`` and dropped from ``ok``."""
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


def card_path(model: str) -> str:
    """The model card's path of a shipped model name or a card path
    (:func:`galnet.models.resolve_model_path`).

    Parameters
    ----------
    model : str
        ``"hsc-r"``, a card (``.json``) or its directory.

    Returns
    -------
    str
    """
    from ..models import resolve_model_path

    return str(resolve_model_path(model))


def run_context(source: InputSource, card: dict) -> dict[str, Any]:
    """What every chunk of a run needs besides the options: zero points, gain and the prior box.

    Parameters
    ----------
    source : InputSource
        Its ``meta`` (zero point, gain) and ``stamp_size``.
    card : dict
        The model card.

    Returns
    -------
    dict: ``zp_model`` and ``zp_in`` (mag for 1 count; the input's defaults to the model's), ``gain``
    (e- / count or None), ``prior`` (:func:`training_prior`).
    """
    zp_model = model_zeropoint(card)
    zp_in = source.meta.get("zeropoint")
    return {
        "zp_model": zp_model,
        "zp_in": float(zp_in) if zp_in is not None else zp_model,
        "gain": source.meta.get("gain"),
        "prior": training_prior(card, source.stamp_size),
    }


def chunk_kwargs(options, ctx: dict, source: InputSource) -> dict[str, Any]:
    """The keyword arguments of :func:`process_chunk` for a run.

    Parameters
    ----------
    options : galnet.predict.PredictOptions
    ctx : dict
        :func:`run_context`.
    source : InputSource

    Returns
    -------
    dict
    """
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
        "pixels": options.pixels,
    }

