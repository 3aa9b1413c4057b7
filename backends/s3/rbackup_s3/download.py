"""Streaming reads from S3: one GET per file, resumed where a body was cut off.

s3fs's file objects read through a HEAD and then one ranged GET per
read-ahead window, copying every byte several times.  `S3Reader` sends one
GET for the whole object and streams its body, chunk by chunk as it arrives,
straight into the caller's buffer: memory stays at the HTTP client's own
small buffer whatever the file size.

`BlockingS3Reader` does the same on blocking connections (`direct.DirectClient`):
each body is received by the thread that reads it, `recv_into` its buffer with
the GIL released, instead of by s3fs's one event-loop thread in Python, which
capped restores and doubled their CPU per GiB.  `S3Reader`, on s3fs's client,
serves the configurations `DirectClient.unsupported` names.

A big object (over `PARALLEL_MIN_SEGMENTS` segments) is also fetched ahead in
segments by ranged GETs running beside the stream, each into a buffer taken
from the env's part budget only if one is free (`PartBudget.try_acquire`):
the stream serves the first segment and any segment no buffer was free for,
so memory stays within the budget and small files cost nothing extra.  The
ranged GETs only use connections the env's other open readers leave idle
(`OpenReaders`): a restore that already streams `concurrency` files at once
reads each in one GET, since more requests would add cost, not speed (and on
stores that serve a ranged GET by reading the whole object, as moto does, a
multiple of the work).

Every ranged GET carries `If-Match: <ETag of the first response>` and its own
ETag and Content-Range are checked, so segments of two versions are never joined.

A body cut off mid-way (a dropped connection, a read timeout) is resumed
with `Range: bytes=<offset>-` and `If-Match: <ETag of the first response>`,
so an object replaced in between fails the read (412) instead of splicing two
versions together; the resumed response's own ETag is checked too, for stores
that ignore If-Match.  Resumes are bounded: at most `MAX_RESUMES` in a row
without a byte of progress and `MAX_TOTAL_RESUMES` per file, then the last
error is raised.
"""
from __future__ import annotations

import concurrent.futures
import io
import logging
import mmap
import sys
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rbackup.env.fsspec_env import error_code
from rbackup.errors import StorageError

if TYPE_CHECKING:
    import asyncio

    from .direct import Body, DirectClient
    from .upload import PartBudget

log = logging.getLogger(__name__)

MAX_RESUMES = 5
"""Resumed GETs in a row that brought no new byte before a read gives up."""
MAX_TOTAL_RESUMES = 20
"""Resumed GETs per file, progress or not."""
RESUME_DELAY = 0.1
"""First pause before a resume (doubled for every resume in a row without progress)."""
PARALLEL_MIN_SEGMENTS = 3
"""Objects of more segments than this are also fetched ahead in parallel."""
MAX_AHEAD = 8
"""Segments of one object fetched ahead at once, at most."""


class OpenReaders:
    """The readers of one env open at once, against its connection count: a big object's
    ranged GETs take only the connections the others leave idle, shared among them."""

    def __init__(self, connections: int) -> None:
        self.connections = connections
        self._open = 0
        self._lock = threading.Lock()

    def enter(self) -> None:
        with self._lock:
            self._open += 1

    def leave(self) -> None:
        with self._lock:
            self._open -= 1

    def spare_per_reader(self) -> int:
        with self._lock:
            readers = max(self._open, 1)
        return max(0, (self.connections - readers) // readers)


@dataclass
class _Ahead:
    """A segment being fetched ahead into a budget buffer."""

    task: asyncio.Task[None]
    buffer: mmap.mmap
    reserved: tuple[int, int]


class S3Reader(io.RawIOBase):
    """The object `bucket/key`, read through one streaming GET (resumes of it, and for a big
    object ranged GETs of its later segments running ahead).

    The first GET is sent by the constructor, so a missing object fails
    there.  Not thread-safe (like any file object); every network step runs
    on s3fs's event loop thread.
    """

    def __init__(self, fs: Any, bucket: str, key: str, what: str, *, budget: PartBudget | None = None,
                 segment: int = 0, readers: OpenReaders | None = None) -> None:
        super().__init__()
        self._fs = fs
        self._bucket = bucket
        self._key = key
        self._what = what
        self._pos = 0
        self._body: Any = None
        self.resumes = 0
        """GETs sent after the first one to resume a cut body (for tests and logs)."""
        self.most_ahead = 0
        """The most segments fetched ahead at once (for tests and tuning)."""
        self._readers: OpenReaders | None = None
        response = fs.call_s3("get_object", Bucket=bucket, Key=key)
        self._body = response["Body"]
        self._etag: str | None = response.get("ETag")
        self.size = int(response["ContentLength"])
        if readers is not None:
            readers.enter()
            self._readers = readers  # counted from here until close
        parallel = (budget is not None and segment > 0 and self.size > PARALLEL_MIN_SEGMENTS * segment
                    and self._spare() > 0)
        self._budget = budget if parallel else None
        self._segment = segment if parallel else self.size or 1
        self._body_end = min(self._segment, self.size) if parallel else self.size
        """Where the current streaming body stops serving (the end of its segment)."""
        self._ahead: dict[int, _Ahead] = {}

    # -- io.RawIOBase ---------------------------------------------------------------
    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.closed:
            raise ValueError("I/O operation on closed file")
        view = memoryview(buffer).cast("B")
        want = min(len(view), self.size - self._pos)
        if want <= 0:
            return 0
        from fsspec.asyn import sync  # S3Reader serves s3fs's client, which imported it: not at the top

        return sync(self._fs.loop, self._fill, view[:want])

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        out = bytearray(min(size, max(self.size - self._pos, 0)))
        n = self.readinto(out) if out else 0
        del out[n:]
        return bytes(out)

    def readall(self) -> bytes:
        out = bytearray(max(self.size - self._pos, 0))
        view, done = memoryview(out), 0
        while done < len(out):
            n = self.readinto(view[done:])
            if not n:
                break
            done += n
        view.release()
        del out[done:]
        return bytes(out)

    def close(self) -> None:
        if not self.closed:
            try:
                from fsspec.asyn import sync

                sync(self._fs.loop, self._shut)
            finally:
                if self._readers is not None:
                    self._readers.leave()
                super().close()

    # -- on the event loop ----------------------------------------------------------
    async def _shut(self) -> None:
        body, self._body = self._body, None
        await _close_body(body)
        ahead, self._ahead = list(self._ahead.values()), {}
        for item in ahead:
            item.task.cancel()
        import asyncio

        await asyncio.gather(*(item.task for item in ahead), return_exceptions=True)
        for item in ahead:  # the buffers are no longer written to: hand them back
            self._give_back(item)

    def _give_back(self, item: _Ahead) -> None:
        assert self._budget is not None
        self._budget.give_back(item.buffer)
        self._budget.release(item.reserved)

    def _spare(self) -> int:
        """Segments this reader may fetch ahead now: MAX_AHEAD, or fewer if other readers need the
        connections."""
        return MAX_AHEAD if self._readers is None else min(MAX_AHEAD, self._readers.spare_per_reader())

    def _segment_span(self, index: int) -> tuple[int, int]:
        start = index * self._segment
        return start, min(start + self._segment, self.size)

    def _fetch_ahead(self) -> None:
        """Start ranged GETs of the next segments not yet being read, while buffers are free."""
        if self._budget is None:
            return
        current = self._pos // self._segment
        last = (self.size - 1) // self._segment
        for index in range(current + 1, min(last, current + self._spare()) + 1):
            if index in self._ahead:
                continue
            start, end = self._segment_span(index)
            reserved = self._budget.try_acquire(end - start)
            if reserved is None:
                return
            buffer = self._budget.buffer(reserved[0])
            import asyncio

            task = asyncio.ensure_future(self._fetch(start, memoryview(buffer)[: end - start]))
            self._ahead[index] = _Ahead(task, buffer, reserved)
        self.most_ahead = max(self.most_ahead, len(self._ahead))

    async def _fill(self, view: memoryview) -> int:
        """Fill `view` (never past the end of the object), from segments fetched ahead or the
        stream, resuming a cut body."""
        done, stalled, delay = 0, 0, RESUME_DELAY
        while done < len(view):
            self._fetch_ahead()
            index = self._pos // self._segment
            ahead = self._ahead.get(index)
            if ahead is not None:
                await ahead.task  # its errors are final: _fetch resumed what it could
                start, end = self._segment_span(index)
                n = min(len(view) - done, end - self._pos)
                with memoryview(ahead.buffer) as segment:  # a view: slicing the mmap itself copies
                    view[done : done + n] = segment[self._pos - start : self._pos - start + n]
                done += n
                self._pos += n
                if self._pos == end:
                    del self._ahead[index]
                    self._give_back(ahead)
                continue
            try:
                if self._body is None:
                    await self._stream_from_here(resume=stalled > 0)
                chunk = await self._body.read(min(len(view) - done, self._body_end - self._pos))
                if not chunk:
                    raise ConnectionError(f"response body ended at byte {self._pos} of {self.size}")
            except Exception as exc:
                if _is_final(exc) or stalled >= MAX_RESUMES or self.resumes >= MAX_TOTAL_RESUMES:
                    raise
                stalled += 1
                log.debug("%s: body cut at byte %d (%s), resuming", self._what, self._pos, exc)
                await _close_body(self._body)
                self._body = None
                await _sleep(delay)
                delay *= 2
                continue
            n = len(chunk)
            view[done : done + n] = chunk
            done += n
            self._pos += n
            stalled, delay = 0, RESUME_DELAY
            if self._pos == self._body_end and self._pos < self.size:
                body, self._body = self._body, None  # the next segment comes from elsewhere
                await _close_body(body)
        return done

    async def _get_range(self, start: int, end: int) -> Any:
        """The body of a GET of bytes [start, end) of the version we started on."""
        kwargs: dict[str, Any] = {"Range": f"bytes={start}-{end - 1}"}
        if self._etag:
            kwargs["IfMatch"] = self._etag
        try:
            response = await self._fs._call_s3("get_object", Bucket=self._bucket, Key=self._key, **kwargs)
        except Exception as exc:
            if error_code(exc) == "PreconditionFailed":
                raise _Replaced(
                    f"{self._what}: the object was replaced while it was read "
                    f"(ETag no longer {self._etag}); read it again"
                ) from exc
            raise
        try:
            _check_range(self._what, self._etag, response.get("ETag"), response.get("ContentRange"),
                         start, end, self.size)
        except _Replaced:
            await _close_body(response["Body"])
            raise
        return response["Body"]

    async def _stream_from_here(self, *, resume: bool) -> None:
        """Stream the rest of the current segment (or object), if it is still the version we
        started on: after a cut body (`resume`), or for a segment nothing fetched ahead."""
        self.resumes += resume
        if self._budget is not None and not self._ahead and self._spare() == 0:
            # Nothing fetched ahead and no idle connection to fetch with: stream the rest in
            # one GET instead of one per segment.
            self._budget = None
        self._body_end = self._segment_span(self._pos // self._segment)[1] if self._budget else self.size
        self._body = await self._get_range(self._pos, self._body_end)

    async def _fetch(self, start: int, into: memoryview) -> None:
        """Fill `into` with the bytes from `start` by ranged GETs, resuming a cut body (bounded
        like the stream's resumes)."""
        done, stalled, delay = 0, 0, RESUME_DELAY
        while done < len(into):
            body = None
            try:
                body = await self._get_range(start + done, start + len(into))
                while done < len(into):
                    chunk = await body.read(len(into) - done)
                    if not chunk:
                        raise ConnectionError(f"response body ended at byte {start + done} of {self.size}")
                    into[done : done + len(chunk)] = chunk
                    done += len(chunk)
                    stalled, delay = 0, RESUME_DELAY
            except Exception as exc:
                if _is_final(exc) or stalled >= MAX_RESUMES or self.resumes >= MAX_TOTAL_RESUMES:
                    raise
                stalled += 1
                self.resumes += 1
                log.debug("%s: segment at byte %d cut (%s), resuming", self._what, start + done, exc)
                await _sleep(delay)
                delay *= 2
            finally:
                await _close_body(body)


@dataclass
class _Fetching:
    """A segment being fetched ahead, on the env's fetch threads, into a budget buffer."""

    future: concurrent.futures.Future[None]
    buffer: mmap.mmap
    reserved: tuple[int, int]


RECV_PIECE = 256 * 1024
"""Bodies are received in pieces of at most this size, so a closing reader stops its fetches soon."""


class BlockingS3Reader(io.RawIOBase):
    """`S3Reader`'s reads on blocking connections (`DirectClient`): the body of each GET is received
    by the thread that reads it, straight into its buffer, and a big object's later segments by
    the env's fetch threads.  Same guarantees: one GET per file streamed, segments fetched ahead
    only into free budget buffers and over connections other readers leave idle, If-Match + ETag
    + Content-Range checked on every ranged or resumed GET, bounded resumes.

    The first GET is sent by the constructor, so a missing object fails there.  Not
    thread-safe (like any file object)."""

    def __init__(self, gets: DirectClient, key: str, what: str, *, budget: PartBudget | None = None,
                 segment: int = 0, readers: OpenReaders | None = None,
                 fetchers: concurrent.futures.Executor | None = None) -> None:
        super().__init__()
        self._gets = gets
        self._key = key
        self._what = what
        self._pos = 0
        self._closing = threading.Event()
        self.resumes = 0
        """GETs sent after the first one to resume a cut body (for tests and logs)."""
        self.most_ahead = 0
        """The most segments fetched ahead at once (for tests and tuning)."""
        self._readers: OpenReaders | None = None
        self._ahead: dict[int, _Fetching] = {}
        self._body: Body | None = None
        self._body = gets.get(key)
        response = self._body.response
        self._etag: str | None = response.getheader("ETag")
        length = response.getheader("Content-Length")
        if length is None:
            self._body.close()
            raise StorageError(f"{what}: the store answered without a Content-Length")
        self.size = int(length)
        if readers is not None:
            readers.enter()
            self._readers = readers  # counted from here until close
        parallel = (budget is not None and fetchers is not None and segment > 0
                    and self.size > PARALLEL_MIN_SEGMENTS * segment and self._spare() > 0)
        self._budget = budget if parallel else None
        self._fetchers = fetchers
        self._segment = segment if parallel else self.size or 1
        self._body_end = min(self._segment, self.size) if parallel else self.size
        """Where the current streaming body stops serving (the end of its segment)."""

    # -- io.RawIOBase ---------------------------------------------------------------
    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.closed:
            raise ValueError("I/O operation on closed file")
        view = memoryview(buffer).cast("B")
        want = min(len(view), self.size - self._pos)
        if want <= 0:
            return 0
        return self._fill(view[:want])

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        out = bytearray(min(size, max(self.size - self._pos, 0)))
        n = self.readinto(out) if out else 0
        del out[n:]
        return bytes(out)

    def readall(self) -> bytes:
        out = bytearray(max(self.size - self._pos, 0))
        view, done = memoryview(out), 0
        while done < len(out):
            n = self.readinto(view[done:])
            if not n:
                break
            done += n
        view.release()
        del out[done:]
        return bytes(out)

    def close(self) -> None:
        if self.closed:
            return
        try:
            self._closing.set()
            if self._body is not None:
                self._body.close()
                self._body = None
            ahead, self._ahead = list(self._ahead.values()), {}
            concurrent.futures.wait([item.future for item in ahead])
            for item in ahead:  # the buffers are no longer written to: hand them back
                self._give_back(item)
        finally:
            if self._readers is not None:
                self._readers.leave()
            super().close()

    # -- internals ------------------------------------------------------------------
    def _give_back(self, item: _Fetching) -> None:
        assert self._budget is not None
        self._budget.give_back(item.buffer)
        self._budget.release(item.reserved)

    def _spare(self) -> int:
        return MAX_AHEAD if self._readers is None else min(MAX_AHEAD, self._readers.spare_per_reader())

    def _segment_span(self, index: int) -> tuple[int, int]:
        start = index * self._segment
        return start, min(start + self._segment, self.size)

    def _fetch_ahead(self) -> None:
        """Start ranged GETs of the next segments not yet being read, while buffers are free."""
        if self._budget is None or self._fetchers is None:
            return
        current = self._pos // self._segment
        last = (self.size - 1) // self._segment
        for index in range(current + 1, min(last, current + self._spare()) + 1):
            if index in self._ahead:
                continue
            start, end = self._segment_span(index)
            reserved = self._budget.try_acquire(end - start)
            if reserved is None:
                return
            buffer = self._budget.buffer(reserved[0])
            future = self._fetchers.submit(self._fetch, start, memoryview(buffer)[: end - start])
            self._ahead[index] = _Fetching(future, buffer, reserved)
        self.most_ahead = max(self.most_ahead, len(self._ahead))

    def _fill(self, view: memoryview) -> int:
        """Fill `view` (never past the end of the object), from segments fetched ahead or the
        stream, resuming a cut body."""
        done, stalled, delay = 0, 0, RESUME_DELAY
        while done < len(view):
            self._fetch_ahead()
            index = self._pos // self._segment
            ahead = self._ahead.get(index)
            if ahead is not None:
                ahead.future.result()  # its errors are final: _fetch resumed what it could
                start, end = self._segment_span(index)
                n = min(len(view) - done, end - self._pos)
                with memoryview(ahead.buffer) as segment:  # a view: slicing the mmap itself copies
                    view[done : done + n] = segment[self._pos - start : self._pos - start + n]
                done += n
                self._pos += n
                if self._pos == end:
                    del self._ahead[index]
                    self._give_back(ahead)
                continue
            try:
                if self._body is None:
                    self._stream_from_here(resume=stalled > 0)
                assert self._body is not None
                n = self._body.readinto(view[done : done + min(len(view) - done, self._body_end - self._pos,
                                                               RECV_PIECE)])
                if not n:
                    raise ConnectionError(f"response body ended at byte {self._pos} of {self.size}")
            except Exception as exc:
                if _is_final(exc) or stalled >= MAX_RESUMES or self.resumes >= MAX_TOTAL_RESUMES:
                    raise
                stalled += 1
                log.debug("%s: body cut at byte %d (%s), resuming", self._what, self._pos, exc)
                if self._body is not None:
                    self._body.close()
                    self._body = None
                time.sleep(delay)
                delay *= 2
                continue
            done += n
            self._pos += n
            stalled, delay = 0, RESUME_DELAY
            if self._pos == self._body_end and self._pos < self.size:
                body, self._body = self._body, None  # the next segment comes from elsewhere
                body.close()
        return done

    def _get_range(self, start: int, end: int) -> Body:
        """The body of a GET of bytes [start, end) of the version we started on."""
        try:
            body = self._gets.get(self._key, start=start, end=end, if_match=self._etag)
        except Exception as exc:
            if error_code(exc) == "PreconditionFailed":
                raise _Replaced(f"{self._what}: the object was replaced while it was read "
                                f"(ETag no longer {self._etag}); read it again") from exc
            raise
        try:
            _check_range(self._what, self._etag, body.response.getheader("ETag"),
                         body.response.getheader("Content-Range"), start, end, self.size)
        except _Replaced:
            body.close()
            raise
        return body

    def _stream_from_here(self, *, resume: bool) -> None:
        """Stream the rest of the current segment (or object), if it is still the version we
        started on: after a cut body (`resume`), or for a segment nothing fetched ahead."""
        self.resumes += resume
        if self._budget is not None and not self._ahead and self._spare() == 0:
            self._budget = None  # no idle connection to fetch with: the rest in one GET
        self._body_end = self._segment_span(self._pos // self._segment)[1] if self._budget else self.size
        self._body = self._get_range(self._pos, self._body_end)

    def _fetch(self, start: int, into: memoryview) -> None:
        """Fill `into` with the bytes from `start` by ranged GETs (on a fetch thread), resuming a
        cut body (bounded like the stream's resumes); stops early when the reader closes."""
        done, stalled, delay = 0, 0, RESUME_DELAY
        while done < len(into) and not self._closing.is_set():
            body = None
            try:
                body = self._get_range(start + done, start + len(into))
                while done < len(into) and not self._closing.is_set():
                    n = body.readinto(into[done : done + min(RECV_PIECE, len(into) - done)])
                    if not n:
                        raise ConnectionError(f"response body ended at byte {start + done} of {self.size}")
                    done += n
                    stalled, delay = 0, RESUME_DELAY
            except Exception as exc:
                if _is_final(exc) or stalled >= MAX_RESUMES or self.resumes >= MAX_TOTAL_RESUMES:
                    raise
                stalled += 1
                self.resumes += 1
                log.debug("%s: segment at byte %d cut (%s), resuming", self._what, start + done, exc)
                time.sleep(delay)
                delay *= 2
            finally:
                if body is not None:
                    body.close()


def _check_range(what: str, etag: str | None, got_etag: str | None, got_range: str | None, start: int, end: int,
                 size: int) -> None:
    """Raise `_Replaced` unless a ranged GET's response is bytes [start, end) of the version
    whose ETag is `etag` (checked here too: s3rver and older appliances ignore If-Match)."""
    if etag and got_etag != etag:
        raise _Replaced(f"{what}: the object was replaced while it was read (ETag {got_etag} instead of {etag}); "
                        "read it again")
    expected = f"bytes {start}-{end - 1}/{size}"
    if got_range != expected:
        raise _Replaced(f"{what}: ranged GET answered {got_range!r} instead of {expected!r}; read it again")


class _Replaced(StorageError):
    """Not worth a resume: the object is not the one the read started on."""


async def _sleep(delay: float) -> None:
    import asyncio

    await asyncio.sleep(delay)


def _is_final(exc: BaseException) -> bool:
    """Errors that another resume cannot cure (a cancelled task: only S3Reader's, on asyncio)."""
    asyncio = sys.modules.get("asyncio")
    if isinstance(exc, _Replaced) or (asyncio is not None and isinstance(exc, asyncio.CancelledError)):
        return True
    # Missing object, denied access, ...: the store answered, and not with data.
    return error_code(exc) is not None


async def _close_body(body: Any) -> None:
    if body is None:
        return
    try:
        body.close()
    except Exception:  # a broken connection may fail to close; it is dropped either way
        pass
