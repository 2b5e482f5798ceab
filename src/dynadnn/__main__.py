"""`python -m dynadnn ...` (also what `torchrun -m dynadnn train ...` runs)."""

import sys

from .cli import main

sys.exit(main())
