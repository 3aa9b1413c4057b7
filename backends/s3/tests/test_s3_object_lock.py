"""S3 Object Lock (moto): backups uploaded under retention, purge and GC skip what is still locked."""
from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from rbackup_s3 import S3Env
from rbackup_s3.object_lock import ObjectLockS3Env, ObjectLockSettings

from rbackup import BackupableDBOptions, BackupEngine, BackupEngineReadOnly, InvalidArgument
from rbackup.env.registry import open_env
from rbackup.retention import RetentionPolicy
from tests.db_fixtures import read_all
from tests.s3_fixtures import _storage_options
from tests.s3_servers import client_for, credentials


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


# -- reached from an s3:// URL and the command line ---------------------------------------------

LOCK_OPTIONS = {"object_lock_mode": "governance", "object_lock_days": 1}


def assert_locked(client: Any, bucket: str, prefix: str, mode: str = "GOVERNANCE") -> int:
    """Every object under prefix but the writer lock's leases is under retention; returns how many."""
    locked = 0
    for obj in client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []):
        head = client.head_object(Bucket=bucket, Key=obj["Key"])
        if "/rbackup.lock.d/" in obj["Key"]:
            assert "ObjectLockMode" not in head, obj["Key"]
            continue
        assert head["ObjectLockMode"] == mode, obj["Key"]
        assert head["ObjectLockRetainUntilDate"] > datetime.now(timezone.utc) + timedelta(hours=23), obj["Key"]
        locked += 1
    return locked


def test_s3_url_with_lock_options_locks_every_upload(locked_bucket, live_db, tmp_path) -> None:
    bucket, options, client = locked_bucket
    url = f"s3://{bucket}/app"
    with open_env(url, storage_options=options) as plain:
        assert type(plain) is S3Env
    with open_env(url, storage_options={**options, **LOCK_OPTIONS}) as env:
        assert isinstance(env, ObjectLockS3Env) and env.object_lock == ObjectLockSettings("GOVERNANCE", 1)
    with BackupEngine(BackupableDBOptions(url, storage_options={**options, **LOCK_OPTIONS})) as engine:
        assert isinstance(engine.env, ObjectLockS3Env)
        engine.create_new_backup(live_db.db)
        live_db.add(200, prefix="second")
        engine.create_new_backup(live_db.db)
        engine.purge_old_backups(1)  # refused by the store for every object: nothing lost, no error
        assert [b.backup_id for b in engine.get_backup_info()] == [1, 2]
    assert assert_locked(client, bucket, "app/") >= 6
    with BackupEngineReadOnly(BackupableDBOptions(url, storage_options=options)) as reader:
        reader.verify_backup(1, True)
        reader.restore_db_from_backup(2, str(tmp_path / "restored"))
    assert read_all(str(tmp_path / "restored")) == live_db.written


@pytest.mark.parametrize("bad, named", [
    ({"object_lock_mode": "legal-hold", "object_lock_days": 1}, "object_lock_mode"),
    ({"object_lock_mode": "governance", "object_lock_days": "thirty"}, "object_lock_days"),
    ({"object_lock_mode": "governance", "object_lock_days": 0}, "object_lock_days"),
    ({"object_lock_mode": "governance", "object_lock_days": True}, "object_lock_days"),
    ({"object_lock_mode": "governance"}, "object_lock_days"),
    ({"object_lock_days": 7}, "object_lock_mode"),
    ({**LOCK_OPTIONS, "object_lock_day": 7}, "'object_lock_day'"),
    ({"object_lock_retention": 7}, "'object_lock_retention'"),
])
def test_malformed_lock_options_are_invalid_arguments_naming_the_option(moto_server, bad, named) -> None:
    with pytest.raises(InvalidArgument, match=named):
        BackupEngine(BackupableDBOptions("s3://some-bucket/app",
                                         storage_options={**_storage_options(moto_server), **bad}))


def test_lock_options_on_a_bucket_without_object_lock_fail_naming_it(s3_bucket_url, live_db) -> None:
    url, options = s3_bucket_url
    bucket = url.removeprefix("s3://")
    with BackupEngine(BackupableDBOptions(f"{url}/app", storage_options={**options, **LOCK_OPTIONS})) as engine:
        with pytest.raises(InvalidArgument, match=f"bucket '{bucket}' does not have Object Lock enabled"):
            engine.create_new_backup(live_db.db)
        assert engine.get_backup_info() == []


@pytest.mark.slow
def test_purge_keeps_the_files_of_a_backup_whose_meta_is_still_locked(locked_bucket, live_db) -> None:
    """Files are uploaded before their meta file, so their retention ends first: a purge in between
    must not leave the still-locked meta file naming deleted files (a corrupt backup)."""
    bucket, options, client = locked_bucket
    env = lock_env(bucket, options, days=2 / 86400)  # two seconds
    with BackupEngine(BackupableDBOptions("s3://ignored", backup_env=env)) as engine:
        engine.create_new_backup(live_db.db)
        live_db.add(200, prefix="second")
        engine.create_new_backup(live_db.db)
        client.put_object_retention(Bucket=bucket, Key="app/meta/1", Retention={
            "Mode": "GOVERNANCE", "RetainUntilDate": datetime.now(timezone.utc) + timedelta(days=1)})
        time.sleep(2.5)  # every object of backup 1 but its meta file is no longer locked
        engine.purge_old_backups(1)
        assert [path for path, _ in env.skipped_locked] == ["meta/1"]
        assert [b.backup_id for b in engine.get_backup_info()] == [1, 2]
        engine.verify_backup(1, True)


@pytest.mark.slow
def test_cli_object_lock_create_purge_gc_copy(locked_bucket, moto_server, live_db, tmp_path) -> None:
    from tests.test_cli import failed, listing, ok, rbackup

    bucket, _, client = locked_bucket
    live_db.db.close()
    url = f"s3://{bucket}/app"
    endpoint = ["-o", f"endpoint_url={moto_server}"]
    lock = [*endpoint, "-o", "object_lock_mode=governance", "-o", "object_lock_days=1"]
    for _ in range(2):
        ok("create", "--db", live_db.path, "--backup-dir", url, *lock, "-q")
    assert assert_locked(client, bucket, "app/") >= 6

    # --dry-run is the same with or without the options, and deletes nothing.
    dry = ok("purge", "--backup-dir", url, *lock, "--keep-last", "1", "--dry-run").stdout
    assert dry == ok("purge", "--backup-dir", url, *endpoint, "--keep-last", "1", "--dry-run").stdout
    assert "would delete backups 1" in dry

    out = ok("purge", "--backup-dir", url, *lock, "--keep-last", "1")
    assert "backups 1 were not deleted" in out.stderr and "still under Object Lock retention" in out.stderr
    doc = json.loads(ok("purge", "--backup-dir", url, *lock, "--keep", "1", "--json").stdout)
    assert doc["not_deleted"] == [1]
    assert [b["id"] for b in listing(url, *endpoint)["backups"]] == [1, 2]

    # gc: a locked leftover (what an interrupted create leaves) is skipped and reported.
    lock_env(bucket, _storage_options(moto_server), 1).write_bytes("shared_checksum/leftover.sst", b"x")
    out = ok("gc", "--backup-dir", url, *lock)
    assert "1 objects are still under Object Lock retention" in out.stderr and "leftover.sst" in out.stderr
    ok("verify", "--backup-dir", url, *endpoint, "--checksum")
    ok("restore", "--backup-dir", url, *endpoint, "--db", str(tmp_path / "restored"), "--backup-id", "1", "-q")

    # copy: the destination's options lock what it uploads.
    ok("copy", "--from", url, *(o.replace("-o", "--from-option") for o in endpoint),
       "--to", f"s3://{bucket}/copy", "--to-option", f"endpoint_url={moto_server}",
       "--to-option", "object_lock_mode=COMPLIANCE", "--to-option", "object_lock_days=1", "-q")
    assert assert_locked(client, bucket, "copy/", "COMPLIANCE") >= 6

    # malformed values and an unlocked bucket: usage errors (exit 2) naming the option and the bucket.
    assert "object_lock_days" in failed(2, "list", "--backup-dir", url, *endpoint, "-o", "object_lock_mode=governance")
    assert "object_lock_mode" in failed(2, "create", "--db", live_db.path, "--backup-dir", url, *endpoint,
                                        "-o", "object_lock_mode=forever", "-o", "object_lock_days=1")
    plain = f"rbk-plain-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=plain)
    line = failed(2, "create", "--db", live_db.path, "--backup-dir", f"s3://{plain}/app", *lock)
    assert f"bucket '{plain}' does not have Object Lock enabled" in line
    assert rbackup("list", "--backup-dir", f"s3://{plain}/app", *endpoint).stdout.startswith("no backups")


def test_lock_options_combine_with_encryption(locked_bucket, live_db, tmp_path) -> None:
    """`encryption_key_file` wraps the locked S3 env: ciphertext, every object under retention."""
    bucket, options, client = locked_bucket
    key_file = tmp_path / "backup.key"
    key_file.write_bytes(bytes(range(32)))
    url, opts = f"s3://{bucket}/enc", {**options, **LOCK_OPTIONS, "encryption_key_file": str(key_file)}
    with BackupEngine(BackupableDBOptions(url, storage_options=opts)) as engine:
        engine.create_new_backup(live_db.db)
    assert assert_locked(client, bucket, "enc/") >= 4  # the encryption marker too
    with BackupEngineReadOnly(BackupableDBOptions(url, storage_options=opts)) as reader:
        reader.restore_db_from_backup(1, str(tmp_path / "restored"))
    assert read_all(str(tmp_path / "restored")) == live_db.written


@pytest.mark.slow
def test_seaweedfs_enforces_what_the_url_options_ask(seaweedfs_server, live_db, tmp_path) -> None:
    """SeaweedFS (the test extras' `weed`): retention on every upload by URL, a versioned delete of a
    locked version refused, purge skipping and reporting; a bucket without Object Lock refused by name."""
    options = credentials(seaweedfs_server, "seaweedfs")
    client = client_for(seaweedfs_server, options["key"], options["secret"])
    bucket = f"rbk-lock-{uuid.uuid4().hex[:16]}"
    client.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    url, opts = f"s3://{bucket}/app", {**options, **LOCK_OPTIONS}
    with BackupEngine(BackupableDBOptions(url, storage_options=opts)) as engine:
        engine.create_new_backup(live_db.db)
        live_db.add(200, prefix="second")
        engine.create_new_backup(live_db.db)
        assert assert_locked(client, bucket, "app/") >= 6
        version = client.head_object(Bucket=bucket, Key="app/meta/1")["VersionId"]
        with pytest.raises(ClientError):
            client.delete_object(Bucket=bucket, Key="app/meta/1", VersionId=version)
        engine.purge_old_backups(1)
        assert [b.backup_id for b in engine.get_backup_info()] == [1, 2]
        assert isinstance(engine.env, ObjectLockS3Env)
        assert {path for path, _ in engine.env.skipped_locked} >= {"meta/1"}
        engine.restore_db_from_backup(1, str(tmp_path / "restored"))

    plain = f"rbk-plain-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=plain)
    with BackupEngine(BackupableDBOptions(f"s3://{plain}/app", storage_options=opts)) as engine:
        with pytest.raises(InvalidArgument, match=f"bucket '{plain}' does not have Object Lock enabled"):
            engine.create_new_backup(live_db.db)
