"""Typed configuration of the simulation stage, loaded from TOML presets and saved as JSON.

A :class:`SimulationConfig` holds everything that decides what a simulated stamp looks like:
the survey (pixel scale, zero point, gain, stamp sizes), the priors of the seven Sérsic
parameters, the PSF distribution (or a PSF library), the noise model, the neighbours and the
optional real backgrounds. Presets live in ``galnet/presets/*.toml`` (``hsc-r`` is the
default); every dataset stores the config it was made with (``config.json`` and the ``meta``
attribute of each HDF5 split), and :meth:`SimulationConfig.from_dict` rebuilds it.

Units: angles on the sky in arcsec, positions and sizes on the stamp in pixels, magnitudes in
AB mag with the preset zero point, fluxes and noise in counts (see :mod:`galnet.conventions`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config_io import build_config, merge_overrides, read_config
from ..errors import ConfigError

__all__ = [
    "Prior",
    "PriorsConfig",
    "PSFConfig",
    "NoiseConfig",
    "NeighbourConfig",
    "BackgroundConfig",
    "SimulationConfig",
    "load_preset",
    "list_presets",
]

_PRIOR_KINDS = ("uniform", "loguniform", "normal", "fixed", "table")


@dataclass
class Prior:
    """A one-dimensional prior.

    Attributes
    ----------
    kind : str
        ``"uniform"`` (``low``, ``high``), ``"loguniform"`` (``low``, ``high`` > 0), ``"normal"``
        (``mean``, ``sigma``, truncated to [``low``, ``high``] when given), ``"fixed"``
        (``value``) or ``"table"`` (draws with replacement from ``values``, or from column
        ``column`` of the table file ``path``: ``.npy``, ``.csv`` with a header, or FITS).
    low, high, mean, sigma, value : float, optional
        Parameters of the prior, in the unit of the quantity it describes.
    path, column : str, optional
        Table file and column (``kind = "table"``).
    values : list of float, optional
        Inline table (``kind = "table"``).
    """

    kind: str = "uniform"
    low: float | None = None
    high: float | None = None
    mean: float | None = None
    sigma: float | None = None
    value: float | None = None
    path: str | None = None
    column: str | None = None
    values: list[float] | None = None

    def validate(self, name: str) -> None:
        """Raise :class:`~galnet.errors.ConfigError` naming ``name`` if the prior is inconsistent."""
        if self.kind not in _PRIOR_KINDS:
            raise ConfigError(
                f"prior {name}: kind {self.kind!r} unknown; use one of {', '.join(_PRIOR_KINDS)}"
            )
        if self.kind in ("uniform", "loguniform"):
            if self.low is None or self.high is None or not self.low <= self.high:
                raise ConfigError(f"prior {name}: {self.kind} needs low <= high, got {self.low}, {self.high}")
            if self.kind == "loguniform" and not self.low > 0:
                raise ConfigError(f"prior {name}: loguniform needs low > 0, got {self.low}")
        elif self.kind == "normal":
            if self.mean is None or self.sigma is None or not self.sigma >= 0:
                raise ConfigError(f"prior {name}: normal needs mean and sigma >= 0")
            if self.low is not None and self.high is not None and not self.low < self.high:
                raise ConfigError(f"prior {name}: truncation needs low < high")
        elif self.kind == "fixed":
            if self.value is None:
                raise ConfigError(f"prior {name}: fixed needs value")
        elif self.kind == "table" and self.values is None and (self.path is None or self.column is None):
            raise ConfigError(f"prior {name}: table needs values, or path and column")

    def table(self) -> np.ndarray:
        """The table of a ``"table"`` prior as a 1-D float array (read from file once, then cached)."""
        if self.values is not None:
            return np.asarray(self.values, dtype=float)
        return _read_table_column(str(self.path), str(self.column))

    def sample(
        self, rng: np.random.Generator, n: int, *, high: np.ndarray | float | None = None
    ) -> np.ndarray:
        """Draw ``n`` values.

        Parameters
        ----------
        rng : numpy.random.Generator
        n : int
        high : float or ndarray (n,), optional
            Per-draw upper cap replacing ``high`` of uniform / log-uniform priors (used to keep
            galaxies inside their stamp); other kinds are clipped to it.

        Returns
        -------
        ndarray, shape (n,), float64
        """
        u = rng.random(n)
        hi = self.high if high is None else np.minimum(self.high if self.high is not None else np.inf, high)
        if self.kind == "uniform":
            return self.low + (hi - self.low) * u
        if self.kind == "loguniform":
            lo = math.log(self.low)
            return np.exp(lo + (np.log(hi) - lo) * u)
        if self.kind == "normal":
            from scipy.special import ndtr, ndtri

            a = -np.inf if self.low is None else (self.low - self.mean) / max(self.sigma, 1e-300)
            b = np.inf if hi is None else (hi - self.mean) / max(self.sigma, 1e-300)
            pa, pb = ndtr(a), ndtr(b)
            return self.mean + self.sigma * ndtri(np.clip(pa + (pb - pa) * u, 1e-300, 1 - 1e-16))
        if self.kind == "fixed":
            out = np.full(n, float(self.value))
        else:
            tab = self.table()
            out = tab[np.minimum((u * len(tab)).astype(np.int64), len(tab) - 1)]
        return out if high is None else np.minimum(out, high)


_TABLE_CACHE: dict[tuple[str, str], np.ndarray] = {}


def _read_table_column(path: str, column: str) -> np.ndarray:
    key = (path, column)
    if key in _TABLE_CACHE:
        return _TABLE_CACHE[key]
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"prior table {path}: file not found")
    try:
        if p.suffix == ".npy":
            arr = np.load(p, allow_pickle=False)
            col = arr[column] if arr.dtype.names else arr
        elif p.suffix == ".csv":
            arr = np.genfromtxt(p, delimiter=",", names=True)
            col = arr[column]
        else:
            from astropy.table import Table

            col = np.asarray(Table.read(p)[column])
    except Exception as exc:  # noqa: BLE001 - numpy / astropy raise many types for bad files
        detail = " ".join(str(exc).split())[:200]
        raise ConfigError(f"prior table {path}: cannot read column {column!r} ({detail})") from exc
    try:
        col = np.asarray(col, dtype=float).ravel()
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"prior table {path}: column {column!r} is not numeric ({exc})") from exc
    if col.size == 0:
        raise ConfigError(f"prior table {path}: column {column!r} is empty")
    bad = ~np.isfinite(col)
    if bad.any():
        raise ConfigError(f"prior table {path}: column {column!r} has {int(bad.sum())} NaN or infinite "
                          f"value(s), first at row {int(np.flatnonzero(bad)[0])}")
    _TABLE_CACHE[key] = col
    return col


@dataclass
class PriorsConfig:
    """Priors of the target galaxy's parameters.

    Attributes
    ----------
    dx, dy : Prior
        Offset of the centre from the stamp centre, pixels.
    mag : Prior
        Total magnitude (preset zero point).
    re_arcsec : Prior
        Semi-major half-light radius, arcsec (converted to pixels with the pixel scale).
    re_max_fraction : float
        Cap: ``re <= re_max_fraction * (stamp_size - 1) / 2`` pixels, so the galaxy stays inside
        its stamp (draws above the cap are re-drawn within the capped range, not clipped).
    n, q : Prior
        Sérsic index and axis ratio b/a.
    pa : Prior
        Position angle, degrees CCW from +y (wrapped to [-90, 90) after drawing).
    """

    dx: Prior = field(default_factory=lambda: Prior("uniform", -2.0, 2.0))
    dy: Prior = field(default_factory=lambda: Prior("uniform", -2.0, 2.0))
    mag: Prior = field(default_factory=lambda: Prior("uniform", 17.0, 24.0))
    re_arcsec: Prior = field(default_factory=lambda: Prior("loguniform", 0.1, 3.0))
    re_max_fraction: float = 0.5
    n: Prior = field(default_factory=lambda: Prior("loguniform", 0.3, 8.0))
    q: Prior = field(default_factory=lambda: Prior("uniform", 0.1, 1.0))
    pa: Prior = field(default_factory=lambda: Prior("uniform", -90.0, 90.0))


@dataclass
class PSFConfig:
    """Distribution of the per-stamp PSF, or a PSF library.

    Attributes
    ----------
    fwhm_arcsec : Prior
        Seeing FWHM (major axis), arcsec.
    model_weights : dict
        Relative frequency of the analytic profiles: keys ``"moffat"``, ``"kolmogorov"``.
    moffat_beta : Prior
        Moffat ``beta``.
    ellipticity : Prior
        PSF ellipticity ``1 - q`` (small: residual PSF anisotropy).
    oversample : int
        Sub-pixels per pixel per axis (odd) used to integrate the analytic PSF over the pixel.
    library : str or None
        FITS file with a PSF cube (N, P, P), a 2-D PSF, or one 2-D PSF per HDU. If set, every
        stamp takes a random PSF from it (validated, re-centred and cropped to ``psf_size``).
    library_hdu : int or str or None
        HDU holding the cube (default: every HDU with image data).
    """

    fwhm_arcsec: Prior = field(
        default_factory=lambda: Prior("normal", low=0.6, high=1.0, mean=0.75, sigma=0.1)
    )
    model_weights: dict[str, float] = field(default_factory=lambda: {"moffat": 0.7, "kolmogorov": 0.3})
    moffat_beta: Prior = field(default_factory=lambda: Prior("uniform", 2.0, 5.0))
    ellipticity: Prior = field(default_factory=lambda: Prior("uniform", 0.0, 0.05))
    oversample: int = 5
    library: str | None = None
    library_hdu: int | str | None = None


@dataclass
class NoiseConfig:
    """Noise model.

    Attributes
    ----------
    enabled : bool
        ``False`` gives noise-free stamps (tests, diagnostics); ``sky_sigma`` is still stored.
    depth_5sigma : float
        5σ point-source depth, AB mag, for an optimal PSF-weighted aperture.
    depth_seeing_arcsec, depth_moffat_beta : float
        The PSF (Moffat) the depth refers to: the median seeing.
    sky_sigma : float or None
        Override: sky noise per pixel in counts (else derived from the depth, see
        :meth:`SimulationConfig.sky_sigma`).
    depth_scatter_mag : float
        Per-stamp scatter of the depth (mag, Gaussian): ``sigma_i = sigma_0 * 10**(0.4 delta)``.
    poisson : bool
        Add the source's Poisson noise (variance ``model / gain``; Gaussian approximation,
        exact to < 1e-3 here because ``gain * model >> 1`` wherever it matters).
    correlated_fraction : float
        Fraction of stamps whose noise is correlated as in a resampled coadd: the noise field is
        convolved with a bilinear-interpolation kernel of random sub-pixel phase and renormalised
        so that the per-pixel σ is kept.
    """

    enabled: bool = True
    depth_5sigma: float = 26.0
    depth_seeing_arcsec: float = 0.75
    depth_moffat_beta: float = 3.0
    sky_sigma: float | None = None
    depth_scatter_mag: float = 0.1
    poisson: bool = True
    correlated_fraction: float = 0.5


@dataclass
class NeighbourConfig:
    """Neighbouring galaxies and stars, drawn from number counts.

    Differential counts per deg² per mag: ``dN/dm = 10**(log10_a + slope * (m - m_ref))``,
    between ``mag_min`` and ``mag_max``, placed uniformly over the stamp grown by
    ``margin_pix`` on each side (so that light from outside leaks in).

    Attributes
    ----------
    enabled : bool
    galaxy_log10_a, galaxy_slope, galaxy_m_ref : float
        Galaxy counts.
    star_log10_a, star_slope, star_m_ref : float
        Star counts (point sources drawn with the stamp's PSF).
    mag_min, mag_max : float
        Magnitude range of neighbours.
    margin_pix : float
        Neighbours are placed up to this many pixels outside the stamp.
    re_log10_at_m20, re_slope, re_scatter_dex : float
        Size–magnitude relation of neighbour galaxies: ``log10 re_arcsec = re_log10_at_m20 +
        re_slope (m - 20) + N(0, re_scatter_dex)``, then clipped to [0.05", 3"].
    n, q : Prior
        Sérsic index and axis ratio of neighbour galaxies.
    close_pair_fraction : float
        Fraction of stamps that get one extra galaxy neighbour at 1.5–4 target ``re`` (and at
        least 3 px) from the target: blends, which number counts alone make rare.
    wrap_tolerance : float
        Renderer wrap tolerance for neighbours and stars (rendered in a second call): looser than
        the target's because neighbours are faint (3% of a 22-mag neighbour's flux spread over
        the stamp is < 0.01 sigma per pixel) and they are ~3/4 of the rendering cost.
    """

    enabled: bool = True
    galaxy_log10_a: float = 4.5
    galaxy_slope: float = 0.33
    galaxy_m_ref: float = 24.0
    star_log10_a: float = 2.7
    star_slope: float = 0.08
    star_m_ref: float = 20.0
    mag_min: float = 17.0
    mag_max: float = 26.5
    margin_pix: float = 8.0
    re_log10_at_m20: float = 0.25
    re_slope: float = -0.12
    re_scatter_dex: float = 0.2
    n: Prior = field(default_factory=lambda: Prior("loguniform", 0.5, 4.0))
    q: Prior = field(default_factory=lambda: Prior("uniform", 0.2, 1.0))
    close_pair_fraction: float = 0.1
    wrap_tolerance: float = 0.03


@dataclass
class BackgroundConfig:
    """Real backgrounds: random cutouts of user images into which galaxies are injected.

    Attributes
    ----------
    files : list of str
        FITS images (their pixel scale must be the preset's; the stamp is a plain cutout).
    image_hdu : int or str
        HDU of the science image.
    variance_hdu : int or str or None
        HDU of the variance plane (counts², same units as the image); if set, stamps get a
        ``sigma_maps`` entry. ``None``: the noise is measured robustly from each cutout.
    zeropoint : float or None
        Zero point of the files (mag of 1 unit); pixels are rescaled to the preset's zero point.
        ``None``: already in preset counts.
    probability : float
        Fraction of stamps drawn on a real background (the rest use simulated sky noise).
    max_tries : int
        Random cutout positions tried before a file is declared unusable (NaN everywhere).
    """

    files: list[str] = field(default_factory=list)
    image_hdu: int | str = 0
    variance_hdu: int | str | None = None
    zeropoint: float | None = None
    probability: float = 1.0
    max_tries: int = 50


@dataclass
class SimulationConfig:
    """Everything that defines a simulated dataset.

    Attributes
    ----------
    name : str
        Preset name.
    pixel_scale : float
        Arcsec per pixel.
    zeropoint : float
        Mag of 1 count.
    gain : float
        Electrons per count (sets the Poisson noise of sources: variance ``model / gain``).
    stamp_size, psf_size : int
        Stamp and PSF sizes, pixels (odd).
    wrap_tolerance : float
        Renderer accuracy knob (see :func:`galnet.render.render_sersic`).
    render_dtype : str
        ``"float32"`` or ``"float64"``: precision of the rendering.
    priors, psf, noise, neighbours, background
        See the sub-configs.
    description : str
        Free text.
    """

    name: str = "custom"
    pixel_scale: float = 0.168
    zeropoint: float = 27.0
    gain: float = 2300.0
    stamp_size: int = 61
    psf_size: int = 25
    wrap_tolerance: float = 3e-3
    render_dtype: str = "float32"
    priors: PriorsConfig = field(default_factory=PriorsConfig)
    psf: PSFConfig = field(default_factory=PSFConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    neighbours: NeighbourConfig = field(default_factory=NeighbourConfig)
    background: BackgroundConfig = field(default_factory=BackgroundConfig)
    description: str = ""

    # ------------------------------------------------------------------ validation / io
    def validate(self) -> SimulationConfig:
        """Check consistency; raise :class:`~galnet.errors.ConfigError` naming the field."""
        if self.stamp_size % 2 == 0 or self.psf_size % 2 == 0:
            raise ConfigError(f"stamp_size and psf_size must be odd, got {self.stamp_size}, {self.psf_size}")
        if self.psf_size > self.stamp_size:
            raise ConfigError("psf_size must not exceed stamp_size")
        for name, value in (("pixel_scale", self.pixel_scale), ("gain", self.gain),
                            ("wrap_tolerance", self.wrap_tolerance)):
            if not (isinstance(value, int | float) and value > 0 and math.isfinite(value)):
                raise ConfigError(f"{name} must be a positive number, got {value!r}")
        if self.render_dtype not in ("float32", "float64"):
            raise ConfigError(f"render_dtype must be float32 or float64, got {self.render_dtype!r}")
        for f in dataclasses.fields(PriorsConfig):
            val = getattr(self.priors, f.name)
            if isinstance(val, Prior):
                val.validate(f"priors.{f.name}")
        for name in ("fwhm_arcsec", "moffat_beta", "ellipticity"):
            getattr(self.psf, name).validate(f"psf.{name}")
        self.neighbours.n.validate("neighbours.n")
        self.neighbours.q.validate("neighbours.q")
        unknown = set(self.psf.model_weights) - {"moffat", "kolmogorov"}
        if unknown or sum(self.psf.model_weights.values()) <= 0:
            raise ConfigError(f"psf.model_weights: keys must be moffat/kolmogorov with a positive sum, got "
                              f"{self.psf.model_weights}")
        if self.psf.oversample < 1 or self.psf.oversample % 2 == 0:
            raise ConfigError(f"psf.oversample must be a positive odd integer, got {self.psf.oversample}")
        for name in ("correlated_fraction",):
            v = getattr(self.noise, name)
            if not 0 <= v <= 1:
                raise ConfigError(f"noise.{name} must be in [0, 1], got {v}")
        if not 0 <= self.background.probability <= 1:
            raise ConfigError(f"background.probability must be in [0, 1], got {self.background.probability}")
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (JSON-serialisable)."""
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        """JSON text of :meth:`to_dict` (sorted keys, so equal configs give equal text)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SimulationConfig:
        """Build from a nested dict (TOML / JSON) and validate; unknown keys raise :class:`ConfigError`
        (:func:`galnet.config_io.build_config`)."""
        return build_config(cls, data).validate()

    # ------------------------------------------------------------------ derived quantities
    def sky_sigma(self) -> float:
        """Median sky noise per pixel, counts: the override, or derived from the 5σ depth.

        Notes
        -----
        For a point source measured with the optimal (PSF-weighted) aperture on a sky-limited
        image, ``S/N = F sqrt(sum P_i^2) / sigma`` with ``P`` the unit-sum effective PSF, so
        ``sigma = F_lim sqrt(sum P_i^2) / 5`` with ``F_lim = 10**(-0.4 (depth - zp))``. ``P`` is
        a Moffat (``depth_moffat_beta``) of FWHM ``depth_seeing_arcsec``.
        """
        if self.noise.sky_sigma is not None:
            return float(self.noise.sky_sigma)
        from ..render.psf import draw_analytic_psfs

        fwhm = self.noise.depth_seeing_arcsec / self.pixel_scale
        psf = draw_analytic_psfs(
            np.zeros(1, dtype=np.int8), np.array([fwhm]), np.array([self.noise.depth_moffat_beta]),
            np.ones(1), np.zeros(1), self.psf_size, oversample=self.psf.oversample,
        )[0]
        f_lim = 10.0 ** (-0.4 * (self.noise.depth_5sigma - self.zeropoint))
        return float(f_lim * math.sqrt(float((psf**2).sum())) / 5.0)

    def re_cap_pix(self) -> float:
        """Largest allowed target ``re``, pixels (``re_max_fraction`` of the stamp half-width)."""
        return self.priors.re_max_fraction * (self.stamp_size - 1) / 2


def _presets_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "presets"


def list_presets() -> list[str]:
    """Names of the presets shipped with galnet."""
    return sorted(p.stem for p in _presets_dir().glob("*.toml"))


def load_preset(name_or_path: str | Path, overrides: dict[str, Any] | None = None) -> SimulationConfig:
    """Load a preset by name (``"hsc-r"``) or from a TOML / JSON file.

    Parameters
    ----------
    name_or_path : str or Path
        A shipped preset name (see :func:`list_presets`), or a path to a ``.toml`` file, or to a
        ``.json`` file written by :meth:`SimulationConfig.to_json` (e.g. a dataset's
        ``config.json``).
    overrides : dict, optional
        Nested dict merged over the file's content before building (CLI overrides;
        :func:`galnet.config_io.merge_overrides`).

    Returns
    -------
    SimulationConfig

    Raises
    ------
    ConfigError
        Unknown preset, unreadable file or invalid content, naming the file.
    """
    p = Path(name_or_path)
    if not p.suffix and not p.exists():
        p = _presets_dir() / f"{name_or_path}.toml"
        if not p.exists():
            raise ConfigError(
                f"unknown preset {str(name_or_path)!r}; shipped presets: {', '.join(list_presets())}"
            )
    data = read_config(p, what="preset", hint="; see galnet/presets/hsc-r.toml")
    if p.suffix == ".json" and "fingerprint" in data and isinstance(data.get("config"), dict):
        data = data["config"]  # a dataset's config.json
    try:
        return SimulationConfig.from_dict(merge_overrides(data, overrides))
    except (ConfigError, TypeError) as exc:
        raise ConfigError(f"{p}: {exc}") from exc
