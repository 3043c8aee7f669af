"""Ellipse geometry in galnet's (GALFIT's) convention: the position angle of the major axis is
measured in degrees counter-clockwise from +y, so the major-axis unit vector is ``(-sin pa, cos pa)``
and the minor-axis one ``(cos pa, sin pa)``.

Every rotation of offsets (pixels) or wavenumbers (radians / pixel) onto an ellipse's axes goes
through :func:`pa_rotation` and :func:`ellipse_axes`. They work on Python floats (``math``), numpy
arrays (``numpy``) and torch tensors (``torch``, differentiable) alike, with the operations in the
order the callers used before, so results are unchanged to the last bit.
"""

from __future__ import annotations

import math
from typing import Any, TypeVar

import numpy as np
import torch

__all__ = ["RADIANS_PER_DEGREE", "pa_rotation", "ellipse_axes"]

#: ``pi / 180``: d(radians) / d(degrees), e.g. for derivatives with respect to a position angle.
RADIANS_PER_DEGREE = math.pi / 180.0

T = TypeVar("T", float, np.ndarray, torch.Tensor)


def pa_rotation(pa_deg: T) -> tuple[T, T]:
    """Sine and cosine of position angles.

    Parameters
    ----------
    pa_deg : float, ndarray or Tensor, any shape
        Position angles, degrees counter-clockwise from +y.

    Returns
    -------
    sin_pa, cos_pa : same type, dtype and shape as ``pa_deg``
        ``sin(pa)`` and ``cos(pa)``: torch (``deg2rad``, differentiable) for tensors, numpy for
        arrays, ``math`` for scalars.
    """
    if isinstance(pa_deg, torch.Tensor):
        rad = torch.deg2rad(pa_deg)
        return torch.sin(rad), torch.cos(rad)
    if isinstance(pa_deg, np.ndarray):
        rad = np.deg2rad(pa_deg)
        return np.sin(rad), np.cos(rad)
    rad = math.radians(pa_deg)
    return math.sin(rad), math.cos(rad)


def ellipse_axes(dx: Any, dy: Any, sin_pa: Any, cos_pa: Any, *, inv_q: Any = None) -> tuple[Any, Any]:
    """Components of offsets along an ellipse's major and minor axes.

    ``major = -dx sin(pa) + dy cos(pa)`` and ``minor = dx cos(pa) + dy sin(pa)``; with ``inv_q``,
    ``minor = dx (cos(pa) / q) + dy (sin(pa) / q)`` (the minor axis stretched to a circle, as the
    elliptical radius ``sqrt(major^2 + (minor / q)^2)`` needs). The same rotation maps wavenumbers
    ``(kx, ky)`` onto ``(k_major, k_minor)``.

    Parameters
    ----------
    dx, dy : float, ndarray or Tensor
        Offsets along x (columns) and y (rows), pixels, or wavenumbers, radians / pixel.
    sin_pa, cos_pa : float, ndarray or Tensor
        From :func:`pa_rotation`; all four broadcast against each other.
    inv_q : float, ndarray or Tensor, optional
        ``1 / q``, broadcasting like ``sin_pa``.

    Returns
    -------
    major, minor : the broadcast shape of the inputs
        Same units as ``dx, dy``.
    """
    major = -dx * sin_pa + dy * cos_pa
    if inv_q is None:
        return major, dx * cos_pa + dy * sin_pa
    return major, dx * (cos_pa * inv_q) + dy * (sin_pa * inv_q)
