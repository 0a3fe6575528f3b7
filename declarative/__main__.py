"""``python -m declarative``: the command line (see declarative/cli.py)."""

import sys

from declarative.cli import main

if __name__ == "__main__":
    sys.exit(main())
