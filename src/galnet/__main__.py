"""``python -m galnet``: the same as the ``galnet`` command."""

import sys

from .cli import main

sys.exit(main())
