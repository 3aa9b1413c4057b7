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
CURRENT, OPTIONS and the WALs are staged, since their live copies keep changing, in a directory
beside the DB (else in the temp directory) locked as a checkpoint is (`checkpointdir`), so a killed
backup's staging is removed by the next backup; SSTs and blob files are read through the
descriptors.  Nothing in the DB's directories is created or changed, and its LOCK is never touched.
"""
from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .checkpointdir import checkpoint_dir
from .dbdir import ClosedDb, LiveFile, last_sequence_in, live_wals, newest_options, read_options, wal_dir_of
from .errors import Corruption, Incomplete, NotSupported
from .format.checksum import crc32c
from .format.manifest import BlobFile, DbVersion, ManifestProgress, TableFile, parse_current, read_manifest_from
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
    tables: list[TableFile]
    """`version.tables()`, sorted once."""
    blobs: list[BlobFile]
    fds: dict[str, int]
    """DB file name -> open descriptor (SSTs, blob files, WALs, OPTIONS)."""
    wal_dir: str
    manifest_key: _ManifestKey
    unpinned: dict[str, os.stat_result]
    """SSTs left unpinned (`Reusable`): name -> the stat an earlier snapshot took of it."""


_ManifestKey = tuple[int, int, str]
"""A MANIFEST's st_dev, st_ino and path."""

Reusable = Callable[[list[tuple[str, int, os.stat_result]]], set[str]]
"""Asked of SSTs (name, size, the stat taken when an earlier snapshot pinned it): the names of those the
backup being made will neither read nor need to stay (their copies are already where the backup goes)."""


@dataclass(frozen=True)
class _Known:
    progress: ManifestProgress
    crc: int
    """CRC-32C of the MANIFEST's bytes [0, progress.offset)."""
    pins: dict[int, os.stat_result]
    """SST number -> its stat, taken through the descriptor of a snapshot that stood, for the SSTs of
    the last snapshot read through this MANIFEST (see `_ManifestProgressCache.pins`)."""


class _ManifestProgressCache:
    """How far this process read each MANIFEST, so the next snapshot of the DB decodes only what was
    appended since (a no-change backup of a 10,000-SST DB: nothing, instead of 0.3 s).

    Keyed by the file's (st_dev, st_ino, path) and trusted only if the bytes read then are still the
    file's first bytes (their CRC-32C, one C pass over ~1 MB): a MANIFEST is append-only, and a new
    file that got the same inode and name (a DB deleted and made again) fails the check.  Bounded:
    the `MAX_ENTRIES` most recently used MANIFESTs (~200 bytes of replay state per live SST each).

    Each entry also keeps the stats of the SSTs the last snapshot through it pinned (`pins`): an SST
    the same MANIFEST still lists is the same file, so a later snapshot may know it by that stat
    without opening it (`live_db_files`'s `reusable`)."""

    MAX_ENTRIES = 8

    def __init__(self) -> None:
        self._entries: OrderedDict[_ManifestKey, _Known] = OrderedDict()
        self._lock = threading.Lock()

    def read(self, fd: int, size: int, path: str) -> DbVersion:
        """The version that the MANIFEST open at `fd` records in its first `size` bytes."""
        return self.read_with_pins(fd, size, path)[0]

    def read_with_pins(self, fd: int, size: int,
                       path: str) -> tuple[DbVersion, _ManifestKey, dict[int, os.stat_result]]:
        """`read`, with the MANIFEST's key and the SSTs' stats remembered for this very file (none if
        the file is not the one read before)."""
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino, path)
        with self._lock:
            hit = self._entries.get(key)
        if hit is not None and not (hit.progress.offset <= size and _crc_of(fd, 0, hit.progress.offset) == hit.crc):
            hit = None
        since, crc, pins = (hit.progress, hit.crc, hit.pins) if hit is not None else (None, 0, {})
        reader = _Prefix(fd, size)
        reader.pos = since.offset if since is not None else 0
        version, progress = read_manifest_from(reader, path, since)  # type: ignore[arg-type]
        crc = _crc_of(fd, since.offset if since is not None else 0, progress.offset, crc)
        with self._lock:
            self._entries[key] = _Known(progress, crc, pins)
            self._entries.move_to_end(key)
            while len(self._entries) > self.MAX_ENTRIES:
                self._entries.popitem(last=False)
        return version, key, pins

    def pin(self, key: _ManifestKey, pins: dict[int, os.stat_result]) -> None:
        """Remember the stats of a snapshot's SSTs, read through the MANIFEST `key` names.

        Why that is enough to know an SST again without opening it: RocksDB never reuses a file
        number within a DB and never changes an SST it wrote; every read-write open of a DB starts
        a new MANIFEST, and an entry here is used only for the same file with the same first bytes.
        So while this MANIFEST lists SST n, `n.sst` in the DB directory is the file that was pinned
        here (a copy of the DB, or one restored from a backup, has the same bytes under the same
        names).  A file compacted away meanwhile is gone, but `reusable` said nobody reads it."""
        with self._lock:
            known = self._entries.get(key)
            if known is not None:
                self._entries[key] = _Known(known.progress, known.crc, pins)


def _crc_of(fd: int, start: int, end: int, crc: int = 0) -> int:
    """The CRC-32C of bytes [0, end) of the file, given `crc` of bytes [0, start)."""
    done = start
    while done < end:
        chunk = os.pread(fd, min(_COPY_CHUNK, end - done), done)
        if not chunk:
            return -1  # shorter than that now: not the file it was
        crc = crc32c(chunk, crc)
        done += len(chunk)
    return crc


MANIFEST_PROGRESS = _ManifestProgressCache()


def _read_current(db_path: str) -> bytes:
    with open(os.path.join(db_path, "CURRENT"), "rb") as fh:
        return fh.read(4096)


def _open_all(db_path: str, fds: dict[str, int], names: list[tuple[str, str]]) -> str | None:
    """Open each (name, path); the path of the first one not there (the DB moved on, or keeps it
    elsewhere), or None."""
    for name, path in names:
        try:
            fds[name] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return path
    return None


def column_families(db_path: str, attempts: int = ATTEMPTS) -> list[str]:
    """The names of the DB's column families, as its MANIFEST records them now (decoded through the
    progress cache, which the snapshot that follows then reuses)."""
    for _ in range(attempts):
        name = parse_current(_read_current(db_path), os.path.join(db_path, "CURRENT"))
        try:
            fd = os.open(os.path.join(db_path, name), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:  # CURRENT moved on to a new MANIFEST meanwhile
            continue
        try:
            version = MANIFEST_PROGRESS.read(fd, os.fstat(fd).st_size, os.path.join(db_path, name))
        finally:
            os.close(fd)
        return [cf.name for _, cf in sorted(version.column_families.items())]
    raise Incomplete(f"the DB at {db_path} replaced its MANIFEST {attempts} times while rbackup read it")


def _try_once(db_path: str, with_wals: bool, reusable: Reusable | None) -> _Attempt | None:
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
        version, key, pins = MANIFEST_PROGRESS.read_with_pins(mfd, size, os.path.join(db_path, name))
        listing = os.listdir(db_path)  # once: a DB of 10,000 SSTs is a long listing
        options = newest_options(db_path, listing)
        wal_dir = wal_dir_of(db_path, options, read_options(options))
        tables, blobs = version.tables(), version.blobs()
        prefix = os.path.join(db_path, "")
        ssts = [f"{t.number:06d}.sst" for t in tables]
        unpinned: dict[str, os.stat_result] = {}
        if reusable is not None and pins:
            candidates = [(sst, t.size, st) for sst, t in zip(ssts, tables, strict=True)
                          if (st := pins.get(t.number)) is not None and st.st_size == t.size]
            reused = reusable(candidates)
            unpinned = {sst: st for sst, _, st in candidates if sst in reused}
        wanted = [(sst, prefix + sst) for sst in ssts if sst not in unpinned]
        wanted += [(blob, prefix + blob) for blob in [f"{b.number:06d}.blob" for b in blobs]]
        wanted += [(options.name, options.path)] if options else []
        try:
            if with_wals:
                wals = live_wals(wal_dir, version, listing if wal_dir == db_path else None)
                wanted += [(w.name, w.path) for w in wals]
        except Corruption:  # a WAL this MANIFEST prefix tracks is gone: the DB has moved on
            raise _Retry() from None
        ensure_open_files(len(wanted), f"backing up the live DB at {db_path}")
        missing = _open_all(db_path, fds, wanted)
        moved_on = _read_current(db_path) != current or os.fstat(mfd).st_size != size
        if missing and not moved_on:  # RocksDB deletes a live file only after a MANIFEST edit drops it
            raise NotSupported(f"{missing}, which the MANIFEST of the DB at {db_path} lists, is not there: the DB "
                               f"keeps data files elsewhere (db_paths/cf_paths), which rbackup cannot pin")
        if moved_on:
            raise _Retry()
        return _Attempt(current, LiveFile(name, os.path.join(db_path, name), size), mfd, version, tables, blobs, fds,
                        wal_dir, key, unpinned)
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
def live_db_files(db_path: str, *, with_wals: bool = True, attempts: int = ATTEMPTS,
                  sequence: int | None = None, reusable: Reusable | None = None) -> Iterator[ClosedDb]:
    """The live files of a DB that may be open elsewhere, readable for as long as the context lasts.

    `reusable`: SSTs it says yes to, among those an earlier snapshot through the same MANIFEST
    pinned, are not opened again (their path is the DB's, their stat the one taken then): a
    no-change backup of 10,000 SSTs already in the backup directory opens none of them.

    `sequence`: the DB's sequence number as its owner reported it before the snapshot (an open Rdict);
    without it, the newest one found in the MANIFEST and the staged WALs.  What is staged goes to a
    locked directory beside the DB (`checkpointdir`): a killed backup's is removed by the next one."""
    for attempt in range(attempts):
        found = _try_once(db_path, with_wals, reusable)
        if found is not None:
            break
        log.info("the DB at %s changed its files while rbackup looked (attempt %d); looking again", db_path, attempt)
    else:
        raise Incomplete(f"the DB at {db_path} changed its files {attempts} times while rbackup tried to take a "
                         f"consistent set of them: try again, or back it up from its own process")
    try:
        with checkpoint_dir(db_path, same_filesystem=False) as stage:
            os.mkdir(stage, 0o700)
            yield _staged(db_path, found, stage, sequence)
    finally:
        _close(found.fds)


def _staged(db_path: str, found: _Attempt, stage: str, sequence: int | None) -> ClosedDb:
    fds, fstat = found.fds, os.fstat

    def by_fd(name: str) -> LiveFile:
        fd = fds[name]
        st = fstat(fd)
        return LiveFile(name, f"/proc/self/fd/{fd}", st.st_size, st)

    def staged(name: str, limit: int | None) -> LiveFile:
        path = os.path.join(stage, name)
        return LiveFile(name, path, _stage(found.fds[name], path, limit))

    version, unpinned, prefix = found.version, found.unpinned, os.path.join(db_path, "")
    tables = []
    for meta in found.tables:
        name = f"{meta.number:06d}.sst"
        st = unpinned.get(name)
        table = by_fd(name) if st is None else LiveFile(name, prefix + name, st.st_size, st)
        if table.size != meta.size:
            raise Corruption(f"{db_path}/{table.name} has {table.size} bytes, its MANIFEST entry says {meta.size}")
        tables.append(table)
    MANIFEST_PROGRESS.pin(found.manifest_key, {m.number: t.stat for m, t in zip(found.tables, tables, strict=True)
                                               if t.stat is not None})
    blobs = [by_fd(f"{b.number:06d}.blob") for b in found.blobs]
    manifest = staged(found.manifest.name, found.manifest.size)
    with open(os.path.join(stage, "CURRENT"), "wb") as fh:
        fh.write(found.current)
    current = LiveFile("CURRENT", os.path.join(stage, "CURRENT"), len(found.current))
    options = next((staged(n, None) for n in found.fds if n.startswith("OPTIONS-")), None)
    wals = [staged(n, None) for n in sorted(found.fds) if n.endswith(".log")]
    if sequence is None:
        sequence = max([version.last_sequence] + [last_sequence_in(w) for w in wals])
    return ClosedDb(version, tables, blobs, manifest, current, options, wals, found.wal_dir, sequence)
