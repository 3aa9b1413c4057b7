"""`rbackup restore --mode`, `inspect`, `get` and `scan`, run as the installed console script."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import rocksdict

from tests.crash_worker import add_ssts, read_db
from tests.test_cli import failed, ok, rbackup
from tests.test_cli import pytestmark as cli_skip

pytestmark = [cli_skip, pytest.mark.slow]
"""Slow like test_cli: one process per command (and skipped where the console script is missing)."""


def backed_up(tmp_path: Path) -> tuple[str, str, dict[str, bytes]]:
    db, backups = str(tmp_path / "db"), str(tmp_path / "backups")
    add_ssts(db, 3, first=0, keys=50)
    ok("create", "--db", db, "--backup-dir", backups, "-q")
    return db, backups, read_db(db)


def test_restore_mode_keep_latest_keeps_what_is_there(tmp_path: Path) -> None:
    _, backups, data = backed_up(tmp_path)
    target = tmp_path / "target"
    ok("restore", "--backup-dir", backups, "--db", str(target), "-q")
    sst = sorted(n for n in os.listdir(target) if n.endswith(".sst"))
    inodes = {n: os.stat(target / n).st_ino for n in sst}
    os.link(target / sst[1], tmp_path / "pin")  # pin the inode so a replacement cannot reuse it
    os.unlink(target / sst[0])
    result = ok("restore", "--backup-dir", backups, "--db", str(target), "--mode", "keep-latest", "-v")
    assert "incremental restore of backup 1" in result.stderr
    assert os.stat(target / sst[1]).st_ino == inodes[sst[1]]
    assert read_db(str(target)) == data
    bad = rbackup("restore", "--backup-dir", backups, "--db", str(target), "--mode", "fast")
    assert bad.returncode == 2 and "'fast' is not one of" in bad.stderr


def test_inspect_get_scan_read_a_backup_without_restoring(tmp_path: Path) -> None:
    _, backups, data = backed_up(tmp_path)
    report = json.loads(ok("inspect", "--backup-dir", backups, "--backup-id", "1", "--json").stdout)
    assert report["backup_id"] == 1 and report["raw_mode"] is False
    assert report["column_families"]["default"]["estimated_keys"] == len(data)
    assert sum(v["files"] for v in report["levels"].values()) == 3
    text = ok("inspect", "--backup-dir", backups).stdout
    assert "column family default: ~150 keys" in text and "L0" in text

    key = sorted(data)[5]
    value = ok("get", "--backup-dir", backups, key).stdout.rstrip("\n")
    assert value == "hex:" + data[key].hex()
    assert "not found in column family default of backup 1" in failed(1, "get", "--backup-dir", backups, "nope")

    lines = ok("scan", "--backup-dir", backups, "--prefix", "s001", "--limit", "3").stdout.splitlines()
    assert [ln.split("\t")[0] for ln in lines] == sorted(k for k in data if k.startswith("s001"))[:3]
    everything = ok("scan", "--backup-dir", backups, "--limit", "0").stdout.splitlines()
    assert len(everything) == len(data)
    assert not [p for p in Path(backups).rglob("*") if p.name == "LOG"]  # nothing written into the backup dir


def test_get_from_a_column_family(tmp_path: Path) -> None:
    db_path, backups = str(tmp_path / "db"), str(tmp_path / "backups")
    db = rocksdict.Rdict(db_path)
    cf = db.create_column_family("users", rocksdict.Options())
    cf["alice"] = b"admin"
    del cf
    db.close()
    ok("create", "--db", db_path, "--backup-dir", backups, "-q")
    assert ok("get", "--backup-dir", backups, "--cf", "users", "alice").stdout == "admin\n"
