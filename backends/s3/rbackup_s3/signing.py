"""Where an S3 request goes and how it is signed, without s3fs or botocore's client.

`native_config` reads an env's s3fs storage options (and the AWS_* environment, and the
profile's section of the AWS config file) and returns a `NativeConfig` when every option is
one this module resolves exactly as s3fs and botocore would, else the reason it cannot (the
env then keeps the s3fs client).  Served here: an endpoint from the options or
AWS_ENDPOINT_URL(_S3), path-style addressing (botocore's choice for a custom endpoint unless
told `virtual`), region, TLS verification, timeouts, SigV4 in headers (`sign`), and
credentials (`CredentialSource`): explicit key/secret/token, the AWS_* variables, and
anything else (profiles, credential_process, SSO, IMDS...) from `botocore.credentials`,
imported only then.
"""
from __future__ import annotations

import configparser
import datetime
import hashlib
import hmac
import logging
import os
import ssl
import threading
import urllib.request
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

log = logging.getLogger(__name__)

UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
DEFAULT_TIMEOUT = 60.0
"""botocore's connect and read timeouts."""

HARMLESS_OPTIONS = frozenset({
    "key", "secret", "token", "username", "password", "anon", "endpoint_url", "client_kwargs", "config_kwargs",
    "use_ssl", "default_block_size", "default_fill_cache", "default_cache_type", "listings_expiry_time",
    "max_paths", "max_concurrency", "batch_size", "fixed_upload_size", "local_expiry_check",
})
"""s3fs options the native client serves (the rest only tune s3fs's own files and caches)."""
CLIENT_KWARGS = frozenset({"endpoint_url", "region_name", "aws_access_key_id", "aws_secret_access_key",
                           "aws_session_token", "verify", "use_ssl"})
CONFIG_KWARGS = frozenset({"retries", "max_pool_connections", "connect_timeout", "read_timeout", "region_name",
                           "signature_version", "s3"})
CONFIG_FILE_KEYS = frozenset({
    "region", "output", "aws_access_key_id", "aws_secret_access_key", "aws_session_token", "role_arn",
    "source_profile", "credential_source", "credential_process", "role_session_name", "duration_seconds",
    "external_id", "mfa_serial", "web_identity_token_file", "sso_session", "sso_account_id", "sso_role_name",
    "sso_region", "sso_start_url", "sso_registration_scopes", "retry_mode", "max_attempts", "endpoint_url",
    "services", "ca_bundle", "request_checksum_calculation", "response_checksum_validation", "cli_pager",
    "cli_timestamp_format", "cli_binary_format", "cli_history", "cli_auto_prompt", "login_session",
})
"""Settings of an AWS config file's profile that do not change how an S3 request is made once
the endpoint is explicit (credentials are botocore's, a ca_bundle is read here, and
request_checksum_calculation by `compat.resolve_calculation` for both clients alike)."""


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str
    token: str | None = None


class CredentialSource:
    """The credentials each request is signed with: fixed ones, none (`anon`), or botocore's
    resolver chain (AWS_PROFILE's profile, credential_process, SSO, IMDS...), imported on first
    use and asked at every request (its refreshable credentials renew themselves before they
    expire)."""

    def __init__(self, fixed: Credentials | None, *, anon: bool = False) -> None:
        self._fixed = fixed
        self._anon = anon
        self._lock = threading.Lock()
        self._resolved: Any = None

    def get(self) -> Credentials | None:
        """The credentials now (None: send the request unsigned)."""
        if self._anon:
            return None
        if self._fixed is not None:
            return self._fixed
        with self._lock:
            if self._resolved is None:
                import botocore.session  # profiles, credential_process, SSO, IMDS...: only when needed

                session = botocore.session.Session()
                resolved = session.get_credentials()
                if resolved is None:
                    from botocore.exceptions import NoCredentialsError

                    raise NoCredentialsError()
                self._resolved = resolved
        frozen = self._resolved.get_frozen_credentials()
        return Credentials(frozen.access_key, frozen.secret_key, frozen.token)


@dataclass(frozen=True)
class NativeConfig:
    """Everything a native request needs, resolved once per env."""

    scheme: str
    netloc: str
    base_path: str
    """The endpoint's own path ("" or "/base"), before the bucket."""
    region: str
    credentials: CredentialSource
    ssl_context: ssl.SSLContext | None
    connect_timeout: float
    read_timeout: float
    sign_payload: bool
    """SHA-256 every body (payload_signing_enabled=True); else UNSIGNED-PAYLOAD."""

    def path(self, bucket: str, key: str = "") -> str:
        """The request path of `key` in `bucket` (path style), percent-encoded as botocore does:
        everything but unreserved characters and '/' ('+', ' ', '%', '?' and non-ASCII included)."""
        return f"{self.base_path}/{quote(bucket, safe='')}" + (f"/{quote(key, safe='/~')}" if key else "/")


def canonical_query(query: dict[str, str]) -> str:
    """The query string, sorted and encoded as SigV4 wants it (also what is sent)."""
    return "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(query.items()))


def sign(method: str, netloc: str, path: str, query: str, headers: dict[str, str], payload_hash: str,
         credentials: Credentials | None, region: str, now: datetime.datetime | None = None) -> dict[str, str]:
    """`headers` with Host and, given credentials, SigV4's headers (x-amz-date,
    x-amz-content-sha256, x-amz-security-token, Authorization) for this request."""
    out = {"Host": netloc, **headers}
    if credentials is None:
        return out
    stamp = (now or datetime.datetime.now(datetime.timezone.utc)).strftime("%Y%m%dT%H%M%SZ")
    out["X-Amz-Date"] = stamp
    out["X-Amz-Content-SHA256"] = payload_hash
    if credentials.token:
        out["X-Amz-Security-Token"] = credentials.token
    signed = {k.lower(): " ".join(str(v).split()) for k, v in out.items()}
    names = ";".join(sorted(signed))
    canonical = "\n".join([method, path, query, "".join(f"{k}:{signed[k]}\n" for k in sorted(signed)), names,
                           payload_hash])
    scope = f"{stamp[:8]}/{region}/s3/aws4_request"
    to_sign = f"AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
    key = f"AWS4{credentials.secret_key}".encode()
    for part in (stamp[:8], region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    out["Authorization"] = (f"AWS4-HMAC-SHA256 Credential={credentials.access_key}/{scope}, "
                            f"SignedHeaders={names}, Signature={signature}")
    return out


def native_config(options: dict[str, Any]) -> NativeConfig | str:
    """The native client's configuration for these s3fs options, or why they need s3fs's client."""
    unknown = sorted(set(options) - HARMLESS_OPTIONS)
    if unknown:
        return f"the storage option(s) {unknown}"
    if options.get("anon") not in (None, False, True):
        return "a non-boolean anon"
    client = dict(options.get("client_kwargs") or {})
    config = dict(options.get("config_kwargs") or {})
    for name, given, known in (("client_kwargs", client, CLIENT_KWARGS), ("config_kwargs", config, CONFIG_KWARGS)):
        if set(given) - known:
            return f"{name} {sorted(set(given) - known)}"
    if config.get("signature_version") not in (None, "s3v4", "v4"):
        return f"signature version {config.get('signature_version')}"
    s3 = dict(config.get("s3") or {})
    if set(s3) - {"addressing_style", "payload_signing_enabled"}:
        return f"config_kwargs s3 {sorted(set(s3) - {'addressing_style', 'payload_signing_enabled'})}"
    if s3.get("addressing_style") not in (None, "auto", "path"):
        return f"addressing style {s3.get('addressing_style')}"
    if options.get("endpoint_url") and client.get("endpoint_url") and options["endpoint_url"] != client[
            "endpoint_url"]:
        return "two different endpoint_url options"
    section, reason = _config_file_section()
    if reason:
        return reason
    endpoint = options.get("endpoint_url") or client.get("endpoint_url")
    if not endpoint and os.environ.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "").lower() != "true":
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if not endpoint:
        return "AWS's own endpoints (regions, redirects, virtual hosts)"
    parts = urlsplit(str(endpoint))
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"the endpoint {endpoint}"
    if parts.query or parts.fragment or parts.username or parts.password:
        return f"the endpoint {endpoint}"
    proxies = urllib.request.getproxies()
    if proxies.get(parts.scheme) and not urllib.request.proxy_bypass(parts.hostname):
        return "a proxy"
    credentials, reason = _credentials(options, client)
    if reason:
        return reason
    assert credentials is not None
    region = (client.get("region_name") or config.get("region_name") or os.environ.get("AWS_DEFAULT_REGION")
              or section.get("region") or "us-east-1")
    context = None
    if parts.scheme == "https":
        verify = client.get("verify", True)
        if verify is None:
            verify = True
        if verify is True:
            verify = os.environ.get("AWS_CA_BUNDLE") or section.get("ca_bundle") or True
        context = _ssl_context(verify)
    return NativeConfig(
        scheme=parts.scheme, netloc=parts.netloc, base_path=parts.path.rstrip("/"), region=str(region),
        credentials=credentials, ssl_context=context,
        connect_timeout=float(config.get("connect_timeout") or DEFAULT_TIMEOUT),
        read_timeout=float(config.get("read_timeout") or DEFAULT_TIMEOUT),
        sign_payload=bool(s3.get("payload_signing_enabled", False)),
    )


def _credentials(options: dict[str, Any], client: dict[str, Any]) -> tuple[CredentialSource | None, str | None]:
    """As s3fs and botocore choose: anon; explicit key and secret (token optional); else
    AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (botocore's first provider, whatever AWS_PROFILE
    says); else botocore's chain (config files, credential_process, SSO, IMDS...)."""
    if options.get("anon"):
        return CredentialSource(None, anon=True), None
    key = options.get("key") or options.get("username") or client.get("aws_access_key_id")
    secret = options.get("secret") or options.get("password") or client.get("aws_secret_access_key")
    token = options.get("token") or client.get("aws_session_token")
    if key and secret:
        return CredentialSource(Credentials(str(key), str(secret), token and str(token))), None
    if key or secret or token:
        return None, "partial credentials in the options"
    env_key, env_secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if env_key and env_secret:
        env_token = os.environ.get("AWS_SESSION_TOKEN") or os.environ.get("AWS_SECURITY_TOKEN") or None
        return CredentialSource(Credentials(env_key, env_secret, env_token)), None
    return CredentialSource(None), None


def _config_file_section() -> tuple[dict[str, str], str | None]:
    """The profile's settings in the AWS config file ({} if none), or why one needs botocore."""
    section, where, error = _profile_section()
    if error:
        return {}, f"an AWS config file botocore must read ({error})"
    odd = sorted(set(section) - CONFIG_FILE_KEYS)
    if odd:
        return {}, f"the setting(s) {odd} of {where}"
    return section, None


def profile_setting(key: str) -> str | None:
    """One setting of the profile in the AWS config file, as botocore would read it (None if absent
    or unreadable: botocore then reports the file itself)."""
    return _profile_section()[0].get(key)


def _profile_section() -> tuple[dict[str, str], str, str | None]:
    """(the profile's settings in the AWS config file, which profile of which file, why it could not be
    read): AWS_CONFIG_FILE or ~/.aws/config, profile AWS_DEFAULT_PROFILE / AWS_PROFILE / default."""
    path = os.path.expanduser(os.environ.get("AWS_CONFIG_FILE") or "~/.aws/config")
    name = os.environ.get("AWS_DEFAULT_PROFILE") or os.environ.get("AWS_PROFILE") or "default"
    where = f"profile {name!r} in {path}"
    if not os.path.isfile(path):
        return {}, where, None
    parser = configparser.RawConfigParser()
    try:
        parser.read(path)
    except configparser.Error as exc:
        return {}, where, exc.__class__.__name__
    for title in (f"profile {name}", name) if name != "default" else ("default", "profile default"):
        if parser.has_section(title):
            return dict(parser.items(title)), where, None
    return {}, where, None


def _ssl_context(verify: Any) -> ssl.SSLContext:
    """TLS as botocore verifies it: a CA bundle path, off (verify=False), else certifi's bundle
    where installed (botocore's default), else the system's."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if verify is False:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif isinstance(verify, str):
        context.load_verify_locations(verify)
    else:
        try:
            import certifi

            context.load_verify_locations(certifi.where())
        except ImportError:
            context.load_default_certs()
    return context
