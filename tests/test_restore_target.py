"""A restore produces exactly the backup and touches only its target (issue #10).

Real rocksdict DBs, real child processes, Debian's real `ldb`; tmpfs mounts where
the machine allows them (root), skipped with the reason otherwise.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import uuid

import pytest
import rocksdict

from rbackup import BackupableDBOptions, BackupEngine, BackupError, LockError

from .db_fixtures import fill, ldb_compatible_options, read_all

LDB = shutil.which("ldb")


def engine(backup_dir: str) -> BackupEngine:
    return BackupEngine.open(BackupableDBOptions(backup_dir))


def tree_hashes(*dirs: str) -> dict[str, str]:
    """Every file's hash but LOCK's: opening and closing LOCK in this process would
    itself drop RocksDB's lock on it."""
    out = {}
    for top in dirs:
        for root, _, files in os.walk(top):
            for name in files:
                if name == "LOCK":
                    continue
                path = os.path.join(root, name)
                with open(path, "rb") as fh:
                    out[path] = hashlib.sha256(fh.read()).hexdigest()
    return out


def db_with_wal_dir(tmp_path, *, raw: bool = False) -> tuple[rocksdict.Rdict, str, str, dict]:
    """An open DB whose WALs live outside its directory, with flushed and unflushed writes."""
    db_path, wal = str(tmp_path / "src"), str(tmp_path / "src-wal")
    opts = ldb_compatible_options() if raw else rocksdict.Options()
    opts.create_if_missing(True)
    opts.set_wal_dir(wal)
    db = rocksdict.Rdict(db_path, opts)
    written = fill(db, 300, raw=raw)
    db.flush()
    written.update(fill(db, 100, prefix="mem", seed=5, raw=raw))
    return db, db_path, wal, written


def test_restored_copy_opened_with_its_own_options_never_touches_the_source(tmp_path, backup_dir):
    """Before the fix the copy's OPTIONS named the source's wal_dir: the copy replayed the
    source's newer WAL (showing writes made after the backup) and could recycle its files."""
    db, db_path, src_wal, written = db_with_wal_dir(tmp_path)
    with engine(backup_dir) as eng:
        eng.create_new_backup(db)
        fill(db, 100, prefix="after", seed=6)  # after the backup: in the source's WAL only
        db.flush_wal(True)
        before = tree_hashes(src_wal)
        target, target_wal = str(tmp_path / "copy"), str(tmp_path / "copy-wal")
        eng.restore_db_from_latest_backup(target, target_wal)
    copy = rocksdict.Rdict(target)  # its own options, from its OPTIONS file
    try:
        assert dict(copy.items()) == written
        copy["new"] = b"x"
        copy.flush_wal(True)
    finally:
        copy.close()
    assert tree_hashes(src_wal) == before
    assert not [n for n in os.listdir(target) if n.endswith(".log")]  # its WALs are in target_wal
    db.close()
    assert len(read_all(db_path)) == len(written) + 100  # the source lost nothing


@pytest.mark.skipif(LDB is None, reason="Debian's rocksdb-tools (ldb) is not installed")
def test_ldb_opens_the_restored_copy_with_its_options(tmp_path, backup_dir):
    db, _, src_wal, written = db_with_wal_dir(tmp_path, raw=True)
    with engine(backup_dir) as eng:
        eng.create_new_backup(db)
        fill(db, 100, prefix="after", seed=6, raw=True)
        db.flush_wal(True)
        target, target_wal = str(tmp_path / "copy"), str(tmp_path / "copy-wal")
        eng.restore_db_from_latest_backup(target, target_wal)
    before = tree_hashes(src_wal)
    proc = subprocess.run([LDB, f"--db={target}", "--try_load_options", "--ignore_unknown_options", "--hex", "scan"],
                          check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    scanned = dict(line.split(" : ") for line in proc.stdout.splitlines())
    assert scanned == {"0x" + k.encode().hex().upper(): "0x" + v.hex().upper() for k, v in written.items()}
    assert tree_hashes(src_wal) == before
    db.close()


@contextlib.contextmanager
def tiny_tmpfs(tmp_path, size: str):
    """A tmpfs of `size` mounted in tmp_path; skips where mounting is not allowed."""
    mnt = tmp_path / f"tmpfs-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                          check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield str(mnt)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def assert_does_not_open(target: str) -> None:
    with pytest.raises(Exception, match=r"(?i)corrupt|directory|CURRENT"):
        rocksdict.Rdict(target, rocksdict.Options(raw_mode=True))
    assert not os.path.exists(os.path.join(target, "000001.log"))  # and opening created nothing new


def big_backup(tmp_path, backup_dir) -> dict:
    db = rocksdict.Rdict(str(tmp_path / "big"))
    written = fill(db, 3000, value_size=1000)  # ~3 MB incompressible
    with engine(backup_dir) as eng:
        eng.create_new_backup(db)
    db.close()
    return written


def test_full_target_disk_is_a_backup_error_naming_id_and_file_and_leaves_nothing(tmp_path, backup_dir):
    """Before: a plain OSError(28) naming no file, and the partial files left on the full disk."""
    big_backup(tmp_path, backup_dir)
    with tiny_tmpfs(tmp_path, "1m") as mnt:
        target = os.path.join(mnt, "db")
        with engine(backup_dir) as eng, pytest.raises(BackupError) as info:
            eng.restore_db_from_latest_backup(target)
        message = str(info.value)
        assert "backup 1" in message and target in message and "No space left" in message
        assert sorted(os.listdir(target)) == ["CURRENT", "LOCK"]  # the marker, and RocksDB's LOCK
        assert_does_not_open(target)


def test_current_that_is_a_directory_is_a_backup_error_and_leaves_no_marker_temp(tmp_path, backup_dir):
    """Before: a plain IsADirectoryError, and CURRENT.rbackup-marker.tmp left behind."""
    db = rocksdict.Rdict(str(tmp_path / "src"))
    fill(db, 10)
    with engine(backup_dir) as eng:
        eng.create_new_backup(db)
        target = tmp_path / "target"
        (target / "CURRENT").mkdir(parents=True)
        with pytest.raises(BackupError, match=r"backup 1: .*CURRENT"):
            eng.restore_db_from_latest_backup(str(target))
    db.close()
    assert sorted(os.listdir(target)) == ["CURRENT", "LOCK"]
    assert_does_not_open(str(target))


def test_leftover_marker_temp_from_a_killed_restore_is_replaced(tmp_path, backup_dir):
    db = rocksdict.Rdict(str(tmp_path / "src"))
    written = fill(db, 10)
    target = tmp_path / "target"
    target.mkdir()
    (target / "CURRENT.rbackup-marker.tmp").write_bytes(b"left by a restore killed mid-marker")
    with engine(backup_dir) as eng:
        eng.create_new_backup(db)
        eng.restore_db_from_latest_backup(str(target))
    db.close()
    assert "CURRENT.rbackup-marker.tmp" not in os.listdir(target)
    assert read_all(str(target)) == written


_OPEN_FOR_WRITING = """
import sys, rocksdict
try:
    rocksdict.Rdict(sys.argv[1]).close()
except Exception as exc:
    print("refused:", exc)
else:
    print("opened")
"""


def test_restore_into_a_db_open_in_this_process_is_refused_and_keeps_its_lock(tmp_path, backup_dir):
    """Before: the restore took and closed a POSIX lock on LOCK, which dropped RocksDB's own
    lock of this process, deleted the live DB's files, and let another process open it."""
    src = rocksdict.Rdict(str(tmp_path / "src"))
    fill(src, 10)
    live_path = str(tmp_path / "live")
    live = rocksdict.Rdict(live_path)
    live_written = fill(live, 50)
    try:
        with engine(backup_dir) as eng:
            eng.create_new_backup(src)
            before = tree_hashes(live_path)
            with pytest.raises(LockError, match=r"open in this process.*close it"):
                eng.restore_db_from_latest_backup(live_path)
        assert tree_hashes(live_path) == before
        other = subprocess.run([sys.executable, "-c", _OPEN_FOR_WRITING, live_path],
                               check=True, capture_output=True, text=True, timeout=60)
        assert other.stdout.startswith("refused:") and "lock" in other.stdout.lower()
        assert dict(live.items()) == live_written
    finally:
        live.close()
        src.close()
