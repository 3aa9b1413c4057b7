"""S3 requests on blocking HTTP connections, in the calling thread: errors, retries, bodies.

s3fs's client receives every byte on fsspec's one event-loop thread, in Python
(asyncio, aiohttp's parser, bytes joined per read), while the threads that copy
files wait for it under the GIL, and importing it (aiobotocore, aiohttp) costs most
of a second.  `DirectClient` sends each request from the calling thread on a plain
`http.client` connection (a small shared pool, each connection used by one thread
at a time): a GET's body is `recv_into` the caller's buffer with the GIL released and
no intermediate bytes objects, a PUT's body is sent from its buffer as it is.

Where a request goes and how it is signed comes from a `_Setup`:
- `native_setup`: rbackup's own (`signing.py`), for every request of an env whose options
  it serves (`operations.NativeS3` builds the S3 API calls on `DirectClient.request`);
- `s3fs_setup`: an s3fs client's, for the GETs of an env that keeps s3fs for the rest: its
  URL is the one the client builds (`generate_presigned_url`, on its event loop: endpoint,
  addressing style, key encoding), signed with SigV4 in headers from the client's
  credentials at that moment (refreshed session tokens included) and region; an
  anonymous client sends it unsigned, and a client configured for another signature
  version uses its presigned URL as it is.  What that path does not do (a client
  certificate, a proxy, extra GetObject parameters such as SSE-C keys or RequestPayer,
  per-bucket region clients, SigV4a) makes `unsupported()` name the reason, and the env
  reads through s3fs instead.

Errors are `S3Error`s shaped like botocore's ClientError (`response["Error"]["Code"]`, which
rbackup's error mapping reads); 5xx, throttling and connections that fail or are cut
before the response is read are retried with jittered exponential backoff, `max_attempts`
in all, as botocore's standard retry mode does.
"""
from __future__ import annotations

import http.client
import logging
import random
import re
import socket
import ssl
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .signing import EMPTY_SHA256, NativeConfig, canonical_query, sign

log = logging.getLogger(__name__)

PRESIGN_SECONDS = 900
"""Lifetime of a presigned URL, where one is sent as it is; the request goes out right after it is made."""
RETRY_DELAY = 0.1
"""The first retry after a 5xx or a failed connection waits up to this long (jittered), each next
one up to twice as long."""
THROTTLED_DELAY = 1.0
"""The same for a store asking to slow down (botocore's base): its load needs time to pass."""
THROTTLING_CODES = frozenset({"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded",
                              "BandwidthLimitExceeded", "TooManyRequestsException"})
MAX_RETRY_DELAY = 20.0
"""The longest wait before a retry (botocore's cap)."""
TRANSIENT_CODES = frozenset({"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable", "Throttling",
                             "ThrottlingException", "RequestTimeTooSkewed", "RequestLimitExceeded",
                             "BandwidthLimitExceeded", "TooManyRequestsException", "PriorRequestNotComplete"})
"""Error codes worth another attempt, whatever their HTTP status."""
ERROR_BODY_LIMIT = 64 * 1024
"""The most of an error response's XML body that is read."""

Address = Callable[[str, str, dict[str, str], dict[str, str], str], tuple[str, str, str, dict[str, str]]]
"""(method, key, query, headers, payload hash) -> (scheme, netloc, request target, signed headers)."""


class S3Error(Exception):
    """An S3 error response, shaped like botocore's ClientError: `response["Error"]` holds the
    store's Code, Message, Key, BucketName..., `response["ResponseMetadata"]` the status."""

    def __init__(self, response: dict[str, Any], operation_name: str) -> None:
        error = response.get("Error", {})
        super().__init__(f"An error occurred ({error.get('Code')}) when calling the {operation_name} operation: "
                         f"{error.get('Message')}")
        self.response = response
        self.operation_name = operation_name


class EndpointConnectionError(ConnectionError):
    """No connection to the store's endpoint (named in the message, as botocore's error of that name)."""


class S3NotFoundError(S3Error, FileNotFoundError):
    """NoSuchKey, NoSuchBucket, NoSuchUpload, 404: also a FileNotFoundError, as s3fs raises them."""


@dataclass(frozen=True)
class _Setup:
    """What every request of an env needs, resolved once."""

    address: Address
    ssl_context: ssl.SSLContext | None
    connect_timeout: float | None
    read_timeout: float | None
    unsupported: str | None


@dataclass
class Response:
    """A whole (small) response: status, headers (names lower-cased) and body."""

    status: int
    headers: dict[str, str]
    data: bytes


class Body:
    """A response body read straight into the caller's buffer; its connection goes back to the
    pool once the body has been read to its end, and is dropped otherwise.

    Each read is one `recv_into` of what has arrived (BufferedReader.readinto1 on the socket),
    not a loop until the buffer is full: a connection reset then loses nothing already
    received, and the reader resumes from the last byte it got."""

    def __init__(self, gets: DirectClient, conn: http.client.HTTPConnection,
                 response: http.client.HTTPResponse) -> None:
        self._gets = gets
        self._conn: http.client.HTTPConnection | None = conn
        self.response = response
        self._left: int | None = None if response.chunked else response.length
        """Bytes of the body not yet read (None: chunked, read through http.client)."""

    def readinto(self, view: memoryview) -> int:
        """Up to len(view) bytes of the body, 0 at its end; a body cut short raises
        (http.client.IncompleteRead, a timeout, a reset)."""
        if self._left is None:
            return self.response.readinto(view)
        if not self._left or not len(view):
            return 0
        assert self.response.fp is not None
        n = self.response.fp.readinto1(view[: self._left])
        if not n:
            raise http.client.IncompleteRead(b"", self._left)
        self._left -= n
        return n

    def read_all(self) -> bytes:
        """The rest of the body at once (a small response's)."""
        data = self.response.read()
        if self._left is not None:
            self._left = 0
        return data

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        whole = self.response.isclosed() if self._left is None else self._left == 0
        self.response.close()
        if whole:  # read to its end: the connection can serve another request
            self._gets.give_back(conn)
        else:
            conn.close()


class DirectClient:
    """Blocking requests for one env's bucket, addressed and signed by its `_Setup`."""

    def __init__(self, resolve: Callable[[], _Setup], bucket: str, *, max_attempts: int, max_idle: int) -> None:
        self._resolve = resolve
        self._bucket = bucket
        self._max_attempts = max_attempts
        self._max_idle = max_idle
        self._lock = threading.Lock()
        self._setup: _Setup | None = None
        self._idle: dict[tuple[str, str], list[http.client.HTTPConnection]] = {}

    # -- set-up --------------------------------------------------------------------
    def unsupported(self) -> str | None:
        """Why this env's reads must go through s3fs instead (None: they need not)."""
        return self._resolved().unsupported

    def _resolved(self) -> _Setup:
        with self._lock:
            if self._setup is None:
                self._setup = self._resolve()
            return self._setup

    # -- connections ---------------------------------------------------------------
    def _connection(self, scheme: str, netloc: str) -> tuple[http.client.HTTPConnection, bool]:
        """An idle connection to `netloc`, else a new one; and whether it was reused."""
        with self._lock:
            idle = self._idle.get((scheme, netloc))
            if idle:
                return idle.pop(), True
        setup = self._resolved()
        conn: http.client.HTTPConnection
        if scheme == "https":
            conn = http.client.HTTPSConnection(netloc, timeout=setup.connect_timeout, context=setup.ssl_context)
        else:
            conn = http.client.HTTPConnection(netloc, timeout=setup.connect_timeout)
        try:
            conn.connect()
        except ssl.SSLCertVerificationError:
            conn.close()
            raise  # not worth another attempt (`_transient`)
        except OSError as exc:
            conn.close()
            raise EndpointConnectionError(f"could not connect to the endpoint {scheme}://{netloc}: {exc}") from exc
        if conn.sock is not None:
            conn.sock.settimeout(setup.read_timeout)
            # Headers and body go in separate sends: without this, Nagle's algorithm holds a
            # small body back until the store acknowledges the headers (a delayed ACK, 40 ms).
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn, False

    def give_back(self, conn: http.client.HTTPConnection) -> None:
        """Keep a connection whose response was read to its end for the next request (unless the
        store said it closes it, or enough are idle already)."""
        if conn.sock is None:
            conn.close()
            return
        key = ("https" if isinstance(conn, http.client.HTTPSConnection) else "http", _netloc(conn))
        with self._lock:
            idle = self._idle.setdefault(key, [])
            if len(idle) < self._max_idle:
                idle.append(conn)
                return
        conn.close()

    # -- requests ------------------------------------------------------------------
    def get(self, key: str, *, start: int | None = None, end: int | None = None,
            if_match: str | None = None) -> Body:
        """GET `key` (bytes [start, end) if given), its body left to stream; retried as
        `_retrying` says; any other error response raises `S3Error`."""
        headers = {}
        if start is not None and end is not None:
            headers["Range"] = f"bytes={start}-{end - 1}"
        if if_match:
            headers["If-Match"] = if_match
        return self._retrying(f"GET {key}", lambda: self._open("GetObject", "GET", key, {}, headers, None,
                                                               EMPTY_SHA256, (200, 206)))

    def request(self, operation: str, method: str, key: str = "", *, query: dict[str, str] | None = None,
                headers: dict[str, str] | None = None, body: bytes | memoryview | None = None,
                payload_hash: str = EMPTY_SHA256) -> Response:
        """One S3 API request, its (small) response read whole; 2xx is success, any other answer
        raises `S3Error` (HEAD's carry no body: their code is the status, as botocore's), and so
        does a 2xx whose body is an <Error> document (CompleteMultipartUpload can fail after its
        200): an InternalError or SlowDown there is retried like a 5xx, as botocore does."""
        def attempt() -> Response:
            answer = self._open(operation, method, key, query or {}, headers or {}, body, payload_hash, None)
            try:
                data = answer.read_all()
            finally:
                answer.close()
            status, found = answer.response.status, {k.lower(): v for k, v in answer.response.getheaders()}
            if _ERROR_DOCUMENT.match(data):
                error = client_error(status, answer.response.reason, found, data, self._bucket, key, operation)
                if error.response["Error"]["Code"] in TRANSIENT_CODES:
                    error.response["ResponseMetadata"]["HTTPStatusCode"] = 500
                raise error
            return Response(status, found, data)

        return self._retrying(f"{operation} {key}", attempt)

    def _retrying(self, what: str, attempt: Callable[[], Any]) -> Any:
        """`attempt()`, again after a 5xx, a throttling answer or a failed or cut connection
        (up to max_attempts in all, after jittered exponential pauses)."""
        for number in range(1, self._max_attempts + 1):
            try:
                return attempt()
            except Exception as exc:
                if number >= self._max_attempts or not _transient(exc):
                    raise
                log.debug("%s in %s failed (%s), attempt %d", what, self._bucket, exc, number)
                code = (getattr(exc, "response", None) or {}).get("Error", {}).get("Code")
                base = THROTTLED_DELAY if code in THROTTLING_CODES else RETRY_DELAY
            time.sleep(random.uniform(0, min(MAX_RETRY_DELAY, base * 2 ** (number - 1))))
        raise AssertionError("unreachable")  # pragma: no cover

    def _open(self, operation: str, method: str, key: str, query: dict[str, str], headers: dict[str, str],
              body: bytes | memoryview | None, payload_hash: str, ok: tuple[int, ...] | None) -> Body:
        """Send one request and read its status and headers: the body, to stream, if the status
        is `ok` (any 2xx where None), else `S3Error`."""
        setup = self._resolved()
        scheme, netloc, target, headers = setup.address(method, key, query, headers, payload_hash)
        if body is not None or method in ("PUT", "POST"):
            headers["Content-Length"] = str(0 if body is None else memoryview(body).nbytes)
        while True:
            conn, reused = self._connection(scheme, netloc)
            try:
                try:
                    conn.request(method, target, body=body, headers=headers)
                except OSError:
                    # The store may have answered (and closed) before taking the whole body,
                    # e.g. 412 to a conditional PUT: its answer is what counts.
                    if body is None or reused:
                        raise
                response = conn.getresponse()
            except (ConnectionError, http.client.RemoteDisconnected, http.client.BadStatusLine):
                conn.close()
                if reused:  # the store closed it while it was idle: a fresh one will do
                    continue
                raise
            except BaseException:
                conn.close()
                raise
            break
        answer = Body(self, conn, response)
        if (response.status in ok) if ok is not None else 200 <= response.status < 300:
            return answer
        try:
            raw = b"" if method == "HEAD" else response.read(ERROR_BODY_LIMIT)
        finally:
            answer.close()
        raise client_error(response.status, response.reason, dict(response.getheaders()), raw, self._bucket, key,
                           operation, head=method == "HEAD")


def native_setup(config: NativeConfig, bucket: str) -> Callable[[], _Setup]:
    """Requests addressed and signed by rbackup itself (path style, SigV4 in headers)."""
    def address(method: str, key: str, query: dict[str, str], headers: dict[str, str],
                payload_hash: str) -> tuple[str, str, str, dict[str, str]]:
        path = config.path(bucket, key)
        encoded = canonical_query(query)
        signed = sign(method, config.netloc, path, encoded, headers, payload_hash, config.credentials.get(),
                      config.region)
        return config.scheme, config.netloc, f"{path}?{encoded}" if encoded else path, signed

    return lambda: _Setup(address, config.ssl_context, config.connect_timeout, config.read_timeout, None)


def s3fs_setup(fs: Any, bucket: str) -> Callable[[], _Setup]:
    """GETs addressed and signed as the env's s3fs client would (see the module docstring)."""
    def resolve() -> _Setup:
        import botocore
        from botocore.httpsession import get_cert_path
        from fsspec.asyn import sync

        sync(fs.loop, fs.set_session)
        client = fs.s3
        config = client.meta.config
        http_session = client._endpoint.http_session
        endpoint = client.meta.endpoint_url
        reason = None
        extra = fs._get_s3_method_kwargs(client.get_object, Bucket=bucket, Key="k")
        version = config.signature_version
        signing = ("none" if version is botocore.UNSIGNED else "sigv4" if version in (None, "s3v4", "v4")
                   else "presigned")
        if set(extra) != {"Bucket", "Key"}:
            reason = f"GetObject parameters {sorted(set(extra) - {'Bucket', 'Key'})} from s3_additional_kwargs"
        elif getattr(http_session, "_cert_file", None):
            reason = "a TLS client certificate"
        elif http_session._proxy_config.proxy_url_for(endpoint):
            reason = "a proxy"
        elif getattr(fs, "cache_regions", False):
            reason = "per-bucket region clients (cache_regions)"
        elif isinstance(version, str) and version.startswith("v4a"):
            reason = f"signature version {version}"
        elif urlsplit(endpoint).scheme not in ("http", "https"):
            reason = f"the endpoint scheme of {endpoint}"
        context = None
        if reason is None and urlsplit(endpoint).scheme == "https":
            # As botocore: its CA bundle (certifi's, AWS_CA_BUNDLE, `verify=<path>`), else the system's.
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            verify = http_session._verify
            if verify:
                ca = get_cert_path(verify)
                if ca:
                    context.load_verify_locations(ca)
                else:
                    context.load_default_certs()
            else:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
        if reason:
            log.info("S3 reads go through s3fs's client: the direct GET path does not support %s", reason)
        region = client.meta.region_name or "us-east-1"

        def address(method: str, key: str, query: dict[str, str], headers: dict[str, str],
                    payload_hash: str) -> tuple[str, str, str, dict[str, str]]:
            assert method == "GET" and not query, "the s3fs client's requests are its own but for GETs"
            url, credentials = sync(fs.loop, _presigned, client, bucket, key)
            parts = urlsplit(url)
            if signing == "presigned":
                return parts.scheme, parts.netloc, parts.path + (f"?{parts.query}" if parts.query else ""), headers
            if signing == "sigv4" and credentials is not None:
                from botocore.auth import S3SigV4Auth
                from botocore.awsrequest import AWSRequest

                request = AWSRequest("GET", f"{parts.scheme}://{parts.netloc}{parts.path}", headers=headers)
                S3SigV4Auth(credentials, "s3", region).add_auth(request)
                headers = dict(request.headers.items())
            return parts.scheme, parts.netloc, parts.path, headers

        return _Setup(address, context, config.connect_timeout, config.read_timeout, reason)

    return resolve


async def _presigned(client: Any, bucket: str, key: str) -> tuple[str, Any]:
    """The URL the client would GET `key` at, and its credentials now (None if it has none)."""
    url = await client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key},
                                              ExpiresIn=PRESIGN_SECONDS)
    credentials = client._request_signer._credentials
    return url, None if credentials is None else await credentials.get_frozen_credentials()


def _netloc(conn: http.client.HTTPConnection) -> str:
    default = 443 if isinstance(conn, http.client.HTTPSConnection) else 80
    return conn.host if conn.port == default else f"{conn.host}:{conn.port}"


_ERROR_DOCUMENT = re.compile(rb"\s*(<\?xml[^>]*\?>\s*)?<Error[\s>]")
"""An XML document whose root is <Error> (not DeleteObjects' per-key <Error> elements)."""
_DEFAULT_CODES = {403: "AccessDenied", 404: "NoSuchKey", 412: "PreconditionFailed", 416: "InvalidRange"}
_NOT_FOUND = frozenset({"NoSuchKey", "NoSuchBucket", "NoSuchUpload", "NotFound", "404"})


def client_error(status: int, reason: str, headers: dict[str, str], raw: bytes, bucket: str, key: str,
                 operation: str, *, head: bool = False) -> S3Error:
    """The error response as the error s3fs's client would raise for it: its code from the XML
    body, else from the status (a HEAD's code is its status, as botocore reports it)."""
    error: dict[str, Any] = {}
    try:
        for child in ET.fromstring(raw):
            error[child.tag.rpartition("}")[2]] = child.text or ""
    except ET.ParseError:
        pass
    error.setdefault("Code", str(status) if head else _DEFAULT_CODES.get(status, str(status)))
    error.setdefault("Message", reason)
    error.setdefault("Key", key)
    error.setdefault("BucketName", bucket)
    kind = S3NotFoundError if error["Code"] in _NOT_FOUND else S3Error
    return kind({"Error": error, "ResponseMetadata": {"HTTPStatusCode": status, "HTTPHeaders": headers}},
                operation)


def _transient(exc: BaseException) -> bool:
    """A failure another attempt may cure: a 5xx or throttling answer, no connection, a cut body.
    Not 501 NotImplemented (botocore's standard mode does not retry it either): a store that does not
    implement a header (R2's answer to checksum headers) answers the same every time."""
    if isinstance(exc, S3Error) or hasattr(exc, "response"):
        response = getattr(exc, "response", None) or {}
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return (status >= 500 and status != 501) or response.get("Error", {}).get("Code") in TRANSIENT_CODES
    if isinstance(exc, ssl.SSLCertVerificationError):
        return False
    return isinstance(exc, (OSError, http.client.HTTPException))
