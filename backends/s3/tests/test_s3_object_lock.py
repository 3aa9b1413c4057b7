"""S3 Object Lock (moto): backups uploaded under retention, purge and GC skip what is still locked."""
from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from rbackup_s3.object_lock import ObjectLockS3Env

from rbackup import BackupableDBOptions, BackupEngine, BackupEngineReadOnly, InvalidArgument
from rbackup.retention import RetentionPolicy
from tests.db_fixtures import read_all
from tests.s3_fixtures import _storage_options


@pytest.fixture
def locked_bucket(moto_server: str) -> Iterator[tuple[str, dict[str, Any], Any]]:
    """A bucket created with Object Lock enabled (and so versioned); moto keeps it (locked
    versions cannot be emptied out), one per test."""
    name = f"rbk-lock-{uuid.uuid4().hex[:16]}"
    client = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    client.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    yield name, _storage_options(moto_server), client


def lock_env(bucket: str, options: dict[str, Any], days: float, mode: str = "GOVERNANCE") -> ObjectLockS3Env:
    return ObjectLockS3Env(f"s3://{bucket}/app", storage_options={
        **options, "object_lock_mode": mode, "object_lock_days": days, "part_size": 5 << 20})


def test_settings_are_checked(locked_bucket) -> None:
    bucket, options, _ = locked_bucket
    for bad in ({"object_lock_mode": "LEGAL", "object_lock_days": 1}, {"object_lock_mode": "GOVERNANCE",
                "object_lock_days": 0}, {"object_lock_mode": "COMPLIANCE"}):
        with pytest.raises(InvalidArgument, match="object_lock"):
            ObjectLockS3Env(f"s3://{bucket}/x", storage_options={**options, **bad})


def test_backups_are_uploaded_locked_and_purge_skips_them(locked_bucket, live_db, tmp_path, caplog) -> None:
    bucket, options, client = locked_bucket
    env = lock_env(bucket, options, days=1)
    with BackupEngine(BackupableDBOptions("s3://ignored", backup_env=env)) as engine:
        engine.create_new_backup(live_db.db)
        live_db.add(200, prefix="second")
        engine.create_new_backup(live_db.db)
        env.write_bytes("shared_checksum/big.blob", b"x" * (6 << 20))  # a multipart upload

        keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]]
        tomorrow = datetime.now(timezone.utc) + timedelta(days=1)
        assert any(k.startswith("app/rbackup.lock.d/") for k in keys)
        for key in keys:
            head = client.head_object(Bucket=bucket, Key=key)
            if key.startswith("app/rbackup.lock.d/"):  # leases are rewritten and cleaned up: never locked
                assert "ObjectLockMode" not in head, key
                continue
            assert head["ObjectLockMode"] == "GOVERNANCE", key
            assert abs(head["ObjectLockRetainUntilDate"] - tomorrow) < timedelta(minutes=10), key

        # S3 itself refuses to destroy a locked version: what a compromised host would try.
        version = client.head_object(Bucket=bucket, Key="app/meta/1")["VersionId"]
        with pytest.raises(ClientError):
            client.delete_object(Bucket=bucket, Key="app/meta/1", VersionId=version)

        with caplog.at_level(logging.WARNING):
            plan = engine.purge_by_policy(RetentionPolicy(keep_last=1))  # no failure
            engine.delete_backup(2)
        assert plan.remove == [1]
        assert "still under Object Lock retention" in caplog.text
        assert {path for path, _ in env.skipped_locked} >= {"meta/1", "meta/2"}
    # Both backups are still there and restore: nothing was deleted.
    with BackupEngineReadOnly(BackupableDBOptions("s3://ignored", backup_env=lock_env(bucket, options, 1))) as e:
        assert [b.backup_id for b in e.get_backup_info()] == [1, 2]
        e.restore_db_from_backup(2, str(tmp_path / "restored"))
    assert read_all(str(tmp_path / "restored")) == live_db.written


def test_expired_retention_is_deleted_for_good(locked_bucket, live_db) -> None:
    bucket, options, client = locked_bucket
    env = lock_env(bucket, options, days=2 / 86400)  # two seconds
    with BackupEngine(BackupableDBOptions("s3://ignored", backup_env=env)) as engine:
        engine.create_new_backup(live_db.db)
        live_db.add(200, prefix="second")
        engine.create_new_backup(live_db.db)
        time.sleep(2.5)  # let the retention pass (no assertion depends on how long this takes)
        engine.purge_old_backups(1)
        assert [b.backup_id for b in engine.get_backup_info()] == [2]
        assert env.skipped_locked == []
    # Deleted by version id: no delete marker hides a version that still takes space.
    versions = client.list_object_versions(Bucket=bucket, Prefix="app/meta/1")
    assert not versions.get("Versions") and not versions.get("DeleteMarkers")
