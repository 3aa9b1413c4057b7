"""S3 reads on blocking connections (`DirectClient`, `BlockingS3Reader`) against moto: the
configurations they serve and those left to s3fs's client, error mapping, retries, refreshed
credentials and TLS settings."""
from __future__ import annotations

import datetime
import ipaddress
import stat
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from rbackup_s3 import S3Env
from rbackup_s3.download import BlockingS3Reader, S3Reader

from rbackup.errors import NotFound, PermissionDenied, StorageError
from rbackup.testing.env_contract import _pattern
from tests.s3_fixtures import Fault, FaultyS3, Overlap

MiB = 2**20
SMALL_PARTS = {"part_size": 5 * MiB}
FALLBACK = {"s3_additional_kwargs": {"RequestPayer": "requester"}}
"""A GetObject parameter the direct path does not send: reads go through s3fs's client."""


def _read_in_pieces(env: S3Env, path: str, piece: int = 3 * MiB + 1) -> tuple[bytes, Any]:
    got = bytearray()
    buf = bytearray(piece)
    with env.open_read(path) as f:
        while n := f.readinto(buf):
            got += buf[:n]
        raw = f._raw
    return bytes(got), raw


def test_reads_use_blocking_connections_unless_the_configuration_needs_s3fs(s3_faulty: FaultyS3) -> None:
    """The default is the direct path; extra GetObject parameters (here RequestPayer), a proxy or a
    client certificate keep s3fs's client, and both read the same bytes."""
    data = _pattern(17 * MiB + 3, seed=5)
    direct = S3Env(s3_faulty.url, storage_options={**s3_faulty.storage_options, **SMALL_PARTS})
    direct.write_bytes("shared/a.sst", data)
    got, raw = _read_in_pieces(direct, "shared/a.sst")
    assert got == data and isinstance(raw, BlockingS3Reader) and raw.most_ahead >= 1
    assert direct._direct.unsupported() is None
    fallback = S3Env(s3_faulty.url, storage_options={**s3_faulty.storage_options, **SMALL_PARTS, **FALLBACK})
    got, raw = _read_in_pieces(fallback, "shared/a.sst")
    assert got == data and type(raw) is S3Reader
    assert "RequestPayer" in str(fallback._direct.unsupported())
    proxied = S3Env(s3_faulty.url, storage_options={**s3_faulty.storage_options,
                                                    "config_kwargs": {"proxies": {"http": "http://127.0.0.1:9"}}})
    assert proxied._direct.unsupported() == "a proxy"


@pytest.mark.parametrize("options", [{}, FALLBACK], ids=["direct", "s3fs"])
def test_cut_bodies_resume_on_either_path(s3_faulty: FaultyS3, options: dict[str, Any]) -> None:
    """Bodies cut mid-stream (the server truncates them) resume byte-identically, whole-object
    stream and fetched-ahead segments alike."""
    env = S3Env(s3_faulty.url, storage_options={**s3_faulty.storage_options, **SMALL_PARTS, **options})
    data = _pattern(23 * MiB + 7, seed=9)
    env.write_bytes("shared/c.sst", data)
    s3_faulty.injector.add(Fault("truncate", method="GET", path="c.sst$", times=4))
    got, raw = _read_in_pieces(env, "shared/c.sst")
    assert got == data and s3_faulty.injector.injected == {"truncate": 4}
    # a cut before the response's head is a retry of that GET, not a resume
    assert 1 <= raw.resumes <= 4


def test_error_answers_map_to_rbackup_errors_naming_the_file(s3_faulty: FaultyS3) -> None:
    env = S3Env(s3_faulty.url, storage_options={**s3_faulty.storage_options, "max_attempts": 3})
    env.write_bytes("f", b"f" * 1000)
    with pytest.raises(NotFound, match=f"{s3_faulty.url}/missing"):
        env.open_read("missing")
    s3_faulty.injector.add(Fault("error", method="GET", path="/f$", status=403, code="AccessDenied", times=1))
    with pytest.raises(PermissionDenied, match=f"{s3_faulty.url}/f.*AccessDenied"):
        env.open_read("f")
    # 5xx and throttling are retried (up to max_attempts), then reported
    s3_faulty.injector.add(Fault("error", method="GET", path="/f$", times=2))
    assert env.read_bytes("f", 1000) == b"f" * 1000
    s3_faulty.injector.add(Fault("error", method="GET", path="/f$", status=500, code="InternalError", times=3))
    with pytest.raises(StorageError, match=f"{s3_faulty.url}/f.*InternalError"):
        env.open_read("f")
    assert s3_faulty.injector.injected == {"error": 6}
    # a connection dropped before the answer is retried too
    s3_faulty.injector.add(Fault("reset_before", method="GET", path="/f$", times=2))
    assert env.read_bytes("f", 1000) == b"f" * 1000


CREDENTIAL_PROCESS = """
import datetime, json, pathlib, sys
counter = pathlib.Path(sys.argv[1])
n = int(counter.read_text() or 0) + 1 if counter.exists() else 1
counter.write_text(str(n))
expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=5)
print(json.dumps({"Version": 1, "AccessKeyId": "testing", "SecretAccessKey": "testing",
                  "SessionToken": f"tok-{n}", "Expiration": expires.isoformat()}))
"""


def test_session_credentials_are_refreshed_for_every_get(s3_faulty: FaultyS3, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials from a credential_process expiring within botocore's refresh window are fetched
    again before each request: every GET carries a fresh session token, never the first one."""
    script = tmp_path / "creds.py"
    script.write_text(CREDENTIAL_PROCESS)
    counter = tmp_path / "count"
    config = tmp_path / "config"
    config.write_text(f"[profile refreshing]\ncredential_process = {sys.executable} {script} {counter}\n"
                      "region = us-east-1\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    clean = S3Env(s3_faulty.url, storage_options=s3_faulty.clean_storage_options)
    clean.write_bytes("f", b"t" * 5000)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_PROFILE", "refreshing")
    env = S3Env(s3_faulty.url, storage_options={"endpoint_url": s3_faulty.storage_options["endpoint_url"]})
    tokens: list[str] = []

    def record(environ: dict[str, Any]) -> bool:
        if environ["REQUEST_METHOD"] == "GET":
            tokens.append(environ.get("HTTP_X_AMZ_SECURITY_TOKEN", ""))
        return False

    s3_faulty.injector.watch(Overlap(record, meet=1))
    for _ in range(3):
        assert env.read_bytes("f", 5000) == b"t" * 5000
    with env.open_read("f") as f:
        assert isinstance(f._raw, BlockingS3Reader)
    assert len(tokens) == 4 and len(set(tokens)) == 4
    assert all(t.startswith("tok-") and t != "tok-1" for t in tokens)
    assert int(counter.read_text()) >= 4


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rbackup test store")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    root = tmp_path_factory.mktemp("tls")
    cert_file, key_file = root / "cert.pem", root / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_file.chmod(stat.S_IRUSR)
    return cert_file, key_file


@pytest.fixture
def https_moto(moto_server: str, tls_files: tuple[Path, Path]) -> Iterator[str]:
    """moto's application over HTTPS with the self-signed certificate: its endpoint."""
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, DomainDispatcherApplication(create_backend_app), threaded=True,
                         request_handler=MotoRequestHandler, ssl_context=tuple(map(str, tls_files)))
    thread = threading.Thread(target=server.serve_forever, name="https-moto", daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        thread.join()


def test_https_with_a_custom_ca_or_without_verification(s3_faulty: FaultyS3, https_moto: str,
                                                         tls_files: tuple[Path, Path]) -> None:
    """The direct GETs verify TLS as the client does: with the CA bundle given, not at all with
    verify=False, and refuse the self-signed certificate by default."""
    data = _pattern(6 * MiB + 1, seed=3)
    S3Env(s3_faulty.url, storage_options=s3_faulty.clean_storage_options).write_bytes("tls.sst", data)
    base = {k: v for k, v in s3_faulty.clean_storage_options.items() if k != "endpoint_url"}
    for verify in (str(tls_files[0]), False):
        env = S3Env(s3_faulty.url, storage_options={**base, "endpoint_url": https_moto,
                                                    "client_kwargs": {"verify": verify}})
        with env.open_read("tls.sst") as f:
            assert isinstance(f._raw, BlockingS3Reader)
            assert f.read() == data
    strict = S3Env(s3_faulty.url, storage_options={**base, "endpoint_url": https_moto, "max_attempts": 1})
    assert strict._direct.unsupported() is None
    with pytest.raises(StorageError, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        strict.open_read("tls.sst")



def test_anonymous_reads_are_sent_unsigned(s3_faulty: FaultyS3) -> None:
    """anon=True: the direct GETs carry no Authorization header, as the client's would not."""
    admin = boto3.client("s3", endpoint_url=s3_faulty.clean_storage_options["endpoint_url"], region_name="us-east-1")
    admin.put_object(Bucket=s3_faulty.url.removeprefix("s3://"), Key="public", Body=b"p" * 100, ACL="public-read")
    authorization: list[str | None] = []

    def record(environ: dict[str, Any]) -> bool:
        if environ["REQUEST_METHOD"] == "GET":
            authorization.append(environ.get("HTTP_AUTHORIZATION"))
        return False

    s3_faulty.injector.watch(Overlap(record, meet=1))
    env = S3Env(s3_faulty.url, storage_options={"endpoint_url": s3_faulty.storage_options["endpoint_url"],
                                                "anon": True})
    with env.open_read("public") as f:
        assert isinstance(f._raw, BlockingS3Reader)
        assert f.read() == b"p" * 100
    signed = S3Env(s3_faulty.url, storage_options=s3_faulty.storage_options)
    assert signed.read_bytes("public", 100) == b"p" * 100
    assert authorization[0] is None and str(authorization[1]).startswith("AWS4-HMAC-SHA256 ")
