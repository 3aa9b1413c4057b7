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

import contextlib
import io
import logging
import os
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from .alternates import locate_files, missing_error
from .dblock import hold_db_lock
from .env.base import BackupEnv
from .errors import Corruption, InvalidArgument, LockError, NotFound, StorageError
from .format import optionsfile
from .format.meta import MetaFileEntry
from .format.naming import FileKind, classify
from .format.tempnames import RESTORE_MARKER_TEMP, rewrite_temp_path
from .options import BackupableDBOptions, ProgressCallback, RestoreOptions
from .osutil import writing_back
from .ratelimit import make_limiter
from .restore_incremental import files_to_keep
from .restore_plan import RestoreItem, RestoreMode, RestoreTargets, plan_restore_targets
from .state import LoadedBackup
from .transfer import Buffers, ProgressTracker, run_parallel, stream_copy

IN_PROGRESS_MARKER = b"rbackup: restore in progress; this DB is incomplete"
"""No trailing newline: RocksDB reports Corruption instead of opening."""


_Item = RestoreItem[BackupEnv]

_KEEP = frozenset({"LOCK", "CURRENT"})
"""Never deleted by a restore: LOCK is held by it (a new inode would let a RocksDB
in), CURRENT already holds the in-progress marker."""


def _prepare_dir(path: str, what: str, backup_id: int) -> None:
    if os.path.exists(path) and not os.path.isdir(path):
        raise InvalidArgument(f"restore of backup {backup_id}: target {what} {path} exists and is not a directory")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"restore of backup {backup_id}: cannot create target {what} {path}: {exc}") from exc


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


@dataclass(frozen=True)
class Run:
    """How the engine runs an operation: its options, the stop flag, how many transfers at
    once, and who hears of progress.  The same for restore and verify, after what to do."""

    options: BackupableDBOptions
    stop: threading.Event
    workers: int
    progress_callback: ProgressCallback | None = None


@dataclass(frozen=True)
class RestoreRequest:
    """What to restore: a loaded backup, the directory listing it was checked against, and
    where to (absolute or relative paths; WALs go to `wal_dir`)."""

    backup: LoadedBackup
    listing: Mapping[str, int]
    db_dir: str
    wal_dir: str
    restore_options: RestoreOptions


@dataclass(frozen=True)
class VerifyRequest:
    """What to verify: a loaded backup, whether to check each file's CRC-32C, and whether to
    read every file back even where the store keeps a checksum it has shown it checks."""

    backup: LoadedBackup
    with_checksum: bool = False
    read_back: bool = False


@dataclass(frozen=True)
class VerifyResult:
    """How `verify_backup` checked a backup whose files all passed (a failure raises instead).

    Every file counted in `files` was found with its recorded size; with checksums, each
    whose CRC-32C the meta file records was checked one of two ways: against the store's own
    CRC-32C of the object (`from_store_checksum`, no data read: see
    `BackupEnv.stored_checksum`), or by reading it back (`downloaded`).  The rest
    (`files - from_store_checksum - downloaded`) have no recorded CRC-32C, or checksums were
    not asked for."""

    backup_id: int
    with_checksum: bool
    files: int
    from_store_checksum: int = 0
    downloaded: int = 0
    bytes_downloaded: int = 0


def restore_backup(env: BackupEnv, request: RestoreRequest, run: Run) -> None:
    backup, restore_options = request.backup, request.restore_options
    log = run.options.logger
    assert backup.meta is not None
    backup_id = backup.backup_id
    db_dir = os.path.abspath(os.fspath(request.db_dir))
    wal_dir = os.path.abspath(os.fspath(request.wal_dir))
    backup_root = env.local_path("")
    for target in (db_dir, wal_dir):
        if backup_root is not None and _inside(os.path.realpath(target), os.path.realpath(backup_root)):
            raise InvalidArgument(f"restore target {target} is inside the backup directory {backup_root}")
    _prepare_dir(db_dir, "db_dir", backup_id)
    _prepare_dir(wal_dir, "wal_dir", backup_id)

    keep_latest = bool(restore_options.mode & RestoreMode.KEEP_LATEST_DB_SESSION_ID_FILES)
    located = locate_files(env, backup, restore_options.alternate_dirs, allow_missing=keep_latest)
    targets = plan_restore_targets(backup_id, located, request.listing, env, db_dir, wal_dir)

    # Hold the target's LOCK throughout: a RocksDB that has it open would be
    # corrupted under its feet, and none may open it half restored.
    with _hold_target(db_dir, backup_id):
        # Decided under the LOCK and before the marker: kept files cannot change in between.
        kept = frozenset(files_to_keep(targets.items, db_dir, restore_options.mode, backup_id, log))
        items = [i for i in targets.items if i.dest not in kept]
        for unresolved in (i for i in items if i.env is None):
            raise missing_error(backup_id, unresolved.src, restore_options.alternate_dirs)
        # The marker replaces CURRENT atomically *before* anything is deleted, so
        # an interrupted deletion cannot leave an old DB that opens with files missing.
        _mark_in_progress(db_dir, backup_id, run.options.sync)
        _delete_old_files(db_dir, wal_dir, restore_options.keep_log_files, log, kept)
        _copy_and_commit(env, backup_id, RestoreTargets(items, targets.current), db_dir, wal_dir, run)


@contextlib.contextmanager
def _hold_target(db_dir: str, backup_id: int) -> Iterator[None]:
    """RocksDB's LOCK of the target, held without ever dropping a lock this process
    holds (dblock): a DB open here or elsewhere is refused untouched.  A target that
    has no LOCK yet gets one first, so that no RocksDB can open it meanwhile."""
    lock_path = os.path.join(db_dir, "LOCK")
    if not os.path.lexists(lock_path):
        try:  # O_EXCL: never open (and so never close) a LOCK someone else created
            os.close(os.open(lock_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644))
        except FileExistsError:
            pass
        except OSError as exc:
            raise StorageError(f"restore of backup {backup_id}: cannot create {lock_path}: {exc}") from exc
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(hold_db_lock(db_dir, purpose=f"restore backup {backup_id} into it"))
        except LockError as exc:
            if os.getpid() in exc.holder.get("pids", ()):
                raise LockError(f"the DB at {db_dir} is open in this process (RocksDB holds its LOCK): cannot "
                                f"restore backup {backup_id} into it; close it first, or restore into another "
                                "directory", exc.holder) from exc
            raise
        yield


def _mark_in_progress(db_dir: str, backup_id: int, sync: bool) -> None:
    """Replace CURRENT by the in-progress marker (atomically, via a temp file that
    never outlives a failure)."""
    marker_tmp = os.path.join(db_dir, RESTORE_MARKER_TEMP)
    current = os.path.join(db_dir, "CURRENT")
    try:
        _write_file(marker_tmp, IN_PROGRESS_MARKER, sync)
        os.replace(marker_tmp, current)
    except OSError as exc:
        if not os.path.isdir(marker_tmp):
            _unlink_quiet(marker_tmp)
        raise StorageError(f"restore of backup {backup_id}: cannot replace {current} by the in-progress "
                           f"marker: {exc}") from exc


def _remove_restored(created: list[str], log: logging.Logger) -> None:
    """After a failed restore: remove the files it created (only those: kept WALs
    stay), so a full disk gets its space back; CURRENT stays the marker, so the
    target still does not open."""
    for path in created:
        if os.path.isfile(path):
            _unlink(path, log)


def _retarget_options(items: list[_Item], db_dir: str, wal_dir: str, backup_id: int, sync: bool) -> None:
    """Point the restored OPTIONS files at the restore target: RocksDB copies them
    verbatim, and a copy whose wal_dir (db_log_dir, db_paths) names the source's
    directories would, opened with its own options, read and write the source's."""
    for item in items:
        if classify(os.path.basename(item.dest)) is not FileKind.OPTIONS:
            continue
        try:
            with open(item.dest, "rb") as fh:
                data = fh.read()
            new = optionsfile.retarget(data, db_dir, wal_dir, source=f"backup {backup_id}: {item.src}")
            if new != data:
                tmp = rewrite_temp_path(item.dest)
                try:
                    _write_file(tmp, new, sync)
                    os.replace(tmp, item.dest)
                finally:
                    _unlink_quiet(tmp)
        except OSError as exc:
            raise StorageError(f"restore of backup {backup_id}: cannot rewrite {item.dest} "
                               f"(from {item.src}): {exc}") from exc


def _copy_and_commit(env: BackupEnv, backup_id: int, targets: RestoreTargets[BackupEnv], db_dir: str, wal_dir: str,
                     run: Run) -> None:
    """Copy every file (checked and synced as it streams), then rename CURRENT into place;
    on failure remove what this restore created, leaving the marker as CURRENT."""
    options, stop, log = run.options, run.stop, run.options.logger
    items, current = targets.items, targets.current
    buffers = Buffers.for_store(options.io_buffer_size, env.capabilities)
    all_items = [*items, current]
    tracker = ProgressTracker("restore", backup_id, sum(i.size for i in all_items), len(all_items),
                              run.progress_callback, options.callback_trigger_interval_size, stop)
    limiter = make_limiter(options.restore_rate_limit)
    created: list[str] = []  # the files this restore created: removed again if it fails

    def copy_one(item: _Item) -> None:
        try:
            src = (item.env or env).open_read(item.src)
        except NotFound as exc:
            raise NotFound(f"backup {backup_id}: {item.src} is missing from the backup directory") from exc
        try:
            with src, _open_target(item.dest, backup_id, item.src) as out:
                created.append(item.dest)
                result = stream_copy(src, writing_back(out.fileno()) if options.sync else out.write, buf=buffers.get(),
                                     stop=stop, limiter=limiter, tracker=tracker, limit=item.size + 1)
                result.check(backup_id, item.src, item.size, item.crc32c)
                if options.sync:
                    os.fsync(out.fileno())
        except OSError as exc:
            _unlink_quiet(item.dest)
            raise StorageError(f"restore of backup {backup_id}: cannot write {item.dest} "
                               f"(from {item.src}): {exc}") from exc
        except BaseException:
            _unlink_quiet(item.dest)
            raise
        tracker.file_done()

    try:
        run_parallel(all_items, copy_one, run.workers, stop)
        _retarget_options(items, db_dir, wal_dir, backup_id, options.sync)
        if options.sync:
            for d in {db_dir, wal_dir}:
                _fsync_dir(d)
        os.replace(current.dest, os.path.join(db_dir, "CURRENT"))
    except OSError as exc:
        _remove_restored(created, log)
        raise StorageError(f"restore of backup {backup_id}: cannot commit {os.path.join(db_dir, 'CURRENT')}: "
                           f"{exc}") from exc
    except BaseException:
        _remove_restored(created, log)
        raise
    if options.sync:
        try:
            _fsync_dir(db_dir)
        except OSError as exc:
            raise StorageError(f"restore of backup {backup_id}: cannot sync {db_dir}: {exc}") from exc
    log.info("restored backup %d into %s (%d files, %d bytes)", backup_id, db_dir, len(all_items),
             tracker.bytes_done)


@contextlib.contextmanager
def _open_target(path: str, backup_id: int, src: str) -> Iterator[io.FileIO]:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise StorageError(f"restore of backup {backup_id}: cannot create {path} (from {src}): {exc}") from exc
    with io.FileIO(fd, "wb") as out:
        yield out


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _unlink_quiet(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def verify_backup(env: BackupEnv, request: VerifyRequest, run: Run) -> VerifyResult:
    """As RocksDB: every file present with its recorded size; with checksums, every
    known crc checked, from the store's own checksum where it has one it has shown it
    checks, else recomputed from the bytes.  The store is listed afresh: verify is about now."""
    backup, options, stop, log = request.backup, run.options, run.stop, run.options.logger
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
    if not request.with_checksum:
        return VerifyResult(backup_id, False, len(entries))
    buffers = Buffers.for_store(options.io_buffer_size, env.capabilities)
    checked = [e for e in entries if e.crc32c is not None]
    tracker = ProgressTracker("verify", backup_id, sum(now[e.path] for e in checked), len(checked),
                              run.progress_callback, options.callback_trigger_interval_size, stop)

    def check(entry: MetaFileEntry) -> int | None:
        """None if checked from the store's checksum, else the bytes read back."""
        assert entry.crc32c is not None
        stored = None if request.read_back else env.stored_checksum(entry.path)
        if stored is not None and stored.size == now[entry.path]:  # else it changed since the listing: read it
            if stored.crc32c != entry.crc32c:
                raise Corruption(f"backup {backup_id}: checksum mismatch in {entry.path} (the store's crc32c "
                                 f"{stored.crc32c}, the meta file says {entry.crc32c})")
            tracker.add(stored.size)
            tracker.file_done()
            return None
        with env.open_read(entry.path) as src:
            result = stream_copy(src, None, buf=buffers.get(), stop=stop, tracker=tracker)
        result.check(backup_id, entry.path, None, entry.crc32c)
        tracker.file_done()
        return result.size

    read = [n for n in run_parallel(checked, check, run.workers, stop) if n is not None]
    outcome = VerifyResult(backup_id, True, len(entries), len(checked) - len(read), len(read), sum(read))
    log.info("verified backup %d in %s: %d files, %d checked from the store's CRC-32C, %d read back (%d bytes)",
             backup_id, env.describe(), outcome.files, outcome.from_store_checksum, outcome.downloaded,
             outcome.bytes_downloaded)
    return outcome
