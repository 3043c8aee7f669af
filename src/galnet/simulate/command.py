"""Write a reproducible simulated training / validation / test set (HDF5, one file per split).

Example: ``galnet simulate --n 2000 --split 0.8,0.1,0.1 --seed 1 --preset hsc-r --out data/hsc/``.
Rerunning the same command resumes an interrupted run (finished shards are kept), also after a
``kill -9``: every shard and split file is written to a temporary name and renamed when complete.

Options are checked before any work: ``--n``, ``--shard-size``, ``--workers`` and ``--threads``
are positive integers, ``--split`` is three fractions >= 0 that sum to 1 (within 1e-6; nothing is
renormalised), ``--out`` must be a writable directory (or creatable), and the preset, prior
tables, PSF library and background images are read and checked before the first shard.
"""

from __future__ import annotations

import argparse

from ..errors import ConfigError
from ..options import (
    check_output_path,
    finite_float,
    float_in_range,
    float_list,
    int_in_range,
    nonnegative_int,
    positive_int,
)

__all__ = ["add_arguments", "run", "parse_split", "MAX_WORKERS"]

#: Largest ``--workers`` accepted (each is a process holding its own torch).
MAX_WORKERS = 256
#: Tolerance on the sum of the ``--split`` fractions.
SPLIT_TOLERANCE = 1e-6


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``galnet simulate``."""
    parser.add_argument("--n", type=positive_int, required=True, help="total number of stamps (all splits)")
    parser.add_argument("--split", default="0.8,0.1,0.1",
                        help="train,val,test fractions (default 0.8,0.1,0.1)")
    parser.add_argument("--seed", type=nonnegative_int, default=0,
                        help="base seed (same seed => identical arrays)")
    parser.add_argument("--preset", default="hsc-r", help="preset name or TOML/JSON file (default hsc-r)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--workers", type=int_in_range(1, MAX_WORKERS), default=1,
                        help=f"parallel processes (1 to {MAX_WORKERS}; default 1)")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch threads per process (default: the cores shared among the workers); "
                             "use 1 on a CPU shared with other jobs, where oversubscribed threads are "
                             "~10x slower")
    parser.add_argument("--shard-size", type=positive_int, default=1024,
                        help="stamps per shard (default 1024)")
    parser.add_argument("--background", nargs="+", metavar="FILE", default=None,
                        help="FITS images to inject galaxies into (real backgrounds)")
    parser.add_argument("--background-zeropoint", type=finite_float, default=None,
                        help="zero point of the background images (rescaled to the preset's)")
    parser.add_argument("--background-variance-hdu", default=None,
                        help="HDU (name or number) of the variance plane of the backgrounds")
    parser.add_argument("--background-library", metavar="FILE", default=None,
                        help="inject each simulated target into a real background stamp of this library "
                             "(galnet backgrounds); stamps keep the library's sigma map and PSF")
    parser.add_argument("--psf-library", metavar="FILE", default=None,
                        help="FITS PSF cube (N,P,P) to draw per-stamp PSFs from")
    parser.add_argument("--no-neighbours", action="store_true", help="no neighbouring galaxies or stars")
    parser.add_argument("--wrap-tolerance", type=float_in_range(1e-12, 0.5), default=None,
                        help="renderer wrap tolerance (fraction of the flux, in [1e-12, 0.5])")
    parser.add_argument("--compression", choices=("gzip", "lzf"), default="gzip",
                        help="HDF5 compression, with byte shuffling: gzip (level 1, default; any HDF5 "
                             "reader) or lzf (h5py; ~2.5x cheaper to write, files ~8%% larger)")
    parser.add_argument("--keep-shards", action="store_true", help="keep the shard files after merging")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _hdu(value: str | None):
    if value is None:
        return None
    return int(value) if value.lstrip("-").isdigit() else value


def parse_split(text: str) -> tuple[float, float, float]:
    """The ``--split`` option: three comma-separated fractions >= 0 summing to 1 (within 1e-6).

    Raises
    ------
    ConfigError
        Not three numbers, a negative or non-finite part, or a sum other than 1 (nothing is
        renormalised: ``0.5,0.6,0.1`` is refused).
    """
    parts = float_list(text, option="--split", length=3, lo=0.0, hi=1.0)
    total = sum(parts)
    if abs(total - 1.0) > SPLIT_TOLERANCE:
        raise ConfigError(f"--split fractions must sum to 1, got {text!r} (sum {total:.6g})")
    return parts[0], parts[1], parts[2]


def run(args: argparse.Namespace) -> int:
    """Run ``galnet simulate``; returns the exit status."""
    from .config import load_preset
    from .writer import simulate_dataset

    split = parse_split(args.split)
    check_output_path(args.out, option="--out", directory=True)
    args._interrupt_hint = (f"rerun the same command to resume: finished shards in {args.out}/shards are "
                            "kept")
    overrides: dict = {}
    if args.background:
        overrides["background"] = {"files": list(args.background), "zeropoint": args.background_zeropoint,
                                   "variance_hdu": _hdu(args.background_variance_hdu)}
    if args.psf_library:
        overrides["psf"] = {"library": args.psf_library}
    if args.no_neighbours:
        overrides["neighbours"] = {"enabled": False}
    if args.wrap_tolerance is not None:
        overrides["wrap_tolerance"] = args.wrap_tolerance
    config = load_preset(args.preset, overrides)
    if args.background_library:
        from .inject import write_injected_dataset

        if args.background or args.psf_library:
            raise ConfigError("--background-library brings its own backgrounds and PSFs: drop --background "
                              "and --psf-library")
        paths = write_injected_dataset(config, args.background_library, args.out, args.n, split, args.seed)
        for name, path in paths.items():
            print(f"{name}: {path}")
        return 0
    paths = simulate_dataset(config, args.out, args.n, split, args.seed, workers=args.workers,
                             shard_size=args.shard_size, keep_shards=args.keep_shards,
                             progress=not args.no_progress, compression=args.compression,
                             threads=args.threads)
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0
