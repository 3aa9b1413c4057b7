"""Copying backups from one backup directory to another (`rbackup copy`).

Both sides are plain `BackupEnv`s, so any pairing of stores works (local, S3,
HDFS, an encrypted wrapper on either side) and the destination ends up in
RocksDB's format: the same relative paths, and each meta file copied byte for
byte.  What makes it safe to run again and again:

* Incremental: a shared file that a valid destination backup already holds
  with the same size and CRC-32C is not copied again.
* Verified: every file's CRC-32C is computed as it streams and compared with
  the source's meta file before the file is published at the destination.
* Resumable: files an interrupted copy already published are not sent again;
  each is read back at the destination and kept only if its CRC-32C matches.
* Committed last: a backup's meta file is created (create-if-absent) only
  after all its files are there, so the destination never shows a backup
  whose files are missing.
* Never deletes at the destination, and never replaces a backup there: an id
  that exists with other content is an error.  The destination's writer lock
  is held throughout, so its garbage collection cannot remove files a copy
  has published but not committed yet.
"""
from __future__ import annotations

import logging
import os
import posixpath
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .env.base import BackupEnv
from .env.registry import open_env
from .errors import AlreadyExists, Corruption, InvalidArgument, NotFound
from .format.meta import MAX_META_FILE_SIZE, BackupMeta, parse_meta
from .format.naming import META_DIR, SIDE_FILES, meta_path, private_file_path
from .lock import writer_lock
from .options import ProgressCallback
from .state import BackupState, MetaCache, load_state
from .transfer import Buffers, ProgressTracker, run_parallel, stream_copy

log = logging.getLogger("rbackup")

__all__ = ["CopyReport", "copy_backups"]


@dataclass
class CopyReport:
    """What a copy did, for the CLI's summary and JSON."""

    copied: list[int] = field(default_factory=list)
    """Backups committed at the destination by this run."""
    already_present: list[int] = field(default_factory=list)
    """Backups the destination already held, byte-identical meta file."""
    skipped_corrupt: dict[int, str] = field(default_factory=dict)
    """Corrupt source backups left out of a copy of all backups, with the reason."""
    files_copied: int = 0
    bytes_copied: int = 0
    files_reused: int = 0
    """Shared files a destination backup already held (not read, not sent)."""
    files_resumed: int = 0
    """Files an earlier, interrupted copy had published (read back and checksummed, not sent)."""


@dataclass(frozen=True)
class _Item:
    path: str
    size: int
    crc32c: int | None
    """None for side files, which no meta file describes."""


@dataclass
class _Copier:
    src: BackupEnv
    dst: BackupEnv
    workers: int
    buffers: Buffers
    sync: bool
    stop: threading.Event
    progress_callback: ProgressCallback | None
    report: CopyReport

    def backup(self, backup_id: int, raw_meta: bytes, meta: BackupMeta, src_listing: dict[str, int],
               dst_state: BackupState) -> None:
        items = self._items(backup_id, meta, src_listing)
        refs = dst_state.referenced()
        to_check: list[_Item] = []
        to_copy: list[_Item] = []
        for item in items:
            held = refs.get(item.path)
            if held is not None and held[0] == item.size and item.crc32c is not None and held[1] == item.crc32c:
                self.report.files_reused += 1
            elif dst_state.listing.get(item.path) == item.size and item.crc32c is not None:
                to_check.append(item)
            else:
                to_copy.append(item)
        resumed = run_parallel(to_check, self._already_there, self.workers, self.stop)
        to_copy += [item for item, ok in zip(to_check, resumed, strict=True) if not ok]
        self.report.files_resumed += sum(resumed)
        for directory in sorted({posixpath.dirname(i.path) for i in to_copy} | {META_DIR}):
            self.dst.makedirs(directory)
        tracker = ProgressTracker("copy", backup_id, sum(i.size for i in to_copy), len(to_copy),
                                  self.progress_callback, 4 << 20, self.stop)
        run_parallel(to_copy, lambda item: self._copy(backup_id, item, tracker), self.workers, self.stop)
        if self.sync:
            for directory in sorted({posixpath.dirname(i.path) for i in to_copy}):
                self.dst.sync_dir(directory)
        self.dst.create_exclusive(meta_path(backup_id), raw_meta, sync=self.sync)
        if self.sync:
            self.dst.sync_dir(META_DIR)
        self.report.copied.append(backup_id)
        log.info("copy: backup %d committed at %s (%d files sent)", backup_id, self.dst.describe(), len(to_copy))

    def _items(self, backup_id: int, meta: BackupMeta, src_listing: dict[str, int]) -> list[_Item]:
        items = []
        for entry in meta.files:
            if entry.excluded:
                continue
            size = src_listing.get(entry.path)
            if size is None:
                raise NotFound(f"backup {backup_id}: {self.src.describe(entry.path)} is named in the meta file "
                               "but not found")
            items.append(_Item(entry.path, size, entry.crc32c))
        for name in SIDE_FILES:  # not in the meta file (RocksDB would reject them) but restored
            path = private_file_path(backup_id, name)
            if path in src_listing:
                items.append(_Item(path, src_listing[path], None))
        return items

    def _already_there(self, item: _Item) -> bool:
        with self.dst.open_read(item.path) as existing:
            result = stream_copy(existing, None, buf=self.buffers.get(), stop=self.stop, limit=item.size + 1)
        return result.size == item.size and result.crc32c == item.crc32c

    def _copy(self, backup_id: int, item: _Item, tracker: ProgressTracker) -> None:
        with self.src.open_read(item.path) as reader, self.dst.open_write(item.path, sync=self.sync) as writer:
            # The check runs before the writer's commit: a bad file is never published.
            result = stream_copy(reader, writer.write, buf=self.buffers.get(), stop=self.stop,
                                 tracker=tracker, limit=item.size + 1)
            result.check(backup_id, self.src.describe(item.path), item.size, item.crc32c)
        tracker.file_done()
        self.report.files_copied += 1
        self.report.bytes_copied += result.size


def _as_env(where: BackupEnv | str | os.PathLike, storage_options: dict[str, Any] | None) -> tuple[BackupEnv, bool]:
    if isinstance(where, BackupEnv):
        return where, False
    return open_env(where, storage_options=storage_options), True


def copy_backups(source: BackupEnv | str | os.PathLike, destination: BackupEnv | str | os.PathLike,
                 backup_ids: Iterable[int] | None = None, *,
                 source_storage_options: dict[str, Any] | None = None,
                 destination_storage_options: dict[str, Any] | None = None,
                 workers: int | None = None, io_buffer_size: int = 0, sync: bool = True,
                 lock_timeout: float = 0.0, lock_ttl: float = 300.0,
                 progress_callback: ProgressCallback | None = None,
                 stop: threading.Event | None = None) -> CopyReport:
    """Copy backups (all valid ones, or `backup_ids`) from `source` to `destination`.

    Each side is a URL/path (opened with its storage options) or a BackupEnv.
    Backup ids are kept (the meta file names `private/<id>/` paths).  The
    source is only read; it is not locked, so a purge running there at the
    same time makes the copy fail with NotFound, never copy a partial backup.
    """
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise InvalidArgument(f"copy: workers must be an int >= 1, got {workers!r}")
    src, own_src = _as_env(source, source_storage_options)
    try:
        dst, own_dst = _as_env(destination, destination_storage_options)
        try:
            return _copy(src, dst, None if backup_ids is None else list(backup_ids), workers, io_buffer_size,
                         sync, lock_timeout, lock_ttl, progress_callback, stop or threading.Event())
        finally:
            if own_dst:
                dst.close()
    finally:
        if own_src:
            src.close()


def _copy(src: BackupEnv, dst: BackupEnv, backup_ids: list[int] | None, workers: int | None, io_buffer_size: int,
          sync: bool, lock_timeout: float, lock_ttl: float, progress_callback: ProgressCallback | None,
          stop: threading.Event) -> CopyReport:
    if src.describe() == dst.describe():
        raise InvalidArgument(f"copy: source and destination are the same backup directory ({src.describe()})")
    report = CopyReport()
    src_state = load_state(src, workers=max(8, src.capabilities.concurrency))
    if backup_ids is None:
        ids = [b.backup_id for b in src_state.valid]
        report.skipped_corrupt = {i: str(src_state.backups[i].error) for i in src_state.corrupt_ids}
    else:
        ids = sorted(set(backup_ids))
        for backup_id in ids:
            backup = src_state.backups.get(backup_id)
            if backup is None:
                raise NotFound(f"backup {backup_id} not found in {src.describe()}")
            if backup.error is not None:
                raise type(backup.error)(f"backup {backup_id} in {src.describe()} is corrupt: {backup.error}")
    width = workers or max(src.capabilities.transfer_width, dst.capabilities.transfer_width)
    copier = _Copier(src, dst, width, Buffers.for_store(io_buffer_size, dst.capabilities), sync, stop,
                     progress_callback, report)
    dst.makedirs("")
    with writer_lock(dst, "copy", timeout=lock_timeout, ttl=lock_ttl):
        cache = MetaCache()
        dst_state = load_state(dst, workers=max(8, dst.capabilities.concurrency), cache=cache)
        for backup_id in ids:
            raw = src.read_bytes(meta_path(backup_id), MAX_META_FILE_SIZE)
            meta = parse_meta(raw, backup_id)
            present = dst_state.backups.get(backup_id)
            if present is not None:
                _check_present(src, dst, backup_id, raw, present.error)
                report.already_present.append(backup_id)
                continue
            copier.backup(backup_id, raw, meta, src_state.listing, dst_state)
            dst_state = load_state(dst, workers=max(8, dst.capabilities.concurrency), cache=cache)
    return report


def _check_present(src: BackupEnv, dst: BackupEnv, backup_id: int, raw: bytes, error: Exception | None) -> None:
    """A backup id the destination holds must be the same backup, and intact there."""
    if dst.read_bytes(meta_path(backup_id), MAX_META_FILE_SIZE) != raw:
        raise AlreadyExists(f"backup {backup_id} exists in {dst.describe()} with other content than in "
                            f"{src.describe()}; copy never replaces a backup (delete it there first)")
    if error is not None:
        raise Corruption(f"backup {backup_id} is already in {dst.describe()} but corrupt there ({error}); "
                         "delete it there and copy again")
