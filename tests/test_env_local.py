"""LocalEnv: the conformance kit, plus what only a real file system can show."""
from __future__ import annotations

import errno
import os
import stat
import tracemalloc
from pathlib import Path

import pytest

from rbackup.env.local import LocalEnv, path_from_url, temp_path
from rbackup.errors import AlreadyExists, Corruption, InvalidArgument, NotFound, PermissionDenied
from rbackup.testing import BackendConformance
from rbackup.testing.env_contract import race_for_one_winner


class TestLocalEnvContract(BackendConformance):
    def make_env(self, tmp_path):
        return LocalEnv(tmp_path / "backup")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "backup"


@pytest.fixture
def env(root: Path) -> LocalEnv:
    return LocalEnv(root)


# -- construction and URLs ----------------------------------------------------------
def test_urls_and_paths(tmp_path: Path) -> None:
    for spec in (str(tmp_path), tmp_path, f"file://{tmp_path}", f"file://localhost{tmp_path}"):
        assert LocalEnv(spec).root == str(tmp_path)
    assert LocalEnv(url=f"file://{tmp_path}").root == str(tmp_path)
    assert LocalEnv(f"local://{tmp_path}", storage_options={}).root == str(tmp_path)
    with pytest.raises(InvalidArgument, match=r"unknown storage_options \['ignored'\]"):
        LocalEnv(f"local://{tmp_path}", storage_options={"ignored": 1})
    assert path_from_url("relative/dir") == "relative/dir"
    with pytest.raises(InvalidArgument):
        LocalEnv()
    with pytest.raises(InvalidArgument):
        LocalEnv("")


def test_relative_root_is_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    env = LocalEnv("rel")
    monkeypatch.chdir("/")
    env.write_bytes("f", b"x")
    assert (tmp_path / "rel" / "f").read_bytes() == b"x"


def test_root_is_a_file(root: Path) -> None:
    root.write_bytes(b"not a dir")
    env = LocalEnv(root)
    with pytest.raises(InvalidArgument, match=r"backup_dir .* is a file, not a directory"):
        env.makedirs("")
    with pytest.raises(InvalidArgument, match=r"backup_dir .* is a file, not a directory"):
        env.write_bytes("meta/1", b"x")
    with pytest.raises(InvalidArgument, match=r"backup_dir .* is a file, not a directory"):
        env.makedirs("meta")


def test_component_is_a_file(env: LocalEnv) -> None:
    env.write_bytes("private", b"x")
    with pytest.raises(InvalidArgument, match="private"):
        env.makedirs("private/1")
    with pytest.raises(InvalidArgument, match="private is a file, not a directory"):
        env.write_bytes("private/1/CURRENT", b"x")


# -- temp naming and publish mechanics ------------------------------------------------
def test_temp_path() -> None:
    assert temp_path("shared/000010.sst") == "shared/.000010.sst.tmp"
    assert temp_path("LOCK") == ".LOCK.tmp"
    assert temp_path("/b/meta/1") == "/b/meta/.1.tmp"


def test_writer_uses_rocksdb_temp_name(env: LocalEnv, root: Path) -> None:
    w = env.open_write("meta/1")
    w.write(b"meta")
    assert (root / "meta" / ".1.tmp").read_bytes() == b"meta"
    assert not (root / "meta" / "1").exists()
    w.commit()
    assert os.listdir(root / "meta") == ["1"]


def test_stale_temp_is_overwritten(env: LocalEnv, root: Path) -> None:
    """A crash leaves `.name.tmp`; the next publish of that name must not append to it."""
    (root / "shared").mkdir(parents=True)
    (root / "shared" / ".x.sst.tmp").write_bytes(b"stale stale stale")
    env.write_bytes("shared/x.sst", b"new")
    assert (root / "shared" / "x.sst").read_bytes() == b"new"
    assert os.listdir(root / "shared") == ["x.sst"]


def test_fsync_of_file_and_directory(env: LocalEnv, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc to name fsynced descriptors")
    synced: list[str] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    env.makedirs("meta")
    monkeypatch.setattr(os, "fsync", spy)
    env.write_bytes("meta/1", b"x")
    assert synced == [str(root / "meta" / ".1.tmp"), str(root / "meta")]
    synced.clear()
    env.create_exclusive("meta/2", b"x")
    assert synced[-1] == str(root / "meta") and len(synced) == 2
    synced.clear()
    env.write_bytes("meta/3", b"x", sync=False)
    env.create_exclusive("meta/4", b"x", sync=False)
    assert synced == []
    env.sync_dir("meta")
    assert synced == [str(root / "meta")]


def test_new_directories_are_synced_into_their_parent(env: LocalEnv, root: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    env.makedirs("")
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    env.makedirs("private/1")
    assert len(synced) == 2  # root gained private/, private/ gained 1/
    synced.clear()
    env.makedirs("private/1")
    assert synced == []


def test_directory_fsync_unsupported_is_tolerated(env: LocalEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "Invalid argument")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    env.write_bytes("meta/1", b"x")
    env.sync_dir("meta")
    assert env.read_bytes("meta/1", 1) == b"x"


def test_large_memoryview_write_is_not_copied(env: LocalEnv) -> None:
    data = bytearray(64 << 20)
    with env.open_write("big") as w:
        tracemalloc.start()
        try:
            w.write(memoryview(data))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < 1 << 20
    assert env.stat("big").size == len(data)


def test_short_writes_are_completed(env: LocalEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, b: real_write(fd, memoryview(b)[:3]))
    env.write_bytes("f", b"0123456789")
    env.create_exclusive("g", b"abcdefgh")
    monkeypatch.undo()
    assert env.read_bytes("f", 10) == b"0123456789"
    assert env.read_bytes("g", 10) == b"abcdefgh"


def test_commit_failure_leaves_nothing(env: LocalEnv, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_replace(src: str, dst: str) -> None:
        raise OSError(errno.EIO, "Input/output error")

    w = env.open_write("meta/1")
    w.write(b"x")
    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(Exception, match="meta/1"):
        w.commit()
    w.abort()
    assert os.listdir(root / "meta") == []


def test_write_after_abort_is_refused(env: LocalEnv) -> None:
    w = env.open_write("x")
    w.abort()
    with pytest.raises(InvalidArgument):
        w.write(b"late")
    with pytest.raises(InvalidArgument):
        w.commit()


# -- create_exclusive --------------------------------------------------------------------
def test_create_exclusive_leaves_no_temp(env: LocalEnv, root: Path) -> None:
    env.create_exclusive("meta/1", b"m")
    with pytest.raises(AlreadyExists):
        env.create_exclusive("meta/1", b"n")
    assert os.listdir(root / "meta") == ["1"]


def test_create_exclusive_without_hard_links(env: LocalEnv, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_link(src: str, dst: str) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_link)
    env.create_exclusive("LOCK", b"holder")
    with pytest.raises(AlreadyExists, match="LOCK"):
        env.create_exclusive("LOCK", b"other")
    assert (root / "LOCK").read_bytes() == b"holder"
    assert os.listdir(root) == ["LOCK"]


def test_create_exclusive_race_many_rounds(env: LocalEnv) -> None:
    for rnd in range(20):
        won = race_for_one_winner(
            lambda i, rnd=rnd: lambda: env.create_exclusive(f"meta/{rnd}", str(i).encode() * 1000))
        assert env.read_bytes(f"meta/{rnd}", 8000) == str(won).encode() * 1000


# -- symlinks and hostile directories -------------------------------------------------------
def test_symlinked_file_out_of_root_is_refused(env: LocalEnv, root: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"password")
    env.makedirs("private/1")
    (root / "private" / "1" / "CURRENT").symlink_to(secret)
    with pytest.raises(Corruption, match=r"private/1/CURRENT: symlink leaves the backup directory"):
        env.open_read("private/1/CURRENT")
    with pytest.raises(Corruption):
        env.read_bytes("private/1/CURRENT", 100)


def test_symlinked_parent_out_of_root_is_refused(env: LocalEnv, root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "000001.sst").write_bytes(b"foreign")
    env.makedirs("")
    (root / "shared_checksum").symlink_to(outside, target_is_directory=True)
    with pytest.raises(Corruption, match="symlink leaves the backup directory"):
        env.open_read("shared_checksum/000001.sst")


def test_symlink_inside_root_is_followed(env: LocalEnv, root: Path) -> None:
    env.write_bytes("real/file", b"content")
    (root / "alias").symlink_to(root / "real" / "file")
    assert env.read_bytes("alias", 100) == b"content"


def test_root_behind_a_symlink_works(tmp_path: Path) -> None:
    (tmp_path / "disk").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "disk", target_is_directory=True)
    env = LocalEnv(tmp_path / "link")
    env.write_bytes("meta/1", b"x")
    assert env.read_bytes("meta/1", 1) == b"x"


def test_list_refuses_symlinked_directories(env: LocalEnv, root: Path, tmp_path: Path) -> None:
    """Skipping one would hide backups' files (they would look corrupt and garbage
    collection would delete the rest); following one would leave the root."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "f").write_bytes(b"x")
    env.write_bytes("inside/g", b"yy")
    (root / "escape").symlink_to(outside, target_is_directory=True)
    with pytest.raises(Corruption, match="escape is a symlink to a directory"):
        env.list("")
    with pytest.raises(Corruption, match="escape is a symlink to a directory"):
        env.list_sizes("", known={"escape": 1})
    assert [i.path for i in env.list("inside")] == ["inside/g"]
    (root / "escape").unlink()
    (root / "loop").symlink_to(root, target_is_directory=True)
    with pytest.raises(Corruption, match="loop"):
        env.list("")


def test_list_sizes_takes_the_known_size_of_a_regular_file_without_a_stat(env: LocalEnv, root: Path) -> None:
    """What saves a writer's reload 10,000 stats: a regular file the caller knows is not measured
    (shown here by a known size that is wrong on purpose), while everything the entry's type alone
    cannot settle is: a new name, a symlink (its target may be anything), a directory now where a
    known file was, a name gone."""
    env.write_bytes("shared_checksum/1_s1.sst", b"x" * 10)
    env.write_bytes("shared_checksum/2_s1.sst", b"x" * 20)
    env.write_bytes("private/1/CURRENT", b"x" * 3)
    (root / "shared_checksum" / "3_s1.sst").symlink_to(root / "private" / "1" / "CURRENT")
    (root / "shared_checksum" / "4_s1.sst").mkdir()
    known = {"shared_checksum/1_s1.sst": 11, "shared_checksum/3_s1.sst": 33, "shared_checksum/4_s1.sst": 44,
             "shared_checksum/5_s1.sst": 55}
    assert env.list_sizes("", known=known) == {
        "shared_checksum/1_s1.sst": 11,  # taken as known: no stat
        "shared_checksum/2_s1.sst": 20,  # new: measured
        "shared_checksum/3_s1.sst": 3,  # a symlink: measured through it
        "private/1/CURRENT": 3,
    }
    assert env.list_sizes("") == {fi.path: fi.size for fi in env.list("")}
    assert env.list_sizes("shared_checksum")["shared_checksum/1_s1.sst"] == 10


def test_fifo_is_not_opened(env: LocalEnv, root: Path) -> None:
    env.makedirs("")
    os.mkfifo(root / "pipe")
    with pytest.raises(NotFound, match="not a regular file"):
        env.open_read("pipe")  # would block forever without O_NONBLOCK


# -- error mapping ---------------------------------------------------------------------------
def test_errors_name_the_full_path(env: LocalEnv, root: Path) -> None:
    with pytest.raises(NotFound, match=str(root / "meta" / "9")):
        env.open_read("meta/9")
    with pytest.raises(NotFound, match=str(root / "x")):
        env.stat("x")


def test_permission_error_is_mapped(env: LocalEnv, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs as root too: the OS error is simulated rather than produced by chmod."""
    real_open = os.open

    def denied(path, flags, *args, **kwargs):
        if os.fspath(path).startswith(str(root)):
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real_open(path, flags, *args, **kwargs)

    env.write_bytes("meta/1", b"x")
    monkeypatch.setattr(os, "open", denied)
    with pytest.raises(PermissionDenied, match=str(root / "meta" / "1")):
        env.open_read("meta/1")
    with pytest.raises(PermissionDenied, match=str(root / "meta" / "2")):
        env.write_bytes("meta/2", b"x")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_directory(env: LocalEnv, root: Path) -> None:
    env.write_bytes("meta/1", b"x")
    os.chmod(root / "meta", 0o555)
    try:
        with pytest.raises(PermissionDenied, match="meta"):
            env.write_bytes("meta/2", b"x")
        with pytest.raises(PermissionDenied):
            env.delete(["meta/1"])
    finally:
        os.chmod(root / "meta", 0o755)


def test_delete_continues_past_errors(env: LocalEnv, root: Path) -> None:
    env.write_bytes("a", b"x")
    env.write_bytes("c", b"x")
    env.makedirs("b")
    with pytest.raises(Exception, match=str(root / "b")):
        env.delete(["a", "b", "c"])  # unlink on a directory fails
    assert [i.path for i in env.list("")] == []


def test_remove_dir_keeps_non_empty(env: LocalEnv, root: Path) -> None:
    env.write_bytes("private/1/f", b"x")
    env.remove_dir("private/1")
    assert (root / "private" / "1" / "f").exists()
    env.delete(["private/1/f"])
    env.remove_dir("private/1")
    assert not (root / "private" / "1").exists()
