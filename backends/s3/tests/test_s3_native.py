"""rbackup's native S3 client (`signing`, `direct`, `operations`): the same URLs and signatures
as botocore for the same options, which options it serves and which it leaves to s3fs, odd keys
and long listings on every server, credentials from the environment, a profile and a
credential_process, and the s3fs option list that must not drift from s3fs's signatures."""
from __future__ import annotations

import datetime
import hashlib
import inspect
import json
import logging
import stat
import sys
from pathlib import Path
from typing import Any

import pytest
import rbackup_s3.env
from rbackup_s3 import S3Env
from rbackup_s3.signing import Credentials, NativeConfig, canonical_query, native_config, sign

from rbackup.errors import NotFound, PermissionDenied, StorageError
from tests.s3_servers import S3Store

ODD_NAMES = ["a b.sst", "plus+sign", "percent%41", "ünïcödé/ß.log", "tilde~and=eq&amp", "q?mark#hash", "semi;colon",
             "dir with space/x y", "star*(paren)'quote'", "comma,at@dollar$"]


def test_s3fs_options_match_its_signatures() -> None:
    """S3FS_OPTIONS is a list so that checking options does not import s3fs: it must stay what
    s3fs.S3FileSystem, its fsspec bases and the listing cache read."""
    import s3fs
    from fsspec.dircache import DirCache

    inits = [vars(c)["__init__"] for c in s3fs.S3FileSystem.__mro__ if "__init__" in vars(c)]
    names = {p.name for f in [*inits, DirCache.__init__] for p in inspect.signature(f).parameters.values()
             if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    assert rbackup_s3.env.S3FS_OPTIONS == frozenset(names - {"self"} | {"skip_instance_cache"})


@pytest.mark.parametrize("endpoint", ["http://127.0.0.1:9000", "http://localhost:9000", "https://s3.example.com",
                                      "https://s3.example.com/base/", "http://minio:9000"])
@pytest.mark.parametrize("style", [None, "path", "auto"])
def test_urls_and_signatures_are_botocores(endpoint: str, style: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    """For the same options, each request goes to botocore's URL (addressing, key encoding) and
    carries botocore's SigV4 signature, byte for byte."""
    import botocore.auth
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.config import Config
    from botocore.credentials import Credentials as BotoCredentials
    from botocore.session import get_session

    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-3")
    config_kwargs = {"s3": {"addressing_style": style}} if style else {}
    native = native_config({"endpoint_url": endpoint, "key": "AK", "secret": "SK", "token": "TK",
                            "config_kwargs": config_kwargs})
    assert isinstance(native, NativeConfig)
    client = get_session().create_client("s3", endpoint_url=endpoint, aws_access_key_id="AK",
                                         aws_secret_access_key="SK", aws_session_token="TK",
                                         config=Config(signature_version="s3v4", **config_kwargs))
    assert native.region == client.meta.region_name == "eu-west-3"
    now = datetime.datetime(2026, 12, 4, 11, 0, 0, tzinfo=datetime.timezone.utc)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: now)
    body = b"part bytes"
    for key in [*ODD_NAMES, "plain/key.sst"]:
        url = client.generate_presigned_url("get_object", Params={"Bucket": "bucket", "Key": key})
        path = native.path("bucket", key)
        assert url.split("?")[0] == f"{native.scheme}://{native.netloc}{path}"
        query = {"partNumber": "3", "uploadId": "a/b+c=="}
        headers = {"If-None-Match": "*", "x-amz-checksum-crc32c": "AAAAAA=="}
        ours = sign("PUT", native.netloc, path, canonical_query(query), headers, hashlib.sha256(body).hexdigest(),
                    Credentials("AK", "SK", "TK"), native.region, now)
        request = AWSRequest("PUT", f"{native.scheme}://{native.netloc}{path}?{canonical_query(query)}",
                             headers=headers, data=body)
        S3SigV4Auth(BotoCredentials("AK", "SK", "TK"), "s3", native.region).add_auth(request)
        assert ours["Authorization"] == request.headers["Authorization"], key


@pytest.mark.parametrize(("options", "reason"), [
    ({"config_kwargs": {"s3": {"addressing_style": "virtual"}}}, "addressing style virtual"),
    ({"config_kwargs": {"proxies": {"http": "http://127.0.0.1:9"}}}, "config_kwargs ['proxies']"),
    ({"client_kwargs": {"verify": "/x.pem", "config": object()}}, "client_kwargs ['config']"),
    ({"s3_additional_kwargs": {"RequestPayer": "requester"}}, "s3_additional_kwargs"),
    ({"requester_pays": True}, "requester_pays"),
    ({"cache_regions": True}, "cache_regions"),
    ({"config_kwargs": {"signature_version": "v4a"}}, "signature version v4a"),
    ({"endpoint_url": "ftp://127.0.0.1:21"}, "the endpoint ftp://127.0.0.1:21"),
    ({"endpoint_url": None}, "AWS's own endpoints"),
    ({"config_kwargs": {"retries": {"mode": "legacy"}}}, "config_kwargs retries"),
    ({"key": "only-a-key", "secret": None}, "partial credentials"),
])
def test_configurations_left_to_s3fs(options: dict[str, Any], reason: str, monkeypatch: pytest.MonkeyPatch,
                                     caplog: pytest.LogCaptureFixture) -> None:
    """What the native client does not serve keeps s3fs's client, for every request, and says why (once)."""
    caplog.set_level(logging.INFO, logger="rbackup_s3.env")
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    given = {"endpoint_url": "http://127.0.0.1:9000", "key": "k", "secret": "s", **options}
    given = {k: v for k, v in given.items() if v is not None}
    if "retries" not in reason:  # the env's own decision (native_config sees the env's retries too)
        found = native_config(given)
        assert isinstance(found, str) and reason in found
    env = S3Env("s3://bucket/p", storage_options=given)
    assert env._native is None and env._fs is not None
    told = [r.getMessage() for r in caplog.records if "s3fs's client" in r.getMessage()]
    assert len(told) == 1 and reason in told[0]


def test_a_proxy_in_the_environment_is_left_to_s3fs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.example:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert native_config({"endpoint_url": "http://s3.example:9000", "key": "k", "secret": "s"}) == "a proxy"


def test_object_lock_and_the_client_option_take_s3fs(moto_server: str) -> None:
    options = {"endpoint_url": moto_server, "key": "k", "secret": "s"}
    native = S3Env("s3://b/p", storage_options=options)
    assert native._native is not None and native._fs is None
    import s3fs  # asked for, s3fs's filesystem is still there, with the env's options

    assert isinstance(native.fs, s3fs.S3FileSystem) and native.fs.endpoint_url == moto_server
    assert S3Env("s3://b/p", storage_options={**options, "client": "s3fs"})._native is None
    locked = S3Env("s3://b/p", storage_options={**options, "object_lock_mode": "governance",
                                                "object_lock_days": 1})
    assert locked._native is None


@pytest.mark.slow
def test_odd_keys_round_trip_on_every_server(s3_store: S3Store) -> None:
    """Keys with spaces, '+', '%', unicode, '?', '#', '~' are written, listed, stat'ed, read and
    deleted as themselves (URL encoding on the wire, encoding-type=url listings decoded)."""
    env = S3Env(s3_store.url, storage_options=s3_store.storage_options)
    assert env._native is not None
    for i, name in enumerate(ODD_NAMES):
        env.write_bytes(f"odd/{name}", name.encode() * (i + 1))
    assert [f.path for f in env.list("odd")] == sorted(f"odd/{n}" for n in ODD_NAMES)
    for i, name in enumerate(ODD_NAMES):
        assert env.stat(f"odd/{name}").size == len(name.encode()) * (i + 1)
        assert env.read_bytes(f"odd/{name}", 10_000) == name.encode() * (i + 1)
    env.delete([f"odd/{n}" for n in ODD_NAMES])
    assert env.list("odd") == []
    with pytest.raises(NotFound):
        env.stat(f"odd/{ODD_NAMES[0]}")


@pytest.mark.slow
def test_listings_page_past_a_thousand_keys(s3_bucket_url: tuple[str, dict[str, Any]]) -> None:
    """ListObjectsV2 returns at most 1,000 keys a page: the rest come with continuation tokens."""
    url, options = s3_bucket_url
    env = S3Env(url, storage_options={**options, "concurrency": 32})
    import concurrent.futures

    names = [f"many/k{i:05d}" for i in range(1234)]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda n: env.write_bytes(n, n.encode()), names))
    assert [f.path for f in env.list("many")] == names
    env.delete(names)
    assert env.list("many") == []


def _seaweedfs(s3_store: S3Store) -> S3Store:
    if s3_store.name != "seaweedfs":
        pytest.skip("only SeaweedFS checks signatures against its identities")
    return s3_store


def _without_keys(options: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if k not in ("key", "secret")}


@pytest.mark.slow
@pytest.mark.parametrize("s3_store", ["seaweedfs"], indirect=True)
def test_credentials_from_env_profile_and_credential_process(s3_store: S3Store, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """SeaweedFS checks every signature: the AWS_* variables, a profile of the credentials file,
    and a credential_process (through botocore, imported only then) all sign requests it accepts;
    wrong keys are PermissionDenied."""
    store = _seaweedfs(s3_store)
    key, secret = store.storage_options["key"], store.storage_options["secret"]
    bare = _without_keys(store.storage_options)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    env = S3Env(store.url, storage_options=bare)
    env.write_bytes("from-env", b"1")
    assert env.read_bytes("from-env", 10) == b"1"

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    with pytest.raises(PermissionDenied):
        S3Env(store.url, storage_options=bare).list()

    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    credentials = tmp_path / "credentials"
    credentials.write_text(f"[stored]\naws_access_key_id = {key}\naws_secret_access_key = {secret}\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_PROFILE", "stored")
    env = S3Env(store.url, storage_options=bare)
    assert env._native is not None
    assert [f.path for f in env.list()] == ["from-env"]

    script = tmp_path / "creds.py"
    expires = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)).isoformat()
    answer = {"Version": 1, "AccessKeyId": key, "SecretAccessKey": secret, "Expiration": expires}
    script.write_text(f"print({json.dumps(json.dumps(answer))})\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    config = tmp_path / "config"
    config.write_text(f"[profile proc]\ncredential_process = {sys.executable} {script}\nregion = us-east-1\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_PROFILE", "proc")
    env = S3Env(store.url, storage_options=bare)
    assert env._native is not None
    assert env.read_bytes("from-env", 10) == b"1"
    env.delete(["from-env"])


@pytest.mark.slow
@pytest.mark.parametrize("signed", [False, True], ids=["unsigned-payload", "sha256"])
def test_unsigned_payloads_are_accepted(s3_store: S3Store, signed: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Over plain HTTP the native client signs data bodies UNSIGNED-PAYLOAD (their signed CRC-32C
    header covers them) unless asked for SHA-256; every server takes both, for a PUT and for parts."""
    import rbackup_s3.operations

    hashes: list[str] = []
    real = rbackup_s3.operations.NativeS3._payload_hash

    def spy(self: Any, data: Any) -> str:
        hashes.append(real(self, data))
        return hashes[-1]

    monkeypatch.setattr(rbackup_s3.operations.NativeS3, "_payload_hash", spy)
    config = {"config_kwargs": {"s3": {"payload_signing_enabled": True}}} if signed else {}
    env = S3Env(s3_store.url, storage_options={**s3_store.storage_options, **config, "part_size": 5 * 2**20})
    small, big = b"small body", bytes(range(256)) * (11 * 2**12)  # 11 MiB: three parts
    env.write_bytes("small", small)
    env.write_bytes("big", big)
    assert env.read_bytes("small", 100) == small and env.read_bytes("big", len(big)) == big
    assert len(hashes) == 4
    assert all((h != "UNSIGNED-PAYLOAD") is signed for h in hashes)
    env.delete(["small", "big"])


def test_a_store_that_is_down_is_named_after_bounded_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """No connection: retried (max_attempts in all), then a StorageError naming the backup URL and the endpoint."""
    import socket

    import rbackup_s3.direct

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    connects: list[str] = []
    real = rbackup_s3.direct.http.client.HTTPConnection.connect

    def counting(self: Any) -> None:
        connects.append(self.host)
        real(self)

    monkeypatch.setattr(rbackup_s3.direct.http.client.HTTPConnection, "connect", counting)
    env = S3Env("s3://bucket/db", storage_options={"endpoint_url": f"http://127.0.0.1:{port}", "key": "k",
                                                   "secret": "s", "max_attempts": 3})
    with pytest.raises(StorageError, match=rf"s3://bucket/db.*endpoint http://127.0.0.1:{port}"):
        env.list()
    assert len(connects) == 3


@pytest.mark.slow
def test_every_put_and_part_carries_a_crc32c(s3_bucket_url: tuple[str, dict[str, Any]],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Data bodies go UNSIGNED-PAYLOAD, so each carries its CRC-32C: files, parts, and the small
    conditional creates (meta commits, leases, the probe) that pass none themselves."""
    import rbackup_s3.direct
    from rbackup_s3.upload import encode_crc32c

    from rbackup.format.checksum import crc32c

    sent: list[tuple[str, dict[str, str], bytes]] = []
    real = rbackup_s3.direct.DirectClient.request

    def spy(self: Any, operation: str, method: str, key: str = "", **kwargs: Any) -> Any:
        if method == "PUT":
            sent.append((operation, dict(kwargs.get("headers") or {}), bytes(kwargs.get("body") or b"")))
        return real(self, operation, method, key, **kwargs)

    monkeypatch.setattr(rbackup_s3.direct.DirectClient, "request", spy)
    url, options = s3_bucket_url
    env = S3Env(url, storage_options={**options, "part_size": 5 * 2**20})
    env.create_exclusive("meta/1", b"committed")
    env.write_bytes("big", bytes(11 * 2**20))
    assert {op for op, _, _ in sent} == {"PutObject", "UploadPart"} and len(sent) >= 5  # probe x2, meta, 3 parts
    for _, headers, body in sent:
        assert headers["x-amz-checksum-crc32c"] == encode_crc32c(crc32c(body))
