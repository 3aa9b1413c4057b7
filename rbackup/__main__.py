"""`python -m rbackup`: the rbackup command, as the console script runs it."""
from __future__ import annotations

import sys


def run() -> None:
    from rbackup.cli import main

    sys.exit(main())


if __name__ == "__main__":
    run()
