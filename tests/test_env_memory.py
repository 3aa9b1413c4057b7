"""MemoryEnv: the conformance kit, plus the named-store registry."""
from __future__ import annotations

import tempfile

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from rbackup.env.base import FileInfo
from rbackup.env.local import LocalEnv
from rbackup.env.memory import MemoryEnv
from rbackup.errors import AlreadyExists
from rbackup.testing import BackendConformance


class TestMemoryEnvContract(BackendConformance):
    def make_env(self, tmp_path):
        return MemoryEnv()


def test_named_stores_are_shared() -> None:
    try:
        a = MemoryEnv(url="memory://shared-test")
        b = MemoryEnv("memory://shared-test/")
        c = MemoryEnv("shared-test")
        a.write_bytes("meta/1", b"x")
        assert b.read_bytes("meta/1", 1) == b"x"
        assert c.exists("meta/1")
        assert a.url == "memory://shared-test"
        assert a.describe("meta/1") == "memory://shared-test/meta/1"
    finally:
        MemoryEnv.discard("memory://shared-test")
    assert not MemoryEnv("shared-test").exists("meta/1")
    MemoryEnv.discard("shared-test")


def test_unnamed_stores_are_private() -> None:
    a, b = MemoryEnv(), MemoryEnv()
    a.write_bytes("f", b"x")
    assert not b.exists("f")
    assert "memory://" in a.describe("f")


def test_readers_see_a_snapshot() -> None:
    env = MemoryEnv()
    env.write_bytes("f", b"old")
    with env.open_read("f") as f:
        env.write_bytes("f", b"new!")
        assert f.read() == b"old"


def test_write_after_commit_is_refused() -> None:
    env = MemoryEnv()
    w = env.open_write("f")
    w.commit()
    with pytest.raises(ValueError):
        w.write(b"late")


# -- MemoryEnv stands in for real stores in fast tests: it must agree with LocalEnv ------------
PATHS = [f"{d}/{n}" for d in ("a", "b", "a/c") for n in ("x", "y", "000001.sst")]


class EnvsAgree(RuleBasedStateMachine):
    """Random operation sequences give the same files on disk, in memory and in a dict."""

    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.TemporaryDirectory()
        self.envs = [LocalEnv(self.tmp.name), MemoryEnv()]
        self.model: dict[str, bytes] = {}

    def teardown(self) -> None:
        self.tmp.cleanup()

    @rule(path=st.sampled_from(PATHS), data=st.binary(max_size=64), commit=st.booleans())
    def write(self, path: str, data: bytes, commit: bool) -> None:
        for env in self.envs:
            w = env.open_write(path, sync=False)
            w.write(data)
            if commit:
                w.commit()
            else:
                w.abort()
        if commit:
            self.model[path] = data

    @rule(path=st.sampled_from(PATHS), data=st.binary(max_size=16))
    def create_exclusive(self, path: str, data: bytes) -> None:
        for env in self.envs:
            if path in self.model:
                with pytest.raises(AlreadyExists):
                    env.create_exclusive(path, data, sync=False)
            else:
                env.create_exclusive(path, data, sync=False)
        self.model.setdefault(path, data)

    @rule(paths=st.lists(st.sampled_from(PATHS), max_size=4))
    def delete(self, paths: list[str]) -> None:
        for env in self.envs:
            env.delete(paths)
        for path in paths:
            self.model.pop(path, None)

    @invariant()
    def same_files(self) -> None:
        expected = [FileInfo(p, len(self.model[p])) for p in sorted(self.model)]
        for env in self.envs:
            assert env.list("") == expected  # both envs happen to list in path order
            assert env.list("a") == [i for i in expected if i.path.startswith("a/")]
            for path in PATHS:
                if path in self.model:
                    assert env.read_bytes(path, 64) == self.model[path]
                else:
                    assert not env.exists(path)


TestEnvsAgree = EnvsAgree.TestCase
TestEnvsAgree.settings = settings(max_examples=40, stateful_step_count=15, deadline=None)
