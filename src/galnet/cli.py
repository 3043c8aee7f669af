"""The ``galnet`` command line: one subcommand per stage.

Each subcommand lives in its stage as a module with ``add_arguments(parser)`` and
``run(args) -> int``; this file only dispatches, and imports a stage only when it is used.
Logging is configured here and nowhere else.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from . import __version__
from .errors import GalnetError

#: exit status of a clear, one-line error (bad option, file or data), as argparse's own
EXIT_USAGE = 2
#: exit status after Ctrl-C (128 + SIGINT, as a shell reports it)
EXIT_INTERRUPTED = 130

#: subcommand → (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "render": ("galnet.render.command", "draw Sérsic ⊗ PSF model images from a parameter table"),
    "backgrounds": ("galnet.data.backgrounds", "a library of real background stamps to inject galaxies into"),
    "simulate": ("galnet.simulate.command", "write a reproducible simulated training/test set"),
    "train": ("galnet.train.command", "train (or resume training) a network"),
    "predict": ("galnet.predict.command", "measure galaxies with a trained network"),
    "fit": ("galnet.fit.command", "batched least-squares Sérsic fits (moments, network or catalog starts)"),
    "evaluate": ("galnet.evaluate.command", "metrics, chi2, plots and an HTML report"),
    "demo": ("galnet.evaluate.demo", "the whole chain on a small simulated set, with a report"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="galnet", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"galnet {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("galnet"):
                continue  # stage not built yet
            raise
        p = sub.add_parser(name, help=help_text, description=(mod.__doc__ or help_text).strip())
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(asctime)s %(name)s %(levelname)s: %(message)s",
    )
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        _compose(args)
        try:
            return int(args._run(args) or 0)
        finally:
            if getattr(args, "refiner", None) is not None:
                args.refiner.close()
    except GalnetError as exc:
        print(f"galnet {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        hint = getattr(args, "_interrupt_hint", None) or "finished work is kept"
        print(f"galnet {args.command}: interrupted; {hint}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as exc:  # unreadable / unwritable files: the message names the file
        print(f"galnet {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE


def _compose(args: argparse.Namespace) -> None:
    """Hand a command the later stages it uses (the stages themselves only import earlier ones).

    ``galnet predict --refine K`` refines the network's answers with the fitter: a
    :class:`galnet.fit.Refiner` is passed to predict as ``args.refiner``. ``galnet predict --chi2`` judges the
    network's model on ``galnet fit``'s pixels and σ: a :class:`galnet.fit.FitPixels` as ``args.pixels``.
    """
    if args.command == "predict" and getattr(args, "refine", 0) > 0:
        from .fit import Refiner
        from .options import usable_cores

        workers = args.refine_workers
        if workers is None:
            workers = 1 if (args.workers or args.dask) else usable_cores()
        args.refiner = Refiner(int(args.refine), mask_neighbours=bool(args.mask_neighbours),
                               finish_chi2=args.refine_finish or None, workers=int(workers),
                               fit_sky=bool(args.refine_sky), finish_max_iter=int(args.refine_finish_iter))
    elif args.command == "predict" and (getattr(args, "chi2", False) or getattr(args, "save_models", False)):
        from .fit import FitPixels

        args.pixels = FitPixels(mask_neighbours=bool(args.mask_neighbours))


def _one_line(exc: BaseException) -> str:
    """The exception's message on one line (multi-line messages are joined)."""
    return " ".join(str(exc).split()) or type(exc).__name__


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
