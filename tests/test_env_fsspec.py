"""FsspecEnv: the conformance kit over fsspec's memory and local filesystems, and
over pyarrow's local filesystem through ArrowFSWrapper (HDFS's code path), plus
the generic env's own promises: error mapping, URL redaction, deferred commit."""
from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fsspec.implementations.arrow import ArrowFSWrapper
from fsspec.implementations.local import LocalFileSystem
from fsspec.implementations.memory import MemoryFileSystem

from rbackup.env.base import Capabilities, FileInfo
from rbackup.env.fsspec_env import CONSERVATIVE, FsspecEnv, redact_url, translate_store_error
from rbackup.errors import (
    AlreadyExists,
    InvalidArgument,
    NotFound,
    NotSupported,
    PermissionDenied,
    StorageError,
)
from rbackup.testing.env_contract import BackupEnvContract

FILE_LIKE = Capabilities(atomic_rename=True, conditional_create=True, directories=True, concurrency=4)


class TestMemoryFs(BackupEnvContract):
    """Memory publishes as it writes: the env must fall back to temp name + mv."""

    @pytest.fixture(autouse=True)
    def _clean_store(self) -> Iterator[None]:
        self.root = f"/rbackup-test-{uuid.uuid4().hex}"
        yield
        fs = MemoryFileSystem()
        if fs.exists(self.root):
            fs.rm(self.root, recursive=True)

    def make_env(self, tmp_path: Path) -> FsspecEnv:
        return FsspecEnv(MemoryFileSystem(), self.root, url=f"memory://{self.root}")


class TestLocalFsConservative(BackupEnvContract):
    """Local files honour autocommit=False: the deferred-commit writer is used."""

    def make_env(self, tmp_path: Path) -> FsspecEnv:
        return FsspecEnv(LocalFileSystem(), str(tmp_path / "backup"), url=f"file://{tmp_path}/backup")


class TestLocalFsFileLike(BackupEnvContract):
    """Local disk declared with atomic rename and O_EXCL: temp name + rename, "xb"."""

    def make_env(self, tmp_path: Path) -> FsspecEnv:
        return FsspecEnv(LocalFileSystem(), str(tmp_path / "backup"), url=f"file://{tmp_path}/backup",
                         capabilities=FILE_LIKE)


class TestArrowLocalFs(BackupEnvContract):
    """The HDFS code path (ArrowFSWrapper: no "xb", no transaction, no auto-mkdir) on local disk."""

    def make_env(self, tmp_path: Path) -> FsspecEnv:
        import pyarrow.fs

        caps = Capabilities(atomic_rename=True, directories=True, concurrency=4)
        return FsspecEnv(ArrowFSWrapper(pyarrow.fs.LocalFileSystem()), str(tmp_path / "backup"),
                         url=f"hdfs-like://{tmp_path}/backup", capabilities=caps)


def test_default_capabilities_are_conservative(tmp_path: Path) -> None:
    env = FsspecEnv(LocalFileSystem(), str(tmp_path), url=str(tmp_path))
    assert env.capabilities == CONSERVATIVE
    assert not (CONSERVATIVE.atomic_rename or CONSERVATIVE.conditional_create or CONSERVATIVE.durable_sync)
    assert (CONSERVATIVE.concurrency, CONSERVATIVE.transfer_width) == (8, 4)  # the widths the engine used before


def test_from_url_memory_and_local(tmp_path: Path) -> None:
    name = f"memory://rbackup-from-url-{uuid.uuid4().hex}"
    env = FsspecEnv.from_url(name)
    env.write_bytes("meta/1", b"m")
    assert FsspecEnv.from_url(name).list() == [FileInfo("meta/1", 1)]
    env.delete(["meta/1"])
    local = FsspecEnv.from_url(f"file://{tmp_path}/b")
    local.write_bytes("x/y", b"12")
    assert (tmp_path / "b" / "x" / "y").read_bytes() == b"12"


def test_from_url_unknown_protocol() -> None:
    with pytest.raises((InvalidArgument, NotSupported)) as info:
        FsspecEnv.from_url("nosuchproto://user:hunter2@host/x")
    assert "hunter2" not in str(info.value)


def test_conservative_create_exclusive_is_best_effort_but_refuses(tmp_path: Path) -> None:
    env = FsspecEnv(LocalFileSystem(), str(tmp_path / "b"), url="file:///b")
    env.create_exclusive("meta/1", b"one")
    with pytest.raises(AlreadyExists) as info:
        env.create_exclusive("meta/1", b"two")
    assert "file:///b/meta/1" in str(info.value)
    assert env.read_bytes("meta/1", 10) == b"one"


def test_redact_url() -> None:
    assert redact_url("sftp://alice:s3cr3t@host:22/backups") == "sftp://alice@host:22/backups"
    assert redact_url("ftp://:s3cr3t@host/x") == "ftp://host/x"
    assert redact_url("s3://bucket/prefix") == "s3://bucket/prefix"
    assert redact_url("/plain/path") == "/plain/path"


def test_url_in_messages_has_no_password(tmp_path: Path) -> None:
    env = FsspecEnv(LocalFileSystem(), str(tmp_path), url="sftp://alice:s3cr3t@host/backups")
    assert "s3cr3t" not in repr(env) and "s3cr3t" not in env.describe("x")
    with pytest.raises(NotFound) as info:
        env.open_read("missing")
    assert "sftp://alice@host/backups/missing" in str(info.value)
    assert "s3cr3t" not in str(info.value)


class _FakeClientError(Exception):
    """Shaped like botocore's ClientError, without importing botocore."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(error.get("Message", ""))
        self.response = {"Error": error}


@pytest.mark.parametrize(
    ("error", "expected", "text"),
    [
        ({"Code": "NoSuchBucket", "BucketName": "bkt"}, NotFound, "bucket 'bkt' does not exist"),
        ({"Code": "NoSuchKey"}, NotFound, "not found"),
        ({"Code": "AccessDenied", "Message": "Access Denied"}, PermissionDenied, "Access Denied"),
        ({"Code": "InvalidAccessKeyId"}, PermissionDenied, "InvalidAccessKeyId"),
        ({"Code": "PreconditionFailed", "Condition": "If-None-Match"}, AlreadyExists, "already exists"),
        ({"Code": "InternalError", "Message": "boom"}, StorageError, "InternalError: boom"),
    ],
)
def test_translate_client_errors(error: dict[str, Any], expected: type, text: str) -> None:
    # s3fs and friends raise an OSError whose __cause__ is the ClientError.
    wrapped = OSError("generic")
    wrapped.__cause__ = _FakeClientError(error)
    for exc in (_FakeClientError(error), wrapped):
        err = translate_store_error(exc, "write s3://bkt/p/x")
        assert type(err) is expected
        assert "s3://bkt/p/x" in str(err) and text in str(err)


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (FileNotFoundError("x"), NotFound),
        (FileExistsError("x"), AlreadyExists),
        (PermissionError("x"), PermissionDenied),
        (IsADirectoryError("x"), NotFound),
        (ConnectionResetError("x"), StorageError),
        (RuntimeError("x"), StorageError),
    ],
)
def test_translate_os_errors(exc: BaseException, expected: type) -> None:
    err = translate_store_error(exc, "read memory://r/f")
    assert type(err) is expected and "memory://r/f" in str(err)


def test_read_errors_are_translated(tmp_path: Path) -> None:
    env = FsspecEnv(LocalFileSystem(), str(tmp_path), url=f"file://{tmp_path}")
    env.write_bytes("f", b"data")
    with env.open_read("f") as f:
        f._raw.close()  # the store's stream fails underneath
        with pytest.raises(StorageError) as info:
            f.read(1)
    assert f"file://{tmp_path}/f" in str(info.value)


def test_permission_denied_names_the_url(tmp_path: Path) -> None:
    root = tmp_path / "ro"
    root.mkdir()
    env = FsspecEnv(LocalFileSystem(), str(root), url=f"file://{root}", capabilities=FILE_LIKE)
    root.chmod(0o500)
    try:
        if _can_write(root):
            pytest.skip("running as root: permissions are not enforced")
        with pytest.raises(PermissionDenied) as info:
            env.write_bytes("x", b"1")
        assert f"file://{root}/x" in str(info.value)
    finally:
        root.chmod(0o700)


def _can_write(path: Path) -> bool:
    try:
        (path / ".w").write_bytes(b"")
    except PermissionError:
        return False
    (path / ".w").unlink()
    return True


def test_deferred_writer_publishes_nothing_on_abort_for_buffered_files(tmp_path: Path) -> None:
    """The guard that matters on object stores: an aborted buffered file is discarded, not closed."""
    env = FsspecEnv(LocalFileSystem(), str(tmp_path / "b"), url="file:///b")
    w = env.open_write("shared/1.sst")
    w.write(b"x" * 1000)
    del w  # abandoned without commit: the garbage collector must not publish it
    assert env.list() == []


def test_probe_leaves_nothing_behind(tmp_path: Path) -> None:
    fs = MemoryFileSystem()
    root = f"/rbackup-probe-{uuid.uuid4().hex}"
    env = FsspecEnv(fs, root, url=f"memory://{root}")
    with env.open_write("a") as w:
        w.write(b"1")
    assert fs.find(root) == [f"{root}/a"]
    fs.rm(root, recursive=True)


class _FailingListings(ArrowFSWrapper):
    """pyarrow's local filesystem through ArrowFSWrapper (HdfsEnv's code path) whose listing of
    one directory fails, as HDFS's does while its NameNode fails over or after the directory's
    permissions changed: fsspec's generic `find` leaves such a directory out of its result."""

    failing: str | None = None

    def ls(self, path: str, detail: bool = False, **kwargs: Any) -> Any:
        if self.failing and path.rstrip("/").endswith("/" + self.failing):
            raise ConnectionError(f"listing {path}: the NameNode did not answer")
        return super().ls(path, detail=detail, **kwargs)


def _failing_listings_env(root: Path) -> tuple[FsspecEnv, _FailingListings]:
    import pyarrow.fs

    fs = _FailingListings(pyarrow.fs.LocalFileSystem(), skip_instance_cache=True)
    caps = Capabilities(atomic_rename=True, directories=True, concurrency=4)
    return FsspecEnv(fs, str(root), url=f"hdfs-like://{root}", capabilities=caps), fs


def test_a_directory_that_cannot_be_listed_is_an_error_not_an_empty_one(tmp_path: Path) -> None:
    env, fs = _failing_listings_env(tmp_path / "backup")
    env.makedirs("private/1")
    env.create_exclusive("private/1/MANIFEST-000005", b"m")
    env.create_exclusive("meta/1", b"x")
    fs.failing = "private/1"
    with pytest.raises(StorageError, match="private/1: the NameNode did not answer"):
        env.list()
    fs.failing = None
    assert [f.path for f in env.list()] == ["meta/1", "private/1/MANIFEST-000005"]


def test_a_listing_that_fails_never_lets_garbage_collection_delete_a_backup(tmp_path: Path, live_db: Any) -> None:
    """A listing without `shared_checksum/` made every backup look corrupt (its shared files
    missing), and garbage collection then deleted every backup's private files."""
    from rbackup import BackupableDBOptions, BackupEngine, BackupEngineReadOnly

    root = tmp_path / "backup"
    env, fs = _failing_listings_env(root)
    with BackupEngine.open(BackupableDBOptions(str(root), backup_env=env)) as engine:
        engine.create_new_backup(live_db.db)
        live_db.add(300, prefix="more")
        engine.create_new_backup(live_db.db)

    fs.failing = "shared_checksum"
    with pytest.raises(StorageError, match="shared_checksum"):
        with BackupEngine.open(BackupableDBOptions(str(root), backup_env=env)) as engine:
            engine.garbage_collect()

    fs.failing = None
    with BackupEngineReadOnly.open(BackupableDBOptions(str(root), backup_env=env)) as engine:
        assert [b.backup_id for b in engine.get_backup_info()] == [1, 2]
        for backup_id in (1, 2):
            engine.verify_backup(backup_id, verify_with_checksum=True)


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_store_that_cannot_be_reached_is_an_error_naming_its_url_never_an_empty_directory() -> None:
    port = _closed_port()
    # ftp connects as the filesystem is made: the error names the URL, without its password
    with pytest.raises(StorageError) as caught:
        FsspecEnv.from_url(f"ftp://user:secret@127.0.0.1:{port}/backups")
    assert f"connect ftp://user@127.0.0.1:{port}/backups" in str(caught.value) and "secret" not in str(caught.value)
    # http connects at the first listing, which fsspec's own find reported as empty
    env = FsspecEnv.from_url(f"http://127.0.0.1:{port}/backups")
    with pytest.raises(StorageError, match=f"list http://127.0.0.1:{port}/backups"):
        env.list()
