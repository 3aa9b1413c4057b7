"""Immutable backups on S3: every uploaded backup object under an Object Lock retention.

`ObjectLockS3Env` is an `S3Env` whose uploads (single PUTs, multipart uploads
and the conditional PUT of a meta file) carry `ObjectLockMode` and
`ObjectLockRetainUntilDate` (now + `object_lock_days`), so S3 itself refuses
to delete or overwrite that version until the date passes: a compromised host
with the backup credentials cannot destroy the backups (COMPLIANCE: nobody
can; GOVERNANCE: only a principal allowed to bypass governance retention).
The bucket must have been created with Object Lock enabled (which turns on
versioning).

Deleting stays possible for what is no longer locked, and purge and garbage
collection keep working: `delete` looks at each object's retention first,
skips the ones still locked (they are listed in `skipped_locked` and logged as
a warning), and deletes the others by version id, so no delete marker hides a
version that still takes space.  A purge thus deletes the backups whose
retention has passed and leaves the others whole and restorable.

The writer lock's leases (`rbackup.lock.d/`) are never locked: they must be
deleted when released.

Options (in `storage_options`, next to S3Env's): `object_lock_mode`
("governance" or "compliance", any case) and `object_lock_days` (> 0, may be
fractional).  Given to an `s3://` URL (and so `-o` on the command line) they
make `S3Env` an `ObjectLockS3Env`; any other `object_lock*` key is refused, so
a typo cannot leave the backups unlocked.  The bucket's Object Lock
configuration is checked before the first locked upload.
"""
from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from rbackup.env.base import check_path, refuse_unknown_options
from rbackup.env.fsspec_env import error_code, redact_url
from rbackup.errors import InvalidArgument, NotFound
from rbackup.lock import is_lock_file

from .env import S3Env

log = logging.getLogger(__name__)

MODES = ("GOVERNANCE", "COMPLIANCE")
OPTIONS = ("object_lock_mode", "object_lock_days")
_LOCKED_UPLOADS = frozenset({"put_object", "create_multipart_upload"})


@dataclass(frozen=True)
class ObjectLockSettings:
    mode: str
    days: float

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InvalidArgument(f"storage option object_lock_mode must be one of "
                                  f"{', '.join(m.lower() for m in MODES)}, got {self.mode!r}")
        if isinstance(self.days, bool) or not isinstance(self.days, (int, float)) or not 0 < self.days < 36500:
            raise InvalidArgument(f"storage option object_lock_days must be a number of days > 0 "
                                  f"(and under 100 years), got {self.days!r}")

    @classmethod
    def pop_from(cls, options: dict[str, Any], what: str) -> ObjectLockSettings:
        """Take the `object_lock_*` keys out of `options`.  A misspelt one is refused first, so
        the error names it rather than a missing `object_lock_mode` (`what`: the URL, for the message)."""
        refuse_unknown_options(what, [k for k in options if str(k).startswith("object_lock")], OPTIONS)
        mode = options.pop("object_lock_mode", None)
        days = options.pop("object_lock_days", None)
        if mode is None or days is None:
            missing = "object_lock_days" if days is None else "object_lock_mode"
            raise InvalidArgument(f"storage option {missing} is missing: Object Lock needs both "
                                  f"object_lock_mode (governance or compliance) and object_lock_days")
        if isinstance(days, str):  # from a config file or an environment variable: "30", "0.5"
            with contextlib.suppress(ValueError):  # else refused, with the value, by __post_init__
                days = float(days)
        return cls(str(mode).upper(), days)


class ObjectLockS3Env(S3Env):
    """An S3Env that puts each uploaded backup object under Object Lock retention (on s3fs's
    client: the native one does not make the retention calls)."""

    native_capable = False

    def __init__(self, url: str, *, storage_options: dict[str, Any] | None = None) -> None:
        options = dict(storage_options or {})
        self.object_lock = ObjectLockSettings.pop_from(options, redact_url(url))
        super().__init__(url, storage_options=options)
        self._skipped_lock = threading.Lock()
        self._bucket_lock = threading.Lock()
        self._bucket_checked = False
        self.skipped_locked: list[tuple[str, datetime]] = []
        """(path, retained until) of every delete skipped because the object is still locked."""

    def _call(self, method: str, **kwargs: Any) -> dict[str, Any]:
        locked = method in _LOCKED_UPLOADS and not is_lock_file(self._relative(kwargs["Key"]))
        if locked:
            self._check_bucket()
            kwargs.update(ObjectLockMode=self.object_lock.mode, ObjectLockRetainUntilDate=self._until())
        out = super()._call(method, **kwargs)
        if method == "complete_multipart_upload" and not is_lock_file(self._relative(kwargs["Key"])):
            # S3 keeps the lock given at CreateMultipartUpload; some S3-compatible stores (moto,
            # for one) drop it, so it is set again on the finished object (extending is always allowed).
            version = {"VersionId": out["VersionId"]} if out.get("VersionId") else {}
            super()._call("put_object_retention", Key=kwargs["Key"], **version,
                          Retention={"Mode": self.object_lock.mode, "RetainUntilDate": self._until()})
        return out

    def _check_bucket(self) -> None:
        """Before the first locked upload: the bucket must have Object Lock enabled.  S3 refuses
        retention on any other bucket with an obscure InvalidRequest, and some S3-compatible stores
        accept it silently without locking anything; either way the user must hear it, by bucket name."""
        with self._bucket_lock:
            if self._bucket_checked:
                return
            try:
                config = super()._call("get_object_lock_configuration").get("ObjectLockConfiguration") or {}
            except Exception as exc:
                if error_code(exc) != "ObjectLockConfigurationNotFoundError":
                    raise self._error(exc, "", "reading the Object Lock configuration of") from exc
                config = {}
            if config.get("ObjectLockEnabled") != "Enabled":
                raise InvalidArgument(
                    f"bucket {self.bucket!r} does not have Object Lock enabled, so the storage options "
                    f"object_lock_mode/object_lock_days cannot protect the backups in {self.url}: use a bucket "
                    "created with Object Lock (aws s3api create-bucket --object-lock-enabled-for-bucket)")
            self._bucket_checked = True

    def _until(self) -> datetime:
        return datetime.now(timezone.utc) + timedelta(days=self.object_lock.days)

    def _relative(self, key: str) -> str:
        """The env-relative path of an object key (the inverse of `_key`)."""
        return key[len(self._prefix.partition("/")[2]):]

    def retention(self, path: str) -> tuple[str | None, datetime | None, str | None]:
        """(mode, retain until, version id) of the current version of `path`; NotFound if absent."""
        head = self._call("head_object", Key=self._key(check_path(path)))
        until = head.get("ObjectLockRetainUntilDate")
        if head.get("ObjectLockLegalHoldStatus") == "ON":
            until = datetime.max.replace(tzinfo=timezone.utc)
        return head.get("ObjectLockMode"), until, head.get("VersionId")

    def delete(self, paths: Iterable[str]) -> None:
        """Delete what is no longer locked (by version id); skip and report the rest."""
        now = datetime.now(timezone.utc)
        deletable: list[tuple[str, str | None]] = []
        skipped: list[tuple[str, datetime]] = []
        for path in paths:
            try:
                _, until, version = self.retention(path)
            except Exception as exc:  # botocore/s3fs errors: the same mapping as every other call
                mapped = self._error(exc, path, "delete (reading retention)")
                if isinstance(mapped, NotFound):
                    continue
                raise mapped from exc
            if until is not None and until > now:
                skipped.append((path, until))
            else:
                deletable.append((path, version))
        if skipped:
            with self._skipped_lock:
                self.skipped_locked.extend(skipped)
            log.warning("%s: %d objects are still under Object Lock retention and were not deleted "
                        "(first: %s, until %s)", self.describe(), len(skipped), skipped[0][0],
                        skipped[0][1].isoformat())
        self._delete_versions(deletable)

    def _delete_versions(self, items: list[tuple[str, str | None]]) -> None:
        for start in range(0, len(items), 1000):
            batch = items[start:start + 1000]
            objects = [{"Key": self._key(p), **({"VersionId": v} if v else {})} for p, v in batch]
            try:
                out = self._call("delete_objects", Delete={"Objects": objects, "Quiet": True})
            except Exception as exc:
                raise self._error(exc, batch[0][0], "delete") from exc
            failed = [e for e in out.get("Errors") or [] if e.get("Code") != "NoSuchKey"]
            if failed:
                first = failed[0]
                raise self._error(RuntimeError(f"{first.get('Code')}: {first.get('Message')}"),
                                  batch[0][0], f"delete ({len(failed)} of {len(batch)} objects refused)")
