"""GALFIT and Imfit interoperability: feedme files, GALFIT output headers, Imfit configs, image blocks.

GALFIT's single-Sérsic conventions are galnet's (:mod:`galnet.conventions`): 1-based ``x, y``;
integrated magnitude ``-2.5 log10(flux / EXPTIME) + J)``; ``R_e`` the semi-major half-light radius in
pixels; ``b/a``; PA in degrees with Up = 0 and Left = 90 (counter-clockwise from +y). So parameters
carry over unchanged; only the PA is wrapped to [-90, 90).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..conventions import DEFAULT_ZEROPOINT, to_imfit, wrap_pa
from ..errors import InputDataError
from ..flags import Flag
from ..params import IX_MAG, IX_N, IX_PA, IX_Q, IX_RE, IX_X, IX_Y, N_PARAMS, index

__all__ = [
    "Feedme",
    "read_feedme",
    "write_feedme",
    "GalfitHeaderResult",
    "read_galfit_header",
    "write_imfit_config",
    "write_imgblock",
    "GALFIT_KEYS",
]

#: galnet parameter → GALFIT header keyword suffix (``1_XC`` ...).
GALFIT_KEYS = {"x": "XC", "y": "YC", "mag": "MAG", "re": "RE", "n": "N", "q": "AR", "pa": "PA"}

_HEADER_HELP = {
    "A": "Input data image (FITS file)",
    "B": "Output data image block",
    "C": "Sigma image name (made from data if blank or \"none\")",
    "D": "Input PSF image and (optional) diffusion kernel",
    "E": "PSF fine sampling factor relative to data",
    "F": "Bad pixel mask (FITS image or ASCII coord list)",
    "G": "File with parameter constraints (ASCII file)",
    "H": "Image region to fit (xmin xmax ymin ymax)",
    "I": "Size of the convolution box (x y)",
    "J": "Magnitude photometric zeropoint",
    "K": "Plate scale (dx dy)    [arcsec per pixel]",
    "O": "Display type (regular, curses, both)",
    "P": "Choose: 0=optimize, 1=model, 2=imgblock, 3=subcomps",
}


@dataclass
class Feedme:
    """A GALFIT feedme file reduced to what galnet uses: header lines, one Sérsic, one sky.

    Attributes
    ----------
    header : dict
        ``{"A": "gal.fits", ..., "J": "27.0"}`` raw header values (letters A–P).
    params : ndarray, shape (7,)
        The first Sérsic component in galnet conventions.
    free : dict
        ``{name: bool}`` the fit flag of each parameter (1 = free).
    sky : float
        Sky level (ADU), 0 if no sky component. ``sky_free``: its fit flag.
    path : str
        The file it was read from ('' if built in memory).
    """

    header: dict[str, str]
    params: np.ndarray
    free: dict[str, bool] = field(default_factory=lambda: dict.fromkeys(GALFIT_KEYS, True))
    sky: float = 0.0
    sky_free: bool = False
    path: str = ""

    @property
    def zeropoint(self) -> float:
        """The ``J)`` zero point (default 27.0)."""
        try:
            return float(self.header.get("J", DEFAULT_ZEROPOINT).split()[0])
        except ValueError:
            raise InputDataError(
                f"{self.path}: J) zero point {self.header.get('J')!r} is not a number") from None

    @property
    def region(self) -> tuple[int, int, int, int] | None:
        """The ``H)`` fitting region (xmin, xmax, ymin, ymax), 1-based inclusive."""
        if "H" not in self.header:
            return None
        vals = self.header["H"].split()
        try:
            return tuple(int(float(v)) for v in vals[:4])  # type: ignore[return-value]
        except ValueError:
            raise InputDataError(f"{self.path}: H) region {self.header['H']!r} is not 4 numbers") from None


def _strip(line: str) -> str:
    return line.split("#", 1)[0].strip()


def read_feedme(path) -> Feedme:
    """Read a GALFIT feedme file: the A)–P) header and the first ``sersic`` and ``sky`` components.

    Raises
    ------
    InputDataError
        Naming the file and line when it has no Sérsic component or a malformed parameter line.
    """
    path = Path(path)
    if not path.exists():
        raise InputDataError(f"{path}: no such feedme file")
    header: dict[str, str] = {}
    comps: list[dict] = []
    cur: dict | None = None
    for lineno, raw in enumerate(path.read_text().splitlines(), 1):
        line = _strip(raw)
        m = re.match(r"^([A-Z0-9]+)\)\s*(.*)$", line)
        if not m:
            continue
        key, val = m.group(1), m.group(2).strip()
        if key == "0":
            cur = {"type": val.split()[0].lower() if val else "", "lines": {}, "lineno": lineno}
            comps.append(cur)
        elif cur is None and len(key) == 1 and key.isalpha():
            header[key] = val
        elif cur is not None:
            cur["lines"][key] = (val, lineno)
    sersic = next((c for c in comps if c["type"] == "sersic"), None)
    if sersic is None:
        raise InputDataError(f"{path}: no 'sersic' component found")

    def nums(key, count):
        if key not in sersic["lines"]:
            raise InputDataError(
                f"{path}: Sérsic component (line {sersic['lineno']}) lacks parameter {key})")
        val, ln = sersic["lines"][key]
        parts = val.split()
        try:
            values = [float(v) for v in parts[:count]]
            flags = [int(float(v)) for v in parts[count : 2 * count]]
        except ValueError:
            raise InputDataError(f"{path}: line {ln}: cannot parse {key}) {val!r}") from None
        if len(values) < count:
            raise InputDataError(f"{path}: line {ln}: {key}) needs {count} value(s), got {val!r}")
        flags += [1] * (count - len(flags))
        return values, flags

    (x, y), (fx, fy) = nums("1", 2)
    (mag,), (fm,) = nums("3", 1)
    (re_,), (fr,) = nums("4", 1)
    (n,), (fn,) = nums("5", 1)
    (q,), (fq,) = nums("9", 1)
    (pa,), (fp,) = nums("10", 1)
    params = np.array([x, y, mag, re_, n, q, float(wrap_pa(pa))])
    free = {"x": bool(fx), "y": bool(fy), "mag": bool(fm), "re": bool(fr), "n": bool(fn), "q": bool(fq),
            "pa": bool(fp)}
    sky, sky_free = 0.0, False
    skyc = next((c for c in comps if c["type"] == "sky"), None)
    if skyc is not None and "1" in skyc["lines"]:
        parts = skyc["lines"]["1"][0].split()
        try:
            sky = float(parts[0])
            sky_free = bool(int(float(parts[1]))) if len(parts) > 1 else True
        except ValueError:
            ln = skyc["lines"]["1"][1]
            raise InputDataError(f"{path}: line {ln}: cannot parse sky {parts!r}") from None
    return Feedme(header=header, params=params, free=free, sky=sky, sky_free=sky_free, path=str(path))


def write_feedme(path, params, *, image: str = "none", output: str = "imgblock.fits", sigma: str = "none",
                 psf: str = "none", mask: str = "none", constraints: str = "none",
                 region: tuple[int, int, int, int] | None = None, shape: tuple[int, int] | None = None,
                 conv_box: tuple[int, int] = (100, 100), zeropoint: float = DEFAULT_ZEROPOINT,
                 plate_scale: tuple[float, float] = (0.168, 0.168), free: dict | None = None,
                 sky: float | None = 0.0, sky_free: bool = False, mode: int = 0) -> Path:
    """Write a GALFIT feedme file with one Sérsic component (+ a sky component unless ``sky`` is None).

    Parameters
    ----------
    params : array_like, shape (7,)
        galnet parameters ``x, y, mag, re, n, q, pa``.
    region : (xmin, xmax, ymin, ymax), optional
        1-based inclusive fitting region; default the whole ``shape`` (H, W) (required then).
    free : dict, optional
        ``{name: bool}`` fit flags (default all free).
    mode : int
        ``P)``: 0 optimise, 1 model, 2 image block.
    """
    p = np.asarray(params, dtype=float).reshape(N_PARAMS)
    if region is None:
        if shape is None:
            raise InputDataError("write_feedme: give region=(xmin, xmax, ymin, ymax) or shape=(H, W)")
        region = (1, int(shape[1]), 1, int(shape[0]))
    fl = {k: int(bool(v)) for k, v in dict.fromkeys(GALFIT_KEYS, True).items()}
    fl.update({k: int(bool(v)) for k, v in (free or {}).items()})
    head = {
        "A": image, "B": output, "C": sigma, "D": psf, "E": "1", "F": mask, "G": constraints,
        "H": " ".join(str(int(v)) for v in region), "I": f"{conv_box[0]} {conv_box[1]}",
        "J": f"{zeropoint:.4f}", "K": f"{plate_scale[0]:.4f} {plate_scale[1]:.4f}", "O": "regular",
        "P": str(mode),
    }
    lines = ["# IMAGE and GALFIT CONTROL PARAMETERS (written by galnet)"]
    for k, v in head.items():
        lines.append(f"{k}) {v:<24s} # {_HEADER_HELP[k]}")
    lines += [
        "",
        "# Component number: 1",
        " 0) sersic                 #  Component type",
        f" 1) {p[IX_X]:.4f} {p[IX_Y]:.4f} {fl['x']} {fl['y']}  #  Position x, y",
        f" 3) {p[IX_MAG]:.4f}     {fl['mag']}          #  Integrated magnitude",
        f" 4) {p[IX_RE]:.4f}     {fl['re']}          #  R_e (effective radius)   [pix]",
        f" 5) {p[IX_N]:.4f}     {fl['n']}          #  Sersic index n (de Vaucouleurs n=4)",
        " 6) 0.0000      0          #     -----",
        " 7) 0.0000      0          #     -----",
        " 8) 0.0000      0          #     -----",
        f" 9) {p[IX_Q]:.4f}     {fl['q']}          #  Axis ratio (b/a)",
        f"10) {float(wrap_pa(p[IX_PA])):.4f}     {fl['pa']}          "
        "#  Position angle (PA) [deg: Up=0, Left=90]",
        " Z) 0                      #  Skip this model in output image?  (yes=1, no=0)",
    ]
    if sky is not None:
        lines += [
            "",
            "# Component number: 2",
            " 0) sky                    #  Component type",
            f" 1) {sky:.6g}     {int(bool(sky_free))}          "
            "#  Sky background at center of fitting region [ADUs]",
            " 2) 0.0000      0          #  dsky/dx (sky gradient in x)",
            " 3) 0.0000      0          #  dsky/dy (sky gradient in y)",
            " Z) 1                      #  Skip this model in output image?  (yes=1, no=0)",
        ]
    path = Path(path)
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class GalfitHeaderResult:
    """A GALFIT result read from an output image-block header.

    Attributes
    ----------
    params, errors : ndarray, shape (7,)
        galnet parameters and their 1-σ errors (NaN where GALFIT gave none, e.g. fixed).
    fixed : dict
        ``{name: bool}``: the value was in ``[...]`` (held fixed).
    problem : dict
        ``{name: bool}``: the value was in ``*...*`` (GALFIT's warning: at a limit / numerical problem).
    flags : int
        :class:`galnet.flags.Flag` bits (``AT_BOUND`` if any ``*``).
    chi2nu, chi2 : float
        ``CHI2NU``, ``CHISQ`` (NaN if absent). ``ndof`` : int or -1.
    sky : float
        The sky component's value (0 if none).
    """

    params: np.ndarray
    errors: np.ndarray
    fixed: dict
    problem: dict
    flags: int
    chi2nu: float
    chi2: float
    ndof: int
    sky: float


_NUM = r"[-+0-9.eEnaNinf]+"
_VALUE_RE = re.compile(rf"^\s*(?P<v>[\[\*]?\s*{_NUM}\s*[\]\*]?)\s*(?:\+/-\s*(?P<e>\*?\s*{_NUM}\s*\*?))?")


def _parse_value(text: str, *, where: str) -> tuple[float, float, bool, bool]:
    """``'30.51 +/- 0.02'``, ``'[30.51]'``, ``'*30.51* +/- *0.02*'`` → (value, error, fixed, problem)."""
    s = str(text).strip()
    fixed = s.startswith("[")
    problem = "*" in s
    m = _VALUE_RE.match(s)
    if not m:
        raise InputDataError(f"{where}: cannot parse GALFIT value {text!r}")
    try:
        v = float(m.group("v").strip("[]* "))
        e = float(m.group("e").strip("* ")) if m.group("e") else float("nan")
    except ValueError:
        raise InputDataError(f"{where}: cannot parse GALFIT value {text!r}") from None
    return v, e, fixed, problem


def read_galfit_header(header, *, component: int | None = None, where: str = "header") -> GalfitHeaderResult:
    """GALFIT output header (astropy Header, dict, or a FITS path: the model HDU 2) → galnet parameters.

    Parameters
    ----------
    header : astropy.io.fits.Header or dict or path
    component : int, optional
        Component number of the Sérsic (default: the first ``COMP_i = 'sersic'``, else 1).
    """
    if isinstance(header, (str, Path)):
        from astropy.io import fits

        where = str(header)
        with fits.open(header) as hdul:
            hdr = next((h.header for h in hdul if any(str(k).endswith("_XC") for k in h.header)), None)
        if hdr is None:
            raise InputDataError(f"{where}: no HDU has GALFIT result keywords (1_XC ...)")
        header = hdr
    keys = {str(k).upper(): header[k] for k in header}
    if component is None:
        component = next((int(k.split("_")[1]) for k in keys if k.startswith("COMP_")
                          and str(keys[k]).strip().lower() == "sersic"), 1)
    params, errors = np.full(N_PARAMS, np.nan), np.full(N_PARAMS, np.nan)
    fixed, problem = {}, {}
    for name, suffix in GALFIT_KEYS.items():
        j = index(name)
        key = f"{component}_{suffix}"
        if key not in keys:
            raise InputDataError(f"{where}: GALFIT keyword {key} missing")
        v, e, fx, pr = _parse_value(keys[key], where=f"{where}: {key}")
        params[j], errors[j], fixed[name], problem[name] = v, e, fx, pr
    params[IX_PA] = wrap_pa(params[IX_PA])
    sky = 0.0
    for k, v in keys.items():
        if k.startswith("COMP_") and str(v).strip().lower() == "sky":
            sk = f"{k.split('_')[1]}_SKY"
            if sk in keys:
                sky = _parse_value(keys[sk], where=f"{where}: {sk}")[0]
    flags = int(Flag.AT_BOUND) if any(problem.values()) else 0

    def num(k, default=float("nan")):
        try:
            return float(keys[k])
        except (KeyError, ValueError, TypeError):
            return default

    return GalfitHeaderResult(params=params, errors=errors, fixed=fixed, problem=problem, flags=flags,
                              chi2nu=num("CHI2NU"), chi2=num("CHISQ"), ndof=int(num("NDOF", -1)), sky=sky)


def write_imfit_config(path, params, *, zeropoint: float = DEFAULT_ZEROPOINT, exptime: float = 1.0,
                       gain: float | None = None, read_noise: float | None = None,
                       original_sky: float | None = None, sky: float | None = None,
                       center_box: float = 10.0) -> Path:
    """Write an Imfit configuration file (a ``Sersic`` + optional ``FlatSky``) from galnet parameters.

    Limits are written for the centre (± ``center_box`` px) and generous ones for the shape.
    """
    p = np.asarray(params, dtype=float).reshape(N_PARAMS)
    d = to_imfit(*p, zeropoint=zeropoint, exptime=exptime)
    lines = ["# Imfit configuration written by galnet (galnet.conventions.to_imfit)"]
    if gain is not None:
        lines.append(f"GAIN          {gain}")
    if read_noise is not None:
        lines.append(f"READNOISE     {read_noise}")
    if original_sky is not None:
        lines.append(f"ORIGINAL_SKY  {original_sky}")
    lines += [
        "",
        f"X0   {d['X0']:.4f}   {d['X0'] - center_box:.4f},{d['X0'] + center_box:.4f}",
        f"Y0   {d['Y0']:.4f}   {d['Y0'] - center_box:.4f},{d['Y0'] + center_box:.4f}",
        "FUNCTION Sersic",
        f"PA   {float(d['PA']):.4f}   -180,180",
        f"ell  {float(d['ell']):.5f}   0,0.98",
        f"n    {float(d['n']):.4f}   0.2,10",
        f"I_e  {float(d['I_e']):.6g}   0,{10 * float(d['I_e']):.6g}",
        f"r_e  {float(d['r_e']):.4f}   0.05,1000",
    ]
    if sky is not None:
        lines += ["", "FUNCTION FlatSky", f"I_sky  {sky:.6g}"]
    path = Path(path)
    path.write_text("\n".join(lines) + "\n")
    return path


def write_imgblock(path, image, model, params, errors, *, sigma=None, chi2nu: float = float("nan"),
                   chi2: float = float("nan"), ndof: int = -1, sky: float = 0.0, niter: int = 0,
                   flags: int = 0, zeropoint: float = DEFAULT_ZEROPOINT, overwrite: bool = True) -> Path:
    """Write a GALFIT-style image block: HDU 1 input, HDU 2 model (results in the header), HDU 3 residual.

    The model header carries GALFIT keywords (``COMP_1 = 'sersic'``, ``1_XC = '30.51 +/- 0.02'`` ...,
    ``COMP_2 = 'sky'``, ``2_SKY``, ``CHISQ``, ``NDOF``, ``CHI2NU``, ``MAGZPT``), so
    :func:`read_galfit_header` reads it back. ``AT_BOUND`` marks every value with ``*`` as GALFIT does.
    """
    from astropy.io import fits

    image = np.asarray(image, dtype=np.float32)
    model = np.asarray(model, dtype=np.float32)
    hdr = fits.Header()
    hdr["OBJECT"] = "model"
    hdr["COMP_1"] = "sersic"
    star = "*" if int(flags) & int(Flag.AT_BOUND) else ""
    for name, suffix in GALFIT_KEYS.items():
        j = index(name)
        hdr[f"1_{suffix}"] = f"{star}{params[j]:.4f}{star} +/- {star}{errors[j]:.4f}{star}"
    hdr["COMP_2"] = "sky"
    hdr["2_SKY"] = f"[{sky:.4f}]"
    hdr["MAGZPT"] = zeropoint
    # FITS headers cannot hold NaN: an unknown chi-square is left out, as GALFIT does on failure
    for key, value in (("CHISQ", chi2), ("CHI2NU", chi2nu)):
        if np.isfinite(value):
            hdr[key] = float(value)
    hdr["NDOF"] = int(ndof)
    hdr["NITER"] = int(niter)
    hdr["FLAGS"] = int(flags)
    hdr["FITSECT"] = f"[1:{image.shape[1]},1:{image.shape[0]}]"
    hdul = fits.HDUList([
        fits.PrimaryHDU(),
        fits.ImageHDU(image, name="INPUT"),
        fits.ImageHDU(model, header=hdr, name="MODEL"),
        fits.ImageHDU(image - model, name="RESIDUAL"),
    ])
    if sigma is not None:
        hdul.append(fits.ImageHDU(np.asarray(sigma, dtype=np.float32), name="SIGMA"))
    path = Path(path)
    hdul.writeto(path, overwrite=overwrite)
    return path
