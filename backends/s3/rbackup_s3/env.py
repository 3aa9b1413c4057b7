"""S3Env: rbackup's BackupEnv on Amazon S3 and S3-compatible stores.

Two clients, one rule: every request goes through rbackup's native client (`signing`,
`direct`, `operations`: blocking http.client connections, SigV4 signed here, nothing of
s3fs, aiobotocore or aiohttp imported) when `signing.native_config` can serve the storage
options exactly as s3fs and botocore would; otherwise (AWS's own endpoints, a proxy, a
client certificate, extra request parameters, Object Lock, ...: the reason is logged once
per env) or with the storage option `client="s3fs"`, every request goes through s3fs's
client, imported only then (its GETs still on blocking connections where `direct.s3fs_setup`
can sign them).  Both take botocore's operation names and parameters (`_call`).

What S3 needs beyond the generic fsspec env, and why:
- publish without rename: `S3Writer` (one PUT, or a multipart upload
  completed only when every part is in, aborted otherwise), its part
  buffers capped across writers by a `PartBudget`;
- streaming reads: `BlockingS3Reader` (or `S3Reader` where `DirectClient` cannot
  serve the configuration), one GET per file received in the reading thread,
  resumed with Range and If-Match when a body is cut off;
- commit without rename: a conditional PUT (`If-None-Match: *`), the only
  atomic create-if-absent S3 has; a lost response makes the retry see 412
  for our own object, so the object is read back before giving up;
- freshness: s3fs caches listings, which would hide another client's
  meta file; the cache is off and every env has its own s3fs instance
  (the native client caches nothing);
- bounded retries: botocore in "standard" mode (and `DirectClient` alike) retries 5xx,
  SlowDown and dropped connections with jittered backoff, `S3Reader` resumes cut bodies
  (a bounded number of times), and permanent errors (AccessDenied, NoSuchBucket) are not retried.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import logging
import os
import threading
import time
import uuid
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from rbackup.env.base import (
    OBJECT_STORE_BUFFER_SIZE,
    AtomicWriter,
    Capabilities,
    FileInfo,
    StoredChecksum,
    check_path,
    refuse_unknown_options,
)
from rbackup.env.fsspec_env import FsspecEnv, error_code, redact_url
from rbackup.errors import AlreadyExists, InvalidArgument, NotFound, NotSupported, PermissionDenied, StorageError

from .checksums import StoreChecksums
from .compat import OPTION, StoreCompat, content_md5, resolve_calculation
from .direct import DirectClient, native_setup, s3fs_setup
from .download import BlockingS3Reader, OpenReaders, S3Reader
from .operations import NativeS3
from .signing import native_config, profile_setting
from .upload import MAX_PART_SIZE, MIN_PART_SIZE, PartBudget, S3Writer, register_part_payload

log = logging.getLogger(__name__)

MiB = 2**20
DELETE_BATCH = 1000
"""DeleteObjects takes at most 1,000 keys per request."""
S3FS_RETRIES = 3
"""s3fs's own retry loop, around botocore's."""
CONFLICT_RETRIES = 4
"""Retries of a conditional PUT that S3 refused with 409 ConditionalRequestConflict."""


S3FS_OPTIONS = frozenset({
    "anon", "asynchronous", "batch_size", "cache_regions", "client_kwargs", "config_kwargs", "default_block_size",
    "default_cache_type", "default_fill_cache", "endpoint_url", "fixed_upload_size", "key", "listings_expiry_time",
    "local_expiry_check", "loop", "max_concurrency", "max_paths", "password", "requester_pays",
    "s3_additional_kwargs", "secret", "session", "skip_instance_cache", "token", "use_listings_cache", "use_ssl",
    "username", "version_aware",
})
"""The keyword arguments an `s3fs.S3FileSystem` reads: its own, its fsspec base classes' and the
listing cache's.  s3fs drops any other without a word, so S3Env refuses them instead (a misspelt
`endpoint_ur1` would silently talk to AWS).  A list, not read from s3fs's signatures, so that
checking options does not import s3fs; `test_s3fs_options_match_its_signatures` keeps it true."""
CLIENTS = ("native", "s3fs")


def _over_tls(options: dict[str, Any]) -> bool:
    """Whether requests go over HTTPS: to the endpoint the options or AWS_ENDPOINT_URL(_S3) name,
    else to AWS's own (an endpoint set only in an AWS config file is not seen here).

    There uploads are not SHA-256 signed: TLS and the signed CRC-32C header each body carries
    (`upload.with_checksum`) cover it, as botocore decides for the checksums it adds itself; it
    cannot know that ours are there, and would hash every part on the event loop thread.  Over
    plain HTTP bodies stay signed.  An explicit `config_kwargs={"s3": {"payload_signing_enabled":
    ...}}` wins."""
    endpoint = (options.get("endpoint_url") or (options.get("client_kwargs") or {}).get("endpoint_url")
                or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"))
    return endpoint is None or str(endpoint).startswith("https://")


MD5_OPERATIONS = ("DeleteObjects", "PutObjectRetention")
"""The operations rbackup calls that S3 requires a checksum of: botocore gives them its own
x-amz-checksum-crc32 whatever request_checksum_calculation says; they get Content-MD5 instead."""


def content_md5_only(request: Any, **_: Any) -> None:
    """botocore event handler (before-sign, `MD5_OPERATIONS`): the body's Content-MD5, which S3's API
    asks of these operations and every store checks, instead of the x-amz-checksum-crc32 botocore puts
    on operations that require a checksum (stores that predate them refuse it, or want Content-MD5), as
    the native client sends DeleteObjects."""
    for name in list(request.headers.keys()):
        if name.lower().startswith("x-amz-checksum-") or name.lower() == "x-amz-sdk-checksum-algorithm":
            del request.headers[name]
    body = request.body if isinstance(request.body, bytes) else bytes(request.body or b"")
    request.headers["Content-MD5"] = content_md5(body)


PROBE_DIR = "rbackup.lock.d/probe"
"""Where the conditional-write probe puts (and removes) its object: beside the leases, which
garbage collection and every listing of backups leave alone."""


DEPRECATED_OPTIONS = ("read_block_size",)
"""Storage options still accepted but ignored (read_block_size: reads became one streaming GET per file)."""


@dataclass(frozen=True)
class S3Settings:
    """rbackup's own storage options; everything else in `storage_options` goes to s3fs."""

    conditional_writes: bool = True
    """False for stores without `If-None-Match` on PUT: create_exclusive becomes best effort."""
    part_size: int = 8 * MiB
    """First multipart part size; also the largest file sent as a single PUT."""
    concurrency: int = 16
    """Requests at once, as `Capabilities.concurrency` means for every store (meta files read at
    once, HTTP connections kept), and, S3 being latency-bound, files copied at once too
    (`Capabilities.transfer_width`)."""
    max_attempts: int = 5
    """Attempts per request in botocore's standard retry mode (1 means no retry)."""
    parts_in_flight: int = 4
    """Part buffers (of `part_size`) all writers of the env hold at once; files up to 1 MiB need none."""
    client: str = "native"
    """"native": rbackup's own client wherever it serves the options exactly (else s3fs's);
    "s3fs": s3fs's client for every request."""
    request_checksum_calculation: str | None = None
    """AWS's setting of that name: "when_supported" (uploads carry their CRC-32C, as long as the store
    takes it: `compat`) or "when_required" (no checksum header: Content-MD5); None reads
    AWS_REQUEST_CHECKSUM_CALCULATION, then the AWS config file, as botocore does."""

    def __post_init__(self) -> None:
        if self.client not in CLIENTS:
            raise InvalidArgument(f"client must be one of {', '.join(CLIENTS)}, got {self.client!r}")
        if not MIN_PART_SIZE <= self.part_size <= MAX_PART_SIZE:
            raise InvalidArgument(f"part_size must be between 5 MiB and 5 GiB, got {self.part_size}")
        for name in ("concurrency", "max_attempts", "parts_in_flight"):
            if getattr(self, name) < 1:
                raise InvalidArgument(f"{name} must be positive, got {getattr(self, name)}")

    @classmethod
    def pop_from(cls, options: dict[str, Any]) -> S3Settings:
        """Take rbackup's keys out of `options`, leaving only s3fs's.

        A deprecated key is taken out too, whatever its value, with a FutureWarning (the
        deprecation category users see): it changes nothing, and refusing it would break
        configurations that still name it."""
        for name in DEPRECATED_OPTIONS:
            if name in options:
                options.pop(name)
                warnings.warn(f"S3 storage option {name!r} is deprecated and ignored (reads are one streaming "
                              "GET per file, their segments are part_size)", FutureWarning, stacklevel=2)
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: options.pop(k) for k in list(options) if k in names})


def parse_s3_url(url: str) -> tuple[str, str, str]:
    """`s3://bucket/some/prefix` -> ("s3", "bucket", "some/prefix"); s3a:// too."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("s3", "s3a"):
        raise InvalidArgument(f"not an S3 URL: {redact_url(url)!r}")
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise InvalidArgument(f"S3 URL without a bucket: {redact_url(url)!r}")
    prefix = prefix.strip("/")
    if prefix:
        check_path(prefix)
    return scheme, bucket, prefix


class S3Env(FsspecEnv):
    """The backup directory `s3://bucket/prefix` on S3 or any S3-compatible store.

    Credentials, endpoint and region come from `storage_options` (passed to
    `s3fs.S3FileSystem`: `key`, `secret`, `token`, `endpoint_url`,
    `client_kwargs`, `config_kwargs`, `s3_additional_kwargs`, ...) or from
    the standard AWS_* environment variables and config files, which
    botocore reads itself (AWS_ENDPOINT_URL included).  rbackup's own keys
    are the fields of `S3Settings`.  Credentials are never logged.
    """

    capabilities = Capabilities(conditional_create=True, exclusive_publish=True, durable_sync=True,
                                concurrency=S3Settings.concurrency, transfer_width=S3Settings.concurrency,
                                buffer_size=OBJECT_STORE_BUFFER_SIZE)
    """The defaults, for `rbackup backends`; an instance reflects its own settings."""

    def __new__(cls, url: str, *, storage_options: dict[str, Any] | None = None) -> S3Env:
        """`s3://` URLs reach this class through the entry point; the `object_lock_*` storage
        options (Object Lock retention on every upload) make it an `ObjectLockS3Env`."""
        if cls is S3Env and any(str(k).startswith("object_lock") for k in storage_options or {}):
            from .object_lock import ObjectLockS3Env  # imports this module: not at the top

            cls = ObjectLockS3Env
        return super().__new__(cls)

    def __init__(self, url: str, *, storage_options: dict[str, Any] | None = None) -> None:
        scheme, bucket, prefix = parse_s3_url(url)
        options = dict(storage_options or {})
        settings = S3Settings.pop_from(options)
        refuse_unknown_options(redact_url(url), options,
                               S3FS_OPTIONS | {f.name for f in dataclasses.fields(S3Settings)})
        config = dict(options.pop("config_kwargs", None) or {})
        # botocore's own place for it means the same: one setting, applied by rbackup on both clients
        calculation, source = resolve_calculation(settings.request_checksum_calculation or config.pop(OPTION, None),
                                                  {OPTION: profile_setting(OPTION) or ""})
        own_retries = "retries" in config  # botocore's retry configuration: only s3fs's client reads it
        config.setdefault("retries", {"mode": "standard", "total_max_attempts": settings.max_attempts})
        config.setdefault("max_pool_connections", settings.concurrency)
        if _over_tls(options):
            config["s3"] = {"payload_signing_enabled": False, **(config.get("s3") or {})}
        for fixed in ("use_listings_cache", "skip_instance_cache"):
            options.pop(fixed, None)
        idle = settings.concurrency + settings.parts_in_flight  # files copied at once, plus parts sent or fetched ahead
        native = (native_config({**options, "config_kwargs": config}) if settings.client == "native"
                  and self.native_capable and not own_retries else "client='s3fs'" if settings.client == "s3fs"
                  else "config_kwargs retries" if own_retries else "Object Lock")
        self._native: NativeS3 | None = None
        self._fs: Any = None
        # rbackup adds every checksum itself (`compat`): botocore adds none of its own (its default CRC32
        # on uploads, and the checksum mode of GETs, which stores like B2 refuse).
        self._s3fs_options = (options, {**config, OPTION: "when_required",
                                        "response_checksum_validation": config.get("response_checksum_validation",
                                                                                   "when_required")})
        fs: Any = None
        if isinstance(native, str):
            log.info("%s: requests go through s3fs's client (rbackup's own does not serve %s)",
                     redact_url(url), native)
            fs = self._s3fs(*self._s3fs_options)
            self._direct = DirectClient(s3fs_setup(fs, bucket), bucket, max_attempts=settings.max_attempts,
                                        max_idle=idle)
        else:
            self._direct = DirectClient(native_setup(native, bucket), bucket, max_attempts=settings.max_attempts,
                                        max_idle=idle)
            self._native = NativeS3(self._direct, bucket, sign_payload=native.sign_payload)
        root = f"{bucket}/{prefix}" if prefix else bucket
        super().__init__(
            fs,
            root,
            url=f"{scheme}://{root}",
            capabilities=Capabilities(
                atomic_rename=False,
                conditional_create=settings.conditional_writes,
                exclusive_publish=settings.conditional_writes,
                durable_sync=True,
                directories=False,
                concurrency=settings.concurrency,
                transfer_width=settings.concurrency,  # latency-bound: as many files as requests
                buffer_size=OBJECT_STORE_BUFFER_SIZE,
            ),
        )
        self.bucket = bucket
        self.settings = settings
        self.part_budget = PartBudget(settings.parts_in_flight * settings.part_size)
        self.open_readers = OpenReaders(settings.concurrency)
        self._senders = concurrent.futures.ThreadPoolExecutor(settings.concurrency, "rbackup-s3-send")
        """Threads sending parts in the background on the native client (started on first use)."""
        self._fetchers = concurrent.futures.ThreadPoolExecutor(settings.parts_in_flight, "rbackup-s3-fetch")
        """Threads fetching big objects' later segments ahead (started on first use): one per part
        buffer, since each fetch fills one."""
        self._endpoint = redact_url(options.get("endpoint_url") or "from the AWS configuration")
        self._probe_lock = threading.Lock()
        self._probed: bool | None = None
        """Whether the store honours If-None-Match on PUT; None until probed."""
        self.compat = StoreCompat(self.url, self._endpoint, calculation, source)
        """What the store takes of the checksum headers (when_required, or learned from a refusal)."""
        self.checksums = StoreChecksums(self)
        self._full_object: bool | None = None
        log.debug(
            "S3Env %s: endpoint %s, conditional writes %s, part size %d",
            self.url,
            self._endpoint,
            settings.conditional_writes,
            settings.part_size,
        )

    native_capable = True
    """Whether this class's requests are all ones the native client makes."""

    @classmethod
    def from_url(cls, url: str, storage_options: dict[str, Any] | None = None) -> S3Env:
        return cls(url, storage_options=storage_options)

    @property
    def fs(self) -> Any:
        """s3fs's filesystem for this env's options.  On the native client nothing of rbackup's
        uses it; it is made (and s3fs imported) only if someone asks, e.g. to look at the bucket."""
        if self._fs is None:
            self._fs = self._s3fs(*self._s3fs_options)
        return self._fs

    @fs.setter
    def fs(self, value: Any) -> None:
        self._fs = value

    @staticmethod
    def _s3fs(options: dict[str, Any], config: dict[str, Any]) -> Any:
        """An s3fs client for these options (s3fs, aiobotocore and aiohttp imported only here), whose
        DeleteObjects carries Content-MD5 as the native client's does (`content_md5_only`)."""
        import aiobotocore.session
        import s3fs

        register_part_payload()
        options = dict(options)
        session = options.pop("session", None) or aiobotocore.session.AioSession()
        for operation in MD5_OPERATIONS:
            session.register(f"before-sign.s3.{operation}", content_md5_only)
        fs = s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False, config_kwargs=config,
                               session=session, **options)
        fs.retries = S3FS_RETRIES
        return fs

    # -- plumbing ----------------------------------------------------------------
    def _key(self, path: str) -> str:
        return self._full(path).partition("/")[2]

    def _call(self, method: str, **kwargs: Any) -> dict[str, Any]:
        """One S3 API call on our bucket (botocore's operation and parameter names), its checksum
        arguments as the store takes them (`compat`): a request refused for checksum headers it
        carried is sent once more without them, and the env keeps what that showed."""
        sent = self.compat.adapt(method, kwargs)
        try:
            return self._send(method, **sent)
        except Exception as exc:
            refusal = exc
            fallbacks = self.compat.fallbacks(method, sent, exc)
            if not fallbacks:
                raise
        for fallback in fallbacks:
            retry = self.compat.retry_params(method, kwargs, fallback)
            try:
                out = self._send(method, **retry)
            except Exception as exc:
                if fallback.named:  # the store said which header: believe it whatever else went wrong
                    self.compat.adopt(fallback, method, refusal)
                if fallback.named or fallback is fallbacks[-1] or not self.compat.fallbacks(method, retry, exc):
                    raise  # the retry's own answer: a 412 there is a lost race, as from the first request
                continue
            self.compat.adopt(fallback, method, refusal)
            return out
        raise AssertionError("unreachable")  # pragma: no cover

    def _send(self, method: str, **kwargs: Any) -> dict[str, Any]:
        """One S3 API call exactly as given, retried as botocore's standard mode retries (and
        s3fs's loop around it, on that client)."""
        if self._native is not None:
            return self._native.call(method, **kwargs)
        result: dict[str, Any] = self.fs.call_s3(method, Bucket=self.bucket, **kwargs)
        return result

    def _call_async(self, method: str, **kwargs: Any) -> concurrent.futures.Future[dict[str, Any]]:
        """`_call`, started without waiting for it (parts sent in parallel): on a sending thread
        of the native client, or on s3fs's event loop.  Adapted to the store, but not sent again
        on a refusal: a part belongs to an upload created with the same headers, and the
        CreateMultipartUpload before it is where a store refuses them."""
        kwargs = self.compat.adapt(method, kwargs)
        if self._native is not None:
            return self._senders.submit(self._native.call, method, **kwargs)
        import asyncio  # s3fs's client only: the native one never imports it

        return asyncio.run_coroutine_threadsafe(self.fs._call_s3(method, Bucket=self.bucket, **kwargs), self.fs.loop)

    def _is_dir(self, full: str) -> bool:
        """S3 has no directories (a missing key is NoSuchKey); s3fs's client may still say so."""
        return self._native is None and super()._is_dir(full)

    def _open_for_read(self, full: str) -> Any:
        # One streaming GET; its ETag pins the version any resume may read
        # (If-Match), so a replaced object fails instead of splicing two versions.
        # A bare prefix has no object: NoSuchKey, i.e. not found.
        # On blocking connections in the reading thread (`DirectClient`) unless the client's
        # configuration needs s3fs's own (a proxy, a client certificate, SSE-C, ...).
        key = full.partition("/")[2]
        what = f"read {self.describe(full[len(self._prefix):])}"
        if self._direct.unsupported() is None:
            return BlockingS3Reader(self._direct, key, what, budget=self.part_budget,
                                    segment=self.settings.part_size, readers=self.open_readers,
                                    fetchers=self._fetchers)
        return S3Reader(self.fs, self.bucket, key, what,
                        budget=self.part_budget, segment=self.settings.part_size, readers=self.open_readers)

    def conditional_writes_honoured(self) -> bool:
        """Whether creates may rely on `If-None-Match: *`: False if the user said the store
        lacks it (`conditional_writes=False`); otherwise probed once per env, and a store
        found ignoring it is refused (NotSupported) rather than trusted."""
        if not self.settings.conditional_writes:
            return False
        with self._probe_lock:
            if self._probed is None:
                self._probed = self._probe_conditional_put()
        if not self._probed:
            raise NotSupported(
                f"{self.url}: the S3 store ({self._endpoint}) ignores 'If-None-Match: *' on PUT (a second "
                f"create of {PROBE_DIR}/... succeeded), so it cannot arbitrate between writers and rbackup "
                f"could lose or mix up backups there; pass the storage option conditional_writes=False to "
                f"accept best-effort protection (see the rbackup-s3 README), or use a store that honours it"
            )
        return True

    def full_object_checksums(self) -> bool:
        """Whether multipart uploads can be FULL_OBJECT ones: the store takes them (`compat`) and
        the client library knows the parameter (botocore 1.36 and later).  Otherwise they are
        composite, which `verify --checksum` cannot use (it reads those files back)."""
        if not self.compat.full_object:
            return False
        if self._native is not None:
            return True
        if self._full_object is None:
            model = self.fs.s3.meta.service_model.operation_model("CreateMultipartUpload")
            self._full_object = "ChecksumType" in model.input_shape.members
        return self._full_object

    def stored_checksum(self, path: str) -> StoredChecksum | None:
        """The object's whole CRC-32C from HeadObject, once the store has shown it checks the
        checksums it is sent (`checksums.StoreChecksums`); else None: the file is read back."""
        path = check_path(path)
        return self.checksums.stored_checksum(path, self._key(path))

    def _probe_conditional_put(self) -> bool:
        """PUT a fresh probe object twice with If-None-Match: * (the second must get 412), then delete it."""
        path = f"{PROBE_DIR}/{uuid.uuid4().hex}"
        try:
            self._put_if_absent(path, b"rbackup probe")  # a 412 here can only be our own lost response
            honoured = not self._put_if_absent(path, b"rbackup probe, again")
        finally:
            with contextlib.suppress(Exception):
                self.delete([path])
        log.log(logging.DEBUG if honoured else logging.ERROR, "%s: If-None-Match on PUT is %s", self.url,
                "honoured" if honoured else "ignored")
        return honoured

    def _put_if_absent(self, path: str, data: bytes) -> bool:
        """One conditional PUT: True if it created the object, False on 412."""
        delay = 0.1
        for attempt in range(CONFLICT_RETRIES + 1):
            try:
                self._call("put_object", Key=self._key(path), Body=data, IfNoneMatch="*")
                return True
            except Exception as exc:
                code = error_code(exc)
                if code == "ConditionalRequestConflict" and attempt < CONFLICT_RETRIES:
                    # Another conditional write to the key is in flight; S3 says retry.
                    time.sleep(delay)
                    delay *= 2
                    continue
                if code != "PreconditionFailed":
                    raise self._error(exc, path, "create") from exc
                return False
        raise AssertionError("unreachable")  # pragma: no cover

    def _create_conditional(self, path: str, data: bytes) -> None:
        if self._put_if_absent(path, data):
            return
        if self._holds(path, data):
            log.info("%s: create response was lost, the object is ours", self.describe(path))
            return
        raise AlreadyExists(f"create {self.describe(path)}: already exists")

    def create_exclusive(self, path: str, data: bytes, *, sync: bool = True) -> None:
        path = check_path(path)
        if self.conditional_writes_honoured():
            self._create_conditional(path, data)
            return
        # conditional_writes=False: best effort (look, then write); create_backup re-reads its commit.
        if self.exists(path):
            raise AlreadyExists(f"create {self.describe(path)}: already exists")
        self.write_bytes(path, data, sync=sync)

    def _holds(self, path: str, data: bytes) -> bool:
        """Whether `path` holds exactly `data` (read back after a 412).

        A read-back that fails for another reason than absence raises: it
        must not turn our own committed object into a reported lost race.
        """
        try:
            if self.stat(path).size != len(data):
                return False
            if not data:
                return True
            with self.open_read(path) as f:
                return f.read(len(data) + 1) == data
        except (NotFound, FileNotFoundError):
            return False
        except Exception as exc:
            raise self._error(exc, path, "create (reading back after 412)") from exc

    # -- the contract ------------------------------------------------------------
    def open_write(self, path: str, *, sync: bool = True) -> AtomicWriter:
        return S3Writer(self, check_path(path), self.settings.part_size, self.part_budget)

    def open_write_new(self, path: str, *, sync: bool = True) -> AtomicWriter:
        return S3Writer(self, check_path(path), self.settings.part_size, self.part_budget, exclusive=True)

    def stat(self, path: str) -> FileInfo:
        path = check_path(path)
        try:
            head = self._call("head_object", Key=self._key(path))
        except Exception as exc:
            raise self._error(exc, path, "stat") from exc
        return FileInfo(path, int(head["ContentLength"]))

    def delete(self, paths: Iterable[str]) -> None:
        checked = [check_path(p) for p in paths]
        for start in range(0, len(checked), DELETE_BATCH):
            batch = checked[start : start + DELETE_BATCH]
            try:
                out = self._call(
                    "delete_objects",
                    Delete={"Objects": [{"Key": self._key(p)} for p in batch], "Quiet": True},
                )
            except Exception as exc:
                raise self._error(exc, batch[0], "delete") from exc
            failed = [e for e in out.get("Errors") or [] if e.get("Code") != "NoSuchKey"]
            if failed:
                first = failed[0]
                kind = PermissionDenied if first.get("Code") == "AccessDenied" else StorageError
                raise kind(
                    f"delete {self.describe()}: {len(failed)} of {len(batch)} objects not deleted, "
                    f"first {first.get('Key')!r}: {first.get('Code')}: {first.get('Message')}"
                )

    def _find(self, top: str) -> dict[str, dict[str, Any]]:
        """One ListObjectsV2 per 1,000 keys under `top/`.  s3fs's `find` follows an empty listing
        with a HEAD of `top` and a second listing, to report `top` itself as a file or an empty
        "directory", both of which `list` drops: two more round trips for each empty prefix (a
        new backup directory's meta/ and lease directory, read twice by every first create).
        Errors are s3fs's, as from `find` (a missing bucket: FileNotFoundError, NoSuchBucket);
        the native client's are alike."""
        if self._native is not None:
            key = top.partition("/")[2]
            return {f"{self.bucket}/{item['Key']}": {"name": f"{self.bucket}/{item['Key']}",
                                                      "size": int(item.get("Size") or 0), "type": "file"}
                    for item in self._native.list_objects(f"{key}/" if key else "")}
        from fsspec.asyn import sync

        found = sync(self.fs.loop, self.fs._lsdir, top, delimiter="")
        return {info["name"]: info for info in found}

    def makedirs(self, path: str = "") -> None:
        """S3 has no directories (the name is still checked, like every name)."""
        if path:
            check_path(path)

    def remove_dir(self, path: str) -> None:
        """S3 has no directories (the name is still checked, like every name)."""
        check_path(path)
