"""The BackupEnv conformance kit: one test suite every backend must pass.

fsspec's abstract tests and restic's shared backend suite were the model: a
backend's author subclasses `BackupEnvContract`, says how to build a fresh,
empty env, and inherits every test::

    from rbackup.testing import BackupEnvContract

    class TestMyEnv(BackupEnvContract):
        def make_env(self, tmp_path):
            return MyEnv(...)

Tests that need a capability the store does not claim (`conditional_create`,
`directories`, `atomic_rename`) are skipped, so object stores pass without
pretending to be file systems.  Class attributes size the heavy tests for slow
stores.
"""
from __future__ import annotations

import threading
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ..env.base import BackupEnv, Capabilities, FileInfo, StoredChecksum
from ..errors import AlreadyExists, FileTooLarge, InvalidArgument, NotFound
from ..format.checksum import crc32c

MiB = 1 << 20

# Names a hostile meta file could use to leave the root; check_path must stop them all.
BAD_PATHS = ["../x", "/x", "a/../b", "a/./b", "./x", "a//b", "..", "a\\b", "a\x00b"]

# Every way a path reaches an env; each must reject BAD_PATHS with InvalidArgument.
PATH_METHODS: dict[str, Callable[[BackupEnv, str], object]] = {
    "open_read": lambda env, p: env.open_read(p),
    "open_write": lambda env, p: env.open_write(p),
    "open_write_new": lambda env, p: env.open_write_new(p),
    "create_exclusive": lambda env, p: env.create_exclusive(p, b"x"),
    "stat": lambda env, p: env.stat(p),
    "delete": lambda env, p: env.delete([p]),
    "list": lambda env, p: env.list(p),
    "list_sizes": lambda env, p: env.list_sizes(p),
    "makedirs": lambda env, p: env.makedirs(p),
    "remove_dir": lambda env, p: env.remove_dir(p),
    "read_bytes": lambda env, p: env.read_bytes(p, 10),
    "write_bytes": lambda env, p: env.write_bytes(p, b"x"),
    "exists": lambda env, p: env.exists(p),
    "stored_checksum": lambda env, p: env.stored_checksum(p),
}


def _pattern(size: int, seed: int = 0) -> bytes:
    """Deterministic bytes whose period (a prime) never lines up with a power-of-two
    chunk, so a chunk written twice, skipped or out of order changes the checksum."""
    block = bytes((i * 131 + seed * 17 + (i >> 8)) & 0xFF for i in range(65521))
    reps, rest = divmod(size, len(block))
    return block * reps + block[:rest]


def race_for_one_winner(prepare: Callable[[int], Callable[[], None]], creators: int = 8) -> int:
    """Run `creators` threads: each prepares its attempt (`prepare(i)` returns it), all wait
    at one barrier, then each makes it.  Exactly one may succeed; the others must get
    AlreadyExists and nothing else.  Returns the winner's index.  Backend tests that race
    their own way (several clients, many rounds) call it too."""
    n = creators
    start = threading.Barrier(n)
    winners: list[int] = []
    errors: list[BaseException] = []

    def attempt(i: int) -> None:
        try:
            go = prepare(i)
        except BaseException as exc:
            errors.append(exc)
            start.abort()  # the others must not wait for this one forever
            return
        try:
            start.wait()
            go()
            winners.append(i)
        except AlreadyExists:
            pass
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(winners) == 1, f"{len(winners)} winners"
    return winners[0]


class BackupEnvContract:
    """Inherit, implement `make_env`, and the whole contract is tested."""

    large_file_size = 24 * MiB
    """Size of the streaming test file; lower it for slow stores."""
    chunk_size = 1 * MiB
    """Write and read chunk of the streaming test."""
    concurrent_creators = 8
    """Threads racing in the create_exclusive test."""

    def make_env(self, tmp_path: Path) -> BackupEnv:
        """A fresh, empty env for one test; its root may not exist yet."""
        raise NotImplementedError("subclasses of BackupEnvContract implement make_env")

    @pytest.fixture
    def env(self, tmp_path: Path) -> Iterator[BackupEnv]:
        env = self.make_env(tmp_path)
        try:
            yield env
        finally:
            env.close()

    # -- helpers --------------------------------------------------------------
    @staticmethod
    def paths(env: BackupEnv, prefix: str = "") -> list[str]:
        return sorted(info.path for info in env.list(prefix))

    def race_for_one_winner(self, prepare: Callable[[int], Callable[[], None]]) -> int:
        """`race_for_one_winner` with this store's `concurrent_creators`."""
        return race_for_one_winner(prepare, self.concurrent_creators)

    @staticmethod
    def infos(env: BackupEnv, prefix: str = "") -> list[FileInfo]:
        """`list` in path order (the contract does not promise an order)."""
        return sorted(env.list(prefix), key=lambda info: info.path)

    @staticmethod
    def read_all(env: BackupEnv, path: str) -> bytes:
        with env.open_read(path) as f:
            return f.read()

    # -- publish and read ------------------------------------------------------
    def test_declares_capabilities(self, env: BackupEnv) -> None:
        caps = env.capabilities
        assert isinstance(caps, Capabilities)
        assert caps.concurrency >= 1 and caps.transfer_width >= 1 and caps.buffer_size >= 4096
        assert "meta/1" in env.describe("meta/1")

    def test_write_read_round_trip(self, env: BackupEnv) -> None:
        data = bytes(range(256)) * 5
        env.write_bytes("dir/file.bin", data)
        assert self.read_all(env, "dir/file.bin") == data
        assert env.read_bytes("dir/file.bin", len(data)) == data
        assert env.stat("dir/file.bin") == FileInfo("dir/file.bin", len(data))

    def test_write_accepts_bytes_bytearray_and_memoryview(self, env: BackupEnv) -> None:
        parts: list[bytes | memoryview] = [b"abc", memoryview(bytearray(b"defg")),
                                           memoryview(b"0123456789")[2:7], memoryview(b"")]
        with env.open_write("mixed") as w:
            assert [w.write(p) for p in parts] == [3, 4, 5, 0]
        assert self.read_all(env, "mixed") == b"abcdefg23456"

    def test_empty_file(self, env: BackupEnv) -> None:
        with env.open_write("empty"):
            pass
        assert env.stat("empty").size == 0
        assert self.read_all(env, "empty") == b""
        assert env.list("") == [FileInfo("empty", 0)]

    def test_large_streaming_file(self, env: BackupEnv) -> None:
        data = _pattern(self.large_file_size + 12345, seed=1)
        view = memoryview(data)
        with env.open_write("big/stream.sst") as w:
            for off in range(0, len(data), self.chunk_size):
                w.write(view[off : off + self.chunk_size])
        assert env.stat("big/stream.sst").size == len(data)
        buf = bytearray(self.chunk_size)
        crc, total = 0, 0
        with env.open_read("big/stream.sst") as f:
            while n := f.readinto(buf):
                crc = zlib.crc32(memoryview(buf)[:n], crc)
                total += n
        assert total == len(data)
        assert crc == zlib.crc32(data)
        stored = env.stored_checksum("big/stream.sst")  # S3: a multipart upload's whole-object CRC-32C
        assert stored is None or stored == StoredChecksum(len(data), crc32c(data))

    def test_read_in_pieces(self, env: BackupEnv) -> None:
        env.write_bytes("pieces", b"0123456789")
        with env.open_read("pieces") as f:
            assert f.read(4) == b"0123"
            buf = bytearray(4)
            assert f.readinto(buf) == 4 and buf == b"4567"
            assert f.read(100) == b"89"
            assert f.read(10) == b""
            assert f.readinto(buf) == 0

    def test_names_rocksdb_uses(self, env: BackupEnv) -> None:
        names = [
            "meta/1",
            "meta/4294967295",
            "private/7/MANIFEST-000008",
            "private/7/CURRENT",
            "private/7/000012.log",
            "shared_checksum/000010_s1234567890_1048576.sst",
            "shared_checksum/.000011_s1_2.sst.tmp",
            "shared/000009.blob",
            "LATEST_BACKUP",
        ]
        for i, name in enumerate(names):
            env.write_bytes(name, bytes([i]) * (i + 1))
        assert self.infos(env) == sorted(
            (FileInfo(n, i + 1) for i, n in enumerate(names)), key=lambda fi: fi.path
        )

    def test_open_write_creates_parents(self, env: BackupEnv) -> None:
        env.write_bytes("new/nested/deeper/file", b"x")
        env.create_exclusive("other/nested/meta", b"y")
        assert env.read_bytes("new/nested/deeper/file", 1) == b"x"
        assert env.read_bytes("other/nested/meta", 1) == b"y"

    # -- atomic publish ----------------------------------------------------------
    def test_nothing_visible_before_commit(self, env: BackupEnv) -> None:
        w = env.open_write("shared/x.sst")
        w.write(b"partial data")
        assert not env.exists("shared/x.sst")
        with pytest.raises(NotFound):
            env.open_read("shared/x.sst")
        assert "shared/x.sst" not in self.paths(env)
        w.write(b" and the rest")
        w.commit()
        assert self.read_all(env, "shared/x.sst") == b"partial data and the rest"

    def test_abort_leaves_nothing(self, env: BackupEnv) -> None:
        w = env.open_write("shared/x.sst")
        w.write(b"doomed")
        w.abort()
        w.abort()  # safe twice
        assert not env.exists("shared/x.sst")
        assert self.paths(env) == []

    def test_exception_in_with_publishes_nothing(self, env: BackupEnv) -> None:
        with pytest.raises(RuntimeError):
            with env.open_write("meta/.1.tmp") as w:
                w.write(b"half a meta file")
                raise RuntimeError("copy failed")
        with pytest.raises(RuntimeError):
            with env.open_write("meta/2"):
                raise RuntimeError("failed before any write")
        assert self.paths(env) == []

    def test_abort_after_commit_keeps_file(self, env: BackupEnv) -> None:
        w = env.open_write("kept")
        w.write(b"safe")
        w.commit()
        w.abort()  # cleanup code may call it unconditionally
        assert self.read_all(env, "kept") == b"safe"

    def test_replace_on_commit(self, env: BackupEnv) -> None:
        env.write_bytes("CURRENT", b"MANIFEST-000001\n")
        w = env.open_write("CURRENT")
        w.write(b"MANIFEST-000002\n-longer")
        assert self.read_all(env, "CURRENT") == b"MANIFEST-000001\n"
        w.commit()
        assert self.read_all(env, "CURRENT") == b"MANIFEST-000002\n-longer"
        env.write_bytes("CURRENT", b"short")
        assert self.read_all(env, "CURRENT") == b"short"
        assert env.stat("CURRENT").size == 5

    def test_temp_file_named_like_rocksdb(self, env: BackupEnv) -> None:
        """Stores that publish by rename must use `.<name>.tmp`, which GC recognises."""
        if not env.capabilities.atomic_rename:
            pytest.skip("store does not publish through a temp name")
        w = env.open_write("shared/000123.sst")
        try:
            w.write(b"data")
            assert "shared/.000123.sst.tmp" in self.paths(env, "shared")
        finally:
            w.abort()

    def test_sync_false_still_publishes(self, env: BackupEnv) -> None:
        with env.open_write("nosync", sync=False) as w:
            w.write(b"fast")
        env.create_exclusive("nosync-excl", b"fast", sync=False)
        assert self.read_all(env, "nosync") == b"fast"
        assert self.read_all(env, "nosync-excl") == b"fast"

    def test_independent_writers_interleave(self, env: BackupEnv) -> None:
        writers = {f"private/1/{i:06d}.log": env.open_write(f"private/1/{i:06d}.log") for i in range(4)}
        for rnd in range(3):
            for i, w in enumerate(writers.values()):
                w.write(bytes([i]) * (rnd + 1))
        for w in writers.values():
            w.commit()
        for i, path in enumerate(writers):
            assert self.read_all(env, path) == bytes([i]) * 6

    # -- create_exclusive ---------------------------------------------------------
    def test_create_exclusive_once(self, env: BackupEnv) -> None:
        env.create_exclusive("meta/1", b"first")
        with pytest.raises(AlreadyExists) as info:
            env.create_exclusive("meta/1", b"second, longer content")
        assert "meta/1" in str(info.value)
        assert self.read_all(env, "meta/1") == b"first"

    def test_create_exclusive_refuses_published_file(self, env: BackupEnv) -> None:
        env.write_bytes("LOCK", b"held")
        with pytest.raises(AlreadyExists):
            env.create_exclusive("LOCK", b"")  # an empty payload must not truncate it
        assert self.read_all(env, "LOCK") == b"held"

    def test_create_exclusive_empty_and_binary(self, env: BackupEnv) -> None:
        env.create_exclusive("empty", b"")
        env.create_exclusive("binary", bytes(range(256)))
        assert self.read_all(env, "empty") == b""
        assert self.read_all(env, "binary") == bytes(range(256))

    def test_concurrent_create_exclusive_one_winner(self, env: BackupEnv) -> None:
        if not env.capabilities.conditional_create:
            pytest.skip("store has no atomic create-if-absent")
        def create(i: int) -> Callable[[], None]:
            return lambda: env.create_exclusive("meta/7", f"writer {i} ".encode() * (i + 1))

        won = self.race_for_one_winner(create)
        assert self.read_all(env, "meta/7") == f"writer {won} ".encode() * (won + 1)
        assert self.paths(env) == ["meta/7"], "temp files left behind"

    # -- open_write_new ----------------------------------------------------------------
    def test_open_write_new_publishes_and_never_replaces(self, env: BackupEnv) -> None:
        with env.open_write_new("private/1/MANIFEST-000005") as w:
            w.write(b"first")
        with pytest.raises(AlreadyExists) as info:
            with env.open_write_new("private/1/MANIFEST-000005") as w:
                w.write(b"second, longer content")
        assert "private/1/MANIFEST-000005" in str(info.value)
        assert self.read_all(env, "private/1/MANIFEST-000005") == b"first"
        assert self.paths(env) == ["private/1/MANIFEST-000005"], "temp files or uploads left behind"

    def test_open_write_new_refuses_large_file_over_existing(self, env: BackupEnv) -> None:
        env.write_bytes("shared_checksum/9_1_2.sst", b"small")
        data = _pattern(self.large_file_size, seed=9)
        with pytest.raises(AlreadyExists):
            with env.open_write_new("shared_checksum/9_1_2.sst") as w:
                w.write(data)
        assert self.read_all(env, "shared_checksum/9_1_2.sst") == b"small"

    def test_concurrent_open_write_new_one_winner(self, env: BackupEnv) -> None:
        if not env.capabilities.exclusive_publish:
            pytest.skip("store has no atomic publish-if-absent")
        def publish(i: int) -> Callable[[], None]:
            w = env.open_write_new("private/3/CURRENT")
            w.write(f"writer {i} ".encode() * (i + 1))
            return w.commit

        won = self.race_for_one_winner(publish)
        assert self.read_all(env, "private/3/CURRENT") == f"writer {won} ".encode() * (won + 1)

    # -- list, stat, exists ---------------------------------------------------------
    def test_list_prefix_nested_with_sizes(self, env: BackupEnv) -> None:
        files = {"a/1": 1, "a/b/2": 2, "a/b/c/3": 3, "ab/4": 4, "abc": 5, "z": 6}
        for path, size in files.items():
            env.write_bytes(path, b"x" * size)
        everything = sorted((FileInfo(p, s) for p, s in files.items()), key=lambda fi: fi.path)
        assert self.infos(env, "") == everything
        assert sorted(env.list(), key=lambda fi: fi.path) == everything
        assert self.paths(env, "a") == ["a/1", "a/b/2", "a/b/c/3"]  # not ab/4 nor abc
        assert self.paths(env, "a/") == ["a/1", "a/b/2", "a/b/c/3"]
        assert self.infos(env, "a/b") == [FileInfo("a/b/2", 2), FileInfo("a/b/c/3", 3)]

    def test_list_sizes_is_the_listing_and_known_sizes_never_hide_a_name(self, env: BackupEnv) -> None:
        """`list_sizes` is `list` as a dict; the sizes a caller says it knows may stand in for asking
        the store, but a name no longer there is never listed and a new name is measured."""
        files = {"a/1": 1, "a/b/2": 2, "ab/4": 4, "z": 6}
        for path, size in files.items():
            env.write_bytes(path, b"x" * size)
        assert env.list_sizes("") == {fi.path: fi.size for fi in env.list("")} == files
        assert env.list_sizes("a") == {"a/1": 1, "a/b/2": 2}
        assert env.list_sizes("nothing/here") == {}
        assert env.list_sizes("", known={"a/1": 1, "gone": 3, "z": 6}) == files

    def test_list_prefix_is_a_directory_not_a_string_prefix(self, env: BackupEnv) -> None:
        env.write_bytes("private/1/CURRENT", b"1")
        env.write_bytes("private/10/CURRENT", b"10")
        assert self.paths(env, "private/1") == ["private/1/CURRENT"]

    def test_list_missing_prefix_is_empty(self, env: BackupEnv) -> None:
        assert env.list("") == []
        assert env.list("nope") == []
        env.write_bytes("some/file", b"x")
        assert env.list("nope/deeper") == []
        assert env.list("some/fil") == []

    def test_list_shows_no_directories(self, env: BackupEnv) -> None:
        env.makedirs("empty/dir")
        env.write_bytes("full/dir/f", b"x")
        assert self.paths(env) == ["full/dir/f"]

    def test_list_includes_temp_like_names(self, env: BackupEnv) -> None:
        """Garbage collection has to see what a crash left behind."""
        env.write_bytes("shared_checksum/.9_s1_2.sst.tmp", b"leftover")
        env.write_bytes("meta/.3.tmp", b"leftover")
        assert self.paths(env) == ["meta/.3.tmp", "shared_checksum/.9_s1_2.sst.tmp"]

    def test_stored_checksum_is_the_files_or_none(self, env: BackupEnv) -> None:
        """A store's own CRC-32C of a file, where it returns one, is that of the bytes written, with
        their size: verify takes it instead of reading the file.  Most stores return None."""
        data = _pattern(3000, seed=4)
        env.write_bytes("shared/f.sst", data)
        stored = env.stored_checksum("shared/f.sst")
        assert stored is None or stored == StoredChecksum(len(data), crc32c(data))
        env.write_bytes("shared/f.sst", data[:-1])
        stored = env.stored_checksum("shared/f.sst")
        assert stored is None or stored == StoredChecksum(len(data) - 1, crc32c(data[:-1]))

    def test_stat_and_exists(self, env: BackupEnv) -> None:
        env.write_bytes("d/f", b"12345")
        assert env.stat("d/f") == FileInfo("d/f", 5)
        assert env.exists("d/f")
        assert not env.exists("d/g")
        assert not env.exists("d")  # a directory (or a bare prefix) is not a file
        with pytest.raises(NotFound) as info:
            env.stat("d/missing")
        assert "d/missing" in str(info.value)
        with pytest.raises(NotFound):
            env.stat("d")

    def test_open_read_missing(self, env: BackupEnv) -> None:
        with pytest.raises(NotFound) as info:
            env.open_read("meta/404")
        assert "meta/404" in str(info.value)
        env.write_bytes("dir/f", b"x")
        with pytest.raises(NotFound):
            env.open_read("dir")
        with pytest.raises(NotFound):
            env.read_bytes("dir/missing", 10)

    def test_read_bytes_limit(self, env: BackupEnv) -> None:
        env.write_bytes("meta/1", b"m" * 100)
        assert env.read_bytes("meta/1", 100) == b"m" * 100
        with pytest.raises(FileTooLarge) as info:
            env.read_bytes("meta/1", 99)
        assert "meta/1" in str(info.value)

    # -- delete and directories ---------------------------------------------------------
    def test_delete_many_including_missing(self, env: BackupEnv) -> None:
        for name in ("a", "b/c", "b/d", "keep"):
            env.write_bytes(name, b"x")
        env.delete(["a", "missing", "b/c", "b/missing/deeper", "b/d"])
        assert self.paths(env) == ["keep"]
        env.delete(p for p in ["keep", "keep"])  # any iterable; a repeat is fine
        env.delete([])
        assert self.paths(env) == []

    def test_delete_validates_every_name_first(self, env: BackupEnv) -> None:
        env.write_bytes("a", b"x")
        with pytest.raises(InvalidArgument):
            env.delete(["a", "../escape"])
        assert env.exists("a"), "a hostile name must not cause a partial delete"

    def test_makedirs_and_remove_dir(self, env: BackupEnv) -> None:
        env.makedirs("")
        env.makedirs("private/1")
        env.makedirs("private/1")  # idempotent
        env.write_bytes("private/2/CURRENT", b"x")
        env.remove_dir("private/1")
        env.remove_dir("private/2")  # not empty: kept
        env.remove_dir("private/missing")
        assert self.paths(env) == ["private/2/CURRENT"]
        env.sync_dir("")
        env.sync_dir("private/2")

    def test_remove_dir_removes_empty_directory(self, env: BackupEnv) -> None:
        if not env.capabilities.directories:
            pytest.skip("store has no directories")
        env.makedirs("private/1")
        env.write_bytes("private/2/x", b"x")
        env.remove_dir("private/1")
        env.makedirs("private/2")  # exists: fine
        env.delete(["private/2/x"])
        env.remove_dir("private/2")
        env.remove_dir("private")
        assert env.list("") == []
        env.makedirs("private/1")  # can be made again

    # -- path safety -------------------------------------------------------------------
    @pytest.mark.parametrize("method", sorted(PATH_METHODS))
    def test_rejects_paths_leaving_the_root(self, env: BackupEnv, method: str) -> None:
        for bad in BAD_PATHS:
            with pytest.raises(InvalidArgument):
                PATH_METHODS[method](env, bad)
                pytest.fail(f"{method}({bad!r}) was accepted")
        assert env.list("") == []

    @pytest.mark.parametrize(
        "method", sorted(set(PATH_METHODS) - {"list", "list_sizes", "makedirs", "remove_dir"})
    )
    def test_rejects_empty_file_name(self, env: BackupEnv, method: str) -> None:
        """"" names the root directory, never a file."""
        with pytest.raises(InvalidArgument):
            PATH_METHODS[method](env, "")
