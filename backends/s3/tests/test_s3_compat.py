"""S3-compatible stores that refuse or ignore the checksum headers of S3's integrity defaults.

moto behind the fault injector answers as the documented stores do (`tests.s3_fixtures.STORE_QUIRKS`):
Backblaze B2 refuses any `x-amz-checksum-*` / `x-amz-sdk-checksum-algorithm` header, naming it; OVH
refused `x-amz-sdk-checksum-algorithm` with a bare "Invalid Argument."; some stores refuse a
FULL_OBJECT multipart upload at its creation or its completion; others drop every checksum header.
On each, on both clients, a whole engine round trip must work, the env must find out once and say so,
and every body must still be checked by the store (Content-MD5 where checksum headers are refused).
"""
from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import rbackup_s3.compat
import rocksdict
from rbackup_s3 import S3Env
from rbackup_s3.env import parse_s3_url

from rbackup import BackupableDBOptions, BackupEngine, BackupEngineReadOnly
from rbackup.errors import AlreadyExists, StorageError
from rbackup.testing import BackendConformance
from rbackup.testing.dbs import read_all
from rbackup.testing.env_contract import _pattern
from tests.s3_fixtures import CHECKSUM_HEADERS, S3_CLIENTS, Fault, FaultyS3
from tests.s3_servers import S3Store, make_store

MiB = 2**20
SMALL_PARTS = {"part_size": 5 * MiB}
BODY_METHODS = ("PUT",)
"""Requests carrying data: PutObject and UploadPart (both PUT)."""


@pytest.fixture(params=S3_CLIENTS)
def s3_client(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _checksum_headers(headers: dict[str, str]) -> list[str]:
    return [h for h in headers if re.match(CHECKSUM_HEADERS, h)]


class TestB2LikeContract(BackendConformance):
    """The conformance kit through a store that refuses every checksum header (B2), on both clients:
    each env learns it at its first upload and every promise still holds."""

    large_file_size = 12 * MiB  # with 5 MiB parts: a three-part upload

    @pytest.fixture(autouse=True)
    def _store(self, s3_faulty: FaultyS3) -> None:
        s3_faulty.injector.emulate("b2")
        self.s3 = s3_faulty

    def make_env(self, tmp_path: Path) -> S3Env:
        return S3Env(f"{self.s3.url}/backups/db1", storage_options={**self.s3.storage_options, **SMALL_PARTS})


def _round_trip(s3: FaultyS3, db: str, tmp_path: Path, options: dict[str, Any] | None = None) -> None:
    """create, list, verify --checksum, restore, incremental, delete, gc: all through the quirky endpoint."""
    url = f"{s3.url}/backups"
    opts = BackupableDBOptions(url, storage_options={**s3.storage_options, **SMALL_PARTS, **(options or {})})
    with BackupEngine(opts) as engine:
        engine.create_new_backup(db)
        live = rocksdict.Rdict(db)
        live["extra"] = b"incremental"
        live.flush()
        live.close()
        engine.create_new_backup(db)
        assert [b.backup_id for b in engine.get_backup_info()] == [1, 2]
        for backup_id in (1, 2):
            result = engine.verify_backup(backup_id, verify_with_checksum=True)
            assert result.from_store_checksum + result.downloaded == result.files
        engine.restore_db_from_backup(2, str(tmp_path / "restored"))
        assert read_all(str(tmp_path / "restored")) == read_all(db)
        engine.delete_backup(1)
        engine.garbage_collect()
        assert [b.backup_id for b in engine.get_backup_info()] == [2]
    fresh_options = {**s3.storage_options, **(options or {})}
    with BackupEngineReadOnly(BackupableDBOptions(url, storage_options=fresh_options)) as fresh:
        result = fresh.verify_backup(2, verify_with_checksum=True)  # a fresh env: its CRC-32C probe first
        assert result.from_store_checksum + result.downloaded == result.files
    with BackupEngineReadOnly(BackupableDBOptions(url, storage_options={**s3.clean_storage_options})) as check:
        check.verify_backup(2, verify_with_checksum=True)
        check.restore_db_from_backup(2, str(tmp_path / "restored-clean"))
    assert read_all(str(tmp_path / "restored-clean")) == read_all(db)


def _emulated_round_trip(s3: FaultyS3, store: str, db: str, tmp_path: Path, options: dict[str, Any] | None = None
                         ) -> tuple[list[Fault], list[tuple[str, str, str, dict[str, str]]]]:
    """`_round_trip` on `store`'s emulation: its rules (each counting how often it fired) and every
    request the clients sent (method, path, query, headers)."""
    rules = s3.injector.emulate(store)
    seen = s3.injector.record()
    _round_trip(s3, db, tmp_path, options)
    return rules, seen


@pytest.mark.parametrize("store", ["b2", "ovh", "r2"])
def test_a_store_refusing_checksum_headers_gets_content_md5(s3_faulty: FaultyS3, multipart_db: str, tmp_path: Path,
                                                            store: str, caplog: pytest.LogCaptureFixture) -> None:
    """B2 and R2 (the header named) and OVH (a bare InvalidArgument): refused once by the writing env,
    learned, said once; then no request of it carries a checksum header and every body carries its
    Content-MD5.  The fresh env of the last verify is refused its CRC-32C probe once, and reads back."""
    with caplog.at_level(logging.INFO, logger="rbackup_s3"):
        rules, seen = _emulated_round_trip(s3_faulty, store, multipart_db, tmp_path)
    assert sum(r.fired for r in rules) == 2
    said = [r.getMessage() for r in caplog.records if "request_checksum_calculation" in r.getMessage()]
    assert len(said) == 1 and r"when_required" in said[0] and s3_faulty.storage_options["endpoint_url"] in said[0]
    refused_at = next(i for i, (_, _, _, h) in enumerate(seen) if _checksum_headers(h))
    probe_at = next(i for i, (_, p, _, h) in enumerate(seen) if i > refused_at and _checksum_headers(h))
    assert "/rbackup.lock.d/probe/" in seen[probe_at][1]  # the fresh env's CRC-32C probe, then nothing more
    # the refused request and its retry excepted, and the fresh env's probe (a multipart upload then a PUT)
    after = seen[refused_at + 2:probe_at] + [r for r in seen[probe_at:] if "/rbackup.lock.d/probe/" not in r[1]]
    assert not [(m, p, _checksum_headers(h)) for m, p, _, h in after if _checksum_headers(h)]
    bodies = [(m, p, q, h) for m, p, q, h in after if m in BODY_METHODS and int(h.get("content-length", 0))]
    assert bodies and all("content-md5" in h for _, _, _, h in bodies)


@pytest.mark.parametrize("store", ["no_full_object", "composite_only"])
def test_a_store_without_full_object_checksums_gets_composite_uploads(
        s3_faulty: FaultyS3, multipart_db: str, tmp_path: Path, store: str, caplog: pytest.LogCaptureFixture) -> None:
    """FULL_OBJECT refused at creation or at completion: multipart uploads go without it (the env
    learns once), PUTs and parts keep their CRC-32C, and verify reads those files back."""
    with caplog.at_level(logging.INFO, logger="rbackup_s3"):
        rules, seen = _emulated_round_trip(s3_faulty, store, multipart_db, tmp_path)
    assert sum(r.fired for r in rules) == 1
    said = [r.getMessage() for r in caplog.records if "FULL_OBJECT" in r.getMessage()]
    assert len(said) == 1 and s3_faulty.storage_options["endpoint_url"] in said[0]
    parts = [h for m, _, q, h in seen if m == "PUT" and "partNumber=" in q]
    puts = [h for m, _, q, h in seen if m == "PUT" and "partNumber=" not in q]
    assert parts and puts and all("x-amz-checksum-crc32c" in h for h in parts + puts)


def test_a_store_ignoring_checksums_is_read_back(s3_faulty: FaultyS3, multipart_db: str, tmp_path: Path) -> None:
    """GCS XML, OBS, OSS, COS drop the headers: nothing is refused, and verify --checksum reads back."""
    s3_faulty.injector.emulate("ignores")
    _round_trip(s3_faulty, multipart_db, tmp_path)
    env = S3Env(f"{s3_faulty.url}/backups", storage_options={**s3_faulty.storage_options, **SMALL_PARTS})
    with BackupEngineReadOnly(BackupableDBOptions(f"{s3_faulty.url}/backups", backup_env=env)) as engine:
        result = engine.verify_backup(2, verify_with_checksum=True)
    assert (result.from_store_checksum, result.downloaded) == (0, result.files)


@pytest.mark.parametrize("how", ["option", "environment", "config file"])
def test_when_required_sends_no_checksum_header_at_all(s3_faulty: FaultyS3, multipart_db: str, tmp_path: Path, how: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """request_checksum_calculation=when_required, from the storage option, AWS_REQUEST_CHECKSUM_CALCULATION
    or the AWS config file, as botocore reads it: B2 never refuses anything."""
    options: dict[str, Any] = {}
    if how == "option":
        options["request_checksum_calculation"] = "when_required"
    elif how == "environment":
        monkeypatch.setenv("AWS_REQUEST_CHECKSUM_CALCULATION", "WHEN_REQUIRED")
    else:
        config = tmp_path / "aws-config"
        config.write_text("[default]\nrequest_checksum_calculation = when_required\n")
        monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    rules, seen = _emulated_round_trip(s3_faulty, "b2", multipart_db, tmp_path, options)
    assert sum(r.fired for r in rules) == 0
    assert not [(m, p, _checksum_headers(h)) for m, p, _, h in seen if _checksum_headers(h)]


def test_delete_objects_carries_content_md5_and_no_checksum_header(s3_faulty: FaultyS3) -> None:
    """DeleteObjects needs Content-MD5 (S3's API, and stores that predate the checksum headers);
    on both clients it carries that and nothing a B2-like store refuses."""
    s3_faulty.injector.emulate("b2")
    env = S3Env(s3_faulty.url, storage_options={**s3_faulty.storage_options, "request_checksum_calculation":
                                                "when_required"})
    env.write_bytes("a", b"a")
    seen = s3_faulty.injector.record()
    env.delete(["a", "b"])
    deletes = [h for m, _, q, h in seen if m == "POST" and q.startswith("delete")]
    assert len(deletes) == 1 and "content-md5" in deletes[0] and not _checksum_headers(deletes[0])
    assert not env.exists("a")


def test_a_refused_conditional_create_retried_does_not_win_a_lost_race(s3_faulty: FaultyS3) -> None:
    """The retry after a refusal keeps If-None-Match: an object another writer made meanwhile stays
    theirs (AlreadyExists), and a create of a fresh name succeeds once."""
    other = S3Env(s3_faulty.url, storage_options=s3_faulty.clean_storage_options)
    other.create_exclusive("meta/1", b"theirs")
    s3_faulty.injector.emulate("b2")
    env = S3Env(s3_faulty.url, storage_options=s3_faulty.storage_options)
    with pytest.raises(AlreadyExists):
        env.create_exclusive("meta/1", b"mine")
    assert other.read_bytes("meta/1", 100) == b"theirs"
    env.create_exclusive("meta/2", b"mine")
    with pytest.raises(AlreadyExists):
        env.create_exclusive("meta/2", b"mine again")


@pytest.fixture
def seaweedfs_store(request: pytest.FixtureRequest, s3_client: str) -> Iterator[S3Store]:
    yield from make_store(request, "seaweedfs")


def test_a_damaged_body_is_refused_without_checksum_headers(seaweedfs_store: S3Store,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """With no checksum header, the Content-MD5 of each PUT and part still makes the store refuse a body
    damaged on the way (SeaweedFS checks it; moto checks none), and no object or upload is left."""
    store = seaweedfs_store
    env = S3Env(store.url, storage_options={**store.storage_options, **SMALL_PARTS,
                                            "request_checksum_calculation": "when_required"})
    _, bucket, prefix = parse_s3_url(store.url)
    small, big = _pattern(1000, seed=5), _pattern(11 * MiB, seed=6)
    seen: list[int] = []
    real = rbackup_s3.compat.content_md5

    def counted(data: bytes | memoryview) -> str:
        seen.append(len(data))
        return real(data)

    monkeypatch.setattr(rbackup_s3.compat, "content_md5", counted)
    env.write_bytes("small", small)
    env.write_bytes("big", big)
    assert sorted(seen) == sorted([1000, 5 * MiB, 5 * MiB, 1 * MiB])
    assert env.read_bytes("big", len(big) + 1) == big
    monkeypatch.setattr(rbackup_s3.compat, "content_md5", lambda data: real(bytes(data) + b"damaged"))
    for name, data in (("bad-small", small), ("bad-big", big)):
        with pytest.raises(StorageError, match=name):
            env.write_bytes(name, data)
    assert [f.path for f in env.list()] == ["big", "small"]
    assert store.client().list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", []) == []


def test_the_setting_is_read_as_botocore_reads_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """The storage option, else AWS_REQUEST_CHECKSUM_CALCULATION, else the config file, any case; any other
    value is refused naming where it came from (botocore refuses it too)."""
    from rbackup_s3.compat import resolve_calculation

    from rbackup.errors import InvalidArgument

    monkeypatch.delenv("AWS_REQUEST_CHECKSUM_CALCULATION", raising=False)
    assert resolve_calculation(None, {})[0] == "when_supported"
    assert resolve_calculation(None, {"request_checksum_calculation": "WHEN_REQUIRED"})[0] == "when_required"
    monkeypatch.setenv("AWS_REQUEST_CHECKSUM_CALCULATION", "when_supported")
    assert resolve_calculation(None, {"request_checksum_calculation": "when_required"})[0] == "when_supported"
    assert resolve_calculation("When_Required", {})[0] == "when_required"
    with pytest.raises(InvalidArgument, match="storage option request_checksum_calculation must be when_supported "
                                              "or when_required, got 'sometimes'"):
        S3Env("s3://bucket", storage_options={"endpoint_url": "http://127.0.0.1:9",
                                              "request_checksum_calculation": "sometimes"})
    monkeypatch.setenv("AWS_REQUEST_CHECKSUM_CALCULATION", "never")
    with pytest.raises(InvalidArgument, match="AWS_REQUEST_CHECKSUM_CALCULATION must be"):
        S3Env("s3://bucket", storage_options={"endpoint_url": "http://127.0.0.1:9"})


def test_which_refusals_lead_to_a_retry_without_checksums() -> None:
    """Only a 400/501 refusal of a request that carried checksum headers; a digest mismatch (damage on
    the way), a 412 (a lost race) or a 403 never: their checksum and condition stand."""
    from rbackup_s3.compat import Fallback, StoreCompat
    from rbackup_s3.direct import S3Error

    def error(code: str, message: str = "") -> S3Error:
        return S3Error({"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": 400}},
                       "PutObject")

    compat = StoreCompat("s3://b", "http://x", "when_supported", "the default")
    put = {"Key": "k", "Body": b"x", "ChecksumAlgorithm": "CRC32C", "ChecksumCRC32C": "AAAAAA==",
           "IfNoneMatch": "*"}
    create = {"Key": "k", "ChecksumAlgorithm": "CRC32C", "ChecksumType": "FULL_OBJECT"}
    for code in ("BadDigest", "XAmzContentChecksumMismatch", "PreconditionFailed", "AccessDenied", "SlowDown"):
        assert compat.fallbacks("put_object", put, error(code, "x-amz-checksum-crc32c")) == []
    assert compat.fallbacks("put_object", {"Key": "k", "Body": b"x", "ContentMD5": "x"}, error("InvalidArgument")) == []
    named = error("InvalidArgument", "Unsupported header 'x-amz-sdk-checksum-algorithm' received for this API call.")
    assert compat.fallbacks("put_object", put, named) == [Fallback("checksum_headers", "x-amz-sdk-checksum-algorithm")]
    assert compat.fallbacks("create_multipart_upload", create, error(
        "InvalidRequest", "Value for x-amz-checksum-type header is invalid.")) == [
        Fallback("full_object", "x-amz-checksum-type")]
    assert compat.fallbacks("create_multipart_upload", create, error("InvalidArgument", "Invalid Argument.")) == [
        Fallback("full_object", None), Fallback("checksum_headers", None)]
    retry = compat.retry_params("put_object", put, Fallback("checksum_headers", None))
    assert retry["IfNoneMatch"] == "*" and "ChecksumCRC32C" not in retry and "ChecksumAlgorithm" not in retry
    assert retry["ContentMD5"] == rbackup_s3.compat.content_md5(b"x")
