"""`python -m diffubias.zoo ...`: see diffubias.zoo.cli."""

import sys

from diffubias.zoo.cli import main

sys.exit(main())
