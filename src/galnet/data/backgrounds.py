"""``galnet backgrounds``: build a library of real background stamps to inject simulated galaxies into.

From the HSC COSMOS deblender scenes (``--scenes DIR``: even object ids only; odd ids are reserved for an
independent test and refused) or from your own HSC pipeline coadds (``--coadd FILE ...``: IMAGE, MASK and
VARIANCE extensions; stamp centres avoid the ``DETECTED`` plane and the ``--mask-planes``). The library is
one HDF5 file for ``galnet simulate --background-library``. Examples::

    galnet backgrounds --scenes benchmarks/.cache/hsc_cosmos -o data/backgrounds.h5
    galnet backgrounds --coadd calexp-HSC-R-9813-4,4.fits -o data/backgrounds.h5 --per-image 2000
"""

from __future__ import annotations

import argparse

import numpy as np

from ..errors import InputDataError
from ..options import check_output_path, nonnegative_int, positive_int

__all__ = ["add_arguments", "run", "coadd_background_stamps"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``galnet backgrounds``."""
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--scenes", metavar="DIR", help="folder of <id>.npz deblender scenes (even ids are used)"
    )
    src.add_argument("--coadd", nargs="+", metavar="FILE", help="HSC pipeline coadd FITS files")
    parser.add_argument("-o", "--output", required=True, help="background library (.h5)")
    parser.add_argument(
        "--per-image", type=positive_int, default=50, help="stamps per scene or coadd (default 50)"
    )
    parser.add_argument(
        "--stamp-size", type=positive_int, default=61, help="stamp size, px (odd; default 61)"
    )
    parser.add_argument("--psf", metavar="FITS", help="with --coadd: the PSF image (2-D FITS) of the coadd")
    parser.add_argument(
        "--mask-planes",
        default=",".join(_default_planes()),
        help="with --coadd: mask planes whose pixels are excluded (comma-separated)",
    )
    parser.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the stamp centres")


def _default_planes() -> tuple[str, ...]:
    from .hsc import DEFAULT_MASK_PLANES

    return DEFAULT_MASK_PLANES


def coadd_background_stamps(
    coadd,
    psf: np.ndarray,
    *,
    per_image: int,
    size: int = 61,
    psf_size: int = 25,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Background stamps cut at random undetected, unmasked pixels of an HSC coadd.

    Parameters
    ----------
    coadd : galnet.data.hsc.CoaddImage
        From :func:`galnet.data.hsc.read_hsc_coadd` (its ``mask``: the excluded planes and bad variances).
    psf : ndarray, shape (P, P)
        The coadd's PSF image (odd, centred, P >= ``psf_size``).
    per_image, size, psf_size, seed
        Stamps, stamp and PSF sizes (px), seed of the centres.

    Returns the arrays of :func:`galnet.data.hsc.background_stamps`.
    """
    from .hsc import centre_crop_psf, cut_stamp

    c = coadd
    yy, xx = np.nonzero(~c.mask & ~c.planes_set(("DETECTED",)))
    if not len(xx):
        raise InputDataError(f"{c.path}: no unmasked, undetected pixel to centre a background stamp on")
    p = centre_crop_psf(psf, psf_size, name=f"PSF for {c.path}")
    rng = np.random.default_rng(seed)
    out: dict[str, list] = {"images": [], "variance": [], "psfs": [], "scene_ids": []}
    for j in rng.integers(0, len(xx), per_image):
        stamp, sigma, _, _ = cut_stamp(c.image, c.variance, float(xx[j]), float(yy[j]), size, mask=c.mask)
        out["images"].append(stamp)
        out["variance"].append(sigma**2)
        out["psfs"].append(p)
        out["scene_ids"].append(-1)
    return {k: np.asarray(v) for k, v in out.items()}


def run(args: argparse.Namespace) -> int:
    """Run ``galnet backgrounds``; returns the exit status."""
    from .hsc import background_stamps, list_scenes, write_background_library

    check_output_path(args.output, option="--output")
    if args.stamp_size % 2 == 0:
        raise InputDataError(f"--stamp-size must be odd, got {args.stamp_size}")
    if args.scenes:
        files = list_scenes(args.scenes, parity="even")
        lib = background_stamps(files, per_scene=args.per_image, size=args.stamp_size, seed=args.seed)
        source = f"{len(files)} even-id deblender scenes in {args.scenes}"
        zp = 27.0
    else:
        from ..catalog import open_fits
        from .hsc import read_hsc_coadd

        if not args.psf:
            raise InputDataError("--coadd needs --psf (the coadd's PSF image)")
        with open_fits(args.psf, "PSF") as hdul:
            psf = next((h.data for h in hdul if h.data is not None), None)
        planes = tuple(p for p in args.mask_planes.split(",") if p)
        coadds = [read_hsc_coadd(f, mask_planes=planes) for f in args.coadd]
        parts = [
            coadd_background_stamps(c, psf, per_image=args.per_image, size=args.stamp_size,
                                    seed=args.seed + i)
            for i, c in enumerate(coadds)
        ]
        lib = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        zps = {round(c.zeropoint, 6) for c in coadds}
        if len(zps) != 1:
            raise InputDataError(
                f"--coadd files have different zero points {sorted(zps)}; build one library each"
            )
        zp = zps.pop()
        source = f"{len(args.coadd)} HSC coadd(s): " + ", ".join(args.coadd)
    valid = np.isfinite(lib["images"]).mean()
    write_background_library(args.output, lib, zeropoint=zp, source=source)
    print(
        f"galnet backgrounds: {len(lib['images'])} stamps ({100 * valid:.0f} % valid pixels) -> {args.output}"
    )
    return 0
