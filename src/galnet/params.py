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
    "NET_TRANSFORMS",
    "IX_X",
    "IX_Y",
    "IX_MAG",
    "IX_RE",
    "IX_N",
    "IX_Q",
    "IX_PA",
    "index",
    "column",
    "parameter_spec",
    "loss_weights",
    "validate_parameters",
    "bad_parameter_rows",
    "catalog_columns",
]

#: The network transforms a parameter may declare (:attr:`ParameterSpec.net_transform`), each with the
#: names of the network targets it makes from a parameter called ``{name}``:
#:
#: * ``"offset"``: the offset from the stamp centre in pixels, ``d{name}``;
#: * ``"mag_rel"``: the magnitude in sky-noise units, ``mag + 2.5 log10(sky_sigma)``, ``{name}_rel``;
#: * ``"log10"``: ``log10(value)``, ``log10_{name}``;
#: * ``"linear"``: the value itself, ``{name}``;
#: * ``"axial"``: an axial angle in degrees (``cyclic_period`` 180) as the unit vector
#:   ``(cos 2θ, sin 2θ)``, ``cos2{name}`` and ``sin2{name}`` (not standardised).
#:
#: The implementations are in :mod:`galnet.models.scaling`.
NET_TRANSFORMS: dict[str, tuple[str, ...]] = {
    "offset": ("d{name}",),
    "mag_rel": ("{name}_rel",),
    "log10": ("log10_{name}",),
    "linear": ("{name}",),
    "axial": ("cos2{name}", "sin2{name}"),
}


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
        What the network regresses, one of :data:`NET_TRANSFORMS`: ``"offset"`` (from the stamp
        centre, pixels), ``"mag_rel"`` (magnitude in sky-noise units), ``"linear"``, ``"log10"``,
        ``"axial"`` (cos 2θ, sin 2θ).
    cyclic_period : float or None
        Period for cyclic parameters (PA: 180 degrees).
    description : str
        Human-readable meaning.
    net_clamp : bool
        The network's decode clamps the parameter to ``valid`` (in the transformed space).
    net_default : (float, float)
        Mean and standard deviation of the standardised network target before a training set has
        been fitted (:class:`galnet.models.OutputScalingConfig`'s defaults; unused for ``"axial"``).
    loss_weight : float
        Default weight of the parameter's target(s) in the training loss
        (``TrainConfig.loss_weights`` overrides it by name).
    arcsec_column : str or None
        Name of a second catalog column holding the value times the pixel scale (``re_arcsec``).
    """

    name: str
    column: str
    unit: str
    valid: tuple[float, float]
    fit_bounds: tuple[float, float] | None
    net_transform: str
    cyclic_period: float | None
    description: str
    net_clamp: bool = False
    net_default: tuple[float, float] = (0.0, 1.0)
    loss_weight: float = 1.0
    arcsec_column: str | None = None

    def __post_init__(self) -> None:
        if self.net_transform not in NET_TRANSFORMS:
            raise ValueError(f"parameter {self.name!r}: unknown net_transform {self.net_transform!r}; "
                             f"known: {', '.join(NET_TRANSFORMS)}")
        if (self.net_transform == "axial") != (self.cyclic_period is not None):
            raise ValueError(f"parameter {self.name!r}: the 'axial' transform is for cyclic parameters only")
        if self.cyclic_period not in (None, 180.0):
            raise ValueError(f"parameter {self.name!r}: cyclic parameters are axial angles in degrees "
                             "(period 180, wrapped by galnet.conventions.wrap_pa)")
        if self.net_clamp and self.net_transform not in ("linear", "log10"):
            raise ValueError(f"parameter {self.name!r}: net_clamp needs a 'linear' or 'log10' transform")

    @property
    def net_targets(self) -> tuple[str, ...]:
        """Names of the network targets of this parameter (one, or two for ``"axial"``)."""
        return tuple(t.format(name=self.name) for t in NET_TRANSFORMS[self.net_transform])

    @property
    def standardised(self) -> bool:
        """Whether the network target(s) are standardised with a training set's mean and std."""
        return self.net_transform != "axial"


PARAMETERS: tuple[ParameterSpec, ...] = (
    ParameterSpec("x", "x", "pix", (-1e6, 1e6), None, "offset", None,
                  "centre x, FITS 1-based (first pixel centre at 1)"),
    ParameterSpec("y", "y", "pix", (-1e6, 1e6), None, "offset", None,
                  "centre y, FITS 1-based (first pixel centre at 1)"),
    ParameterSpec("mag", "mag", "mag", (-10.0, 50.0), (-10.0, 50.0), "mag_rel", None,
                  "total magnitude of the untruncated profile"),
    ParameterSpec("re", "re_pix", "pix", (1e-3, 1e4), (0.05, 1000.0), "log10", None,
                  "half-light radius along the semi-major axis", net_default=(0.5, 0.3),
                  arcsec_column="re_arcsec"),
    ParameterSpec("n", "n", "", (0.2, 10.0), (0.2, 10.0), "log10", None, "Sérsic index",
                  net_clamp=True, net_default=(0.2, 0.3)),
    ParameterSpec("q", "q", "", (0.02, 1.0), (0.02, 1.0), "linear", None, "axis ratio b/a",
                  net_clamp=True, net_default=(0.6, 0.25)),
    ParameterSpec("pa", "pa", "deg", (-90.0, 90.0), None, "axial", 180.0,
                  "position angle, degrees counter-clockwise from +y, wrapped to [-90, 90)"),
)
#: Parameter names in the fixed order used by every (B, 7) tensor in galnet.
PARAMETER_NAMES: tuple[str, ...] = tuple(p.name for p in PARAMETERS)
N_PARAMS = len(PARAMETERS)
_INDEX = {p.name: i for i, p in enumerate(PARAMETERS)}


def index(name: str) -> int:
    """Column index of a parameter in (B, 7) parameter arrays.

    Parameters
    ----------
    name : str
        A parameter name of :data:`PARAMETER_NAMES` (``"x"``, ``"mag"``, ``"re"`` ...).

    Raises
    ------
    KeyError
        For an unknown name.
    """
    try:
        return _INDEX[name]
    except KeyError:
        raise KeyError(f"unknown parameter {name!r}; known: {', '.join(PARAMETER_NAMES)}") from None


#: Column indices of the parameters in (..., 7) parameter arrays (``params[:, IX_RE]``).
IX_X, IX_Y, IX_MAG, IX_RE, IX_N, IX_Q, IX_PA = (index(n) for n in ("x", "y", "mag", "re", "n", "q", "pa"))


def column(params, name: str):
    """The column of one parameter in a (..., 7) array or tensor: ``params[..., index(name)]`` (a view)."""
    return params[..., index(name)]


def parameter_spec(name: str) -> ParameterSpec:
    """The :class:`ParameterSpec` of a parameter name (``KeyError`` for an unknown one)."""
    return PARAMETERS[index(name)]


def loss_weights(overrides=None) -> dict[str, float]:
    """Loss weight of every parameter: the table's ``loss_weight``, overridden by name.

    Parameters
    ----------
    overrides : dict of str to float, optional
        Weights of some parameters by name (``{"pa": 0.5}``).

    Returns
    -------
    dict name -> weight, in table order.

    Raises
    ------
    KeyError
        An override names no parameter.
    """
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(PARAMETER_NAMES))
    if unknown:
        raise KeyError(f"unknown parameter(s) {unknown}; known: {', '.join(PARAMETER_NAMES)}")
    return {p.name: float(overrides.get(p.name, p.loss_weight)) for p in PARAMETERS}


def catalog_columns(*, errors: bool = True) -> list[str]:
    """The catalog column names: ``id, x, y, mag, re_pix, re_arcsec, n, q, pa`` (+ ``*_err``)."""
    cols = ["id"]
    for p in PARAMETERS:
        cols.append(p.column)
        if p.arcsec_column:
            cols.append(p.arcsec_column)
    if errors:
        for p in PARAMETERS:
            cols.append(p.column + "_err")
            if p.arcsec_column:
                cols.append(p.arcsec_column + "_err")
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


#: Relative tolerance of the range checks: float32 rounding of a bound (``float32(0.2) < 0.2``).
_F32_ROUNDING = 1e-7


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
        if spec.cyclic_period is None:  # a bound rounded to float32 (a network's clamp) is still inside
            out = (col < lo - _F32_ROUNDING * abs(lo)) | (col > hi + _F32_ROUNDING * abs(hi))
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

