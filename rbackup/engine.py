"""BackupEngine: the operations, in RocksDB's terms, over any BackupEnv.

This module decides *what* happens (ids, which backups exist, what garbage
collection may delete, when to take the writer lock); `create`, `restore`,
`state` and `transfer` do the work.  It only ever sees a `BackupEnv`: the
store is picked by the registry from the URL or given as `backup_env`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from .alternates import Located, locate_files, verify_alternate_file
from .backup_cache import DEFAULT_CACHE_LIMIT, FileCache, default_cache_dir
from .create import BackupRequest, collector_paused, create_backup
from .env.base import BackupEnv
from .env.registry import open_env
from .env.wrappers import ReadOnlyEnv
from .errors import BackupError, Incomplete, InvalidArgument, NotFound, NotSupported
from .format.meta import MAX_APP_METADATA
from .format.naming import (
    MAX_BACKUP_ID,
    META_DIR,
    PRIVATE_DIR,
    SIDE_FILES,
    meta_path,
    parse_backup_id,
    private_file_path,
)
from .gc_plan import plan_garbage_collection
from .lock import WriterLock, hold_writer_lock
from .options import (
    BackupableDBOptions,
    BackupFileInfo,
    BackupInfo,
    BackupStatistics,
    ExcludeFilesCallback,
    ProgressCallback,
    RestoreOptions,
)
from .restore import RestoreRequest, Run, VerifyRequest, VerifyResult, restore_backup, verify_backup
from .state import BackupState, LoadedBackup, MetaCache, load_state

if TYPE_CHECKING:  # imported where used: a create needs neither rocksdict nor the retention rules
    from .backup_db import BackupDB
    from .retention import RetentionPlan, RetentionPolicy


class BackupEngine:
    """Read-write engine (RocksDB's BackupEngine::Open)."""

    read_only = False

    def __init__(self, options: BackupableDBOptions) -> None:
        if not isinstance(options, BackupableDBOptions):
            raise InvalidArgument(f"expected BackupableDBOptions, got {type(options).__name__}")
        self.options = options
        self._log = options.logger
        env = options.backup_env or open_env(options.backup_dir, storage_options=options.storage_options)
        self._owns_env = options.backup_env is None
        self.env: BackupEnv = ReadOnlyEnv(env) if self.read_only else env
        self._stop = threading.Event()
        self._mutex = threading.RLock()
        self._meta_cache = MetaCache()
        self._cached_state: BackupState | None = None
        self._unchanged: BackupState | None = None
        """The last state loaded, while nothing this engine did can have changed it: the next load
        returns it if the directory lists the same files (`load_state`'s `unchanged`)."""
        self._known_sizes: dict[str, int] | None = None
        """The last load's `stable_sizes`: the next listing takes them as known, a `stat` each saved."""
        self._closed = False
        self._held: WriterLock | None = None
        """The writer lock while an operation holds it."""
        self._statistics = BackupStatistics()
        if self.read_only and options.destroy_old_data:
            raise InvalidArgument("destroy_old_data cannot be used with a read-only engine")
        if not self.read_only:
            # RocksDB's order: root, shared dir, private/, meta/
            for directory in ["", options.shared_dir, PRIVATE_DIR, META_DIR]:
                if directory is not None:
                    self.env.makedirs(directory)
        if not self.read_only and options.sync and not self.env.capabilities.durable_sync:
            # said once, at open: every write of this engine asks for sync and none gets it.  INFO,
            # not WARNING: the CLI prints warnings, and a store's README already states its durability.
            self._log.info("%s cannot make writes durable (no durable_sync): sync=True is best effort there",
                              self.env.describe())
        self._cached_state = self._load()  # a broken backup directory fails the open, as in RocksDB
        if options.destroy_old_data:
            with self._writing("destroy_old_data"):
                self._delete_metas([b.backup_id for b in self._state.backups.values()])
                self._garbage_collect()

    @classmethod
    def open(cls, options: BackupableDBOptions) -> BackupEngine:
        return cls(options)

    # -- internals -------------------------------------------------------------
    @property
    def _workers(self) -> int:
        """max_background_operations files in flight, and at least the width the
        store declares (`Capabilities.transfer_width`: object stores are latency-bound)."""
        return max(self.options.max_background_operations, self.env.capabilities.transfer_width)

    @property
    def _state(self) -> BackupState:
        """The directory as last loaded; reloaded lazily after every write, so a
        failed reload never masks the error of the operation that preceded it."""
        if self._cached_state is None:
            self._cached_state = self._load()
        return self._cached_state

    def _invalidate(self, *, untouched: bool = False) -> None:
        """Reload before the next use; `untouched`: this engine changed nothing since the last
        load (a writer taking its lock), so an unchanged directory may keep that state."""
        self._unchanged = self._cached_state if untouched else None
        self._cached_state = None

    def _load(self) -> BackupState:
        unchanged, self._unchanged = self._unchanged, None
        max_valid = self.options.max_valid_backups_to_open if self.read_only else None
        # Meta files are a round trip each on a remote store: the store declares how many
        # to fetch at once (`Capabilities.concurrency`; 1 on local disk, where parsing holds
        # the GIL and one thread is 30% faster).
        state = load_state(self.env, max_valid=max_valid, workers=self.env.capabilities.concurrency,
                           logger=self._log, cache=self._meta_cache, unchanged=unchanged, known_sizes=self._known_sizes,
                           keep_sizes=not self.read_only)
        self._known_sizes = state.stable_sizes
        return state

    def _check_open(self) -> None:
        if self._closed:
            raise InvalidArgument(f"the backup engine for {self.env.describe()} is closed")

    def _check_writable(self, what: str) -> None:
        self._check_open()
        if self.read_only:
            raise NotSupported(f"{what}: this backup engine is read-only ({self.env.describe()})")

    @contextlib.contextmanager
    def _writing(self, operation: str) -> Iterator[None]:
        """Serialise writers (threads here, processes anywhere) and act on a fresh view."""
        with self._mutex, hold_writer_lock(self.env, operation, timeout=self.options.lock_timeout,
                                           ttl=self.options.lock_ttl) as held:
            self._invalidate(untouched=True)
            self._held = held
            try:
                yield
            finally:
                self._held = None
                self._invalidate()

    def _check_lock(self, what: str) -> None:
        """Before a deletion: stop if this writer lost the lock while it worked."""
        if self._held is not None:
            self._held.check(what)

    def _backup(self, backup_id: int) -> LoadedBackup:
        if not isinstance(backup_id, int) or isinstance(backup_id, bool):
            raise InvalidArgument(f"backup id must be an int, got {backup_id!r}")
        backup = self._state.backups.get(backup_id)
        if backup is None:
            raise NotFound(f"backup {backup_id} not found in {self.env.describe()}")
        if backup.error is not None:
            raise type(backup.error)(f"backup {backup_id} is corrupt: {backup.error}")
        return backup

    def _latest(self) -> LoadedBackup:
        backup = self._state.latest_valid()
        if backup is None:
            raise NotFound(f"no valid backup in {self.env.describe()}")
        return backup

    def _delete_metas(self, ids: list[int]) -> None:
        """The meta file goes first: once it is gone the backup no longer exists,
        and everything else it held is garbage that a crash may safely leave."""
        self._check_lock(f"deleting backups {ids}")
        self.env.delete([meta_path(i) for i in ids])
        for i in ids:
            if self.env.exists(meta_path(i)):  # the store kept it (S3 Object Lock): so are its files
                continue
            self._state.backups.pop(i, None)
            self._meta_cache.pop(i, None)

    def _garbage_collect(self) -> None:
        state = self._state
        unreadable = state.unreadable_ids
        if unreadable:
            self._log.warning("garbage collection in %s keeps backups %s, whose meta files this version of rbackup "
                              "cannot read (%s), and every shared file, since which ones they use is unknown: "
                              "use a newer rbackup, or delete them with delete_backup", self.env.describe(),
                              unreadable, state.backups[unreadable[0]].error)
        plan = plan_garbage_collection(state.listing, state.referenced(), {b.backup_id for b in state.valid},
                                       unreadable_ids=unreadable)
        if plan.doomed:
            self._check_lock("garbage collection")
            self._log.info("garbage collection: deleting %d files from %s", len(plan.doomed), self.env.describe())
            self.env.delete(plan.doomed)
        for directory in plan.private_dirs:
            self.env.remove_dir(directory)
        for path in plan.doomed:
            state.listing.pop(path, None)

    # -- RocksDB's API ---------------------------------------------------------
    def create_new_backup(self, db, flush_before_backup: bool = False, *, app_metadata: bytes | str | None = None,
                          progress_callback: ProgressCallback | None = None,
                          exclude_files_callback: ExcludeFilesCallback | None = None) -> int:
        """Back up `db` (an open rocksdict.Rdict, or the path of a DB no process holds
        open) and return the new backup's id.

        `exclude_files_callback` may leave out shared files another backup directory
        holds (schema_version 2 only); restore and open_backup find them through
        alternate directories."""
        self._check_writable("create_new_backup")
        if exclude_files_callback is not None and self.options.schema_version < 2:
            raise InvalidArgument("exclude_files_callback needs schema_version=2 (excluded files are schema-2 "
                                  f"meta entries); {self.env.describe()} is opened with schema_version "
                                  f"{self.options.schema_version}")
        if self._stop.is_set():
            raise Incomplete("Backup stopped")
        metadata = app_metadata.encode("utf-8") if isinstance(app_metadata, str) else bytes(app_metadata or b"")
        if len(metadata) > MAX_APP_METADATA:
            raise InvalidArgument(f"app_metadata is {len(metadata)} bytes, over the limit of {MAX_APP_METADATA}")
        with collector_paused(), self._writing("create_new_backup"):
            assert self._held is not None
            backup_id = self._new_backup_id(self._held)
            own = f"{PRIVATE_DIR}/{backup_id}/"
            if any(map(str.startswith, self._state.listing, itertools.repeat(own))):
                self._garbage_collect()  # leftovers of a crashed attempt at this id
            try:
                self._held.claim(backup_id)
                create_backup(self.env, self._state, self.options,
                              BackupRequest(backup_id, db, flush_before_backup, metadata, progress_callback,
                                            exclude_files_callback),
                              self._stop, self._workers, self._held)
            except BaseException:
                self._count_backup(ok=False)
                self._invalidate()
                with contextlib.suppress(BackupError):
                    self._garbage_collect()
                raise
        self._count_backup(ok=True)
        return backup_id

    def _new_backup_id(self, held: WriterLock) -> int:
        """RocksDB's latest + 1, above the ids a writer that lost the lock alive may still write
        (`WriterLock.reserved`) and, after taking over such a writer, above its leftover
        `private/<id>/` too: two writers never publish into one `private/<id>/`."""
        floor = max(self._state.latest_backup_id, held.reserved)
        if held.took_over_live_holder:
            for path in self._state.listing:
                top, _, rest = path.partition("/")
                child_id = parse_backup_id(rest.partition("/")[0]) if top == PRIVATE_DIR and "/" in rest else None
                if child_id is not None:
                    floor = max(floor, child_id)
        if floor + 1 > MAX_BACKUP_ID:
            raise NotSupported(f"backup ids are exhausted in {self.env.describe()}")
        return floor + 1

    def _count_backup(self, ok: bool) -> None:
        with self._mutex:  # creates on several threads of one engine count each one
            s = self._statistics
            self._statistics = dataclasses.replace(s, number_success_backup=s.number_success_backup + ok,
                                                   number_fail_backup=s.number_fail_backup + (not ok))

    def get_backup_statistics(self) -> BackupStatistics:
        """Backups made and failed by this engine object since it was opened (RocksDB's GetBackupStatistics)."""
        return self._statistics

    def create_new_backup_with_metadata(self, db, app_metadata: bytes | str, flush_before_backup: bool = False, *,
                                        progress_callback: ProgressCallback | None = None) -> int:
        return self.create_new_backup(db, flush_before_backup, app_metadata=app_metadata,
                                      progress_callback=progress_callback)

    def get_backup_info(self, include_file_details: bool = False) -> list[BackupInfo]:
        """Valid backups in ascending id order (corrupt ones: get_corrupted_backups)."""
        self._check_open()
        return [self._info(b, include_file_details) for b in self._state.valid]

    def get_latest_backup_info(self, include_file_details: bool = False) -> BackupInfo:
        """The newest valid backup; NotFound when there is none (RocksDB's GetLatestBackupInfo)."""
        self._check_open()
        return self._info(self._latest(), include_file_details)

    def _info(self, backup: LoadedBackup, details: bool) -> BackupInfo:
        assert backup.meta is not None
        files = tuple(BackupFileInfo(e.path, backup.sizes[e.path], e.crc32c) for e in backup.meta.files
                      if not e.excluded) if details else None
        excluded = tuple(e.path for e in backup.meta.files if e.excluded) if details else None
        return BackupInfo(backup.backup_id, backup.meta.timestamp, backup.live_bytes, len(backup.sizes),
                          backup.meta.app_metadata, files, excluded)

    def lookup_file(self, path: str) -> tuple[int, int | None] | None:
        """(size, crc32c) of `path` if a valid backup here holds it: what an engine
        given as an alternate directory is asked for an excluded file."""
        self._check_open()
        return self._state.referenced().get(path)

    def open_backup(self, backup_id: int, *, alternate_dirs: Sequence[BackupEngine] = (),
                    cache_dir: str | os.PathLike | None = None, cache_limit: int = DEFAULT_CACHE_LIMIT,
                    view_dir: str | os.PathLike | None = None) -> BackupDB:
        """Open backup `backup_id` as a read-only DB without restoring it.

        On local disk the backup's files are read in place through a temporary
        directory of symlinks (made under `view_dir`, default the system temp dir);
        on remote stores they are fetched, CRC-32C checked, into `cache_dir`
        (default `~/.cache/rbackup/open`, at most `cache_limit` bytes, reused by later
        opens).  The backup directory is never written.  Close the result (or use
        `with`) to close the DB and remove the view.
        """
        from .backup_db import open_view

        self._check_open()
        backup = self._backup(backup_id)
        files = locate_files(self.env, backup, alternate_dirs)
        listing = self._state.listing
        side = [Located(self.env, path, listing[path], None, name) for name in SIDE_FILES
                if (path := private_file_path(backup_id, name)) in listing]
        cache = FileCache(os.fspath(cache_dir or default_cache_dir()), cache_limit, self._log)
        return open_view(backup_id, files, side, cache=cache, workers=self._workers, log=self._log,
                         view_parent=os.fspath(view_dir) if view_dir is not None else None)

    def get_corrupted_backups(self) -> list[int]:
        self._check_open()
        return self._state.corrupt_ids

    def corruption_reasons(self) -> dict[int, str]:
        """Why each corrupt backup failed to load (for `rbackup list`)."""
        self._check_open()
        return {i: str(self._state.backups[i].error) for i in self._state.corrupt_ids}

    def purge_old_backups(self, num_backups_to_keep: int) -> None:
        """Delete the oldest valid backups until `num_backups_to_keep` remain."""
        self._check_writable("purge_old_backups")
        if not isinstance(num_backups_to_keep, int) or num_backups_to_keep < 0:
            raise InvalidArgument(f"purge_old_backups: num_backups_to_keep must be an int >= 0, "
                                  f"got {num_backups_to_keep!r}")
        with self._writing("purge_old_backups"):
            valid = self._state.valid
            doomed = [b.backup_id for b in valid[:max(0, len(valid) - num_backups_to_keep)]]
            if doomed:
                self._delete_metas(doomed)
            self._garbage_collect()

    def purge_by_policy(self, policy: RetentionPolicy, *, dry_run: bool = False) -> RetentionPlan:
        """Delete the valid backups `policy` does not keep (restic's rules, see
        `rbackup.retention`) and return the plan, which says why each kept one is
        kept.  With `dry_run` nothing is written and no lock is taken.  Corrupt
        backups are left for `delete_backup`/`garbage_collect`."""
        from .retention import RetentionPolicy

        if not isinstance(policy, RetentionPolicy):
            raise InvalidArgument(f"purge_by_policy: expected a RetentionPolicy, got {type(policy).__name__}")
        self._check_open()
        if dry_run:
            return self._retention_plan(policy)
        self._check_writable("purge_by_policy")
        with self._writing("purge_by_policy"):
            plan = self._retention_plan(policy)
            if plan.remove:
                self._log.info("purge_by_policy: deleting backups %s from %s", plan.remove, self.env.describe())
                self._delete_metas(plan.remove)
            self._garbage_collect()
        return plan

    def _retention_plan(self, policy: RetentionPolicy) -> RetentionPlan:
        from .retention import plan_retention

        backups = []
        for b in self._state.valid:
            assert b.meta is not None
            backups.append((b.backup_id, b.meta.timestamp))
        return plan_retention(backups, policy)

    def delete_backup(self, backup_id: int) -> None:
        """Delete one backup, valid or corrupt; files other backups share stay."""
        self._check_writable("delete_backup")
        with self._writing("delete_backup"):
            if backup_id not in self._state.backups:
                raise NotFound(f"backup {backup_id} not found in {self.env.describe()}")
            self._delete_metas([backup_id])
            self._garbage_collect()

    def garbage_collect(self) -> None:
        """Remove every file no valid backup needs: leftovers of failed or
        interrupted creates and deletes, and files of corrupt backups."""
        self._check_writable("garbage_collect")
        with self._writing("garbage_collect"):
            self._garbage_collect()

    def verify_backup(self, backup_id: int, verify_with_checksum: bool = False, *,
                      progress_callback: ProgressCallback | None = None,
                      alternate_dirs: Sequence[BackupEngine] = (), read_back: bool = False) -> VerifyResult:
        """Raise unless every file of the backup is there with its recorded size
        (and, with checksums, its recorded CRC-32C).  Files the backup excluded are
        skipped, as RocksDB does, unless `alternate_dirs` are given: then each must be
        held by one of them, and with checksums is verified there (read back).

        With checksums, a file is read back unless the store keeps a CRC-32C of it that
        it has shown it checks (`BackupEnv.stored_checksum`: S3 stores that refuse a wrong
        one); `read_back` reads every file regardless.  The result says how many were
        checked each way."""
        self._check_open()
        backup = self._backup(backup_id)
        result = verify_backup(self.env, VerifyRequest(backup, verify_with_checksum, read_back),
                               Run(self.options, threading.Event(), self._workers, progress_callback))
        if alternate_dirs:
            excluded = {e.path for e in backup.meta.files if e.excluded} if backup.meta else set()
            for f in locate_files(self.env, backup, alternate_dirs):
                if f.path in excluded and f.env is not None:
                    verify_alternate_file(backup_id, f, verify_with_checksum)
                    read = 1 if verify_with_checksum and f.crc32c is not None else 0
                    result = dataclasses.replace(result, files=result.files + 1, downloaded=result.downloaded + read,
                                                 bytes_downloaded=result.bytes_downloaded + f.size * read)
        return result

    def restore_db_from_backup(self, backup_id: int, db_dir: str | os.PathLike,
                               wal_dir: str | os.PathLike | None = None,
                               options: RestoreOptions = RestoreOptions(), *,
                               progress_callback: ProgressCallback | None = None) -> None:
        self._check_open()
        self._restore(self._backup(backup_id), db_dir, wal_dir, options, progress_callback)

    def restore_db_from_latest_backup(self, db_dir: str | os.PathLike, wal_dir: str | os.PathLike | None = None,
                                      options: RestoreOptions = RestoreOptions(), *,
                                      progress_callback: ProgressCallback | None = None) -> None:
        self._check_open()
        self._restore(self._latest(), db_dir, wal_dir, options, progress_callback)

    def _restore(self, backup: LoadedBackup, db_dir, wal_dir, options: RestoreOptions,
                 progress_callback: ProgressCallback | None) -> None:
        if not isinstance(options, RestoreOptions):
            raise InvalidArgument(f"expected RestoreOptions, got {type(options).__name__}")
        request = RestoreRequest(backup, self._state.listing, os.fspath(db_dir),
                                 os.fspath(wal_dir if wal_dir is not None else db_dir), options)
        restore_backup(self.env, request, Run(self.options, threading.Event(), self._workers, progress_callback))

    def stop_backup(self) -> None:
        """Make a running create stop within one chunk and every later one fail
        with Incomplete("Backup stopped"), as RocksDB's StopBackup (one-way)."""
        self._stop.set()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._owns_env:
            self.env.close()

    def __enter__(self) -> BackupEngine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.env.describe()!r})"


class BackupEngineReadOnly(BackupEngine):
    """Lists, verifies and restores; never writes or deletes anything in the
    backup directory (every write is refused at the env level too)."""

    read_only = True
