"""Real HSC pixels: the HSC COSMOS scenes of ``lsst/testdata_deblender`` and HSC pipeline coadds.

Two sources of real Hyper Suprime-Cam pixels are read here, both in HSC coadd counts (zero point 27,
0.168″/px):

* **Deblender test scenes** (:func:`read_scene`): the public GitHub repository
  ``lsst/testdata_deblender``, folder ``real_data/hsc_cosmos/not_matched/``, holds 147 ``.npz`` scenes
  (one blend footprint of the HSC COSMOS coadd each) with keys ``images`` (5, H, W) in bands g, r, i, z, y,
  ``weights`` (5, H, W) inverse variance (0 outside the footprint), ``peaks`` (N, 2) detected peaks as 0-based
  ``x, y`` and ``psfs`` (5, 41, 41). The repository has no licence file, so galnet ships none of these pixels:
  :func:`fetch_scenes` downloads them into a cache folder at run time. **Scenes whose object id (the file
  name) is odd are reserved for an independent test** (:func:`is_reserved`); development, tuning,
  backgrounds and the benchmark use the even ids only (:func:`list_scenes`).
* **HSC pipeline coadd cutouts** (:func:`read_hsc_coadd`): the multi-extension layout of ``hscPipe`` /
  the LSST science pipelines' ``ExposureF`` (HDU 1 ``IMAGE``, HDU 2 ``MASK`` bit planes named by ``MP_*``
  header cards, HDU 3 ``VARIANCE``; ``FLUXMAG0`` in the primary header gives the zero point).

:func:`cut_stamp` cuts a stamp around a position, with the pixels outside the footprint or the image masked.
"""

from __future__ import annotations

import json
import math
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputDataError
from ..io import atomic_write, atomic_write_bytes

__all__ = [
    "HSC_BANDS",
    "HSC_ZEROPOINT",
    "DEFAULT_MASK_PLANES",
    "SCENE_REPOSITORY",
    "SCENE_FOLDER",
    "HSCScene",
    "CoaddImage",
    "scene_id",
    "is_reserved",
    "list_scenes",
    "read_scene",
    "read_hsc_coadd",
    "cut_stamp",
    "mask_plane_bits",
    "planes_set",
    "centre_crop_psf",
    "fetch_scenes",
    "background_stamps",
    "write_background_library",
    "read_background_library",
]

HSC_BANDS = ("g", "r", "i", "z", "y")
HSC_ZEROPOINT = 27.0
#: The mask planes a user normally excludes (HSC pipeline names); ``--mask-bits`` default.
DEFAULT_MASK_PLANES = ("NO_DATA", "BAD", "SAT", "INTRP", "EDGE", "CR", "SUSPECT")
SCENE_REPOSITORY = "lsst/testdata_deblender"
SCENE_FOLDER = "real_data/hsc_cosmos/not_matched"


@dataclass
class HSCScene:
    """One band of a deblender test scene.

    Attributes
    ----------
    id : int
        HSC object id of the blend (the file name).
    image : ndarray, shape (H, W), float32, counts (zero point 27, sky-subtracted)
    variance : ndarray, shape (H, W), float32, counts²; NaN where the weight is 0
        (outside the footprint, or bad)
    peaks : ndarray, shape (N, 2), float64, detected peaks, 0-based ``x, y`` pixel positions
    psf : ndarray, shape (41, 41), float64, the band's PSF image (unit sum)
    band : str
    path : Path
    """

    id: int
    image: np.ndarray
    variance: np.ndarray
    peaks: np.ndarray
    psf: np.ndarray
    band: str
    path: Path

    @property
    def valid(self) -> np.ndarray:
        """(H, W) bool: pixels with a finite positive variance (inside the footprint)."""
        return np.isfinite(self.variance) & (self.variance > 0)

    @property
    def sigma(self) -> np.ndarray:
        """(H, W) float32 1-σ map, counts; NaN where not :attr:`valid`."""
        return np.sqrt(self.variance)


@dataclass
class CoaddImage:
    """An HSC coadd cutout: image, variance and bad-pixel mask on one pixel grid.

    Attributes
    ----------
    image : ndarray, shape (H, W), float32, counts
    variance : ndarray, shape (H, W), float32, counts²; NaN where not positive and finite
    mask : ndarray, shape (H, W), bool, True = excluded (a selected mask plane is set, or the variance is bad)
    zeropoint : float
        Magnitude of one count: ``2.5 log10(FLUXMAG0)`` when the header has it, else 27.
    header : astropy.io.fits.Header
        Of the image HDU (holds the WCS).
    bits : ndarray, shape (H, W), int
        The mask HDU's bit planes as stored.
    plane_bits : dict of str → int
        Plane name → bit (:func:`mask_plane_bits`).
    path : Path
    """

    image: np.ndarray
    variance: np.ndarray
    mask: np.ndarray
    zeropoint: float
    header: object
    bits: np.ndarray
    plane_bits: dict
    path: Path

    def planes_set(self, names) -> np.ndarray:
        """(H, W) bool: pixels where any of the mask planes ``names`` is set (:func:`planes_set`)."""
        return planes_set(self.bits, self.plane_bits, names)


def scene_id(path: str | os.PathLike) -> int:
    """Object id of a scene file (its name without ``.npz``).

    Raises
    ------
    InputDataError
        The file name is not an integer id.
    """
    stem = Path(path).stem
    try:
        return int(stem)
    except ValueError:
        raise InputDataError(f"{path}: scene file names must be integer object ids (got {stem!r})") from None


def is_reserved(object_id: int) -> bool:
    """True for odd ids: reserved for an independent test, never to train, tune or choose on."""
    return int(object_id) % 2 == 1


def list_scenes(directory: str | os.PathLike, *, parity: str = "even") -> list[Path]:
    """Scene files of a folder, sorted by id.

    Parameters
    ----------
    directory : path
        Folder of ``<id>.npz`` scenes (e.g. filled by :func:`fetch_scenes`).
    parity : {"even", "odd", "all"}
        ``"even"`` (default): the development scenes. ``"odd"``: the reserved independent-test scenes.

    Raises
    ------
    InputDataError
        The folder does not exist or holds no scene of that parity.
    """
    if parity not in ("even", "odd", "all"):
        raise InputDataError(f"parity must be 'even', 'odd' or 'all', got {parity!r}")
    d = Path(directory)
    if not d.is_dir():
        raise InputDataError(f"{d}: no such scene folder (galnet.data.hsc.fetch_scenes fills one)")
    files = sorted(d.glob("*.npz"), key=scene_id)
    keep = {"even": lambda i: not is_reserved(i), "odd": is_reserved, "all": lambda i: True}[parity]
    files = [f for f in files if keep(scene_id(f))]
    if not files:
        raise InputDataError(f"{d}: no {parity}-id .npz scene")
    return files


def read_scene(path: str | os.PathLike, band: str = "r") -> HSCScene:
    """Read one band of a deblender test scene (see the module docstring for the file layout).

    Raises
    ------
    InputDataError
        Unreadable file, a missing key, or arrays of inconsistent shapes; the message names the file.
    """
    p = Path(path)
    if band not in HSC_BANDS:
        raise InputDataError(f"band must be one of {HSC_BANDS}, got {band!r}")
    b = HSC_BANDS.index(band)
    try:
        with np.load(p) as d:
            missing = [k for k in ("images", "weights", "peaks", "psfs") if k not in d.files]
            if missing:
                raise InputDataError(f"{p}: not a deblender scene, missing key(s) {missing}")
            images, weights, peaks, psfs = d["images"], d["weights"], d["peaks"], d["psfs"]
    except (OSError, ValueError) as exc:
        raise InputDataError(f"{p}: cannot read the scene ({exc})") from exc
    if images.ndim != 3 or weights.shape != images.shape or psfs.ndim != 3 or len(psfs) != len(images):
        raise InputDataError(f"{p}: images {images.shape}, weights {weights.shape} and psfs {psfs.shape} "
                             "do not describe one (bands, H, W) scene")
    if images.shape[0] <= b:
        raise InputDataError(f"{p}: has {images.shape[0]} bands, no {band!r}")
    w = weights[b].astype(np.float64)
    with np.errstate(divide="ignore"):
        var = np.where(np.isfinite(w) & (w > 0), 1.0 / w, np.nan)
    return HSCScene(id=scene_id(p), image=images[b].astype(np.float32), variance=var.astype(np.float32),
                    peaks=np.asarray(peaks, dtype=np.float64).reshape(-1, 2), psf=psfs[b].astype(np.float64),
                    band=band, path=p)


def mask_plane_bits(header) -> dict[str, int]:
    """``{plane name: bit}`` from the ``MP_<NAME> = bit`` cards of an HSC / LSST mask HDU header."""
    return {k[3:]: int(v) for k, v in header.items() if k.startswith("MP_")}


def planes_set(bits: np.ndarray, plane_bits: dict[str, int], names) -> np.ndarray:
    """Pixels of a bit-plane mask where any of the planes ``names`` is set (planes the mask does not
    define are ignored)."""
    value = 0
    for name in names or ():
        if name in plane_bits:
            value |= 1 << plane_bits[name]
    return (np.asarray(bits).astype(np.int64) & value) != 0


def centre_crop_psf(psf: np.ndarray, size: int, *, name: str = "PSF") -> np.ndarray:
    """The central ``size × size`` of an odd, centred PSF image, normalised to unit sum (float32).

    Raises
    ------
    InputDataError
        Not an odd square image of at least ``size`` px; the message names ``name``.
    """
    p = np.asarray(psf, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != p.shape[1] or p.shape[0] % 2 == 0 or p.shape[0] < size:
        raise InputDataError(f"{name}: need an odd square image of at least {size} px, got {p.shape}")
    lo = (p.shape[0] - size) // 2
    p = p[lo:lo + size, lo:lo + size]
    return (p / p.sum()).astype(np.float32)


def read_hsc_coadd(path: str | os.PathLike, *, mask_planes: tuple[str, ...] | None = DEFAULT_MASK_PLANES,
                   image_hdu: int | str = 1, mask_hdu: int | str = 2,
                   variance_hdu: int | str = 3) -> CoaddImage:
    """Read an HSC pipeline coadd (or cutout) in its multi-extension layout.

    Parameters
    ----------
    path : path
        FITS file: HDU 1 image, HDU 2 mask bit planes (``MP_*`` header cards name them), HDU 3 variance.
    mask_planes : tuple of str or None
        Mask planes whose pixels are excluded (default :data:`DEFAULT_MASK_PLANES`; planes the file does not
        define are ignored). None: no plane is excluded (bad variances still are).
    image_hdu, mask_hdu, variance_hdu : int or str
        HDU numbers or names, for files that differ from the pipeline's layout.

    Returns
    -------
    CoaddImage
        Pixels whose variance is zero, negative or not finite are masked and their variance set to NaN.

    Raises
    ------
    InputDataError
        A missing HDU (the message says which and names the file), planes of different shapes, or a file
        that cannot be read.
    """
    from ..catalog import open_fits

    p = Path(path)
    with open_fits(p, "HSC coadd") as hdul:
        planes = {}
        for what, hdu in (("image", image_hdu), ("mask", mask_hdu), ("variance", variance_hdu)):
            try:
                planes[what] = hdul[hdu]
            except (KeyError, IndexError):
                raise InputDataError(f"{p}: no {what} HDU {hdu!r} (an HSC coadd has IMAGE, MASK and VARIANCE "
                                     "extensions)") from None
            if planes[what].data is None or planes[what].data.ndim != 2:
                raise InputDataError(f"{p}: HDU {hdu!r} ({what}) is not a 2-D image")
        image = np.asarray(planes["image"].data, dtype=np.float32)
        variance = np.asarray(planes["variance"].data, dtype=np.float32)
        bits = np.asarray(planes["mask"].data)
        if variance.shape != image.shape or bits.shape != image.shape:
            raise InputDataError(f"{p}: image {image.shape}, mask {bits.shape} and variance {variance.shape} "
                                 "planes differ in shape")
        header = planes["image"].header.copy()
        primary = hdul[0].header
        fluxmag0 = primary.get("FLUXMAG0", header.get("FLUXMAG0"))
        plane_bits = mask_plane_bits(planes["mask"].header)
    excluded = planes_set(bits, plane_bits, mask_planes)
    bad_var = ~(np.isfinite(variance) & (variance > 0))
    excluded |= bad_var | ~np.isfinite(image)
    variance = np.where(bad_var, np.nan, variance).astype(np.float32)
    zp = 2.5 * math.log10(float(fluxmag0)) if fluxmag0 and float(fluxmag0) > 0 else HSC_ZEROPOINT
    return CoaddImage(image=image, variance=variance, mask=excluded, zeropoint=zp, header=header, bits=bits,
                      plane_bits=plane_bits, path=p)


def cut_stamp(image: np.ndarray, variance: np.ndarray, x: float, y: float, size: int = 61, *,
              mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int]]:
    """Cut a ``size × size`` stamp centred on the pixel nearest to 0-based ``(x, y)``.

    Parameters
    ----------
    image, variance : ndarray, shape (H, W), counts and counts²
    x, y : float
        0-based pixel position of the target (e.g. a detected peak).
    size : int
        Odd stamp size, px.
    mask : ndarray of bool, shape (H, W), optional
        Extra excluded pixels (True = bad).

    Returns
    -------
    stamp : ndarray, shape (size, size), float32
        Counts; NaN outside the image and where masked.
    sigma : ndarray, shape (size, size), float32
        1-σ map; NaN wherever ``stamp`` is NaN.
    excluded : ndarray, shape (size, size), bool
        True where the pixel is outside the image, masked, or has no positive finite variance.
    origin : (int, int)
        0-based ``(x0, y0)`` of the stamp's first pixel in the image: image ``x = stamp x + x0``.
    """
    if size % 2 != 1:
        raise InputDataError(f"stamp size must be odd, got {size}")
    h, w = image.shape
    half = size // 2
    x0, y0 = int(round(x)) - half, int(round(y)) - half
    stamp = np.full((size, size), np.nan, np.float32)
    var = np.full((size, size), np.nan, np.float32)
    ys, xs = slice(max(y0, 0), min(y0 + size, h)), slice(max(x0, 0), min(x0 + size, w))
    ts = (slice(ys.start - y0, ys.stop - y0), slice(xs.start - x0, xs.stop - x0))
    stamp[ts] = image[ys, xs]
    var[ts] = variance[ys, xs]
    excluded = ~(np.isfinite(stamp) & np.isfinite(var) & (var > 0))
    if mask is not None:
        excluded[ts] |= mask[ys, xs]
    stamp[excluded] = np.nan
    var[excluded] = np.nan
    return stamp, np.sqrt(var), excluded, (x0, y0)


def fetch_scenes(dest: str | os.PathLike, *, parity: str = "even", timeout: float = 60.0) -> list[Path]:
    """Download the HSC COSMOS deblender scenes of ``lsst/testdata_deblender`` into ``dest``.

    Files already in ``dest`` are kept. Only the ``parity`` scenes are downloaded (default the even,
    development ids; see :func:`is_reserved`). Needs network access to GitHub; the folder can also be filled
    from a clone of the repository.

    Returns
    -------
    list of Path
        The scene files of that parity in ``dest``, sorted by id.
    """
    d = Path(dest)
    d.mkdir(parents=True, exist_ok=True)
    api = f"https://api.github.com/repos/{SCENE_REPOSITORY}/contents/{SCENE_FOLDER}"
    with urllib.request.urlopen(api, timeout=timeout) as r:  # noqa: S310 (fixed https URL)
        listing = json.load(r)
    for entry in listing:
        name = entry.get("name", "")
        if not name.endswith(".npz"):
            continue
        i = scene_id(name)
        if (parity == "even" and is_reserved(i)) or (parity == "odd" and not is_reserved(i)):
            continue
        target = d / name
        if target.exists():
            continue
        with urllib.request.urlopen(entry["download_url"], timeout=timeout) as r:  # noqa: S310
            atomic_write_bytes(target, r.read())
    return list_scenes(d, parity=parity)


def background_stamps(files: list[str | os.PathLike], *, per_scene: int = 50, size: int = 61,
                      psf_size: int = 25, min_peak_distance: float = 4.0, seed: int = 0,
                      band: str = "r") -> dict[str, np.ndarray]:
    """A library of real background stamps cut from deblender scenes, to inject simulated galaxies into.

    Each stamp is centred on a random valid pixel of a scene at least ``min_peak_distance`` px from every
    detected peak (so that the injected galaxy is the stamp's target and the scene's own galaxies are its
    real neighbours), with the scene's real noise, correlated as it is in the coadd, and its variance.
    Pixels outside the scene or outside its footprint are excluded (NaN), as on the real galaxies' stamps.

    Parameters
    ----------
    files : list of path
        Scene files (use the even ids only: :func:`list_scenes`).
    per_scene : int
        Stamps per scene.
    size, psf_size : int
        Stamp and PSF sizes, px (odd).
    min_peak_distance : float
        Px between a stamp centre and every detected peak.
    seed : int
        Randomness of the centres.
    band : str

    Returns
    -------
    dict
        ``images`` (K, size, size) float32 counts, NaN where excluded; ``variance`` (K, size, size)
        float32, NaN where excluded; ``psfs`` (K, psf_size, psf_size) float32 unit-sum (centre crop of the
        scene's PSF); ``scene_ids`` (K,) int64.

    Raises
    ------
    InputDataError
        A scene has no pixel far enough from its peaks, or a PSF smaller than ``psf_size``.
    """
    rng = np.random.default_rng(seed)
    out: dict[str, list] = {"images": [], "variance": [], "psfs": [], "scene_ids": []}
    for f in files:
        sc = read_scene(f, band)
        yy, xx = np.nonzero(sc.valid)
        if len(sc.peaks):
            dx = xx[:, None] - sc.peaks[None, :, 0]
            d = np.min(np.hypot(dx, yy[:, None] - sc.peaks[None, :, 1]), axis=1)
            keep = d >= min_peak_distance
            yy, xx = yy[keep], xx[keep]
        if not len(xx):
            raise InputDataError(f"{f}: no valid pixel {min_peak_distance} px away from the detected peaks")
        psf = centre_crop_psf(sc.psf, psf_size, name=f"{f}: PSF")
        for j in rng.integers(0, len(xx), per_scene):
            stamp, sigma, _, _ = cut_stamp(sc.image, sc.variance, float(xx[j]), float(yy[j]), size)
            out["images"].append(stamp)
            out["variance"].append(sigma**2)
            out["psfs"].append(psf)
            out["scene_ids"].append(sc.id)
    return {k: np.asarray(v) for k, v in out.items()}


def write_background_library(path: str | os.PathLike, library: dict[str, np.ndarray], *,
                             zeropoint: float = HSC_ZEROPOINT, pixel_scale: float = 0.168,
                             source: str = "") -> Path:
    """Write a background library (:func:`background_stamps`' arrays) as one HDF5 file, atomically.

    Datasets ``images``, ``variance``, ``psfs``, ``scene_ids``; root attribute ``meta`` (JSON) with the
    zero point, pixel scale and source.
    """
    import h5py

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            f.attrs["meta"] = json.dumps({"zeropoint": zeropoint, "pixel_scale": pixel_scale,
                                          "source": source, "kind": "galnet background library"})
            for k in ("images", "variance", "psfs", "scene_ids"):
                f.create_dataset(k, data=library[k], compression="gzip", compression_opts=1, shuffle=True)

    return atomic_write(p, write)


def read_background_library(path: str | os.PathLike,
                            stamp_size: int = 61) -> tuple[dict[str, np.ndarray], dict]:
    """Read a background library written by :func:`write_background_library`.

    Returns
    -------
    arrays : dict of ndarray
        ``images``, ``variance``, ``psfs``, ``scene_ids`` (see :func:`background_stamps`).
    meta : dict

    Raises
    ------
    InputDataError
        Not a library file, stamps smaller than ``stamp_size``, or a library whose stamps are all excluded;
        the message names the file.
    """
    import h5py

    p = Path(path)
    try:
        with h5py.File(p, "r") as f:
            meta = json.loads(f.attrs.get("meta", "{}"))
            missing = [k for k in ("images", "variance", "psfs", "scene_ids") if k not in f]
            if missing:
                raise InputDataError(f"{p}: not a galnet background library (missing {missing})")
            arrays = {k: f[k][...] for k in ("images", "variance", "psfs", "scene_ids")}
    except OSError as exc:
        raise InputDataError(f"{p}: cannot read the background library ({exc})") from exc
    if arrays["images"].ndim != 3 or min(arrays["images"].shape[1:]) < stamp_size:
        raise InputDataError(f"{p}: background stamps are {arrays['images'].shape[1:]}, smaller than one "
                             f"{stamp_size}x{stamp_size} stamp")
    valid = np.isfinite(arrays["images"]) & np.isfinite(arrays["variance"]) & (arrays["variance"] > 0)
    if not valid.any():
        raise InputDataError(f"{p}: every pixel of the background library is masked")
    return arrays, meta
