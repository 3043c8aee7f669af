"""Rendering: the Sérsic ⊗ PSF forward model, written once and used by every stage.

See :mod:`galnet.render.model` for the scheme, :mod:`galnet.render.scene` for stamps of many
objects (one inverse DFT per stamp and DFT size), :mod:`galnet.render.psf` for PSFs (the one PSF
check, analytic PSFs, how the pixel response is counted, re-centring, libraries),
:mod:`galnet.render.fourier` for the Fourier engine, :mod:`galnet.render.wrap` for the DFT size and
wrap-around correction, :mod:`galnet.render.jacobian` for the model's derivatives and
:mod:`galnet.render.geometry` for the ellipse convention.
"""

from .geometry import ellipse_axes, pa_rotation
from .model import render_sersic
from .psf import (
    AnalyticPSF,
    GaussianPSF,
    KolmogorovPSF,
    MoffatPSF,
    check_psf,
    draw_analytic_psfs,
    load_psf_library,
    psf_centroid,
    psf_status,
    recenter_psf,
    render_point_source,
    repair_psf,
    repair_psfs,
)
from .scene import render_scene
from .sersic import sersic_bn, sersic_fourier, sersic_profile
from .wrap import FOURIER_SIZES, required_fourier_size

__all__ = [
    "render_sersic",
    "render_point_source",
    "render_scene",
    "required_fourier_size",
    "FOURIER_SIZES",
    "AnalyticPSF",
    "GaussianPSF",
    "MoffatPSF",
    "KolmogorovPSF",
    "check_psf",
    "psf_status",
    "repair_psf",
    "repair_psfs",
    "psf_centroid",
    "draw_analytic_psfs",
    "recenter_psf",
    "load_psf_library",
    "pa_rotation",
    "ellipse_axes",
    "sersic_bn",
    "sersic_fourier",
    "sersic_profile",
]
