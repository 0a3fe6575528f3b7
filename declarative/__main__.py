import sys

from declarative.cli import main

sys.exit(main())
