"""Which of S3's checksum headers the store takes, decided once per env: the one home of that rule.

S3 (and botocore since 1.36) sends a checksum with every upload: `x-amz-checksum-<alg>` with
`x-amz-sdk-checksum-algorithm` on PutObject and UploadPart, `x-amz-checksum-algorithm` and
`x-amz-checksum-type: FULL_OBJECT` on CreateMultipartUpload, the whole object's on its completion.
Many S3-compatible stores do not take them: Backblaze B2 refuses any such header, naming it
("Unsupported header 'x-amz-checksum-crc32c' received for this API call."), OVH refused with a bare
"Invalid Argument.", others know checksums but not FULL_OBJECT multipart uploads, others drop them.

So an env has two facts about its store, both on until shown otherwise:
- `checksum_headers`: uploads carry rbackup's CRC-32C (`upload.with_checksum`).  Off, they carry
  `Content-MD5` instead, which every S3 store checks (the original S3 API): a body damaged on the way
  is still refused, at ~730 MB/s of MD5 on the writer's thread (CRC-32C: ~26 GB/s; a SHA-256 payload
  signature, ~1.7 GB/s here, is checked only by stores that recompute it, not by all);
- `full_object`: multipart uploads are FULL_OBJECT ones (the store keeps the whole file's CRC-32C,
  `verify --checksum` can use it).  Off, they are composite: the parts' CRC-32Cs are still checked,
  and verify reads those files back.

They are off from the start with `request_checksum_calculation=when_required` (AWS's own name and
values: the storage option, else `AWS_REQUEST_CHECKSUM_CALCULATION`, else the AWS config file's
profile, as botocore reads them).  Otherwise the env finds out: a request refused by the store
(400/501, never a digest mismatch) that carried such headers is sent once more without them
(`fallbacks`), and if the store names a checksum header, or the request goes through without them,
the env keeps that (`adopt`) and says it once.  The retry is the same request minus those headers:
an `If-None-Match` stays, so a lost race stays lost (412), and a refused request wrote nothing.
"""
from __future__ import annotations

import base64
import hashlib
import logging
import os
import re
import threading
from dataclasses import dataclass
from typing import Any

from rbackup.env.fsspec_env import client_error_info
from rbackup.errors import InvalidArgument

from .upload import with_checksum

log = logging.getLogger(__name__)

WHEN_SUPPORTED = "when_supported"
WHEN_REQUIRED = "when_required"
CALCULATIONS = (WHEN_SUPPORTED, WHEN_REQUIRED)
OPTION = "request_checksum_calculation"
ENV_VAR = "AWS_REQUEST_CHECKSUM_CALCULATION"

BODY_CHECKSUM_PARAMS = ("ChecksumAlgorithm", "ChecksumCRC32C", "ChecksumCRC32", "ChecksumCRC64NVME", "ChecksumSHA1",
                        "ChecksumSHA256")
"""botocore's parameters that become `x-amz-sdk-checksum-algorithm` / `x-amz-checksum-*` headers."""
DIGEST_MISMATCH_CODES = frozenset({"BadDigest", "InvalidDigest", "XAmzContentChecksumMismatch",
                                   "XAmzContentSHA256Mismatch"})
"""A body that does not match its checksum: never a reason to drop the checksum."""
REFUSAL_CODES = frozenset({"InvalidArgument", "InvalidRequest", "NotImplemented", "AuthorizationHeaderMalformed",
                           "BadRequest", "400", "501"})
"""What stores answer to a header they do not take (B2, OVH, R2 before 2025, Qumulo; a HEAD's bare 400)."""
_NAMED_HEADER = re.compile(r"x-amz-(?:sdk-)?checksum-[a-z0-9-]+", re.IGNORECASE)


def content_md5(data: bytes | memoryview) -> str:
    """The `Content-MD5` of `data` (base64 of the digest), which the store checks the body against."""
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode("ascii")


def resolve_calculation(option: Any, config_file: dict[str, str]) -> tuple[str, str]:
    """(`when_supported` or `when_required`, where it came from): the storage option, else
    AWS_REQUEST_CHECKSUM_CALCULATION, else the AWS config file's profile, as botocore reads them
    (any case); else when_supported.  Any other value is an InvalidArgument naming its source."""
    for value, source in ((option, f"storage option {OPTION}"), (os.environ.get(ENV_VAR), ENV_VAR),
                          (config_file.get(OPTION), f"{OPTION} in the AWS config file")):
        if value is None or value == "":
            continue
        if str(value).lower() not in CALCULATIONS:
            raise InvalidArgument(f"{source} must be when_supported or when_required, got {value!r}")
        return str(value).lower(), source
    return WHEN_SUPPORTED, "the default"


@dataclass(frozen=True)
class Fallback:
    """A way to send a refused request again: without FULL_OBJECT, or without any checksum header."""

    what: str
    """"full_object" or "checksum_headers": the fact that turns off if the retry goes through."""
    named: str | None
    """The header the store's refusal named (then the fact is off even if the retry fails otherwise)."""


class StoreCompat:
    """What one env's store takes of the checksum headers (see the module docstring)."""

    def __init__(self, url: str, endpoint: str, calculation: str, source: str) -> None:
        self._url = url
        self._endpoint = endpoint
        self._lock = threading.Lock()
        self.checksum_headers = calculation == WHEN_SUPPORTED
        self.full_object = self.checksum_headers
        if not self.checksum_headers:
            log.debug("%s: request_checksum_calculation=when_required (%s): uploads carry Content-MD5", url, source)

    def upload_args(self, data: bytes | memoryview, crc: int | None = None) -> dict[str, str]:
        """A PUT's or part's checksum arguments: its CRC-32C (`crc` if known), or its Content-MD5."""
        return with_checksum(data, crc) if self.checksum_headers else {"ContentMD5": content_md5(data)}

    def adapt(self, method: str, params: dict[str, Any], *, checksum_headers: bool | None = None,
              full_object: bool | None = None) -> dict[str, Any]:
        """`params` of `method` as this store takes them (or as the given facts say): checksum
        arguments it does not take removed, and every body with a checksum the store checks."""
        headers = self.checksum_headers if checksum_headers is None else checksum_headers
        full = headers and (self.full_object if full_object is None else full_object)
        out = dict(params)
        if not full and method in ("create_multipart_upload", "complete_multipart_upload"):
            out.pop("ChecksumType", None)
            if method == "complete_multipart_upload":
                out.pop("ChecksumCRC32C", None)  # the whole object's, meaningful only for FULL_OBJECT
        if not headers:
            for name in BODY_CHECKSUM_PARAMS:
                out.pop(name, None)
            out.pop("ChecksumMode", None)
            if method == "complete_multipart_upload" and "MultipartUpload" in out:
                parts = [{k: v for k, v in p.items() if k not in BODY_CHECKSUM_PARAMS}
                         for p in out["MultipartUpload"]["Parts"]]
                out["MultipartUpload"] = {**out["MultipartUpload"], "Parts": parts}
        if method in ("put_object", "upload_part") and "ContentMD5" not in out and not any(
                name in out for name in BODY_CHECKSUM_PARAMS[1:]):
            data = _view(out["Body"])
            out.update(with_checksum(data) if headers else {"ContentMD5": content_md5(data)})
        return out

    def fallbacks(self, method: str, sent: dict[str, Any], exc: BaseException) -> list[Fallback]:
        """How to send `sent` again after the store refused it with `exc`, most specific first:
        none unless the refusal may be about checksum headers it carried."""
        info = client_error_info(exc) or {}
        code = str(info.get("Code") or "")
        if code in DIGEST_MISMATCH_CODES or code not in REFUSAL_CODES:
            return []
        message = str(info.get("Message") or "")
        match = _NAMED_HEADER.search(message)
        named = match.group(0).lower() if match else None
        about_type = named == "x-amz-checksum-type" or (named is None and "checksum" in message.lower())
        out: list[Fallback] = []
        if "ChecksumType" in sent and self.full_object and named in (None, "x-amz-checksum-type"):
            out.append(Fallback("full_object", "x-amz-checksum-type" if about_type else None))
            if about_type:
                return out
        if self.checksum_headers and any(k in sent for k in (*BODY_CHECKSUM_PARAMS, "ChecksumType", "ChecksumMode")):
            out.append(Fallback("checksum_headers", named))
        return out

    def retry_params(self, method: str, params: dict[str, Any], fallback: Fallback) -> dict[str, Any]:
        """`params` adapted as if `fallback`'s fact were already off."""
        if fallback.what == "full_object":
            return self.adapt(method, params, full_object=False)
        return self.adapt(method, params, checksum_headers=False)

    def adopt(self, fallback: Fallback, method: str, exc: BaseException) -> None:
        """Turn `fallback`'s fact off for the rest of the env's life, and say so once."""
        info = client_error_info(exc) or {}
        refusal = f"{info.get('Code')}: {info.get('Message')}"
        with self._lock:
            if not getattr(self, fallback.what):
                return
            setattr(self, fallback.what, False)
            if fallback.what == "checksum_headers":
                self.full_object = False
        if fallback.what == "full_object":
            log.warning("%s: the S3 store at %s refused a FULL_OBJECT multipart checksum on %s (%s); multipart "
                        "uploads go on with a CRC-32C per part (composite), and verify --checksum reads those files "
                        "back", self._url, self._endpoint, method, refusal)
        else:
            log.warning("%s: the S3 store at %s refused the checksum headers of %s (%s); uploads go on without "
                        "x-amz-checksum-* headers, each body checked by the store against its Content-MD5, and verify "
                        "--checksum reads files back. Set the storage option request_checksum_calculation="
                        "when_required (or %s, or the AWS config file's key) to skip this first refused request",
                        self._url, self._endpoint, method, refusal, ENV_VAR)


def _view(body: Any) -> bytes | memoryview:
    """A request body's bytes without a copy: bytes, a view, or an `upload.PartBody` (all of it)."""
    if isinstance(body, (bytes, memoryview)):
        return body
    if isinstance(body, bytearray):
        return memoryview(body)
    whole = getattr(body, "whole", None)
    if whole is not None:
        view: memoryview = whole()
        return view
    raise TypeError(f"cannot checksum a request body of type {type(body).__name__}")
