"""Excluded files and alternate directories (RocksDB's exclude_files_callback and
RestoreOptions.alternate_dirs): a backup that leaves out files another backup directory
holds is restored and opened through that directory, on local disk and S3, and its
schema-2 `ni::excluded` entries are read by RocksDB 11.1.2's own engine (rbpeer)."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from rbackup import (
    Aborted,
    BackupableDBOptions,
    BackupEngine,
    BackupEngineReadOnly,
    Corruption,
    InvalidArgument,
    MaybeExcludeBackupFile,
    NotFound,
    RestoreMode,
    RestoreOptions,
)

from .crash_worker import add_ssts, read_db

ROOT = Path(__file__).resolve().parent.parent


def exclude_all(files: list[MaybeExcludeBackupFile]) -> None:
    for f in files:
        f.exclude_decision = True


def excluding_backup(tmp_path: Path, url: str | None = None, so: dict[str, Any] | None = None
                     ) -> tuple[BackupEngine, BackupEngine, dict[str, bytes], str]:
    """`primary` holds a full backup of the DB; `lean` (schema 2) a backup of the same DB
    that excludes every shared file it would copy."""
    db = str(tmp_path / "db")
    add_ssts(db, 3, first=0)
    primary = BackupEngine(BackupableDBOptions(str(tmp_path / "primary")))
    primary.create_new_backup(db)
    lean = BackupEngine(BackupableDBOptions(url or str(tmp_path / "lean"), schema_version=2, storage_options=so))
    lean.create_new_backup(db, exclude_files_callback=exclude_all)
    return primary, lean, read_db(db), db


def test_excluded_files_are_recorded_not_copied_and_listed(tmp_path: Path) -> None:
    primary, lean, _, _ = excluding_backup(tmp_path)
    info = lean.get_latest_backup_info(include_file_details=True)
    full = primary.get_latest_backup_info(include_file_details=True)
    assert info.excluded_files is not None and len(info.excluded_files) == 3
    assert all(p.startswith("shared_checksum/") for p in info.excluded_files)
    assert {f.relative_filename for f in full.files or ()} == \
        {f.relative_filename for f in info.files or ()} | set(info.excluded_files)
    assert info.number_files == full.number_files - 3 and info.size < full.size
    assert os.listdir(tmp_path / "lean" / "shared_checksum") == []
    meta = (tmp_path / "lean" / "meta" / "1").read_text().splitlines()
    assert meta[0] == "schema_version 2.1"
    assert meta[-3:] == [f"{p} ni::excluded true" for p in info.excluded_files]
    lean.verify_backup(1, True)  # verify checks what the directory holds, as RocksDB
    assert lean.get_corrupted_backups() == []


def test_restore_and_open_find_excluded_files_in_alternate_dirs(tmp_path: Path) -> None:
    primary, lean, data, _ = excluding_backup(tmp_path)
    with pytest.raises(InvalidArgument, match="alternate_dirs"):
        lean.restore_db_from_backup(1, tmp_path / "t0")
    empty = BackupEngine(BackupableDBOptions(str(tmp_path / "empty")))
    with pytest.raises(NotFound, match=r"backup 1: excluded file shared_checksum/\S+ is in none of the alternate"):
        lean.restore_db_from_backup(1, tmp_path / "t1", options=RestoreOptions(alternate_dirs=(empty,)))
    lean.restore_db_from_backup(1, tmp_path / "t2", options=RestoreOptions(alternate_dirs=(empty, primary)))
    lean.verify_backup(1, True, alternate_dirs=[primary])
    with pytest.raises(NotFound, match="in none of the alternate"):
        lean.verify_backup(1, alternate_dirs=[empty])
    victim = next(iter((tmp_path / "primary" / "shared_checksum").iterdir()))
    data_bytes = bytearray(victim.read_bytes())
    data_bytes[len(data_bytes) // 2] ^= 0xFF
    victim.write_bytes(bytes(data_bytes))
    lean.verify_backup(1, alternate_dirs=[primary])  # same size: only the checksum can tell
    with pytest.raises(Corruption, match="checksum mismatch in excluded file"):
        lean.verify_backup(1, True, alternate_dirs=[primary])
    data_bytes[len(data_bytes) // 2] ^= 0xFF
    victim.write_bytes(bytes(data_bytes))
    assert read_db(str(tmp_path / "t2")) == data
    with pytest.raises(InvalidArgument):
        lean.open_backup(1)
    with lean.open_backup(1, alternate_dirs=[primary]) as opened:
        assert dict(opened.items()) == data


def test_keep_latest_restores_excluded_files_from_the_target_itself(tmp_path: Path) -> None:
    """RocksDB: with kKeepLatestDbSessionIdFiles a matching DB file stands in for an excluded one."""
    primary, lean, data, _ = excluding_backup(tmp_path)
    target = tmp_path / "target"
    primary.restore_db_from_backup(1, target)
    keep = RestoreOptions(mode=RestoreMode.KEEP_LATEST_DB_SESSION_ID_FILES)
    lean.restore_db_from_backup(1, target, options=keep)
    assert read_db(str(target)) == data
    os.unlink(target / min(n for n in os.listdir(target) if n.endswith(".sst")))
    with pytest.raises(InvalidArgument, match="excluded"):
        lean.restore_db_from_backup(1, target, options=keep)


def test_a_raising_exclude_callback_aborts_and_schema_1_refuses_it(tmp_path: Path) -> None:
    db = str(tmp_path / "db")
    add_ssts(db, 1, first=0)

    def boom(files: list[MaybeExcludeBackupFile]) -> None:
        raise RuntimeError("no")

    with BackupEngine(BackupableDBOptions(str(tmp_path / "b2"), schema_version=2)) as engine:
        with pytest.raises(Aborted, match="exclude_files_callback raised RuntimeError"):
            engine.create_new_backup(db, exclude_files_callback=boom)
        assert engine.get_backup_info() == [] and os.listdir(tmp_path / "b2" / "shared_checksum") == []
    with BackupEngine(BackupableDBOptions(str(tmp_path / "b1"))) as engine:
        with pytest.raises(InvalidArgument, match="schema_version=2"):
            engine.create_new_backup(db, exclude_files_callback=exclude_all)


def test_excluding_backup_on_s3_restores_and_opens_through_a_local_alternate(
        s3_bucket_url: tuple[str, dict[str, Any]], tmp_path: Path) -> None:
    bucket_url, so = s3_bucket_url
    primary, lean, data, _ = excluding_backup(tmp_path, f"{bucket_url}/lean", so)
    assert len(lean.get_latest_backup_info(include_file_details=True).excluded_files or ()) == 3
    lean.restore_db_from_backup(1, tmp_path / "t", options=RestoreOptions(alternate_dirs=(primary,)))
    assert read_db(str(tmp_path / "t")) == data
    with lean.open_backup(1, alternate_dirs=[primary], cache_dir=tmp_path / "cache") as opened:
        assert dict(opened.items()) == data


# -- RocksDB 11.1.2's own engine ------------------------------------------------------------------
def rbpeer_path() -> Path | None:
    env = os.environ.get("RBACKUP_RBPEER")
    path = Path(env) if env else ROOT.parent / "shared" / "tools" / "rocksdb11" / "rbpeer"
    return path if path.is_file() and os.access(path, os.X_OK) else None


def rbpeer(*args: str) -> subprocess.CompletedProcess[str]:
    path = rbpeer_path()
    assert path is not None
    return subprocess.run([str(path), *args], capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.skipif(rbpeer_path() is None, reason="rbpeer (RocksDB 11.1.2's engine) not found at "
                    "../shared/tools/rocksdb11/rbpeer beside the repository nor in $RBACKUP_RBPEER")
def test_rocksdb_11_reads_our_excluded_entries(tmp_path: Path) -> None:
    """RocksDB 11.1.2 lists our excluding backup as valid with the excluded files left out of
    its count and files, verifies it, and refuses to restore it without alternate_dirs
    (rbpeer cannot pass any) exactly because of the excluded files."""
    _, lean, _, _ = excluding_backup(tmp_path)
    info = lean.get_latest_backup_info(include_file_details=True)
    ours = lean.get_backup_info(include_file_details=True)[0]
    lean.close()
    listed = rbpeer("list", str(tmp_path / "lean"))
    assert listed.returncode == 0, listed.stderr
    report = json.loads(listed.stdout)
    assert report["corrupted"] == []
    [backup] = report["backups"]
    assert backup["number_files"] == info.number_files and backup["size"] == info.size
    assert {f["name"] for f in backup["files"]} == {f.relative_filename for f in ours.files or ()}
    verified = rbpeer("verify", str(tmp_path / "lean"), "1", "--checksum")
    assert verified.returncode == 0, verified.stderr
    restored = rbpeer("restore", str(tmp_path / "lean"), "1", str(tmp_path / "by-rocksdb"))
    assert restored.returncode == 1 and "Invalid argument" in restored.stderr, restored.stderr

    # and the other way round: a schema-2 backup RocksDB 11 writes (`schema_version 2.1`) is ours to restore
    theirs_db = str(tmp_path / "theirs-db")
    for args in (("makedb", theirs_db, "500", "2", "0"), ("backup", theirs_db, str(tmp_path / "theirs"), "--schema",
                                                           "2"), ("dump", theirs_db, str(tmp_path / "a.txt"))):
        done = rbpeer(*args)
        assert done.returncode == 0, done.stderr
    assert (tmp_path / "theirs" / "meta" / "1").read_text().startswith("schema_version 2.1\n")
    with BackupEngineReadOnly(BackupableDBOptions(str(tmp_path / "theirs"))) as theirs:
        assert theirs.get_corrupted_backups() == []
        theirs.restore_db_from_backup(1, tmp_path / "from-theirs", options=RestoreOptions(
            mode=RestoreMode.KEEP_LATEST_DB_SESSION_ID_FILES))
    dumped = rbpeer("dump", str(tmp_path / "from-theirs"), str(tmp_path / "b.txt"))
    assert dumped.returncode == 0, dumped.stderr
    assert (tmp_path / "a.txt").read_text() == (tmp_path / "b.txt").read_text()


def test_listing_shows_what_each_backup_excludes(tmp_path: Path) -> None:
    from rbackup.cli_format import backup_json, list_table

    _, lean, _, _ = excluding_backup(tmp_path)
    info = lean.get_latest_backup_info(include_file_details=True)
    assert backup_json(info)["excluded_files"] == list(info.excluded_files or ())
    table = list_table([info], {})
    for path in info.excluded_files or ():
        assert f"{path}  " in table and table.split(path, 1)[1].split("\n", 1)[0].strip() == "-  excluded"
    assert "excluded_files" not in backup_json(lean.get_latest_backup_info())
