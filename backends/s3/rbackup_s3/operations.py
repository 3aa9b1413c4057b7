"""The S3 API calls rbackup makes, as botocore-shaped calls on blocking connections.

`NativeS3.call(method, **params)` takes the operation names and parameters the env
passes to s3fs's `call_s3` (put_object, head_object, multipart uploads, delete_objects)
and returns the same keys botocore's parsed responses have, so the env, its writers and
its probes run unchanged on either client; `list_objects` pages through ListObjectsV2
with continuation tokens (keys URL-encoded on the wire and decoded, as botocore does).
Bodies of PUTs and parts are sent from their buffers as they are, with the CRC-32C or
Content-MD5 header the env gives them; they are signed UNSIGNED-PAYLOAD (the store checks that
signed checksum) unless
`payload_signing_enabled` asks for SHA-256, while the small XML bodies are always hashed.
"""
from __future__ import annotations

import base64
import hashlib
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote_plus
from xml.sax.saxutils import escape

from .direct import DirectClient, Response, S3Error
from .signing import UNSIGNED_PAYLOAD

S3_XMLNS = "http://s3.amazonaws.com/doc/2006-03-01/"
_HEADER_FIELDS = {
    "ETag": "etag", "VersionId": "x-amz-version-id", "ChecksumCRC32C": "x-amz-checksum-crc32c",
    "ChecksumCRC32": "x-amz-checksum-crc32", "ChecksumCRC64NVME": "x-amz-checksum-crc64nvme",
    "ChecksumSHA1": "x-amz-checksum-sha1", "ChecksumSHA256": "x-amz-checksum-sha256",
    "ChecksumType": "x-amz-checksum-type", "LastModified": "last-modified", "ContentType": "content-type",
}
"""Response headers as botocore names them in its parsed responses."""


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _children(element: ET.Element) -> dict[str, str]:
    """An element's leaf children by local name (namespace or not)."""
    return {_local(child.tag): child.text or "" for child in element}


class NativeS3:
    """rbackup's S3 calls on one bucket over a `DirectClient`."""

    def __init__(self, client: DirectClient, bucket: str, *, sign_payload: bool) -> None:
        self._client = client
        self._bucket = bucket
        self._sign_payload = sign_payload

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """The operation `method` (botocore's snake_case name) with botocore's parameter names."""
        params.pop("Bucket", None)
        handler = getattr(self, f"_{method}", None)
        if handler is None:
            raise NotImplementedError(f"S3 operation {method} is not part of rbackup's native client")
        result: dict[str, Any] = handler(**params)
        return result

    # -- objects -------------------------------------------------------------------
    def _head_object(self, Key: str, ChecksumMode: str | None = None) -> dict[str, Any]:
        headers = {"x-amz-checksum-mode": ChecksumMode} if ChecksumMode else {}
        response = self._client.request("HeadObject", "HEAD", Key, headers=headers)
        out = self._from_headers(response)
        out["ContentLength"] = int(response.headers.get("content-length", 0))
        return out

    def _put_object(self, Key: str, Body: Any, ChecksumAlgorithm: str | None = None,
                    ChecksumCRC32C: str | None = None, ContentMD5: str | None = None,
                    IfNoneMatch: str | None = None) -> dict[str, Any]:
        data = _bytes_of(Body)
        headers = self._checksum_headers(ChecksumAlgorithm, ChecksumCRC32C, ContentMD5)
        if IfNoneMatch:
            headers["If-None-Match"] = IfNoneMatch
        return self._from_headers(self._client.request("PutObject", "PUT", Key, headers=headers, body=data,
                                                       payload_hash=self._payload_hash(data)))

    def _create_multipart_upload(self, Key: str, ChecksumAlgorithm: str | None = None,
                                 ChecksumType: str | None = None) -> dict[str, Any]:
        headers = {}
        if ChecksumAlgorithm:
            headers["x-amz-checksum-algorithm"] = ChecksumAlgorithm
        if ChecksumType:
            headers["x-amz-checksum-type"] = ChecksumType
        response = self._client.request("CreateMultipartUpload", "POST", Key, query={"uploads": ""},
                                        headers=headers)
        fields = _children(self._xml(response, "CreateMultipartUpload", Key))
        if not fields.get("UploadId"):
            raise _malformed("CreateMultipartUpload", Key, self._bucket, "no UploadId")
        return {"UploadId": fields["UploadId"]}

    def _upload_part(self, Key: str, UploadId: str, PartNumber: int, Body: Any,
                     ChecksumAlgorithm: str | None = None, ChecksumCRC32C: str | None = None,
                     ContentMD5: str | None = None) -> dict[str, Any]:
        data = _bytes_of(Body)
        response = self._client.request(
            "UploadPart", "PUT", Key, query={"partNumber": str(PartNumber), "uploadId": UploadId},
            headers=self._checksum_headers(ChecksumAlgorithm, ChecksumCRC32C, ContentMD5), body=data,
            payload_hash=self._payload_hash(data))
        return self._from_headers(response)

    def _complete_multipart_upload(self, Key: str, UploadId: str, MultipartUpload: dict[str, Any],
                                   ChecksumCRC32C: str | None = None, ChecksumType: str | None = None,
                                   IfNoneMatch: str | None = None) -> dict[str, Any]:
        parts = "".join(
            "<Part>" + "".join(f"<{name}>{escape(str(part[name]))}</{name}>"
                               for name in ("ETag", "ChecksumCRC32", "ChecksumCRC32C", "ChecksumCRC64NVME",
                                            "ChecksumSHA1", "ChecksumSHA256", "PartNumber") if name in part)
            + "</Part>" for part in MultipartUpload["Parts"])
        body = f'<CompleteMultipartUpload xmlns="{S3_XMLNS}">{parts}</CompleteMultipartUpload>'.encode()
        headers = {"Content-Type": "application/xml"}
        if ChecksumCRC32C:
            headers["x-amz-checksum-crc32c"] = ChecksumCRC32C
        if ChecksumType:
            headers["x-amz-checksum-type"] = ChecksumType
        if IfNoneMatch:
            headers["If-None-Match"] = IfNoneMatch
        response = self._client.request("CompleteMultipartUpload", "POST", Key, query={"uploadId": UploadId},
                                        headers=headers, body=body, payload_hash=hashlib.sha256(body).hexdigest())
        out = self._from_headers(response)
        out.update(_children(self._xml(response, "CompleteMultipartUpload", Key)))
        return out

    def _abort_multipart_upload(self, Key: str, UploadId: str) -> dict[str, Any]:
        self._client.request("AbortMultipartUpload", "DELETE", Key, query={"uploadId": UploadId})
        return {}

    def _delete_objects(self, Delete: dict[str, Any]) -> dict[str, Any]:
        objects = "".join(f"<Object><Key>{escape(o['Key'])}</Key></Object>" for o in Delete["Objects"])
        quiet = "<Quiet>true</Quiet>" if Delete.get("Quiet") else ""
        body = f'<Delete xmlns="{S3_XMLNS}">{objects}{quiet}</Delete>'.encode()
        headers = {"Content-Type": "application/xml",
                   "Content-MD5": base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode()}
        response = self._client.request("DeleteObjects", "POST", query={"delete": ""}, headers=headers, body=body,
                                        payload_hash=hashlib.sha256(body).hexdigest())
        root = self._xml(response, "DeleteObjects", "")
        out: dict[str, Any] = {"Deleted": [], "Errors": []}
        for child in root:
            name = _local(child.tag)
            if name in ("Deleted", "Error"):
                out["Deleted" if name == "Deleted" else "Errors"].append(_children(child))
        return out

    # -- listings ------------------------------------------------------------------
    def list_objects(self, prefix: str) -> Iterator[dict[str, str]]:
        """Every object under `prefix` (Key, Size, ETag...), page after page."""
        query = {"list-type": "2", "prefix": prefix, "encoding-type": "url"}
        while True:
            response = self._client.request("ListObjectsV2", "GET", query=query)
            root = self._xml(response, "ListObjectsV2", prefix)
            top = _children(root)
            encoded = top.get("EncodingType") == "url"
            for child in root:
                if _local(child.tag) == "Contents":
                    item = _children(child)
                    if encoded:
                        item["Key"] = unquote_plus(item["Key"])
                    yield item
            if top.get("IsTruncated", "false").lower() != "true":
                return
            token = top.get("NextContinuationToken")
            if not token:
                raise _malformed("ListObjectsV2", prefix, self._bucket, "a truncated listing without a token")
            query = {**query, "continuation-token": token}

    # -- helpers -------------------------------------------------------------------
    def _payload_hash(self, data: bytes | memoryview) -> str:
        return hashlib.sha256(data).hexdigest() if self._sign_payload else UNSIGNED_PAYLOAD

    @staticmethod
    def _checksum_headers(algorithm: str | None, crc32c: str | None, md5: str | None) -> dict[str, str]:
        """A body's checksum headers, as botocore serialises the parameters: the env gives every body
        one the store takes (`compat.StoreCompat.adapt`), so that none goes unsigned and unchecked."""
        headers = {"x-amz-sdk-checksum-algorithm": algorithm} if algorithm else {}
        if crc32c:
            headers["x-amz-checksum-crc32c"] = crc32c
        if md5:
            headers["Content-MD5"] = md5
        return headers

    @staticmethod
    def _from_headers(response: Response) -> dict[str, Any]:
        return {name: response.headers[header] for name, header in _HEADER_FIELDS.items()
                if header in response.headers}

    def _xml(self, response: Response, operation: str, key: str) -> ET.Element:
        """The response's XML document (an <Error> one was raised by `DirectClient.request`)."""
        try:
            return ET.fromstring(response.data)
        except ET.ParseError as exc:
            raise _malformed(operation, key, self._bucket, f"unparsable XML ({exc})") from exc


def _bytes_of(body: Any) -> bytes | memoryview:
    """A request body as bytes or a read-only view, without a copy (`upload.PartBody` or bytes)."""
    if isinstance(body, (bytes, bytearray, memoryview)):
        return body if not isinstance(body, bytearray) else memoryview(body)
    remaining = getattr(body, "remaining", None)
    if remaining is not None:
        view: memoryview = remaining()
        return view
    data: bytes = body.read()
    return data


def _malformed(operation: str, key: str, bucket: str, what: str) -> S3Error:
    return S3Error({"Error": {"Code": "MalformedResponse", "Message": f"the store sent {what}", "Key": key,
                              "BucketName": bucket}, "ResponseMetadata": {"HTTPStatusCode": 200}}, operation)
