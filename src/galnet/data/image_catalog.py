"""A large FITS image plus a source catalog: a stamp is cut around every catalog position
(:class:`ImageCatalogSource`)."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..catalog import open_fits, read_table, unique_ids
from ..errors import InputDataError
from ..flags import Flag
from ..params import catalog_columns
from .chunk import Chunk, cut_stamps, finish_chunk
from .fits_io import header_dict, header_meta, image_hdu, open_input_fits
from .noise import check_sky_sigma, robust_sigma, sigma_from_variance
from .psfs import psf_from_file, read_psf_file, shared_psf
from .shards import array_digest, file_id
from .sources import InputSource, psf_setting, sky_setting

log = logging.getLogger(__name__)

__all__ = ["ImageCatalogSource"]

_RA_NAMES = ("ra", "RA", "ALPHA_J2000", "RAJ2000", "ra_deg", "RA_DEG")
_DEC_NAMES = ("dec", "DEC", "Dec", "DELTA_J2000", "DEJ2000", "dec_deg", "DEC_DEG")
_X_NAMES = ("x", "X", "X_IMAGE", "x_image", "xcentroid", "X_WORLD_PIX")
_Y_NAMES = ("y", "Y", "Y_IMAGE", "y_image", "ycentroid", "Y_WORLD_PIX")
_ID_NAMES = ("id", "ID", "NUMBER", "objid", "object_id", "source_id")


class ImageCatalogSource(InputSource):
    """A large FITS image plus a source catalog: a stamp is cut around every catalog position.

    Stamps are ``stamp_size`` pixels, centred on the image pixel holding the position (whole-pixel cut, no
    interpolation); parts beyond the image edge are padded, masked and flagged ``EDGE``; positions outside
    the image give ``BAD_INPUT`` rows (kept, NaN values). Output ``x, y`` are in the image's 1-based frame.

    Parameters
    ----------
    image : path
        FITS image (uncompressed files are memory-mapped: only the stamps are read).
    catalog : path or astropy Table
        FITS / CSV / ECSV / Parquet table with RA/Dec (degrees; needs a celestial WCS in the image header)
        or x/y (pixels) columns. Every column is carried to the output catalog.
    psf : path or ndarray, optional
        One PSF image (P, P) for every source, or a PSF cube (N, P, P) with one PSF per catalog row.
    psf_column : str, optional
        Catalog column holding a PSF FITS file per source (relative paths: to the catalog's directory).
    ra_col, dec_col, x_col, y_col, id_col : str, optional
        Column names (default: common names such as ``ra``/``ALPHA_J2000``, ``x``/``X_IMAGE``, ``id``).
    xy_origin : {1, 0}
        Whether catalog x/y are FITS 1-based (SExtractor) or 0-based (photutils).
    sky_sigma : float, optional
        Sky σ, counts / pixel; default: ``SKYSIG`` header keyword, else a clipped MAD of the whole image.
    image_hdu : int or str, optional
    zeropoint, gain, pixel_scale : float, optional
        Override the header (pixel scale default: from the WCS).
    sigma, variance, mask : path, int or str, optional
        Per-pixel σ (counts) or variance (counts²), and bad pixels (non-zero = bad, or mask bit planes with
        ``mask_planes``), each an image of the image's shape: a FITS file, or the name or number of an HDU of
        the image file. Stamps of them are cut with the galaxy stamps: σ is used for the sky σ, the χ² and
        the refinement; pixels with a zero, negative or non-finite variance and masked pixels are excluded.
    mask_planes : sequence of str, optional
        When the mask HDU names its bit planes (``MP_<NAME>`` cards, HSC / LSST pipelines): the planes that
        exclude a pixel (default :data:`galnet.data.hsc.DEFAULT_MASK_PLANES`). Otherwise any non-zero value.

    An **HSC pipeline coadd** (HDUs ``IMAGE``, ``MASK``, ``VARIANCE``) is recognised: unless given otherwise,
    the image is ``IMAGE``, the σ map √``VARIANCE``, the mask the ``mask_planes`` of ``MASK``, and the zero
    point ``2.5 log10(FLUXMAG0)``.

    Raises
    ------
    InputDataError
        Unreadable image or catalog, no position columns, RA/Dec without a WCS, no PSF (the message names
        the file and column).
    """

    kind = "image+catalog"

    def __init__(
        self,
        image,
        catalog,
        *,
        psf=None,
        psf_column: str | None = None,
        ra_col=None,
        dec_col=None,
        x_col=None,
        y_col=None,
        id_col=None,
        xy_origin: int = 1,
        sky_sigma=None,
        image_hdu=None,
        zeropoint=None,
        gain=None,
        pixel_scale=None,
        sigma=None,
        variance=None,
        mask=None,
        mask_planes=None,
    ) -> None:
        super().__init__()
        self.image_path = Path(image)
        self.image_hdu = image_hdu
        if sigma is not None and variance is not None:
            raise InputDataError("give a sigma map or a variance map, not both")
        sigma, variance, mask, zeropoint = self._survey_layout(sigma, variance, mask, zeropoint)
        self.planes = {"sigma": sigma, "variance": variance, "mask": mask}
        self.mask_plane_names = tuple(mask_planes) if mask_planes is not None else None
        self._open_image(check_sky_sigma(sky_sigma, "sky_sigma"), zeropoint=zeropoint, gain=gain,
                         pixel_scale=pixel_scale)
        self._check_planes()
        table = self._read_catalog(catalog)
        cols = list(table.colnames)
        where = self.catalog_path or "table"
        self.n_rows = len(table)
        self.x_in, self.y_in = self._positions(table, where, x_col=x_col, y_col=y_col, ra_col=ra_col,
                                               dec_col=dec_col, xy_origin=xy_origin)
        self.outside = self._outside(where)
        idc = _pick(cols, id_col, _ID_NAMES, "id", where)
        self.ids = unique_ids(np.asarray(_filled(table[idc])) if idc else np.arange(self.n_rows),
                              where=f"catalog {where}")
        self.id_column = idc
        self.xy_origin = int(xy_origin)
        self.psf_column = psf_column
        self.columns = _carried(table)
        self._set_psf(psf, psf_column, table, where)

    def _survey_layout(self, sigma, variance, mask, zeropoint):
        """An HSC / LSST pipeline coadd (HDUs ``IMAGE``, ``MASK``, ``VARIANCE``): its planes and zero point
        where the options do not say otherwise."""
        with open_input_fits(self.image_path, "image") as hdul:
            names = {h.name.upper() for h in hdul}
            if not {"IMAGE", "MASK", "VARIANCE"} <= names or self.image_hdu not in (None, "IMAGE"):
                return sigma, variance, mask, zeropoint
            fluxmag0 = hdul[0].header.get("FLUXMAG0", hdul["IMAGE"].header.get("FLUXMAG0"))
        log.info("%s: HSC coadd layout (IMAGE, MASK, VARIANCE HDUs)", self.image_path)
        self.image_hdu = "IMAGE"
        if sigma is None and variance is None:
            variance = "VARIANCE"
        if mask is None:
            mask = "MASK"
        if zeropoint is None and isinstance(fluxmag0, (int, float)) and fluxmag0 > 0:
            zeropoint = 2.5 * float(np.log10(fluxmag0))
        return sigma, variance, mask, zeropoint

    def _plane(self, what: str) -> np.ndarray | None:
        """The whole σ (from σ or variance) or bad-pixel (bool) plane, read once, or None."""
        cache = self.__dict__.setdefault("_plane_cache", {})
        key = "mask" if what == "mask" else "sigma"
        if key in cache:
            return cache[key]
        if key == "mask":
            kind = "mask"
        else:
            kind = "sigma" if self.planes["sigma"] is not None else "variance"
        spec = self.planes[kind]
        if spec is None:
            return None
        is_file = isinstance(spec, (str, os.PathLike)) and Path(spec).exists()
        path = Path(spec) if is_file else self.image_path
        with open_input_fits(path, kind) as hdul:
            if is_file:
                h = image_hdu(hdul, path, None, (2,))
            else:
                try:
                    h = hdul[int(spec) if str(spec).lstrip("-").isdigit() else spec]
                except (KeyError, IndexError):
                    raise InputDataError(f"{self.image_path}: no {kind} HDU {spec!r} (and no such file)"
                                         ) from None
            if h.data is None or tuple(h.data.shape) != self.image_shape:
                shape = None if h.data is None else tuple(h.data.shape)
                raise InputDataError(f"{path}: {kind} plane {spec!r} has shape {shape}, the image "
                                     f"{self.image_shape}")
            data = np.asarray(h.data)
            header = h.header
        if kind == "mask":
            from .hsc import DEFAULT_MASK_PLANES, mask_plane_bits, planes_set

            bits = mask_plane_bits(header)
            if bits:
                wanted = self.mask_plane_names if self.mask_plane_names is not None else DEFAULT_MASK_PLANES
                plane = planes_set(data, bits, wanted)
            else:
                plane = data != 0
        elif kind == "variance":
            plane = sigma_from_variance(data).astype(np.float32)
        else:
            plane = np.asarray(data, dtype=np.float32)
        cache[key] = plane
        return plane

    def _check_planes(self) -> None:
        """Read the σ / mask planes once now, so that a wrong shape or a missing HDU fails before any work."""
        self._plane("sigma")
        self._plane("mask")

    def _open_image(self, sky_sigma, *, zeropoint, gain, pixel_scale) -> None:
        """The image's HDU, shape, header, sky σ (option, ``SKYSIG`` or the image's clipped MAD), WCS and
        meta."""
        from astropy.wcs import WCS, FITSFixedWarning

        self.sky_from_header = False
        with open_input_fits(self.image_path, "image") as hdul:
            h = image_hdu(hdul, self.image_path, self.image_hdu, (2,))
            self._hdu_index = [i for i, x in enumerate(hdul) if x is h][0]
            header = h.header.copy()
            self.image_shape = tuple(h.data.shape)
            if sky_sigma is None and isinstance(header.get("SKYSIG"), (int, float)):
                sky_sigma = float(header["SKYSIG"])
                self.sky_from_header = True
                if not (np.isfinite(sky_sigma) and sky_sigma > 0):
                    log.warning("%s: header SKYSIG = %r is not a positive number; every row is flagged "
                                "BAD_SIGMA and uses its stamp-border estimate", self.image_path, sky_sigma)
            if sky_sigma is None and self.planes["sigma"] is None and self.planes["variance"] is None:
                data = h.data
                step = max(1, int(np.sqrt(data.size / 1e6)))
                sky_sigma = robust_sigma(np.asarray(data[::step, ::step]))
                log.info(
                    "%s: sky sigma %.4g counts/px (clipped MAD of the image)", self.image_path, sky_sigma
                )
                if not sky_sigma > 0:
                    sky_sigma = None  # per-stamp border estimate
        self.sky_sigma = sky_sigma
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            wcs = WCS(header, naxis=2)
        self.wcs = wcs if wcs.has_celestial else None
        self.has_wcs = self.wcs is not None
        self.header = header_dict(header)
        self.meta = header_meta(header, zeropoint=zeropoint, gain=gain, pixel_scale=pixel_scale)
        if self.meta["pixel_scale"] is None and self.wcs is not None:
            from astropy.wcs.utils import proj_plane_pixel_scales

            self.meta["pixel_scale"] = float(np.mean(proj_plane_pixel_scales(self.wcs.celestial)) * 3600.0)

    def _read_catalog(self, catalog):
        """The catalog as a Table (``catalog_path``: its path, None for a Table given in memory)."""
        from astropy.table import Table

        if isinstance(catalog, Table):
            self.catalog_path = None
            return catalog
        self.catalog_path = Path(catalog)
        return _read_catalog(self.catalog_path)

    def _positions(self, table, where, *, x_col, y_col, ra_col, dec_col, xy_origin) -> tuple[np.ndarray, ...]:
        """1-based image positions (x, y) of every row, from x/y columns or RA/Dec through the WCS."""
        cols = list(table.colnames)
        xc = _pick(cols, x_col, _X_NAMES, "x", where)
        yc = _pick(cols, y_col, _Y_NAMES, "y", where)
        rac = _pick(cols, ra_col, _RA_NAMES, "RA", where)
        decc = _pick(cols, dec_col, _DEC_NAMES, "Dec", where)
        use_xy = (x_col or y_col or (xc and yc)) and not (ra_col or dec_col)
        if use_xy and xc and yc:
            self.position_from = f"{xc},{yc}"
            return (_numeric(table[xc], xc, where) + (1 - xy_origin),
                    _numeric(table[yc], yc, where) + (1 - xy_origin))
        if not (rac and decc):
            raise InputDataError(
                f"catalog {where}: no position columns found; give --x-col/--y-col (pixels) or "
                "--ra-col/--dec-col "
                f"(degrees); columns are: {', '.join(cols)}"
            )
        if self.wcs is None:
            raise InputDataError(
                f"catalog {where} gives RA/Dec ({rac}, {decc}) but the image {self.image_path} has no "
                "celestial WCS in its header; give x/y columns (--x-col/--y-col) instead"
            )
        from astropy.coordinates import SkyCoord

        ra = _numeric(table[rac], rac, where)
        dec = _numeric(table[decc], decc, where)
        bad_dec = np.isfinite(dec) & (np.abs(dec) > 90)
        for i in np.flatnonzero(bad_dec)[:20]:
            log.error("catalog %s row %d: Dec = %g is outside [-90, 90] degrees; row flagged BAD_INPUT",
                      where, i, dec[i])
        dec = np.where(bad_dec, np.nan, dec)
        ok = np.isfinite(ra) & np.isfinite(dec)
        x = np.full(self.n_rows, np.nan)
        y = np.full(self.n_rows, np.nan)
        if ok.any():
            sc = SkyCoord(ra[ok], dec[ok], unit="deg")
            px, py = self.wcs.celestial.world_to_pixel(sc)  # 0-based
            x[ok], y[ok] = np.asarray(px) + 1.0, np.asarray(py) + 1.0
        self.position_from = f"{rac},{decc}"
        return x, y

    def _outside(self, where) -> np.ndarray:
        """Rows whose position is not finite or outside the image (logged; they become BAD_INPUT)."""
        x, y = self.x_in, self.y_in
        h, w = self.image_shape
        inside = np.isfinite(x) & np.isfinite(y) & (x >= 0.5) & (x < w + 0.5) & (y >= 0.5) & (y < h + 0.5)
        outside = ~inside
        for i in np.flatnonzero(outside)[:20]:
            log.error(
                "catalog %s row %d: position (x=%.2f, y=%.2f) is outside the image %s (%dx%d); row "
                "flagged BAD_INPUT",
                where,
                i,
                x[i],
                y[i],
                self.image_path,
                w,
                h,
            )
        if outside.sum() > 20:
            log.error("... %d rows outside the image in total", int(outside.sum()))
        return outside

    def _set_psf(self, psf, psf_column, table, where) -> None:
        """``psf_files`` (one file per row), ``psf_cube`` (N, P, P) or ``psf`` (one image, checked now)."""
        self.psf = None
        self.psf_cube: np.ndarray | None = None
        self.psf_files: np.ndarray | None = None
        self._psf_cache: dict = {}
        if psf_column:
            if psf_column not in table.colnames:
                raise InputDataError(f"catalog {where}: no PSF column {psf_column!r}")
            base = self.catalog_path.parent if self.catalog_path else Path(".")
            self.psf_files = np.array(
                [
                    str(p if Path(p).is_absolute() else base / p)
                    for p in np.asarray(_filled(table[psf_column])).astype(str)
                ]
            )
        elif psf is not None:
            arr = read_psf_file(psf) if isinstance(psf, (str, os.PathLike)) else np.asarray(psf, float)
            if arr.ndim == 3:
                if arr.shape[0] != self.n_rows:
                    raise InputDataError(
                        f"PSF cube {psf} has {arr.shape[0]} PSFs for {self.n_rows} catalog rows")
                self.psf_cube = arr
            else:
                self.psf = arr
                shared_psf(arr, self.psf_size, self._psf_cache, name=f"PSF {psf}")  # refused now if bad
        else:
            raise InputDataError(
                "image + catalog input needs a PSF: --psf FILE (image or per-row cube) or "
                "--psf-column COLUMN (a PSF FITS per source)"
            )
        self.psf_path = None if psf is None or not isinstance(psf, (str, os.PathLike)) else Path(psf)

    def fingerprint(self) -> dict[str, Any]:
        fp = {**super().fingerprint(), "image": file_id(self.image_path)}
        if self.catalog_path is not None:
            fp["catalog"] = file_id(self.catalog_path)
        else:
            fp["catalog"] = {"positions_sha256": array_digest(np.stack([self.x_in, self.y_in]))}
        return fp

    def settings(self) -> dict[str, Any]:
        psf = psf_setting(self.psf_path, None if self.psf_path is not None else
                          (self.psf_cube if self.psf_cube is not None else self.psf))
        return {**super().settings(), "positions": self.position_from, "xy_origin": self.xy_origin,
                "id_column": self.id_column, "image_hdu": self.image_hdu,
                "sky_sigma": sky_setting(self.sky_sigma),
                "psf": psf, "psf_column": self.psf_column, **self._plane_settings()}

    def _plane_settings(self) -> dict[str, Any]:
        """Manifest entries of the σ / variance / mask planes (file ids or HDU names) and mask planes."""
        out: dict[str, Any] = {}
        for k, v in self.planes.items():
            if v is not None:
                out[k] = file_id(v) if isinstance(v, (str, os.PathLike)) and Path(v).exists() else str(v)
        if self.planes["mask"] is not None:
            names = self.mask_plane_names
            out["mask_planes"] = list(names) if names is not None else "default"
        return out

    def carried_columns(self) -> dict[str, np.ndarray]:
        return self.columns

    def describe(self) -> str:
        return f"catalog {self.catalog_path or 'table'} (image {self.image_path})"

    def _cut(self, xs: np.ndarray, ys: np.ndarray):
        """cut_stamps on the image: memory-mapped per chunk (uncompressed), or decompressed once (.gz)."""
        scaled = getattr(self, "_scaled", None)
        if scaled is None:
            with open_fits(self.image_path, "image", memmap=False, lazy_load_hdus=True) as hdul:
                h = hdul[self._hdu_index].header
                self._scaled = scaled = any(k in h for k in ("BZERO", "BSCALE", "BLANK"))
        if self.image_path.name.lower().endswith(".gz") or scaled:  # read (decompress / scale) once
            if getattr(self, "_h_data", None) is None:
                with open_fits(self.image_path, "image", memmap=False) as hdul:
                    self._h_data = np.array(hdul[self._hdu_index].data, dtype=np.float32)
            return cut_stamps(self._h_data, xs, ys, self.stamp_size)
        with open_fits(self.image_path, "image", memmap=True) as hdul:
            out = cut_stamps(hdul[self._hdu_index].data, xs, ys, self.stamp_size)
            del hdul[self._hdu_index].data  # release the memory map before closing
        return out

    def _row_names(self, start: int, stop: int) -> list[str]:
        return [f"catalog row {i} (id {self.ids[i]})" for i in range(start, stop)]

    def _psfs_from_files(self, chunk: Chunk, names: list[str]) -> None:
        """Rows' own PSF files at ``psf_size`` into ``chunk`` (``PSF_FIXED``; unreadable → bad row)."""
        p = self.psf_size
        for k, f in enumerate(self.psf_files[chunk.start : chunk.stop]):
            psf, fixed, msg = psf_from_file(f, p)
            if psf is None:
                log.error("%s: %s; row flagged BAD_INPUT", names[k], msg)
                chunk.bad[k] = True
                chunk.psfs[k, p // 2, p // 2] = 1.0
            else:
                chunk.psfs[k] = psf
                if fixed:
                    chunk.flags[k] |= int(Flag.PSF_FIXED)

    def read_rows(self, start: int, stop: int) -> Chunk:
        return self._read(start, stop)[0]

    def _read(self, start: int, stop: int) -> tuple[Chunk, np.ndarray, np.ndarray | None]:
        """Rows as read, with the padded pixels and the input mask's pixels apart."""
        b = stop - start
        x, y = self.x_in[start:stop], self.y_in[start:stop]
        outside = self.outside[start:stop]
        xs, ys = np.where(outside, 1.0, x), np.where(outside, 1.0, y)
        stamps, pad_mask, dx, dy = self._cut(xs, ys)
        stamps[outside] = 0.0
        pad_mask[outside] = False
        sig_plane, mask_plane = self._plane("sigma"), self._plane("mask")
        sigma_maps = None if sig_plane is None else cut_stamps(sig_plane, xs, ys, self.stamp_size)[0]
        input_mask = None
        if mask_plane is not None:
            input_mask = cut_stamps(mask_plane.astype(np.float32), xs, ys, self.stamp_size)[0] > 0
            input_mask[outside] = False
        if self.psf_files is not None:
            psfs = np.zeros((b, self.psf_size, self.psf_size), np.float32)
        else:
            psfs = self.psf_cube[start:stop] if self.psf_cube is not None else self.psf
        cols = {k: v[start:stop] for k, v in self.columns.items()}
        cols["x_in"] = x
        cols["y_in"] = y
        chunk = Chunk(
            start=start,
            ids=self.ids[start:stop],
            images=stamps,
            psfs=psfs,
            sky_sigma=np.full(b, np.nan if self.sky_sigma is None else self.sky_sigma),
            flags=np.zeros(b, np.int64),
            bad=outside.copy(),
            mask=pad_mask if input_mask is None else pad_mask | input_mask,
            sigma_maps=sigma_maps,
            offset=np.stack([dx, dy], axis=1),
            columns=cols,
            sky_given=np.full(b, self.sky_sigma is not None),
        )

        if self.psf_files is not None:
            self._psfs_from_files(chunk, self._row_names(start, stop))
        return chunk, pad_mask, input_mask

    def read_chunk(self, start: int, stop: int) -> Chunk:
        raw, padded, input_mask = self._read(start, stop)
        psfs, fixed = raw.psfs, (raw.flags & int(Flag.PSF_FIXED)) != 0
        if self.psf_cube is not None:
            fixed = None
        elif self.psf_files is None:
            psfs, was_fixed = shared_psf(self.psf, self.psf_size, self._psf_cache, name="PSF")
            fixed = np.full(stop - start, was_fixed)
        return finish_chunk(
            start,
            raw.ids,
            raw.images,
            psfs,
            self.sky_sigma,
            names=self._row_names(start, stop),
            bad=raw.bad,
            psf_fixed=fixed,
            padded_mask=padded,
            sigma_maps=raw.sigma_maps,
            input_mask=input_mask,
            offset=raw.offset,
            columns=raw.columns,
            stamp_size=self.stamp_size,
            psf_size=self.psf_size,
            sky_given=self.sky_sigma is not None,
        )

    def pixel_to_world(self, x, y):
        if self.wcs is None:
            return None
        ok = np.isfinite(x) & np.isfinite(y)
        ra = np.full(len(x), np.nan)
        dec = np.full(len(x), np.nan)
        if ok.any():
            sc = self.wcs.celestial.pixel_to_world(np.asarray(x)[ok] - 1.0, np.asarray(y)[ok] - 1.0)
            ra[ok], dec[ok] = sc.ra.deg, sc.dec.deg
        return ra, dec


def _pick(colnames: list[str], given: str | None, candidates: tuple[str, ...], what: str, path) -> str | None:
    if given:
        if given not in colnames:
            raise InputDataError(
                f"catalog {path}: no {what} column {given!r}; columns: {', '.join(colnames)}"
            )
        return given
    return next((c for c in candidates if c in colnames), None)


def _carried(table) -> dict[str, np.ndarray]:
    """The catalog's 1-D columns, carried to the output (clashes with galnet columns are prefixed
    ``input_``)."""
    reserved = set(catalog_columns()) | {"flags", "ra", "dec", "chi2nu", "x_in", "y_in"}
    columns: dict[str, np.ndarray] = {}
    for c in table.colnames:
        if table[c].ndim != 1:
            continue
        arr = np.asarray(_filled(table[c]))
        if arr.dtype.kind == "O":
            arr = arr.astype(str)
        columns[c if c not in reserved else f"input_{c}"] = arr
    return columns


def _read_catalog(path: Path):
    """A source catalog as an astropy Table; Parquet through pyarrow (astropy's reader needs pandas)."""
    if path.name.lower().endswith(".parquet") and path.is_file():
        try:
            import pyarrow.parquet as pq
            from astropy.table import Table

            data = pq.read_table(path)
            return Table(
                {name: data.column(name).to_numpy(zero_copy_only=False) for name in data.column_names}
            )
        except ImportError:
            pass
        except Exception as exc:  # noqa: BLE001 - pyarrow raises many types for corrupt files
            raise InputDataError(f"catalog {path}: cannot read Parquet table: {exc}") from exc
    return read_table(path)


def _numeric(col, name: str, where) -> np.ndarray:
    """A catalog column as float64; values that are not numbers become NaN (their rows are flagged).

    Raises
    ------
    InputDataError
        No value of the column is a number (e.g. sexagesimal RA): the message names the column.
    """
    arr = _filled(col)
    try:
        return np.asarray(arr, dtype=float)
    except (TypeError, ValueError):
        pass
    out = np.full(len(arr), np.nan)
    bad = []
    for i, v in enumerate(arr):
        try:
            out[i] = float(v.decode() if isinstance(v, bytes) else v)
        except (TypeError, ValueError):
            bad.append(i)
    if len(bad) == len(arr) and len(arr):
        raise InputDataError(f"catalog {where}: column {name!r} is not numeric (e.g. {arr[0]!r}); "
                             "positions must be numbers (degrees for RA/Dec, pixels for x/y)")
    for i in bad[:20]:
        log.error("catalog %s row %d: %s = %r is not a number; row flagged BAD_INPUT", where, i, name, arr[i])
    return out


def _filled(col) -> np.ndarray:
    """A table column as a plain array (masked values → NaN for floats, the fill value otherwise)."""
    if hasattr(col, "mask") and np.any(getattr(col, "mask", False)):
        if col.dtype.kind == "f":
            return np.asarray(col.filled(np.nan))
        return np.asarray(col.filled())
    return np.asarray(col)
