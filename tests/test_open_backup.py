"""open_backup: a backup read as a read-only DB without restoring it, on local disk (a view of
links, the backup directory never written) and on S3 (a bounded, verified, reused cache)."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import boto3
import pytest
import rocksdict

from rbackup import BackupableDBOptions, BackupEngine, BackupEngineReadOnly, Corruption, NotFound, NotSupported
from rbackup.backup_db import BackupDB

from .db_fixtures import fill, ldb_compatible_options, write_without_close


def tree_state(root: str) -> dict[str, tuple[int, int, int]]:
    """Every file and directory under root with its size, mtime and inode: any write shows."""
    out = {}
    for dirpath, dirnames, names in os.walk(root):
        for n in dirnames + names:
            st = os.lstat(os.path.join(dirpath, n))
            out[os.path.relpath(os.path.join(dirpath, n), root)] = (st.st_size, st.st_mtime_ns, st.st_ino)
    return out


def make_db(path: str) -> dict[str, dict[str, bytes]]:
    """A rocksdict DB with two column families, flushed SSTs and writes only in the WAL."""
    opts = rocksdict.Options()
    opts.create_if_missing(True)
    db = rocksdict.Rdict(path, opts)
    users = db.create_column_family("users", rocksdict.Options())
    data = {"default": fill(db, 500), "users": fill(users, 300, prefix="u", seed=3)}
    db.flush()
    users.flush()
    del users  # a live column family handle keeps the DB (and its LOCK) open
    db.close()
    data["default"].update(write_without_close(path, 40, prefix="wal", seed=9))
    return data


def read(db: BackupDB, cf: str = "default") -> dict[str, bytes]:
    handle = db if cf == "default" else db.get_column_family(cf)
    return dict(handle.items())


def test_open_local_backup_reads_in_place_and_never_writes(tmp_path: Path) -> None:
    db_path, backups = str(tmp_path / "db"), str(tmp_path / "backups")
    data = make_db(db_path)
    with BackupEngine(BackupableDBOptions(backups)) as engine:
        engine.create_new_backup(db_path)
    before = tree_state(backups)
    views = tmp_path / "views"
    views.mkdir()
    with BackupEngineReadOnly(BackupableDBOptions(backups)) as ro:
        db = ro.open_backup(1, view_dir=views)
        view = db.view_dir
        assert view is not None and os.path.dirname(view) == str(views)
        links = [e for e in os.scandir(view) if e.name not in ("LOG",) and not e.name.startswith("LOG.")]
        assert links and all(e.is_symlink() for e in links if e.name not in ("LOCK", "rocksdict-config.json")), \
            [e.name for e in links]
        assert read(db) == data["default"] and read(db, "users") == data["users"]
        assert db["k00000007"] == data["default"]["k00000007"] and "wal00000001" in db
        assert set(db.column_families) == {"default", "users"} and not db.raw_mode
        for write in (lambda: db.__setitem__("x", b"1"), lambda: db.put("x", b"1"), lambda: db.delete("k00000001"),
                      lambda: db.get_column_family("users").put("x", b"1"), lambda: db.flush(),
                      lambda: db.compact_range(None, None)):
            with pytest.raises(NotSupported, match="backup 1 is open read-only"):
                write()
        db.close()
        assert not os.path.exists(view)
        assert tree_state(backups) == before  # not a byte, not an mtime, not a new file
        with pytest.raises(NotFound):
            ro.open_backup(7)


def test_open_raw_rocksdb_backup_has_bytes_keys(tmp_path: Path) -> None:
    db_path, backups = str(tmp_path / "db"), str(tmp_path / "backups")
    db = rocksdict.Rdict(db_path, ldb_compatible_options())
    data = fill(db, 200, raw=True)
    db.close()
    os.unlink(os.path.join(db_path, "rocksdict-config.json"))  # as RocksDB's own tools leave a DB
    with BackupEngine(BackupableDBOptions(backups)) as engine:
        engine.create_new_backup(db_path)
        with engine.open_backup(1) as opened:
            assert opened.raw_mode
            assert {k.decode(): v for k, v in opened.items()} == data


def test_each_backup_opens_as_it_was(tmp_path: Path) -> None:
    db_path, backups = str(tmp_path / "db"), str(tmp_path / "backups")
    db = rocksdict.Rdict(db_path)
    first = fill(db, 300)
    with BackupEngine(BackupableDBOptions(backups)) as engine:
        engine.create_new_backup(db)
        second = {**first, **fill(db, 300, prefix="two", seed=2)}
        engine.create_new_backup(db)
        db.close()
        with engine.open_backup(1) as one, engine.open_backup(2) as two:  # two views at once
            assert dict(one.items()) == first and dict(two.items()) == second


def _s3_client(so: dict[str, Any]) -> Any:
    return boto3.client("s3", endpoint_url=so["endpoint_url"], region_name="us-east-1")


def test_open_s3_backup_through_a_verified_reused_bounded_cache(s3_bucket_url: tuple[str, dict[str, Any]],
                                                                 tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    bucket_url, so = s3_bucket_url
    url = f"{bucket_url}/open"
    db_path = str(tmp_path / "db")
    data = make_db(db_path)
    cache = tmp_path / "cache"
    with BackupEngine(BackupableDBOptions(url, storage_options=so)) as engine:
        engine.create_new_backup(db_path)
        db = rocksdict.Rdict(db_path, column_families={"users": rocksdict.Options()})
        more = fill(db, 100, prefix="more", seed=5)
        db.close()
        engine.create_new_backup(db_path)
        sizes = {i.backup_id: i.size for i in engine.get_backup_info()}

        with caplog.at_level(logging.INFO, logger="rbackup"):
            with engine.open_backup(1, cache_dir=cache) as opened:
                assert read(opened) == data["default"] and read(opened, "users") == data["users"]
            first = _fetched(caplog)
            caplog.clear()
            with engine.open_backup(1, cache_dir=cache) as opened:
                assert read(opened) == data["default"]
            again = _fetched(caplog)
        assert first >= sizes[1] and again < 4096  # only the unchecksummed side file comes again

        # bounded: at a tiny limit, opening backup 2 keeps exactly what backup 2 needs
        with engine.open_backup(2, cache_dir=cache, cache_limit=1) as opened:
            assert read(opened) == {**data["default"], **more}
        cached = {n for _, _, names in os.walk(cache) for n in names}
        assert all(n.startswith(("shared_checksum%", "private%2%")) for n in cached), cached

        # verified on arrival: a flipped byte in the store is refused, nothing bad is cached
        bucket, _, prefix = url[len("s3://"):].partition("/")
        client = _s3_client(so)
        key = next(o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/private/1/")["Contents"]
                   if "MANIFEST" in o["Key"])
        body = bytearray(client.get_object(Bucket=bucket, Key=key)["Body"].read())
        body[len(body) // 2] ^= 0xFF
        client.put_object(Bucket=bucket, Key=key, Body=bytes(body))
        with pytest.raises(Corruption, match=r"checksum mismatch.*MANIFEST"):
            engine.open_backup(1, cache_dir=cache, cache_limit=1)
        assert not [n for _, _, names in os.walk(cache) for n in names if n.endswith(".tmp")]


def _fetched(caplog: pytest.LogCaptureFixture) -> int:
    line = next(r.getMessage() for r in caplog.records if "bytes fetched" in r.getMessage())
    return int(line.rsplit(" bytes fetched", 1)[0].rsplit(" ", 1)[1])
