"""``python -m declarative``: the command line (see declarative/tools/cli.py)."""

import sys

from declarative.tools.cli import main

if __name__ == "__main__":
    sys.exit(main())
