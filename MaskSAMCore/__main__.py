"""`python -m MaskSAMCore ...` is the same as the `masksam` command (whose console script runs
`run` too)."""

import sys

# What shells report for Ctrl-C, as `cli.CANCELLED_EXIT_STATUS` (not imported from there: see `run`).
CANCELLED_EXIT_STATUS = 130


def run() -> int:
    """The command line. Importing it (torch and the rest) takes a second or more, before
    `cli.run_command` handles Ctrl-C itself: a Ctrl-C then is said as the cancel it is
    (``masksam: cancelled``, exit status 130), not as a traceback through the import machinery."""
    try:
        from MaskSAMCore.cli import main
        return main()
    except KeyboardInterrupt:
        print("masksam: cancelled", file=sys.stderr)
        return CANCELLED_EXIT_STATUS


if __name__ == "__main__":
    sys.exit(run())
