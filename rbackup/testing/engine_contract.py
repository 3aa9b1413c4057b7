"""The conformance kit, part 2: the engine's whole round trip over a backend.

Part 1 (`BackupEnvContract`) proves the storage primitives; this part proves
that the engine, unchanged, works on top of them: full and incremental
backups of a real rocksdict DB, info, verify, purge, delete, garbage
collection, damage detection and restore.  A backend's author gets both with::

    from rbackup.testing import BackendConformance

    class TestMyEnv(BackendConformance):
        def make_env(self, tmp_path):
            return MyEnv(...)
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ..engine import BackupEngine, BackupEngineReadOnly
from ..env.base import BackupEnv
from ..errors import Corruption, NotFound
from ..options import BackupableDBOptions
from .dbs import fill, read_all
from .env_contract import BackupEnvContract


class BackupEngineContract:
    """Inherit, implement `make_env(tmp_path)` returning a fresh empty env."""

    def make_env(self, tmp_path: Path) -> BackupEnv:
        raise NotImplementedError

    @pytest.fixture
    def engine_env(self, tmp_path: Path) -> Iterator[BackupEnv]:
        env = self.make_env(tmp_path)
        yield env
        env.close()

    @pytest.fixture
    def source_db(self, tmp_path: Path):
        import rocksdict

        db = rocksdict.Rdict(str(tmp_path / "source-db"))
        written = fill(db, 1500, prefix="a", value_size=300, seed=1)
        db.flush()
        yield db, written
        db.close()

    def _engine(self, env: BackupEnv, **kw) -> BackupEngine:
        return BackupEngine.open(BackupableDBOptions(env.url or "conformance", backup_env=env, **kw))

    def test_engine_round_trip(self, engine_env, source_db, tmp_path):
        db, written = source_db
        eng = self._engine(engine_env)
        first = dict(written)
        assert eng.create_new_backup(db, app_metadata=b"one") == 1
        shared_before = {f.path for f in engine_env.list("shared_checksum")}
        written.update(fill(db, 500, prefix="b", value_size=300, seed=2))
        db.flush()
        assert eng.create_new_backup(db) == 2
        shared_after = {f.path for f in engine_env.list("shared_checksum")}
        assert shared_before < shared_after  # incremental: old SSTs kept, new ones added
        infos = eng.get_backup_info(include_file_details=True)
        assert [i.backup_id for i in infos] == [1, 2] and infos[0].app_metadata == b"one"
        assert set(shared_before) <= {f.relative_filename for f in infos[1].files or ()}
        for info in infos:
            eng.verify_backup(info.backup_id, verify_with_checksum=True)
        eng.restore_db_from_backup(1, tmp_path / "r1")
        assert read_all(tmp_path / "r1") == first
        eng.close()

        ro = BackupEngineReadOnly.open(BackupableDBOptions(engine_env.url or "conformance", backup_env=engine_env))
        ro.restore_db_from_latest_backup(tmp_path / "r2")
        assert read_all(tmp_path / "r2") == written

    def test_engine_purge_delete_gc(self, engine_env, source_db):
        db, _ = source_db
        eng = self._engine(engine_env)
        for i in range(3):
            fill(db, 100, prefix=f"g{i}", value_size=300, seed=i)
            db.flush()
            eng.create_new_backup(db)
        engine_env.write_bytes("shared_checksum/.000999_sX_1.sst.tmp", b"leftover")
        eng.purge_old_backups(1)
        assert [i.backup_id for i in eng.get_backup_info()] == [3]
        kept = {f.relative_filename for f in eng.get_backup_info(include_file_details=True)[0].files or ()}
        shared_left = {f.path for f in engine_env.list("shared_checksum")}
        assert shared_left <= kept
        assert not engine_env.list("private/1") and not engine_env.list("private/2")
        eng.delete_backup(3)
        assert eng.get_backup_info() == []
        assert not engine_env.list("shared_checksum")
        with pytest.raises(NotFound):
            eng.delete_backup(3)
        eng.close()

    def test_engine_detects_damage(self, engine_env, source_db, tmp_path):
        db, _ = source_db
        eng = self._engine(engine_env)
        eng.create_new_backup(db)
        victim = next(f.path for f in engine_env.list("shared_checksum"))
        with engine_env.open_read(victim) as fh:
            data = bytearray(fh.read())
        data[len(data) // 2] ^= 0x01
        engine_env.write_bytes(victim, bytes(data))
        with pytest.raises(Corruption, match=victim):
            eng.verify_backup(1, verify_with_checksum=True)
        with pytest.raises(Corruption):
            eng.restore_db_from_backup(1, tmp_path / "bad")
        engine_env.delete([victim])
        eng.close()
        eng = self._engine(engine_env)
        assert eng.get_corrupted_backups() == [1]
        eng.close()


class BackendConformance(BackupEnvContract, BackupEngineContract):
    """Both halves of the kit: what a backend's test file subclasses."""
