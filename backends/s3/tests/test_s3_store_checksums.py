"""`verify --checksum` from the store's own CRC-32C, on the three S3 servers.

SeaweedFS checks the CRC-32C of every PUT, part and FULL_OBJECT completion and
returns the whole object's on HeadObject: verify compares it with the meta file's and
reads no data.  moto and s3rver accept a wrong one (the probe finds out), so there
every file is read back, as before.  On every store a file whose bytes do not match
the meta file is Corruption naming the backup and the file.
"""
from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from rbackup_s3 import S3Env

from rbackup import BackupableDBOptions, BackupEngine, BackupEngineReadOnly, Corruption
from rbackup.env.encrypted import EncryptedEnv
from rbackup.format.checksum import crc32c
from rbackup.testing.doubles import CountingEnv
from rbackup.testing.env_contract import _pattern
from tests.s3_servers import S3Store, make_store

pytestmark = pytest.mark.slow

MiB = 2**20
SMALL_PARTS = {"part_size": 5 * MiB}


@pytest.fixture
def seaweedfs_store(request: pytest.FixtureRequest) -> Iterator[S3Store]:
    yield from make_store(request, "seaweedfs")


@pytest.fixture(params=["moto", "s3rver"])
def unchecking_store(request: pytest.FixtureRequest) -> Iterator[S3Store]:
    """A store that accepts a wrong CRC-32C (moto, s3rver)."""
    yield from make_store(request, request.param)


def _options(store: S3Store) -> dict[str, Any]:
    best_effort = {} if store.conditional_put else {"conditional_writes": False}
    return {**store.storage_options, **SMALL_PARTS, **best_effort}


def _backup(store: S3Store, db: str) -> str:
    url = f"{store.url}/backups"
    with BackupEngine(BackupableDBOptions(url, storage_options=_options(store))) as eng:
        eng.create_new_backup(db)
    return url


def _counted_engine(store: S3Store, url: str) -> tuple[BackupEngineReadOnly, CountingEnv]:
    env = CountingEnv(S3Env(url, storage_options=_options(store)))
    engine = BackupEngineReadOnly(BackupableDBOptions(url, backup_env=env))
    env.calls.clear()  # what opening it read
    env.reads.clear()
    return engine, env


def _replace_object(store: S3Store, url: str, path: str) -> None:
    """Put other bytes of the same size under `path`, with their own (right) CRC-32C: what another
    writer, or anyone with write access, could leave there."""
    bucket, _, prefix = url[len("s3://"):].partition("/")
    key = f"{prefix}/{path}"
    client = store.client()
    size = client.head_object(Bucket=bucket, Key=key)["ContentLength"]
    body = _pattern(size, seed=99)
    client.put_object(Bucket=bucket, Key=key, Body=body, ChecksumAlgorithm="CRC32C",
                      ChecksumCRC32C=base64.b64encode(crc32c(body).to_bytes(4, "big")).decode())


def _largest_file(engine: BackupEngineReadOnly, backup_id: int) -> str:
    """The backup's largest file: the SST of `multipart_db`, a multipart upload of three 5 MiB parts."""
    info = engine.get_backup_info(include_file_details=True)
    largest = max(next(i for i in info if i.backup_id == backup_id).files, key=lambda f: f.size)
    assert largest.size > 10 * MiB
    return largest.relative_filename


def test_the_probe_tells_a_store_that_checks_and_leaves_nothing(s3_store: S3Store) -> None:
    """SeaweedFS refuses a part and a PUT under a wrong CRC-32C; moto and s3rver accept them.  Either
    way the probe runs once per env and leaves no object and no pending upload behind."""
    env = S3Env(f"{s3_store.url}/p", storage_options=_options(s3_store))
    env.write_bytes("f", b"data")
    assert env.checksums.checked() is (s3_store.name == "seaweedfs")
    assert env.checksums.checked() is (s3_store.name == "seaweedfs")
    assert [f.path for f in env.list()] == ["f"]
    if s3_store.name != "s3rver":  # s3rver cannot list uploads (NotImplemented)
        prefix = s3_store.url[len("s3://"):].partition("/")[2]
        uploads = s3_store.client().list_multipart_uploads(Bucket=s3_store.bucket, Prefix=prefix)
        assert not uploads.get("Uploads")
    expected = crc32c(b"data") if s3_store.name == "seaweedfs" else None
    stored = env.stored_checksum("f")
    assert (stored.crc32c if stored else None) == expected


def test_verify_on_seaweedfs_reads_no_data_and_counts_it(seaweedfs_store: S3Store, multipart_db: str) -> None:
    """Every file, the multipart SST included (a FULL_OBJECT upload), is checked from SeaweedFS's
    CRC-32C: the result says so, and no file was opened for reading.  `read_back` reads them all."""
    url = _backup(seaweedfs_store, multipart_db)
    engine, env = _counted_engine(seaweedfs_store, url)
    with engine:
        largest = _largest_file(engine, 1)
        result = engine.verify_backup(1, verify_with_checksum=True)
        assert env.calls["open_read"] == 0
        assert env.calls["stored_checksum"] == result.files
        assert (result.from_store_checksum, result.downloaded, result.bytes_downloaded) == (result.files, 0, 0)
        assert largest.endswith(".sst")
        read_back = engine.verify_backup(1, verify_with_checksum=True, read_back=True)
        assert (read_back.from_store_checksum, read_back.downloaded) == (0, result.files)
        assert env.calls["open_read"] == result.files


def _edit_meta_crc(store: S3Store, url: str, path: str) -> None:
    """Change the CRC-32C meta/1 records for `path` (a meta file that no longer matches the object)."""
    bucket, _, prefix = url[len("s3://"):].partition("/")
    client = store.client()
    meta = client.get_object(Bucket=bucket, Key=f"{prefix}/meta/1")["Body"].read().decode()
    lines = meta.split("\n")
    [i] = [n for n, line in enumerate(lines) if line.startswith(f"{path} crc32 ")]
    crc = int(lines[i].split(" ")[2])
    lines[i] = f"{path} crc32 {crc ^ 1}"
    client.put_object(Bucket=bucket, Key=f"{prefix}/meta/1", Body="\n".join(lines).encode())


@pytest.mark.parametrize("damage", ["object replaced", "meta file edited"])
def test_a_file_whose_store_crc_differs_from_the_meta_is_corruption(seaweedfs_store: S3Store, multipart_db: str,
                                                                    damage: str) -> None:
    """An object replaced by other bytes of the same size (the store's CRC-32C now theirs), or a meta
    file whose CRC-32C for it was changed: the store's CRC-32C no longer matches the meta file's,
    reported like a mismatch found by reading, naming the backup and the file, without a download;
    reading back finds the same."""
    url = _backup(seaweedfs_store, multipart_db)
    with BackupEngineReadOnly(BackupableDBOptions(url, storage_options=_options(seaweedfs_store))) as probe:
        largest = _largest_file(probe, 1)
    if damage == "object replaced":
        _replace_object(seaweedfs_store, url, largest)
    else:
        _edit_meta_crc(seaweedfs_store, url, largest)
    engine, env = _counted_engine(seaweedfs_store, url)
    with engine:
        with pytest.raises(Corruption, match=rf"backup 1: checksum mismatch in {largest} \(the store's crc32c"):
            engine.verify_backup(1, verify_with_checksum=True)
        assert env.calls["open_read"] == 0
        with pytest.raises(Corruption, match=rf"backup 1: checksum mismatch in {largest} \(crc32c"):
            engine.verify_backup(1, verify_with_checksum=True, read_back=True)


def test_composite_checksums_of_older_uploads_are_read_back(seaweedfs_store: S3Store, multipart_db: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A multipart object with a composite checksum (`...-N`: an older rbackup, or a client library
    without FULL_OBJECT) has no whole-object CRC-32C in the store: that file alone is read back."""
    monkeypatch.setattr(S3Env, "full_object_checksums", lambda self: False)
    url = _backup(seaweedfs_store, multipart_db)
    monkeypatch.undo()
    engine, env = _counted_engine(seaweedfs_store, url)
    with engine:
        largest = _largest_file(engine, 1)
        bucket, _, prefix = url[len("s3://"):].partition("/")
        head = seaweedfs_store.client().head_object(Bucket=bucket, Key=f"{prefix}/{largest}", ChecksumMode="ENABLED")
        assert head["ChecksumCRC32C"].endswith("-3")
        result = engine.verify_backup(1, verify_with_checksum=True)
        assert (result.from_store_checksum, result.downloaded) == (result.files - 1, 1)
        assert list(env.reads) == [largest]


def test_stores_that_accept_a_wrong_crc_are_read_back(unchecking_store: S3Store, multipart_db: str) -> None:
    """moto and s3rver echo (or drop) checksums without checking them: every file is read back, and a
    replaced object is still found."""
    url = _backup(unchecking_store, multipart_db)
    engine, env = _counted_engine(unchecking_store, url)
    with engine:
        largest = _largest_file(engine, 1)
        result = engine.verify_backup(1, verify_with_checksum=True)
        assert (result.from_store_checksum, result.downloaded) == (0, result.files)
        assert env.calls["open_read"] == result.files
        _replace_object(unchecking_store, url, largest)
        with pytest.raises(Corruption, match=rf"backup 1: checksum mismatch in {largest} \(crc32c"):
            engine.verify_backup(1, verify_with_checksum=True)


def test_encrypted_backups_are_read_back(seaweedfs_store: S3Store, multipart_db: str) -> None:
    """The store checksums the ciphertext, the meta file records the plaintext's CRC-32C."""
    env = EncryptedEnv(S3Env(f"{seaweedfs_store.url}/enc", storage_options=_options(seaweedfs_store)),
                       key=bytes(range(32)))
    with BackupEngine(BackupableDBOptions("enc", backup_env=env)) as eng:
        eng.create_new_backup(multipart_db)
        result = eng.verify_backup(1, verify_with_checksum=True)
    assert (result.from_store_checksum, result.downloaded) == (0, result.files)


def test_cli_verify_says_how_files_were_checked(seaweedfs_store: S3Store, multipart_db: str) -> None:
    url = _backup(seaweedfs_store, multipart_db)
    base = [sys.executable, "-m", "rbackup.cli", "verify", "--backup-dir", url,
            *seaweedfs_store.cli_options(**SMALL_PARTS), "--checksum"]
    out = subprocess.run([*base, "--json"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    [backup] = json.loads(out.stdout)["backups"]
    assert backup["ok"] and backup["from_store_checksum"] == backup["files"] > 0 and backup["downloaded"] == 0
    out = subprocess.run([*base, "--read-back"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"backup 1: ok (checksums verified: 0 from the store's CRC-32C, {backup['files']} read back" in out.stdout
    with BackupEngineReadOnly(BackupableDBOptions(url, storage_options=_options(seaweedfs_store))) as probe:
        largest = _largest_file(probe, 1)
    _replace_object(seaweedfs_store, url, largest)
    out = subprocess.run([*base, "--json"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    [backup] = json.loads(out.stdout)["backups"]
    assert not backup["ok"] and f"checksum mismatch in {largest}" in backup["error"]
