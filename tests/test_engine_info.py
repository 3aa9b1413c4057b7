"""The small API gaps beside RocksDB's: get_latest_backup_info and backup statistics."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import rocksdict

from rbackup import BackupableDBOptions, BackupEngine, BackupEngineReadOnly, BackupError, NotFound
from rbackup.options import BackupStatistics

from .db_fixtures import fill


def test_latest_backup_info_is_the_newest_valid_one(tmp_path: Path) -> None:
    backups = str(tmp_path / "backups")
    db = rocksdict.Rdict(str(tmp_path / "db"))
    with BackupEngine(BackupableDBOptions(backups)) as engine:
        with pytest.raises(NotFound, match="no valid backup"):
            engine.get_latest_backup_info()
        fill(db, 100)
        engine.create_new_backup(db, app_metadata=b"one")
        fill(db, 100, prefix="two")
        engine.create_new_backup(db, app_metadata=b"two")
    db.close()
    with BackupEngineReadOnly(BackupableDBOptions(backups)) as ro:
        latest = ro.get_latest_backup_info(include_file_details=True)
        assert (latest.backup_id, latest.app_metadata) == (2, b"two")
        assert latest.files is not None and len(latest.files) == latest.number_files
        assert latest.excluded_files == ()
        assert ro.get_latest_backup_info().files is None
    os.unlink(os.path.join(backups, "private", "2", "CURRENT"))  # backup 2 now corrupt
    with BackupEngineReadOnly(BackupableDBOptions(backups)) as ro:
        assert ro.get_latest_backup_info().backup_id == 1


def test_backup_statistics_count_this_engines_successes_and_failures(tmp_path: Path) -> None:
    db = rocksdict.Rdict(str(tmp_path / "db"))
    fill(db, 50)
    with BackupEngine(BackupableDBOptions(str(tmp_path / "backups"))) as engine:
        assert engine.get_backup_statistics() == BackupStatistics(0, 0)
        engine.create_new_backup(db)
        engine.create_new_backup(db)
        with pytest.raises(BackupError):
            engine.create_new_backup(str(tmp_path / "no-such-db"))
        stats = engine.get_backup_statistics()
        assert (stats.number_success_backup, stats.number_fail_backup) == (2, 1)
        assert str(stats) == "# success backup: 2, # fail backup: 1"
    db.close()
    with BackupEngine(BackupableDBOptions(str(tmp_path / "backups"))) as fresh:  # per engine object, as RocksDB
        assert fresh.get_backup_statistics() == BackupStatistics(0, 0)
