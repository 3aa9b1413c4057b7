"""RocksDB's LOCK, taken without ever dropping a lock this process holds (real rocksdict, real processes)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import rocksdict

from rbackup import dblock
from rbackup.errors import LockError

_OPEN_FOR_WRITING = "import rocksdict, sys; rocksdict.Rdict(sys.argv[1]).close()"


def other_process_can_open(db_dir: str) -> bool:
    """Whether a second process can open the DB for writing right now."""
    return subprocess.run([sys.executable, "-c", _OPEN_FOR_WRITING, db_dir], capture_output=True).returncode == 0


@pytest.fixture
def closed_db(tmp_path) -> str:
    path = str(tmp_path / "db")
    db = rocksdict.Rdict(path)
    db["k"] = "v"
    db.close()
    return path


def test_parse_proc_locks_skips_waiters_and_other_files():
    text = ("1: POSIX  ADVISORY  WRITE 4242 fe:01:1234 0 EOF\n"
            "1: -> POSIX  ADVISORY  WRITE 77 fe:01:1234 0 EOF\n"
            "2: OFDLCK ADVISORY  READ  -1 fe:01:1234 0 EOF\n"
            "3: POSIX  ADVISORY  WRITE 99 fe:01:1235 0 EOF\n"
            "4: POSIX  ADVISORY  WRITE 98 fe:02:1234 0 EOF\n"
            "garbage line\n")
    assert dblock.parse_proc_locks(text, 0xfe, 1, 1234) == [dblock.LockHolder("POSIX", 4242),
                                                         dblock.LockHolder("OFDLCK", -1)]


def test_db_open_in_this_process_is_refused_and_rocksdb_keeps_its_lock(tmp_path):
    path = str(tmp_path / "db")
    db = rocksdict.Rdict(path)
    try:
        with pytest.raises(LockError, match=r"open in this process.*pass the open Rdict"):
            with dblock.hold_db_lock(path):
                pass
        assert [h.pid for h in dblock.holders(os.path.join(path, "LOCK"))] == [os.getpid()]
        assert not other_process_can_open(path)
    finally:
        db.close()


def test_safety_net_when_proc_locks_misses_our_lock(tmp_path, monkeypatch):
    """Should /proc/locks not show RocksDB's lock, the OFD lock meets it and the descriptor stays open."""
    path = str(tmp_path / "db")
    db = rocksdict.Rdict(path)
    try:
        monkeypatch.setattr(dblock, "_read_proc_locks", lambda: "")
        with pytest.raises(LockError, match="open in this process"):
            with dblock.hold_db_lock(path):
                pass
        assert not other_process_can_open(path)
    finally:
        db.close()


def test_held_lock_keeps_rocksdb_out_in_this_process_and_others(closed_db):
    with dblock.hold_db_lock(closed_db):
        with pytest.raises(Exception, match="lock"):
            rocksdict.Rdict(closed_db)
        # RocksDB closed its own descriptor after failing: our OFD lock must have survived that
        assert [h.kind for h in dblock.holders(os.path.join(closed_db, "LOCK"))] == ["OFDLCK"]
        assert not other_process_can_open(closed_db)
    assert dblock.holders(os.path.join(closed_db, "LOCK")) == []
    assert other_process_can_open(closed_db)


def test_db_open_in_another_process_is_refused_naming_it(closed_db):
    child = subprocess.Popen([sys.executable, "-c",
                              "import rocksdict, sys; db = rocksdict.Rdict(sys.argv[1]); print('up', flush=True); "
                              "sys.stdin.read(); db.close()", closed_db],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "up"
        with pytest.raises(LockError, match=f"another process \\(pid {child.pid} "):
            with dblock.hold_db_lock(closed_db):
                pass
    finally:
        child.stdin.close()
        child.wait()


def test_shared_holders_coexist_and_exclude_an_exclusive_one(closed_db):
    with dblock.hold_db_lock(closed_db, exclusive=False):
        with dblock.hold_db_lock(closed_db, exclusive=False):
            assert not other_process_can_open(closed_db)
        with pytest.raises(LockError, match="OFD lock"):
            with dblock.hold_db_lock(closed_db, purpose="restore into it"):
                pass


def test_missing_lock_file_is_not_created(closed_db):
    os.unlink(os.path.join(closed_db, "LOCK"))
    before = sorted(os.listdir(closed_db))
    with dblock.hold_db_lock(closed_db):
        pass
    assert sorted(os.listdir(closed_db)) == before


def test_missing_lock_file_that_appears_meanwhile_is_reported(closed_db):
    os.unlink(os.path.join(closed_db, "LOCK"))
    with pytest.raises(LockError, match="was opened by RocksDB"):
        with dblock.hold_db_lock(closed_db):
            rocksdict.Rdict(closed_db).close()
