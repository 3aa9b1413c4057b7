"""A token bucket shared by every transfer thread of one operation.

RocksDB charges its GenericRateLimiter per I/O request; here each chunk is
charged before it is written (backup) or after it is read (restore), so the
long-run rate converges on the limit whatever the number of threads.
"""
from __future__ import annotations

import threading
import time


class RateLimiter:
    def __init__(self, bytes_per_second: int) -> None:
        self.rate = float(bytes_per_second)
        self._lock = threading.Lock()
        self._next_free = time.monotonic()

    def charge(self, nbytes: int) -> None:
        """Block until `nbytes` may pass.  Reservations are serialised, sleeping is not."""
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next_free)
            self._next_free = start + nbytes / self.rate
            wait = start - now
        if wait > 0:
            time.sleep(wait)


def make_limiter(bytes_per_second: int) -> RateLimiter | None:
    return RateLimiter(bytes_per_second) if bytes_per_second > 0 else None
