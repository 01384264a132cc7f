"""`python -m diffubias ...`: see diffubias.cli."""

import sys

from diffubias.cli import main

sys.exit(main())
