"""Streaming reads from S3: one GET per file, resumed where a body was cut off.

s3fs's file objects read through a HEAD and then one ranged GET per
read-ahead window, copying every byte several times.  `S3Reader` sends one
GET for the whole object and streams its body, chunk by chunk as it arrives,
straight into the caller's buffer: memory stays at the HTTP client's own
small buffer whatever the file size.

A body cut off mid-way (a dropped connection, a read timeout) is resumed
with `Range: bytes=<offset>-` and `If-Match: <ETag of the first response>`,
so an object replaced in between fails the read (412) instead of splicing two
versions together; the resumed response's own ETag is checked too, for stores
that ignore If-Match.  Resumes are bounded: at most `MAX_RESUMES` in a row
without a byte of progress and `MAX_TOTAL_RESUMES` per file, then the last
error is raised.
"""
from __future__ import annotations

import asyncio
import io
import logging
from typing import Any

from fsspec.asyn import sync

from rbackup.env.fsspec_env import error_code
from rbackup.errors import StorageError

log = logging.getLogger(__name__)

MAX_RESUMES = 5
"""Resumed GETs in a row that brought no new byte before a read gives up."""
MAX_TOTAL_RESUMES = 20
"""Resumed GETs per file, progress or not."""
RESUME_DELAY = 0.1
"""First pause before a resume (doubled for every resume in a row without progress)."""


class S3Reader(io.RawIOBase):
    """The object `bucket/key`, read through one streaming GET (and resumes of it).

    The first GET is sent by the constructor, so a missing object fails
    there.  Not thread-safe (like any file object); every network step runs
    on s3fs's event loop thread.
    """

    def __init__(self, fs: Any, bucket: str, key: str, what: str) -> None:
        super().__init__()
        self._fs = fs
        self._bucket = bucket
        self._key = key
        self._what = what
        self._pos = 0
        self._body: Any = None
        self.resumes = 0
        """GETs sent after the first one (for tests and logs)."""
        response = fs.call_s3("get_object", Bucket=bucket, Key=key)
        self._body = response["Body"]
        self._etag: str | None = response.get("ETag")
        self.size = int(response["ContentLength"])

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
                if self._body is not None:
                    body, self._body = self._body, None
                    sync(self._fs.loop, _close_body, body)
            finally:
                super().close()

    # -- on the event loop ----------------------------------------------------------
    async def _fill(self, view: memoryview) -> int:
        """Fill `view` (never past the end of the object), resuming a cut body."""
        done, stalled, delay = 0, 0, RESUME_DELAY
        while done < len(view):
            try:
                if self._body is None:
                    await self._resume()
                chunk = await self._body.read(len(view) - done)
                if not chunk:
                    raise ConnectionError(f"response body ended at byte {self._pos} of {self.size}")
            except Exception as exc:
                if _is_final(exc) or stalled >= MAX_RESUMES or self.resumes >= MAX_TOTAL_RESUMES:
                    raise
                stalled += 1
                log.debug("%s: body cut at byte %d (%s), resuming", self._what, self._pos, exc)
                await _close_body(self._body)
                self._body = None
                await asyncio.sleep(delay)
                delay *= 2
                continue
            n = len(chunk)
            view[done : done + n] = chunk
            done += n
            self._pos += n
            stalled, delay = 0, RESUME_DELAY
        return done

    async def _resume(self) -> None:
        """GET the rest of the object, only if it is still the version we started on."""
        self.resumes += 1
        kwargs: dict[str, Any] = {"Range": f"bytes={self._pos}-"}
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
        if self._etag and response.get("ETag") != self._etag:
            # A store that ignores If-Match (s3rver, older appliances) serves the new version.
            await _close_body(response["Body"])
            raise _Replaced(
                f"{self._what}: the object was replaced while it was read (ETag {response.get('ETag')} "
                f"instead of {self._etag}); read it again"
            )
        expected = f"bytes {self._pos}-{self.size - 1}/{self.size}"
        if response.get("ContentRange") != expected:
            await _close_body(response["Body"])
            raise _Replaced(
                f"{self._what}: resumed GET answered {response.get('ContentRange')!r} "
                f"instead of {expected!r}; read it again"
            )
        self._body = response["Body"]


class _Replaced(StorageError):
    """Not worth a resume: the object is not the one the read started on."""


def _is_final(exc: BaseException) -> bool:
    """Errors that another resume cannot cure."""
    if isinstance(exc, (_Replaced, asyncio.CancelledError)):
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
