"""``python -m ddpm_helpers ...``: the command line lives in :mod:`ddpm_helpers.cli`."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
