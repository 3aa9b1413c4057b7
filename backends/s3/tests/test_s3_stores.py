"""rbackup on real S3 servers besides moto: SeaweedFS (a real distributed store) and s3rver
(a store that ignores conditional requests), started by `tests/s3_servers.py`.

The conformance kit (env contract and engine round trip) runs on each; on
s3rver with `conditional_writes=False`, the only way rbackup accepts it.  What
rbackup finds out about a store instead of trusting a flag (the If-None-Match
probe, the ETag of a resumed read) is checked on all three servers, each
test knowing the server's own policy (`S3Store`) so a policy is not taken
for a bug.
"""
from __future__ import annotations

import base64
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import rbackup_s3.upload
from rbackup_s3 import S3Env
from rbackup_s3.env import parse_s3_url

from rbackup import BackupableDBOptions, BackupEngine, BackupEngineReadOnly
from rbackup.errors import NotFound, NotSupported, StorageError
from rbackup.format.checksum import crc32c
from rbackup.lock import LEASE_DIR
from rbackup.testing import BackendConformance
from rbackup.testing.env_contract import _pattern
from tests.crash_worker import ROOT
from tests.s3_fixtures import S3_CLIENTS
from tests.s3_servers import S3Store, make_store

MiB = 2**20
SMALL_PARTS = {"part_size": 5 * MiB}
BEST_EFFORT = {"conditional_writes": False}


class TestSeaweedFSContract(BackendConformance):
    """The kit on both clients (rbackup's native one and s3fs's)."""

    large_file_size = 12 * MiB  # with 5 MiB parts: a three-part upload

    @pytest.fixture(params=S3_CLIENTS)
    def s3_client(self, request: pytest.FixtureRequest) -> str:
        return str(request.param)

    @pytest.fixture(autouse=True)
    def _store(self, request: pytest.FixtureRequest, s3_client: str) -> Iterator[None]:
        for self.store in make_store(request, "seaweedfs"):
            yield

    def make_env(self, tmp_path: Path) -> S3Env:
        return S3Env(f"{self.store.url}/backups/db1", storage_options={**self.store.storage_options, **SMALL_PARTS})


class TestS3rverBestEffortContract(TestSeaweedFSContract):
    """s3rver arbitrates nothing: the kit runs with conditional_writes=False (its
    create-if-absent tests become look-then-write, the race tests are skipped)."""

    large_file_size = 6 * MiB

    @pytest.fixture(autouse=True)
    def _store(self, request: pytest.FixtureRequest, s3_client: str) -> Iterator[None]:
        for self.store in make_store(request, "s3rver"):
            yield

    def make_env(self, tmp_path: Path) -> S3Env:
        return S3Env(f"{self.store.url}/backups/db1",
                     storage_options={**self.store.storage_options, **SMALL_PARTS, **BEST_EFFORT})


# -- what rbackup finds out by itself ---------------------------------------------------------------
def test_conditional_put_is_probed_once_and_leaves_nothing(s3_store: S3Store) -> None:
    """moto and SeaweedFS pass the probe; s3rver fails it with an error naming the store and the
    option; the probe object is removed either way, and the verdict is kept for the env."""
    env = S3Env(s3_store.url, storage_options=s3_store.storage_options)
    if s3_store.conditional_put:
        assert env.conditional_writes_honoured()
        env.create_exclusive("meta/1", b"m")
    else:
        for action in (env.conditional_writes_honoured, lambda: env.create_exclusive("meta/1", b"m"),
                       lambda: env.open_write_new("private/1/CURRENT").commit()):
            with pytest.raises(NotSupported) as info:
                action()
            assert s3_store.url in str(info.value) and "conditional_writes=False" in str(info.value)
            assert s3_store.endpoint in str(info.value) and "If-None-Match" in str(info.value)
        assert env.list("meta") == [] and env.list("private") == []
    assert [f.path for f in env.list(LEASE_DIR)] == []
    assert env._probed is s3_store.conditional_put


def test_default_options_refuse_a_store_that_cannot_arbitrate(s3_store: S3Store, tmp_path: Path,
                                                                live_db: Any) -> None:
    """The engine and the CLI on s3rver with default options: the first write fails with the
    clear error (exit 1), nothing is left behind; with conditional_writes=False it works."""
    if s3_store.conditional_put:
        pytest.skip(f"{s3_store.name} honours If-None-Match")
    live_db.db.close()
    with BackupEngine(BackupableDBOptions(s3_store.url, storage_options=s3_store.storage_options)) as eng:
        with pytest.raises(NotSupported, match="conditional_writes=False"):
            eng.create_new_backup(live_db.path)
        assert eng.get_backup_info() == []
    cli = subprocess.run([sys.executable, "-m", "rbackup.cli", "create", "--db", live_db.path, "--backup-dir",
                          s3_store.url, *s3_store.cli_options(), "--quiet"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert cli.returncode == 1, cli
    assert "conditional_writes=False" in cli.stderr and "Traceback" not in cli.stderr
    env = S3Env(s3_store.url, storage_options=s3_store.storage_options)
    assert [f.path for f in env.list() if not f.path.startswith(LEASE_DIR)] == []
    options = {**s3_store.storage_options, **BEST_EFFORT}
    with BackupEngine(BackupableDBOptions(s3_store.url, storage_options=options)) as eng:
        assert eng.create_new_backup(live_db.path) == 1
        eng.verify_backup(1, True)


def _cut_body(reader: Any) -> None:
    """Drop the connection under a streaming GET, as a network failure would."""
    raw = reader._raw
    raw._body.close()


def test_resumed_read_of_a_replaced_object_fails_on_every_store(s3_store: S3Store) -> None:
    """A GET cut off after the object was replaced (same size) resumes with Range + If-Match;
    s3rver ignores If-Match and answers 206 with the right Content-Range: the ETag of the
    resumed response must still stop the read instead of splicing two versions."""
    options = {**s3_store.storage_options, **BEST_EFFORT}
    env = S3Env(s3_store.url, storage_options=options)
    old, new = _pattern(3 * MiB, seed=1), _pattern(3 * MiB, seed=2)
    env.write_bytes("shared/x.sst", old)
    with env.open_read("shared/x.sst") as f:
        assert f.read(1000) == old[:1000]
        env.write_bytes("shared/x.sst", new)
        _cut_body(f)
        with pytest.raises(StorageError, match="replaced while it was read"):
            f.read()
    # and a cut body of an unchanged object resumes byte-identically
    with env.open_read("shared/x.sst") as f:
        assert f.read(1000) == new[:1000]
        _cut_body(f)
        assert f.read() == new[1000:]
        assert f._raw.resumes == 1


@pytest.fixture
def seaweedfs_store(request: pytest.FixtureRequest) -> Iterator[S3Store]:
    yield from make_store(request, "seaweedfs")


def test_uploads_carry_their_crc32c_and_a_damaged_body_is_refused(seaweedfs_store: S3Store,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Every PUT and part carries the CRC-32C rbackup computes over its buffer (instead of botocore's
    own CRC32 pass); SeaweedFS keeps it and refuses a body that does not match it, so bytes damaged
    on the way fail the upload, and leave no object, instead of landing in a backup."""
    store = seaweedfs_store
    env = S3Env(store.url, storage_options={**store.storage_options, **SMALL_PARTS})
    _, bucket, prefix = parse_s3_url(store.url)
    small, big = _pattern(1000, seed=5), _pattern(11 * MiB, seed=6)
    env.write_bytes("small", small)
    env.write_bytes("big", big)

    def stored_checksum(name: str) -> str:
        return store.client().head_object(Bucket=bucket, Key=f"{prefix}/{name}", ChecksumMode="ENABLED")[
            "ChecksumCRC32C"]

    assert stored_checksum("small") == rbackup_s3.upload.checksum_crc32c(small)
    assert crc32c(small) == int.from_bytes(base64.b64decode(stored_checksum("small")), "big")
    # FULL_OBJECT: the whole file's CRC-32C, combined from the 5 + 5 + 1 MiB parts' (not a checksum of theirs, "-3")
    assert crc32c(big) == int.from_bytes(base64.b64decode(stored_checksum("big")), "big")
    assert env.read_bytes("big", len(big) + 1) == big
    real = rbackup_s3.upload.crc32c
    monkeypatch.setattr(rbackup_s3.upload, "crc32c", lambda data, crc=0: real(bytes(data) + b"damaged", crc))
    for name, data in (("bad-small", small), ("bad-big", big)):
        with pytest.raises(StorageError, match=name):
            env.write_bytes(name, data)
    assert [f.path for f in env.list()] == ["big", "small"]
    uploads = store.client().list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", [])
    assert uploads == []


def test_missing_bucket_policy_is_told_from_a_bug(s3_store: S3Store, tmp_path: Path) -> None:
    """Listing a missing bucket is NotFound everywhere, so the engine fails fast on every store.
    A write to it is NotFound too, except where the store's policy is to create the bucket
    (SeaweedFS's -s3.autoCreateBucket default): then the bucket must really exist afterwards."""
    bucket = f"rbk-missing-{uuid.uuid4().hex[:12]}"
    env = S3Env(f"s3://{bucket}/db", storage_options={**s3_store.storage_options, **BEST_EFFORT})
    with pytest.raises(NotFound, match=bucket):
        env.list()
    with pytest.raises(NotFound, match=bucket):
        BackupEngineReadOnly(BackupableDBOptions(f"s3://{bucket}/db", storage_options=s3_store.storage_options))
    if s3_store.auto_creates_buckets:
        env.write_bytes("probe", b"p")
        assert env.read_bytes("probe", 10) == b"p"
        assert bucket in {b["Name"] for b in s3_store.client().list_buckets()["Buckets"]}
        env.delete(["probe"])
        s3_store.client().delete_bucket(Bucket=bucket)
    else:
        with pytest.raises(NotFound, match=bucket):
            env.write_bytes("probe", b"p")
