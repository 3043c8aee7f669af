"""The flag registry: one bit per problem, shared by every batch output (fit, predict, evaluate).

Batch jobs never drop a row: a galaxy that could not be measured, or was measured with a caveat,
gets bits set in the ``flags`` column. :func:`decode` turns a value back into names.
"""

from __future__ import annotations

import enum

import numpy as np

__all__ = ["Flag", "decode", "describe"]


class Flag(enum.IntFlag):
    """Bit flags of the ``flags`` catalog column."""

    NAN_PIXELS = 1 << 0
    EDGE = 1 << 1
    PSF_FIXED = 1 << 2
    OUT_OF_PRIOR = 1 << 3
    RESAMPLED = 1 << 4
    NOT_CONVERGED = 1 << 5
    AT_BOUND = 1 << 6
    FEW_GOOD_PIXELS = 1 << 7
    BAD_SIGMA = 1 << 8
    BAD_INPUT = 1 << 9
    NON_SERSIC = 1 << 10
    HIGH_CHI2 = 1 << 11
    OFF_STAMP = 1 << 12
    NEIGHBOURS_MASKED = 1 << 13
    NO_SOURCE = 1 << 14
    FAILED = 1 << 15


#: What each flag means (also written into catalog metadata).
_DESCRIPTIONS = {
    "NAN_PIXELS": "The stamp had NaN/inf pixels (masked).",
    "EDGE": "The stamp reaches beyond the image edge (padded and masked).",
    "PSF_FIXED": "The PSF was re-normalised, re-centred or cropped to be usable.",
    "OUT_OF_PRIOR": "The result lies outside the training prior of the network (extrapolation).",
    "RESAMPLED": "The stamp was cropped, padded or resampled to the model's input size / pixel scale.",
    "NOT_CONVERGED": "The least-squares fit did not converge within its iteration limit.",
    "AT_BOUND": "A fitted parameter ended at one of its bounds.",
    "FEW_GOOD_PIXELS": "Too few unmasked pixels to measure the galaxy.",
    "BAD_SIGMA": "The sigma map had zero, negative or non-finite values (those pixels were masked), or the "
                 "sky sigma given for the row was zero, negative or NaN (replaced by the stamp-border "
                 "estimate).",
    "BAD_INPUT": "The row could not be processed at all (unreadable file, no data): values are NaN.",
    "NON_SERSIC": "Residuals show the galaxy is not described by a single Sérsic profile.",
    "HIGH_CHI2": "Reduced chi-square of the model against the stamp is high (> 1.5 by default).",
    "OFF_STAMP": "The fitted or predicted centre is off the stamp or far from the input position.",
    "NEIGHBOURS_MASKED": "Information: other sources detected on the stamp were masked before the fit "
                         "(galnet.fit.masking; count in the n_masked column).",
    "NO_SOURCE": "No detectable source near the stamp centre (blank stamp: matched-filter S/N below the "
                 "detection threshold, galnet.detection): values are NaN.",
    "FAILED": "The measurement failed (non-finite network output or fit result): values are NaN.",
}

#: Flags of rows that were not measured at all (their values are NaN): not counted as measured.
NOT_MEASURED = Flag.BAD_INPUT | Flag.NO_SOURCE | Flag.FAILED


def decode(value: int) -> list[str]:
    """Names of the flags set in ``value``."""
    return [f.name for f in Flag if int(value) & int(f)]


def describe() -> dict[str, tuple[int, str]]:
    """``{name: (bit value, meaning)}`` for documentation and catalog metadata."""
    return {f.name: (int(f), _DESCRIPTIONS[f.name]) for f in Flag}


def any_set(values, flag: Flag) -> np.ndarray:
    """Boolean mask of rows whose ``flags`` value has ``flag`` set."""
    return (np.asarray(values, dtype=np.int64) & int(flag)) != 0


def measured(values) -> np.ndarray:
    """Boolean mask of rows that were measured: none of :data:`NOT_MEASURED` set."""
    return (np.asarray(values, dtype=np.int64) & int(NOT_MEASURED)) == 0


__all__ += ["any_set", "measured", "NOT_MEASURED"]
