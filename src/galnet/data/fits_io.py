"""Reading FITS inputs: opening, choosing the image HDU, header metadata, and row-wise planes (σ, masks).

Every function here turns an unreadable file into an :class:`~galnet.errors.InputDataError` naming it
(through :func:`galnet.catalog.open_fits`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..catalog import open_fits
from ..errors import InputDataError
from .noise import sigma_from_variance

__all__ = [
    "FITS_SUFFIXES",
    "FitsPlanes",
    "open_input_fits",
    "image_hdu",
    "header_meta",
    "header_dict",
    "is_fits_name",
    "fits_stem",
]

#: File name endings read as FITS.
FITS_SUFFIXES = (".fits", ".fit", ".fits.gz", ".fit.gz", ".fts")


def is_fits_name(name: str) -> bool:
    """Whether a file name ends like a FITS file (:data:`FITS_SUFFIXES`, any case)."""
    return name.lower().endswith(FITS_SUFFIXES)


def fits_stem(name: str) -> str:
    """A FITS file name without its FITS ending (``g7.fits.gz`` → ``g7``)."""
    low = name.lower()
    for suf in sorted(FITS_SUFFIXES, key=len, reverse=True):
        if low.endswith(suf):
            return name[: -len(suf)]
    return name


def open_input_fits(path: Path, what: str):
    """:func:`galnet.catalog.open_fits`, memory-mapped unless the file is gzipped."""
    path = Path(path)
    return open_fits(path, what, memmap=not path.name.lower().endswith(".gz"))


def image_hdu(hdul, path: Path, hdu=None, ndim: tuple[int, ...] = (2, 3)):
    """The HDU ``hdu`` of an open file, or the first image HDU whose data has one of ``ndim`` dimensions.

    Parameters
    ----------
    hdul : astropy.io.fits.HDUList
        The open file.
    path : Path
        Its path, for the messages.
    hdu : int or str, optional
        The HDU to use (number or name); default: the first image HDU with data of ``ndim`` dimensions.
    ndim : tuple of int
        Accepted numbers of dimensions.

    Returns
    -------
    The HDU.

    Raises
    ------
    InputDataError
        No such HDU, or no image data of those dimensions (the message names the file).
    """
    try:
        if hdu is not None:
            h = hdul[hdu]
            if h.data is None or h.data.ndim not in ndim:
                raise InputDataError(f"{path}[{hdu}]: no {'/'.join(map(str, ndim))}-D image data")
            return h
        for h in hdul:
            if h.is_image and h.header.get("NAXIS", 0) in ndim and h.data is not None:
                return h
    except (KeyError, IndexError, OSError, ValueError, TypeError) as exc:
        raise InputDataError(f"{path}: cannot read HDU {hdu!r} ({exc})") from exc
    raise InputDataError(f"{path}: no {'/'.join(map(str, ndim))}-D image data in any HDU")


def header_meta(header, *, zeropoint=None, gain=None, pixel_scale=None) -> dict[str, Any]:
    """``zeropoint`` / ``gain`` / ``pixel_scale`` from the options, else the FITS header (None if unknown).

    Header keywords: ``MAGZPT``, ``MAGZERO``, ``ZEROPT``, ``ZP``, ``MAGZP`` (mag for 1 count); ``GAIN``,
    ``CCDGAIN`` (e- / count); ``PIXSCALE``, ``PIXSCAL`` (arcsec / pixel). Values that are not numbers are
    ignored.

    Parameters
    ----------
    header : astropy.io.fits.Header or None
    zeropoint, gain, pixel_scale : float, optional
        Options, which win over the header.

    Returns
    -------
    dict with ``zeropoint`` (mag), ``gain`` (e- / count), ``pixel_scale`` (arcsec / px), each float or None.
    """

    def first(*keys):
        for k in keys:
            if header is not None and k in header and isinstance(header[k], (int, float)):
                return float(header[k])
        return None

    return {
        "zeropoint": zeropoint
        if zeropoint is not None
        else first("MAGZPT", "MAGZERO", "ZEROPT", "ZP", "MAGZP"),
        "gain": gain if gain is not None else first("GAIN", "CCDGAIN"),
        "pixel_scale": pixel_scale if pixel_scale is not None else first("PIXSCALE", "PIXSCAL"),
    }


def header_dict(header) -> dict[str, Any]:
    """The keywords of a FITS header with their values, as a plain (picklable) dict; commentary cards
    (``COMMENT``, ``HISTORY``, blank) are left out."""
    if header is None:
        return {}
    return {k: v for k, v in header.items() if k not in ("COMMENT", "HISTORY", "")}


class FitsPlanes:
    """A per-pixel plane file (σ map or bad-pixel mask) read row by row alongside a stamp cube.

    The data is the first HDU with data: one (H, W) image or a cube (N, H, W) whose size equals that of the
    stamps (a cube of another layout with the same number of pixels is reshaped, as GALFIT reads it). The
    file is opened for each read (through its memory map when uncompressed), so the object pickles and a
    large file is never loaded whole.

    Parameters
    ----------
    path : path
    what : str
        ``"sigma"``, ``"variance"`` (read as σ = √variance; zero, negative or non-finite variances give NaN,
        masked later) or ``"mask"``.
    shape3 : tuple (N, H, W)
        Shape of the stamps the planes go with.

    Raises
    ------
    InputDataError
        Unreadable file, no data, or a number of pixels other than the stamps' (the message names the file).
    """

    def __init__(self, path, what: str, shape3: tuple[int, ...]) -> None:
        self.path = Path(path)
        self.what = what
        self.shape3 = tuple(int(v) for v in shape3)
        with open_input_fits(self.path, what) as hdul:
            h = self._hdu(hdul)
            self.shape = tuple(h.data.shape)
            self.index = [i for i, x in enumerate(hdul) if x is h][0]
        if int(np.prod(self.shape)) != int(np.prod(self.shape3)):
            raise InputDataError(
                f"{self.path}: {what} shape {self.shape} differs from the input {self.shape3}")

    def _hdu(self, hdul):
        try:
            h = next((h for h in hdul if h.data is not None), None)
        except (OSError, ValueError, EOFError) as exc:
            raise InputDataError(f"{self.path}: cannot read {self.what}: {exc}") from exc
        if h is None:
            raise InputDataError(f"{self.path}: no image data in any HDU")
        return h

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` as float64, shape (stop - start, H, W) of the stamps."""
        own = (1, *self.shape) if len(self.shape) == 2 else self.shape
        with open_input_fits(self.path, self.what) as hdul:
            data = hdul[self.index].data
            try:
                if own != self.shape3:  # same size, other layout: reshape it all (rare)
                    return np.array(data, dtype=float).reshape(self.shape3)[start:stop]
                out = np.array((data[None] if len(self.shape) == 2 else data)[start:stop], dtype=float)
            except OSError as exc:
                raise InputDataError(f"{self.path}: cannot read {self.what}: {exc}") from exc
            del data
        if self.what == "variance":
            out = sigma_from_variance(out)
        return out
