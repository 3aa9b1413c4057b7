"""Options and info records, named after RocksDB's BackupEngineOptions et al."""
from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import InvalidArgument, NotSupported
from .format.naming import SHARED_CHECKSUM_DIR, SHARED_DIR
from .restore_plan import RestoreMode

if TYPE_CHECKING:
    from .engine import BackupEngine
    from .env.base import BackupEnv

MiB = 1 << 20


@dataclass
class BackupableDBOptions:
    """Where backups go and how they are made (RocksDB's BackupEngineOptions).

    `backup_dir` is a path or a URL (`s3://bucket/prefix`, `hdfs://nn:8020/p`,
    `file:///x`, ...); `backup_env` overrides the store the URL would select
    and `storage_options` is handed to the backend (credentials, endpoints).
    """

    backup_dir: str | os.PathLike
    backup_env: BackupEnv | None = None
    share_table_files: bool = True
    info_log: logging.Logger | None = None
    sync: bool = True
    destroy_old_data: bool = False
    backup_log_files: bool = True
    backup_rate_limit: int = 0
    restore_rate_limit: int = 0
    share_files_with_checksum: bool = True
    max_background_operations: int = 1
    callback_trigger_interval_size: int = 4 * MiB
    max_valid_backups_to_open: int | None = None
    schema_version: int = 1
    storage_options: dict[str, Any] | None = None
    io_buffer_size: int = 0
    """Copy buffer per file in flight; 0 picks 4 MiB (RocksDB HEAD's option)."""
    lock_timeout: float = 0.0
    """Seconds a writer waits for another writer's lock; 0 fails at once."""
    lock_ttl: float = 300.0
    """Seconds after which a lease (object stores) whose holder stopped renewing is stale."""

    def __init__(
        self,
        backup_dir: str | os.PathLike,
        *,
        backup_env: BackupEnv | None = None,
        share_table_files: bool = True,
        info_log: logging.Logger | None = None,
        sync: bool = True,
        destroy_old_data: bool = False,
        backup_log_files: bool = True,
        backup_rate_limit: int = 0,
        restore_rate_limit: int = 0,
        share_files_with_checksum: bool = True,
        max_background_operations: int = 1,
        callback_trigger_interval_size: int = 4 * MiB,
        max_valid_backups_to_open: int | None = None,
        schema_version: int = 1,
        storage_options: dict[str, Any] | None = None,
        io_buffer_size: int = 0,
        lock_timeout: float = 0.0,
        lock_ttl: float = 300.0,
    ) -> None:
        # Keyword-only after backup_dir so that RocksDB's long positional
        # constructor cannot be half-matched by accident.
        self.backup_dir = backup_dir
        self.backup_env = backup_env
        self.share_table_files = share_table_files
        self.info_log = info_log
        self.sync = sync
        self.destroy_old_data = destroy_old_data
        self.backup_log_files = backup_log_files
        self.backup_rate_limit = backup_rate_limit
        self.restore_rate_limit = restore_rate_limit
        self.share_files_with_checksum = share_files_with_checksum
        self.max_background_operations = max_background_operations
        self.callback_trigger_interval_size = callback_trigger_interval_size
        self.max_valid_backups_to_open = max_valid_backups_to_open
        self.schema_version = schema_version
        self.storage_options = storage_options
        self.io_buffer_size = io_buffer_size
        self.lock_timeout = lock_timeout
        self.lock_ttl = lock_ttl
        self.validate()

    def validate(self) -> None:
        """Fail at construction, naming the option, rather than mid-backup."""
        if not isinstance(self.backup_dir, (str, os.PathLike)) or not os.fspath(self.backup_dir):
            raise InvalidArgument(f"backup_dir must be a non-empty path or URL, got {self.backup_dir!r}")
        for name in ("backup_rate_limit", "restore_rate_limit", "io_buffer_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise InvalidArgument(f"{name} must be an int >= 0, got {value!r}")
        if not isinstance(self.max_background_operations, int) or self.max_background_operations < 1:
            raise InvalidArgument(
                f"max_background_operations must be an int >= 1, got {self.max_background_operations!r}")
        if not isinstance(self.callback_trigger_interval_size, int) or self.callback_trigger_interval_size < 1:
            raise InvalidArgument("callback_trigger_interval_size must be an int >= 1, "
                                  f"got {self.callback_trigger_interval_size!r}")
        if self.max_valid_backups_to_open is not None and (
                not isinstance(self.max_valid_backups_to_open, int) or self.max_valid_backups_to_open < 0):
            raise InvalidArgument("max_valid_backups_to_open must be None or an int >= 0, "
                                  f"got {self.max_valid_backups_to_open!r}")
        if not isinstance(self.schema_version, int) or self.schema_version < 1:
            raise InvalidArgument(f"schema_version must be 1 or 2, got {self.schema_version!r}")
        if self.schema_version > 2:
            raise NotSupported(f"schema_version {self.schema_version} is not supported (1 or 2)")
        if self.lock_timeout < 0 or self.lock_ttl <= 0:
            raise InvalidArgument("lock_timeout must be >= 0 and lock_ttl > 0")

    @property
    def shared_dir(self) -> str | None:
        """Where these options put shared SST/blob files; None when nothing is shared."""
        if not self.share_table_files:
            return None
        return SHARED_CHECKSUM_DIR if self.share_files_with_checksum else SHARED_DIR

    @property
    def logger(self) -> logging.Logger:
        return self.info_log or logging.getLogger("rbackup")

    def __repr__(self) -> str:  # storage_options may hold credentials: never print them
        return (f"BackupableDBOptions({os.fspath(self.backup_dir)!r}, share_table_files={self.share_table_files}, "
                f"share_files_with_checksum={self.share_files_with_checksum}, sync={self.sync}, "
                f"max_background_operations={self.max_background_operations}, "
                f"schema_version={self.schema_version})")


BackupEngineOptions = BackupableDBOptions


@dataclass(frozen=True)
class RestoreOptions:
    """How a restore treats the target, as RocksDB's RestoreOptions."""

    keep_log_files: bool = False
    """Keep WALs already in wal_dir (and move archived ones back), for a backup made
    with backup_log_files=False."""
    mode: RestoreMode = RestoreMode.PURGE_ALL_FILES
    """Which files already in the target may stay (see `rbackup.restore_plan`); RocksDB's
    default, PURGE_ALL_FILES, keeps none."""
    alternate_dirs: tuple[BackupEngine, ...] = ()
    """Engines over other backup directories, searched in order for files this backup
    excluded (RocksDB's `alternate_dirs`)."""

    def __post_init__(self) -> None:
        mode = self.mode
        if isinstance(mode, bool) or not isinstance(mode, int) or not 0 < mode <= RestoreMode.PURGE_ALL_FILES:
            raise InvalidArgument(f"RestoreOptions.mode must be a RestoreMode, got {mode!r}")
        object.__setattr__(self, "mode", RestoreMode(mode))
        object.__setattr__(self, "alternate_dirs", tuple(self.alternate_dirs))


@dataclass(frozen=True)
class BackupFileInfo:
    relative_filename: str
    """Path relative to backup_dir, e.g. "shared_checksum/000012_s..._1234.sst"."""
    size: int
    crc32c: int | None


@dataclass(frozen=True)
class BackupInfo:
    backup_id: int
    timestamp: int
    size: int
    number_files: int
    app_metadata: bytes = b""
    files: tuple[BackupFileInfo, ...] | None = None
    """Only with include_file_details=True."""
    excluded_files: tuple[str, ...] | None = None
    """Only with include_file_details=True: backup-relative paths of the files this
    backup excluded (`ni::excluded`), which restore finds in alternate directories."""


@dataclass(frozen=True)
class BackupStatistics:
    """Backups this engine object made and failed to make (RocksDB's BackupStatistics)."""

    number_success_backup: int = 0
    number_fail_backup: int = 0

    def __str__(self) -> str:  # RocksDB's ToString
        return f"# success backup: {self.number_success_backup}, # fail backup: {self.number_fail_backup}"


@dataclass(frozen=True)
class Progress:
    """Handed to progress callbacks: enough to draw a bar with a rate and an ETA."""

    operation: str
    """"backup", "restore" or "verify"."""
    bytes_done: int
    bytes_total: int
    files_done: int
    files_total: int
    backup_id: int


ProgressCallback = Callable[[Progress], Any]


@dataclass
class MaybeExcludeBackupFile:
    """One file a backup is about to copy into `shared_checksum/`, offered to the
    `exclude_files_callback` (RocksDB's MaybeExcludeBackupFile): set `exclude_decision`
    to leave it out of this backup directory, because another one holds it."""

    relative_file: str
    """Backup-relative path, e.g. `shared_checksum/000012_s<session>_1234.sst`."""
    exclude_decision: bool = False


ExcludeFilesCallback = Callable[[list[MaybeExcludeBackupFile]], Any]
"""Called once per backup with every candidate; needs schema_version=2, as in RocksDB."""
