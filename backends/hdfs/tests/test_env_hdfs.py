"""HdfsEnv (backends/hdfs): the glue without a NameNode, and the conformance kit on a real one.

The tests are in three parts (backends/hdfs/tests/test_hdfs_live.py has the rest against the live cluster):

1. The whole conformance kit (storage contract and engine round trip) over
   `HdfsEnv` built with a connector returning `pyarrow.fs.LocalFileSystem()`
   and a local no-clobber rename: the same ArrowFSWrapper code path, on local
   disk, fast and without Java.
2. The glue, unit-tested: URL parsing, option mapping (a test double stands in
   for the connection, never for storage), error translation, the registry,
   and pyarrow's real libhdfs loading failing cleanly (in a subprocess, because
   pyarrow remembers a failed load for the rest of the process).
3. The same kit against a real cluster: the MiniDFSCluster that
   tests/hdfs_fixtures.py builds and starts (or RBACKUP_TEST_HDFS_URL); skipped
   with the reason when it cannot be built here, a failure under
   RBACKUP_REQUIRE_HDFS=1.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.fs
import pytest
import rbackup_hdfs.errors
from rbackup_hdfs import (
    HdfsEnv,
    HdfsSettings,
    classpath_problems,
    ensure_hadoop_classpath,
    hadoop_fs_kwargs,
    leave_signals_to_python,
    parse_hdfs_url,
    translate_hdfs_error,
)
from rbackup_hdfs.clientconf import TUNED, site_keys

from rbackup import BackupableDBOptions, BackupEngine
from rbackup.env.base import DISK_BUFFER_SIZE
from rbackup.env.registry import backend_class, open_env
from rbackup.errors import (
    AlreadyExists,
    InvalidArgument,
    NotFound,
    NotSupported,
    PermissionDenied,
    StorageError,
)
from rbackup.testing import BackendConformance
from rbackup.testing.env_contract import race_for_one_winner
from tests.db_fixtures import read_all
from tests.hdfs_fixtures import RealHdfs


def local_connector(**kwargs: Any) -> pyarrow.fs.FileSystem:
    """Stands in for pyarrow.fs.HadoopFileSystem: local disk through the same pyarrow API."""
    return pyarrow.fs.LocalFileSystem()


def local_exclusive_rename(source: str, destination: str) -> None:
    """Stands in for HDFS's no-clobber rename: a hard link refuses an existing name (EEXIST)."""
    os.link(source, destination)
    os.unlink(source)


def local_hdfs_env(root: Path, **storage_options: Any) -> HdfsEnv:
    """An HdfsEnv for `hdfs:///<root>` whose file system is local disk."""
    return HdfsEnv(f"hdfs://{root}", storage_options=storage_options, connect=local_connector,
                   rename_exclusive=local_exclusive_rename)


# -- 1. the conformance kit over the ArrowFSWrapper code path ----------------------
class TestHdfsEnvOverArrowLocal(BackendConformance):
    """Storage contract plus engine round trip; HDFS itself is not involved."""

    def make_env(self, tmp_path: Path) -> HdfsEnv:
        return local_hdfs_env(tmp_path / "backup")


def test_engine_round_trip_incremental(live_db, tmp_path: Path) -> None:
    """A real rocksdict DB backed up twice through HdfsEnv (local arrow path), both restored."""
    env = local_hdfs_env(tmp_path / "backup")
    engine = BackupEngine.open(BackupableDBOptions(str(tmp_path / "backup"), backup_env=env))
    first = dict(live_db.written)
    assert engine.create_new_backup(live_db.db) == 1
    live_db.add(400, prefix="inc")
    assert engine.create_new_backup(live_db.db) == 2
    for backup_id, expected in ((1, first), (2, live_db.written)):
        engine.verify_backup(backup_id, verify_with_checksum=True)
        target = str(tmp_path / f"restored-{backup_id}")
        engine.restore_db_from_backup(backup_id, target, target)
        assert read_all(target) == expected
    engine.close()
    leftovers = [f.path for f in env.list() if ".tmp" in f.path]
    assert leftovers == []


def test_a_backup_copies_transfer_width_files_at_once(live_db, tmp_path: Path) -> None:
    """One HDFS write stream is bound by its DataNode pipeline's acknowledgements, so a backup keeps
    `transfer_width` files (4 by default) in flight even with max_background_operations=1: the first
    four files opened wait for one another at a barrier, which copying one at a time never passes."""
    for part in range(3):
        live_db.add(200, prefix=f"sst{part}", seed=part)
    env = local_hdfs_env(tmp_path / "backup")
    assert env.capabilities.transfer_width == 4
    barrier = threading.Barrier(4, timeout=30)
    opened: list[str] = []
    real_open = env.fs.open

    def open_and_meet(path: str, mode: str = "rb", **kw: Any) -> Any:
        stream = real_open(path, mode, **kw)
        if mode == "wb" and ("/shared_checksum/" in path or "/private/" in path):
            opened.append(path)
            if len(opened) <= barrier.parties:
                barrier.wait()
        return stream

    env.fs.open = open_and_meet  # type: ignore[method-assign]
    engine = BackupEngine.open(BackupableDBOptions(str(tmp_path / "backup"), backup_env=env,
                                                   max_background_operations=1))
    assert engine.create_new_backup(live_db.db) == 1
    assert len(opened) >= 4
    engine.verify_backup(1, verify_with_checksum=True)
    engine.close()
    assert local_hdfs_env(tmp_path / "b2", transfer_width=1).capabilities.transfer_width == 1


def test_open_write_new_never_replaces_a_file_published_while_it_wrote(tmp_path: Path) -> None:
    """A backup's files are published with the rename that refuses an existing name: a file another
    writer publishes under the same name while this one writes is kept and this one gets
    AlreadyExists (looking first and then renaming replaced it), its private temp removed."""
    env = local_hdfs_env(tmp_path / "b")
    rival = tmp_path / "b" / "shared_checksum" / "000009_s1_5.sst"
    real_open = env.fs.open

    class RivalOnClose:
        """The temp's stream: as it closes, another writer publishes the same name."""

        def __init__(self, stream: Any) -> None:
            self._stream = stream

        def close(self) -> None:
            self._stream.close()
            rival.write_bytes(b"rival")

        def __getattr__(self, name: str) -> Any:
            return getattr(self._stream, name)

    def open_with_rival(path: str, mode: str = "rb", **kw: Any) -> Any:
        stream = real_open(path, mode, **kw)
        return RivalOnClose(stream) if mode == "wb" else stream

    env.makedirs("shared_checksum")
    env.fs.open = open_with_rival  # type: ignore[method-assign]
    with pytest.raises(AlreadyExists, match=r"000009_s1_5\.sst"):
        with env.open_write_new("shared_checksum/000009_s1_5.sst") as w:
            w.write(b"ours!")
    assert rival.read_bytes() == b"rival"
    assert [f.path for f in env.list()] == ["shared_checksum/000009_s1_5.sst"]


def test_open_write_new_whose_rename_reply_was_lost_is_published(tmp_path: Path) -> None:
    """A refusal whose private temp is gone, with the name holding as many bytes as were written,
    was this writer's own rename answered twice (a retried request): success, as for create_exclusive."""
    def rename_then_refuse(source: str, destination: str) -> None:
        local_exclusive_rename(source, destination)
        raise FileExistsError(destination)

    env = HdfsEnv(f"hdfs://{tmp_path / 'b'}", connect=local_connector, rename_exclusive=rename_then_refuse)
    with env.open_write_new("private/1/CURRENT") as w:
        w.write(b"MANIFEST-000005\n")
    assert env.read_bytes("private/1/CURRENT", 100) == b"MANIFEST-000005\n"


# -- create_exclusive: what the private temp, re-check and read-back buy -------------------
def test_create_exclusive_uses_a_private_temp(tmp_path: Path) -> None:
    env = local_hdfs_env(tmp_path / "b")
    seen: list[str] = []
    real_open = env.fs.open

    def spying_open(path: str, mode: str = "rb", **kw: Any) -> Any:
        seen.append(path)
        return real_open(path, mode, **kw)

    env.fs.open = spying_open  # type: ignore[method-assign]
    env.create_exclusive("meta/3", b"x")
    env.create_exclusive("meta/4", b"y")
    # each name opened once, or twice where the stand-in's open found meta/ missing and was retried
    temps = list(dict.fromkeys(p.rsplit("/", 1)[1] for p in seen if p.endswith(".tmp")))
    assert len(temps) == 2 and temps[0].startswith(".3.") and temps[1].startswith(".4.")
    assert [f.path for f in env.list()] == ["meta/3", "meta/4"]


def test_create_exclusive_refuses_a_name_that_appears_during_the_write(tmp_path: Path) -> None:
    env = local_hdfs_env(tmp_path / "b")
    real_open = env.fs.open
    other = tmp_path / "b" / "meta" / "5"

    def racing_open(path: str, mode: str = "rb", **kw: Any) -> Any:
        if mode == "wb" and path.endswith(".tmp"):
            other.write_bytes(b"the other writer")  # lands while our temp is written
        return real_open(path, mode, **kw)

    env.fs.open = racing_open  # type: ignore[method-assign]
    with pytest.raises(AlreadyExists, match="meta/5"):
        env.create_exclusive("meta/5", b"ours")
    assert env.read_bytes("meta/5", 100) == b"the other writer"
    assert [f.path for f in env.list()] == ["meta/5"], "our temp file was left behind"


def test_create_exclusive_takes_a_lost_reply_for_success(tmp_path: Path) -> None:
    """A retried rename whose first try went through is refused: the temp being gone and the
    name holding our bytes proves the name is ours."""
    calls: list[str] = []

    def renamed_then_refused(source: str, destination: str) -> None:
        calls.append(destination)
        local_exclusive_rename(source, destination)
        raise FileExistsError(errno.EEXIST, "rename destination already exists", destination)

    env = HdfsEnv(f"hdfs://{tmp_path}/b", connect=local_connector, rename_exclusive=renamed_then_refused)
    env.create_exclusive("meta/1", b"ours")
    assert calls and env.read_bytes("meta/1", 100) == b"ours"
    with pytest.raises(AlreadyExists):
        env.create_exclusive("meta/1", b"again")


def test_create_exclusive_racing_threads_have_one_winner(tmp_path: Path) -> None:
    """20 rounds of 8 racing creators: exactly one succeeds, its bytes stay, no temp is left."""
    env = local_hdfs_env(tmp_path / "b")
    assert env.capabilities.conditional_create is True
    def payload(i: int) -> bytes:
        return f"writer {i} ".encode() * (50 * (i + 1))

    for rnd in range(20):
        name = f"meta/{rnd + 1}"
        won = race_for_one_winner(lambda i, name=name: lambda: env.create_exclusive(name, payload(i)))
        assert env.read_bytes(name, 1 << 20) == payload(won)
    assert all(".tmp" not in f.path for f in env.list()), "temp files left behind"


# -- 2. the glue -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "url, namenode, port, path, user",
    [
        ("hdfs://nn1.example.com:8020/backups/db1", "nn1.example.com", 8020, "/backups/db1", None),
        ("hdfs://nn1.example.com/backups/db1/", "nn1.example.com", 0, "/backups/db1", None),
        ("hdfs:///backups/db1", "default", 0, "/backups/db1", None),
        ("hdfs://MyNameService/backups", "MyNameService", 0, "/backups", None),
        ("hdfs://alice@nn:9000/b", "nn", 9000, "/b", "alice"),
        ("HDFS://nn:8020/b", "nn", 8020, "/b", None),
        ("hdfs://[::1]:8020/b", "[::1]", 8020, "/b", None),
        ("viewfs://cluster1/user/alice/backups", "viewfs://cluster1", 0, "/user/alice/backups", None),
        ("viewfs:///backups", "viewfs:///", 0, "/backups", None),
    ],
)
def test_parse_hdfs_url(url: str, namenode: str, port: int, path: str, user: str | None) -> None:
    loc = parse_hdfs_url(url)
    assert (loc.namenode, loc.port, loc.path, loc.user) == (namenode, port, path, user)
    assert loc.url.endswith(path) and "://" in loc.url


@pytest.mark.parametrize(
    "url, fragment",
    [
        ("s3://bucket/x", "not an HDFS URL"),
        ("/plain/path", "not an HDFS URL"),
        ("hdfs://nn:8020", "no directory"),
        ("hdfs://nn:8020/", "no directory"),
        ("hdfs://nn:8020/a/../b", "absolute"),
        ("hdfs://nn:8020/a//b", "absolute"),
        ("hdfs://nn:8020/b?replication=1", "storage_options"),
        ("hdfs://nn:http/b", "invalid port"),
        ("hdfs://nn:70000/b", "invalid port"),
        ("hdfs://:8020/b", "without a host"),
        ("viewfs://cluster:8020/b", "mount table"),
        ("hdfs://[::1/b", "malformed HDFS URL"),
    ],
)
def test_parse_hdfs_url_rejects(url: str, fragment: str) -> None:
    with pytest.raises(InvalidArgument, match=fragment):
        parse_hdfs_url(url)


def test_parse_hdfs_url_never_echoes_a_password() -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_hdfs_url("hdfs://alice:s3cret@nn:8020/b")
    assert "s3cret" not in str(info.value) and "kerb_ticket" in str(info.value)


def test_option_mapping_reaches_hadoop_filesystem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CLASSPATH", raising=False)  # no site files: rbackup's tuned keys all apply
    calls: list[dict[str, Any]] = []

    def recording(**kwargs: Any) -> pyarrow.fs.FileSystem:
        calls.append(kwargs)
        return pyarrow.fs.LocalFileSystem()

    env = HdfsEnv(
        "hdfs://nn1.example.com:9000/backups/db1",
        storage_options={
            "user": "etl",
            "kerb_ticket": tmp_path / "krb5cc_1000",
            "replication": 2,
            "buffer_size": 1 << 16,
            "default_block_size": 256 << 20,
            "extra_conf": {"dfs.client.use.datanode.hostname": True, "ipc.client.connect.max.retries": 3},
            "concurrency": 3,
            "transfer_width": 6,
        },
        connect=recording,
    )
    assert calls == [{
        "host": "nn1.example.com",
        "port": 9000,
        "user": "etl",
        "replication": 2,
        "buffer_size": 65536,
        "default_block_size": 268435456,
        "kerb_ticket": str(tmp_path / "krb5cc_1000"),
        "extra_conf": {**TUNED, "dfs.client.use.datanode.hostname": "true", "ipc.client.connect.max.retries": "3"},
    }]
    assert env.url == "hdfs://nn1.example.com:9000/backups/db1"
    assert env.root == "/backups/db1"
    assert env.describe("meta/1") == "hdfs://nn1.example.com:9000/backups/db1/meta/1"
    caps = env.capabilities
    assert (caps.atomic_rename, caps.conditional_create, caps.durable_sync, caps.directories, caps.concurrency) == (
        True, True, False, True, 3)
    # concurrency means what it means for S3 (requests at once); files at once is its own option
    assert (caps.transfer_width, caps.buffer_size) == (6, DISK_BUFFER_SIZE)
    assert HdfsEnv.capabilities.transfer_width == HdfsSettings().transfer_width == 4


def test_default_options_keep_the_cluster_configuration() -> None:
    """Everything from the configuration, but for the close's retry delay (`clientconf.TUNED`)."""
    kwargs = hadoop_fs_kwargs(parse_hdfs_url("hdfs:///b"), HdfsSettings())
    assert kwargs == {"host": "default", "port": 0, "user": None, "replication": 0, "buffer_size": 0,
                      "default_block_size": None, "kerb_ticket": None, "extra_conf": dict(TUNED)}


def test_a_close_retries_after_25_ms_unless_the_configuration_says_otherwise(tmp_path: Path) -> None:
    """The NameNode refuses to complete a file until a DataNode reported its last block, and Hadoop's
    client waits 400 ms before asking again: rbackup starts at 25 ms with twice the retries, except
    for a key that hdfs-site.xml (the first on CLASSPATH) or extra_conf sets."""
    delay, retries = "dfs.client.block.write.locateFollowingBlock.initial.delay.ms", \
        "dfs.client.block.write.locateFollowingBlock.retries"
    assert TUNED == {delay: "25", retries: "10"}
    conf, shadowed = tmp_path / "conf", tmp_path / "later"
    for d, value in ((conf, "100"), (shadowed, "7")):
        d.mkdir()
        (d / "hdfs-site.xml").write_text(f"<configuration><property><name>{delay if d == conf else retries}</name>"
                                         f"<value>{value}</value></property></configuration>")
    (conf / "core-site.xml").write_text("<configuration><property")  # unreadable: sets nothing
    classpath = os.pathsep.join([str(tmp_path / "jars" / "*"), str(conf), str(shadowed)])
    keys = site_keys({"CLASSPATH": classpath})
    assert delay in keys and retries not in keys  # only the first hdfs-site.xml on the class path counts
    location = parse_hdfs_url("hdfs:///b")
    assert hadoop_fs_kwargs(location, HdfsSettings(), keys)["extra_conf"] == {retries: "10"}
    mine = HdfsSettings(extra_conf={delay: 50, retries: 3})
    assert hadoop_fs_kwargs(location, mine, ())["extra_conf"] == {delay: "50", retries: "3"}
    assert site_keys({}) == frozenset()


def test_user_from_url_and_options() -> None:
    assert HdfsSettings.from_options({}, url_user="alice").user == "alice"
    assert HdfsSettings.from_options({"user": "alice"}, url_user="alice").user == "alice"
    with pytest.raises(InvalidArgument, match="'alice' in the URL but 'bob'"):
        HdfsSettings.from_options({"user": "bob"}, url_user="alice")


@pytest.mark.parametrize(
    "options, fragment",
    [
        ({"usr": "x"}, r"HDFS: unknown storage_options \['usr'\]"),
        ({"replication": 40000}, "replication"),
        ({"replication": -1}, "replication"),
        ({"buffer_size": -1}, "buffer_size"),
        ({"default_block_size": 0}, "default_block_size"),
        ({"concurrency": 0}, "concurrency"),
        ({"transfer_width": 0}, "transfer_width"),
    ],
)
def test_bad_options(options: dict[str, Any], fragment: str) -> None:
    with pytest.raises(InvalidArgument, match=fragment):
        HdfsSettings.from_options(options)


@pytest.mark.parametrize(
    "exc, kind, fragments",
    [
        (OSError("Unable to load libjvm\ndlopen(/usr/lib/jvm/default-java/libjvm.so) failed"), NotSupported,
         ["libjvm", "JAVA_HOME"]),
        (OSError("Unable to load libhdfs\ndlopen(libhdfs.so) failed"), NotSupported,
         ["libhdfs", "HADOOP_HOME", "ARROW_LIBHDFS_DIR"]),
        (OSError("Prior attempt to load libhdfs failed"), NotSupported, ["earlier attempt", "new process"]),
        (OSError("HDFS connection failed"), StorageError, ["CLASSPATH", "HADOOP_CONF_DIR"]),
        (OSError(errno.ENOENT, "Opening HDFS file '/b/meta/9' failed"), NotFound, ["not found"]),
        (OSError(errno.EACCES, "HDFS rename failed"), PermissionDenied, ["permission denied"]),
        (OSError(errno.EEXIST, "HDFS create failed"), AlreadyExists, ["already exists"]),
        (OSError(errno.EROFS, "HDFS create failed"), StorageError, ["safe mode"]),
        (OSError(errno.EDQUOT, "HDFS Write failed"), StorageError, ["quota"]),
        (OSError(errno.ESTALE, "HDFS CloseFile failed"), StorageError, ["lease expired"]),
        (OSError(errno.ENOTSUP, "HDFS append failed"), NotSupported, ["not supported"]),
        (OSError(255, "HDFS Rename failed"), StorageError, ["Java exception"]),
        (OSError("something else"), StorageError, ["something else"]),
    ],
)
def test_translate_hdfs_error(exc: OSError, kind: type, fragments: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    # What libhdfs last kept for this thread belongs to earlier tests, not to these made-up errors.
    monkeypatch.setattr(rbackup_hdfs.errors, "java_root_cause", lambda: None)
    error = translate_hdfs_error(exc, "write hdfs://nn:8020/b/meta/9")
    assert type(error) is kind
    assert str(error).startswith("write hdfs://nn:8020/b/meta/9: ")
    for fragment in fragments:
        assert fragment in str(error)


@pytest.mark.parametrize("exc", [OSError(255, "HDFS list directory failed"), OSError("HDFS connection failed")])
def test_a_java_exception_is_named_by_its_root_cause(exc: OSError, monkeypatch: pytest.MonkeyPatch) -> None:
    cause = "ConnectException: Call From h/127.0.0.1 to 127.0.0.1:1 failed on connection exception"
    monkeypatch.setattr(rbackup_hdfs.errors, "java_root_cause", lambda: cause)
    error = translate_hdfs_error(exc, "list hdfs://nn:8020/b/meta")
    assert type(error) is StorageError
    assert str(error).startswith("list hdfs://nn:8020/b/meta: ") and cause in str(error)
    assert "exception is on stderr" not in str(error) and "printed it on stderr" not in str(error)


class _ReadsFail:
    """A pyarrow stream whose reads fail as libhdfs's do when a block cannot be read (errno 255)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def read(self, *args: Any) -> bytes:
        raise OSError(255, "HDFS read failed")

    def readinto(self, *args: Any) -> int:
        raise OSError(255, "HDFS read failed")


class _LocalWithFailingReads:
    def __init__(self, inner: pyarrow.fs.FileSystem) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def open_input_file(self, path: str, *args: Any, **kwargs: Any) -> Any:
        return _ReadsFail(self._inner.open_input_file(path, *args, **kwargs))

    def open_input_stream(self, path: str, *args: Any, **kwargs: Any) -> Any:
        return _ReadsFail(self._inner.open_input_stream(path, *args, **kwargs))


def test_a_read_that_fails_mid_stream_is_translated_as_hdfs_errors_are(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The read streams went through the generic translation, not HDFS's: the Java exception's
    root cause was lost, and the error said only "[Errno 255]"."""
    local_hdfs_env(tmp_path).write_bytes("shared_checksum/1.sst", b"x" * 1000)
    cause = "BlockMissingException: Could not obtain block: BP-1:blk_1073741825_1001 file=/b/1.sst"
    monkeypatch.setattr(rbackup_hdfs.errors, "java_root_cause", lambda: cause)
    env = HdfsEnv(f"hdfs://{tmp_path}", connect=lambda **kw: _LocalWithFailingReads(pyarrow.fs.LocalFileSystem()),
                  rename_exclusive=local_exclusive_rename)
    with env.open_read("shared_checksum/1.sst") as stream, pytest.raises(StorageError) as caught:
        stream.read(100)
    assert str(caught.value) == (f"read {env.describe('shared_checksum/1.sst')}: HDFS failed: {cause} "
                                 "(libhdfs printed the Java stack trace on stderr)")


def test_connect_failure_is_clean() -> None:
    def no_libhdfs(**kwargs: Any) -> pyarrow.fs.FileSystem:
        raise OSError("Unable to load libhdfs\ndlopen(libhdfs.so) failed: cannot open shared object file")

    with pytest.raises(NotSupported, match=r"connect hdfs://nn:8020/b: HDFS is not available here: .*libhdfs"):
        HdfsEnv("hdfs://nn:8020/b", connect=no_libhdfs)


def test_operation_errors_name_the_url(tmp_path: Path) -> None:
    env = local_hdfs_env(tmp_path / "b")
    with pytest.raises(NotFound, match=f"read hdfs://{tmp_path}/b/meta/404"):
        env.open_read("meta/404")


def test_registry_resolves_hdfs_and_viewfs(monkeypatch: pytest.MonkeyPatch) -> None:
    assert backend_class("hdfs") is HdfsEnv
    assert backend_class("viewfs") is HdfsEnv
    calls: list[dict[str, Any]] = []

    def recording(**kwargs: Any) -> pyarrow.fs.FileSystem:
        calls.append(kwargs)
        return pyarrow.fs.LocalFileSystem()

    # A double for the connection only: open_env must reach pyarrow.fs.HadoopFileSystem.
    monkeypatch.setattr(pyarrow.fs, "HadoopFileSystem", recording)
    monkeypatch.setenv("CLASSPATH", "/already/set")  # keep ensure_hadoop_classpath out of it
    env = open_env("hdfs://nn:8020/backups", storage_options={"user": "bob"})
    assert isinstance(env, HdfsEnv) and env.url == "hdfs://nn:8020/backups"
    assert calls[0]["host"] == "nn" and calls[0]["port"] == 8020 and calls[0]["user"] == "bob"


def _pyarrow_hdfs_in_child(env_vars: dict[str, str]) -> list[list[str]]:
    """Construct HdfsEnv twice with pyarrow's real HadoopFileSystem, in a fresh process."""
    code = (
        "import json\n"
        "from rbackup.errors import BackupError\n"
        "from rbackup_hdfs import HdfsEnv\n"
        "out = []\n"
        "for _ in range(2):\n"
        "    try:\n"
        "        HdfsEnv('hdfs://127.0.0.1:9/backups')\n"
        "        out.append(['connected', ''])\n"
        "    except BackupError as exc:\n"
        "        out.append([type(exc).__name__, str(exc)])\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env=env_vars, capture_output=True, text=True,
                          timeout=120, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _env_without_hadoop(**extra: str) -> dict[str, str]:
    drop = {"JAVA_HOME", "HADOOP_HOME", "ARROW_LIBHDFS_DIR", "CLASSPATH", "HADOOP_CONF_DIR"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(extra)
    return env


def test_missing_libjvm_or_libhdfs_is_a_clean_error() -> None:
    """pyarrow's real loader, without JAVA_HOME; the second try shows the process-wide memory."""
    first, second = _pyarrow_hdfs_in_child(_env_without_hadoop())
    if first[0] == "connected":
        pytest.skip("this machine has libjvm and libhdfs: nothing is missing")
    assert first[0] == "NotSupported"
    assert "HDFS is not available here" in first[1] and "hdfs://127.0.0.1:9/backups" in first[1]
    assert ("libjvm" in first[1] and "JAVA_HOME" in first[1]) or "libhdfs" in first[1]
    assert "\n" not in first[1], "pyarrow's list of dlopen attempts leaked into the message"
    assert second[0] == "NotSupported" and "new process" in second[1]


def test_missing_libhdfs_with_a_jvm_is_a_clean_error() -> None:
    java = java_home()
    if java is None:
        pytest.skip("no Java installation here to get past the libjvm step")
    first, _ = _pyarrow_hdfs_in_child(_env_without_hadoop(JAVA_HOME=java))
    if first[0] == "connected":
        pytest.skip("this machine has libhdfs: nothing is missing")
    assert first[0] == "NotSupported" and "libhdfs.so" in first[1] and "HADOOP_HOME" in first[1]


def java_home() -> str | None:
    """JAVA_HOME of the `java` on PATH, if it has a libjvm.so."""
    java = shutil.which("java")
    if java is None:
        return None
    home = Path(os.path.realpath(java)).parent.parent
    return str(home) if any(home.glob("**/libjvm.so")) else None


@pytest.mark.parametrize(("before", "after"), [
    (None, "-Xrs"),
    ("", "-Xrs"),
    ("-Xmx512m", "-Xmx512m -Xrs"),
    ("-Xmx512m -Xrs", "-Xmx512m -Xrs"),
    ("-Xrs -Xmx1g", "-Xrs -Xmx1g"),
    ("-Xrsx", "-Xrsx -Xrs"),  # a word, not a substring
])
def test_the_jvm_is_told_to_leave_signals_to_python(before: str | None, after: str) -> None:
    """Without -Xrs, libhdfs's JVM exits the process on SIGINT/SIGTERM (the live test shows it)."""
    environ = {} if before is None else {"LIBHDFS_OPTS": before}
    leave_signals_to_python(environ)
    assert environ == {"LIBHDFS_OPTS": after}


def test_ensure_hadoop_classpath(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    hadoop = bin_dir / "hadoop"
    hadoop.write_text('#!/bin/sh\n[ "$1 $2" = "classpath --glob" ] && echo "/h/a.jar:/h/b.jar"\n')
    hadoop.chmod(hadoop.stat().st_mode | stat.S_IEXEC)

    environ = {"PATH": str(bin_dir)}
    ensure_hadoop_classpath(environ)
    assert environ["CLASSPATH"] == "/h/a.jar:/h/b.jar"

    environ = {"PATH": "/nonexistent", "HADOOP_HOME": str(tmp_path)}
    ensure_hadoop_classpath(environ)
    assert environ["CLASSPATH"] == "/h/a.jar:/h/b.jar"

    environ = {"PATH": str(bin_dir), "CLASSPATH": "/mine.jar"}
    ensure_hadoop_classpath(environ)
    assert environ["CLASSPATH"] == "/mine.jar"

    environ = {"PATH": "/nonexistent"}
    ensure_hadoop_classpath(environ)
    assert "CLASSPATH" not in environ


# -- 3. the real suite: against the MiniDFSCluster of tests/hdfs_fixtures.py (or RBACKUP_TEST_HDFS_URL) ------
@pytest.mark.hdfs
@pytest.mark.slow
class TestRealHdfs(BackendConformance):
    """The conformance kit and the engine round trip against a real NameNode and DataNodes."""

    large_file_size = 8 << 20

    @pytest.fixture(autouse=True)
    def _cluster(self, real_hdfs: RealHdfs) -> Iterator[None]:
        self._base = real_hdfs.url
        self._made: list[HdfsEnv] = []
        yield
        for env in self._made:
            if env.fs.exists(env.root):  # pyarrow's delete of a missing path is EIO, not ENOENT
                env.fs.rm(env.root, recursive=True)

    def make_env(self, tmp_path: Path) -> HdfsEnv:
        env = HdfsEnv(f"{self._base}/{uuid.uuid4().hex}")
        self._made.append(env)
        return env


def test_classpath_problems(tmp_path: Path) -> None:
    """The two CLASSPATH lacks that do not fail cleanly are named before libhdfs starts."""
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "commons-lang3-3.17.0.jar").write_bytes(b"")
    conf = str(tmp_path / "conf")
    good = {"CLASSPATH": f"{conf}:/j/hadoop-client-api.jar:{tmp_path}/lib/*", "HADOOP_CONF_DIR": conf}
    assert classpath_problems(good) == []
    no_lang = {"CLASSPATH": f"{conf}:/j/hadoop-client-api.jar", "HADOOP_CONF_DIR": conf}
    assert ["commons-lang3" in p and "kill" in p for p in classpath_problems(no_lang)] == [True]
    no_conf = {"CLASSPATH": "/j/commons-lang3-3.17.0.jar", "HADOOP_CONF_DIR": conf}
    assert ["not on CLASSPATH" in p for p in classpath_problems(no_conf)] == [True]
    assert classpath_problems({}) == []
