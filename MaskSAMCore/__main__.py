"""`python -m MaskSAMCore ...` is the same as the `masksam` command."""

import sys

from MaskSAMCore.cli import main

if __name__ == "__main__":
    sys.exit(main())
