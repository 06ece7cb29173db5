"""``python -m cgshim``: the command line lives in :mod:`cgshim.app.cli`."""
import sys

from cgshim.app.cli import main

if __name__ == "__main__":
    sys.exit(main())
