"""Incremental restore (RestoreOptions.mode) on real DBs: what is kept, what is copied, and that
the result is exactly the backup, on local disk and on S3 (moto)."""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import rocksdict

from rbackup import BackupableDBOptions, BackupEngine, Progress, RestoreMode, RestoreOptions
from rbackup.format.naming import FileKind, classify

from .crash_worker import add_ssts, read_db

KEEP = RestoreOptions(mode=RestoreMode.KEEP_LATEST_DB_SESSION_ID_FILES)
VERIFY = RestoreOptions(mode=RestoreMode.VERIFY_CHECKSUM)


def ssts(path: str | Path) -> dict[str, int]:
    """SST name -> inode, each SST also hard-linked into a side directory: that pins the
    inode (no reuse by a replacement), so a kept file is exactly one with the same inode."""
    side = Path(f"{path}.pins")
    side.mkdir(exist_ok=True)
    out = {}
    for e in os.scandir(path):
        if classify(e.name) is FileKind.TABLE:
            pin = side / f"{e.name}.{e.inode()}"
            if not pin.exists():
                os.link(e.path, pin)
            out[e.name] = e.inode()
    return out


def restore(engine: BackupEngine, backup_id: int, target: Path, options: RestoreOptions) -> int:
    """Restore and return the bytes the restore copied (its progress total)."""
    seen: list[Progress] = []
    engine.restore_db_from_backup(backup_id, target, options=options, progress_callback=seen.append)
    return seen[-1].bytes_total


@pytest.fixture
def backed_up(tmp_path: Path) -> tuple[BackupEngine, str, dict[str, bytes], Path]:
    """Backup 1 of a DB of 6 SSTs, restored in full into `target`."""
    db = str(tmp_path / "db")
    add_ssts(db, 6, first=0)
    engine = BackupEngine(BackupableDBOptions(str(tmp_path / "backups")))
    assert engine.create_new_backup(db) == 1
    target = tmp_path / "target"
    engine.restore_db_from_backup(1, target)
    yield engine, db, read_db(db), target
    engine.close()


def test_keep_latest_copies_only_what_the_target_lacks(backed_up: Any) -> None:
    engine, _, data, target = backed_up
    before = ssts(target)
    victim = sorted(before)[2]
    victim_size = os.path.getsize(target / victim)
    os.unlink(target / victim)
    (target / "999999.sst").write_bytes(b"not the backup's")  # a stray file the backup lacks
    copied = restore(engine, 1, target, KEEP)

    after = ssts(target)
    assert set(after) == set(before)
    assert {n for n in after if after[n] != before[n]} == {victim}  # every other SST kept in place
    small = sum(os.path.getsize(target / n) for n in os.listdir(target) if classify(n) is not FileKind.TABLE
                and n != "LOCK")
    assert victim_size <= copied <= victim_size + small
    assert read_db(str(target)) == data


def test_keep_latest_replaces_a_truncated_sst_and_trusts_a_same_size_one(backed_up: Any) -> None:
    """RocksDB's keep-latest trusts session id and size; a same-size damaged SST needs VERIFY."""
    engine, _, data, target = backed_up
    names = sorted(ssts(target))
    truncated, damaged = target / names[0], target / names[1]
    with open(truncated, "r+b") as fh:
        fh.truncate(os.path.getsize(truncated) - 10)
    with open(damaged, "r+b") as fh:  # a flipped byte in the data blocks, session id intact
        fh.seek(100)
        byte = fh.read(1)
        fh.seek(100)
        fh.write(bytes([byte[0] ^ 0xFF]))
    damaged_inode = ssts(target)[names[1]]
    restore(engine, 1, target, KEEP)
    assert os.path.getsize(truncated) == os.path.getsize(Path(engine.env.local_path("")) / _backup_path(
        engine, names[0]))
    assert os.stat(damaged).st_ino == damaged_inode  # kept: keep-latest does not read data

    restore(engine, 1, target, VERIFY)
    assert os.stat(damaged).st_ino != damaged_inode  # the crc caught it
    assert read_db(str(target)) == data


def _backup_path(engine: BackupEngine, db_name: str) -> str:
    info = engine.get_backup_info(include_file_details=True)[0]
    assert info.files is not None
    return next(f.relative_filename for f in info.files
                if f.relative_filename.rsplit("/", 1)[-1].split("_")[0] == db_name.split(".")[0])


def test_verify_keeps_equal_files_and_restores_an_older_backup_over_a_newer_db(tmp_path: Path) -> None:
    db = str(tmp_path / "db")
    add_ssts(db, 4, first=0)
    engine = BackupEngine(BackupableDBOptions(str(tmp_path / "backups")))
    engine.create_new_backup(db)
    old = read_db(db)
    add_ssts(db, 3, first=4)
    engine.create_new_backup(db)
    target = tmp_path / "target"
    engine.restore_db_from_backup(2, target)
    newer = ssts(target)
    copied = restore(engine, 1, target, VERIFY)
    after = ssts(target)
    assert len(after) == 4 and all(after[n] == newer[n] for n in after)  # the 4 shared SSTs stayed
    assert copied < min(os.path.getsize(target / n) for n in after)  # only the small files moved
    assert read_db(str(target)) == old
    engine.close()


def test_full_restore_is_the_default_and_copies_everything(backed_up: Any) -> None:
    engine, _, data, target = backed_up
    before = ssts(target)
    copied = restore(engine, 1, target, RestoreOptions())
    after = ssts(target)
    assert all(after[n] != before[n] for n in after)
    assert copied >= sum(os.path.getsize(target / n) for n in after)
    assert read_db(str(target)) == data


def test_keep_latest_falls_back_to_copying_unshared_names_and_says_so(tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    db = str(tmp_path / "db")
    add_ssts(db, 2, first=0)
    engine = BackupEngine(BackupableDBOptions(str(tmp_path / "backups"), share_files_with_checksum=False))
    engine.create_new_backup(db)
    target = tmp_path / "target"
    engine.restore_db_from_backup(1, target)
    before = ssts(target)
    with caplog.at_level(logging.INFO, logger="rbackup"):
        restore(engine, 1, target, KEEP)
    assert all(ssts(target)[n] != before[n] for n in before)
    assert "keep-latest cannot judge it" in caplog.text
    assert read_db(str(target)) == read_db(db)
    engine.close()


def test_incremental_restore_into_an_empty_or_missing_target(backed_up: Any, tmp_path: Path) -> None:
    engine, _, data, _ = backed_up
    for mode in (KEEP, VERIFY):
        target = tmp_path / f"new-{int(mode.mode)}"
        restore(engine, 1, target, mode)
        assert read_db(str(target)) == data


def test_incremental_restore_from_s3(s3_bucket_url: tuple[str, dict[str, Any]], tmp_path: Path) -> None:
    bucket_url, so = s3_bucket_url
    db = str(tmp_path / "db")
    add_ssts(db, 4, first=0)
    engine = BackupEngine(BackupableDBOptions(f"{bucket_url}/incr", storage_options=so))
    engine.create_new_backup(db)
    target = tmp_path / "target"
    full = restore(engine, 1, target, RestoreOptions())
    before = ssts(target)
    victim = min(before)
    victim_size = os.path.getsize(target / victim)
    os.unlink(target / victim)
    copied = restore(engine, 1, target, KEEP)
    assert victim_size <= copied < full - victim_size
    after = ssts(target)
    assert {n for n in after if after[n] != before[n]} == {victim}
    assert read_db(str(target)) == read_db(db)
    engine.close()


def test_the_restored_db_opens_read_write_and_takes_writes(backed_up: Any) -> None:
    engine, _, data, target = backed_up
    os.unlink(target / min(ssts(target)))
    restore(engine, 1, target, KEEP)
    db = rocksdict.Rdict(str(target))
    db["after"] = b"x"
    db.close()
    assert read_db(str(target)) == {**data, "after": b"x"}
    shutil.rmtree(target)
