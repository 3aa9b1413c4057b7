"""The store's own CRC-32C of an object, used by `verify --checksum` only once the store has shown it checks it.

Every upload carries its CRC-32C (`upload.with_checksum`), and a multipart upload is a
FULL_OBJECT one whose completion carries the whole object's, so a store that keeps
checksums holds, per object, the CRC-32C of the whole file: the value RocksDB's meta
file records.  HeadObject with `ChecksumMode=ENABLED` returns it without a byte of data.

A store may also just echo what the client sent without checking it (moto does, for
multipart completions), and then the value says nothing about the bytes it holds.  So
before trusting any, the env finds out once, cheaply, whether the store checks: a few
bytes sent under a deliberately wrong CRC-32C, as a part of a multipart upload (then
aborted: no object ever appears) and as a PUT, must both be refused (BadDigest; nothing
is written).  A store that accepts either does not check, and every file is read back,
as without this.  Any other answer (no write permission, an unknown error) leaves the
question open, and open means download.

The whole-object value of a multipart upload is the writer's combination of its parts'
CRC-32Cs, each of which the store checked against the bytes it received; a store that
also checks the combination at completion (SeaweedFS, S3) only adds to that.

Even a store that checks returns no usable value for some objects: a composite
checksum (`...-N`, a multipart upload made without FULL_OBJECT, e.g. by an older
rbackup), another algorithm, or none at all (RocksDB's own BackupEngine over s3fs sends
none).  Those files are read back too.
"""
from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import threading
import uuid
from typing import TYPE_CHECKING

from rbackup.env.base import StoredChecksum
from rbackup.env.fsspec_env import error_code
from rbackup.format.checksum import crc32c

from .upload import encode_crc32c

if TYPE_CHECKING:
    from .env import S3Env

log = logging.getLogger(__name__)

DIGEST_MISMATCH_CODES = frozenset({"BadDigest", "InvalidDigest", "XAmzContentChecksumMismatch"})
"""What S3 and S3-compatible stores answer to a body that does not match its checksum."""
PROBE_BODY = b"rbackup checksum probe: this PUT carries a wrong CRC-32C and must be refused"


def decode_crc32c(value: str) -> int | None:
    """An `x-amz-checksum-crc32c` value as an int; None for anything but the 4 bytes of a
    whole-object checksum (a composite `...-N`, a malformed value)."""
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    return int.from_bytes(raw, "big") if len(raw) == 4 else None


class StoreChecksums:
    """Whether an env's store checks the CRC-32C it is sent (probed once), and each object's."""

    def __init__(self, env: S3Env) -> None:
        self._env = env
        self._lock = threading.Lock()
        self._checks: bool | None = None
        """Whether the store refused the probe's wrong CRC-32C; None until probed."""

    def checked(self) -> bool:
        """Whether the store was seen refusing a body whose CRC-32C does not match (probed once)."""
        with self._lock:
            if self._checks is None:
                # A store that refuses checksum headers keeps none of ours: nothing to probe or trust.
                self._checks = self._env.compat.checksum_headers and self._probe()
            return self._checks

    def stored_checksum(self, path: str, key: str) -> StoredChecksum | None:
        """`path`'s whole-object CRC-32C and size from one HeadObject, where the store checks
        checksums and holds a whole-object CRC-32C for it; else None."""
        if not self.checked():
            return None
        try:
            head = self._env._call("head_object", Key=key, ChecksumMode="ENABLED")
        except Exception as exc:
            raise self._env._error(exc, path, "stat") from exc
        value = head.get("ChecksumCRC32C")
        if not value or head.get("ChecksumType", "FULL_OBJECT") != "FULL_OBJECT":
            return None
        crc = decode_crc32c(value)
        return None if crc is None else StoredChecksum(int(head["ContentLength"]), crc)

    def _probe(self) -> bool:
        """Send a few bytes under a wrong CRC-32C, first as a part of a multipart upload that is then
        aborted (so no object appears even on a store that accepts it), then, only if the part was
        refused, as a PUT; both must be refused.  A PUT the store accepts is deleted at once."""
        from .env import PROBE_DIR  # env imports this module

        path = f"{PROBE_DIR}/{uuid.uuid4().hex}"
        key = self._env._key(path)
        wrong = {"ChecksumAlgorithm": "CRC32C", "ChecksumCRC32C": encode_crc32c(crc32c(PROBE_BODY) ^ 0xFFFFFFFF)}
        upload: str | None = None
        try:
            # sent as they are (`_send`): the wrong CRC-32C is the point, not a refusal to work around
            upload = self._env._send("create_multipart_upload", Key=key, ChecksumAlgorithm="CRC32C")["UploadId"]
            self._env._send("upload_part", Key=key, UploadId=upload, PartNumber=1, Body=PROBE_BODY, **wrong)
            what = "a part"
        except Exception as exc:
            if not self._refused(exc):
                return False
            what = ""
        finally:
            if upload is not None:
                with contextlib.suppress(Exception):
                    self._env._call("abort_multipart_upload", Key=key, UploadId=upload)
        if not what:
            try:
                self._env._send("put_object", Key=key, Body=PROBE_BODY, **wrong)
                what = "a PUT"
            except Exception as exc:
                return self._refused(exc)
            with contextlib.suppress(Exception):
                self._env.delete([path])
        log.info("%s: the store accepted %s with a wrong CRC-32C, so its checksums are not used; verify "
                 "--checksum reads every file back", self._env.url, what)
        return False

    def _refused(self, exc: BaseException) -> bool:
        """Whether the probe's request failed because its checksum did not match (else it is unknown)."""
        code = error_code(exc)
        if code in DIGEST_MISMATCH_CODES:
            log.debug("%s: the store refuses a wrong CRC-32C (%s)", self._env.url, code)
            return True
        log.info("%s: could not find out whether the store checks CRC-32C (%s: %s); verify --checksum reads "
                 "every file back", self._env.url, code or type(exc).__name__, exc)
        return False
