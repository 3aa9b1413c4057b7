"""The engine reads each capability for what it says, never one standing in for another.

A store that has directories is not thereby slow to transfer or fond of big buffers, and a
local directory is not thereby best read one meta file at a time: the widths and the
buffer come from the fields that declare them.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import threading

import pytest
import rocksdict

from rbackup import BackupableDBOptions, BackupEngine, BackupEngineReadOnly
from rbackup.env.base import DISK_BUFFER_SIZE, OBJECT_STORE_BUFFER_SIZE, BackupEnv, Capabilities, ReadStream
from rbackup.env.encrypted import EncryptedEnv
from rbackup.env.local import LocalEnv
from rbackup.env.memory import MemoryEnv
from rbackup.env.wrappers import WrapperEnv
from rbackup.testing.doubles import CountingEnv
from rbackup.transfer import Buffers


class DeclaringEnv(WrapperEnv):
    """`inner`, declaring the capabilities a test chooses, and noting which threads read meta files."""

    def __init__(self, inner: BackupEnv, capabilities: Capabilities) -> None:
        super().__init__(inner)
        self._capabilities = capabilities
        self.meta_readers: set[str] = set()
        self._lock = threading.Lock()

    @property
    def capabilities(self) -> Capabilities:  # type: ignore[override]
        return self._capabilities

    def open_read(self, path: str) -> ReadStream:
        if path.startswith("meta/"):
            with self._lock:
                self.meta_readers.add(threading.current_thread().name)
        return super().open_read(path)


def test_transfer_width_is_declared_not_inferred_from_directories(tmp_path) -> None:
    """A store with directories that declares a width gets it; one without gets max_background_operations."""
    wide = DeclaringEnv(LocalEnv(tmp_path / "a"), Capabilities(directories=True, transfer_width=5))
    narrow = DeclaringEnv(MemoryEnv(), Capabilities(directories=False, concurrency=16, transfer_width=1))
    with BackupEngine.open(BackupableDBOptions(str(tmp_path / "a"), backup_env=wide)) as engine:
        assert engine._workers == 5
    with BackupEngine.open(BackupableDBOptions("memory://", backup_env=narrow, max_background_operations=2)) as e:
        assert e._workers == 2


def test_buffer_size_is_declared_not_inferred_from_directories() -> None:
    assert Buffers.for_store(0, Capabilities(directories=True, buffer_size=123 << 10)).size == 123 << 10
    assert Buffers.for_store(0, Capabilities(directories=False, buffer_size=DISK_BUFFER_SIZE)).size == DISK_BUFFER_SIZE
    assert Buffers.for_store(64 << 10, Capabilities(buffer_size=DISK_BUFFER_SIZE)).size == 64 << 10


@pytest.mark.parametrize("concurrency", [1, 4])
def test_meta_files_are_read_as_wide_as_the_store_declares(tmp_path, live_db, concurrency: int) -> None:
    """A local directory declaring concurrency 4 has its meta files read by a pool; declaring 1, by the caller."""
    backup_dir = str(tmp_path / "backups")
    with BackupEngine.open(BackupableDBOptions(backup_dir)) as engine:
        for _ in range(3):
            engine.create_new_backup(live_db.db)
    env = DeclaringEnv(LocalEnv(backup_dir), dataclasses.replace(LocalEnv.capabilities, concurrency=concurrency))
    with BackupEngine.open(BackupableDBOptions(backup_dir, backup_env=env)) as engine:
        assert len(engine.get_backup_info()) == 3
    if concurrency == 1:
        assert env.meta_readers == {threading.current_thread().name}
    else:
        assert env.meta_readers and all(name.startswith("rbackup-meta") for name in env.meta_readers)


def test_built_in_stores_keep_their_widths_and_buffers(tmp_path) -> None:
    """The declared values are the ones the engine used to infer: behaviour did not move."""
    local, memory = LocalEnv(tmp_path / "b").capabilities, MemoryEnv().capabilities
    assert (local.concurrency, local.transfer_width, local.buffer_size) == (1, 1, DISK_BUFFER_SIZE)
    assert (memory.concurrency, memory.transfer_width, memory.buffer_size) == (8, 4, OBJECT_STORE_BUFFER_SIZE)


def test_encryption_copies_at_least_two_files_at_once(tmp_path) -> None:
    """A second file in flight lets one be sealed while the other is synced; a store that
    already declares more (memory, S3) keeps its width, and the rest is the inner store's."""
    local = EncryptedEnv(LocalEnv(tmp_path / "b"), key=os.urandom(32))
    assert local.capabilities.transfer_width == 2
    assert local.capabilities.buffer_size == DISK_BUFFER_SIZE and local.capabilities.concurrency == 1
    assert EncryptedEnv(MemoryEnv(), key=os.urandom(32)).capabilities.transfer_width == 4
    with BackupEngine.open(BackupableDBOptions(str(tmp_path / "b"), backup_env=local)) as engine:
        assert engine._workers == 2
    with BackupEngine.open(BackupableDBOptions(str(tmp_path / "b"), backup_env=local,
                                               max_background_operations=3)) as engine:
        assert engine._workers == 3


def test_encrypted_local_directory_keeps_its_flock_but_open_backup_decrypts(tmp_path) -> None:
    """`local_path("")` is the directory (flock, restore-target check); `local_path(file)` is a file
    readable as is, which an encrypted file is not: open_backup must fetch it through decryption."""
    db = rocksdict.Rdict(str(tmp_path / "db"))
    db[b"key"] = b"value"
    db.flush()
    env = EncryptedEnv(LocalEnv(tmp_path / "b"), key=os.urandom(32))
    assert env.local_path("") == str(tmp_path / "b") and env.local_path("meta/1") is None
    with BackupEngine.open(BackupableDBOptions(str(tmp_path / "b"), backup_env=env)) as engine:
        engine.create_new_backup(db)
        assert (tmp_path / "b" / "rbackup.lock").exists()  # the flock, not a lease
        with engine.open_backup(1, cache_dir=str(tmp_path / "cache")) as view:
            assert view[b"key"] == b"value"
    db.close()


@pytest.mark.parametrize(("store", "sync", "warned"), [("memory", True, True), ("memory", False, False),
                                                       ("local", True, False)])
def test_sync_on_a_store_without_durable_sync_is_said_to_be_best_effort(tmp_path, caplog, store, sync, warned) -> None:
    env = MemoryEnv() if store == "memory" else LocalEnv(tmp_path / "b")
    with caplog.at_level(logging.INFO, logger="rbackup"):
        BackupEngine.open(BackupableDBOptions(str(tmp_path / "b"), backup_env=env, sync=sync)).close()
        BackupEngineReadOnly.open(BackupableDBOptions(str(tmp_path / "b"), backup_env=env, sync=sync)).close()
    said = [r for r in caplog.records if "durable_sync" in r.getMessage()]
    assert len(said) == (1 if warned else 0)  # once, by the writable engine only
    assert all(env.describe() in r.getMessage() for r in said)


@pytest.mark.parametrize("conditional_create", [True, False])
def test_create_reads_its_commit_back_where_the_store_cannot_arbitrate(tmp_path, live_db, conditional_create) -> None:
    """Under a flock on a store with conditional_create the commit is exact; without it, the
    commit was exists-then-write, and the create reads meta/<id> back before returning it."""
    caps = dataclasses.replace(LocalEnv.capabilities, conditional_create=conditional_create)
    env = CountingEnv(DeclaringEnv(LocalEnv(tmp_path / "b"), caps))
    with BackupEngine.open(BackupableDBOptions(str(tmp_path / "b"), backup_env=env)) as engine:
        env.reads.clear()
        engine.create_new_backup(live_db.db)
        assert ("meta/1" in env.reads) is not conditional_create
