"""Streaming, all-or-nothing uploads to S3.

An S3 object appears only when a PUT or a CompleteMultipartUpload succeeds,
so publishing needs no rename: small files go up in one PUT, larger ones as a
multipart upload that is completed only once every part is in, and aborted
(never completed) on any failure.  Memory per writer is one part.
"""
from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING, Any

from rbackup.env.base import AtomicWriter
from rbackup.env.fsspec_env import error_code
from rbackup.errors import StorageError

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

_CHECKSUM_FIELDS = ("ChecksumCRC32", "ChecksumCRC32C", "ChecksumCRC64NVME", "ChecksumSHA1", "ChecksumSHA256")


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


class S3Writer(AtomicWriter):
    """Publish one S3 object from a stream: a single PUT, or a completed multipart upload.

    Bytes are buffered until a part is full *and* more data arrives, so any
    file that fits in the first part goes up as one PUT.  A multipart upload
    is completed only in `commit`; `abort` (and any failure of `commit`)
    aborts it, so no object and no pending upload remain.
    """

    def __init__(self, env: S3Env, path: str, base_part_size: int) -> None:
        self._env = env
        self._path = path
        self._key = env._key(path)
        self._base = base_part_size
        self._buffer = bytearray()
        self._parts: list[dict[str, Any]] = []
        self._upload_id: str | None = None
        self._state = "open"

    def write(self, data: bytes | memoryview) -> int:
        if self._state != "open":
            raise StorageError(f"write {self._env.describe(self._path)}: writer already {self._state}")
        view = memoryview(data).cast("B")
        total = len(view)
        while view:
            room = part_size(len(self._parts) + 1, self._base) - len(self._buffer)
            if room == 0:
                self._upload_part()
                continue
            self._buffer += view[:room]
            view = view[room:]
        return total

    def commit(self) -> None:
        if self._state != "open":
            raise StorageError(f"write {self._env.describe(self._path)}: writer already {self._state}")
        try:
            if self._upload_id is None:
                self._env._call("put_object", Key=self._key, Body=self._buffer)
            else:
                self._upload_part()
                self._complete()
        except Exception as exc:
            self.abort()
            raise self._env._error(exc, self._path, "write") from exc
        self._state = "committed"
        self._buffer = bytearray()

    def abort(self) -> None:
        if self._state != "open":
            return
        self._state = "aborted"
        self._buffer = bytearray()
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

    def _upload_part(self) -> None:
        try:
            if self._upload_id is None:
                self._upload_id = self._env._call("create_multipart_upload", Key=self._key)["UploadId"]
            number = len(self._parts) + 1
            out = self._env._call(
                "upload_part",
                Key=self._key,
                UploadId=self._upload_id,
                PartNumber=number,
                Body=self._buffer,
            )
        except Exception as exc:
            raise self._env._error(exc, self._path, "write") from exc
        part = {"PartNumber": number, "ETag": out["ETag"]}
        part.update({k: out[k] for k in _CHECKSUM_FIELDS if out.get(k)})
        self._parts.append(part)
        self._buffer = bytearray()
        log.debug("%s: part %d uploaded", self._env.describe(self._path), number)

    def _complete(self) -> None:
        try:
            self._env._call(
                "complete_multipart_upload",
                Key=self._key,
                UploadId=self._upload_id,
                MultipartUpload={"Parts": self._parts},
            )
        except Exception as exc:
            # A retried completion whose first try succeeded finds the upload
            # gone; the object itself tells whether it was ours.
            if error_code(exc) != "NoSuchUpload" or not self._is_our_object():
                raise
            log.info("%s: completion response was lost, the upload had completed", self._env.describe(self._path))

    def _is_our_object(self) -> bool:
        expected = multipart_etag(self._parts)
        try:
            head = self._env._call("head_object", Key=self._key)
        except Exception:
            return False
        return expected is not None and head.get("ETag") == expected
