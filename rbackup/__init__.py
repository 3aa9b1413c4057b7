"""rbackup: RocksDB's BackupEngine for Python."""
from .errors import (
    Aborted,
    AlreadyExists,
    BackupError,
    Corruption,
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
    Progress,
    RestoreOptions,
)
from .replicate import CopyReport, copy_backups
from .retention import RetentionPlan, RetentionPolicy

__all__ = [
    "Aborted", "AlreadyExists", "BackupEngine", "BackupEngineOptions", "BackupEngineReadOnly", "BackupEnv",
    "BackupError", "BackupFileInfo", "BackupInfo", "BackupableDB", "BackupableDBOptions", "Capabilities",
    "CopyReport", "Corruption", "FileInfo", "Incomplete", "InvalidArgument", "LockError", "NotFound",
    "NotSupported", "PermissionDenied", "Progress", "RestoreBackupableDB", "RestoreOptions", "RetentionPlan",
    "RetentionPolicy", "StorageError", "copy_backups",
]
