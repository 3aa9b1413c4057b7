"""One exception hierarchy for everything rbackup raises.

The classes mirror RocksDB's Status codes so that a caller who knows the C++
BackupEngine can map behaviour one to one (a corrupt backup is `Corruption`,
an unknown id is `NotFound`, ...).  Every message names the backup id, file
or URL involved: the error is often the only thing an operator sees.
"""
from __future__ import annotations


class BackupError(Exception):
    """Base of every error rbackup raises on purpose."""


class NotFound(BackupError):
    """A backup id, a file or a directory that should exist does not."""


class Corruption(BackupError):
    """Data read back does not match what was recorded (checksum, size, format)."""


class InvalidArgument(BackupError, ValueError):
    """The caller asked for something that can never work (bad option, bad id)."""


class FileTooLarge(InvalidArgument):
    """A file is larger than the caller agreed to read whole (`BackupEnv.read_bytes`'s limit).

    Its own class because callers decide on it: a meta file that outgrew the
    limit marks that backup corrupt, but any other `InvalidArgument` is a bug or
    a bad request and must never make a backup corrupt and hand its files to
    garbage collection.  It stays an `InvalidArgument` for callers that caught that."""


class NotSupported(BackupError):
    """A valid request this store or this format version cannot honour."""


class Incomplete(BackupError):
    """An operation was stopped before it finished (interrupt, stop request)."""


class Aborted(BackupError):
    """A user callback raised; the operation was abandoned cleanly."""


class AlreadyExists(BackupError):
    """A create-if-absent found the name taken (meta commit, lock)."""


class StorageError(BackupError):
    """The backup store failed in a way not covered above (I/O, permissions, network)."""


class PermissionDenied(StorageError):
    """The store refused access (credentials, read-only directory, ACL)."""


class LockError(BackupError):
    """Another writer holds the backup directory's lock."""

    def __init__(self, message: str, holder: dict | None = None) -> None:
        super().__init__(message)
        self.holder = holder or {}
