"""`python -m diffubias ...` (also what `accelerate launch -m diffubias ...` runs): see
diffubias.cli."""

import sys

from diffubias.cli import main

sys.exit(main(prog="python -m diffubias"))
