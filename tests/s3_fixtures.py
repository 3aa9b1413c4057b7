"""S3 test fixtures: a moto server, fresh buckets, and a fault-injecting twin.

moto's in-process `mock_aws` does not work with s3fs (aiobotocore), so a real
HTTP server runs for the whole session (port 0: the OS picks a free port) and
each test gets its own uniquely named bucket.  Dummy credentials and an empty
AWS config are forced, so nothing can reach real AWS.

moto has no fault injection of its own.  `FaultInjector` is a WSGI
middleware around moto's application, served by a second werkzeug server on
its own loopback port; both servers share moto's process-wide state, so a
bucket made through one is seen through the other.  By rule (method, path,
query; a count or a seeded probability) it returns 500 or 503 SlowDown (or
any error code), resets the connection before or after moto applies the
request, cuts a response body short, or delays it.  A rule may also match on the
request's header names (`header`): `STORE_QUIRKS` builds from it the documented answers
of S3-compatible stores to the checksum headers of S3's 2025 integrity defaults
(Backblaze B2's "Unsupported header", OVH's bare "Invalid Argument.", a store without
FULL_OBJECT multipart checksums, a store that drops them all), and `seen` records every
request's headers.  An `Overlap` watch counts the requests of one kind the server is
handling at once, to prove that a client sends them in parallel.
"""
from __future__ import annotations

import functools
import logging
import random
import re
import socket
import struct
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

log = logging.getLogger(__name__)

DUMMY_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": "/nonexistent/rbackup-test-aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/rbackup-test-aws-credentials",
    "AWS_EC2_METADATA_DISABLED": "true",
}
"""Environment for every S3 test: fake credentials, no profile, no instance metadata."""
UNSET_AWS_ENV = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_MAX_ATTEMPTS",
                 "AWS_RETRY_MODE")

FAULT_KINDS = ("error", "reset_before", "reset_after", "truncate", "delay", "strip")
"""error: an S3 error response, moto not called; reset_before/after: the connection
dropped without a response, before or after moto applied the request; truncate:
half the response body, then the connection dropped; delay: a pause, then normal;
strip: the request's headers matching `header` removed, then moto (a store that ignores them)."""
RANDOM_FAULT_KINDS = FAULT_KINDS[:5]
"""The faults `chaos` draws from: what any store or network may do to any request."""


@dataclass
class Fault:
    """One injection rule.  `path` and `query` are regular expressions searched in
    the request's path and query string; `times` caps how often it fires."""

    kind: str
    method: str | None = None
    path: str | None = None
    query: str | None = None
    probability: float = 1.0
    times: int | None = None
    status: int = 503
    code: str = "SlowDown"
    message: str = "Please reduce your request rate."
    delay: float = 0.3
    header: str | None = None
    fired: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; one of {FAULT_KINDS}")

    def matches(self, method: str, path: str, query: str, headers: Iterable[str] = ()) -> bool:
        return (
            (self.times is None or self.fired < self.times)
            and (self.method is None or self.method == method)
            and (self.path is None or re.search(self.path, path) is not None)
            and (self.query is None or re.search(self.query, query) is not None)
            and (self.header is None or self.matching_header(headers) is not None)
        )

    def matching_header(self, headers: Iterable[str]) -> str | None:
        """The first of `headers` (lower-case names) this rule's `header` matches."""
        return next((h for h in headers if self.header is not None and re.match(self.header, h)), None)


CHECKSUM_HEADERS = r"x-amz-(checksum-|sdk-checksum-algorithm$)"
"""Every header of S3's additional checksums: x-amz-checksum-<algorithm>, -algorithm, -type,
-mode, and the SDKs' x-amz-sdk-checksum-algorithm."""


def _b2() -> list[Fault]:
    """Backblaze B2: any checksum header is refused, named (its documented S3-compatible API
    limits; the answer as seen in github stonith404/pingvin-share#798, home-assistant/core#143995,
    vatesfr/xen-orchestra#8358 for x-amz-checksum-mode)."""
    return [Fault("error", header=CHECKSUM_HEADERS, status=400, code="InvalidArgument",
                  message="Unsupported header '{header}' received for this API call.")]


def _ovh() -> list[Fault]:
    """OVH Object Storage before its 2025 fix: x-amz-sdk-checksum-algorithm refused with a bare
    400 InvalidArgument "Invalid Argument." naming nothing (boto/boto3#4401, treeverse/dvc#10734,
    ovh/public-cloud-roadmap#781)."""
    return [Fault("error", header=r"x-amz-sdk-checksum-algorithm$", status=400, code="InvalidArgument",
                  message="Invalid Argument.")]


def _r2() -> list[Fault]:
    """Cloudflare R2 in early 2025: 501 NotImplemented, naming the header (f2face/cloudflare-r2#12)."""
    return [Fault("error", header=r"x-amz-checksum-", status=501, code="NotImplemented",
                  message="Header '{header}' with value 'AAAAAA==' not implemented")]


def _no_full_object() -> list[Fault]:
    """A store with checksums but no FULL_OBJECT multipart ones: CreateMultipartUpload with
    x-amz-checksum-type is refused as S3 refuses a type it does not know (InvalidRequest, "Value
    for x-amz-checksum-type header is invalid.", as recorded in floci-io/floci#3093)."""
    return [Fault("error", method="POST", query=r"(^|&)uploads", header=r"x-amz-checksum-type$", status=400,
                  code="InvalidRequest", message="Value for x-amz-checksum-type header is invalid.")]


def _composite_only() -> list[Fault]:
    """A store that takes CreateMultipartUpload's x-amz-checksum-type without a word but keeps
    composite checksums, and refuses a FULL_OBJECT completion (InvalidRequest, the checksum-mode
    mismatch message of versity/versitygw#1105 the other way round)."""
    return [Fault("error", method="POST", query=r"uploadId=", header=r"x-amz-checksum-type$", status=400,
                  code="InvalidRequest", message="The upload was created using the COMPOSITE checksum mode. "
                  "The complete request must use the same checksum mode.")]


def _ignores() -> list[Fault]:
    """GCS's XML API, Huawei OBS, Aliyun OSS, Tencent COS: checksum headers silently ignored
    (milvus-io/milvus-storage#454): moto never sees them, stores and returns none."""
    return [Fault("strip", header=CHECKSUM_HEADERS)]


STORE_QUIRKS: dict[str, Callable[[], list[Fault]]] = {
    "b2": _b2, "ovh": _ovh, "r2": _r2, "no_full_object": _no_full_object, "composite_only": _composite_only,
    "ignores": _ignores,
}
"""Emulated S3-compatible stores: name -> the rules that make moto answer as they do."""


class Overlap:
    """Requests of one kind (`matches(environ)`) that the server handles at once.

    Each matching request waits at the door (up to `hold` seconds) until
    `meet` of them are in, then all go on: a client that sends them in
    parallel is seen with `meet` in flight, one that sends them one after
    another never more than one (each waits out `hold` alone).  `on_meet`
    runs once, when they met, before any of them reaches moto.
    """

    def __init__(self, matches: Callable[[dict[str, Any]], bool], meet: int, hold: float = 5.0,
                 on_meet: Callable[[], None] | None = None) -> None:
        self.matches = matches
        self.meet = meet
        self.hold = hold
        self.on_meet = on_meet
        self.now = 0
        self.most = 0
        """The most matching requests in flight at once."""
        self.seen = 0
        self._met = False
        self._cond = threading.Condition()

    def enter(self) -> None:
        with self._cond:
            self.now += 1
            self.seen += 1
            self.most = max(self.most, self.now)
            if not self._met and self.now >= self.meet:
                self._met = True
                if self.on_meet is not None:
                    self.on_meet()
                self._cond.notify_all()
            self._cond.wait_for(lambda: self._met, timeout=self.hold)

    def leave(self) -> None:
        with self._cond:
            self.now -= 1


class FaultInjector:
    """WSGI middleware: applies the first matching `Fault` whose dice roll hits."""

    def __init__(self, app: Callable[..., Iterable[bytes]], seed: int = 0) -> None:
        self.app = app
        self.rules: list[Fault] = []
        self.injected: Counter[str] = Counter()
        self.requests = 0
        self.watches: list[Overlap] = []
        self.seen: list[tuple[str, str, str, dict[str, str]]] | None = None
        """With `record()`: (method, path, query, headers by lower-case name) of every request."""
        self._rng = random.Random(seed)
        self._lock = threading.Lock()

    def record(self) -> list[tuple[str, str, str, dict[str, str]]]:
        """Start recording every request (as the client sent it, before any rule)."""
        with self._lock:
            self.seen = []
            return self.seen

    def emulate(self, store: str) -> list[Fault]:
        """Answer as the S3-compatible store `store` of `STORE_QUIRKS` does."""
        return [self.add(rule) for rule in STORE_QUIRKS[store]()]

    def watch(self, overlap: Overlap) -> Overlap:
        with self._lock:
            self.watches.append(overlap)
        return overlap

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self.rules.append(fault)
        return fault

    def chaos(self, probability: float, kinds: Iterable[str] = RANDOM_FAULT_KINDS, **match: Any) -> list[Fault]:
        """Random faults of every kind in `kinds`, about `probability` of requests in all."""
        kinds = tuple(kinds)
        return [self.add(Fault(kind, probability=probability / len(kinds), **match)) for kind in kinds]

    def reset(self, seed: int = 0) -> None:
        with self._lock:
            self.rules.clear()
            self.watches.clear()
            self.injected.clear()
            self.requests = 0
            self.seen = None
            self._rng = random.Random(seed)

    def _pick(self, method: str, path: str, query: str, headers: dict[str, str]) -> Fault | None:
        with self._lock:
            self.requests += 1
            if self.seen is not None:
                self.seen.append((method, path, query, headers))
            for rule in self.rules:
                if rule.matches(method, path, query, headers) and self._rng.random() < rule.probability:
                    rule.fired += 1
                    self.injected[rule.kind] += 1
                    return rule
        return None

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        watch = next((w for w in self.watches if w.matches(environ)), None)
        if watch is None:
            return self._serve(environ, start_response)
        watch.enter()
        try:
            return list(self._serve(environ, start_response))
        finally:
            watch.leave()

    def _serve(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        method = environ["REQUEST_METHOD"]
        headers = _headers(environ)
        fault = self._pick(method, environ.get("PATH_INFO", ""), environ.get("QUERY_STRING", ""), headers)
        if fault is None:
            return self.app(environ, start_response)
        log.debug("injecting %s into %s %s", fault.kind, method, environ.get("PATH_INFO"))
        if fault.kind == "strip":
            for name in headers:
                if fault.matching_header([name]) is not None:
                    environ.pop("HTTP_" + name.upper().replace("-", "_"), None)
            return self.app(environ, start_response)
        if fault.kind == "delay":
            time.sleep(fault.delay)
            return self.app(environ, start_response)
        if fault.kind == "error":
            _drain(environ)
            body = (
                f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{fault.code}</Code>'
                f"<Message>{fault.message.replace('{header}', fault.matching_header(headers) or '')}</Message>"
                "<RequestId>injected</RequestId></Error>"
            ).encode()
            start_response(
                f"{fault.status} Injected",
                [("Content-Type", "application/xml"), ("Content-Length", str(len(body))), ("Connection", "close")],
            )
            return [] if method == "HEAD" else [body]
        if fault.kind == "reset_before":
            _drop_connection(environ)
            start_response("500 Dropped", [("Content-Length", "0")])
            return []
        captured: dict[str, Any] = {}

        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
            captured.update(status=status, headers=headers)
            return lambda data: None

        body = b"".join(self.app(environ, capture))  # moto applies the request here
        if fault.kind == "reset_after" or len(body) < 2:
            _drop_connection(environ)
            start_response("500 Dropped", [("Content-Length", "0")])
            return []
        start_response(captured["status"], captured["headers"])
        return _truncated(body, environ)


def _headers(environ: dict[str, Any]) -> dict[str, str]:
    """The request's headers by lower-case name (WSGI keeps them as HTTP_X_AMZ_...)."""
    out = {name[5:].lower().replace("_", "-"): str(value) for name, value in environ.items()
           if name.startswith("HTTP_")}
    for name in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        if environ.get(name):
            out[name.lower().replace("_", "-")] = str(environ[name])
    return out


def _drain(environ: dict[str, Any]) -> None:
    length = int(environ.get("CONTENT_LENGTH") or 0)
    stream = environ["wsgi.input"]
    while length > 0:
        chunk = stream.read(min(length, 1 << 20))
        if not chunk:
            break
        length -= len(chunk)


def _drop_connection(environ: dict[str, Any]) -> None:
    """Cut the client off without a response (SO_LINGER 0: a reset where the kernel can)."""
    sock: socket.socket = environ["werkzeug.socket"]
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _truncated(body: bytes, environ: dict[str, Any]) -> Iterator[bytes]:
    yield body[: len(body) // 2]
    _drop_connection(environ)


# -- fixtures ------------------------------------------------------------------------
@pytest.fixture(scope="session")
def aws_test_env() -> Iterator[None]:
    """Fake credentials and no AWS configuration for the session's S3 tests."""
    with pytest.MonkeyPatch.context() as mp:
        for name, value in DUMMY_AWS_ENV.items():
            mp.setenv(name, value)
        for name in UNSET_AWS_ENV:
            mp.delenv(name, raising=False)
        yield


@pytest.fixture(scope="session")
def moto_server(aws_test_env: None) -> Iterator[str]:
    """A moto S3 server for the session; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def _storage_options(endpoint: str) -> dict[str, Any]:
    return {"endpoint_url": endpoint, "key": DUMMY_AWS_ENV["AWS_ACCESS_KEY_ID"],
            "secret": DUMMY_AWS_ENV["AWS_SECRET_ACCESS_KEY"]}


@functools.cache
def _boto3_client(endpoint: str) -> Any:
    """One admin client per endpoint for the session (creating one costs ~0.1 s)."""
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")


def _make_bucket(endpoint: str) -> str:
    name = f"rbk-{uuid.uuid4().hex[:24]}"
    _boto3_client(endpoint).create_bucket(Bucket=name)
    return name


def _drop_bucket(endpoint: str, name: str) -> None:
    """Empty and delete a test bucket, so moto's memory does not grow all session."""
    client = _boto3_client(endpoint)
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=name, Delete={"Objects": keys, "Quiet": True})
    for upload in client.list_multipart_uploads(Bucket=name).get("Uploads", []):
        client.abort_multipart_upload(Bucket=name, Key=upload["Key"], UploadId=upload["UploadId"])
    client.delete_bucket(Bucket=name)


@pytest.fixture
def s3_client() -> str:
    """The S3 client the S3 fixtures' storage options ask for (`client`): "native" (the
    default, no option added); a test module overrides this fixture with
    `params=S3_CLIENTS` to run its tests on s3fs's client too."""
    return "native"


S3_CLIENTS = ["native", "s3fs"]


def with_client(options: dict[str, Any], client: str) -> dict[str, Any]:
    """`options` asking for `client` (unchanged for the default, "native")."""
    return options if client == "native" else {**options, "client": client}


@pytest.fixture
def s3_bucket_url(moto_server: str, s3_client: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """A fresh, empty bucket: yields ("s3://<bucket>", storage_options for s3fs/S3Env)."""
    name = _make_bucket(moto_server)
    try:
        yield f"s3://{name}", with_client(_storage_options(moto_server), s3_client)
    finally:
        _drop_bucket(moto_server, name)


@pytest.fixture(scope="session")
def s3_faulty_server(moto_server: str) -> Iterator[tuple[str, FaultInjector]]:
    """moto's application behind a FaultInjector, on its own port: (endpoint, injector)."""
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    injector = FaultInjector(DomainDispatcherApplication(create_backend_app))
    server = make_server("127.0.0.1", 0, injector, threaded=True, request_handler=MotoRequestHandler)
    thread = threading.Thread(target=server.serve_forever, name="faulty-moto", daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    try:
        yield f"http://{host}:{port}", injector
    finally:
        server.shutdown()
        thread.join()


@dataclass
class FaultyS3:
    """A fresh bucket reached through the fault-injecting endpoint."""

    url: str
    """s3://<bucket>"""
    storage_options: dict[str, Any]
    """Points at the faulty endpoint."""
    injector: FaultInjector
    clean_storage_options: dict[str, Any]
    """The same bucket without faults (to set up or check state)."""


@pytest.fixture
def s3_faulty(moto_server: str, s3_faulty_server: tuple[str, FaultInjector], s3_client: str) -> Iterator[FaultyS3]:
    """A fresh bucket behind the fault injector, which starts with no rules (seed 0)."""
    endpoint, injector = s3_faulty_server
    injector.reset()
    name = _make_bucket(moto_server)
    try:
        yield FaultyS3(f"s3://{name}", with_client(_storage_options(endpoint), s3_client), injector,
                       with_client(_storage_options(moto_server), s3_client))
    finally:
        injector.reset()
        _drop_bucket(moto_server, name)


@pytest.fixture(autouse=True)
def _quiet_http_log() -> Iterator[None]:
    """moto's werkzeug logs every request at INFO: thousands of lines per sweep."""
    logger = logging.getLogger("werkzeug")
    level = logger.level
    logger.setLevel(logging.WARNING)
    yield
    logger.setLevel(level)
