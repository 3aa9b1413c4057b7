"""`copy_backups` / `rbackup copy` with HDFS at one end: the live MiniDFSCluster of tests/hdfs_fixtures.py.

The copy code only talks to `BackupEnv`, so these tests check what only a real HDFS can show: that the
NameNode's rename publish, HDFS listings and libhdfs streams keep copies incremental, CRC-checked,
resumable and in RocksDB's format (ldb restores a directory copied back from HDFS), and that S3 on moto
pairs with HDFS both ways.  They share the session's cluster with backends/hdfs/tests/test_hdfs_live.py.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from rbackup_hdfs import HdfsEnv

from rbackup import BackupableDBOptions, BackupEngine, BackupEngineReadOnly, Corruption
from rbackup.env.registry import open_env
from rbackup.replicate import copy_backups
from rbackup.testing.doubles import CountingEnv, FaultInjectionEnv, fail_nth

from .db_fixtures import LiveDB, files_under, read_all
from .test_replicate import make_backups

pytestmark = [pytest.mark.hdfs, pytest.mark.slow]


def restored(backup_dir: str, tmp_path: Path, backup_id: int, storage_options=None) -> dict:
    target = str(tmp_path / f"restored-{uuid.uuid4().hex}")
    with BackupEngineReadOnly(BackupableDBOptions(backup_dir, storage_options=storage_options)) as engine:
        engine.verify_backup(backup_id, True)
        engine.restore_db_from_backup(backup_id, target)
    return read_all(target)


def backup_files(env: HdfsEnv) -> set[str]:
    return {f.path for f in env.list() if f.path.startswith(("meta/", "private/", "shared"))
            and ".tmp" not in f.path}


def test_local_to_hdfs_incremental_and_back_restorable_by_ldb(live_db: LiveDB, hdfs_dir: str,
                                                              tmp_path: Path) -> None:
    src, back = str(tmp_path / "src"), str(tmp_path / "back")
    make_backups(live_db, src, 2)

    report = copy_backups(src, hdfs_dir, [1])
    assert report.copied == [1] and report.files_reused == 0
    with BackupEngineReadOnly(BackupableDBOptions(src)) as engine:
        first = {f.relative_filename for f in engine.get_backup_info(True)[0].files}
    counting = CountingEnv(HdfsEnv(hdfs_dir))
    report = copy_backups(src, counting)
    assert report.copied == [2] and report.already_present == [1] and report.files_reused >= 1
    # Backup 1's shared files, already on HDFS, were neither read back nor sent again.
    assert not {p for p in counting.writes if p.startswith("shared")} & first
    assert copy_backups(src, hdfs_dir).files_copied == 0

    hdfs = HdfsEnv(hdfs_dir)
    assert backup_files(hdfs) == {f for f in files_under(src) if f.startswith(("meta/", "private/", "shared"))}
    for backup_id in (1, 2):
        assert hdfs.read_bytes(f"meta/{backup_id}", 1 << 20) == Path(src, "meta", str(backup_id)).read_bytes()
    assert restored(hdfs_dir, tmp_path, 2) == live_db.written

    # Back from HDFS, incrementally too: the local copy is RocksDB's format, byte for byte.
    assert copy_backups(hdfs_dir, back, [1]).copied == [1]
    report = copy_backups(hdfs_dir, back)
    assert report.copied == [2] and report.files_reused >= 1
    for backup_id in (1, 2):
        assert Path(back, "meta", str(backup_id)).read_bytes() == Path(src, "meta", str(backup_id)).read_bytes()
    if shutil.which("ldb") is None:
        pytest.skip("Debian's rocksdb-tools (ldb) is not installed: the copy was checked by rbackup only")
    target = str(tmp_path / "by-ldb")
    out = subprocess.run(["ldb", "--ignore_unknown_options", f"--db={target}", f"--backup_dir={back}", "restore"],
                         capture_output=True, text=True, timeout=120, check=False)
    assert "restore from backup OK" in out.stdout + out.stderr
    shutil.copy(Path(back, "private", "2", "rocksdict-config.json"), target)  # see test_interop_ldb
    assert read_all(target) == live_db.written


def test_crc_is_checked_both_ways_and_nothing_bad_is_published(live_db: LiveDB, hdfs_dir: str,
                                                               tmp_path: Path) -> None:
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    make_backups(live_db, src, 1)
    sst = next(Path(src, "shared_checksum").iterdir())
    good = sst.read_bytes()
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF  # same size, different bytes: only the CRC can tell
    sst.write_bytes(bytes(bad))
    with pytest.raises(Corruption, match=f"backup 1: checksum mismatch in .*{sst.name}"):
        copy_backups(src, hdfs_dir)
    hdfs = HdfsEnv(hdfs_dir)
    assert not {f"shared_checksum/{sst.name}", "meta/1"} & backup_files(hdfs)

    sst.write_bytes(good)
    assert copy_backups(src, hdfs_dir).copied == [1]
    with hdfs.fs.open(f"{hdfs.root}/shared_checksum/{sst.name}", "wb") as f:  # damaged on HDFS itself
        f.write(bytes(bad))
    with pytest.raises(Corruption, match=f"backup 1: checksum mismatch in .*{sst.name}"):
        copy_backups(hdfs_dir, dst)
    assert not Path(dst, "shared_checksum", sst.name).exists() and not Path(dst, "meta", "1").exists()


def test_interrupted_copy_to_hdfs_resumes_without_resending(live_db: LiveDB, hdfs_dir: str,
                                                            tmp_path: Path) -> None:
    src = str(tmp_path / "src")
    make_backups(live_db, src, 1)
    faulty = FaultInjectionEnv(HdfsEnv(hdfs_dir), fail_on=fail_nth("commit", 2))
    with pytest.raises(Exception, match="injected fault"):
        copy_backups(src, faulty, workers=1)
    published = backup_files(HdfsEnv(hdfs_dir))
    assert len(published) == 2 and "meta/1" not in published  # the meta file is committed last

    counting = CountingEnv(HdfsEnv(hdfs_dir))
    report = copy_backups(src, counting)
    assert report.copied == [1] and report.files_resumed == 2
    assert not published & set(counting.writes)
    assert restored(hdfs_dir, tmp_path, 1) == live_db.written


def test_cli_copy_local_hdfs_local(live_db: LiveDB, hdfs_dir: str, tmp_path: Path) -> None:
    from .test_cli import ok

    live_db.db.close()
    src, back = str(tmp_path / "src"), str(tmp_path / "back")
    for _ in range(2):
        ok("create", "--db", live_db.path, "--backup-dir", src, "-q")
    assert ok("copy", "--from", src, "--to", hdfs_dir, "--backup-id", "1").stdout.startswith("copied backups 1: ")
    doc = json.loads(ok("copy", "--from", src, "--to", hdfs_dir, "--json").stdout)
    assert doc["copied"] == [2] and doc["already_present"] == [1]
    doc = json.loads(ok("copy", "--from", hdfs_dir, "--to", back, "--json").stdout)
    assert doc["copied"] == [1, 2] and doc["files_reused"] >= 1
    ok("restore", "--backup-dir", back, "--db", str(tmp_path / "restored"), "-q")
    assert read_all(str(tmp_path / "restored")) == live_db.written


def test_copy_hdfs_to_s3_and_s3_to_hdfs(live_db: LiveDB, hdfs_dir: str, tmp_path: Path,
                                        s3_bucket_url) -> None:
    url, options = s3_bucket_url
    src = str(tmp_path / "src")
    make_backups(live_db, src, 2)
    copy_backups(src, f"{hdfs_dir}/a", [1])
    assert copy_backups(f"{hdfs_dir}/a", f"{url}/b", destination_storage_options=options).copied == [1]
    copy_backups(src, f"{hdfs_dir}/a")
    report = copy_backups(f"{hdfs_dir}/a", f"{url}/b", destination_storage_options=options)
    assert report.copied == [2] and report.files_reused >= 1
    with open_env(f"{url}/b", storage_options=options) as s3, open_env(f"{hdfs_dir}/c") as c:
        assert copy_backups(s3, c).copied == [1, 2]
    for backup_id in (1, 2):
        assert HdfsEnv(f"{hdfs_dir}/c").read_bytes(f"meta/{backup_id}", 1 << 20) == \
            Path(src, "meta", str(backup_id)).read_bytes()
    assert restored(f"{hdfs_dir}/c", tmp_path, 2) == live_db.written
    with BackupEngine(BackupableDBOptions(f"{hdfs_dir}/c")) as engine:  # a writable engine accepts the copy
        engine.purge_old_backups(1)
        assert [b.backup_id for b in engine.get_backup_info()] == [2]
