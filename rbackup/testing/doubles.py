"""Test doubles for envs: count traffic, inject faults (kopia keeps its doubles in a test-only package).

* `CountingEnv`: counts operations and bytes, per path, for tests and
  benchmarks ("no shared file was re-read", "each file was written once").
* `FaultInjectionEnv`: a `CountingEnv` that also records every operation and
  fails chosen ones deterministically, for error-path tests and crash-point
  sweeps.

They are `WrapperEnv`s, so they stack on any backend, a third party's included.
"""
from __future__ import annotations

import fnmatch
import io
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from ..env.base import AtomicWriter, BackupEnv, FileInfo, ReadStream, StoredChecksum
from ..env.wrappers import WrapperEnv
from ..errors import StorageError

if TYPE_CHECKING:
    from typing_extensions import Buffer

FaultPredicate = Callable[[str, str], bool]
"""Decides from (operation, path) whether an operation fails."""


class InjectedFault(StorageError):
    """A failure made on purpose by FaultInjectionEnv (tests tell it from real ones)."""


class CountingEnv(WrapperEnv):
    """Counts calls and bytes; thread-safe, cheap enough for benchmarks.

    `calls` maps an operation name to how often it ran; `reads` maps each path
    opened for reading to the bytes read from it, `writes` each path written
    (published or not) to the bytes written to it.
    """

    def __init__(self, inner: BackupEnv) -> None:
        super().__init__(inner)
        self._lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        self.reads: Counter[str] = Counter()
        self.writes: Counter[str] = Counter()
        self.bytes_read = 0
        self.bytes_written = 0

    def _op(self, op: str, path: str, *, may_fail: bool = True) -> None:
        """Called before every operation reaches the inner env (the hook for faults)."""
        with self._lock:
            self.calls[op] += 1

    def _count_read(self, path: str, n: int) -> None:
        with self._lock:
            self.reads[path] += n
            self.bytes_read += n

    def _count_write(self, path: str, n: int) -> None:
        with self._lock:
            self.writes[path] += n
            self.bytes_written += n

    def open_read(self, path: str) -> ReadStream:
        self._op("open_read", path)
        stream = self.inner.open_read(path)
        self._count_read(path, 0)
        return _CountingReader(self, path, stream)

    def open_write(self, path: str, *, sync: bool = True) -> AtomicWriter:
        self._op("open_write", path)
        return self._wrap_writer(path, self.inner.open_write(path, sync=sync))

    def open_write_new(self, path: str, *, sync: bool = True) -> AtomicWriter:
        # The inner store's own never-replace publish (If-None-Match on S3), so that tests through
        # a double exercise what production does; counted and faulted as one kind of publish.
        self._op("open_write", path)
        return self._wrap_writer(path, self.inner.open_write_new(path, sync=sync))

    def _wrap_writer(self, path: str, writer: AtomicWriter) -> AtomicWriter:
        self._count_write(path, 0)
        return _CountingWriter(self, path, writer)

    def create_exclusive(self, path: str, data: bytes, *, sync: bool = True) -> None:
        self._op("create_exclusive", path)
        self.inner.create_exclusive(path, data, sync=sync)
        self._count_write(path, len(data))

    def list(self, prefix: str = "") -> list[FileInfo]:
        self._op("list", prefix)
        return self.inner.list(prefix)

    def stat(self, path: str) -> FileInfo:
        self._op("stat", path)
        return self.inner.stat(path)

    def delete(self, paths: Iterable[str]) -> None:
        targets = list(paths)
        for i, path in enumerate(targets):
            try:
                self._op("delete", path)
            except InjectedFault:
                # Fail part way, as a real bulk delete can: the earlier names are gone.
                self.inner.delete(targets[:i])
                raise
        self.inner.delete(targets)

    def stored_checksum(self, path: str) -> StoredChecksum | None:
        self._op("stored_checksum", path)
        return self.inner.stored_checksum(path)

    def makedirs(self, path: str = "") -> None:
        self._op("makedirs", path)
        self.inner.makedirs(path)

    def remove_dir(self, path: str) -> None:
        self._op("remove_dir", path)
        self.inner.remove_dir(path)

    def sync_dir(self, path: str = "") -> None:
        self._op("sync_dir", path)
        self.inner.sync_dir(path)


class _CountingReader(io.RawIOBase):
    """Passes reads straight to the inner stream (no extra buffer, no copy) and counts them."""

    def __init__(self, env: CountingEnv, path: str, inner: ReadStream) -> None:
        super().__init__()
        self._env = env
        self._path = path
        self._inner = inner

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        self._env._op("read", self._path)
        data = self._inner.read(size)
        self._env._count_read(self._path, len(data))
        return data

    def readinto(self, buffer: Buffer) -> int | None:
        self._env._op("read", self._path)
        n = self._inner.readinto(buffer)
        self._env._count_read(self._path, n or 0)
        return n

    def close(self) -> None:
        if not self.closed:
            self._inner.close()
        super().close()


class _CountingWriter(AtomicWriter):
    def __init__(self, env: CountingEnv, path: str, inner: AtomicWriter) -> None:
        self._env = env
        self._path = path
        self._inner = inner

    def write(self, data: bytes | memoryview) -> int:
        self._env._op("write", self._path)
        n = self._inner.write(data)
        self._env._count_write(self._path, n)
        return n

    def commit(self) -> None:
        self._env._op("commit", self._path)
        self._inner.commit()

    def abort(self) -> None:
        # Cleanup never fails on purpose: it runs while another error propagates.
        self._env._op("abort", self._path, may_fail=False)
        self._inner.abort()


class FaultInjectionEnv(CountingEnv):
    """Fails chosen operations deterministically and records every operation.

    `ops` lists each operation as (name, path) in the order it reached the env:
    open_read, read (per chunk), open_write, write (per chunk), commit, abort,
    create_exclusive, list, stat, stored_checksum, delete (per path), makedirs,
    remove_dir, sync_dir.  An operation fails, raising `InjectedFault` before it reaches the
    inner env, when

    * its index in `ops` equals `fail_at` (a crash-point sweep runs the job once
      without faults, then once per `fail_at` in `range(len(ops))`);
    * `fail_on(name, path)` returns True (see `fail_nth`);
    * it is a write that would take the bytes written through this env past
      `fail_write_after_bytes` (the bytes that fit are written first, like a
      disk filling up; a create_exclusive that does not fit writes nothing);
    * `sticky` is set and an earlier fault fired: the env then acts like the
      store of a process that died, refusing everything but `abort`.

    Aborts are recorded but never fail; `faults` lists the operations that did.
    """

    def __init__(
        self,
        inner: BackupEnv,
        *,
        fail_at: int | None = None,
        fail_on: FaultPredicate | None = None,
        fail_write_after_bytes: int | None = None,
        sticky: bool = False,
    ) -> None:
        super().__init__(inner)
        self.fail_at = fail_at
        self.fail_on = fail_on
        self.fail_write_after_bytes = fail_write_after_bytes
        self.sticky = sticky
        self.ops: list[tuple[str, str]] = []
        self.faults: list[tuple[str, str]] = []

    def _op(self, op: str, path: str, *, may_fail: bool = True) -> None:
        super()._op(op, path)
        with self._lock:
            index = len(self.ops)
            self.ops.append((op, path))
            if not may_fail:
                return
            fail = (
                (self.sticky and bool(self.faults))
                or index == self.fail_at
                or (self.fail_on is not None and self.fail_on(op, path))
            )
            if not fail:
                return
            self.faults.append((op, path))
        raise InjectedFault(f"injected fault: {op} {self.describe(path)} (operation #{index})")

    def _room(self, n: int) -> int:
        """How many of the next `n` bytes fit under fail_write_after_bytes."""
        if self.fail_write_after_bytes is None:
            return n
        with self._lock:
            return max(0, min(n, self.fail_write_after_bytes - self.bytes_written))

    def _disk_full(self, op: str, path: str) -> InjectedFault:
        with self._lock:
            self.faults.append((op, path))
        return InjectedFault(
            f"injected fault: {op} {self.describe(path)}: no space after "
            f"{self.fail_write_after_bytes} bytes"
        )

    def _wrap_writer(self, path: str, writer: AtomicWriter) -> AtomicWriter:
        self._count_write(path, 0)
        return _FaultWriter(self, path, writer)

    def create_exclusive(self, path: str, data: bytes, *, sync: bool = True) -> None:
        if self._room(len(data)) < len(data):
            self._op("create_exclusive", path)
            raise self._disk_full("create_exclusive", path)
        super().create_exclusive(path, data, sync=sync)


class _FaultWriter(_CountingWriter):
    _env: FaultInjectionEnv

    def write(self, data: bytes | memoryview) -> int:
        view = memoryview(data)
        room = self._env._room(view.nbytes)
        if room < view.nbytes:
            super().write(view.cast("B")[:room])
            raise self._env._disk_full("write", self._path)
        return super().write(view)


def fail_nth(op: str, n: int = 0, path_glob: str = "*") -> FaultPredicate:
    """A `fail_on` predicate failing the n-th (0-based) `op` on a path matching `path_glob`.

    `fail_nth("commit", 2, "shared_checksum/*")` fails the third publish of a
    shared file; every other operation passes.
    """
    seen = 0

    def predicate(name: str, path: str) -> bool:
        nonlocal seen
        if name != op or not fnmatch.fnmatchcase(path, path_glob):
            return False
        seen += 1
        return seen == n + 1

    return predicate
