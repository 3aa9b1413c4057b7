"""Backups of a closed DB directory by path: read from CURRENT/MANIFEST/OPTIONS, never opened.

Real rocksdict DBs, real writer processes killed with SIGKILL, the real `rbackup` command, and (where
present) RocksDB 11.1.2 through rbpeer for DBs rocksdict's RocksDB 9.8.4 cannot open.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import rocksdict

from rbackup import BackupableDBOptions, BackupEngine
from rbackup.errors import BackupError, Corruption, LockError, NotSupported

from .db_fixtures import fill
from .rbpeer import needs_rbpeer, peer, peer_dump

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RBACKUP = os.path.join(os.path.dirname(sys.executable), "rbackup")

_KILLED_WRITER = """
import sys, rocksdict
sys.path.insert(0, sys.argv[1])
from tests.db_fixtures import fill
opts = rocksdict.Options()
opts.create_if_missing(True)
if sys.argv[3]:
    opts.set_wal_dir(sys.argv[3])
db = rocksdict.Rdict(sys.argv[2], opts)
fill(db, 300, prefix="flushed", seed=1)
db.flush()
fill(db, 200, prefix="walonly", seed=2)
db.flush_wal(True)
print("synced", flush=True)
sys.stdin.read()
"""


def fingerprint(*dirs: str) -> dict[str, str]:
    """Every file and directory under `dirs` with its SHA-256 (directories: their names)."""
    out = {}
    for top in dirs:
        for dirpath, subdirs, names in os.walk(top):
            for d in subdirs:
                out[os.path.join(dirpath, d)] = "dir"
            for n in names:
                with open(os.path.join(dirpath, n), "rb") as fh:
                    out[os.path.join(dirpath, n)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def killed_writer(db_dir: str, wal_dir: str = "") -> dict:
    """A rocksdict writer that flushed 300 keys, wrote 200 more to its WAL only (synced with
    flush_wal(sync=True)) and was then SIGKILLed; returns every key it wrote."""
    child = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, ROOT, db_dir, wal_dir],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "synced"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    return {**fill({}, 300, prefix="flushed", seed=1), **fill({}, 200, prefix="walonly", seed=2)}


def read_restored(path: str) -> dict:
    """The restored DB's keys, opened with options of our own: its OPTIONS file still names the
    source's wal_dir until restores retarget it (issue #10's restore side)."""
    db = rocksdict.Rdict(path, rocksdict.Options())
    try:
        return dict(db.items())
    finally:
        db.close()


def engine(backup_dir: str, **kw) -> BackupEngine:
    return BackupEngine.open(BackupableDBOptions(backup_dir, **kw))


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([RBACKUP, *args], capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120,
                          check=False)


@pytest.mark.parametrize("how", ["api", "cli"])
def test_wal_outside_the_db_dir_of_a_killed_writer(tmp_path, how):
    """Issue #10: the WALs come from the wal_dir in the DB's OPTIONS; today's loss was the WAL half."""
    db_dir, wal_dir, backup_dir = str(tmp_path / "db"), str(tmp_path / "wal"), str(tmp_path / "bk")
    written = killed_writer(db_dir, wal_dir)
    assert not [n for n in os.listdir(db_dir) if n.endswith(".log")]
    assert [n for n in os.listdir(wal_dir) if n.endswith(".log") and os.path.getsize(os.path.join(wal_dir, n))]
    before = fingerprint(db_dir, wal_dir)
    if how == "api":
        with engine(backup_dir) as eng:
            eng.create_new_backup(db_dir)
    else:
        result = cli("create", "--db", db_dir, "--backup-dir", backup_dir)
        assert result.returncode == 0, result.stderr
    assert fingerprint(db_dir, wal_dir) == before
    restored = str(tmp_path / "restored")
    with engine(backup_dir) as eng:
        assert [f for f in eng.get_backup_info(True)[0].files if f.relative_filename.endswith(".log")]
        eng.restore_db_from_latest_backup(restored)
    assert read_restored(restored) == written
    assert fingerprint(db_dir, wal_dir) == before


def test_a_db_open_in_this_process_is_refused_and_keeps_its_lock(tmp_path):
    """Issue #10: refuse, say to pass the Rdict, and never drop RocksDB's own lock."""
    path, backup_dir = str(tmp_path / "db"), str(tmp_path / "bk")
    db = rocksdict.Rdict(path)
    try:
        fill(db, 100)
        with engine(backup_dir) as eng:
            with pytest.raises(LockError, match=f"{path} is open in this process.*pass the open Rdict"):
                eng.create_new_backup(path)
            opener = subprocess.run([sys.executable, "-c", "import rocksdict, sys; rocksdict.Rdict(sys.argv[1])",
                                     path], capture_output=True, text=True, check=False)
            assert opener.returncode != 0 and "lock" in opener.stderr.lower()
            assert eng.create_new_backup(db) == 1
    finally:
        db.close()


def test_backing_up_creates_nothing_even_a_log(tmp_path):
    """Issue #10: no LOG, no checkpoint, no rocksdict-config.json rewrite; LOCK's bytes unchanged."""
    db_dir, backup_dir = str(tmp_path / "db"), str(tmp_path / "bk")
    opts = rocksdict.Options(raw_mode=True)
    db = rocksdict.Rdict(db_dir, opts)
    db[b"k"] = b"v"
    db.close()
    for name in os.listdir(db_dir):  # what a read-only open would recreate
        if name.startswith("LOG"):
            os.unlink(os.path.join(db_dir, name))
    before = fingerprint(str(tmp_path))
    with engine(backup_dir) as eng:
        eng.create_new_backup(db_dir)
    after = fingerprint(str(tmp_path))
    assert {p: h for p, h in after.items() if not p.startswith(backup_dir)} == before


def _damage_manifest(db_dir: str) -> None:
    name = Path(db_dir, "CURRENT").read_text().strip()
    with open(os.path.join(db_dir, name), "r+b") as fh:
        fh.seek(12)
        byte = fh.read(1)
        fh.seek(12)
        fh.write(bytes([byte[0] ^ 0xFF]))


def _current_names_a_missing_manifest(db_dir: str) -> None:
    with open(os.path.join(db_dir, "CURRENT"), "w") as fh:
        fh.write("MANIFEST-999999\n")


def _truncated_current(db_dir: str) -> None:
    with open(os.path.join(db_dir, "CURRENT"), "w") as fh:
        fh.write("MANIFEST-0")


def _missing_sst(db_dir: str) -> None:
    os.unlink(os.path.join(db_dir, min(n for n in os.listdir(db_dir) if n.endswith(".sst"))))


@pytest.mark.parametrize("damage,error,names", [
    (_damage_manifest, Corruption, "MANIFEST-"),
    (_current_names_a_missing_manifest, Corruption, "MANIFEST-999999"),
    (_truncated_current, Corruption, "CURRENT"),
    (_missing_sst, Corruption, "SST #"),
])
def test_a_damaged_db_is_refused_naming_the_file_and_left_as_it_was(tmp_path, damage, error, names):
    db_dir, wal_dir, backup_dir = str(tmp_path / "db"), str(tmp_path / "wal"), str(tmp_path / "bk")
    killed_writer(db_dir, wal_dir)
    damage(db_dir)
    before = fingerprint(db_dir, wal_dir)
    with engine(backup_dir) as eng:
        with pytest.raises(error, match=names):
            eng.create_new_backup(db_dir)
        assert eng.get_backup_info() == []
    assert fingerprint(db_dir, wal_dir) == before


def test_failures_elsewhere_leave_the_source_as_it_was(tmp_path):
    """A DB open in another process, a stop requested mid-copy, an unwritable backup dir."""
    db_dir, wal_dir = str(tmp_path / "db"), str(tmp_path / "wal")
    killed_writer(db_dir, wal_dir)
    before = fingerprint(db_dir, wal_dir)

    def stop(*_args) -> None:
        raise KeyboardInterrupt

    with engine(str(tmp_path / "bk")) as eng, pytest.raises((BackupError, KeyboardInterrupt)):
        eng.create_new_backup(db_dir, progress_callback=stop)
    assert fingerprint(db_dir, wal_dir) == before
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    with pytest.raises(BackupError), engine(str(blocker / "bk")) as eng:
        eng.create_new_backup(db_dir)
    assert fingerprint(db_dir, wal_dir) == before


def test_a_db_whose_sst_is_in_another_db_path_is_refused(tmp_path):
    db_dir = str(tmp_path / "db")
    opts = rocksdict.Options()
    opts.set_db_paths([rocksdict.DBPath(str(tmp_path / "p0"), 1), rocksdict.DBPath(str(tmp_path / "p1"), 1 << 40)])
    db = rocksdict.Rdict(db_dir, opts)
    fill(db, 200)
    db.flush()
    db.close()
    with engine(str(tmp_path / "bk")) as eng, pytest.raises((NotSupported, Corruption), match="db_paths"):
        eng.create_new_backup(db_dir)


# --- DBs that rocksdict's RocksDB 9.8.4 cannot open -------------------------------------------------------------

@needs_rbpeer
@pytest.mark.slow
def test_a_format_version_7_db_with_a_rocksdict_config_is_backed_up_untouched(tmp_path):
    """The issue's two failures: fv7 SSTs, and a raw DB's rocksdict-config.json rewritten on the way."""
    db_dir, backup_dir = str(tmp_path / "db"), str(tmp_path / "bk")
    peer("makedb", db_dir, "3000", "3", "200", "--compression", "zstd", "--format-version", "7")
    with open(os.path.join(db_dir, "rocksdict-config.json"), "w") as fh:
        json.dump({"raw_mode": True, "prefix_extractors": {}}, fh)
    with pytest.raises(Exception, match=r"format_version|option"):
        rocksdict.Rdict(db_dir, rocksdict.Options(raw_mode=True), access_type=rocksdict.AccessType.read_only())
    before = fingerprint(db_dir)
    with engine(backup_dir) as eng:
        eng.create_new_backup(db_dir)
        assert eng.verify_backup(1, verify_with_checksum=True).downloaded > 0
    assert fingerprint(db_dir) == before
    peer("restore", backup_dir, "1", str(tmp_path / "by-peer"))
    assert peer_dump(str(tmp_path / "by-peer"), tmp_path / "a.txt") == peer_dump(db_dir, tmp_path / "b.txt")


_RECYCLING_WRITER = """
import os, sys, rocksdict
opts = rocksdict.Options(raw_mode=True)
opts.create_if_missing(True)
opts.set_recycle_log_file_num(4)
db = rocksdict.Rdict(sys.argv[1], opts)
for r in range(4):
    for i in range(300):
        db[b"%s-%d-%04d" % (sys.argv[2].encode(), r, i)] = b"v" * 200
    db.flush()
for i in range(100):
    db[b"%s-wal-%04d" % (sys.argv[2].encode(), i)] = b"w" * 50
db.flush_wal(True)
os._exit(0)
"""


@pytest.mark.slow
def test_recycled_wals_of_killed_writers(tmp_path):
    """recycle_log_file_num: WAL files are reused, their records carry the log number, old ones linger."""
    db_dir, backup_dir = str(tmp_path / "db"), str(tmp_path / "bk")
    for run in ("a", "b"):
        subprocess.run([sys.executable, "-c", _RECYCLING_WRITER, db_dir, run], check=True)
    with engine(backup_dir) as eng:
        eng.create_new_backup(db_dir)
        assert eng.get_backup_info()[0].size > 0
        eng.restore_db_from_latest_backup(str(tmp_path / "r"))
    db = rocksdict.Rdict(str(tmp_path / "r"), rocksdict.Options(raw_mode=True))
    try:
        keys = set(db.keys())
    finally:
        db.close()
    assert len(keys) == 2 * (4 * 300 + 100) and b"b-wal-0099" in keys
