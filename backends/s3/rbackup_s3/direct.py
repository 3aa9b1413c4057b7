"""GETs of S3 objects on blocking HTTP connections, in the thread that reads the body.

s3fs's client receives every byte on fsspec's one event-loop thread, in Python
(asyncio, aiohttp's parser, bytes joined per read), while the threads that copy
files wait for it under the GIL: restores spent twice s5cmd's CPU per GiB.
`DirectGets` sends each GET from the calling thread on a plain `http.client`
connection (a small shared pool, each connection used by one thread at a time),
so the body can be `recv_into` the caller's buffer with the GIL released and no
intermediate bytes objects.

Each request is addressed and signed as the env's s3fs client would: its URL is
the one the client builds (`generate_presigned_url`, on its event loop: endpoint,
addressing style, key encoding), signed with SigV4 in headers from the client's
credentials at that moment (refreshed session tokens included) and region, Range
and If-Match signed with it; an anonymous client (`anon=True`) sends it unsigned,
and a client configured for another signature version uses its presigned URL as
it is.  TLS verification (verify=False, a CA bundle) and timeouts are the
client's too.  What this path does not do (a client certificate, a proxy, extra
GetObject parameters such as SSE-C keys or RequestPayer, per-bucket region
clients, SigV4a) makes `unsupported()` name the reason, and the env reads through
s3fs instead.
"""
from __future__ import annotations

import http.client
import logging
import ssl
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import botocore
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.exceptions import ClientError
from botocore.httpsession import get_cert_path
from fsspec.asyn import sync

log = logging.getLogger(__name__)

PRESIGN_SECONDS = 900
"""Lifetime of a presigned URL, where one is sent as it is; the request goes out right after it is made."""
RETRY_DELAY = 0.1
"""First pause before retrying a GET the store refused with 5xx or that found no connection."""
TRANSIENT_CODES = frozenset({"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable"})
"""Error codes worth another attempt, whatever their HTTP status."""
ERROR_BODY_LIMIT = 64 * 1024
"""The most of an error response's XML body that is read."""


@dataclass(frozen=True)
class _Setup:
    """What every GET of an env needs from its s3fs client, resolved once."""

    client: Any
    ssl_context: ssl.SSLContext | None
    connect_timeout: float | None
    read_timeout: float | None
    signing: str
    """"sigv4" (signed here), "none" (anonymous) or "presigned" (the client's own presigned URL)."""
    region: str
    unsupported: str | None


class Body:
    """A response body read straight into the caller's buffer; its connection goes back to the
    pool once the body has been read to its end, and is dropped otherwise.

    Each read is one `recv_into` of what has arrived (BufferedReader.readinto1 on the socket),
    not a loop until the buffer is full: a connection reset then loses nothing already
    received, and the reader resumes from the last byte it got."""

    def __init__(self, gets: DirectGets, conn: http.client.HTTPConnection, response: http.client.HTTPResponse) -> None:
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


class DirectGets:
    """Blocking GETs for one env's bucket, signed by its s3fs client."""

    def __init__(self, fs: Any, bucket: str, *, max_attempts: int, max_idle: int) -> None:
        self._fs = fs
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

    def _resolve(self) -> _Setup:
        sync(self._fs.loop, self._fs.set_session)
        client = self._fs.s3
        config = client.meta.config
        http_session = client._endpoint.http_session
        endpoint = client.meta.endpoint_url
        reason = None
        extra = self._fs._get_s3_method_kwargs(client.get_object, Bucket=self._bucket, Key="k")
        version = config.signature_version
        signing = ("none" if version is botocore.UNSIGNED else "sigv4" if version in (None, "s3v4", "v4")
                   else "presigned")
        if set(extra) != {"Bucket", "Key"}:
            reason = f"GetObject parameters {sorted(set(extra) - {'Bucket', 'Key'})} from s3_additional_kwargs"
        elif getattr(http_session, "_cert_file", None):
            reason = "a TLS client certificate"
        elif http_session._proxy_config.proxy_url_for(endpoint):
            reason = "a proxy"
        elif getattr(self._fs, "cache_regions", False):
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
        return _Setup(client, context, config.connect_timeout, config.read_timeout, signing,
                      client.meta.region_name or "us-east-1", reason)

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
        conn.connect()
        if conn.sock is not None:
            conn.sock.settimeout(setup.read_timeout)
        return conn, False

    def give_back(self, conn: http.client.HTTPConnection) -> None:
        """Keep a connection whose response was read to its end for the next GET (unless the
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
        """GET `key` (bytes [start, end) if given), retrying 5xx, throttling and connection
        failures before the response (bounded by max_attempts); any other error response
        raises botocore's ClientError, as s3fs's client would."""
        headers = {}
        if start is not None and end is not None:
            headers["Range"] = f"bytes={start}-{end - 1}"
        if if_match:
            headers["If-Match"] = if_match
        delay = RETRY_DELAY
        for attempt in range(1, self._max_attempts + 1):
            try:
                return self._send(key, headers)
            except Exception as exc:
                if attempt >= self._max_attempts or not _transient(exc):
                    raise
                log.debug("GET %s/%s failed (%s), attempt %d", self._bucket, key, exc, attempt)
            time.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")  # pragma: no cover

    def _send(self, key: str, headers: dict[str, str]) -> Body:
        setup = self._resolved()
        url, credentials = sync(self._fs.loop, self._address, setup.client, key)
        parts = urlsplit(url)
        if setup.signing == "presigned":
            target = parts.path + (f"?{parts.query}" if parts.query else "")
        else:
            target = parts.path
            if setup.signing == "sigv4" and credentials is not None:
                request = AWSRequest("GET", f"{parts.scheme}://{parts.netloc}{parts.path}", headers=headers)
                S3SigV4Auth(credentials, "s3", setup.region).add_auth(request)
                headers = dict(request.headers.items())
        while True:
            conn, reused = self._connection(parts.scheme, parts.netloc)
            try:
                conn.request("GET", target, headers=headers)
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
        body = Body(self, conn, response)
        if response.status in (200, 206):
            return body
        try:
            raw = response.read(ERROR_BODY_LIMIT)
        finally:
            body.close()
        raise _client_error(response, raw, self._bucket, key)


    async def _address(self, client: Any, key: str) -> tuple[str, Any]:
        """The URL the client would GET `key` at, and its credentials now (None if it has none)."""
        url = await client.generate_presigned_url("get_object", Params={"Bucket": self._bucket, "Key": key},
                                                  ExpiresIn=PRESIGN_SECONDS)
        credentials = client._request_signer._credentials
        return url, None if credentials is None else await credentials.get_frozen_credentials()


def _netloc(conn: http.client.HTTPConnection) -> str:
    default = 443 if isinstance(conn, http.client.HTTPSConnection) else 80
    return conn.host if conn.port == default else f"{conn.host}:{conn.port}"


_DEFAULT_CODES = {403: "AccessDenied", 404: "NoSuchKey", 412: "PreconditionFailed", 416: "InvalidRange"}


def _client_error(response: http.client.HTTPResponse, raw: bytes, bucket: str, key: str) -> ClientError:
    """The error response as the botocore ClientError s3fs's client would raise for it (its
    code is what rbackup's error mapping reads)."""
    error: dict[str, Any] = {}
    try:
        for child in ET.fromstring(raw):
            error[child.tag.rpartition("}")[2]] = child.text or ""
    except ET.ParseError:
        pass
    error.setdefault("Code", _DEFAULT_CODES.get(response.status, str(response.status)))
    error.setdefault("Message", response.reason)
    error.setdefault("Key", key)
    error.setdefault("BucketName", bucket)
    return ClientError({"Error": error, "ResponseMetadata": {"HTTPStatusCode": response.status,
                                                              "HTTPHeaders": dict(response.getheaders())}},
                       "GetObject")


def _transient(exc: BaseException) -> bool:
    """A failure another attempt may cure: a 5xx or throttling answer, no connection."""
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return status >= 500 or exc.response["Error"].get("Code") in TRANSIENT_CODES
    return isinstance(exc, (OSError, http.client.HTTPException))
