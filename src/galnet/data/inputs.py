""":func:`open_source`: the input source for a path (what ``galnet predict`` and ``galnet fit`` read)."""

from __future__ import annotations

from pathlib import Path

from ..errors import InputDataError
from .chunk import STAMP_SIZE
from .fits_io import is_fits_name
from .fits_sources import CutoutDirSource, FitsCubeSource
from .image_catalog import ImageCatalogSource
from .noise import check_sky_sigma
from .psfs import PSF_SIZE
from .sources import HDF5Source, InputSource

__all__ = ["open_source"]


def open_source(
    input_path,
    *,
    catalog=None,
    psf=None,
    sky_sigma=None,
    sigma=None,
    mask=None,
    variance=None,
    mask_planes=None,
    stamp_size: int = STAMP_SIZE,
    psf_size: int = PSF_SIZE,
    **kwargs,
) -> InputSource:
    """Open any input form by looking at the path.

    ``.h5``/``.hdf5`` → :class:`~galnet.data.HDF5Source`; a directory → :class:`~galnet.data.CutoutDirSource`;
    a FITS file with ``catalog`` → :class:`~galnet.data.ImageCatalogSource`; another FITS file →
    :class:`~galnet.data.FitsCubeSource`.

    Parameters
    ----------
    input_path : path
    catalog : path or Table, optional
        Source catalog of an image input.
    psf : path or ndarray, optional
        PSF image or cube (FITS inputs).
    sky_sigma : float, optional
        Sky σ, counts / pixel, where the input gives none (default: estimated from the stamp borders).
    sigma, variance, mask : path, optional
        σ-map (counts), variance (counts², read as σ) and bad-pixel mask (non-zero = bad) files: one plane per
        stamp for FITS cube and cutout inputs; one image of the image's shape (a file, or the name or number
        of an HDU of the image file, e.g. ``VARIANCE``) for an image input.
    mask_planes : sequence of str, optional
        For an image input whose mask is a bit-plane image (HSC / LSST pipelines): the planes whose pixels are
        excluded (default :data:`galnet.data.hsc.DEFAULT_MASK_PLANES`).
    stamp_size, psf_size : int
        Sizes of the stamps and PSFs of :meth:`~galnet.data.InputSource.read_chunk` (the model's).
    **kwargs
        More arguments of the source (``zeropoint``, ``gain``, ``pixel_scale``, ``image_hdu``, column names
        ...).

    Returns
    -------
    InputSource

    Raises
    ------
    InputDataError
        Missing path, unknown format, missing PSF, unreadable file (the message names it).
    ConfigError
        A ``sky_sigma`` that is not a positive number.
    """
    p = Path(input_path)
    if not p.exists():
        raise InputDataError(f"{p}: no such input file or directory")
    sky_sigma = check_sky_sigma(sky_sigma, "--sky-sigma")
    common = {k: kwargs.pop(k) for k in ("zeropoint", "gain", "pixel_scale") if k in kwargs}
    planes = {"sigma": sigma, "mask": mask, "variance": variance}
    if p.is_dir():
        src: InputSource = CutoutDirSource(p, psf=psf, sky_sigma=sky_sigma, **planes, **common)
    elif p.suffix.lower() in (".h5", ".hdf5"):
        given = [k for k, v in planes.items() if v is not None]
        if given:
            raise InputDataError(f"{p}: an HDF5 split carries its own σ maps (sigma_maps); --{given[0]} is "
                                 "for FITS inputs")
        src = HDF5Source(p, sky_sigma=sky_sigma, **common)
    elif is_fits_name(p.name):
        if catalog is not None:
            src = ImageCatalogSource(p, catalog, psf=psf, sky_sigma=sky_sigma, **planes,
                                     mask_planes=mask_planes, **common, **kwargs)
        else:
            src = FitsCubeSource(p, psf=psf, sky_sigma=sky_sigma, hdu=kwargs.get("image_hdu"), **planes,
                                 **common)
    else:
        raise InputDataError(
            f"{p}: unknown input; give an HDF5 split (.h5), a FITS cube or image (.fits, with "
            "--catalog for an image), or a directory of FITS cutouts"
        )
    if src.meta.get("zeropoint") is None:
        src.meta["zeropoint"] = None  # the model's zero point is used
    src.stamp_size, src.psf_size = stamp_size, psf_size
    return src
