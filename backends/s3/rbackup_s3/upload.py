"""Streaming, all-or-nothing uploads to S3.

An S3 object appears only when a PUT or a CompleteMultipartUpload succeeds,
so publishing needs no rename: small files go up in one PUT, larger ones as a
multipart upload that is completed only once every part is in, and aborted
(never completed) on any failure.

Memory: a writer fills a part buffer and sends it as a read-only view
(aiohttp streams it with backpressure: no copy of the part is made), with
the CRC-32C the store checks it against.  Buffers of a MiB and more are page
buffers (`rbackup.transfer.page_buffer`), out of malloc's arenas.  Files up to `UNBUDGETED_BYTES` use a small
private buffer; a larger file first takes a part's worth of the env's
`PartBudget`, so at most `parts_in_flight` part buffers exist at once
whatever the number of files in flight.

Checksums: every PUT and part carries its CRC-32C (its Content-MD5 on a store that
refuses checksum headers: `compat`), and a multipart upload is a FULL_OBJECT one
where the client library and the store know the type: its completion carries
the whole file's CRC-32C, combined from the parts' (`crc32c_combine`, no second
pass over the data), so the store keeps the same whole-object CRC-32C as for a
single PUT, the one RocksDB's meta file records.  A store that checks it refuses
a completion that does not match its parts; `verify --checksum` can later compare
that stored value with the meta file's instead of downloading the file
(`stored_checksum`).

Parallel parts: a full part is sent in the background (on s3fs's event loop)
while the writer fills the next one, in another buffer it takes from the
budget only if one is free and no other writer waits for one; otherwise it
waits for its own oldest part and reuses that buffer.  So one big file goes
up as many parts at once as the budget allows, many files share it fairly,
and a writer never waits for a buffer while holding one another could need.
"""
from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import io
import logging
import mmap
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rbackup.env.base import AtomicWriter
from rbackup.env.fsspec_env import error_code
from rbackup.errors import AlreadyExists, StorageError
from rbackup.format.checksum import crc32c, crc32c_combine
from rbackup.transfer import page_buffer

if TYPE_CHECKING:
    from .env import S3Env

log = logging.getLogger(__name__)

MIN_PART_SIZE = 5 * 2**20
"""S3's smallest part (all parts but the last)."""
MAX_PART_SIZE = 5 * 2**30
"""S3's largest part."""
MAX_PARTS = 10_000
"""S3's limit on parts per upload."""
PARTS_PER_DOUBLING = 500
UNBUDGETED_BYTES = 2**20
"""Files up to this size are buffered without taking from the part budget."""
SMALL_BYTES = 64 * 2**10
"""A small file's buffer grows as a bytearray up to this size, then is a page buffer of
`UNBUDGETED_BYTES`: malloc never frees a block above its mmap threshold (see `page_buffer`)."""

PartBuffer = bytearray | mmap.mmap
"""A part's bytes: a small file's private bytearray, or a page-mapped budget buffer."""

_CHECKSUM_FIELDS = ("ChecksumCRC32", "ChecksumCRC32C", "ChecksumCRC64NVME", "ChecksumSHA1", "ChecksumSHA256")


def encode_crc32c(crc: int) -> str:
    """A CRC-32C as S3 writes it in `x-amz-checksum-crc32c`: base64 of its 4 big-endian bytes."""
    return base64.b64encode(crc.to_bytes(4, "big")).decode("ascii")


def checksum_crc32c(data: memoryview | bytes) -> str:
    """The `x-amz-checksum-crc32c` of `data`: the store checks the body against it and refuses
    one damaged in transit.  Computed here, on the writer's thread (the crc32c extension: the
    CPU's CRC instruction, GIL released), it spares botocore its own default checksum, which
    copies the body 1 MiB at a time and hashes it on the event loop thread."""
    return encode_crc32c(crc32c(data))


def with_checksum(data: memoryview | bytes, crc: int | None = None) -> dict[str, str]:
    """The arguments of a PUT or part upload of `data` that carry its CRC-32C (`crc` if already
    computed): the value, and the algorithm's name (`x-amz-sdk-checksum-algorithm`, which
    Object Lock uploads must carry)."""
    value = checksum_crc32c(data) if crc is None else encode_crc32c(crc)
    return {"ChecksumAlgorithm": "CRC32C", "ChecksumCRC32C": value}


def part_size(part_number: int, base: int) -> int:
    """Size of multipart part `part_number` (1-based) for a stream whose parts start at `base`.

    The size of the file is not known while it streams, and S3 allows
    10,000 parts, so parts grow: `base` bytes for the first 500 parts, twice
    that for the next 500, and so on up to S3's 5 GiB.  Even from S3's
    minimum base of 5 MiB the largest S3 object (5 TiB) needs about 5,500
    parts, while a typical SST file (64 MiB, 8 MiB base) is 8 equal parts and
    memory stays at one part per writer.
    """
    return min(base << ((part_number - 1) // PARTS_PER_DOUBLING), MAX_PART_SIZE)


def multipart_etag(parts: list[dict[str, Any]]) -> str | None:
    """The ETag S3 gives a completed upload of `parts`: md5 of the part md5s, then `-N`.

    Used to recognise our own upload when the response to its completion was
    lost.  None when the part ETags are not md5s (e.g. SSE-KMS).
    """
    digest = hashlib.md5(usedforsecurity=False)
    try:
        for part in parts:
            digest.update(bytes.fromhex(part["ETag"].strip('"')))
    except ValueError:
        return None
    return f'"{digest.hexdigest()}-{len(parts)}"'


class PartBudget:
    """Bytes of part buffers the writers of one env may hold at once.

    A writer reserves a whole part before it buffers more than
    `UNBUDGETED_BYTES`, and gives it back on commit or abort, so small files
    still go up as wide as the engine runs them while large ones queue.
    A reservation larger than the whole budget waits for all of it.
    A thread that already holds a reservation (two writers open in one
    thread) is not made to wait: that could never be served.

    The budget also keeps the part buffers themselves: a released buffer is
    handed to the next writer instead of being freed and allocated again,
    which would leave the allocator's arenas holding far more than the
    budget (measured: 250 MB peak RSS instead of ~190 MB for 16 writers).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self.peak = 0
        """The most bytes held at once (for tests and tuning)."""
        self._cond = threading.Condition()
        self._by_thread: dict[int, int] = {}
        self._free: list[mmap.mmap] = []
        self._waiting = 0

    def buffer(self, size: int) -> mmap.mmap:
        """A buffer of `size` bytes, reused if one was given back (call while holding a reservation)."""
        with self._cond:
            for i, buf in enumerate(self._free):
                if len(buf) == size:
                    return self._free.pop(i)
        return page_buffer(size)

    def give_back(self, buf: PartBuffer) -> None:
        """Keep `buf` for the next writer, as long as the kept buffers fit in the budget."""
        with self._cond:
            if isinstance(buf, mmap.mmap) and sum(map(len, self._free)) + len(buf) <= self.limit:
                self._free.append(buf)

    def acquire(self, size: int) -> tuple[int, int]:
        """Wait for `size` bytes (at most the whole budget); returns the token for `release`."""
        size = min(size, self.limit)
        owner = threading.get_ident()
        with self._cond:
            if not self._by_thread.get(owner):
                self._waiting += 1
                try:
                    while self.held + size > self.limit:
                        self._cond.wait()
                finally:
                    self._waiting -= 1
            return self._take(size, owner)

    def try_acquire(self, size: int) -> tuple[int, int] | None:
        """`size` bytes if they are free now and no writer waits for its first buffer (which
        comes first: an extra part in flight only uses what nobody else is waiting for)."""
        size = min(size, self.limit)
        with self._cond:
            if self._waiting or self.held + size > self.limit:
                return None
            return self._take(size, threading.get_ident())

    def _take(self, size: int, owner: int) -> tuple[int, int]:
        self.held += size
        self.peak = max(self.peak, self.held)
        self._by_thread[owner] = self._by_thread.get(owner, 0) + size
        return size, owner

    def release(self, token: tuple[int, int]) -> None:
        size, owner = token
        with self._cond:
            self.held -= size
            left = self._by_thread.pop(owner, 0) - size
            if left > 0:
                self._by_thread[owner] = left
            self._cond.notify_all()


class PartBody(io.RawIOBase):
    """A seekable, read-only stream over a part buffer: the request body without a copy.

    botocore seeks it back on a retry (it computes no checksum of its own: the
    request carries ours, `checksum_crc32c`); aiohttp sends it in small chunks
    with backpressure.
    """

    def __init__(self, view: memoryview) -> None:
        super().__init__()
        self._view = view.toreadonly()
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = (0, self._pos, len(self._view))[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def __len__(self) -> int:
        return len(self._view)

    def readinto(self, buffer: Any) -> int:
        end = min(len(self._view), self._pos + len(buffer))
        n = end - self._pos
        memoryview(buffer).cast("B")[:n] = self._view[self._pos : end]
        self._pos = end
        return n

    def read(self, size: int | None = -1) -> bytes:
        end = len(self._view) if size is None or size < 0 else min(len(self._view), self._pos + size)
        out = bytes(self._view[self._pos : end])
        self._pos = max(self._pos, end)
        return out

    def readall(self) -> bytes:
        return self.read(-1)

    def whole(self) -> memoryview:
        """Every byte of the body, whatever the position (to hash what was sent)."""
        return self._view

    def remaining(self) -> memoryview:
        """The bytes from the current position on, without a copy."""
        return self._view[self._pos :]


SEND_CHUNK = 256 * 2**10
"""Bytes of a part handed to the HTTP transport at a time (each awaits the socket's drain)."""


_payload_registered = False


def register_part_payload() -> None:
    """Teach aiohttp to send a `PartBody` straight from its buffer.

    Left to itself, aiohttp reads a file-like body 64 KiB at a time through
    the default thread pool (a thread hop and a copy per chunk: about 10%
    slower backups against moto).  This payload writes slices of the
    read-only view instead, each awaiting the transport's drain, so no copy
    of the part is made and backpressure holds.  Without a compatible
    aiohttp the generic file-object path is used: slower, still correct.
    Called when an env takes s3fs's client (the native client sends the view itself).
    """
    global _payload_registered
    if _payload_registered:
        return
    _payload_registered = True
    try:
        from aiohttp import payload as aiohttp_payload

        class PartPayload(aiohttp_payload.Payload):
            _autoclose = True

            def __init__(self, value: PartBody, *args: Any, **kwargs: Any) -> None:
                kwargs.setdefault("content_type", "application/octet-stream")
                super().__init__(value, *args, **kwargs)
                self._view = value.remaining()
                self._size = len(self._view)

            def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
                return bytes(self._view).decode(encoding, errors)

            async def as_bytes(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
                return bytes(self._view)

            async def write(self, writer: Any) -> None:
                await self.write_with_length(writer, None)

            async def write_with_length(self, writer: Any, content_length: int | None) -> None:
                view = self._view if content_length is None else self._view[:content_length]
                for offset in range(0, len(view), SEND_CHUNK):
                    await writer.write(view[offset : offset + SEND_CHUNK])

        aiohttp_payload.register_payload(PartPayload, PartBody, order=aiohttp_payload.Order.try_first)
    except Exception as exc:  # pragma: no cover - depends on the installed aiohttp
        log.debug("aiohttp payload for part bodies not registered (%s); using the generic path", exc)



@dataclass
class _PartInFlight:
    """A part being sent in the background, and the buffer (and budget) it holds until then."""

    number: int
    future: concurrent.futures.Future[dict[str, Any]]
    buffer: PartBuffer
    reserved: tuple[int, int] | None


class S3Writer(AtomicWriter):
    """Publish one S3 object from a stream: a single PUT, or a completed multipart upload.

    Bytes are buffered until a part is full *and* more data arrives, so any
    file that fits in the first part goes up as one PUT.  Full parts are sent
    in the background, as many at once as the part budget allows (see the
    module docstring).  A multipart upload is completed only in `commit`,
    once every part is in; `abort` (and any failure of `commit` or of a part)
    waits for the parts in flight and aborts it, so no object and no pending
    upload remain.
    """

    def __init__(self, env: S3Env, path: str, base_part_size: int, budget: PartBudget | None = None, *,
                 exclusive: bool = False) -> None:
        self._env = env
        self._exclusive = exclusive
        """Refuse to replace an existing object (AlreadyExists): `open_write_new`."""
        self._path = path
        self._key = env._key(path)
        self._base = base_part_size
        self._budget = budget
        self._reserved: tuple[int, int] | None = None
        """What this writer's current buffer holds of `budget` (None while it is small)."""
        self._buffer: PartBuffer = bytearray()
        """The part being filled: its first `_fill` bytes."""
        self._fill = 0
        self._number = 1
        """The number of the part being filled."""
        self._inflight: list[_PartInFlight] = []
        self._parts: list[dict[str, Any]] = []
        """Parts sent and acknowledged."""
        self.most_in_flight = 0
        """The most parts this writer had in flight at once (for tests and tuning)."""
        self._upload_id: str | None = None
        self._crc = 0
        """The CRC-32C of the parts sent so far, in order: the whole object's at completion."""
        self._checksum_type: dict[str, str] = {}
        """The multipart upload's checksum type, as created (`_full_object`)."""
        self._state = "open"

    def write(self, data: bytes | memoryview) -> int:
        if self._state != "open":
            raise StorageError(f"write {self._env.describe(self._path)}: writer already {self._state}")
        view = memoryview(data).cast("B")
        total = len(view)
        while view:
            size = part_size(self._number, self._base)
            room = size - self._fill
            if room == 0:
                self._upload_part()
                continue
            if len(self._buffer) < size and self._fill + len(view) > len(self._buffer):
                self._grow(size, self._fill + len(view))
            n = min(room, len(view))
            self._buffer[self._fill : self._fill + n] = view[:n]
            self._fill += n
            view = view[n:]
        return total

    def _grow(self, size: int, wanted: int) -> None:
        """Make room in the buffer: privately up to UNBUDGETED_BYTES for a first part (a small
        file), else a whole budgeted part."""
        if wanted <= UNBUDGETED_BYTES and not self._reserved and self._number == 1:
            if wanted <= SMALL_BYTES:
                assert isinstance(self._buffer, bytearray)  # a page buffer is never this small
                self._buffer.extend(bytes(wanted - len(self._buffer)))
            else:
                page = page_buffer(UNBUDGETED_BYTES)
                page[: self._fill] = memoryview(self._buffer)[: self._fill]
                self._buffer = page
            return
        if self._budget is not None:
            if not self._reserved:  # every part gets its own buffer, of its own size
                self._reserved = self._reserve(self._budget, size)
        elif self._inflight:
            self._collect(wait=True)  # no budget: one part in flight while the next fills
        grown = self._budget.buffer(size) if self._budget is not None else bytearray(size)
        grown[: self._fill] = memoryview(self._buffer)[: self._fill]
        if self._reserved and len(self._buffer) > UNBUDGETED_BYTES:
            self._budget.give_back(self._buffer)  # type: ignore[union-attr]
        self._buffer = grown

    def _reserve(self, budget: PartBudget, size: int) -> tuple[int, int]:
        """A part's worth of the budget, taken in one go (never a hold-and-wait that could
        deadlock two writers): while this writer has parts in flight it only takes a free
        buffer nobody waits for, else it waits for its own oldest part and tries again;
        with nothing in flight it queues like any writer."""
        while True:
            self._collect(wait=False)
            if not self._inflight:
                return budget.acquire(size)
            token = budget.try_acquire(size)
            if token is not None:
                return token
            self._collect(wait=True)

    def _collect(self, *, wait: bool) -> None:
        """Record the parts that are done, freeing their buffers (with `wait`, wait for one
        first); a part that failed raises its error."""
        if wait and self._inflight:
            concurrent.futures.wait([p.future for p in self._inflight],
                                    return_when=concurrent.futures.FIRST_COMPLETED)
        done = [p for p in self._inflight if p.future.done()]
        self._inflight = [p for p in self._inflight if not p.future.done()]
        failure: BaseException | None = None
        for part in done:
            self._free(part)
            try:
                out = part.future.result()
            except BaseException as exc:
                failure = failure or exc
                continue
            record = {"PartNumber": part.number, "ETag": out["ETag"]}
            record.update({k: out[k] for k in _CHECKSUM_FIELDS if out.get(k)})
            self._parts.append(record)
            log.debug("%s: part %d uploaded", self._env.describe(self._path), part.number)
        if failure is not None:
            raise self._env._error(failure, self._path, "write") from failure

    def _free(self, part: _PartInFlight) -> None:
        if self._budget is not None and part.reserved:
            self._budget.give_back(part.buffer)
            self._budget.release(part.reserved)
        part.reserved = None

    def _wait_all(self, *, quiet: bool = False) -> None:
        """Wait for every part in flight (`quiet`: ignoring their errors)."""
        while self._inflight:
            try:
                self._collect(wait=True)
            except Exception:
                if not quiet:
                    raise

    def _body(self) -> PartBody:
        return PartBody(memoryview(self._buffer)[: self._fill])

    def _release(self) -> None:
        buf, self._buffer = self._buffer, bytearray()
        self._fill = 0
        if self._budget is not None and self._reserved:
            self._budget.give_back(buf)
            self._budget.release(self._reserved)
        self._reserved = None

    def commit(self) -> None:
        if self._state != "open":
            raise StorageError(f"write {self._env.describe(self._path)}: writer already {self._state}")
        try:
            if self._upload_id is None:
                self._put()
            else:
                self._upload_part()
                self._wait_all()
                self._complete()
        except Exception as exc:
            self.abort()
            raise self._env._error(exc, self._path, "write") from exc
        self._state = "committed"
        self._release()

    def abort(self) -> None:
        if self._state != "open":
            return
        self._state = "aborted"
        self._release()
        # Parts still in flight are waited for: their buffers are being sent, and a part
        # landing after the abort would leave the upload behind.
        self._wait_all(quiet=True)
        if self._upload_id is None:
            return
        try:
            self._env._call("abort_multipart_upload", Key=self._key, UploadId=self._upload_id)
        except Exception as exc:
            if error_code(exc) != "NoSuchUpload":
                log.warning(
                    "could not abort multipart upload %s of %s (%s); a bucket lifecycle rule "
                    "AbortIncompleteMultipartUpload reclaims it",
                    self._upload_id,
                    self._env.describe(self._path),
                    exc,
                )

    def __del__(self) -> None:
        # A writer dropped without commit or abort must not keep its share of the budget.
        if self._budget is None:
            return
        for token in [getattr(self, "_reserved", None)] + [p.reserved for p in getattr(self, "_inflight", [])]:
            if token:
                self._budget.release(token)
        self._reserved = None
        self._inflight = []

    def _upload_part(self) -> None:
        """Send the part filled so far in the background; the next part gets another buffer."""
        try:
            if self._upload_id is None:
                self._checksum_type = self._full_object()
                self._upload_id = self._env._call("create_multipart_upload", Key=self._key, ChecksumAlgorithm="CRC32C",
                                                  **self._checksum_type)["UploadId"]
            body = self._body()
            crc = crc32c(body.whole())
            self._crc = crc32c_combine(self._crc, crc, len(body))
            future = self._env._call_async("upload_part", Key=self._key, UploadId=self._upload_id,
                                           PartNumber=self._number, Body=body,
                                           **self._env.compat.upload_args(body.whole(), crc))
        except Exception as exc:
            raise self._env._error(exc, self._path, "write") from exc
        self._inflight.append(_PartInFlight(self._number, future, self._buffer, self._reserved))
        self.most_in_flight = max(self.most_in_flight, len(self._inflight))
        self._buffer, self._reserved, self._fill = bytearray(), None, 0
        self._number += 1

    def _full_object(self) -> dict[str, str]:
        """The multipart upload's checksum type, where the client library can send it: FULL_OBJECT,
        a CRC-32C of the whole object (else S3's default, a checksum of the part checksums)."""
        return {"ChecksumType": "FULL_OBJECT"} if self._env.full_object_checksums() else {}

    def _whole_checksum(self) -> dict[str, str]:
        """What a FULL_OBJECT completion carries: the type again and the whole object's CRC-32C,
        which the store checks against the parts it received."""
        return {"ChecksumCRC32C": encode_crc32c(self._crc), **self._checksum_type} if self._checksum_type else {}

    def _condition(self) -> dict[str, str]:
        """The request's If-None-Match, where the store arbitrates; else a look just before."""
        if not self._exclusive:
            return {}
        if self._env.conditional_writes_honoured():
            return {"IfNoneMatch": "*"}
        if self._env.exists(self._path):  # best effort: conditional_writes=False
            raise self._taken()
        return {}

    def _taken(self) -> AlreadyExists:
        return AlreadyExists(f"write {self._env.describe(self._path)}: already exists")

    def _put(self) -> None:
        condition = self._condition()
        body = self._body()
        # A small conditional PUT goes as bytes: botocore then sends no "Expect: 100-continue", so
        # headers and body leave together.  SeaweedFS checks If-None-Match when the headers arrive;
        # a writer stopped between its headers and its body (seen with SIGSTOP) would otherwise
        # complete the PUT over an object made meanwhile.
        sent: PartBody | bytes = bytes(body.whole()) if condition and self._fill <= UNBUDGETED_BYTES else body
        try:
            self._env._call("put_object", Key=self._key, Body=sent, **self._env.compat.upload_args(body.whole()),
                            **condition)
        except Exception as exc:
            # A lost response makes botocore's retry find our own object: 412 for it.
            if error_code(exc) != "PreconditionFailed" or not condition:
                raise
            expected = f'"{hashlib.md5(body.whole(), usedforsecurity=False).hexdigest()}"'
            if not self._is_our_object(expected):
                raise self._taken() from exc
            log.info("%s: create response was lost, the object is ours", self._env.describe(self._path))

    def _complete(self) -> None:
        condition = self._condition()
        try:
            self._env._call(
                "complete_multipart_upload",
                Key=self._key,
                UploadId=self._upload_id,
                MultipartUpload={"Parts": sorted(self._parts, key=lambda p: p["PartNumber"])},
                **self._whole_checksum(),
                **condition,
            )
        except Exception as exc:
            # A retried completion whose first try succeeded finds the upload
            # gone (or, if exclusive, the object there); the object tells whether it was ours.
            code = error_code(exc)
            if code not in ("NoSuchUpload", "PreconditionFailed") or not self._is_our_object(
                    multipart_etag(sorted(self._parts, key=lambda p: p["PartNumber"]))):
                if code == "PreconditionFailed" and condition:
                    raise self._taken() from exc
                raise
            log.info("%s: completion response was lost, the upload had completed", self._env.describe(self._path))

    def _is_our_object(self, expected: str | None) -> bool:
        try:
            head = self._env._call("head_object", Key=self._key)
        except Exception:
            return False
        return expected is not None and head.get("ETag") == expected
