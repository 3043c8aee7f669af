"""Refinement of network predictions: K batched Levenberg–Marquardt steps of the exact forward model.

``galnet predict --refine K`` measures a galaxy with the network, then takes K steps of the fitter
(:func:`galnet.fit.fit_stamps`) from that answer, with neighbours masked as ``galnet fit`` masks them and
the same σ map, so that its ``chi2nu`` is comparable with ``galnet fit``'s. Unlike the hybrid mode
(``galnet fit --start catalog:...``), the amount of work per galaxy is fixed: at most K iterations, one DFT
size chosen from the network's answer, no refit pass, and reaching K is not a failure (not flagged
``NOT_CONVERGED``). The network's answer is usually within a few tenths of a sigma-sized step of the χ²
minimum, so one or two Gauss–Newton steps take the estimate to the fitter's precision (docs/network.md
measures it per magnitude bin).

A constant sky is fitted with the galaxy by default (``fit_sky``; ``galnet predict --no-refine-sky`` turns
it off); the catalog then has ``sky`` and ``sky_err`` columns.

The errors are the fit's covariance errors at the refined point (``D α⁻¹ D`` of the last normal matrix),
as ``galnet fit`` writes them, with two terms the covariance misses (:mod:`galnet.fit.uncertainty`):
they are multiplied by the residual-correlation factor (correlated noise of resampled coadds), and on
stamps with masked neighbours the start's own errors (the network's calibrated errors, which know what
blending costs) are added in quadrature. Without these the refined errors covered 25–50 % (1σ) in the
bright bins of the simulated and GalSim sets; docs/network.md gives the figures with them.

This module is part of the fit stage; ``galnet predict`` receives a :class:`Refiner` from the command line
layer (:mod:`galnet.cli`), so the predict stage itself never imports the fitter.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field

import numpy as np

from ..conventions import DEFAULT_ZEROPOINT
from ..data.noise import sigma_from_data
from ..errors import ConfigError, InputDataError
from ..flags import Flag
from ..params import IX_X, IX_Y
from .config import FitConfig
from .masking import neighbour_mask
from .parallel import FitPool
from .solver import FitResult, fit_stamps
from .uncertainty import add_blend_errors

log = logging.getLogger(__name__)

__all__ = ["Refiner", "FitPixels"]

#: Smallest share of a call a refinement worker gets, rows.
_POOL_MIN_CHUNK = 16


def _is_positive_int(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, np.integer)) and value >= 1


@dataclass
class FitPixels:
    """The σ map and the mask ``galnet fit`` judges a model on: given σ (else sky σ and, with a gain, the
    source's Poisson noise from the data), the given bad pixels, and the neighbours' mask.

    ``galnet predict --chi2`` gets one from the command line so that its ``chi2nu`` is computed on the same
    pixels, with the same σ, as ``galnet fit``'s and ``--refine``'s.

    Attributes
    ----------
    mask_neighbours : bool
        Mask other sources (:func:`galnet.fit.neighbour_mask`, around ``centre``).
    """

    mask_neighbours: bool = True

    def __call__(self, images: np.ndarray, psfs: np.ndarray, centre: np.ndarray | None = None, *,
                 sky_sigma: np.ndarray | None = None, sigma: np.ndarray | None = None,
                 mask: np.ndarray | None = None, gain: float | None = None, masker=None
                 ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """σ map (B, H, W), mask (B, H, W) bool or None, and neighbours masked per stamp (B,).

        Parameters
        ----------
        images : ndarray, shape (B, H, W), counts (sky-subtracted)
        psfs : ndarray, shape (B, P, P) or (P, P)
        centre : ndarray, shape (B, 2), optional
            Target ``x, y`` (1-based stamp pixels; non-finite rows: the stamp centre). Default: the centre.
        sky_sigma : ndarray, shape (B,), counts / pixel, optional
            Used where ``sigma`` is not given.
        sigma : ndarray, shape (B, H, W), optional
        mask : ndarray of bool, shape (B, H, W), optional
        gain : float, optional
            e- / count, for the Poisson term of a σ map built from ``sky_sigma``.
        masker : callable, optional
            What makes the neighbour mask: :func:`galnet.fit.neighbour_mask` (default) or a
            :class:`galnet.fit.FitPool`'s ``neighbour_mask`` (same result, made in worker processes).
        """
        images = np.asarray(images, dtype=np.float64)
        b = len(images)
        if sigma is None:
            if sky_sigma is None:
                raise InputDataError("a sky sigma or a sigma map is needed")
            sky = np.asarray(sky_sigma, dtype=np.float64)
            if gain:
                sigma = sigma_from_data(images, gain=float(gain), sky_sigma=sky)
            else:
                sigma = np.broadcast_to(sky.reshape(-1, 1, 1), images.shape)
        n_masked = np.zeros(b, dtype=np.int64)
        if self.mask_neighbours and b:
            mid = (images.shape[-1] + 1) / 2.0
            centre = np.full((b, 2), mid) if centre is None else np.asarray(centre, dtype=np.float64)
            centre = np.where(np.isfinite(centre), centre, mid)
            try:
                nb, n_masked = (masker or neighbour_mask)(images, sigma, mask=mask, centre=centre, psf=psfs)
            except InputDataError as exc:
                log.error("neighbour masking skipped for this batch: %s", exc)
            else:
                mask = nb if mask is None else (np.asarray(mask) != 0) | nb
        return sigma, mask, n_masked


@dataclass
class Refiner:
    """K Levenberg–Marquardt steps from given starts (network predictions), on a batch of stamps.

    Attributes
    ----------
    k : int
        Number of LM iterations (trial steps) per galaxy, >= 1.
    mask_neighbours : bool
        Mask other sources (:func:`galnet.fit.neighbour_mask`, around the start position) as ``galnet fit``
        does by default.
    config : FitConfig, optional
        Fit knobs; ``max_iter``, ``refit_outgrown`` and ``flag_max_iter`` are set from ``k``. Default:
        ``FitConfig(error_scale="correlated")`` (errors × the residual-correlation factor).
    blend_errors : bool
        On stamps where neighbours were masked, add the ``start_errors`` given to the call in quadrature
        (:func:`galnet.fit.uncertainty.add_blend_errors`).
    workers : int
        Worker processes (one torch thread each) that share the masks and fits of a call of at least
        ``2 × 16`` rows, through a :class:`galnet.fit.FitPool` started on the first such call (the
        batched solver's small tensor operations gain little from a second thread; processes scale:
        on 2 cores, ``benchmarks/frontier.py`` measured 5 fixed steps on 1,000 GalSim stamps at 273–306
        gal/s with 2 workers against 217–221 with one process of 2 threads). Parameters, errors and χ²
        are those of ``workers=1`` (bitwise on 2,000 GalSim stamps; ``niter`` differed by one on 2 rows,
        where a differently composed batch rounded a trial step differently). Call :meth:`close` when done
        (or use the Refiner as a context manager); otherwise the workers stop when the interpreter exits.
    finish_chi2 : float or None
        Rows whose χ²ν after the K steps is above this (default 1.5, ``galnet predict``'s ``HIGH_CHI2``
        threshold) are fitted on to convergence from the refined answer, as ``galnet fit`` would (at most
        ``finish_max_iter`` iterations), and keep the better of the two. ``None`` or 0: K steps for every
        row. On the 80 real HSC galaxies of ``benchmarks/real_hsc.py`` (without the sky) this finishes 31 %
        of the rows after 5 steps and brings the mean χ²ν from 2.10 to 1.91 (the fitter's 1.92); on
        simulated stamps few rows qualify.
    finish_max_iter : int
        Iteration limit of that finishing fit (default 30, >= 1; ``galnet fit``'s is 100). On the validation
        splits (1,000 stamps each) 30 gave the same parameters and median χ²ν as 100 (mean χ²ν within 3 %)
        at 20–25 % more galaxies per second: a few blends far from any single-Sérsic optimum otherwise run
        to 100 iterations and hold their batch. On the 80 real HSC galaxies no finishing fit needs more
        than 32.
    fit_sky : bool
        Fit a constant sky (counts / px) per stamp with the galaxy, from 0, as ``galnet fit --fit-sky``
        (the result's ``sky`` and ``sky_err``); default yes. The local background of a survey stamp is
        rarely zero (sky-subtraction residuals, the wings of neighbours beyond their mask, undetected
        sources), and a Sérsic profile fitted without a sky absorbs it into its wings: brighter, larger,
        higher n. Chosen on the validation splits (2,000 stamps each, docs/network.md): on galaxies injected
        into real HSC backgrounds the fitted sky halves the magnitude NMAD in every bin (0.040 → 0.021 at
        mag 18–20) and removes most of the bias; on simulated stamps it changes the NMAD by −18 … +24 %
        and lowers the bias. It costs 3–7 % of the refinement's time on simulated stamps, 20–26 % on real
        HSC galaxies.
    """

    k: int
    mask_neighbours: bool = True
    config: FitConfig | None = None
    finish_chi2: float | None = 1.5
    finish_max_iter: int = 30
    blend_errors: bool = True
    workers: int = 1
    fit_sky: bool = True
    _pool: FitPool | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not _is_positive_int(self.k):
            raise ConfigError(f"refine: K must be an integer >= 1, got {self.k!r}")
        if self.finish_chi2 is not None and not (np.isfinite(self.finish_chi2) and self.finish_chi2 >= 0):
            raise ConfigError(f"refine: finish_chi2 must be a number >= 0 or None, got {self.finish_chi2!r}")
        if not _is_positive_int(self.finish_max_iter):
            raise ConfigError(
                f"refine: finish_max_iter must be an integer >= 1, got {self.finish_max_iter!r}")
        if not _is_positive_int(self.workers):
            raise ConfigError(f"refine: workers must be an integer >= 1, got {self.workers!r}")
        base = self.config or FitConfig(error_scale="correlated")
        self.finish_config = dataclasses.replace(base, max_iter=int(self.finish_max_iter))
        self.config = dataclasses.replace(
            base, max_iter=int(self.k), refit_outgrown=False, flag_max_iter=False
        )

    def __call__(
        self,
        images: np.ndarray,
        psfs: np.ndarray,
        start: np.ndarray,
        *,
        sky_sigma: np.ndarray | None = None,
        sigma: np.ndarray | None = None,
        mask: np.ndarray | None = None,
        gain: float | None = None,
        zeropoint: float = DEFAULT_ZEROPOINT,
        start_errors: np.ndarray | None = None,
    ) -> tuple[FitResult, np.ndarray]:
        """Refine ``start`` on every stamp.

        Parameters
        ----------
        images : ndarray, shape (B, H, W), counts (sky-subtracted)
        psfs : ndarray, shape (B, P, P) or (P, P), unit-sum effective PSF(s)
        start : ndarray, shape (B, 7)
            Start parameters in catalog conventions, stamp frame (x, y 1-based on the stamp), magnitudes at
            ``zeropoint``. Rows with non-finite values are not refined (flagged by the fitter).
        sky_sigma : ndarray, shape (B,), counts / pixel, optional
            Sky noise, used where ``sigma`` is not given (plus the source's Poisson noise with ``gain``).
        sigma : ndarray, shape (B, H, W), counts, optional
            1-sigma noise map; zero, negative or non-finite pixels are masked (and flagged ``BAD_SIGMA``).
        mask : ndarray of bool, shape (B, H, W), optional
            Bad pixels (True = bad).
        gain : float, optional
            e- / count, for the Poisson term of a σ map built from ``sky_sigma``.
        zeropoint : float
            Zero point of ``start``'s magnitudes and of the result's.
        start_errors : ndarray, shape (B, 7), optional
            1-σ errors of ``start`` in catalog units (the network's). With ``blend_errors``, added in
            quadrature to the refined errors of the rows whose stamp had neighbours masked.

        Returns
        -------
        result : FitResult
            Refined parameters, covariance errors, ``chi2nu`` over the unmasked pixels, ``niter`` and flags.
        n_masked : ndarray of int64, shape (B,)
            Neighbouring sources masked per stamp.
        """
        images = np.asarray(images, dtype=np.float64)
        start = np.asarray(start, dtype=np.float64)
        pool = self._pool_for(len(images))
        sigma, mask, n_masked = FitPixels(self.mask_neighbours)(
            images, psfs, start[:, [IX_X, IX_Y]], sky_sigma=sky_sigma, sigma=sigma, mask=mask, gain=gain,
            masker=pool.neighbour_mask if pool else None,
        )
        fitter = pool.fit_stamps if pool else fit_stamps
        res = fitter(images, psfs, sigma=sigma, mask=mask, init=start, zeropoint=zeropoint,
                     config=self.config, fit_sky=bool(self.fit_sky))
        if self.finish_chi2:
            self._finish(res, images, psfs, sigma, mask, zeropoint)
        res.flags[n_masked > 0] |= int(Flag.NEIGHBOURS_MASKED)
        if self.blend_errors and start_errors is not None:
            res.errors = add_blend_errors(res.errors, np.asarray(start_errors, dtype=np.float64),
                                          n_masked > 0)
        return res, n_masked

    def _pool_for(self, b: int) -> FitPool | None:
        """The worker pool for a call of ``b`` rows (started on first use), or None: work here."""
        if self.workers < 2 or b < 2 * _POOL_MIN_CHUNK:
            return None
        if self._pool is None:
            self._pool = FitPool(self.workers, threads=1, min_chunk=_POOL_MIN_CHUNK)
        return self._pool

    def close(self) -> None:
        """Stop the worker processes, if any were started."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def __enter__(self) -> Refiner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_pool"] = None  # a pool does not travel (e.g. to a Dask worker): it starts its own
        return state

    def _finish(self, res: FitResult, images, psfs, sigma, mask, zeropoint: float) -> None:
        """Fit the rows left above ``finish_chi2`` on to convergence (in place); keep what is better."""
        rows = np.flatnonzero(np.isfinite(res.chi2nu) & (res.chi2nu > self.finish_chi2)
                              & np.isfinite(res.params).all(axis=1))
        if not rows.size:
            return
        psf_rows = psfs if np.ndim(psfs) == 2 else np.asarray(psfs)[rows]
        pool = self._pool_for(rows.size)
        fitter = pool.fit_stamps if pool else fit_stamps
        fin = fitter(images[rows], psf_rows, sigma=np.asarray(sigma)[rows],
                     mask=None if mask is None else np.asarray(mask)[rows], init=res.params[rows],
                     zeropoint=zeropoint, config=self.finish_config, fit_sky=bool(self.fit_sky),
                     sky=np.nan_to_num(res.sky[rows]) if self.fit_sky else 0.0)
        steps = res.niter[rows] + fin.niter
        better = np.flatnonzero(np.isfinite(fin.chi2) & (fin.chi2 < res.chi2[rows]))
        res.take(fin, rows[better], better)
        res.niter[rows] = steps
