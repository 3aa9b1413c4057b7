"""OPTIONS files as RocksDB writes them (rocksdict's 9.8.4, ldb's 7.8.3): parsed as
RocksDB parses them, and retargeted so that a copy of the DB never uses the
source's directories, while RocksDB's own tools still open it."""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys

import pytest
import rocksdict

from rbackup.errors import Corruption
from rbackup.format.optionsfile import escape, parse, retarget, unescape, wal_dir

from .db_fixtures import fill

LDB = shutil.which("ldb")
ODD = "wal:dir#1 \\x"
"""A directory name with every character RocksDB escapes that a path can hold."""


def latest_options(db_path: str) -> bytes:
    path = max(glob.glob(os.path.join(db_path, "OPTIONS-*")), key=lambda p: int(p.rsplit("-", 1)[1]))
    with open(path, "rb") as fh:
        return fh.read()


_WRITER = """
import os, sys, rocksdict
sys.path.insert(0, {root!r})
from tests.db_fixtures import fill, ldb_compatible_options
opts = ldb_compatible_options() if {raw!r} else rocksdict.Options()
opts.create_if_missing(True)
if {wal!r} is not None:
    opts.set_wal_dir({wal!r})
opts.set_db_log_dir({logs!r})
db = rocksdict.Rdict({db!r}, opts)
fill(db, {n!r}, raw={raw!r})
db.flush()
fill(db, {n!r}, prefix="wal", seed=3, raw={raw!r})
db.flush_wal(True)
os._exit(0)  # as if killed: the newest writes are only in the WAL
"""


def make_db(tmp_path, *, wal: str | None, raw: bool = False, n: int = 200) -> tuple[str, dict]:
    """A DB whose writer died with its newest writes only in the (synced) WAL."""
    db_path = str(tmp_path / "src")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = _WRITER.format(root=root, raw=raw, wal=wal, logs=str(tmp_path / "src-logs"), db=db_path, n=n)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    written = fill({}, n)
    written.update(fill({}, n, prefix="wal", seed=3))
    assert any(os.path.getsize(os.path.join(wal or db_path, name)) for name in os.listdir(wal or db_path)
               if name.endswith(".log"))
    return db_path, written


def test_parses_what_rocksdb_wrote_unescaping_paths(tmp_path):
    wal = str(tmp_path / ODD)
    db_path, _ = make_db(tmp_path, wal=wal)
    data = latest_options(db_path)
    assert b"wal\\:dir\\#1 \\\\x" in data  # RocksDB escaped it
    opts = parse(data)
    assert [s.title for s in opts.sections][:3] == ["Version", "DBOptions", "CFOptions"]
    assert opts.section("CFOptions", "default") is not None
    assert opts.section("TableOptions/BlockBasedTable", "default") is not None
    assert opts.db_options["db_log_dir"] == str(tmp_path / "src-logs")
    assert wal_dir(data) == wal
    assert os.listdir(wal)  # and RocksDB really used that directory


def test_no_wal_dir_line_means_the_db_dir(tmp_path):
    db_path, _ = make_db(tmp_path, wal=None)
    assert wal_dir(latest_options(db_path)) is None


@pytest.mark.parametrize("value", ["/plain/path", ODD, "a\\nb", "#:\\", "\r\n"])
def test_escape_round_trips(value):
    assert unescape(escape(value)) == value
    assert "#" not in escape(value).replace("\\#", "")


def test_comments_sections_and_errors():
    text = (b"# comment\n[Version]\n  rocksdb_version=9.8.4 # trailing\n[DBOptions]\n"
            b"  wal_dir=/a\\#b#real comment\n  \n[CFOptions \"my cf\"]\n  x=1\n")
    opts = parse(text)
    assert opts.section("Version").options == {"rocksdb_version": "9.8.4"}
    assert wal_dir(text) == "/a#b"
    assert opts.section("CFOptions", "my cf").options == {"x": "1"}
    for bad in (b"x=1\n", b"[DBOptions]\nno equals sign\n", b"[DBOptions\n", b"[CFOptions default]\n"):
        with pytest.raises(Corruption, match="OPTIONS-000007 line"):
            parse(bad, "OPTIONS-000007")


def test_retarget_changes_only_the_directory_lines(tmp_path):
    db_path, _ = make_db(tmp_path, wal=str(tmp_path / "srcwal"))
    data = latest_options(db_path)
    out = retarget(data, "/restored/db", "/restored/" + ODD)
    assert wal_dir(out) == "/restored/" + ODD
    before = data.decode().splitlines()
    after = out.decode().splitlines()
    changed = [line for line in before if line not in after]
    assert sorted(line.split("=")[0].strip() for line in changed) == ["db_log_dir", "wal_dir"]
    assert [line for line in after if line not in before] == ["  wal_dir=" + escape("/restored/" + ODD)]
    assert "db_log_dir" not in parse(out).db_options
    # restoring WALs into the DB directory: no wal_dir at all, as RocksDB writes it
    assert wal_dir(retarget(data, "/restored/db", "/restored/db/")) is None
    # a file with no wal_dir gets one, inside [DBOptions]
    ldb_like = b"[Version]\n  options_file_version=1.1\n[DBOptions]\n  a=1\n\n[CFOptions \"default\"]\n  b=2"
    out = retarget(ldb_like, "/db", "/w")
    assert parse(out).section("DBOptions").options == {"a": "1", "wal_dir": "/w"}
    assert parse(out).section("CFOptions", "default").options == {"b": "2"}


def test_retarget_drops_data_path_options():
    text = (b"[DBOptions]\n  db_paths={{path=/src/p1;target_size=10}:{path=/src/p2;target_size=20}}\n"
            b"  wal_dir=/src/wal\n[CFOptions \"default\"]\n  cf_paths={{path=/src/c;target_size=1}}\n  y=2\n")
    out = parse(retarget(text, "/db", "/db"))
    assert out.db_options == {}
    assert out.section("CFOptions", "default").options == {"y": "2"}


def _move_into_copy(db_path: str, src_wal: str, copy: str, copy_wal: str) -> None:
    shutil.copytree(db_path, copy)
    os.makedirs(copy_wal)
    for name in os.listdir(src_wal):
        shutil.copy2(os.path.join(src_wal, name), copy_wal)
    for path in glob.glob(os.path.join(copy, "OPTIONS-*")):
        with open(path, "rb") as fh:
            data = fh.read()
        with open(path, "wb") as fh:
            fh.write(retarget(data, copy, copy_wal))


def test_retargeted_copy_opens_with_its_own_options_and_never_the_sources(tmp_path):
    """rocksdict opens a DB with the options of its OPTIONS file: the copy must find its
    WAL-only writes in its own wal_dir, and must not create or read the source's."""
    src_wal = str(tmp_path / ODD)
    db_path, written = make_db(tmp_path, wal=src_wal)
    copy, copy_wal = str(tmp_path / "copy"), str(tmp_path / "copy-wal")
    _move_into_copy(db_path, src_wal, copy, copy_wal)
    shutil.rmtree(src_wal)
    shutil.rmtree(tmp_path / "src-logs")
    db = rocksdict.Rdict(copy)
    try:
        assert dict(db.items()) == written
    finally:
        db.close()
    assert not os.path.exists(src_wal) and not os.path.exists(tmp_path / "src-logs")
    assert os.listdir(copy_wal)


@pytest.mark.skipif(LDB is None, reason="Debian's rocksdb-tools (ldb) is not installed")
def test_ldb_opens_the_retargeted_copy_with_its_options(tmp_path):
    src_wal = str(tmp_path / "srcwal")
    db_path, written = make_db(tmp_path, wal=src_wal, raw=True, n=50)
    copy, copy_wal = str(tmp_path / "copy"), str(tmp_path / ODD)
    _move_into_copy(db_path, src_wal, copy, copy_wal)
    shutil.rmtree(src_wal)
    proc = subprocess.run([LDB, f"--db={copy}", "--try_load_options", "--ignore_unknown_options", "--hex",
                           "scan"],
                          check=False, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    scanned = {line.split(" : ")[0]: line.split(" : ")[1] for line in proc.stdout.splitlines()}
    # the WAL-only half came from copy_wal
    assert scanned == {"0x" + k.encode().hex().upper(): "0x" + v.hex().upper() for k, v in written.items()}
    assert not os.path.exists(src_wal)
