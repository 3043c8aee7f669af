"""Rendering: the Sérsic ⊗ PSF forward model, written once and used by every stage.

See :mod:`galnet.render.model` for the scheme, :mod:`galnet.render.scene` for stamps of many
objects (one inverse DFT per stamp and DFT size) and :mod:`galnet.render.psf` for how the pixel
response is counted.
"""

from .model import FOURIER_SIZES, render_point_source, render_sersic, required_fourier_size
from .psf import AnalyticPSF, GaussianPSF, KolmogorovPSF, MoffatPSF, psf_centroid, validate_psf_image
from .scene import render_scene
from .sersic import sersic_bn, sersic_fourier, sersic_profile

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
    "validate_psf_image",
    "psf_centroid",
    "sersic_bn",
    "sersic_fourier",
    "sersic_profile",
]
