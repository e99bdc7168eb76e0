"""``python -m vlaforge ...``: the same command line as the ``vlaforge`` console script."""

import sys

from vlaforge.platform.cli import main

if __name__ == "__main__":
    sys.exit(main())
