"""S3Env against a moto server over HTTP: the conformance kit, then what only S3 has
(multipart publish, conditional PUT, lost responses, retries, bucket errors), each on
both clients (`s3_client`: rbackup's native one and s3fs's)."""
from __future__ import annotations

import hashlib
import logging
import threading
import time
from pathlib import Path
from typing import Any

import boto3
import pytest
import rbackup_s3.download
import rbackup_s3.env
import rbackup_s3.upload
from rbackup_s3 import S3Env, S3Settings, parse_s3_url, part_size
from rbackup_s3.upload import MAX_PART_SIZE, MAX_PARTS, MIN_PART_SIZE

from rbackup.env.base import OBJECT_STORE_BUFFER_SIZE
from rbackup.env.registry import open_env
from rbackup.errors import AlreadyExists, InvalidArgument, NotFound, PermissionDenied, StorageError
from rbackup.testing import BackendConformance
from rbackup.testing.env_contract import _pattern, race_for_one_winner
from tests.s3_fixtures import S3_CLIENTS, Fault, FaultyS3, Overlap

MiB = 2**20
SMALL_PARTS = {"part_size": 5 * MiB}


@pytest.fixture(params=S3_CLIENTS)
def s3_client(request: pytest.FixtureRequest) -> str:
    """Every test here on both clients."""
    return str(request.param)


def _client(options: dict[str, Any]) -> Any:
    return boto3.client("s3", endpoint_url=options["endpoint_url"], region_name="us-east-1")


def _bucket(url: str) -> str:
    return parse_s3_url(url)[1]


class TestS3Contract(BackendConformance):
    large_file_size = 12 * MiB  # with 5 MiB parts: a three-part upload

    @pytest.fixture(autouse=True)
    def _bucket(self, s3_bucket_url: tuple[str, dict[str, Any]]) -> None:
        self.s3 = s3_bucket_url

    def make_env(self, tmp_path: Path) -> S3Env:
        url, options = self.s3
        return S3Env(f"{url}/backups/db1", storage_options={**options, **SMALL_PARTS})


class TestS3ContractWithoutConditionalWrites(TestS3Contract):
    """A store declared without If-None-Match: create_exclusive is best effort."""

    large_file_size = 6 * MiB

    def make_env(self, tmp_path: Path) -> S3Env:
        url, options = self.s3
        return S3Env(url, storage_options={**options, **SMALL_PARTS, "conditional_writes": False})


# -- pure functions --------------------------------------------------------------------
@pytest.mark.parametrize("base", [MIN_PART_SIZE, 8 * MiB, 64 * MiB, MAX_PART_SIZE])
@pytest.mark.parametrize("total", [5 * 10**12, 5 * 2**40])  # 5 TB and 5 TiB, S3's largest object
def test_part_sizes_fit_the_largest_object_in_10000_parts(base: int, total: int) -> None:
    parts, covered, previous = 0, 0, 0
    while covered < total:
        parts += 1
        size = part_size(parts, base)
        assert MIN_PART_SIZE <= size <= MAX_PART_SIZE
        assert size >= previous
        covered += size
        previous = size
    assert parts < MAX_PARTS


def test_part_sizes_for_ordinary_files() -> None:
    assert [part_size(n, 8 * MiB) for n in (1, 500, 501, 1000, 1001)] == [8 * MiB] * 2 + [16 * MiB] * 2 + [32 * MiB]
    assert part_size(10_000, 5 * MiB) == MAX_PART_SIZE


def test_parse_url_and_settings() -> None:
    assert parse_s3_url("s3://b/x/y/") == ("s3", "b", "x/y")
    assert parse_s3_url("s3a://b") == ("s3a", "b", "")
    for bad in ("s3://", "gs://b/x", "s3://b/../x", "b/x"):
        with pytest.raises(InvalidArgument):
            parse_s3_url(bad)
    options = {"part_size": 16 * MiB, "conditional_writes": False, "anon": True}
    assert S3Settings.pop_from(options) == S3Settings(part_size=16 * MiB, conditional_writes=False)
    assert options == {"anon": True}
    with pytest.raises(InvalidArgument):
        S3Settings(part_size=MiB)
    with pytest.raises(InvalidArgument):
        S3Settings(concurrency=0)


@pytest.mark.parametrize("value", [MiB, 0, -1])
def test_read_block_size_is_accepted_with_a_deprecation_warning_and_not_validated(value: int) -> None:
    options = {"read_block_size": value, "part_size": 16 * MiB, "anon": True}
    with pytest.warns(FutureWarning, match="read_block_size.*deprecated and ignored"):
        settings = S3Settings.pop_from(options)
    assert settings == S3Settings(part_size=16 * MiB) and options == {"anon": True}


# -- against moto ----------------------------------------------------------------------
def test_capabilities_and_registry(s3_bucket_url: tuple[str, dict[str, Any]]) -> None:
    url, options = s3_bucket_url
    env = open_env(f"{url}/p", storage_options=options)
    assert isinstance(env, S3Env) and env.url == f"{url}/p"
    caps = env.capabilities
    assert caps.conditional_create and not caps.atomic_rename and not caps.directories and caps.concurrency == 16
    assert open_env(url.replace("s3://", "s3a://"), storage_options=options).url.startswith("s3a://")
    plain = S3Env(url, storage_options={**options, "conditional_writes": False, "concurrency": 32})
    assert not plain.capabilities.conditional_create and plain.capabilities.concurrency == 32
    # S3 is latency-bound: its requests-at-once width is its files-at-once width too
    assert (caps.transfer_width, plain.capabilities.transfer_width) == (16, 32)
    assert caps.buffer_size == OBJECT_STORE_BUFFER_SIZE


def test_multipart_upload_of_a_large_file(s3_bucket_url: tuple[str, dict[str, Any]]) -> None:
    url, options = s3_bucket_url
    env = S3Env(url, storage_options={**options, **SMALL_PARTS})
    data = _pattern(12 * MiB + 7, seed=3)
    with env.open_write("shared/big.sst") as w:
        for off in range(0, len(data), 3 * MiB + 1):  # chunks that straddle part boundaries
            w.write(data[off : off + 3 * MiB + 1])
    head = _client(options).head_object(Bucket=_bucket(url), Key="shared/big.sst")
    assert head["ContentLength"] == len(data)
    assert head["ETag"].endswith('-3"'), "5 + 5 + 2 MiB parts"
    with env.open_read("shared/big.sst") as f:
        assert f.read() == data


def test_file_of_one_part_goes_up_in_a_single_put(s3_bucket_url: tuple[str, dict[str, Any]]) -> None:
    url, options = s3_bucket_url
    env = S3Env(url, storage_options={**options, **SMALL_PARTS})
    env.write_bytes("exact", b"e" * 5 * MiB)
    assert "-" not in _client(options).head_object(Bucket=_bucket(url), Key="exact")["ETag"]


def _pending_uploads(url: str, options: dict[str, Any]) -> list[dict[str, Any]]:
    return _client(options).list_multipart_uploads(Bucket=_bucket(url)).get("Uploads", [])


def test_aborted_write_leaves_no_object_and_no_pending_upload(s3_bucket_url: tuple[str, dict[str, Any]]) -> None:
    url, options = s3_bucket_url
    env = S3Env(url, storage_options={**options, **SMALL_PARTS})
    w = env.open_write("shared/doomed.sst")
    w.write(b"d" * 11 * MiB)  # two parts already uploaded
    assert len(_pending_uploads(url, options)) == 1
    w.abort()
    with pytest.raises(RuntimeError):
        with env.open_write("shared/doomed2.sst") as w2:
            w2.write(b"d" * 6 * MiB)
            raise RuntimeError("copy failed")
    assert _pending_uploads(url, options) == []
    assert env.list() == []
    assert "Contents" not in _client(options).list_objects_v2(Bucket=_bucket(url))


def test_failed_completion_aborts_the_upload(s3_faulty: FaultyS3) -> None:
    s3_faulty.injector.add(Fault("error", method="POST", query="uploadId=", status=400, code="InvalidPart",
                                 message="injected"))
    env = S3Env(s3_faulty.url, storage_options={**s3_faulty.storage_options, **SMALL_PARTS})
    with pytest.raises(StorageError) as info:
        env.write_bytes("shared/x.sst", b"x" * 6 * MiB)
    assert "shared/x.sst" in str(info.value) and "InvalidPart" in str(info.value)
    assert _pending_uploads(s3_faulty.url, s3_faulty.clean_storage_options) == []
    assert not S3Env(s3_faulty.url, storage_options=s3_faulty.clean_storage_options).exists("shared/x.sst")


def test_lost_completion_response_is_recognised(s3_faulty: FaultyS3) -> None:
    """Completed, response lost, and the retry finds the upload gone: still a success."""
    injector = s3_faulty.injector
    injector.add(Fault("reset_after", method="POST", query="uploadId=", times=1))
    injector.add(Fault("error", method="POST", query="uploadId=", times=1, status=404, code="NoSuchUpload",
                       message="The specified upload does not exist."))
    env = S3Env(s3_faulty.url, storage_options={**s3_faulty.storage_options, **SMALL_PARTS})
    data = _pattern(6 * MiB, seed=5)
    env.write_bytes("shared/y.sst", data)
    assert injector.injected == {"reset_after": 1, "error": 1}
    assert env.read_bytes("shared/y.sst", len(data)) == data


def test_second_client_sees_writes_at_once(s3_bucket_url: tuple[str, dict[str, Any]]) -> None:
    url, options = s3_bucket_url
    writer, reader = S3Env(url, storage_options=options), S3Env(url, storage_options=options)
    assert reader.list("meta") == [] and not reader.exists("meta/1")  # primes any cache there is
    writer.create_exclusive("meta/1", b"backup one")
    assert [i.path for i in reader.list("meta")] == ["meta/1"]
    assert reader.exists("meta/1") and reader.read_bytes("meta/1", 100) == b"backup one"
    writer.write_bytes("meta/1", b"replaced")
    assert reader.read_bytes("meta/1", 100) == b"replaced"
    writer.delete(["meta/1"])
    assert reader.list("meta") == [] and not reader.exists("meta/1")


def test_create_exclusive_race_between_clients(s3_bucket_url: tuple[str, dict[str, Any]]) -> None:
    url, options = s3_bucket_url
    envs = [S3Env(url, storage_options=options) for _ in range(8)]
    for round_ in range(3):
        won = race_for_one_winner(
            lambda i, r=round_: lambda: envs[i].create_exclusive(f"LOCK{r}", f"holder {i}".encode()), len(envs))
        assert envs[0].read_bytes(f"LOCK{round_}", 100) == f"holder {won}".encode()


def test_create_exclusive_survives_a_lost_response(s3_faulty: FaultyS3) -> None:
    """The PUT is applied, its response lost; botocore's retry gets 412 for our own object."""
    s3_faulty.injector.add(Fault("reset_after", method="PUT", path="/meta/1$", times=1))
    env = S3Env(s3_faulty.url, storage_options=s3_faulty.storage_options)
    env.create_exclusive("meta/1", b"mine")
    assert s3_faulty.injector.injected["reset_after"] == 1
    assert env.read_bytes("meta/1", 10) == b"mine"
    with pytest.raises(AlreadyExists):
        env.create_exclusive("meta/1", b"other")
    with pytest.raises(AlreadyExists):
        env.create_exclusive("meta/1", b"")


def test_create_exclusive_retries_a_conditional_conflict(s3_faulty: FaultyS3) -> None:
    s3_faulty.injector.add(Fault("error", method="PUT", times=2, status=409, code="ConditionalRequestConflict",
                                 message="A conflicting conditional operation is in progress."))
    env = S3Env(s3_faulty.url, storage_options=s3_faulty.storage_options)
    env.create_exclusive("LOCK", b"held")
    assert s3_faulty.injector.injected["error"] == 2
    assert env.read_bytes("LOCK", 10) == b"held"


def test_delete_batches_requests(s3_bucket_url: tuple[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    url, options = s3_bucket_url
    env = S3Env(url, storage_options=options)
    names = [f"shared/{i:06d}.sst" for i in range(25)]
    for name in names:
        env.write_bytes(name, b"s")
    monkeypatch.setattr(rbackup_s3.env, "DELETE_BATCH", 10)
    calls: list[int] = []
    real_call = env._call

    def spy(method: str, **kwargs: Any) -> dict[str, Any]:
        if method == "delete_objects":
            calls.append(len(kwargs["Delete"]["Objects"]))
        return real_call(method, **kwargs)

    monkeypatch.setattr(env, "_call", spy)
    env.delete([*names, "shared/missing"])
    assert calls == [10, 10, 6]
    assert env.list() == []


def test_endpoint_from_aws_endpoint_url(moto_server: str, s3_bucket_url: tuple[str, dict[str, Any]],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """botocore reads AWS_ENDPOINT_URL itself; nothing in storage_options is needed."""
    url, _ = s3_bucket_url
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    env = S3Env(url)
    env.write_bytes("x", b"1")
    assert env.list() == [env.stat("x")]


def test_missing_bucket_fails_fast_and_clearly(moto_server: str, s3_bucket_url: tuple[str, dict[str, Any]]) -> None:
    _, options = s3_bucket_url
    env = S3Env("s3://rbk-no-such-bucket/backups", storage_options=options)
    started = time.monotonic()
    for action in (lambda: env.list(), lambda: env.write_bytes("meta/1", b"m"),
                   lambda: env.create_exclusive("LOCK", b"l"), lambda: env.delete(["x"])):
        with pytest.raises(NotFound) as info:
            action()
        assert "rbk-no-such-bucket" in str(info.value) and "does not exist" in str(info.value)
    assert time.monotonic() - started < 5


def test_a_listing_is_one_request_even_when_empty(s3_faulty: FaultyS3) -> None:
    """A new backup directory's meta/ and lease directory are empty, and every first create lists
    them: each listing is one ListObjectsV2, not s3fs's list, HEAD and list again.  An object
    named like the prefix, or one that merely starts with it, is not listed under it."""
    env = S3Env(f"{s3_faulty.url}/db", storage_options=s3_faulty.storage_options)
    env.write_bytes("meta", b"a file named like the directory")
    env.write_bytes("metadata/1", b"a sibling")
    for prefix, expected in (("meta", []), ("rbackup.lock.d", []), ("metadata", [env.stat("metadata/1")])):
        before = s3_faulty.injector.requests
        assert env.list(prefix) == expected
        assert s3_faulty.injector.requests - before == 1, prefix
    empty = S3Env(f"{s3_faulty.url}/nothing-here", storage_options=s3_faulty.storage_options)
    before = s3_faulty.injector.requests
    assert empty.list() == []
    assert s3_faulty.injector.requests - before == 1


def test_access_denied_fails_fast(s3_faulty: FaultyS3) -> None:
    s3_faulty.injector.add(Fault("error", status=403, code="AccessDenied", message="Access Denied"))
    env = S3Env(f"{s3_faulty.url}/db", storage_options=s3_faulty.storage_options)
    started = time.monotonic()
    for action in (lambda: env.write_bytes("meta/1", b"m"), lambda: env.list("meta"),
                   lambda: env.read_bytes("meta/1", 10), lambda: env.create_exclusive("LOCK", b"")):
        with pytest.raises(PermissionDenied) as info:
            action()
        assert f"{s3_faulty.url}/db" in str(info.value)
    elapsed = time.monotonic() - started
    assert elapsed < 15, f"permanent errors must not be retried for long ({elapsed:.1f} s)"


def test_persistent_server_errors_give_up_in_bounded_time(s3_faulty: FaultyS3) -> None:
    s3_faulty.injector.add(Fault("error", status=500, code="InternalError",
                                 message="We encountered an internal error."))
    env = S3Env(s3_faulty.url, storage_options={**s3_faulty.storage_options, "max_attempts": 3})
    started = time.monotonic()
    with pytest.raises(StorageError) as info:
        env.write_bytes("meta/1", b"m")
    elapsed = time.monotonic() - started
    assert "InternalError" in str(info.value) and "meta/1" in str(info.value)
    assert s3_faulty.injector.injected["error"] == 3
    assert elapsed < 15


def test_credentials_never_appear(s3_bucket_url: tuple[str, dict[str, Any]], caplog: pytest.LogCaptureFixture) -> None:
    _, options = s3_bucket_url
    secret = "TOP-SECRET-VALUE-123"
    caplog.set_level(logging.DEBUG)
    env = S3Env("s3://rbk-no-such-bucket-2", storage_options={**options, "secret": secret})
    with pytest.raises(NotFound) as info:
        env.write_bytes("x", b"1")
    for text in (str(info.value), repr(env), env.url, caplog.text):
        assert secret not in text


def test_object_replaced_while_reading_is_an_error(s3_faulty: FaultyS3) -> None:
    """One GET serves one version; a read that must resume after the object was
    replaced fails (If-Match) instead of splicing two versions together."""
    env = S3Env(s3_faulty.url, storage_options=s3_faulty.storage_options)
    clean = S3Env(s3_faulty.url, storage_options=s3_faulty.clean_storage_options)
    env.write_bytes("f", b"a" * 3 * MiB)
    # Without a cut the whole GET is of the version it started on.
    with env.open_read("f") as f:
        assert f.read(10) == b"a" * 10
        clean.write_bytes("f", b"b" * 3 * MiB)
        assert f.read() == b"a" * (3 * MiB - 10)
    # The body is cut off after the object was replaced: the resume must fail.  (The cut is
    # made by closing the body: a truncating fault may reset the connection before the first
    # bytes are read, and the resume would then come before the replacement.)
    with env.open_read("f") as f:
        assert f.read(10) == b"b" * 10
        clean.write_bytes("f", b"c" * 3 * MiB)
        f._raw._body.close()
        with pytest.raises(StorageError) as info:
            f.read()
        assert f._raw.resumes == 1
    assert f"{s3_faulty.url}/f" in str(info.value) and "replaced" in str(info.value)


def test_cut_bodies_are_resumed_byte_identically(s3_faulty: FaultyS3) -> None:
    env = S3Env(s3_faulty.url, storage_options={**s3_faulty.storage_options, **SMALL_PARTS})
    data = _pattern(13 * MiB + 5, seed=11)
    env.write_bytes("shared/r.sst", data)
    s3_faulty.injector.add(Fault("truncate", method="GET", path="r.sst$", times=3))
    buf = bytearray(4 * MiB)
    got = bytearray()
    with env.open_read("shared/r.sst") as f:
        while n := f.readinto(buf):
            got += buf[:n]
        assert f._raw.resumes == 3
    assert got == data
    assert s3_faulty.injector.injected == {"truncate": 3}
    # read() of everything, and a small file, resume too
    s3_faulty.injector.add(Fault("truncate", method="GET", path="r.sst$", times=2))
    with env.open_read("shared/r.sst") as f:
        assert f.read(7) == data[:7]
        assert f.read() == data[7:]
        assert f.read() == b""


def test_resumes_are_bounded(s3_faulty: FaultyS3) -> None:
    env = S3Env(s3_faulty.url, storage_options={**s3_faulty.storage_options, "max_attempts": 1})
    env.write_bytes("f", b"z" * MiB)
    s3_faulty.injector.add(Fault("truncate", method="GET", path="/f$"))
    started = time.monotonic()
    with pytest.raises(StorageError) as info:
        with env.open_read("f") as f:
            f.read()
    assert f"{s3_faulty.url}/f" in str(info.value)
    assert rbackup_s3.download.MAX_TOTAL_RESUMES <= s3_faulty.injector.injected["truncate"] <= 2 * (
        rbackup_s3.download.MAX_TOTAL_RESUMES + 1)
    assert time.monotonic() - started < 60


def test_part_buffers_in_flight_are_capped(s3_bucket_url: tuple[str, dict[str, Any]]) -> None:
    """16 writers at once: large files share `parts_in_flight` part buffers, small ones need none."""
    url, options = s3_bucket_url
    env = S3Env(url, storage_options={**options, **SMALL_PARTS, "parts_in_flight": 3})
    files = {f"big{i}": _pattern(11 * MiB + i, seed=i) for i in range(8)}
    files.update({f"small{i}": _pattern(100_000 + i, seed=100 + i) for i in range(8)})
    barrier = threading.Barrier(len(files))
    errors: list[BaseException] = []

    def write(name: str) -> None:
        try:
            with env.open_write(name) as w:
                barrier.wait()
                data = memoryview(files[name])
                for off in range(0, len(data), MiB):
                    w.write(data[off : off + MiB])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in files]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    budget = env.part_budget
    assert budget.held == 0 and 0 < budget.peak <= 3 * 5 * MiB
    for name, data in files.items():
        assert env.read_bytes(name, len(data)) == data
    # small files alone never touch the budget
    small = S3Env(url, storage_options={**options, **SMALL_PARTS, "parts_in_flight": 1})
    for i in range(4):
        small.write_bytes(f"s{i}", b"s" * MiB)
    assert small.part_budget.peak == 0


def test_part_bodies_are_not_copied(s3_bucket_url: tuple[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    """Parts go out as read-only views of their part buffers (sent in the background or not)."""
    url, options = s3_bucket_url
    env = S3Env(url, storage_options={**options, **SMALL_PARTS})
    bodies: list[Any] = []

    def spying(real: Any) -> Any:
        def spy(method: str, **kwargs: Any) -> Any:
            if "Body" in kwargs:
                bodies.append(kwargs["Body"])
            return real(method, **kwargs)
        return spy

    monkeypatch.setattr(env, "_call", spying(env._call))
    monkeypatch.setattr(env, "_call_async", spying(env._call_async))
    data = _pattern(11 * MiB, seed=2)
    env.write_bytes("p", data)
    assert len(bodies) == 3
    assert all(isinstance(b, rbackup_s3.upload.PartBody) for b in bodies)
    if env._native is not None:  # the view itself goes to the socket
        assert rbackup_s3.operations._bytes_of(bodies[0]).obj is bodies[0].whole().obj
    else:
        from aiohttp.payload import PAYLOAD_REGISTRY  # sent from the buffer, not through a thread pool
        assert type(PAYLOAD_REGISTRY.get(rbackup_s3.upload.PartBody(memoryview(b"x")))).__name__ == "PartPayload"
    assert env.read_bytes("p", len(data)) == data


def test_survives_random_faults_byte_identically(s3_faulty: FaultyS3) -> None:
    """20% of requests fail in every way the injector knows; every byte still comes back."""
    env = S3Env(f"{s3_faulty.url}/db",
                storage_options={**s3_faulty.storage_options, **SMALL_PARTS})
    sizes = [0, 1, 100_000, 5 * MiB, 12 * MiB + 3, 6 * MiB, 11 * MiB] + [4096 * i for i in range(1, 20)]
    files = {f"shared_checksum/{i:06d}.sst": _pattern(size, seed=i) for i, size in enumerate(sizes)}
    s3_faulty.injector.chaos(0.2)
    for name, data in files.items():
        with env.open_write(name) as w:
            view = memoryview(data)
            for off in range(0, len(data), MiB):
                w.write(view[off : off + MiB])
    env.create_exclusive("meta/1", b"meta file")
    listed = {info.path: info.size for info in env.list()}
    assert listed == {**{n: len(d) for n, d in files.items()}, "meta/1": 9}
    buf = bytearray(MiB)
    for name, data in files.items():
        digest, total = hashlib.sha256(), 0
        with env.open_read(name) as f:
            while n := f.readinto(buf):
                digest.update(memoryview(buf)[:n])
                total += n
        assert total == len(data) and digest.digest() == hashlib.sha256(data).digest(), name
    injected = s3_faulty.injector.injected
    assert sum(injected.values()) >= 10 and len(injected) == 5, (injected, s3_faulty.injector.requests)


def _is_part_upload(environ: dict[str, Any]) -> bool:
    return environ["REQUEST_METHOD"] == "PUT" and "partNumber=" in environ.get("QUERY_STRING", "")


def _is_ranged_get(environ: dict[str, Any]) -> bool:
    return environ["REQUEST_METHOD"] == "GET" and "HTTP_RANGE" in environ


def test_a_big_file_goes_up_as_parallel_parts_within_the_budget(s3_faulty: FaultyS3) -> None:
    """The server sees 3 parts of one file in flight at once (each waits at the door for
    the others: parts sent one after another would be seen alone); the part buffers stay
    within `parts_in_flight`, and the object is byte-identical."""
    env = S3Env(s3_faulty.url, storage_options={**s3_faulty.storage_options, **SMALL_PARTS, "parts_in_flight": 4})
    overlap = s3_faulty.injector.watch(Overlap(_is_part_upload, meet=3))
    data = _pattern(23 * MiB + 7, seed=21)
    with env.open_write("shared/big.sst") as writer:
        view = memoryview(data)
        for off in range(0, len(data), MiB):
            writer.write(view[off : off + MiB])
    assert overlap.most >= 3 and overlap.seen == 5
    assert writer.most_in_flight >= 3
    budget = env.part_budget
    assert budget.held == 0 and budget.peak <= 4 * 5 * MiB
    clean = S3Env(s3_faulty.url, storage_options={**s3_faulty.clean_storage_options, **SMALL_PARTS})
    assert clean.read_bytes("shared/big.sst", len(data) + 1) == data


def test_parts_in_flight_never_starve_a_writer_waiting_for_its_first_buffer(s3_faulty: FaultyS3) -> None:
    """A budget of one part: a big file's parts then go up one at a time (no extra buffer is
    free), and several big files written at once all complete, within the budget."""
    env = S3Env(s3_faulty.url, storage_options={**s3_faulty.storage_options, **SMALL_PARTS, "parts_in_flight": 1})
    files = {f"shared/{i}.sst": _pattern(11 * MiB + i, seed=30 + i) for i in range(3)}

    def write(name: str) -> int:
        with env.open_write(name) as writer:
            writer.write(files[name])
        return writer.most_in_flight

    threads = [threading.Thread(target=write, args=(name,)) for name in files]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert env.part_budget.peak == 5 * MiB and env.part_budget.held == 0
    for name, data in files.items():
        assert env.read_bytes(name, len(data) + 1) == data


def test_a_big_file_comes_down_by_parallel_ranged_gets(s3_faulty: FaultyS3) -> None:
    """Segments after the first are fetched ahead by ranged GETs the server sees at once,
    into budget buffers given back at the end; the bytes are exact whatever the reads' sizes."""
    clean = S3Env(s3_faulty.url, storage_options={**s3_faulty.clean_storage_options, **SMALL_PARTS})
    data = _pattern(31 * MiB + 11, seed=22)
    clean.write_bytes("shared/big.sst", data)
    env = S3Env(s3_faulty.url, storage_options={**s3_faulty.storage_options, **SMALL_PARTS, "parts_in_flight": 4})
    overlap = s3_faulty.injector.watch(Overlap(_is_ranged_get, meet=3))
    got = bytearray()
    buf = bytearray(3 * MiB + 1)
    with env.open_read("shared/big.sst") as f:
        while n := f.readinto(buf):
            got += buf[:n]
        assert f._raw.most_ahead >= 3 and f._raw.resumes == 0
    assert got == data
    assert overlap.most >= 3
    assert env.part_budget.held == 0 and 0 < env.part_budget.peak <= 4 * 5 * MiB
    with env.open_read("shared/big.sst") as f:  # closed half-way: the buffers come back
        assert f.read(6 * MiB) == data[: 6 * MiB]
    assert env.part_budget.held == 0


def test_a_big_file_among_busy_readers_comes_down_in_one_get(s3_faulty: FaultyS3) -> None:
    """With no idle connection (here `concurrency` 2 and another file open), a big file is read by
    one streaming GET: no ranged GETs, no budget taken."""
    clean = S3Env(s3_faulty.url, storage_options={**s3_faulty.clean_storage_options, **SMALL_PARTS})
    data = _pattern(31 * MiB + 11, seed=23)
    clean.write_bytes("shared/big.sst", data)
    clean.write_bytes("shared/other.sst", b"x" * MiB)
    env = S3Env(s3_faulty.url, storage_options={**s3_faulty.storage_options, **SMALL_PARTS, "concurrency": 2})
    ranged = s3_faulty.injector.watch(Overlap(_is_ranged_get, meet=1))
    with env.open_read("shared/other.sst") as other, env.open_read("shared/big.sst") as f:
        assert f.read() == data and other.read() == b"x" * MiB
        assert f._raw.most_ahead == 0
    assert ranged.seen == 0 and env.part_budget.peak == 0
    with env.open_read("shared/big.sst") as f:  # alone again: it has a spare connection
        assert f.read() == data
        assert f._raw.most_ahead >= 1


def test_a_big_file_replaced_while_its_segments_are_fetched_is_an_error(s3_faulty: FaultyS3) -> None:
    """The object is replaced (same size) while the ranged GETs of its later segments wait at
    the server: they carry If-Match and their ETag is checked, so the read fails instead of
    joining two versions."""
    clean = S3Env(s3_faulty.url, storage_options={**s3_faulty.clean_storage_options, **SMALL_PARTS})
    clean.write_bytes("shared/big.sst", b"a" * (21 * MiB))
    s3_faulty.injector.watch(Overlap(_is_ranged_get, meet=2,
                                     on_meet=lambda: clean.write_bytes("shared/big.sst", b"b" * (21 * MiB))))
    env = S3Env(s3_faulty.url, storage_options={**s3_faulty.storage_options, **SMALL_PARTS})
    with env.open_read("shared/big.sst") as f:
        with pytest.raises(StorageError, match="replaced while it was read"):
            f.read()


@pytest.mark.parametrize(("endpoint", "signed"), [("http://127.0.0.1:9000", True), ("https://s3.example.com", False),
                                                  (None, False)])
def test_bodies_are_sha256_signed_only_without_tls(endpoint: str | None, signed: bool,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """On s3fs's client: over TLS the CRC-32C header of each upload stands in for a SHA-256 of its
    body, as botocore decides for its own checksums; over plain HTTP botocore signs the body; the
    user's choice wins.  The native client never hashes a data body unless asked: the signed
    CRC-32C header covers it, over TLS or not (`test_unsigned_payloads_are_accepted` shows the
    three servers take it)."""
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    options = {} if endpoint is None else {"endpoint_url": endpoint}
    if endpoint is not None:
        native = S3Env("s3://bucket/db", storage_options=options)._native
        assert native is not None and native._sign_payload is False
        asked = S3Env("s3://bucket/db", storage_options={**options, "config_kwargs": {
            "s3": {"payload_signing_enabled": True}}})._native
        assert asked is not None and asked._sign_payload is True
    options["client"] = "s3fs"
    config = S3Env("s3://bucket/db", storage_options=options).fs.config_kwargs
    assert config.get("s3", {}).get("payload_signing_enabled", True) is signed
    explicit = S3Env("s3://bucket/db", storage_options={**options, "config_kwargs": {
        "s3": {"payload_signing_enabled": True}}}).fs.config_kwargs
    assert explicit["s3"]["payload_signing_enabled"] is True


def test_a_completion_failing_after_its_200_is_retried(s3_faulty: FaultyS3) -> None:
    """CompleteMultipartUpload can answer 200 and then an <Error> document: an InternalError there is
    retried (as botocore does), and the object is whole."""
    fault = s3_faulty.injector.add(Fault("error", method="POST", query="uploadId", status=200, code="InternalError",
                                         message="We encountered an internal error.", times=1))
    env = S3Env(s3_faulty.url, storage_options={**s3_faulty.storage_options, **SMALL_PARTS})
    data = _pattern(11 * MiB, seed=7)
    env.write_bytes("big", data)
    assert fault.fired == 1
    assert env.read_bytes("big", len(data)) == data
