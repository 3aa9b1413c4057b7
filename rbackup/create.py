"""Making one backup: snapshot, plan, transfer, commit.

The meta file is the commit: it is written last with `create_exclusive`, so a
backup exists exactly when `meta/<id>` does, and a crash at any earlier point
leaves only files that garbage collection removes.  Files are published
atomically, so nothing under a final name is ever half written.

Racing writers (a writer that stalled past `lock_ttl` while its successor
works, or two writers on a store that cannot arbitrate): every file is
published with `open_write_new`, so an attempt never replaces a file it did
not make; the lock is checked before each publish and right before the
commit; a failed attempt deletes only what it published itself, and only
while it still holds the lock; and after the commit the backup's files are
checked to still be the ones this attempt wrote (`_check_committed`), a
damaged commit being withdrawn and reported as a failure.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from . import sstprops
from .checksum import crc32c
from .env.base import BackupEnv
from .errors import Aborted, BackupError, Corruption, InvalidArgument, NotFound, NotSupported
from .lock import WriterLock
from .meta import BackupMeta, MetaFileEntry, serialize_meta
from .naming import META_DIR, PRIVATE_DIR, SHARED_CHECKSUM_DIR, FileKind, meta_path, private_dir
from .namingcache import PROCESS_CACHE
from .options import BackupableDBOptions, ExcludeFilesCallback, MaybeExcludeBackupFile, ProgressCallback
from .osutil import advise_sequential
from .plan import NamingFacts, PlannedFile, needs_crc_for_name, needs_naming_facts, plan_backup
from .ratelimit import make_limiter
from .source import SourceFile, snapshot
from .state import BackupState, LoadedBackup
from .transfer import Buffers, ProgressTracker, file_crc32c, run_parallel, stream_copy

RECHECK_READ_LIMIT = 4 << 20
"""Files up to this size are read back after the commit (MANIFEST, OPTIONS, CURRENT, small SSTs)."""


@dataclass
class BackupRequest:
    backup_id: int
    db: object
    flush_before_backup: bool = False
    app_metadata: bytes = b""
    progress_callback: ProgressCallback | None = None
    exclude_files_callback: ExcludeFilesCallback | None = None


def _exclusions(plan: list[PlannedFile], callback: ExcludeFilesCallback | None, backup_id: int) -> set[str]:
    """Ask the user's callback which shared_checksum files to copy leave out (RocksDB offers the
    files a backup would copy there; a file already in this directory costs nothing to keep)."""
    if callback is None:
        return set()
    offered = [MaybeExcludeBackupFile(p.dest) for p in plan if p.copy and p.dest.startswith(f"{SHARED_CHECKSUM_DIR}/")]
    try:
        callback(offered)
    except Exception as exc:  # the user's code: whatever it raises aborts the backup, as RocksDB HEAD
        raise Aborted(f"backup {backup_id}: exclude_files_callback raised {type(exc).__name__}: {exc}") from exc
    return {m.relative_file for m in offered if m.exclude_decision}


def _naming_facts(f: SourceFile, buffers: Buffers, log: logging.Logger) -> NamingFacts:
    session_id = None
    crc = None
    with open(f.path, "rb") as fh:
        if f.kind is FileKind.TABLE:
            try:
                session_id = sstprops.read_session_id(fh, f.size)
            except NotSupported as exc:
                # e.g. a properties block compressed with a codec we do not decode:
                # a legacy name is as valid (RocksDB 7 falls back the same way).
                log.info("%s: %s; using a legacy shared_checksum name", f.name, exc)
        if needs_crc_for_name(f, session_id):
            fh.seek(0)
            crc = file_crc32c(fh, buffers.get()).crc32c
    return NamingFacts(session_id, crc)


def create_backup(env: BackupEnv, state: BackupState, options: BackupableDBOptions, req: BackupRequest,
                  stop: threading.Event, workers: int, lock: WriterLock) -> LoadedBackup:
    log = options.logger
    backup_id = req.backup_id
    buffers = Buffers.for_store(options.io_buffer_size, env.capabilities)
    written: list[str] = []
    """Files this attempt published: the only ones its cleanup may delete."""
    written_lock = threading.Lock()
    started = time.monotonic()
    committing = False
    try:
        env.makedirs(private_dir(backup_id))
        timestamp = int(time.time())
        with snapshot(req.db, backup_log_files=options.backup_log_files,
                      flush_before_backup=req.flush_before_backup) as snap:
            to_name = [f for f in snap.files if needs_naming_facts(
                f, share_table_files=options.share_table_files,
                share_files_with_checksum=options.share_files_with_checksum)]
            facts = PROCESS_CACHE.facts(to_name, lambda files: run_parallel(
                files, lambda f: _naming_facts(f, buffers, log), workers, stop))
            plan = plan_backup(snap.files, backup_id, share_table_files=options.share_table_files,
                               share_files_with_checksum=options.share_files_with_checksum,
                               facts=facts, referenced=state.referenced())
            side = [PlannedFile(f, f"{private_dir(backup_id)}/{f.name}", True, None) for f in snap.side_files]
            excluded = _exclusions(plan, req.exclude_files_callback, backup_id)
            copies = [p for p in plan if p.copy and p.dest not in excluded] + side
            leftovers = [p.dest for p in copies if p.dest in state.listing]
            if leftovers:  # of a crashed attempt: no valid backup references them (the plan copies them)
                lock.check(f"backup {backup_id}: removing leftovers")
                env.delete(leftovers)
            tracker = ProgressTracker("backup", backup_id, sum(p.source.size for p in copies), len(copies),
                                      req.progress_callback, options.callback_trigger_interval_size, stop)
            limiter = make_limiter(options.backup_rate_limit)

            def copy_one(item: PlannedFile) -> tuple[str, int, int]:
                with open(item.source.path, "rb", buffering=0) as src:
                    advise_sequential(src.fileno())
                    writer = env.open_write_new(item.dest, sync=options.sync)
                    with writer:
                        result = stream_copy(src, writer.write, buf=buffers.get(), stop=stop,
                                             limiter=limiter, tracker=tracker)
                        if result.size != item.source.size:
                            raise Corruption(f"backup {backup_id}: {item.source.name} changed size while "
                                             f"being copied ({item.source.size} -> {result.size} bytes)")
                        if item.expected_crc32c is not None and result.crc32c != item.expected_crc32c:
                            raise Corruption(f"backup {backup_id}: checksum mismatch after copying "
                                             f"{item.source.name} to {item.dest}")
                        lock.check(f"backup {backup_id}: publishing {item.dest}", ask_store=False)
                with written_lock:
                    written.append(item.dest)
                tracker.file_done()
                return item.dest, result.size, result.crc32c

            copied = {dest: (size, crc) for dest, size, crc in run_parallel(copies, copy_one, workers, stop)}
            entries = []
            sizes: dict[str, int] = {}
            for p in plan:
                if p.dest in excluded:  # recorded, not copied: written after the counted entries
                    entries.append(MetaFileEntry(p.dest, None, excluded=True))
                    continue
                size, crc = copied[p.dest] if p.copy else (p.source.size, p.expected_crc32c)
                if crc is None:  # the backup holding it was written without crcs (schema 2 allows that)
                    with open(p.source.path, "rb") as fh:
                        crc = file_crc32c(fh, buffers.get()).crc32c
                entries.append(MetaFileEntry(p.dest, crc))
                sizes[p.dest] = size
            meta = BackupMeta(timestamp, snap.sequence_number, entries, req.app_metadata,
                              schema_version=str(options.schema_version))
        data = serialize_meta(meta, options.schema_version)
        lock.check(f"backup {backup_id}: committing")
        committing = True
        env.create_exclusive(meta_path(backup_id), data, sync=options.sync)
    except BaseException as exc:
        # A failed commit may still have happened (a lost S3 response, an fsync error after
        # the link): deleting the files then would corrupt a committed backup.
        outcome = _commit_outcome(env, backup_id, data) if committing else False
        if outcome is False:
            _cleanup(env, lock, backup_id, written, log)
        if outcome is not True or not isinstance(exc, Exception):
            if outcome is None:
                log.warning("backup %d: cannot tell whether the commit happened (%s); leaving the files "
                            "to garbage collection", backup_id, exc)
            raise
        log.warning("backup %d: the commit reported %s: %s, but %s holds this backup: it is committed",
                    backup_id, type(exc).__name__, exc, env.describe(meta_path(backup_id)))
    if lock.can_be_taken_over:
        _check_committed(env, backup_id, data, copied, workers, stop, log)
    # Committed: from here on a failure must not remove anything.
    if options.sync:
        for d in (private_dir(backup_id), PRIVATE_DIR, META_DIR, options.shared_dir, ""):
            if d is not None:
                env.sync_dir(d)
    copied_bytes = sum(s for s, _ in copied.values())
    log.info("backup %d: %d files (%d copied, %d bytes) in %.2fs", backup_id, len(entries), len(copies),
             copied_bytes, time.monotonic() - started)
    return LoadedBackup(backup_id, meta, None, sizes)


def _commit_outcome(env: BackupEnv, backup_id: int, data: bytes) -> bool | None:
    """After the meta commit raised: True if meta/<id> holds exactly `data` (committed after
    all), False if there is no meta/<id>, None if that cannot be told or it holds something else."""
    try:
        return env.read_bytes(meta_path(backup_id), len(data)) == data or None
    except NotFound:
        return False
    except (BackupError, OSError):
        return None


def _check_committed(env: BackupEnv, backup_id: int, data: bytes, copied: dict[str, tuple[int, int]],
                     workers: int, stop: threading.Event, log: logging.Logger) -> None:
    """After the commit under a lease: meta/<id> and the files this attempt copied are still
    what it wrote.

    Where the store arbitrates this holds unless a writer stalled past its
    lease deleted something in the instant between its last check and its
    request; where it cannot (conditional_writes=False) it catches a racing
    writer's overwrites up to this moment.  The backup's small private files
    (MANIFEST, CURRENT, OPTIONS) are read back and checksummed, larger ones
    and, on a store that cannot arbitrate, the shared files it copied are
    checked for size (create-if-absent keeps them from being replaced
    elsewhere).  A damaged commit is withdrawn and reported as a failure,
    never returned as a backup.
    """
    own = private_dir(backup_id) + "/"
    arbitrated = env.capabilities.exclusive_publish
    to_check = [p for p in copied if p.startswith(own) or not arbitrated]

    def check(path: str) -> str | None:
        size, crc = copied[path]
        if size <= RECHECK_READ_LIMIT:
            with env.open_read(path) as fh:
                got = fh.read(size + 1)
            return None if len(got) == size and crc32c(got) == crc else "holds other data"
        return None if env.stat(path).size == size else "has another size"

    problems: list[str] = []
    try:
        if not _holds(env, meta_path(backup_id), data):
            problems.append(f"{meta_path(backup_id)} holds another writer's commit")
        else:
            for path, problem in zip(to_check, run_parallel(to_check, check, workers, stop), strict=False):
                if problem:
                    problems.append(f"{path} {problem}")
    except NotFound as exc:
        problems.append(f"a file is gone ({exc})")
    if not problems:
        return
    withdrawn = ""
    try:
        if _holds(env, meta_path(backup_id), data):
            env.delete([meta_path(backup_id)])
            withdrawn = "; the commit was withdrawn"
    except BackupError as exc:
        log.warning("backup %d: could not withdraw the damaged commit: %s", backup_id, exc)
    raise Corruption(f"backup {backup_id} in {env.describe()}: another writer changed it right after its commit: "
                     f"{'; '.join(problems[:3])}{withdrawn}")


def _holds(env: BackupEnv, path: str, data: bytes) -> bool:
    """Whether `path` holds exactly `data` (False if it is gone or longer)."""
    try:
        return env.read_bytes(path, len(data)) == data
    except (NotFound, InvalidArgument):
        return False


def _cleanup(env: BackupEnv, lock: WriterLock, backup_id: int, written: list[str], log: logging.Logger) -> None:
    """Remove what a failed create published; best effort (garbage collection finishes the job).

    Only files this attempt published are touched (they were created, never
    replaced, by it: no valid backup references them), and only while it
    still holds the lock: a writer that lost it leaves everything to the next one.
    """
    try:
        lock.check(f"backup {backup_id}: cleanup after failure")
        env.delete(sorted(written))
        env.remove_dir(private_dir(backup_id))
    except (BackupError, OSError) as exc:
        log.warning("backup %d: cleanup after failure incomplete (%s); garbage_collect() will finish it",
                    backup_id, exc)
