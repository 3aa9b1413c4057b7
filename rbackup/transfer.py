"""Moving bytes: the one streaming loop, progress accounting, and the worker pool.

Every byte of a backup, restore or verify passes through `stream_copy`: a
reusable per-thread buffer, CRC-32C computed on the same memory (the crc32c
C extension releases the GIL and runs at >10 GB/s, so several files overlap
their reads, checksums and writes on different threads), the rate limiter
charged per chunk, and a stop flag checked per chunk so that Ctrl-C or a
failing sibling ends the copy within one chunk.
"""
from __future__ import annotations

import concurrent.futures as cf
import logging
import mmap
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, BinaryIO, TypeVar

from .env.base import DISK_BUFFER_SIZE, Capabilities, ReadStream
from .errors import Aborted, Corruption, Incomplete
from .format.checksum import crc32c
from .options import Progress, ProgressCallback
from .ratelimit import RateLimiter

log = logging.getLogger("rbackup")

DEFAULT_BUFFER_SIZE = DISK_BUFFER_SIZE
"""The buffer of a `Buffers()` that has no store to ask (the backup cache on local disk)."""

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class CopyResult:
    size: int
    crc32c: int

    def check(self, backup_id: int | None, what: str, size: int | None, crc32c: int | None) -> None:
        """Corruption unless the copy has the size and CRC-32C the meta file records
        (None: not recorded), naming the backup and the file `what`."""
        prefix = f"backup {backup_id}: " if backup_id is not None else ""
        if size is not None and self.size != size:
            raise Corruption(f"{prefix}{what} is {self.size} bytes, expected {size}")
        if crc32c is not None and self.crc32c != crc32c:
            raise Corruption(f"{prefix}checksum mismatch in {what} (crc32c {self.crc32c}, "
                             f"the meta file says {crc32c})")


class ProgressTracker:
    """Counts bytes and files across threads and calls the user's callback.

    As in RocksDB the callback fires each time `interval` more bytes have
    moved; it also fires when a file completes, so a display can count files.
    Calls are serialised.  A callback that raises aborts the operation
    (RocksDB HEAD turns that into Status::Aborted).
    """

    def __init__(self, operation: str, backup_id: int, bytes_total: int, files_total: int,
                 callback: ProgressCallback | None, interval: int, stop: threading.Event) -> None:
        self.operation = operation
        self.backup_id = backup_id
        self.bytes_total = bytes_total
        self.files_total = files_total
        self.bytes_done = 0
        self.files_done = 0
        self._callback = callback
        self._interval = interval
        self._next_call = interval
        self._lock = threading.Lock()
        self._stop = stop

    def add(self, nbytes: int) -> None:
        with self._lock:
            self.bytes_done += nbytes
            if self._callback is not None and self.bytes_done >= self._next_call:
                self._next_call = self.bytes_done + self._interval
                self._fire()

    def file_done(self) -> None:
        with self._lock:
            self.files_done += 1
            if self._callback is not None:
                self._fire()

    def _fire(self) -> None:
        assert self._callback is not None  # callers check
        try:
            self._callback(Progress(self.operation, self.bytes_done, self.bytes_total,
                                    self.files_done, self.files_total, self.backup_id))
        except Exception as exc:  # the user's code: whatever it raises aborts the operation
            self._stop.set()
            raise Aborted(f"{self.operation} of backup {self.backup_id} aborted: "
                          f"progress callback raised {type(exc).__name__}: {exc}") from exc
        except BaseException:  # Ctrl-C stays Ctrl-C, after stopping the siblings
            self._stop.set()
            raise


def page_buffer(size: int) -> mmap.mmap:
    """A zeroed buffer of `size` bytes in its own anonymous mapping, for buffers of a MiB and up.

    malloc would serve them from the arena of the thread that asks, and once
    freed they stay in that arena (glibc raises its mmap threshold to the
    largest block freed), so 16 transfer threads left about 25 MB of idle
    arena memory at a backup's peak; a mapping goes back to the kernel when
    the last view of it is dropped.  Private, so a forked child does not share it.
    """
    if hasattr(mmap, "MAP_PRIVATE"):  # POSIX
        return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    return mmap.mmap(-1, size)


class Buffers(threading.local):
    """One reusable copy buffer per worker thread: memory stays flat at
    (threads x buffer size) whatever the number or size of files."""

    def __init__(self, size: int = DEFAULT_BUFFER_SIZE) -> None:
        self.size = size
        self._buf: memoryview | None = None

    @classmethod
    def for_store(cls, io_buffer_size: int, capabilities: Capabilities) -> Buffers:
        """`io_buffer_size` when set, else what the store declares suits it
        (`Capabilities.buffer_size`)."""
        return cls(io_buffer_size or capabilities.buffer_size)

    def get(self) -> memoryview:
        if self._buf is None:
            self._buf = memoryview(page_buffer(self.size))
        return self._buf


def stream_copy(src: ReadStream | BinaryIO, write: Callable[[memoryview], Any] | None, *, buf: memoryview,
                stop: threading.Event, limiter: RateLimiter | None = None,
                tracker: ProgressTracker | None = None, limit: int | None = None) -> CopyResult:
    """Copy `src` to `write` (None: read only, for verify), up to `limit` bytes.

    Returns the size and CRC-32C of what was copied.  The chunk handed to
    `write` is a view of the shared buffer: writers must consume it before
    returning (every AtomicWriter does).
    """
    crc = 0
    size = 0
    readinto = getattr(src, "readinto", None)
    while True:
        if stop.is_set():
            raise Incomplete("stopped")
        want = len(buf) if limit is None else min(len(buf), limit - size)
        if want <= 0:
            break
        if readinto is not None:
            n = readinto(buf[:want]) or 0
            chunk = buf[:n]
        else:
            data = src.read(want)
            n = len(data)
            chunk = memoryview(data)
        if not n:
            break
        crc = crc32c(chunk, crc)
        if limiter is not None:
            limiter.charge(n)
        if write is not None:
            write(chunk)
        size += n
        if tracker is not None:
            tracker.add(n)
    return CopyResult(size, crc)


def file_crc32c(src: ReadStream | BinaryIO, buf: memoryview) -> CopyResult:
    """Checksum a whole stream (legacy names need the crc before the copy)."""
    return stream_copy(src, None, buf=buf, stop=threading.Event())


def run_parallel(items: Iterable[T], fn: Callable[[T], R], workers: int,
                 stop: threading.Event) -> list[R]:
    """Run `fn` over `items` on `workers` threads; results in item order.

    The first failure stops the rest (they see `stop` within a chunk) and is
    raised once every worker has finished, so no thread still writes when the
    caller starts cleaning up.  KeyboardInterrupt in the caller does the same.
    """
    items = list(items)
    if workers <= 1 or len(items) <= 1:
        results = []
        try:
            for item in items:
                results.append(fn(item))
        except BaseException:
            stop.set()
            raise
        return results
    with cf.ThreadPoolExecutor(max_workers=min(workers, len(items)), thread_name_prefix="rbackup") as pool:
        futures = [pool.submit(fn, item) for item in items]
        try:
            cf.wait(futures, return_when=cf.FIRST_EXCEPTION)
        except BaseException:
            stop.set()
            cf.wait(futures)
            raise
        first_error: BaseException | None = None
        for fut in futures:
            exc = fut.exception() if fut.done() else None
            if exc is not None:
                first_error = first_error or exc
        if first_error is not None:
            stop.set()
            for fut in futures:
                fut.cancel()
            cf.wait(futures)
            raise _most_telling([exc for f in futures if f.done() and not f.cancelled()
                                 and (exc := f.exception()) is not None])
        return [f.result() for f in futures]


def _most_telling(errors: list[BaseException]) -> BaseException:
    """Siblings stopped by the first failure raise Incomplete: report the cause instead."""
    for exc in errors:
        if not isinstance(exc, Incomplete):
            return exc
    return errors[0]


__all__ = [
    "DEFAULT_BUFFER_SIZE",
    "Buffers",
    "CopyResult",
    "ProgressTracker",
    "file_crc32c",
    "page_buffer",
    "run_parallel",
    "stream_copy",
]
