"""Restoring a backup into a DB directory, and verifying backups in place.

Restore is the backup road backwards.  What makes it safe to interrupt:
before the first data file is written, CURRENT is replaced by a marker that
RocksDB refuses to open ("does not end with newline"), and the real CURRENT
is renamed into place only after every file has been copied, checked
(CRC-32C and size, as it streams) and synced.  A restore that fails or is
killed therefore leaves a DB that will not open, never one that opens with
partial or wrong data, and never an empty DB created in its place.
"""
from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass

from .alternates import locate_files, missing_error
from .env.base import BackupEnv
from .errors import Corruption, InvalidArgument, NotFound, StorageError
from .naming import SIDE_FILES, FileKind, classify, private_dir
from .options import BackupableDBOptions, ProgressCallback, RestoreOptions
from .ratelimit import make_limiter
from .restore_incremental import files_to_keep
from .restore_plan import RestoreMode
from .source import db_lock
from .state import LoadedBackup
from .transfer import Buffers, ProgressTracker, run_parallel, stream_copy

IN_PROGRESS_MARKER = b"rbackup: restore in progress; this DB is incomplete"
"""No trailing newline: RocksDB reports Corruption instead of opening."""


_KEEP = frozenset({"LOCK", "CURRENT"})
"""Never deleted by a restore: LOCK is held by it (a new inode would let a RocksDB
in), CURRENT already holds the in-progress marker."""


@dataclass(frozen=True)
class _RestoreItem:
    src: str
    dest: str
    size: int
    crc32c: int | None
    env: BackupEnv | None = None
    """The store holding `src` when not the backup's own (an alternate directory); None
    for an excluded file no alternate holds, which only an incremental restore can keep."""


def _prepare_dir(path: str, what: str) -> None:
    if os.path.exists(path) and not os.path.isdir(path):
        raise InvalidArgument(f"restore target {what} {path} exists and is not a directory")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"cannot create restore target {what} {path}: {exc}") from exc


def _delete_old_files(db_dir: str, wal_dir: str, keep_log_files: bool, log: logging.Logger,
                      kept: frozenset[str] = frozenset()) -> None:
    """What RocksDB's restore removes: every file of db_dir, wal_dir and
    wal_dir/archive, or with keep_log_files only db_dir's non-WAL files, the
    archived WALs being moved back into wal_dir.  `kept`: paths an incremental
    restore leaves in place."""
    def files_in(d: str) -> list[str]:
        try:
            return [e.path for e in os.scandir(d)
                    if (e.is_file(follow_symlinks=False) or e.is_symlink()) and e.name not in _KEEP
                    and e.path not in kept]
        except FileNotFoundError:
            return []

    if keep_log_files:
        for path in files_in(db_dir):
            if classify(os.path.basename(path)) is not FileKind.WAL:
                _unlink(path, log)
        archive = os.path.join(wal_dir, "archive")
        for path in files_in(archive):
            if classify(os.path.basename(path)) is FileKind.WAL:
                try:
                    os.replace(path, os.path.join(wal_dir, os.path.basename(path)))
                except OSError as exc:
                    raise StorageError(f"keep_log_files: cannot move {path} into {wal_dir}: {exc}") from exc
        return
    for d in {db_dir, wal_dir, os.path.join(wal_dir, "archive")}:
        for path in files_in(d):
            _unlink(path, log)


def _unlink(path: str, log: logging.Logger) -> None:
    try:
        os.unlink(path)
    except OSError as exc:  # RocksDB ignores these too; the copy will fail loudly if it matters
        log.warning("restore: could not delete %s: %s", path, exc)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: str, data: bytes, sync: bool) -> None:
    with open(path, "wb", buffering=0) as fh:
        fh.write(data)
        if sync:
            os.fsync(fh.fileno())


def restore_backup(env: BackupEnv, backup: LoadedBackup, listing: dict[str, int], db_dir: str, wal_dir: str,
                   restore_options: RestoreOptions, options: BackupableDBOptions,
                   progress_callback: ProgressCallback | None, stop: threading.Event, workers: int) -> None:
    log = options.logger
    assert backup.meta is not None
    backup_id = backup.backup_id
    db_dir = os.path.abspath(os.fspath(db_dir))
    wal_dir = os.path.abspath(os.fspath(wal_dir))
    backup_root = env.local_path("")
    for target in (db_dir, wal_dir):
        if backup_root is not None and _inside(os.path.realpath(target), os.path.realpath(backup_root)):
            raise InvalidArgument(f"restore target {target} is inside the backup directory {backup_root}")
    _prepare_dir(db_dir, "db_dir")
    _prepare_dir(wal_dir, "wal_dir")

    items: list[_RestoreItem] = []
    current: _RestoreItem | None = None
    keep_latest = bool(restore_options.mode & RestoreMode.KEEP_LATEST_DB_SESSION_ID_FILES)
    for located in locate_files(env, backup, restore_options.alternate_dirs, allow_missing=keep_latest):
        name = located.db_name
        kind = classify(name)
        target_dir = wal_dir if kind is FileKind.WAL else db_dir
        item = _RestoreItem(located.path, os.path.join(target_dir, name), located.size, located.crc32c,
                            located.env)
        if kind is FileKind.CURRENT:
            current = _RestoreItem(item.src, os.path.join(db_dir, "CURRENT.tmp"), item.size, item.crc32c, item.env)
        else:
            items.append(item)
    if current is None:
        raise Corruption(f"backup {backup_id}: no CURRENT file in the backup")
    for side in SIDE_FILES:
        src = f"{private_dir(backup_id)}/{side}"
        if src in listing:
            items.append(_RestoreItem(src, os.path.join(db_dir, side), listing[src], None, env))

    # Hold the target's LOCK throughout: a RocksDB that has it open would be
    # corrupted under its feet, and none may open it half restored.
    with db_lock(db_dir, purpose="restore into it while it is open"):
        # Decided under the LOCK and before the marker: kept files cannot change in between.
        kept = frozenset(files_to_keep(items, db_dir, restore_options.mode, backup_id, log))
        items = [i for i in items if i.dest not in kept]
        for unresolved in (i for i in items if i.env is None):
            raise missing_error(backup_id, unresolved.src, restore_options.alternate_dirs)
        # The marker replaces CURRENT atomically *before* anything is deleted, so
        # an interrupted deletion cannot leave an old DB that opens with files missing.
        marker_tmp = os.path.join(db_dir, "CURRENT.rbackup-marker.tmp")
        _write_file(marker_tmp, IN_PROGRESS_MARKER, options.sync)
        os.replace(marker_tmp, os.path.join(db_dir, "CURRENT"))
        _delete_old_files(db_dir, wal_dir, restore_options.keep_log_files, log, kept)
        _copy_and_commit(env, backup_id, items, current, db_dir, wal_dir, options, progress_callback, stop,
                         workers, log)


def _copy_and_commit(env: BackupEnv, backup_id: int, items: list[_RestoreItem], current: _RestoreItem,
                     db_dir: str, wal_dir: str, options: BackupableDBOptions,
                     progress_callback: ProgressCallback | None, stop: threading.Event, workers: int,
                     log: logging.Logger) -> None:
    buffers = Buffers.for_store(options.io_buffer_size, env.capabilities)
    all_items = [*items, current]
    tracker = ProgressTracker("restore", backup_id, sum(i.size for i in all_items), len(all_items),
                              progress_callback, options.callback_trigger_interval_size, stop)
    limiter = make_limiter(options.restore_rate_limit)

    def copy_one(item: _RestoreItem) -> None:
        try:
            src = (item.env or env).open_read(item.src)
        except NotFound as exc:
            raise NotFound(f"backup {backup_id}: {item.src} is missing from the backup directory") from exc
        try:
            with src, open(item.dest, "wb", buffering=0) as out:
                result = stream_copy(src, out.write, buf=buffers.get(), stop=stop, limiter=limiter,
                                     tracker=tracker, limit=item.size + 1)
                if result.size != item.size:
                    raise Corruption(f"backup {backup_id}: {item.src} is {result.size} bytes, "
                                     f"expected {item.size}")
                if item.crc32c is not None and result.crc32c != item.crc32c:
                    raise Corruption(f"backup {backup_id}: checksum mismatch in {item.src} "
                                     f"(crc32c {result.crc32c}, the meta file says {item.crc32c})")
                if options.sync:
                    os.fsync(out.fileno())
        except BaseException:
            _unlink_quiet(item.dest)
            raise
        tracker.file_done()

    run_parallel(all_items, copy_one, workers, stop)
    if options.sync:
        for d in {db_dir, wal_dir}:
            _fsync_dir(d)
    os.replace(current.dest, os.path.join(db_dir, "CURRENT"))
    if options.sync:
        _fsync_dir(db_dir)
    log.info("restored backup %d into %s (%d files, %d bytes)", backup_id, db_dir, len(all_items),
             tracker.bytes_done)


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _unlink_quiet(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def verify_backup(env: BackupEnv, backup: LoadedBackup, verify_with_checksum: bool,
                  options: BackupableDBOptions, stop: threading.Event, workers: int,
                  progress_callback: ProgressCallback | None = None) -> None:
    """As RocksDB: every file present with its recorded size; with checksums, every
    known crc recomputed.  The store is listed afresh: verify is about now."""
    assert backup.meta is not None
    backup_id = backup.backup_id
    prefixes = {e.path.rsplit("/", 1)[0] for e in backup.meta.files if not e.excluded}
    now: dict[str, int] = {}
    for prefix in sorted(prefixes):
        now.update({fi.path: fi.size for fi in env.list(prefix)})
    entries = [e for e in backup.meta.files if not e.excluded]
    for e in entries:
        if e.path not in now:
            raise NotFound(f"backup {backup_id}: file missing: {e.path}")
        if now[e.path] != backup.sizes[e.path]:
            raise Corruption(f"backup {backup_id}: {e.path} is {now[e.path]} bytes, "
                             f"expected {backup.sizes[e.path]}")
    if not verify_with_checksum:
        return
    buffers = Buffers.for_store(options.io_buffer_size, env.capabilities)
    checked = [e for e in entries if e.crc32c is not None]
    tracker = ProgressTracker("verify", backup_id, sum(now[e.path] for e in checked), len(checked),
                              progress_callback, options.callback_trigger_interval_size, stop)

    def check(entry) -> None:
        with env.open_read(entry.path) as src:
            result = stream_copy(src, None, buf=buffers.get(), stop=stop, tracker=tracker)
        if result.crc32c != entry.crc32c:
            raise Corruption(f"backup {backup_id}: checksum mismatch in {entry.path} "
                             f"(crc32c {result.crc32c}, the meta file says {entry.crc32c})")
        tracker.file_done()

    run_parallel(checked, check, workers, stop)
