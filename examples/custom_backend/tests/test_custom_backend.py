"""The example third-party backend (examples/custom_backend) passes the whole kit,
and is found through its entry point exactly as a real plug-in would be."""
from __future__ import annotations

import pytest

from rbackup.env.local import LocalEnv
from rbackup.env.memory import MemoryEnv
from rbackup.testing import BackendConformance

rbackup_mirror = pytest.importorskip("rbackup_mirror", reason="pip install -e examples/custom_backend")
MirrorEnv = rbackup_mirror.MirrorEnv


class TestMirrorOverLocalAndMemory(BackendConformance):
    large_file_size = 8 << 20

    def make_env(self, tmp_path):
        return MirrorEnv(primary=LocalEnv(tmp_path / "primary"), replica=MemoryEnv())


def test_registered_through_the_entry_point(tmp_path, live_db):
    from rbackup import BackupableDBOptions, BackupEngine
    from rbackup.env.registry import backend_class, list_backends

    assert backend_class("mirror") is MirrorEnv
    assert "mirror" in {b.protocol for b in list_backends()}
    opts = BackupableDBOptions("mirror://test", storage_options={
        "primary": str(tmp_path / "a"), "replica": str(tmp_path / "b")})
    with BackupEngine.open(opts) as eng:
        assert isinstance(eng.env, MirrorEnv)
        eng.create_new_backup(live_db.db)
    primary = {f.path: f.size for f in LocalEnv(tmp_path / "a").list("") if f.path != "rbackup.lock"}
    replica = {f.path: f.size for f in LocalEnv(tmp_path / "b").list("") if f.path != "rbackup.lock"}
    assert primary == replica and any(p.startswith("meta/") for p in primary)


def test_reads_fall_back_to_the_replica(tmp_path, live_db):
    from rbackup import BackupableDBOptions, BackupEngine
    from tests.db_fixtures import read_all

    env = MirrorEnv(primary=LocalEnv(tmp_path / "a"), replica=LocalEnv(tmp_path / "b"))
    with BackupEngine.open(BackupableDBOptions("mirror://t", backup_env=env)) as eng:
        eng.create_new_backup(live_db.db)
        victim = next(f.path for f in env.list("shared_checksum"))
        (tmp_path / "a" / victim).unlink()  # the primary loses a file
        with env.open_read(victim) as fh:  # served from the replica
            assert fh.read() == (tmp_path / "b" / victim).read_bytes()
    with BackupEngine.open(BackupableDBOptions("mirror://t", backup_env=env)) as eng:
        assert eng.get_corrupted_backups() == [1]  # the primary's listing is the truth
    # swap roles: the replica, complete, restores every key
    swapped = MirrorEnv(primary=LocalEnv(tmp_path / "b"), replica=LocalEnv(tmp_path / "a"))
    with BackupEngine.open(BackupableDBOptions("mirror://t", backup_env=swapped)) as eng:
        eng.restore_db_from_latest_backup(tmp_path / "restored")
    assert read_all(str(tmp_path / "restored")) == live_db.written
