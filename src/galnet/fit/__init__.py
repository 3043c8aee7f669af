"""The classical fitter: batched Levenberg–Marquardt Sérsic ⊗ PSF fits (GALFIT-style).

See ``docs/fit.md``. Public API: :func:`fit_catalog` (files in, catalog out, resumable: the Python form of
``galnet fit``), :func:`fit_source` with :class:`FitOptions`, :func:`fit_stamps`, :func:`fit_multistart`,
:class:`FitPool` (one process per core), :class:`Refiner` (K steps from network answers:
``galnet predict --refine``), :class:`FitResult`, :class:`FitConfig`, :class:`FitStatus`, the starts
(:func:`moments_start`, :func:`catalog_start`, :func:`feedme_start`), neighbour masking
(:func:`neighbour_mask`, :func:`segment_stamps`) and GALFIT / Imfit interoperability
(:mod:`galnet.fit.galfit_io`).
"""

from .catalog import FitOptions, fit_catalog, fit_source
from .config import FitConfig, FitStatus
from .masking import neighbour_mask, segment_stamps
from .parallel import FitPool
from .refine import FitPixels, Refiner
from .solver import FitResult, fit_multistart, fit_stamps, pixel_weights
from .starts import catalog_start, feedme_start, moments_start, with_n

__all__ = [
    "fit_catalog",
    "fit_source",
    "FitOptions",
    "fit_stamps",
    "fit_multistart",
    "FitPool",
    "Refiner",
    "FitPixels",
    "FitResult",
    "FitConfig",
    "FitStatus",
    "pixel_weights",
    "moments_start",
    "catalog_start",
    "feedme_start",
    "with_n",
    "neighbour_mask",
    "segment_stamps",
]
