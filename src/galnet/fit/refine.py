"""Refinement of network predictions: K batched Levenberg–Marquardt steps of the exact forward model.

``galnet predict --refine K`` measures a galaxy with the network, then takes K steps of the fitter
(:func:`galnet.fit.fit_stamps`) from that answer, with neighbours masked as ``galnet fit`` masks them and
the same σ map, so that its ``chi2nu`` is comparable with ``galnet fit``'s. Unlike the hybrid mode
(``galnet fit --start catalog:...``), the amount of work per galaxy is fixed: at most K iterations, one DFT
size chosen from the network's answer, no refit pass, and reaching K is not a failure (not flagged
``NOT_CONVERGED``). The network's answer is usually within a few tenths of a sigma-sized step of the χ²
minimum, so one or two Gauss–Newton steps take the estimate to the fitter's precision (docs/network.md
measures it per magnitude bin).

The errors are the fit's covariance errors at the refined point (``D α⁻¹ D`` of the last normal matrix),
as ``galnet fit`` writes them.

This module is part of the fit stage; ``galnet predict`` receives a :class:`Refiner` from the command line
layer (:mod:`galnet.cli`), so the predict stage itself never imports the fitter.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import numpy as np

from ..conventions import DEFAULT_ZEROPOINT
from ..data.noise import sigma_from_data
from ..errors import ConfigError, InputDataError
from ..flags import Flag
from ..params import IX_X, IX_Y
from .config import FitConfig
from .masking import neighbour_mask
from .solver import FitResult, fit_stamps

log = logging.getLogger(__name__)

__all__ = ["Refiner"]


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
        Fit knobs; ``max_iter``, ``refit_outgrown`` and ``flag_max_iter`` are set from ``k``.
    """

    k: int
    mask_neighbours: bool = True
    config: FitConfig | None = None

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, (int, np.integer)) or self.k < 1:
            raise ConfigError(f"refine: K must be an integer >= 1, got {self.k!r}")
        base = self.config or FitConfig()
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

        Returns
        -------
        result : FitResult
            Refined parameters, covariance errors, ``chi2nu`` over the unmasked pixels, ``niter`` and flags.
        n_masked : ndarray of int64, shape (B,)
            Neighbouring sources masked per stamp.
        """
        images = np.asarray(images, dtype=np.float64)
        b = len(images)
        if sigma is None:
            if sky_sigma is None:
                raise InputDataError("refine needs sky_sigma or a sigma map")
            sky = np.asarray(sky_sigma, dtype=np.float64)
            if gain:
                sigma = sigma_from_data(images, gain=float(gain), sky_sigma=sky)
            else:
                sigma = np.broadcast_to(sky.reshape(-1, 1, 1), images.shape)
        n_masked = np.zeros(b, dtype=np.int64)
        start = np.asarray(start, dtype=np.float64)
        if self.mask_neighbours and b:
            xy = start[:, [IX_X, IX_Y]]
            centre = np.where(np.isfinite(xy), xy, (images.shape[-1] + 1) / 2.0)
            try:
                nb, n_masked = neighbour_mask(images, sigma, mask=mask, centre=centre, psf=psfs)
            except InputDataError as exc:
                log.error("refine: neighbour masking skipped for this batch: %s", exc)
            else:
                mask = nb if mask is None else (np.asarray(mask) != 0) | nb
        res = fit_stamps(images, psfs, sigma=sigma, mask=mask, init=start, zeropoint=zeropoint,
                         config=self.config)
        res.flags[n_masked > 0] |= int(Flag.NEIGHBOURS_MASKED)
        return res, n_masked
