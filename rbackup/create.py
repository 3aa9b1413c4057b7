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

import contextlib
import enum
import gc
import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from .env.base import BackupEnv
from .errors import Aborted, BackupError, Corruption, FileTooLarge, LockError, NotFound, NotSupported
from .format import sstprops
from .format.checksum import crc32c
from .format.meta import BackupMeta, MetaFileEntry, serialize_meta
from .format.naming import (
    META_DIR,
    PRIVATE_DIR,
    SHARED_CHECKSUM_DIR,
    FileKind,
    meta_path,
    private_dir,
    private_file_path,
)
from .lock import WriterLock
from .namingcache import PROCESS_CACHE, pinned_identities
from .options import BackupableDBOptions, ExcludeFilesCallback, MaybeExcludeBackupFile, ProgressCallback
from .osutil import advise_sequential
from .plan import (
    NamingFacts,
    PlannedFile,
    SourceFile,
    needs_crc_for_name,
    needs_naming_facts,
    plan_backup,
    shared_checksum_dest,
)
from .ratelimit import make_limiter
from .sidecar import Reusable
from .source import snapshot
from .state import BackupState, LoadedBackup
from .transfer import Buffers, ProgressTracker, file_crc32c, run_parallel, stream_copy

RECHECK_READ_LIMIT = 4 << 20
"""Files up to this size are read back after the commit (MANIFEST, OPTIONS, CURRENT, small SSTs)."""


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cycle collector held off while one backup runs, and let run again after.

    Why: a backup of a DB of 10,000 files holds ~100,000 small objects at once (a stat, a file, a
    plan entry and a meta entry per file), which the collector promotes to its oldest generation,
    so every backup set off a full collection of the process's heap: 50-75 ms, a fifth of a
    no-change backup's work, to find nothing (these objects hold no cycles: reference counting
    frees them).  Only a collector this call found enabled is enabled again; one that any code
    switches off meanwhile is switched back on at the end, the price of a process-wide switch."""
    enabled = gc.isenabled()
    if enabled:
        gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


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


class CommitOutcome(enum.Enum):
    """What a meta commit that raised did, as far as reading `meta/<id>` back can tell."""

    COMMITTED = enum.auto()
    """`meta/<id>` holds exactly this backup: the error came after the commit (a lost reply)."""
    ABSENT = enum.auto()
    """There is no `meta/<id>`: nothing was committed, the attempt's files may go."""
    UNKNOWN = enum.auto()
    """It cannot be read, or holds something else: delete nothing, garbage collection decides later."""


@dataclass
class _Attempt:
    """One create attempt: what every step needs, and what it has published so far."""

    env: BackupEnv
    options: BackupableDBOptions
    req: BackupRequest
    lock: WriterLock
    stop: threading.Event
    workers: int
    buffers: Buffers = field(init=False)
    written: list[str] = field(default_factory=list)
    """Files this attempt published: the only ones its cleanup may delete."""
    written_lock: threading.Lock = field(default_factory=threading.Lock)
    held_facts: dict[str, NamingFacts] = field(default_factory=dict)
    """The naming facts of the SSTs the snapshot left unpinned (`_already_held`), found then through
    the very stat their `SourceFile` carries: naming them again would look up the same key."""

    def __post_init__(self) -> None:
        self.buffers = Buffers.for_store(self.options.io_buffer_size, self.env.capabilities)

    @property
    def backup_id(self) -> int:
        return self.req.backup_id

    @property
    def log(self) -> logging.Logger:
        return self.options.logger


@dataclass(frozen=True)
class _Planned:
    """The plan of one backup: every file of its meta file, and what this attempt copies."""

    files: list[PlannedFile]
    """The snapshot's files in meta-file order, each with its destination."""
    excluded: set[str]
    """Destinations the exclude callback left out: recorded as `ni::excluded`, not copied."""
    copies: list[PlannedFile]
    """What to copy: planned files not already held nor excluded, plus the side files."""


def create_backup(env: BackupEnv, state: BackupState, options: BackupableDBOptions, req: BackupRequest,
                  stop: threading.Event, workers: int, lock: WriterLock) -> LoadedBackup:
    """Make backup `req.backup_id` of `req.db`: each step below is one function."""
    attempt = _Attempt(env, options, req, lock, stop, workers)
    backup_id = req.backup_id
    started = time.monotonic()
    try:
        env.makedirs(private_dir(backup_id))
        timestamp = int(time.time())
        referenced = state.referenced()
        with snapshot(req.db, backup_log_files=options.backup_log_files, flush_before_backup=req.flush_before_backup,
                      reusable=_already_held(attempt, referenced)) as snap:
            facts = _gather_naming_facts(attempt, snap.files)
            planned = _plan(attempt, snap.files, snap.side_files, facts, referenced)
            copied = _copy(attempt, planned, state.listing)
            meta, sizes = _assemble_meta(attempt, planned, copied, timestamp, snap.sequence_number)
        data = serialize_meta(meta, options.schema_version)
        lock.check(f"backup {backup_id}: committing")
    except BaseException:
        _cleanup(env, lock, backup_id, attempt.written, attempt.log)
        raise
    _commit(attempt, data)
    # Committed: from here on a failure must not remove anything.  Read it back where another
    # writer could have raced it: a lease can be lost unawares, and a store without
    # conditional_create makes the commit itself best effort (exists, then write).
    if lock.can_be_taken_over or not env.capabilities.conditional_create:
        _check_committed(env, lock, backup_id, data, copied, workers, stop, attempt.log)
    _sync_dirs(attempt)
    attempt.log.info("backup %d: %d files (%d copied, %d bytes) in %.2fs", backup_id, len(meta.files),
                     len(planned.copies), sum(s for s, _ in copied.values()), time.monotonic() - started)
    return LoadedBackup(backup_id, meta, None, sizes)


def _already_held(attempt: _Attempt, referenced: dict[str, tuple[int, int | None]]) -> Reusable:
    """Which SSTs of those a live DB's earlier snapshot pinned ((name, size, the stat taken then) each)
    this backup will neither read nor copy: the naming cache knows them, so none is read to be named;
    each one's destination is a file valid backups hold, at its size and with a CRC, so `plan_backup`
    reuses it and `_assemble_meta` does not read it.  That is `plan_backup`'s rule for copy=False, so
    the snapshot need not keep these files open (`sidecar.live_db_files`).  Only with shared_checksum
    names (the default): otherwise every file is pinned, as before."""
    options = attempt.options

    def held(candidates: list[tuple[str, int, os.stat_result]]) -> set[str]:
        if not (options.share_table_files and options.share_files_with_checksum):
            return set()
        known = PROCESS_CACHE.known(pinned_identities(candidates))
        reused = attempt.held_facts
        reused.clear()  # a snapshot that looks again asks again
        for (name, size, _), facts in zip(candidates, known, strict=True):
            if facts is None:
                continue
            found = referenced.get(shared_checksum_dest(name, size, facts.session_id, facts.crc32c))
            if (found is not None and found[0] == size and found[1] is not None
                    and (facts.crc32c is None or facts.crc32c == found[1])):
                reused[name] = facts
        return set(reused)

    return held


def _gather_naming_facts(attempt: _Attempt, files: list[SourceFile]) -> dict[str, NamingFacts]:
    """Session ids (and CRCs where a legacy name needs one) of the files the naming rule asks
    about, read in parallel unless this process read them before (`namingcache`): file name -> facts.
    The SSTs the snapshot left unpinned come with theirs (`_Attempt.held_facts`)."""
    options = attempt.options
    held = attempt.held_facts
    to_name = [f for f in files if f.name not in held and needs_naming_facts(
        f, share_table_files=options.share_table_files, share_files_with_checksum=options.share_files_with_checksum)]
    found = PROCESS_CACHE.facts(to_name, lambda unknown: run_parallel(
        unknown, lambda f: _naming_facts(f, attempt.buffers, attempt.log), attempt.workers, attempt.stop))
    return found | held if found else dict(held)


def _plan(attempt: _Attempt, files: list[SourceFile], side_files: list[SourceFile], facts: dict[str, NamingFacts],
          referenced: dict[str, tuple[int, int | None]]) -> _Planned:
    """Each file's destination and whether it must be copied (`plan_backup`), the side files,
    and what the exclude callback leaves out."""
    options, backup_id = attempt.options, attempt.backup_id
    plan = plan_backup(files, backup_id, share_table_files=options.share_table_files,
                       share_files_with_checksum=options.share_files_with_checksum,
                       facts=facts, referenced=referenced)
    side = [PlannedFile(f, private_file_path(backup_id, f.name), True, None) for f in side_files]
    excluded = _exclusions(plan, attempt.req.exclude_files_callback, backup_id)
    return _Planned(plan, excluded, [p for p in plan if p.copy and p.dest not in excluded] + side)


def _copy(attempt: _Attempt, planned: _Planned, listing: Mapping[str, int]) -> dict[str, tuple[int, int]]:
    """Copy what the plan says, in parallel, each file published new: dest -> (size, crc32c)."""
    env, options, lock, backup_id = attempt.env, attempt.options, attempt.lock, attempt.backup_id
    copies = planned.copies
    leftovers = [p.dest for p in copies if p.dest in listing]
    if leftovers:  # of a crashed attempt: no valid backup references them (the plan copies them)
        lock.check(f"backup {backup_id}: removing leftovers")
        env.delete(leftovers)
    tracker = ProgressTracker("backup", backup_id, sum(p.source.size for p in copies), len(copies),
                              attempt.req.progress_callback, options.callback_trigger_interval_size, attempt.stop)
    limiter = make_limiter(options.backup_rate_limit)

    def copy_one(item: PlannedFile) -> tuple[str, int, int]:
        with open(item.source.path, "rb", buffering=0) as src:
            advise_sequential(src.fileno())
            writer = env.open_write_new(item.dest, sync=options.sync)
            with writer:
                result = stream_copy(src, writer.write, buf=attempt.buffers.get(), stop=attempt.stop,
                                     limiter=limiter, tracker=tracker)
                if result.size != item.source.size:
                    raise Corruption(f"backup {backup_id}: {item.source.name} changed size while "
                                     f"being copied ({item.source.size} -> {result.size} bytes)")
                if item.expected_crc32c is not None and result.crc32c != item.expected_crc32c:
                    raise Corruption(f"backup {backup_id}: checksum mismatch after copying "
                                     f"{item.source.name} to {item.dest}")
                lock.check(f"backup {backup_id}: publishing {item.dest}", ask_store=False)
        with attempt.written_lock:
            attempt.written.append(item.dest)
        tracker.file_done()
        return item.dest, result.size, result.crc32c

    return {dest: (size, crc)
            for dest, size, crc in run_parallel(copies, copy_one, attempt.workers, attempt.stop)}


def _assemble_meta(attempt: _Attempt, planned: _Planned, copied: dict[str, tuple[int, int]], timestamp: int,
                   sequence_number: int) -> tuple[BackupMeta, dict[str, int]]:
    """The meta file's contents and each counted file's size; a reused file whose backup was
    written without CRCs (schema 2 allows that) is read for its CRC now."""
    entries = []
    sizes: dict[str, int] = {}
    for p in planned.files:
        if p.dest in planned.excluded:  # recorded, not copied: written after the counted entries
            entries.append(MetaFileEntry(p.dest, None, excluded=True))
            continue
        size, crc = copied[p.dest] if p.copy else (p.source.size, p.expected_crc32c)
        if crc is None:
            with open(p.source.path, "rb") as fh:
                crc = file_crc32c(fh, attempt.buffers.get()).crc32c
        entries.append(MetaFileEntry(p.dest, crc))
        sizes[p.dest] = size
    options = attempt.options
    meta = BackupMeta(timestamp, sequence_number, entries, attempt.req.app_metadata,
                      schema_version=str(options.schema_version))
    return meta, sizes


def _commit(attempt: _Attempt, data: bytes) -> None:
    """Create `meta/<id>`: the backup exists from here.  If that raises, `_recover` decides."""
    try:
        attempt.env.create_exclusive(meta_path(attempt.backup_id), data, sync=attempt.options.sync)
    except BaseException as exc:
        if not _recover(attempt, data, exc):
            raise


def _recover(attempt: _Attempt, data: bytes, exc: BaseException) -> bool:
    """After the commit raised: True if it happened after all (and `exc` is an ordinary error),
    so the create succeeds.  A failed commit may still have happened (a lost S3 response, an
    fsync error after the link): deleting the files then would corrupt a committed backup, so
    they go only when there is certainly no `meta/<id>`."""
    env, backup_id, log = attempt.env, attempt.backup_id, attempt.log
    outcome = _commit_outcome(env, backup_id, data)
    if outcome is CommitOutcome.ABSENT:
        _cleanup(env, attempt.lock, backup_id, attempt.written, log)
    elif outcome is CommitOutcome.UNKNOWN:
        log.warning("backup %d: cannot tell whether the commit happened (%s); leaving the files "
                    "to garbage collection", backup_id, exc)
    if outcome is not CommitOutcome.COMMITTED or not isinstance(exc, Exception):
        return False
    log.warning("backup %d: the commit reported %s: %s, but %s holds this backup: it is committed",
                backup_id, type(exc).__name__, exc, env.describe(meta_path(backup_id)))
    return True


def _commit_outcome(env: BackupEnv, backup_id: int, data: bytes) -> CommitOutcome:
    """Read `meta/<id>` back after the commit raised (see `CommitOutcome`)."""
    try:
        holds = env.read_bytes(meta_path(backup_id), len(data)) == data
    except NotFound:
        return CommitOutcome.ABSENT
    except (BackupError, OSError):
        return CommitOutcome.UNKNOWN
    return CommitOutcome.COMMITTED if holds else CommitOutcome.UNKNOWN


def _sync_dirs(attempt: _Attempt) -> None:
    """Make the new directory entries durable (stores with directories; a no-op elsewhere)."""
    if attempt.options.sync:
        for d in (private_dir(attempt.backup_id), PRIVATE_DIR, META_DIR, attempt.options.shared_dir, ""):
            if d is not None:
                attempt.env.sync_dir(d)


def _check_committed(env: BackupEnv, lock: WriterLock, backup_id: int, data: bytes,
                     copied: dict[str, tuple[int, int]], workers: int, stop: threading.Event,
                     log: logging.Logger) -> None:
    """After a commit under a lease or on a store without conditional_create: this writer
    still holds the lock, and meta/<id> and the files this attempt copied are still what it wrote.

    A writer that stalled between its last check and its commit may commit
    after a successor took the lease over; the successor's garbage collection
    does not know that backup and may be deleting its files, so it is withdrawn.

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
        lock.check(f"backup {backup_id}: after its commit")
        if not _holds(env, meta_path(backup_id), data):
            problems.append(f"{meta_path(backup_id)} holds another writer's commit")
        else:
            for path, problem in zip(to_check, run_parallel(to_check, check, workers, stop), strict=False):
                if problem:
                    problems.append(f"{path} {problem}")
    except LockError as exc:
        problems.append(f"the commit landed after this writer lost the lock ({exc})")
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
    except (NotFound, FileTooLarge):
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
