"""Taking a consistent snapshot of a RocksDB to copy from.

A backup must be consistent with the DB at the moment of the call whatever
writers do meanwhile.  rocksdict exposes RocksDB's Checkpoint: hard links of
the SSTs (free), copies of MANIFEST/CURRENT/OPTIONS, and a flush first, so the
checkpoint directory is a frozen, self-contained DB that the transfer layer
can read at leisure while the live DB moves on.

Two ways in:
- an open `rocksdict.Rdict` (the normal case): checkpoint it;
- a DB directory no process holds open (the CLI): take RocksDB's own LOCK so
  nobody opens it for writing meanwhile, open it read-only (nothing in the DB
  changes), checkpoint, and add its WAL files, which a read-only checkpoint
  leaves out but which may hold the newest writes.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

from .errors import InvalidArgument, LockError, NotFound, NotSupported, StorageError
from .naming import SIDE_FILES, FileKind, classify, file_number

log = logging.getLogger("rbackup")

_KIND_ORDER = {FileKind.TABLE: 0, FileKind.BLOB: 1, FileKind.MANIFEST: 2, FileKind.CURRENT: 3,
               FileKind.OPTIONS: 4, FileKind.WAL: 5}


@dataclass(frozen=True)
class SourceFile:
    name: str
    """The DB file name, e.g. 000012.sst, MANIFEST-000005."""
    path: str
    """Where to read it from (inside the checkpoint, or the DB dir for WALs)."""
    size: int
    kind: FileKind


@dataclass
class Snapshot:
    sequence_number: int
    files: list[SourceFile]
    """In RocksDB's live-file order: SSTs, blobs, MANIFEST, CURRENT, OPTIONS, WALs."""
    side_files: list[SourceFile] = field(default_factory=list)
    """Files rocksdict needs but RocksDB does not know (rocksdict-config.json)."""


_CHECKPOINT_PREFIX = ".rbackup-checkpoint-"


def _checkpoint_dir_for(db_path: str) -> str:
    """A not-yet-existing directory on the DB's filesystem (hard links need that)."""
    db_dev = os.stat(db_path).st_dev
    parent = os.path.dirname(os.path.abspath(db_path))
    for candidate in (parent, tempfile.gettempdir()):
        try:
            if os.stat(candidate).st_dev == db_dev and os.access(candidate, os.W_OK):
                _remove_dead_checkpoints(candidate)
                return os.path.join(candidate, f"{_CHECKPOINT_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}")
        except OSError:
            continue
    raise NotSupported(f"no writable directory on the filesystem of {db_path} to hold a checkpoint "
                       f"(tried {parent} and {tempfile.gettempdir()})")


def _remove_dead_checkpoints(directory: str) -> None:
    """Remove checkpoints left by backups whose process was killed: their hard links
    would keep the space of SSTs the DB has deleted since.  A pid that is alive (or
    reused) keeps its directory; it goes once that process is gone."""
    for name in os.listdir(directory):
        pid = name[len(_CHECKPOINT_PREFIX):].split("-", 1)[0]
        if not name.startswith(_CHECKPOINT_PREFIX) or not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # alive (or not ours to signal): maybe mid-backup
        except ProcessLookupError:
            pass
        except OSError:
            continue
        log.info("removing the checkpoint %s left by a backup that was killed", os.path.join(directory, name))
        shutil.rmtree(os.path.join(directory, name), ignore_errors=True)


def _scan(directory: str, *, backup_log_files: bool, extra_wal_dir: str | None = None) -> tuple[
        list[SourceFile], list[SourceFile]]:
    files: list[SourceFile] = []
    side: list[SourceFile] = []
    manifests: list[SourceFile] = []
    options: list[SourceFile] = []
    wal_dirs = [directory] + ([extra_wal_dir] if extra_wal_dir else [])
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if not os.path.isfile(path):
            continue
        kind = classify(name)
        size = os.path.getsize(path)
        item = SourceFile(name, path, size, kind)
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
    if backup_log_files:
        seen: set[str] = set()
        for wal_dir in wal_dirs:
            for name in sorted(os.listdir(wal_dir)):
                path = os.path.join(wal_dir, name)
                if classify(name) is FileKind.WAL and name not in seen and os.path.isfile(path):
                    size = os.path.getsize(path)
                    if size > 0:  # RocksDB never lists empty WALs
                        seen.add(name)
                        files.append(SourceFile(name, path, size, FileKind.WAL))
    files.sort(key=lambda f: (_KIND_ORDER.get(f.kind, 9), f.name))
    return files, side


@contextlib.contextmanager
def db_lock(db_path: str, purpose: str = "back it up") -> Iterator[None]:
    """Hold RocksDB's own LOCK (a POSIX record lock, as RocksDB takes it) so no
    process opens the DB for writing while we copy its files or restore into it."""
    lock_path = os.path.join(db_path, "LOCK")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise StorageError(f"cannot open {lock_path}: {exc}") from exc
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EAGAIN):
                raise LockError(f"the DB at {db_path} is open in another process (its LOCK is held): "
                                f"cannot {purpose}") from exc
            raise StorageError(f"cannot lock {lock_path}: {exc}") from exc
        yield
    finally:
        os.close(fd)


def _open_read_only(db_path: str):
    import rocksdict

    config = os.path.join(db_path, "rocksdict-config.json")
    access = rocksdict.AccessType.read_only()
    if os.path.exists(config):
        return rocksdict.Rdict(db_path, access_type=access)
    # A DB written by RocksDB's own tools: raw bytes, bytewise comparator,
    # column families from the DB itself.
    names = rocksdict.Rdict.list_cf(db_path)
    cfs = {name: rocksdict.Options(raw_mode=True) for name in names if name != "default"}
    return rocksdict.Rdict(db_path, rocksdict.Options(raw_mode=True), column_families=cfs or None,
                           access_type=access)


@contextlib.contextmanager
def snapshot(db, *, backup_log_files: bool = True, flush_before_backup: bool = False) -> Iterator[Snapshot]:
    """Yield a consistent Snapshot of `db` (an open Rdict, or a closed DB's path);
    the checkpoint is removed afterwards whatever happens."""
    if isinstance(db, (str, os.PathLike)):
        db_path = os.fspath(db)
        if not os.path.isdir(db_path):
            raise NotFound(f"DB directory {db_path} does not exist")
        if not os.path.exists(os.path.join(db_path, "CURRENT")):
            raise InvalidArgument(f"{db_path} is not a RocksDB directory (no CURRENT file)")
        with db_lock(db_path):
            try:
                handle = _open_read_only(db_path)
            except Exception as exc:
                raise StorageError(f"cannot open the DB at {db_path} read-only: {exc}") from exc
            try:
                with _checkpoint(handle, db_path, backup_log_files, wal_dir=db_path) as snap:
                    yield snap
            finally:
                handle.close()
        return
    path_of = getattr(db, "path", None)
    if path_of is None:
        raise InvalidArgument(f"expected an open rocksdict.Rdict or a DB path, got {type(db).__name__}")
    try:
        db_path = path_of()
    except Exception as exc:
        raise InvalidArgument(f"the DB is not open: {exc}") from exc
    if flush_before_backup:
        try:
            db.flush()
        except Exception as exc:
            raise InvalidArgument(f"the DB is not open: {exc}") from exc
    with _checkpoint(db, db_path, backup_log_files, wal_dir=None) as snap:
        yield snap


@contextlib.contextmanager
def _checkpoint(handle, db_path: str, backup_log_files: bool, wal_dir: str | None) -> Iterator[Snapshot]:
    import rocksdict

    ckpt = _checkpoint_dir_for(db_path)
    try:
        try:
            seq = handle.latest_sequence_number()
            rocksdict.Checkpoint(handle).create_checkpoint(ckpt)
        except Exception as exc:
            if "closed" in str(exc).lower() or type(exc).__name__ == "DbClosedError":
                raise InvalidArgument(f"the DB at {db_path} is not open: {exc}") from exc
            raise StorageError(f"checkpoint of {db_path} failed: {exc}") from exc
        files, side = _scan(ckpt, backup_log_files=backup_log_files, extra_wal_dir=wal_dir)
        yield Snapshot(seq, files, side)
    finally:
        shutil.rmtree(ckpt, ignore_errors=True)
