"""rbackup: RocksDB's BackupEngine for Python."""
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

__version__ = "0.1.0"
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

__all__ = [
    "Aborted", "AlreadyExists", "BackupEngine", "BackupEngineOptions", "BackupEngineReadOnly", "BackupEnv",
    "BackupError", "BackupFileInfo", "BackupInfo", "BackupStatistics", "BackupableDB", "BackupableDBOptions",
    "Capabilities", "CopyReport", "Corruption", "FileInfo", "FileTooLarge", "Incomplete", "InvalidArgument",
    "LockError",
    "MaybeExcludeBackupFile", "NotFound", "NotSupported", "PermissionDenied", "Progress", "RestoreBackupableDB",
    "RestoreMode", "RestoreOptions", "RetentionPlan", "RetentionPolicy", "StorageError", "copy_backups",
]
