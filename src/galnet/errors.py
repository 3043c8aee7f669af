"""The galnet error hierarchy.

Every error galnet raises on purpose subclasses :class:`GalnetError` *and* the builtin that
fits (``ValueError``, ``FileNotFoundError`` ...), so ``except ValueError`` keeps working for
callers who do not know galnet, and ``except GalnetError`` catches all of ours.
Messages name the file, row or object at fault and say what is wrong with it.
"""

from __future__ import annotations

__all__ = [
    "GalnetError",
    "ParameterRangeError",
    "PSFError",
    "InputDataError",
    "ConfigError",
    "ModelCardError",
]


class GalnetError(Exception):
    """Base class of all galnet errors."""


class ParameterRangeError(GalnetError, ValueError):
    """A Sérsic parameter is outside its valid range, or not finite."""


class PSFError(GalnetError, ValueError):
    """A PSF image is not usable: even-sized, not centred, not normalised, negative or NaN."""


class InputDataError(GalnetError, ValueError):
    """An input file, table, image or dataset is malformed (missing columns, wrong shape, NaN ...)."""


class ConfigError(GalnetError, ValueError):
    """A configuration file or option is invalid."""


class ModelCardError(GalnetError, ValueError):
    """A model card or weights file is missing, inconsistent, or from an incompatible version."""
