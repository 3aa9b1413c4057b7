"""Wrappers: they keep the contract, refuse writes, count traffic and inject faults."""
from __future__ import annotations

import pytest

from rbackup.env.local import LocalEnv
from rbackup.env.memory import MemoryEnv
from rbackup.env.wrappers import ReadOnlyEnv
from rbackup.errors import AlreadyExists, NotSupported, StorageError
from rbackup.testing import BackupEnvContract
from rbackup.testing.doubles import CountingEnv, FaultInjectionEnv, InjectedFault, fail_nth


class TestFaultInjectionOverLocalContract(BackupEnvContract):
    """A wrapper with no faults configured must be invisible."""

    def make_env(self, tmp_path):
        return FaultInjectionEnv(LocalEnv(tmp_path / "backup"))


class TestCountingOverMemoryContract(BackupEnvContract):
    def make_env(self, tmp_path):
        return CountingEnv(MemoryEnv())


# -- ReadOnlyEnv ---------------------------------------------------------------------------
MUTATIONS = {
    "open_write": lambda env: env.open_write("meta/2"),
    "write_bytes": lambda env: env.write_bytes("meta/2", b"x"),
    "create_exclusive": lambda env: env.create_exclusive("meta/2", b"x"),
    "delete": lambda env: env.delete(["meta/1"]),
    "makedirs": lambda env: env.makedirs("private/2"),
    "makedirs_root": lambda env: env.makedirs(""),
    "remove_dir": lambda env: env.remove_dir("private/1"),
}


@pytest.fixture
def populated(tmp_path) -> LocalEnv:
    env = LocalEnv(tmp_path / "backup")
    env.write_bytes("meta/1", b"meta one")
    env.makedirs("private/1")
    return env


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_read_only_refuses_every_mutation(populated: LocalEnv, mutation: str) -> None:
    ro = ReadOnlyEnv(populated)
    before = populated.list("")
    with pytest.raises(NotSupported, match="read-only"):
        MUTATIONS[mutation](ro)
    assert populated.list("") == before
    assert populated.exists("meta/1") and not populated.exists("meta/2")
    assert populated.read_bytes("meta/1", 100) == b"meta one"


def test_read_only_reads_pass_through(populated: LocalEnv) -> None:
    ro = ReadOnlyEnv(populated)
    assert ro.read_bytes("meta/1", 100) == b"meta one"
    assert ro.stat("meta/1").size == 8
    assert ro.exists("meta/1") and not ro.exists("meta/2")
    assert [i.path for i in ro.list("meta")] == ["meta/1"]
    assert ro.capabilities == populated.capabilities
    assert ro.url == populated.url
    assert ro.describe("meta/1") == populated.describe("meta/1")
    ro.sync_dir("meta")  # harmless: nothing was written through it
    ro.close()


# -- CountingEnv ---------------------------------------------------------------------------
def test_counting_env_counts_bytes_and_calls() -> None:
    env = CountingEnv(MemoryEnv())
    env.write_bytes("shared/a", b"x" * 100)
    env.create_exclusive("meta/1", b"m" * 10)
    with env.open_read("shared/a") as f:
        buf = bytearray(64)
        assert f.readinto(buf) == 64
        assert f.read() == b"x" * 36
    env.stat("meta/1")
    assert env.bytes_written == 110
    assert env.bytes_read == 100
    assert env.reads == {"shared/a": 100}
    assert env.writes == {"shared/a": 100, "meta/1": 10}
    assert env.calls["open_read"] == 1 and env.calls["commit"] == 1 and env.calls["stat"] == 1
    env.open_read("meta/1").close()  # opened but not read: still listed
    assert env.reads["meta/1"] == 0 and "meta/1" in env.reads


# -- FaultInjectionEnv -----------------------------------------------------------------------
def test_records_operations_in_order() -> None:
    env = FaultInjectionEnv(MemoryEnv())
    with env.open_write("shared/a") as w:
        w.write(b"12")
        w.write(b"34")
    env.create_exclusive("meta/1", b"m")
    env.read_bytes("meta/1", 10)
    env.delete(["shared/a", "missing"])
    env.list("shared")
    assert env.ops == [
        ("open_write", "shared/a"),
        ("write", "shared/a"),
        ("write", "shared/a"),
        ("commit", "shared/a"),
        ("create_exclusive", "meta/1"),
        ("open_read", "meta/1"),
        ("read", "meta/1"),
        ("delete", "shared/a"),
        ("delete", "missing"),
        ("list", "shared"),
    ]
    assert env.faults == []


def test_fail_at_index_fails_exactly_that_operation() -> None:
    inner = MemoryEnv()
    env = FaultInjectionEnv(inner, fail_at=2)
    w = env.open_write("a")  # op 0
    w.write(b"x")  # op 1
    with pytest.raises(InjectedFault, match=r"commit .*a \(operation #2\)"):
        w.commit()  # op 2
    w.abort()
    assert not inner.exists("a")
    env.write_bytes("b", b"y")  # later operations work again
    assert inner.read_bytes("b", 1) == b"y"
    assert env.faults == [("commit", "a")]


def test_injected_fault_is_a_storage_error() -> None:
    env = FaultInjectionEnv(MemoryEnv(), fail_on=lambda op, path: op == "stat")
    with pytest.raises(StorageError, match="injected fault"):
        env.exists("x")


def test_fail_on_with_fail_nth() -> None:
    inner = MemoryEnv()
    env = FaultInjectionEnv(inner, fail_on=fail_nth("commit", 1, "shared/*"))
    env.write_bytes("meta/x", b"1")  # a commit, but not under shared/
    env.write_bytes("shared/0", b"1")
    with pytest.raises(InjectedFault):
        env.write_bytes("shared/1", b"1")
    env.write_bytes("shared/2", b"1")
    assert [i.path for i in inner.list("")] == ["meta/x", "shared/0", "shared/2"]


def test_exception_in_with_aborts_and_abort_never_fails() -> None:
    inner = MemoryEnv()
    env = FaultInjectionEnv(inner, fail_on=lambda op, path: op == "write", sticky=True)
    with pytest.raises(InjectedFault):
        with env.open_write("f") as w:
            w.write(b"x")
    assert ("abort", "f") in env.ops
    assert inner.list("") == []


def test_sticky_fault_acts_like_a_dead_process() -> None:
    env = FaultInjectionEnv(MemoryEnv(), fail_at=1, sticky=True)
    env.makedirs("")
    with pytest.raises(InjectedFault):
        env.list("")
    for call in (lambda: env.stat("x"), lambda: env.write_bytes("y", b""), lambda: env.delete(["z"])):
        with pytest.raises(InjectedFault):
            call()


def test_disk_full_after_bytes_writes_what_fits() -> None:
    inner = MemoryEnv()
    env = FaultInjectionEnv(inner, fail_write_after_bytes=10)
    env.write_bytes("a", b"123456")
    with pytest.raises(InjectedFault, match="no space after 10 bytes"):
        with env.open_write("b") as w:
            w.write(b"abcdef")
    assert env.writes["b"] == 4 and env.bytes_written == 10
    assert not inner.exists("b")
    with pytest.raises(InjectedFault, match="no space"):
        env.create_exclusive("meta/1", b"m")
    assert not inner.exists("meta/1")


def test_partial_delete() -> None:
    inner = MemoryEnv()
    for name in "abc":
        inner.write_bytes(name, b"x")
    env = FaultInjectionEnv(inner, fail_on=lambda op, path: op == "delete" and path == "b")
    with pytest.raises(InjectedFault):
        env.delete(["a", "b", "c"])
    assert [i.path for i in inner.list("")] == ["b", "c"]


def test_read_faults_and_open_read_faults(tmp_path) -> None:
    inner = LocalEnv(tmp_path / "b")
    inner.write_bytes("f", b"x" * 10)
    env = FaultInjectionEnv(inner, fail_on=fail_nth("read", 1))
    with env.open_read("f") as f:
        assert f.read(4) == b"xxxx"
        with pytest.raises(InjectedFault):
            f.read(4)
    env = FaultInjectionEnv(inner, fail_on=lambda op, path: op == "open_read")
    with pytest.raises(InjectedFault):
        env.open_read("f")


def _publish_backup(env) -> None:
    """A miniature backup: data files first, the meta file last and exclusively."""
    env.makedirs("shared_checksum")
    for i in range(3):
        with env.open_write(f"shared_checksum/{i}.sst") as w:
            w.write(b"a" * 100)
            w.write(b"b" * 100)
    env.create_exclusive("meta/1", b"shared_checksum/0.sst shared_checksum/1.sst shared_checksum/2.sst")


def test_crash_point_sweep(tmp_path) -> None:
    """The recipe the engine's crash tests use: count operations, then fail each in turn."""
    probe = FaultInjectionEnv(MemoryEnv())
    _publish_backup(probe)
    total = len(probe.ops)
    assert total == 1 + 3 * 4 + 1
    for k in range(total):
        store = LocalEnv(tmp_path / f"run{k}")
        env = FaultInjectionEnv(store, fail_at=k, sticky=True)
        with pytest.raises(InjectedFault):
            _publish_backup(env)
        files = {i.path: i.size for i in store.list("")}
        committed = "meta/1" in files
        assert not committed, f"crash at op {k} {probe.ops[k]} committed the backup"
        # Only whole files or RocksDB-style temps are ever visible.
        for path, size in files.items():
            name = path.rsplit("/", 1)[-1]
            assert size == 200 or (name.startswith(".") and name.endswith(".tmp")), (k, path, size)
        assert env.faults[0] == probe.ops[k]
    _publish_backup(FaultInjectionEnv(LocalEnv(tmp_path / "run0")))  # recovery: the retry succeeds
    with pytest.raises(AlreadyExists):
        LocalEnv(tmp_path / "run0").create_exclusive("meta/1", b"again")
