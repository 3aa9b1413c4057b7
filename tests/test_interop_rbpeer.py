"""Interoperability with RocksDB 11.1.2's own BackupEngine (rbpeer), both directions.

rbackup's backups (schema 1 and 2, by path) are listed, verified with checksums, restored and
extended by the peer; the peer's backups (of a format_version 7 DB) are listed, verified, restored
and extended by rbackup; each side deletes the other's backups and the rest stay whole.  Every
restore is compared, key by key and column family by column family, through the peer's own reads.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import rocksdict

from rbackup import BackupableDBOptions, BackupEngine

from .db_fixtures import files_under, fill, ldb_compatible_options
from .rbpeer import needs_rbpeer, peer, peer_dump

pytestmark = [needs_rbpeer, pytest.mark.slow]


def shared_files(backup_dir: str) -> set[str]:
    return {f for f in files_under(backup_dir) if f.startswith(("shared_checksum/", "shared/"))}


def peer_backups(backup_dir: str) -> dict[int, set[str]]:
    """Backup id -> the files the peer says it holds."""
    listing = peer("list", backup_dir)
    assert listing["corrupted"] == []
    return {b["id"]: {f["name"] for f in b["files"]} for b in listing["backups"]}


def engine(backup_dir: str, **kw) -> BackupEngine:
    return BackupEngine.open(BackupableDBOptions(backup_dir, **kw))


def rocksdict_db_with_cfs_and_blobs(path: str, *, seed: int) -> None:
    """A raw rocksdict (RocksDB 9.8.4) DB: two column families, blob files, unflushed writes, closed."""
    opts = rocksdict.Options(raw_mode=True)
    opts.create_if_missing(True)
    opts.set_enable_blob_files(True)
    opts.set_min_blob_size(64)
    opts.set_compression_type(rocksdict.DBCompressionType.none())  # the peer's RocksDB has no snappy
    exists = os.path.exists(path)
    db = rocksdict.Rdict(path, opts, column_families={"side": opts} if exists else None)
    side = db.get_column_family("side") if exists else db.create_column_family("side", opts)
    fill(db, 800, prefix=f"d{seed}-", seed=seed, raw=True, value_size=200)
    fill(side, 300, prefix=f"s{seed}-", seed=seed + 100, raw=True, value_size=20)
    db.flush()
    side.flush()
    fill(db, 50, prefix=f"wal{seed}-", seed=seed + 200, raw=True)
    db.close()


def dump(db_dir: str, tmp_path: Path, name: str) -> list[str]:
    """The peer's dump of a copy of `db_dir` (dumping writes a LOG, so never into the original)."""
    copy = tmp_path / f"dump-{name}"
    shutil.copytree(db_dir, copy)
    return peer_dump(str(copy), tmp_path / f"{name}.txt")


@pytest.mark.parametrize("schema", [1, 2])
def test_rbackup_backups_of_cfs_and_blobs_restore_verify_and_extend_with_the_peer(tmp_path, schema):
    db_dir, backup_dir = str(tmp_path / "db"), str(tmp_path / "bk")
    rocksdict_db_with_cfs_and_blobs(db_dir, seed=1)
    first = dump(db_dir, tmp_path, "first")
    assert any(line.startswith("side\t") for line in first)
    with engine(backup_dir, schema_version=schema) as eng:
        eng.create_new_backup(db_dir)
        rocksdict_db_with_cfs_and_blobs(db_dir, seed=2)
        eng.create_new_backup(db_dir)
    second = dump(db_dir, tmp_path, "second")
    assert any(f.endswith(".blob") for f in shared_files(backup_dir))
    ours = shared_files(backup_dir)

    assert set(peer_backups(backup_dir)) == {1, 2}
    for backup_id in ("1", "2"):
        peer("verify", backup_dir, backup_id, "--checksum")
    peer("restore", backup_dir, "1", str(tmp_path / "r1"))
    peer("restore", backup_dir, "latest", str(tmp_path / "r2"))
    assert peer_dump(str(tmp_path / "r1"), tmp_path / "r1.txt") == first
    assert peer_dump(str(tmp_path / "r2"), tmp_path / "r2.txt") == second

    # the peer adds an incremental backup of the same DB to our directory, reusing our shared files
    peer("backup", db_dir, backup_dir, "--schema", str(schema))
    listed = peer_backups(backup_dir)
    assert ours <= shared_files(backup_dir) and ours & listed[3]
    with engine(backup_dir) as eng:
        assert [b.backup_id for b in eng.get_backup_info()] == [1, 2, 3]
        for backup_id in (1, 2, 3):
            eng.verify_backup(backup_id, verify_with_checksum=True)
        eng.restore_db_from_backup(3, str(tmp_path / "r3"))
    assert peer_dump(str(tmp_path / "r3"), tmp_path / "r3.txt") == second


def peer_fv7_db_with_backups(tmp_path: Path) -> tuple[str, str, list[list[str]]]:
    """A RocksDB 11 DB (format_version 7, zstd) and two peer backups of it (schema 1, then 2 after more
    writes); returns the DB, the backup dir and the peer's dump at each backup."""
    db_dir, backup_dir = str(tmp_path / "db7"), str(tmp_path / "peer-bk")
    peer("makedb", db_dir, "3000", "3", "200", "--compression", "zstd", "--format-version", "7")
    peer("backup", db_dir, backup_dir, "--flush", "--format-version", "7")
    states = [dump(db_dir, tmp_path, "p1")]
    peer("backup", db_dir, backup_dir, "--schema", "2", "--put", "late:500", "--format-version", "7")
    states.append(dump(db_dir, tmp_path, "p2"))
    return db_dir, backup_dir, states


def test_peer_backups_of_a_format_version_7_db_restore_verify_and_extend_with_rbackup(tmp_path):
    db_dir, backup_dir, states = peer_fv7_db_with_backups(tmp_path)
    with engine(backup_dir) as eng:
        assert [b.backup_id for b in eng.get_backup_info()] == [1, 2]
        for backup_id in (1, 2):
            eng.verify_backup(backup_id, verify_with_checksum=True)
            eng.restore_db_from_backup(backup_id, str(tmp_path / f"r{backup_id}"))
            assert peer_dump(str(tmp_path / f"r{backup_id}"), tmp_path / f"r{backup_id}.txt") == states[backup_id - 1]
        # our backup by path of the fv7 DB into the peer's directory reuses every shared file it can
        peer("put", db_dir, "ours", "100")
        before = shared_files(backup_dir)
        eng.create_new_backup(db_dir)
        info = eng.get_backup_info(True)[-1]
    ours_shared = {f.relative_filename for f in info.files if f.relative_filename.startswith("shared")}
    assert ours_shared & before, "nothing of the peer's was reused"
    assert len(shared_files(backup_dir) - before) <= 1  # at most the SST the peer flushed on reopening
    peer("verify", backup_dir, "3", "--checksum")
    peer("restore", backup_dir, "3", str(tmp_path / "r3"))
    assert peer_dump(str(tmp_path / "r3"), tmp_path / "r3.txt") == dump(db_dir, tmp_path, "now")


def test_each_side_deletes_the_others_backups_and_the_rest_stay_whole(tmp_path):
    db_dir, backup_dir, states = peer_fv7_db_with_backups(tmp_path)
    with engine(backup_dir) as eng:
        eng.create_new_backup(db_dir)  # 3: ours
        eng.delete_backup(1)  # the peer's
    peer("gc", backup_dir)
    assert set(peer_backups(backup_dir)) == {2, 3}
    for backup_id in ("2", "3"):
        peer("verify", backup_dir, backup_id, "--checksum")
    peer("delete", backup_dir, "3")  # ours
    with engine(backup_dir) as eng:
        eng.garbage_collect()
        assert [b.backup_id for b in eng.get_backup_info()] == [2]
        eng.verify_backup(2, verify_with_checksum=True)
        eng.restore_db_from_backup(2, str(tmp_path / "r2"))
    assert peer_dump(str(tmp_path / "r2"), tmp_path / "r2.txt") == states[1]
    peer("purge", backup_dir, "0")
    assert shared_files(backup_dir) == set()


@pytest.mark.skipif(shutil.which("ldb") is None, reason="Debian's rocksdb-tools (ldb 7.8.3) is not installed")
def test_a_db_written_by_ldb_7_is_backed_up_by_path_and_restored_by_the_peer(tmp_path):
    db_dir, backup_dir = str(tmp_path / "db"), str(tmp_path / "bk")
    pairs = [arg for i in range(200) for arg in (f"key{i:04d}", f"value{i}" * 20)]
    ldb = ["ldb", f"--db={db_dir}", "--compression_type=no"]  # the peer's RocksDB has no snappy
    subprocess.run([*ldb, "--create_if_missing", "batchput", *pairs], check=True, capture_output=True)
    subprocess.run([*ldb, "compact"], check=True, capture_output=True)
    subprocess.run([*ldb, "put", "in-the-wal", "yes"], check=True, capture_output=True)
    with engine(backup_dir) as eng:
        eng.create_new_backup(db_dir)
    peer("verify", backup_dir, "1", "--checksum")
    peer("restore", backup_dir, "1", str(tmp_path / "r"))
    assert peer_dump(str(tmp_path / "r"), tmp_path / "r.txt") == dump(db_dir, tmp_path, "src")
    assert len(dump(db_dir, tmp_path, "again")) == 201


def test_a_rocksdict_fv5_db_backed_up_by_the_peer_is_read_by_rocksdict_after_rbackup_restores_it(tmp_path):
    """The peer reopens and backs up a DB rocksdict wrote; rbackup restores it and rocksdict reads it."""
    db_dir, backup_dir = str(tmp_path / "db"), str(tmp_path / "bk")
    opts = ldb_compatible_options()
    opts.set_compression_type(rocksdict.DBCompressionType.none())  # the peer's RocksDB has no snappy
    db = rocksdict.Rdict(db_dir, opts)
    written = fill(db, 500, raw=True)
    db.close()
    peer("backup", db_dir, backup_dir, "--flush", "--format-version", "5")
    with engine(backup_dir) as eng:
        eng.restore_db_from_latest_backup(str(tmp_path / "r"))
    got = rocksdict.Rdict(str(tmp_path / "r"), rocksdict.Options(raw_mode=True))
    try:
        assert {k.decode(): v for k, v in got.items()} == written
    finally:
        got.close()
