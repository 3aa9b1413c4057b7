"""Backing up a DB that another process has open, beside it, without stopping it (opt-in: `LiveDbPath`).

Why this is safe, and exactly what it captures: RocksDB never changes a file in place.  SSTs and
blob files are immutable once the MANIFEST names them, and are deleted only after an edit appended
to the MANIFEST drops them; a WAL is deleted (or recycled) only after an edit appended to the
MANIFEST says its data is flushed; a new MANIFEST takes over only when CURRENT is replaced.  So:

1. read CURRENT and the MANIFEST it names, up to its size S at that moment (a torn last record is
   ignored, as RocksDB's recovery ignores it);
2. open every SST and blob file that this MANIFEST prefix lists, and every WAL recovery would
   replay, keeping the descriptors (a file deleted later stays readable through them);
3. read CURRENT and the MANIFEST's size again.  Unchanged means no file was dropped between 1 and
   the last open of 2, so the descriptors hold exactly the files of that version: the snapshot
   stands.  Changed: close everything and start again (at most `ATTEMPTS` times).

WALs only grow at their end, so each WAL copied up to where it is when it is copied is a prefix
of the DB's write stream, and older WALs are complete.  The backup is therefore the state RocksDB
itself would recover after a crash at (about) the moment of the copy: every write acknowledged
before the backup started is in it, and if a later write is in it so is every write before that
(writes made with `disableWAL` and not yet flushed are not, as after a crash).  The MANIFEST prefix,
CURRENT, OPTIONS and the WALs are staged in a private temporary directory (their live copies keep
changing); SSTs and blob files are read through the descriptors.  Nothing in the DB's directories
is created or changed, and its LOCK is never touched.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

from .dbdir import ClosedDb, LiveFile, last_sequence_in, live_wals, newest_options, read_options, wal_dir_of
from .errors import Corruption, Incomplete
from .format.manifest import DbVersion, parse_current, read_manifest
from .osutil import ensure_open_files

log = logging.getLogger("rbackup")

ATTEMPTS = 50
_COPY_CHUNK = 1 << 20


@dataclass(frozen=True)
class LiveDbPath:
    """Pass this instead of a path to back up a DB another process has open (see the module doc)."""

    path: str


class _Prefix:
    """The first `size` bytes of a file descriptor, as a read-only stream (pread: no shared offset)."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd, self.size, self.pos = fd, size, 0

    def read(self, n: int = -1) -> bytes:
        n = self.size - self.pos if n < 0 else min(n, self.size - self.pos)
        data = os.pread(self.fd, n, self.pos) if n > 0 else b""
        self.pos += len(data)
        return data


@dataclass
class _Attempt:
    current: bytes
    manifest: LiveFile
    manifest_fd: int
    version: DbVersion
    fds: dict[str, int]
    """DB file name -> open descriptor (SSTs, blob files, WALs, OPTIONS)."""
    wal_dir: str


def _read_current(db_path: str) -> bytes:
    with open(os.path.join(db_path, "CURRENT"), "rb") as fh:
        return fh.read(4096)


def _open_all(db_path: str, fds: dict[str, int], names: list[tuple[str, str]]) -> bool:
    """Open each (name, directory); False if one is gone (the DB moved on: try again)."""
    for name, directory in names:
        try:
            fds[name] = os.open(os.path.join(directory, name), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
    return True


def _try_once(db_path: str, with_wals: bool) -> _Attempt | None:
    current = _read_current(db_path)
    name = parse_current(current, os.path.join(db_path, "CURRENT"))
    fds: dict[str, int] = {}
    try:
        try:
            mfd = os.open(os.path.join(db_path, name), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        fds[name] = mfd
        size = os.fstat(mfd).st_size
        version = read_manifest(_Prefix(mfd, size), os.path.join(db_path, name))  # type: ignore[arg-type]
        options = newest_options(db_path)
        wal_dir = wal_dir_of(db_path, options, read_options(options))
        wanted = [(f"{t.number:06d}.sst", db_path) for t in version.tables()]
        wanted += [(f"{b.number:06d}.blob", db_path) for b in version.blobs()]
        wanted += [(options.name, db_path)] if options else []
        try:
            wanted += [(w.name, wal_dir) for w in live_wals(wal_dir, version)] if with_wals else []
        except Corruption:  # a WAL this MANIFEST prefix tracks is gone: the DB has moved on
            raise _Retry() from None
        ensure_open_files(len(wanted), f"backing up the live DB at {db_path}")
        if not _open_all(db_path, fds, wanted):
            raise _Retry()
        if _read_current(db_path) != current or os.fstat(mfd).st_size != size:
            raise _Retry()
        return _Attempt(current, LiveFile(name, os.path.join(db_path, name), size), mfd, version, fds, wal_dir)
    except (_Retry, FileNotFoundError):  # FileNotFoundError: an OPTIONS file replaced meanwhile
        _close(fds)
        return None
    except BaseException:
        _close(fds)
        raise


class _Retry(Exception):
    """The DB changed its file set while we looked: look again."""


def _close(fds: dict[str, int]) -> None:
    for fd in fds.values():
        os.close(fd)
    fds.clear()


def _stage(fd: int, path: str, limit: int | None) -> int:
    """Copy the descriptor's bytes (the first `limit`, or all there are now) to a new file; its size."""
    done = 0
    with open(path, "wb") as out:
        while limit is None or done < limit:
            chunk = os.pread(fd, _COPY_CHUNK if limit is None else min(_COPY_CHUNK, limit - done), done)
            if not chunk:
                break
            out.write(chunk)
            done += len(chunk)
    return done


@contextlib.contextmanager
def live_db_files(db_path: str, *, with_wals: bool = True) -> Iterator[ClosedDb]:
    """The live files of a DB that may be open elsewhere, readable for as long as the context lasts."""
    for attempt in range(ATTEMPTS):
        found = _try_once(db_path, with_wals)
        if found is not None:
            break
        log.info("the DB at %s changed its files while rbackup looked (attempt %d); looking again", db_path, attempt)
    else:
        raise Incomplete(f"the DB at {db_path} changed its files {ATTEMPTS} times while rbackup tried to take a "
                         f"consistent set of them: try again, or back it up from its own process")
    stage = tempfile.mkdtemp(prefix=".rbackup-sidecar-")
    try:
        yield _staged(db_path, found, stage)
    finally:
        _close(found.fds)
        shutil.rmtree(stage, ignore_errors=True)


def _staged(db_path: str, found: _Attempt, stage: str) -> ClosedDb:
    def by_fd(name: str) -> LiveFile:
        fd = found.fds[name]
        return LiveFile(name, f"/proc/self/fd/{fd}", os.fstat(fd).st_size)

    def staged(name: str, limit: int | None) -> LiveFile:
        path = os.path.join(stage, name)
        return LiveFile(name, path, _stage(found.fds[name], path, limit))

    version = found.version
    tables = [by_fd(f"{t.number:06d}.sst") for t in version.tables()]
    for table, meta in zip(tables, version.tables(), strict=True):
        if table.size != meta.size:
            raise Corruption(f"{db_path}/{table.name} has {table.size} bytes, its MANIFEST entry says {meta.size}")
    blobs = [by_fd(f"{b.number:06d}.blob") for b in version.blobs()]
    manifest = staged(found.manifest.name, found.manifest.size)
    with open(os.path.join(stage, "CURRENT"), "wb") as fh:
        fh.write(found.current)
    current = LiveFile("CURRENT", os.path.join(stage, "CURRENT"), len(found.current))
    options = next((staged(n, None) for n in found.fds if n.startswith("OPTIONS-")), None)
    wals = [staged(n, None) for n in sorted(found.fds) if n.endswith(".log")]
    sequence = max([version.last_sequence] + [last_sequence_in(w) for w in wals])
    return ClosedDb(version, tables, blobs, manifest, current, options, wals, found.wal_dir, sequence)
