"""Taking a consistent snapshot of a RocksDB to copy from.

A backup must be consistent with the DB at the moment of the call whatever
writers do meanwhile.

Three ways in:
- an open read-write `rocksdict.Rdict` (the normal case): flush every column
  family, as RocksDB's Checkpoint does first, then pin the DB's live files by
  holding them open (`sidecar`: the files a MANIFEST prefix names, re-checked
  until the set is stable).  rocksdict exposes neither `DisableFileDeletions`
  nor `GetLiveFilesStorageInfo`; this is their equivalent without a directory
  of 10,000 hard links to make, list and remove on every backup (0.6 s of a
  no-change backup of such a DB).  Where pinning cannot be used (data files in
  `db_paths`/`cf_paths`, a MANIFEST this reader does not know, too few file
  descriptors, a file set that does not hold still, several column families
  and no WALs in the backup) RocksDB's Checkpoint is taken instead: hard links
  of the SSTs, copies of MANIFEST/CURRENT/OPTIONS, a frozen self-contained DB;
- a DB directory no process holds open (the CLI): hold RocksDB's own LOCK
  (`dblock`) so no RocksDB opens it meanwhile, and read which files are live
  from CURRENT, the MANIFEST and OPTIONS (`dbdir`) without opening the DB: any
  RocksDB version's DB works, and nothing in the DB or WAL directory is created
  or changed.  The files are copied from where they are, while the lock holds.
"""
from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

from .checkpointdir import checkpoint_dir
from .dbdir import ClosedDb, read_closed_db
from .dblock import hold_db_lock
from .errors import Corruption, Incomplete, InvalidArgument, NotFound, NotSupported, StorageError
from .format.naming import SIDE_FILES, FileKind, classify, file_number
from .plan import SourceFile
from .sidecar import LiveDbPath, Reusable, column_families, live_db_files

PINNING_ATTEMPTS = 5
"""Tries at a stable file set of an open Rdict before its checkpoint is taken instead: each try after
the first decodes only what the MANIFEST gained meanwhile, and a DB that moves on five times in a row
(a compaction storm) is checkpointed, which RocksDB makes atomic whatever the DB does."""

log = logging.getLogger("rbackup")

_KIND_ORDER = {FileKind.TABLE: 0, FileKind.BLOB: 1, FileKind.MANIFEST: 2, FileKind.CURRENT: 3,
               FileKind.OPTIONS: 4, FileKind.WAL: 5}


@dataclass
class Snapshot:
    sequence_number: int
    files: list[SourceFile]
    """In RocksDB's live-file order: SSTs, blobs, MANIFEST, CURRENT, OPTIONS, WALs."""
    side_files: list[SourceFile] = field(default_factory=list)
    """Files rocksdict needs but RocksDB does not know (rocksdict-config.json)."""


def _scan(directory: str, *, backup_log_files: bool) -> tuple[
        list[SourceFile], list[SourceFile]]:
    files: list[SourceFile] = []
    side: list[SourceFile] = []
    manifests: list[SourceFile] = []
    options: list[SourceFile] = []
    with os.scandir(directory) as it:  # one stat per file: its size, and the naming cache's key
        entries = sorted((e for e in it if e.is_file()), key=lambda e: e.name)
    for entry in entries:
        name, path = entry.name, entry.path
        kind = classify(name)
        st = entry.stat()
        item = SourceFile(name, path, st.st_size, kind, st)
        if name in SIDE_FILES:
            side.append(item)
        elif kind in (FileKind.TABLE, FileKind.BLOB, FileKind.CURRENT):
            files.append(item)
        elif kind is FileKind.MANIFEST:
            manifests.append(item)
        elif kind is FileKind.OPTIONS:
            options.append(item)
    current = next((f for f in files if f.kind is FileKind.CURRENT), None)
    if current is None:
        raise StorageError(f"checkpoint {directory} has no CURRENT file")
    with open(current.path, "rb") as fh:
        manifest_name = fh.read(4096).decode("ascii", "replace").strip()
    manifest = next((m for m in manifests if m.name == manifest_name), None)
    if manifest is None:
        raise StorageError(f"checkpoint {directory}: CURRENT names {manifest_name!r}, which is missing")
    files.append(manifest)
    if options:  # only the latest OPTIONS file, as GetLiveFilesStorageInfo reports
        files.append(max(options, key=lambda f: file_number(f.name) or 0))
    if backup_log_files:  # the checkpoint's own WALs (RocksDB's Checkpoint copies the live ones in)
        for entry in entries:
            if classify(entry.name) is FileKind.WAL and entry.stat().st_size > 0:  # RocksDB never lists empty WALs
                files.append(SourceFile(entry.name, entry.path, entry.stat().st_size, FileKind.WAL))
    files.sort(key=lambda f: (_KIND_ORDER.get(f.kind, 9), f.name))
    return files, side


@contextlib.contextmanager
def snapshot(db, *, backup_log_files: bool = True, flush_before_backup: bool = False,
             reusable: Reusable | None = None) -> Iterator[Snapshot]:
    """Yield a consistent Snapshot of `db` (an open Rdict, a closed DB's path, or a
    `LiveDbPath` of a DB open elsewhere); what was staged is removed afterwards whatever happens.
    `reusable`: SSTs of a live DB that need not be pinned (`sidecar.live_db_files`)."""
    if isinstance(db, LiveDbPath):
        if not os.path.exists(os.path.join(db.path, "CURRENT")):
            raise InvalidArgument(f"{db.path} is not a RocksDB directory (no CURRENT file)")
        with live_db_files(db.path, with_wals=backup_log_files, reusable=reusable) as found:
            yield _snapshot_of(db.path, found)
        return
    if isinstance(db, (str, os.PathLike)):
        db_path = os.fspath(db)
        if not os.path.isdir(db_path):
            raise NotFound(f"DB directory {db_path} does not exist")
        if not os.path.exists(os.path.join(db_path, "CURRENT")):
            raise InvalidArgument(f"{db_path} is not a RocksDB directory (no CURRENT file)")
        with hold_db_lock(db_path, exclusive=False):
            yield _snapshot_of(db_path, read_closed_db(db_path, with_wals=backup_log_files))
        return
    path_of = getattr(db, "path", None)
    if path_of is None:
        raise InvalidArgument(f"expected an open rocksdict.Rdict or a DB path, got {type(db).__name__}")
    try:
        db_path = path_of()
    except Exception as exc:
        raise InvalidArgument(f"the DB is not open: {exc}") from exc
    _refuse_partial_views(db, db_path)
    if flush_before_backup:
        try:
            db.flush()
        except Exception as exc:
            raise InvalidArgument(f"the DB is not open: {exc}") from exc
    with _pinned_or_checkpoint(db, db_path, backup_log_files, reusable) as snap:
        yield snap


_PARTIAL_MODES = {"read only mode": "read-only (AccessType.read_only())",
                  "secondary mode": "as a secondary (AccessType.secondary(...))"}


def _refuse_partial_views(db, db_path: str) -> None:
    """A read-only or secondary Rdict sees writes its checkpoint cannot hold: its
    memtable, replayed from WALs it neither flushes nor copies (and a secondary's
    checkpoint lacks OPTIONS).  Backing it up would silently restore a subset of
    what it shows, so refuse, naming the mode.  The probe, flush(wait=False), only
    schedules on a read-write DB the flush that its checkpoint does anyway."""
    try:
        db.flush(False)
    except Exception as exc:
        text = str(exc).lower()
        for marker, mode in _PARTIAL_MODES.items():
            if marker in text:
                raise NotSupported(
                    f"cannot back up the DB at {db_path} through an Rdict opened {mode}: its checkpoint would "
                    "hold only the flushed writes, not all the handle sees. Back up the read-write Rdict, or "
                    "the DB's path once no process has it open for writing") from exc
        if "closed" in text or type(exc).__name__ == "DbClosedError":
            raise InvalidArgument(f"the DB at {db_path} is not open: {exc}") from exc
        raise StorageError(f"cannot back up the DB at {db_path}: its flush failed: {exc}") from exc


def _closed_error(exc: Exception, db_path: str) -> InvalidArgument | None:
    if "closed" in str(exc).lower() or type(exc).__name__ == "DbClosedError":
        return InvalidArgument(f"the DB at {db_path} is not open: {exc}")
    return None


def _flush_everything(handle, db_path: str, names: list[str]) -> None:
    """Flush every column family's memtable and wait, as RocksDB's Checkpoint does before it lists
    the live files: every write acknowledged so far is then in an SST, even one written with the WAL
    disabled or still in a manual_wal_flush buffer.  `names`: every column family the DB had when the
    backup was asked for (one made since holds no write the backup must have)."""
    try:
        for name in names:
            handle.get_column_family(name).flush(True)
    except Exception as exc:
        raise _closed_error(exc, db_path) or StorageError(f"cannot back up the DB at {db_path}: its flush "
                                                          f"failed: {exc}") from exc


@contextlib.contextmanager
def _pinned_or_checkpoint(handle, db_path: str, backup_log_files: bool,
                          reusable: Reusable | None) -> Iterator[Snapshot]:
    """The open Rdict's files pinned in place (see the module doc), else its checkpoint."""
    try:
        seq = handle.latest_sequence_number()
    except Exception as exc:
        raise _closed_error(exc, db_path) or StorageError(f"cannot back up the DB at {db_path}: {exc}") from exc
    with contextlib.ExitStack() as stack:
        found: ClosedDb | None = None
        try:
            names = column_families(db_path, PINNING_ATTEMPTS)
            _flush_everything(handle, db_path, names)
            if len(names) > 1 and not backup_log_files:
                # Without WALs the SSTs alone must hold each batch whole: only RocksDB's own flush of all
                # column families together (atomic_flush, which its Checkpoint honours) guarantees that.
                raise NotSupported(f"{len(names)} column families and backup_log_files=False")
            found = stack.enter_context(_pinned(db_path, backup_log_files, seq, reusable))
        except (NotSupported, Incomplete, Corruption) as exc:
            reason = str(exc)
        if found is not None:
            yield _snapshot_of(db_path, found)
            return
    log.info("backing up the DB at %s through a checkpoint: its files cannot be pinned in place (%s)",
             db_path, reason)
    with _checkpoint(handle, db_path, backup_log_files) as snap:
        yield snap


@contextlib.contextmanager
def _pinned(db_path: str, backup_log_files: bool, sequence: int, reusable: Reusable | None) -> Iterator[ClosedDb]:
    """The DB's live files held open (tests replace this to take the checkpoint path).  The MANIFEST
    prefix, CURRENT, OPTIONS and WALs are staged beside the DB under a checkpoint-style lock, as for a
    `LiveDbPath`: a killed backup's staging is removed by the next backup, as a killed checkpoint is."""
    with live_db_files(db_path, with_wals=backup_log_files, attempts=PINNING_ATTEMPTS, sequence=sequence,
                       reusable=reusable) as found:
        yield found


def _snapshot_of(db_path: str, db: ClosedDb) -> Snapshot:
    """A Snapshot of the live files found without opening the DB (closed, or live beside its owner)."""
    kinds = [(db.tables, FileKind.TABLE), (db.blobs, FileKind.BLOB), ([db.manifest], FileKind.MANIFEST),
             ([db.current], FileKind.CURRENT), ([db.options] if db.options else [], FileKind.OPTIONS),
             (db.wals, FileKind.WAL)]
    files = [SourceFile(f.name, f.path, f.size, kind, f.stat) for group, kind in kinds for f in group]
    side = [SourceFile(name, os.path.join(db_path, name), os.path.getsize(os.path.join(db_path, name)),
                       classify(name)) for name in SIDE_FILES if os.path.isfile(os.path.join(db_path, name))]
    log.info("backing up the DB at %s from %s: %d SSTs, %d blob files, %d WALs (from %s), sequence %d",
             db_path, db.manifest.name, len(db.tables), len(db.blobs), len(db.wals), db.wal_dir, db.sequence_number)
    return Snapshot(db.sequence_number, files, side)


@contextlib.contextmanager
def _checkpoint(handle, db_path: str, backup_log_files: bool) -> Iterator[Snapshot]:
    import rocksdict

    with checkpoint_dir(db_path) as ckpt:
        try:
            seq = handle.latest_sequence_number()
            rocksdict.Checkpoint(handle).create_checkpoint(ckpt)
        except Exception as exc:
            raise _closed_error(exc, db_path) or StorageError(f"checkpoint of {db_path} failed: {exc}") from exc
        files, side = _scan(ckpt, backup_log_files=backup_log_files)
        yield Snapshot(seq, files, side)
