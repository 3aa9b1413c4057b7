"""rbackup: RocksDB's BackupEngine for Python.

The public names below are imported on first use (PEP 562), so that `python -m rbackup`
and the `rbackup` command load only the modules their command needs: a `create` has no
use for retention, replication or restore."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import (
    Aborted,
    AlreadyExists,
    BackupError,
    Corruption,
    FileTooLarge,
    Incomplete,
    InvalidArgument,
    LockError,
    NotFound,
    NotSupported,
    PermissionDenied,
    StorageError,
)
from .lazy import lazy_exports

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .api import BackupableDB, RestoreBackupableDB
    from .engine import BackupEngine, BackupEngineReadOnly
    from .env.base import BackupEnv, Capabilities, FileInfo
    from .options import (
        BackupableDBOptions,
        BackupEngineOptions,
        BackupFileInfo,
        BackupInfo,
        BackupStatistics,
        MaybeExcludeBackupFile,
        Progress,
        RestoreOptions,
    )
    from .replicate import CopyReport, copy_backups
    from .restore_plan import RestoreMode
    from .retention import RetentionPlan, RetentionPolicy

_LAZY = {
    "BackupableDB": "api", "RestoreBackupableDB": "api",
    "BackupEngine": "engine", "BackupEngineReadOnly": "engine",
    "BackupEnv": "env.base", "Capabilities": "env.base", "FileInfo": "env.base",
    "BackupableDBOptions": "options", "BackupEngineOptions": "options", "BackupFileInfo": "options",
    "BackupInfo": "options", "BackupStatistics": "options", "MaybeExcludeBackupFile": "options",
    "Progress": "options", "RestoreOptions": "options",
    "CopyReport": "replicate", "copy_backups": "replicate",
    "RestoreMode": "restore_plan",
    "RetentionPlan": "retention", "RetentionPolicy": "retention",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)


__all__ = [
    "Aborted", "AlreadyExists", "BackupEngine", "BackupEngineOptions", "BackupEngineReadOnly", "BackupEnv",
    "BackupError", "BackupFileInfo", "BackupInfo", "BackupStatistics", "BackupableDB", "BackupableDBOptions",
    "Capabilities", "CopyReport", "Corruption", "FileInfo", "FileTooLarge", "Incomplete", "InvalidArgument",
    "LockError",
    "MaybeExcludeBackupFile", "NotFound", "NotSupported", "PermissionDenied", "Progress", "RestoreBackupableDB",
    "RestoreMode", "RestoreOptions", "RetentionPlan", "RetentionPolicy", "StorageError", "copy_backups",
]
