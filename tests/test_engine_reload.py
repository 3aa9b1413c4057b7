"""The reload a writer does under its lock: an unchanged directory keeps the state loaded at open
(issue 15: no second check of 10,000 files), any change, a leftover file included, reloads, and a
reload takes the sizes of the shared files it checked last time as known instead of a `stat` each."""
from __future__ import annotations

import os

import rocksdict

from rbackup import BackupableDBOptions, BackupEngine
from rbackup import state as state_module
from rbackup.env.local import LocalEnv

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


class KnownRecordingEnv(LocalEnv):
    """A LocalEnv that records the sizes each listing of the whole directory was given as known."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.known: list[dict[str, int]] = []

    def list_sizes(self, prefix: str = "", *, known=None) -> dict[str, int]:
        if prefix == "":
            self.known.append(dict(known or {}))
        return super().list_sizes(prefix, known=known)


def test_a_service_engine_measures_only_new_files_yet_sees_other_writers_and_leftovers(tmp_path):
    """Issue 15's service: one engine and one Rdict kept open across backups.  Its reload under the
    lock takes the sizes of the shared_checksum files its last load checked as known (no `stat` each),
    and still sees everything others did meanwhile: another writer's commit (the next id is above it,
    and the new backup holds the same shared files), a backup deleted elsewhere, a crashed writer's
    leftovers (its private/<id>/ files for the id this create takes, a temp file)."""
    db = rocksdict.Rdict(str(tmp_path / "db"))
    written = fill(db, 200)
    backups = str(tmp_path / "bk")
    env = KnownRecordingEnv(backups)
    try:
        with BackupEngine(BackupableDBOptions(backups, backup_env=env)) as service:
            assert service.create_new_backup(db) == 1
            written.update(fill(db, 100, prefix="b", seed=2))
            assert service.create_new_backup(db) == 2
            assert env.known[-1] == {}  # nothing checked yet when this reload listed
            with BackupEngine(BackupableDBOptions(backups)) as other:
                written.update(fill(db, 100, prefix="c", seed=3))
                assert other.create_new_backup(db) == 3
                other.delete_backup(1)
                theirs = {f.relative_filename for f in other.get_latest_backup_info(include_file_details=True).files}
            private = tmp_path / "bk" / "private" / "4"
            private.mkdir()
            for name in os.listdir(tmp_path / "bk" / "private" / "3"):  # what backup 4 will publish
                (private / name).write_bytes(b"left by a writer that was killed")
            temp = tmp_path / "bk" / "shared_checksum" / ".000099_sLEFTOVER.sst.tmp"
            temp.write_bytes(b"half a file")

            assert service.create_new_backup(db) == 4
            known = env.known[-1]
            assert known and all(p.startswith("shared_checksum/") for p in known)  # backup 2's files
            assert all(os.path.getsize(tmp_path / "bk" / p) == size for p, size in known.items())
            assert [b.backup_id for b in service.get_backup_info()] == [2, 3, 4]
            ours = {f.relative_filename for f in service.get_latest_backup_info(include_file_details=True).files}
            assert {p for p in ours if p.startswith("shared_checksum/")} == \
                {p for p in theirs if p.startswith("shared_checksum/")}
            service.verify_backup(4, verify_with_checksum=True)
            service.garbage_collect()
            assert not temp.exists()
            target = str(tmp_path / "restored")
            service.restore_db_from_backup(4, target)
        assert read_all(target) == written
    finally:
        db.close()
