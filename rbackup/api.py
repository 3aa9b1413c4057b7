"""The seed API: BackupableDB wraps an open Rdict, RestoreBackupableDB restores.

These are RocksDB's older names (BackupableDB / RestoreBackupableDB) kept so
code written against them ports line for line; both are thin shells over
`BackupEngine`, where the behaviour lives.
"""
from __future__ import annotations

import os

from .engine import BackupEngine
from .options import BackupableDBOptions, BackupInfo, ProgressCallback, RestoreOptions
from .restore import VerifyResult


class _EngineAdmin:
    """What both seed classes offer over their engine: listing and upkeep."""

    _engine: BackupEngine

    @property
    def engine(self) -> BackupEngine:
        return self._engine

    def get_backup_info(self, include_file_details: bool = False) -> list[BackupInfo]:
        return self._engine.get_backup_info(include_file_details)

    def get_corrupted_backups(self) -> list[int]:
        return self._engine.get_corrupted_backups()

    def purge_old_backups(self, num_backups_to_keep: int) -> None:
        self._engine.purge_old_backups(num_backups_to_keep)

    def delete_backup(self, backup_id: int) -> None:
        self._engine.delete_backup(backup_id)

    def verify_backup(self, backup_id: int, verify_with_checksum: bool = False) -> VerifyResult:
        return self._engine.verify_backup(backup_id, verify_with_checksum)


class BackupableDB(_EngineAdmin):
    """An open `rocksdict.Rdict` that can also back itself up.

    Everything the Rdict does, this does (attribute access and the mapping
    protocol are delegated), plus the backup methods; `close()` closes the
    engine and the wrapped DB.
    """

    def __init__(self, db, options: BackupableDBOptions) -> None:
        self._db = db
        self._engine = BackupEngine(options)

    @property
    def db(self):
        return self._db

    def __getattr__(self, name: str):
        # Only called for names this class does not define: the Rdict's API.
        if name in ("_db", "_engine"):
            raise AttributeError(name)
        return getattr(self._db, name)

    def __getitem__(self, key):
        return self._db[key]

    def __setitem__(self, key, value) -> None:
        self._db[key] = value

    def __delitem__(self, key) -> None:
        del self._db[key]

    def __contains__(self, key) -> bool:
        return key in self._db

    def __iter__(self):
        return iter(self._db)

    def create_new_backup(self, flush_before_backup: bool = False, *, app_metadata: bytes | str | None = None,
                          progress_callback: ProgressCallback | None = None) -> int:
        return self._engine.create_new_backup(self._db, flush_before_backup, app_metadata=app_metadata,
                                              progress_callback=progress_callback)

    def create_new_backup_with_metadata(self, app_metadata: bytes | str, flush_before_backup: bool = False, *,
                                        progress_callback: ProgressCallback | None = None) -> int:
        return self._engine.create_new_backup(self._db, flush_before_backup, app_metadata=app_metadata,
                                              progress_callback=progress_callback)

    def garbage_collect(self) -> None:
        self._engine.garbage_collect()

    def close(self) -> None:
        try:
            self._engine.close()
        finally:
            self._db.close()

    def __enter__(self) -> BackupableDB:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class RestoreBackupableDB(_EngineAdmin):
    """Restores (and administers) the backups in a backup directory."""

    def __init__(self, options: BackupableDBOptions) -> None:
        self._engine = BackupEngine(options)

    def restore_db_from_latest_backup(self, db_dir: str | os.PathLike, wal_dir: str | os.PathLike | None = None,
                                      options: RestoreOptions = RestoreOptions(), *,
                                      progress_callback: ProgressCallback | None = None) -> None:
        self._engine.restore_db_from_latest_backup(db_dir, wal_dir, options, progress_callback=progress_callback)

    def restore_db_from_backup(self, backup_id: int, db_dir: str | os.PathLike,
                               wal_dir: str | os.PathLike | None = None,
                               options: RestoreOptions = RestoreOptions(), *,
                               progress_callback: ProgressCallback | None = None) -> None:
        self._engine.restore_db_from_backup(backup_id, db_dir, wal_dir, options, progress_callback=progress_callback)

    def close(self) -> None:
        self._engine.close()

    def __enter__(self) -> RestoreBackupableDB:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
