"""The engine on S3, end to end over HTTP to moto's server: chosen by URL through
the registry, objects under RocksDB's layout, restores byte-identical."""
from __future__ import annotations

import re
from typing import Any

import boto3
from rbackup_s3 import S3Env

from rbackup import BackupableDB, BackupableDBOptions, BackupEngine, BackupEngineReadOnly, RestoreBackupableDB
from rbackup.format.naming import db_filename_from_backup_name
from tests.db_fixtures import read_all


def _keys(url: str, options: dict[str, Any]) -> dict[str, bytes]:
    bucket, _, prefix = url[len("s3://"):].partition("/")
    client = boto3.client("s3", endpoint_url=options["endpoint_url"], region_name="us-east-1")
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            key = obj["Key"][len(prefix):].lstrip("/")
            out[key] = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
    return out


def test_backup_to_s3_by_url_restores_byte_identical(s3_bucket_url, live_db, tmp_path):
    bucket_url, options = s3_bucket_url
    url = f"{bucket_url}/rocksdb-backups"
    opts = BackupableDBOptions(url, storage_options=options)
    bdb = BackupableDB(live_db.db, opts)
    assert isinstance(bdb.engine.env, S3Env)  # picked by the URL, through the registry
    first = dict(live_db.written)
    assert bdb.create_new_backup(app_metadata=b"s3") == 1
    live_db.add(400, prefix="s3new")
    assert bdb.create_new_backup() == 2
    bdb.engine.close()

    objects = _keys(url, options)
    layout = re.compile(r"meta/[12]|private/[12]/(CURRENT|MANIFEST-\d+|OPTIONS-\d+|rocksdict-config\.json)"
                        r"|shared_checksum/\d{6}_s[0-9A-Z]{20}_\d+\.sst")
    assert objects and all(layout.fullmatch(k) for k in objects if not k.startswith("rbackup.lock")), \
        [k for k in objects if not layout.fullmatch(k)]
    for key, body in objects.items():
        m = re.fullmatch(r"shared_checksum/\d{6}_s[0-9A-Z]{20}_(\d+)\.sst", key)
        if m:
            assert int(m.group(1)) == len(body)

    restore = RestoreBackupableDB(BackupableDBOptions(url, storage_options=options))
    infos = restore.get_backup_info(include_file_details=True)
    assert [i.backup_id for i in infos] == [1, 2]
    restore.verify_backup(1, verify_with_checksum=True)
    target = tmp_path / "restored"
    restore.restore_db_from_latest_backup(target, target)
    restore.restore_db_from_backup(1, tmp_path / "r1")
    restore.close()
    # byte-identical: every restored file equals the object it came from
    for f in infos[1].files:
        name = db_filename_from_backup_name(f.relative_filename.rsplit("/", 1)[-1])
        assert (target / name).read_bytes() == objects[f.relative_filename], f.relative_filename
    assert (target / "rocksdict-config.json").read_bytes() == objects["private/2/rocksdict-config.json"]
    assert read_all(str(target)) == live_db.written
    assert read_all(str(tmp_path / "r1")) == first


def test_read_only_engine_on_s3_writes_nothing(s3_bucket_url, live_db, tmp_path):
    url, options = s3_bucket_url
    with BackupEngine.open(BackupableDBOptions(url, storage_options=options)) as eng:
        eng.create_new_backup(live_db.db)
    before = _keys(url, options)
    with BackupEngineReadOnly.open(BackupableDBOptions(url, storage_options=options)) as ro:
        ro.verify_backup(1, verify_with_checksum=True)
        ro.restore_db_from_latest_backup(tmp_path / "r")
    assert _keys(url, options) == before
    assert read_all(str(tmp_path / "r")) == live_db.written
