"""Taking a consistent snapshot of a RocksDB to copy from.

A backup must be consistent with the DB at the moment of the call whatever
writers do meanwhile.  rocksdict exposes RocksDB's Checkpoint: hard links of
the SSTs (free), copies of MANIFEST/CURRENT/OPTIONS, and a flush first, so the
checkpoint directory is a frozen, self-contained DB that the transfer layer
can read at leisure while the live DB moves on.

Two ways in:
- an open `rocksdict.Rdict` (the normal case): checkpoint it;
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
from .errors import InvalidArgument, NotFound, NotSupported, StorageError
from .format.naming import SIDE_FILES, FileKind, classify, file_number
from .plan import SourceFile
from .sidecar import LiveDbPath, live_db_files

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
def snapshot(db, *, backup_log_files: bool = True, flush_before_backup: bool = False) -> Iterator[Snapshot]:
    """Yield a consistent Snapshot of `db` (an open Rdict, a closed DB's path, or a
    `LiveDbPath` of a DB open elsewhere); what was staged is removed afterwards whatever happens."""
    if isinstance(db, LiveDbPath):
        if not os.path.exists(os.path.join(db.path, "CURRENT")):
            raise InvalidArgument(f"{db.path} is not a RocksDB directory (no CURRENT file)")
        with live_db_files(db.path, with_wals=backup_log_files) as found:
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
    with _checkpoint(db, db_path, backup_log_files) as snap:
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


def _snapshot_of(db_path: str, db: ClosedDb) -> Snapshot:
    """A Snapshot of the live files found without opening the DB (closed, or live beside its owner)."""
    kinds = [(db.tables, FileKind.TABLE), (db.blobs, FileKind.BLOB), ([db.manifest], FileKind.MANIFEST),
             ([db.current], FileKind.CURRENT), ([db.options] if db.options else [], FileKind.OPTIONS),
             (db.wals, FileKind.WAL)]
    files = [SourceFile(f.name, f.path, f.size, kind) for group, kind in kinds for f in group]
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
            if "closed" in str(exc).lower() or type(exc).__name__ == "DbClosedError":
                raise InvalidArgument(f"the DB at {db_path} is not open: {exc}") from exc
            raise StorageError(f"checkpoint of {db_path} failed: {exc}") from exc
        files, side = _scan(ckpt, backup_log_files=backup_log_files)
        yield Snapshot(seq, files, side)
