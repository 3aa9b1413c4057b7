"""Real RocksDB databases made with rocksdict, for every test that needs one: the fixtures,
built on the one set of DB helpers in `rbackup.testing.dbs` (re-exported here for the tests)."""
from __future__ import annotations

import os
import random
from dataclasses import dataclass

import pytest
import rocksdict

from rbackup.testing.dbs import fill, ldb_compatible_options, read_all

__all__ = ["LiveDB", "backup_dir", "fill", "ldb_compatible_options", "live_db", "read_all"]


@dataclass
class LiveDB:
    path: str
    db: rocksdict.Rdict
    written: dict

    def add(self, n: int, *, prefix: str, seed: int = 1, flush: bool = True) -> None:
        self.written.update(fill(self.db, n, prefix=prefix, seed=seed))
        if flush:
            self.db.flush()


@pytest.fixture
def live_db(tmp_path):
    """An open, non-raw rocksdict DB with a flushed SST and a few unflushed writes."""
    path = str(tmp_path / "db")
    db = rocksdict.Rdict(path)
    written = fill(db, 2000)
    db.flush()
    written.update(fill(db, 50, prefix="mem", seed=7))
    live = LiveDB(path, db, written)
    yield live
    try:
        db.close()
    except Exception:
        pass


@pytest.fixture
def backup_dir(tmp_path) -> str:
    return str(tmp_path / "backups")


@pytest.fixture
def restore_dir(tmp_path) -> str:
    return str(tmp_path / "restored")


def files_under(root: str) -> set[str]:
    out = set()
    for dirpath, _, names in os.walk(root):
        for n in names:
            out.add(os.path.relpath(os.path.join(dirpath, n), root))
    return out


def write_without_close(path: str, n: int, *, prefix: str, seed: int) -> dict:
    """Write n keys in a child process that exits without closing the DB, so
    the writes live only in the WAL (rocksdict flushes memtables on close)."""
    import subprocess
    import sys

    code = (
        "import os, sys, rocksdict\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "from tests.db_fixtures import fill\n"
        "db = rocksdict.Rdict(sys.argv[2])\n"
        "fill(db, int(sys.argv[3]), prefix=sys.argv[4], seed=int(sys.argv[5]))\n"
        "db.flush_wal(True)\n"
        "os._exit(0)\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "-c", code, root, path, str(n), prefix, str(seed)], check=True)
    return fill(_NullSink(), n, prefix=prefix, seed=seed)


class _NullSink(dict):
    """Lets fill() recompute the values a child process wrote (same seed)."""


@pytest.fixture
def multipart_db(tmp_path) -> str:
    """A closed DB with an SST over two 5 MiB parts (a multipart upload on S3) and a few small files."""
    path = str(tmp_path / "db")
    db = rocksdict.Rdict(path)
    rng = random.Random(3)
    for i in range(12):
        db[f"big{i:03d}"] = rng.randbytes(1 << 20)
    db.flush()
    db.close()
    return path
