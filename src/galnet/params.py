"""The parameter table: the one source of truth for the seven Sérsic parameters.

Names, units, valid ranges, whether a parameter is cyclic, the transform the network regresses,
the fitter's bounds and the catalog column names are all read from :data:`PARAMETERS`.
Conventions (origin, angle zero point, ...) are defined in :mod:`galnet.conventions`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import ParameterRangeError

__all__ = [
    "ParameterSpec",
    "PARAMETERS",
    "PARAMETER_NAMES",
    "N_PARAMS",
    "index",
    "validate_parameters",
    "catalog_columns",
]


@dataclass(frozen=True)
class ParameterSpec:
    """One Sérsic parameter.

    Attributes
    ----------
    name : str
        Internal name, also the key in parameter dicts (``re`` is ``re_pix`` in catalogs).
    column : str
        Catalog column name.
    unit : str
        Unit string understood by astropy (``"pix"``, ``"mag"``, ``"deg"``, ``""``).
    valid : (float, float)
        Range the forward model accepts (inclusive); values outside raise or get flagged.
    fit_bounds : (float, float) or None
        Box bounds of the least-squares fitter; ``None`` = free (centre: bounded relative to start).
    net_transform : str
        What the network regresses: ``"offset"`` (from the stamp centre), ``"linear"``, ``"log10"``,
        ``"axial"`` (cos 2θ, sin 2θ).
    cyclic_period : float or None
        Period for cyclic parameters (PA: 180 degrees).
    description : str
        Human-readable meaning.
    """

    name: str
    column: str
    unit: str
    valid: tuple[float, float]
    fit_bounds: tuple[float, float] | None
    net_transform: str
    cyclic_period: float | None
    description: str


PARAMETERS: tuple[ParameterSpec, ...] = (
    ParameterSpec("x", "x", "pix", (-1e6, 1e6), None, "offset", None,
                  "centre x, FITS 1-based (first pixel centre at 1)"),
    ParameterSpec("y", "y", "pix", (-1e6, 1e6), None, "offset", None,
                  "centre y, FITS 1-based (first pixel centre at 1)"),
    ParameterSpec("mag", "mag", "mag", (-10.0, 50.0), (-10.0, 50.0), "linear", None,
                  "total magnitude of the untruncated profile"),
    ParameterSpec("re", "re_pix", "pix", (1e-3, 1e4), (0.05, 1000.0), "log10", None,
                  "half-light radius along the semi-major axis"),
    ParameterSpec("n", "n", "", (0.2, 10.0), (0.2, 10.0), "log10", None, "Sérsic index"),
    ParameterSpec("q", "q", "", (0.02, 1.0), (0.02, 1.0), "linear", None, "axis ratio b/a"),
    ParameterSpec("pa", "pa", "deg", (-90.0, 90.0), None, "axial", 180.0,
                  "position angle, degrees counter-clockwise from +y, wrapped to [-90, 90)"),
)
#: Parameter names in the fixed order used by every (B, 7) tensor in galnet.
PARAMETER_NAMES: tuple[str, ...] = tuple(p.name for p in PARAMETERS)
N_PARAMS = len(PARAMETERS)
_INDEX = {p.name: i for i, p in enumerate(PARAMETERS)}


def index(name: str) -> int:
    """Column index of a parameter in (B, 7) parameter arrays."""
    try:
        return _INDEX[name]
    except KeyError:
        raise KeyError(f"unknown parameter {name!r}; known: {', '.join(PARAMETER_NAMES)}") from None


def catalog_columns(*, errors: bool = True) -> list[str]:
    """The catalog column names: ``id, x, y, mag, re_pix, re_arcsec, n, q, pa`` (+ ``*_err``)."""
    cols = ["id"]
    for p in PARAMETERS:
        cols.append(p.column)
        if p.name == "re":
            cols.append("re_arcsec")
    if errors:
        for p in PARAMETERS:
            cols.append(p.column + "_err")
            if p.name == "re":
                cols.append("re_arcsec_err")
    return cols


def validate_parameters(params, *, what: str = "parameters", row_offset: int = 0) -> np.ndarray:
    """Check a (B, 7) parameter array against :data:`PARAMETERS`; return a bool mask of bad rows.

    Raises
    ------
    ParameterRangeError
        Naming the first bad row, parameter and value, if any row is non-finite or out of range.
        (Batch jobs that must keep going call :func:`bad_parameter_rows` instead.)
    """
    bad, reasons = bad_parameter_rows(params)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ParameterRangeError(
            f"{what}: row {i + row_offset}: {reasons[i]} ({int(bad.sum())} bad row(s) in total)"
        )
    return bad


def bad_parameter_rows(params) -> tuple[np.ndarray, list[str]]:
    """Rows of a (B, 7) parameter array that are non-finite or out of range, with reasons."""
    arr = np.asarray(params, dtype=float)
    if arr.ndim != 2 or arr.shape[1] != N_PARAMS:
        raise ParameterRangeError(f"parameters must have shape (B, {N_PARAMS}), got {arr.shape}")
    bad = np.zeros(len(arr), dtype=bool)
    reasons = [""] * len(arr)
    for j, spec in enumerate(PARAMETERS):
        col = arr[:, j]
        lo, hi = spec.valid
        nonfinite = ~np.isfinite(col)
        if spec.cyclic_period is None:
            out = (col < lo) | (col > hi)
        else:
            out = np.zeros_like(nonfinite)
        for i in np.flatnonzero((nonfinite | out) & ~bad):
            reasons[i] = (
                f"{spec.column} = {float(col[i])} is not finite"
                if nonfinite[i]
                else f"{spec.column} = {col[i]:g} outside the valid range [{lo:g}, {hi:g}]"
            )
        bad |= nonfinite | out
    return bad, reasons


__all__.append("bad_parameter_rows")
