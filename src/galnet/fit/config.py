"""What a fit takes and why it stops: :class:`FitConfig` (tolerances and knobs) and :class:`FitStatus`;
:data:`IX_SKY`, the sky's column in the fitter's variable vectors."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ..errors import ConfigError
from ..params import N_PARAMS

#: Values of :attr:`FitConfig.error_scale`.
ERROR_SCALES = ("none", "chi2nu", "correlated")

__all__ = ["FitStatus", "FitConfig", "IX_SKY", "ERROR_SCALES"]

#: Column of the sky (counts / px) in the fitter's variable vectors, after the seven parameters
#: (``galnet.params.IX_X`` .. ``IX_PA``): internal variables ``u`` (B, 8) of a fit with a fitted sky, the
#: model's Jacobian channels (B, 8, H, W) and the covariances (B, 8, 8).
IX_SKY = N_PARAMS


class FitStatus(enum.IntEnum):
    """Why the fit of one galaxy stopped (``status`` column)."""

    NOT_FITTED = -1  #: bad input: not fitted at all (values NaN)
    CONVERGED_CHI2 = 0  #: χ² changed by less than the tolerance on consecutive accepted steps
    CONVERGED_STEP = 1  #: the accepted step was below the step tolerance
    STALLED = 2  #: no step lowers χ² even with very large damping (a minimum to working precision)
    MAX_ITER = 3  #: iteration limit reached (flagged NOT_CONVERGED)


@dataclass(frozen=True)
class FitConfig:
    """Accuracy and robustness knobs of :func:`fit_stamps`, with their defaults.

    Attributes
    ----------
    max_iter : int
        Maximum number of LM iterations (trial steps) per galaxy.
    rtol_chi2, atol_chi2 : float
        Convergence when an accepted step lowers χ² by less than ``rtol_chi2 χ² + atol_chi2``
        on ``patience`` consecutive accepted steps, or on one followed by a rejected step (GALFIT
        uses 5e-4 relative, 5 times). ``atol_chi2 = 1e-3`` means the minimum is within ~0.03 σ;
        the default is much tighter than GALFIT's so that noise-free fits reach 1e-5 accuracy.
    xtol : float
        Convergence when the largest internal step is below ``xtol`` (internal units ~ relative).
    patience : int
        Consecutive small-Δχ² accepted steps needed.
    gn_tol_chi2 : float
        Convergence when the Gauss–Newton model predicts that less than this χ² decrease is left
        (``βᵀ α⁻¹ β`` from the undamped normal equations at an accepted point): the point is then
        within ``sqrt(gn_tol_chi2)`` standard errors of the minimum in the Fisher metric (0.1 σ by
        default). It stops well-behaved fits without the confirming steps of the Δχ² rule, and never
        on a plateau where damped steps are small but the minimum is still far. ``0`` disables it.
    lambda_init, lambda_up, lambda_down, lambda_max : float
        Marquardt damping: start, factor on a rejected step, divisor on an accepted one, and the
        value above which the fit is declared stalled.
    center_box : float
        The centre may move at most this many pixels from its start.
    wrap_tolerance : float
        Wrap-around tolerance for the DFT size (see :func:`galnet.render.required_fourier_size`).
    size_margin : float
        The DFT size is chosen once from the start with ``re × size_margin`` (and re-checked at
        the end: galaxies that outgrew it are refitted with a larger size).
    fourier_size : int, optional
        Force one DFT size for every galaxy (no per-galaxy choice, no refit pass).
    max_fourier_size : int, optional
        Cap on the per-galaxy DFT size (default: the smallest size ≥ 4 × the stamp side, 256 for
        61×61 stamps, 1024 for 256×256). The cost grows as N² (a 61×61 stamp at N = 2048 costs ~100×
        N = 128); faint galaxies whose fit wanders to very large re and n would otherwise be refitted
        at huge N. Galaxies that would need more get wrap-around light above ``wrap_tolerance``.
    min_good_pixels : int
        Fewer good pixels than this → ``FEW_GOOD_PIXELS``, not fitted.
    error_scale : str
        ``"none"`` (GALFIT/Imfit convention), ``"chi2nu"`` (errors × sqrt(χ²ν)) or ``"correlated"``
        (errors × the residual-correlation factor, :func:`galnet.fit.uncertainty.residual_correlation_factor`:
        right under correlated noise, and ``sqrt(χ²ν)`` for white residuals).
    max_batch : int
        Galaxies per tensor batch (bounds memory: the Jacobian is (batch, 8, H, W) float64).
    refit_outgrown : bool
        Refit, with a larger DFT size, the galaxies whose result outgrew the size chosen from their start
        (up to two more passes). ``False`` keeps the first pass (a fixed amount of work per galaxy, as
        :class:`galnet.fit.Refiner` wants).
    flag_max_iter : bool
        Flag ``NOT_CONVERGED`` when ``max_iter`` is reached. ``False`` where a fixed small iteration count
        is the point (refinement of a good start).
    """

    max_iter: int = 100
    rtol_chi2: float = 1e-8
    atol_chi2: float = 1e-3
    xtol: float = 1e-10
    patience: int = 2
    gn_tol_chi2: float = 1e-2
    lambda_init: float = 1e-3
    lambda_up: float = 10.0
    lambda_down: float = 10.0
    lambda_max: float = 1e10
    center_box: float = 5.0
    wrap_tolerance: float = 1e-3
    size_margin: float = 1.2
    min_good_pixels: int = 20
    fourier_size: int | None = None
    max_fourier_size: int | None = None
    error_scale: str = "none"
    max_batch: int = 256
    refit_outgrown: bool = True
    flag_max_iter: bool = True

    def __post_init__(self) -> None:
        if self.error_scale not in ERROR_SCALES:
            raise ConfigError(f"error_scale must be one of {', '.join(ERROR_SCALES)}, "
                              f"got {self.error_scale!r}")
