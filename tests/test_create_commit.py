"""What a create does when its meta commit raises, for each `CommitOutcome`: a commit that
landed is a backup, one that certainly did not is cleaned up, one that cannot be told leaves
its files to garbage collection; an interrupt is never swallowed."""
from __future__ import annotations

import logging
import os

import pytest

from rbackup import BackupableDBOptions, BackupEngine, BackupEngineReadOnly, StorageError
from rbackup.env.local import LocalEnv
from rbackup.env.wrappers import WrapperEnv


class _CommitRaises(WrapperEnv):
    """The meta commit raises `error`, after taking effect when `lands`; reading meta/1 back
    fails too when `unreadable`."""

    def __init__(self, inner: LocalEnv, error: BaseException, *, lands: bool, unreadable: bool = False) -> None:
        super().__init__(inner)
        self.error, self.lands, self.unreadable = error, lands, unreadable

    def create_exclusive(self, path: str, data: bytes, *, sync: bool = True) -> None:
        if path != "meta/1":
            return super().create_exclusive(path, data, sync=sync)
        if self.lands:
            super().create_exclusive(path, data, sync=sync)
        raise self.error

    def open_read(self, path: str):  # type: ignore[no-untyped-def]
        if self.unreadable and path == "meta/1":
            raise StorageError("injected: cannot read meta/1 back")
        return super().open_read(path)


def _private_files(backup_dir: str) -> list[str]:
    return sorted(os.listdir(os.path.join(backup_dir, "private", "1"))) if os.path.isdir(
        os.path.join(backup_dir, "private", "1")) else []


def _assert_committed(backup_dir: str) -> None:
    """Backup 1 is there, valid and whole, for a plain engine."""
    with BackupEngineReadOnly(BackupableDBOptions(backup_dir)) as ro:
        assert [i.backup_id for i in ro.get_backup_info()] == [1]
        ro.verify_backup(1, verify_with_checksum=True)


def _create(live_db, backup_dir: str, env: _CommitRaises) -> None:
    with BackupEngine(BackupableDBOptions(backup_dir, backup_env=env)) as eng:
        eng.create_new_backup(live_db.db)


def test_a_commit_that_landed_before_its_error_is_a_backup(live_db, backup_dir, caplog) -> None:
    env = _CommitRaises(LocalEnv(backup_dir), StorageError("lost reply"), lands=True)
    with caplog.at_level(logging.WARNING):
        _create(live_db, backup_dir, env)
    assert any("it is committed" in r.getMessage() for r in caplog.records)
    _assert_committed(backup_dir)


def test_a_commit_that_certainly_failed_removes_what_the_attempt_wrote(live_db, backup_dir) -> None:
    env = _CommitRaises(LocalEnv(backup_dir), StorageError("refused"), lands=False)
    with pytest.raises(StorageError, match="refused"):
        _create(live_db, backup_dir, env)
    assert _private_files(backup_dir) == []


def test_an_unknown_outcome_deletes_nothing_and_says_so(live_db, backup_dir, caplog) -> None:
    """The commit landed but cannot be read back: the create fails, and deleting its files
    would have corrupted a committed backup."""
    env = _CommitRaises(LocalEnv(backup_dir), StorageError("refused"), lands=True, unreadable=True)
    with caplog.at_level(logging.WARNING), pytest.raises(StorageError, match="refused"):
        _create(live_db, backup_dir, env)
    assert any("cannot tell whether the commit happened" in r.getMessage() for r in caplog.records)
    _assert_committed(backup_dir)


def test_an_interrupt_after_the_commit_landed_is_raised_and_keeps_the_backup(live_db, backup_dir) -> None:
    env = _CommitRaises(LocalEnv(backup_dir), KeyboardInterrupt(), lands=True)
    with pytest.raises(KeyboardInterrupt):
        _create(live_db, backup_dir, env)
    _assert_committed(backup_dir)
