"""Error terms the covariance of a fit does not hold: correlated residuals and blending.

The covariance errors of a least-squares fit, ``sqrt(diag (Jᵀ W J)⁻¹)``, are right when the residuals are
independent Gaussian noise with the σ map's variance. On survey stamps they are not:

* **Correlated noise.** Coadds are resampled, so neighbouring pixels share noise; a σ map gives the
  per-pixel variance but not the covariance. A smooth model parameter averages the noise over many
  pixels, and its variance grows with the sum of the noise's autocorrelation coefficients
  (for noise smoothed by a kernel ``k``, by ``(Σk)² / Σk²``). The same holds for structured residuals
  (a neighbour's wings left unmasked, model mismatch).
  :func:`residual_correlation_factor` measures this from the fit's own normalised residuals
  ``r = (data − model) / σ`` on the good pixels: ``F² = Σ_{|Δx|,|Δy| ≤ L} ρ(Δ)``, with ``ρ(Δ)`` the mean of
  ``r(p) r(p + Δ)`` over the good pixel pairs, so ``ρ(0) ≈ χ²ν`` and ``F² ≈ χ²ν`` for white residuals.
  The errors are multiplied by ``F`` (never less than 1). This is the fitter's
  ``FitConfig(error_scale="correlated")``, which :class:`galnet.fit.Refiner` uses.
* **Blending.** Light of a neighbour that the mask does not remove (inside the target's segment, or in
  wings beyond the grown mask) biases the fit by more than its statistical error; that bias is not
  visible in the residuals, because the model absorbs it. :func:`add_blend_errors` adds, on the stamps
  where neighbours were masked, a blend term in quadrature: the network's calibrated error for the row
  (the network was trained on blended stamps, so its error knows how much blending costs).

Measured on 2,000 stamps of each set in ``docs/network.md``: on the simulated validation split (where the
rule was chosen), the test split and the GalSim set.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["residual_correlation_factor", "add_blend_errors", "MAX_LAG"]

#: Largest lag (pixels, in x and in y) of the residual autocorrelation summed by
#: :func:`residual_correlation_factor`: ``(2 L + 1)²`` lags, about twice an HSC coadd's resampling kernel.
MAX_LAG = 3


def residual_correlation_factor(residuals: torch.Tensor, good: torch.Tensor, max_lag: int = MAX_LAG
                                ) -> torch.Tensor:
    """Error inflation ``F = sqrt(max(1, Σ_{|Δx|,|Δy| ≤ L} ρ(Δ)))`` from normalised residuals.

    Parameters
    ----------
    residuals : Tensor, shape (B, H, W)
        ``(data − model) / σ`` (any value on bad pixels: they are zeroed here).
    good : Tensor of bool, shape (B, H, W)
        Pixels used by the fit.
    max_lag : int
        ``L``, pixels (>= 0); 0 gives ``sqrt(max(1, mean r²))``.

    Returns
    -------
    Tensor, shape (B,), dtype of ``residuals``, >= 1
        1 for a stamp without good pixel pairs at some lag (nothing to measure).

    Notes
    -----
    ``ρ(Δ)`` is the sum of ``r(p) r(p + Δ)`` over the pixel pairs that are both good, divided by their
    number; both come from zero-padded FFTs (linear, not circular, correlation).
    """
    if max_lag < 0:
        raise ValueError(f"max_lag must be >= 0, got {max_lag}")
    b, h, w = residuals.shape
    if b == 0:
        return torch.ones(0, dtype=residuals.dtype)
    g = good.to(residuals.dtype)
    r = torch.where(good, residuals, torch.zeros_like(residuals))
    r = torch.nan_to_num(r, nan=0.0, posinf=0.0, neginf=0.0)
    size = (h + max_lag, w + max_lag)
    sums = torch.fft.irfft2(torch.fft.rfft2(r, s=size).abs() ** 2, s=size)
    pairs = torch.fft.irfft2(torch.fft.rfft2(g, s=size).abs() ** 2, s=size)
    lags = list(range(max_lag + 1)) + list(range(-max_lag, 0))
    iy = torch.tensor([d % size[0] for d in lags])
    ix = torch.tensor([d % size[1] for d in lags])
    s = sums[:, iy][:, :, ix]
    n = pairs[:, iy][:, :, ix].round()
    rho = torch.where(n > 0.5, s / n.clamp_min(1.0), torch.zeros_like(s))
    total = rho.sum((1, 2))
    total = torch.where(torch.isfinite(total), total, torch.ones_like(total))
    return torch.sqrt(total.clamp_min(1.0))


def add_blend_errors(errors: np.ndarray, blend_errors: np.ndarray, blended: np.ndarray) -> np.ndarray:
    """Errors with a blend term added in quadrature on the blended rows.

    Parameters
    ----------
    errors : ndarray, shape (B, 7)
        The fit's errors (catalog units).
    blend_errors : ndarray, shape (B, 7)
        The blend term per row and parameter (e.g. the network's calibrated errors), same units;
        non-finite entries add nothing.
    blended : ndarray of bool, shape (B,)
        Rows with neighbours (e.g. ``n_masked > 0``).

    Returns
    -------
    ndarray, shape (B, 7): ``sqrt(errors² + blend_errors²)`` on blended rows, ``errors`` elsewhere.
    """
    errors = np.asarray(errors, dtype=np.float64)
    extra = np.where(np.isfinite(blend_errors), np.asarray(blend_errors, dtype=np.float64), 0.0)
    extra = np.where(np.asarray(blended, dtype=bool)[:, None], extra, 0.0)
    return np.sqrt(errors * errors + extra * extra)
