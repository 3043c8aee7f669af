"""PSFs of the inputs: reading PSF files, and making a given PSF usable (checked, repaired or refused).

A PSF of the right size, unit sum and centred is used unchanged; one that is only not normalised is
renormalised; one of another size or off-centre is re-centred and cropped/padded; the rows of a repaired PSF
get ``PSF_FIXED``. A PSF that cannot be repaired (NaN, non-positive sum ...) stops the run when it is shared
by every row, or makes its row ``BAD_INPUT`` when it is a row's own.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

import numpy as np

from ..errors import InputDataError, PSFError
from ..render.psf import repair_psf, repair_psfs
from .fits_io import image_hdu, open_input_fits

log = logging.getLogger(__name__)

__all__ = [
    "PSF_SIZE",
    "prepare_psf",
    "prepare_psfs",
    "prepare_fit_psfs",
    "read_psf_file",
    "psf_from_file",
    "shared_psf",
]

#: PSF size (pixels) of the network's input unless the model card says otherwise.
PSF_SIZE = 25


def prepare_psf(psf: np.ndarray, size: int = PSF_SIZE, *, name: str = "PSF") -> tuple[np.ndarray, bool]:
    """A usable ``size × size`` PSF from a PSF image, and whether it had to be repaired.

    The rules and repairs are :func:`galnet.render.psf.repair_psf`'s (the one PSF check of galnet).

    Parameters
    ----------
    psf : ndarray, shape (P, Q)
    size : int
        Odd output size, pixels.
    name : str
        For the messages.

    Returns
    -------
    psf : ndarray, shape (size, size), float32, unit sum, centred
    fixed : bool
        Renormalised or re-centred (→ ``PSF_FIXED``).

    Raises
    ------
    PSFError
        The PSF cannot be repaired (NaN, non-positive sum, no light left); the message names ``name``.
    """
    return repair_psf(psf, size, name=name)


def prepare_psfs(
    cube: np.ndarray, size: int = PSF_SIZE, *, names: list[str] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vectorised :func:`prepare_psf` for a (B, P, P) cube of per-row PSFs; unusable rows are logged.

    Parameters
    ----------
    cube : ndarray, shape (B, P, Q)
    size : int
        Odd output size, pixels.
    names : list of str (B,), optional
        For the messages.

    Returns
    -------
    psfs : ndarray, shape (B, size, size), float32 (a central delta for unusable rows)
    fixed : ndarray, shape (B,), bool: repaired (→ ``PSF_FIXED``)
    bad : ndarray, shape (B,), bool: unusable (→ ``BAD_INPUT``; the reason is logged)
    """
    psfs, fixed, bad, messages = repair_psfs(cube, size, names=names)
    for i in np.flatnonzero(bad):
        log.error("%s; row flagged BAD_INPUT", messages[i])
    return psfs, fixed, bad


def prepare_fit_psfs(psf, b: int, ids=None) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Make a batch's PSF(s) usable at their own (odd) size, as the fitter needs them.

    The checks and repairs are those of :func:`prepare_psf` / :func:`prepare_psfs`, at the PSF's own size
    made odd (``max(P, Q) | 1``) instead of the network's size. A usable PSF is returned unchanged (float64).

    Parameters
    ----------
    psf : ndarray, shape (P, Q) (one PSF for the batch) or (B, P, Q)
    b : int
        Rows in the batch.
    ids : array_like (B,), optional
        For the messages.

    Returns
    -------
    psf : ndarray (S, S) or (B, S, S), float64, S odd
    fixed, bad : ndarray (B,) of bool
        Repaired (→ ``PSF_FIXED``); unusable (→ ``BAD_INPUT``).
    messages : list of str (B,)

    Raises
    ------
    InputDataError
        ``psf`` is neither (P, Q) nor (B, P, Q).
    """
    arr = np.asarray(psf, dtype=float)
    fixed = np.zeros(b, bool)
    bad = np.zeros(b, bool)
    msgs = [""] * b
    if arr.ndim == 2:
        size = max(arr.shape) | 1
        try:
            out, was_fixed = prepare_psf(arr, size, name="psf")
        except PSFError as exc:
            bad[:] = True
            msgs = [f"bad PSF: {exc}; "] * b
            out = np.zeros((size, size))
            out[size // 2, size // 2] = 1.0
            return out, fixed, bad, msgs
        if was_fixed:
            fixed[:] = True
            msgs = ["PSF renormalised / re-centred (PSF_FIXED); "] * b
            return np.asarray(out, dtype=float), fixed, bad, msgs
        return arr, fixed, bad, msgs
    if arr.ndim != 3 or arr.shape[0] != b:
        raise InputDataError(f"psf: expected (P, P) or ({b}, P, P), got shape {arr.shape}")
    size = max(arr.shape[1:]) | 1
    names = [f"PSF of id {v}" for v in (ids if ids is not None else range(b))]
    out, fixed, bad = prepare_psfs(arr, size, names=names)
    out = out.astype(float)
    keep = ~fixed & ~bad
    if keep.any() and arr.shape[1:] == (size, size):
        out[keep] = arr[keep]
    for i in np.flatnonzero(fixed):
        msgs[i] = "PSF renormalised / re-centred (PSF_FIXED); "
    for i in np.flatnonzero(bad):
        msgs[i] = "bad PSF (see the log); not fitted; "
    return out, fixed, bad, msgs


def read_psf_file(path: str | os.PathLike, *, hdu=None) -> np.ndarray:
    """Read a PSF image (P, P) or PSF cube (N, P, P) from a FITS file, as float64.

    Parameters
    ----------
    path : path
    hdu : int or str, optional
        Default: the first image HDU with 2-D or 3-D data.

    Raises
    ------
    InputDataError
        Missing or unreadable file, or no 2-D/3-D data.
    """
    path = Path(path)
    with open_input_fits(path, "PSF") as hdul:
        return np.array(image_hdu(hdul, path, hdu).data, dtype=np.float64)


@functools.lru_cache(maxsize=256)
def psf_from_file(path: str, size: int) -> tuple[np.ndarray | None, bool, str]:
    """``(psf, fixed, error message)`` of a per-row PSF file made ``size × size`` (:func:`prepare_psf`);
    ``(None, False, message)`` when it cannot be read or repaired. Cached: rows often share files."""
    try:
        return (*prepare_psf(read_psf_file(path), size, name=f"PSF file {path}"), "")
    except (InputDataError, PSFError) as exc:
        return None, False, str(exc)


def shared_psf(psf: np.ndarray, size: int, cache: dict, *, name: str) -> tuple[np.ndarray, bool]:
    """:func:`prepare_psf` of a PSF shared by every row, computed once per ``size`` (``cache``: the
    caller's dict, ``size → result``)."""
    if size not in cache:
        cache[size] = prepare_psf(psf, size, name=name)
    return cache[size]
