"""Small operating-system helpers shared by the local env and the engine's local I/O."""
from __future__ import annotations

import os


def advise_sequential(fd: int) -> None:
    """Tell the kernel a file will be read once, front to back: it reads ahead
    further, which the benchmark measured as 7-10% off cold backups and restores."""
    fadvise = getattr(os, "posix_fadvise", None)
    if fadvise is not None:
        try:
            fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        except OSError:
            pass  # advice only: some filesystems refuse it
