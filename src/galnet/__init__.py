"""galnet: fast, PSF-aware structural parameters of galaxies for large imaging surveys.

Stages (one subpackage each, dependencies one way, see docs/architecture.md): base modules → render →
data → simulate → models → train → predict → fit → evaluate → cli. Importing ``galnet`` imports nothing
heavy.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
