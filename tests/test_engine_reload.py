"""The reload a writer does under its lock: an unchanged directory keeps the state loaded at open
(issue 15: no second check of 10,000 files), and any change, a leftover file included, reloads."""
from __future__ import annotations

import os

import rocksdict

from rbackup import BackupableDBOptions, BackupEngine
from rbackup import state as state_module

from .db_fixtures import fill, read_all


def test_a_leftover_of_a_crashed_writer_after_the_open_is_seen_by_the_reload(tmp_path):
    """Files a writer that died mid-create left after this engine's open (its private/<id>/ for the id
    this create takes) are in the reload's listing, so they are collected before the copy; reusing
    the state loaded at open would make the copy collide with them."""
    db = rocksdict.Rdict(str(tmp_path / "db"))
    written = fill(db, 200)
    backups = str(tmp_path / "bk")
    try:
        with BackupEngine(BackupableDBOptions(backups)) as first:
            first.create_new_backup(db)
        with BackupEngine(BackupableDBOptions(backups)) as eng:
            private = tmp_path / "bk" / "private" / "2"
            private.mkdir()
            for name in os.listdir(tmp_path / "bk" / "private" / "1"):  # what backup 2 will publish
                (private / name).write_bytes(b"left by a writer that was killed")
            assert eng.create_new_backup(db) == 2
            eng.verify_backup(2, verify_with_checksum=True)
            target = str(tmp_path / "restored")
            eng.restore_db_from_backup(2, target)
        assert read_all(target) == written
    finally:
        db.close()


def test_an_unchanged_directory_is_not_checked_again_under_the_lock(tmp_path, monkeypatch):
    db = rocksdict.Rdict(str(tmp_path / "db"))
    fill(db, 50)
    backups = str(tmp_path / "bk")
    checks: list[int] = []
    real = state_module._FileCheck

    class Counting(real):  # type: ignore[misc, valid-type]
        def __init__(self, *args, **kwargs) -> None:
            checks.append(1)
            super().__init__(*args, **kwargs)

    try:
        with BackupEngine(BackupableDBOptions(backups)) as eng:
            eng.create_new_backup(db)
        monkeypatch.setattr(state_module, "_FileCheck", Counting)
        with BackupEngine(BackupableDBOptions(backups)) as eng:
            assert checks == [1]  # the open
            eng.create_new_backup(db)
            assert checks == [1]  # the lock's reload found the same listing
            eng.get_backup_info()
            assert checks == [1, 1]  # after a write: loaded again
    finally:
        db.close()
