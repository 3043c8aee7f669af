"""The fitter's forward model of one group of galaxies: renders and Jacobians at a fixed DFT size.

Image PSFs: the renderer's :func:`~galnet.render.model.render_group` with the group's PSF spectra
computed once, and the Fourier-space Jacobian :func:`~galnet.render.jacobian.fourier_jacobian` (in
float32: it only steers the steps). Analytic PSFs: :func:`~galnet.render.render_sersic` and
forward-mode automatic differentiation (``torch.autograd.forward_ad``): because the galaxies are
independent, one JVP whose tangent is the unit vector of parameter ``j`` *for every galaxy* gives
``∂model_b/∂θ_bj`` for the whole batch. The magnitude and sky columns are analytic
(``∂M/∂mag = -0.4 ln10 · M_gal``, ``∂M/∂sky = 1``).
"""

from __future__ import annotations

import math

import torch
import torch.autograd.forward_ad as fwad

from ..conventions import fold_axis_ratio, mag_to_flux
from ..params import IX_MAG, N_PARAMS, index
from ..render import render_sersic, required_fourier_size
from ..render.fourier import image_psf_spectrum
from ..render.jacobian import fourier_jacobian
from ..render.model import render_group
from .config import IX_SKY

__all__ = ["GroupModel", "prepare_forward_ad"]

_LN10 = math.log(10.0)
#: Parameters whose Jacobian column needs a JVP (mag and sky are analytic).
_JVP_COLUMNS = tuple(index(n) for n in ("x", "y", "re", "n", "q", "pa"))


def prepare_forward_ad() -> None:
    """Import torch's forward-AD decompositions once, silencing its ``torch.jit.script`` deprecation.

    torch 2.x emits a DeprecationWarning when that module is first imported (on the first JVP);
    the warning is torch's own, not about galnet's use, so it is silenced here.
    """
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import torch._decomp.decompositions_for_jvp  # noqa: F401


class GroupModel:
    """Model images and Jacobians of one group of galaxies sharing a DFT size.

    An image PSF's spectrum (kx-major, see :func:`galnet.render.fourier.image_psf_spectrum`) is
    computed once per group and dtype, not at every render: the Levenberg–Marquardt loop renders the
    same galaxies tens of times. ``sel`` arguments pick rows of the group (its PSF rows and spectra).

    Parameters
    ----------
    psf : AnalyticPSF, or Tensor (P, P) / (B, P, P)
        Checked, unit-sum PSF(s) of the group.
    shape : (int, int)
        Stamp (H, W).
    size : int
        DFT size N of the group.
    zeropoint, exptime : float
        Magnitude zero point and exposure time, s.
    fast : bool
        Image PSFs: the Fourier-space Jacobian (else JVPs, as for analytic PSFs).
    jacobian_dtype : torch.dtype
        Real dtype of the Fourier-space Jacobian.
    """

    def __init__(self, psf, shape: tuple[int, int], size: int, zeropoint: float, exptime: float,
                 fast: bool = True, jacobian_dtype: torch.dtype = torch.float32):
        self.fast = fast
        self.jacobian_dtype = jacobian_dtype
        self.psf = psf
        self.shape = tuple(shape)
        self.size = int(size)
        self.zp = zeropoint
        self.exptime = exptime
        self._spectra: dict[torch.dtype, torch.Tensor] = {}

    @property
    def image_psf(self) -> bool:
        return isinstance(self.psf, torch.Tensor)

    def _psf_rows(self, sel):
        return self.psf[sel] if self.image_psf and self.psf.ndim == 3 and sel is not None else self.psf

    def psf_spectrum(self, dtype: torch.dtype, sel=None) -> torch.Tensor:
        """Kx-major PSF spectrum (K, N) or (B, K, N) in the complex dtype matching real ``dtype``."""
        spec = self._spectra.get(dtype)
        if spec is None:
            spec = self._spectra[dtype] = image_psf_spectrum(self.psf.to(dtype), self.size, kx_major=True)
        return spec[sel] if spec.ndim == 3 and sel is not None else spec

    def render(self, p: torch.Tensor, sel=None) -> torch.Tensor:
        """Galaxy models (B, H, W) at catalog parameters ``p`` (B, 7): :func:`render_sersic` at this size."""
        if not self.image_psf:
            return render_sersic(p, self.psf, shape=self.shape, zeropoint=self.zp, exptime=self.exptime,
                                 fourier_size=self.size, validate=False)
        # whether the near rings of periodic copies are subtracted: decided on the folded shape (the
        # bound uses re as the major axis, which it is not while the fit's q > 1)
        _, correct = required_fourier_size(fold_axis_ratio(p.detach().numpy()), self.shape,
                                           self.psf.shape[-1], return_correction=True, forced_size=self.size)
        x, y, mag, re, n, q, pa = p.unbind(-1)
        flux = mag_to_flux(mag, self.zp, self.exptime)
        return render_group(flux, x - 1, y - 1, re, n, q, pa, self._psf_rows(sel), self.shape, self.size,
                            correct=torch.as_tensor(correct), psf_spectrum=self.psf_spectrum(p.dtype, sel))

    def jacobian(self, p: torch.Tensor, sky, sel=None, gal: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Model (B, H, W) and Jacobian (B, 7 or 8, H, W) w.r.t. the external parameters.

        ``gal``: the galaxy model at ``p`` (without sky) if already rendered. Image PSFs use the
        Fourier-space Jacobian (:func:`galnet.render.jacobian.fourier_jacobian`), analytic PSFs one JVP of
        :func:`galnet.render.render_sersic` per parameter.
        """
        b = p.shape[0]
        n_cols = N_PARAMS if sky is None else N_PARAMS + 1
        jac = torch.empty((b, n_cols, *self.shape), dtype=p.dtype)
        if self.image_psf and self.fast:
            if gal is None:
                gal = self.render(p, sel)
            fourier_jacobian(p, self.psf_spectrum(self.jacobian_dtype, sel), self.shape, self.size, self.zp,
                             self.exptime, jac)
        else:
            prepare_forward_ad()
            for j in _JVP_COLUMNS:
                tangent = torch.zeros_like(p)
                tangent[:, j] = 1.0
                with fwad.dual_level():
                    out = render_sersic(fwad.make_dual(p, tangent), self._psf_rows(sel), shape=self.shape,
                                        zeropoint=self.zp, exptime=self.exptime, fourier_size=self.size,
                                        validate=False)
                    primal, tan = fwad.unpack_dual(out)
                    jac[:, j] = tan
                    if gal is None:
                        gal = primal.clone()
        assert gal is not None
        jac[:, IX_MAG] = -0.4 * _LN10 * gal
        model = gal
        if sky is not None:
            jac[:, IX_SKY] = 1.0
            model = gal + sky[:, None, None]
        return model, jac
