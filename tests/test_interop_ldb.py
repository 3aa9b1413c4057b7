"""Interoperability with RocksDB's own BackupEngine, through Debian's real `ldb` 7.8.3.

Both directions: rbackup's backups restore with `ldb restore`, `ldb backup`'s
are listed, verified and restored by rbackup, and each side adds an
incremental backup to the other's directory reusing its shared files.
"""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import rocksdict

from rbackup import BackupableDBOptions, BackupEngine, BackupEngineReadOnly

from .db_fixtures import files_under, fill, ldb_compatible_options, read_all

LDB = shutil.which("ldb")
pytestmark = pytest.mark.skipif(LDB is None, reason="Debian's rocksdb-tools (ldb) is not installed")


def ldb(*args: str) -> str:
    proc = subprocess.run([LDB, "--ignore_unknown_options", *args], capture_output=True, text=True, errors="replace",
                          timeout=120)
    assert proc.returncode == 0, f"ldb {' '.join(args)} failed: {proc.stdout}{proc.stderr}"
    return proc.stdout


def make_ldb_db(path: str, n: int = 3000, *, prefix: str = "k", seed: int = 0) -> dict:
    """A raw-mode, format_version 5 DB that ldb 7.8.3 can open, closed."""
    opts = ldb_compatible_options()
    db = rocksdict.Rdict(path, opts, column_families={"default": opts} if os.path.exists(path) else None)
    written = fill(db, n, prefix=prefix, seed=seed, raw=True, value_size=200)
    db.close()
    return written


def shared_files(backup_dir: str) -> set[str]:
    return {f for f in files_under(backup_dir) if f.startswith("shared_checksum/")}


def test_rbackup_backup_restores_with_ldb(tmp_path, live_db):
    """Non-raw rocksdict DB (format_version 6): ldb restores it without opening SSTs."""
    backup_dir, target = str(tmp_path / "bk"), str(tmp_path / "restored")
    with BackupEngine.open(BackupableDBOptions(backup_dir)) as eng:
        eng.create_new_backup(live_db.db)
        live_db.add(300, prefix="second")
        eng.create_new_backup(live_db.db, app_metadata=b"from rbackup")
    out = ldb(f"--db={target}", f"--backup_dir={backup_dir}", "restore")
    assert "restore from backup OK" in out
    # ldb restores only RocksDB's files: rocksdict-config.json (kept unlisted in
    # private/<id>/ so that ldb accepts the backup) is what tells rocksdict the
    # DB is non-raw; without it rocksdict refuses the comparator.
    assert "rocksdict-config.json" not in os.listdir(target)
    with pytest.raises(Exception, match="comparator"):
        read_all(target)
    shutil.copy(os.path.join(backup_dir, "private/2/rocksdict-config.json"), target)
    assert read_all(target) == live_db.written


@pytest.mark.parametrize("schema_version", [1, 2])
def test_raw_db_backup_restores_with_ldb_and_reads_back_with_ldb(tmp_path, schema_version):
    db_path, backup_dir, target = str(tmp_path / "db"), str(tmp_path / "bk"), str(tmp_path / "r")
    written = make_ldb_db(db_path)
    with BackupEngine.open(BackupableDBOptions(backup_dir, schema_version=schema_version)) as eng:
        eng.create_new_backup(db_path)
    ldb(f"--db={target}", f"--backup_dir={backup_dir}", "restore")
    assert read_all(target, raw=True) == {k: v for k, v in written.items()}
    # and ldb itself reads the restored DB
    assert ldb(f"--db={target}", "--value_hex", "get", "k00000042").strip() == "0x" + written["k00000042"].hex().upper()


def test_ldb_backup_is_listed_verified_and_restored_by_rbackup(tmp_path):
    db_path, backup_dir, target = str(tmp_path / "db"), str(tmp_path / "bk"), str(tmp_path / "r")
    written = make_ldb_db(db_path)
    assert "create new backup OK" in ldb(f"--db={db_path}", f"--backup_dir={backup_dir}", "backup")
    with BackupEngineReadOnly.open(BackupableDBOptions(backup_dir)) as eng:
        infos = eng.get_backup_info(include_file_details=True)
        assert [i.backup_id for i in infos] == [1] and eng.get_corrupted_backups() == []
        assert infos[0].number_files == len(infos[0].files) >= 4
        eng.verify_backup(1, verify_with_checksum=True)
        eng.restore_db_from_latest_backup(target)
    assert read_all(target, raw=True) == written


def test_each_side_extends_the_others_directory(tmp_path):
    db_path, backup_dir = str(tmp_path / "db"), str(tmp_path / "bk")
    written = make_ldb_db(db_path)

    # ldb first, then an rbackup incremental that reuses ldb's SSTs
    ldb(f"--db={db_path}", f"--backup_dir={backup_dir}", "backup")
    after_ldb = shared_files(backup_dir)
    with BackupEngine.open(BackupableDBOptions(backup_dir)) as eng:
        assert eng.create_new_backup(db_path) == 2
        info = {i.backup_id: i for i in eng.get_backup_info(include_file_details=True)}
    reused = {f.relative_filename for f in info[2].files} & after_ldb
    assert reused == after_ldb  # every SST ldb stored was reused, none copied twice
    assert shared_files(backup_dir) == after_ldb

    # new data, then ldb adds backup 3 into the directory rbackup just wrote to
    written.update(make_ldb_db(db_path, 500, prefix="new", seed=4))
    with BackupEngine.open(BackupableDBOptions(backup_dir)) as eng:
        assert eng.create_new_backup(db_path) == 3
    before_ldb = shared_files(backup_dir)
    ldb(f"--db={db_path}", f"--backup_dir={backup_dir}", "backup")
    assert shared_files(backup_dir) - before_ldb <= set(), "ldb reused rbackup's shared files"  # nothing new to copy

    with BackupEngineReadOnly.open(BackupableDBOptions(backup_dir)) as eng:
        assert [i.backup_id for i in eng.get_backup_info()] == [1, 2, 3, 4]
        for backup_id in (2, 3, 4):
            eng.verify_backup(backup_id, verify_with_checksum=True)
        eng.restore_db_from_backup(3, str(tmp_path / "r3"))
    assert read_all(str(tmp_path / "r3"), raw=True) == written
    target = str(tmp_path / "ldb_latest")
    ldb(f"--db={target}", f"--backup_dir={backup_dir}", "restore")
    assert read_all(target, raw=True) == written
