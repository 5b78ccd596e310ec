"""Result delivery: the S3 settings, and handing the audio back inline (base64) or as a presigned S3 URL.

Owns the S3 client (one per worker, created on first use), the object key naming, the inline size limit, and
turning every S3/botocore failure into a `DeliveryError` that names the bucket and the S3 error code. It never
falls back silently: an upload that fails is an error, not a base64 result or a file on the worker's disk.

S3 settings (read once by `S3Config.from_env`; RunPod's names first, the older S3_* names as fallbacks):

    BUCKET_ENDPOINT_URL      | S3_ENDPOINT    endpoint, optionally naming the bucket (see below)
    BUCKET_ACCESS_KEY_ID     | S3_ACCESS_KEY
    BUCKET_SECRET_ACCESS_KEY | S3_SECRET_KEY
    S3_BUCKET                | BUCKET_NAME    bucket; wins over a bucket named in the endpoint URL
    S3_REGION                                 default: from an amazonaws.com host, else us-east-1
    S3_KEY_PREFIX                             default "tts-output/"
    S3_URL_EXPIRY_SECONDS                     presigned URL lifetime, default 3600, at most 7 days

The endpoint URL may name the bucket, as RunPod's own `rp_upload` convention has it, in either form:

    https://my-bucket.s3.us-west-2.amazonaws.com   AWS virtual-hosted: bucket and region from the host
    https://minio.example.com:9000/my-bucket       any S3-compatible service: the bucket is the path

With no endpoint at all, S3_BUCKET is on AWS in S3_REGION. AWS is addressed virtual-hosted, through the
regional endpoint; other hosts (R2, B2, Spaces, MinIO, ...) are used as given, with path-style addressing.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from audio.errors import DeliveryError, InputError, PayloadTooLargeError, quoted

log = logging.getLogger(__name__)

MODES = ("auto", "base64", "s3")
DEFAULT_KEY_PREFIX = "tts-output/"
DEFAULT_URL_EXPIRY_S = 3600
MAX_URL_EXPIRY_S = 7 * 24 * 3600  # the SigV4 limit for a presigned URL
DEFAULT_REGION = "us-east-1"

# Object-key extension per output format where it differs from the format name.
_EXTENSIONS = {"opus": "ogg"}

# bucket.s3.region.amazonaws.com, bucket.s3-region.amazonaws.com (legacy), bucket.s3.amazonaws.com (global),
# and the same without the bucket.
_AWS_HOST = re.compile(
    r"(?:(?P<bucket>[a-z0-9][a-z0-9.-]*)\.)?s3(?:[.-](?P<region>[a-z]{2}(?:-[a-z]+)+-\d+))?"
    r"\.amazonaws\.com"
)

_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9._-]")

_S3_VARIABLES = "BUCKET_ENDPOINT_URL, BUCKET_ACCESS_KEY_ID and BUCKET_SECRET_ACCESS_KEY"


def _first(env: Mapping[str, str], *names: str) -> tuple[str, str] | None:
    """The first of `names` set to a non-blank value, as (name, stripped value)."""
    for name in names:
        value = (env.get(name) or "").strip()
        if value:
            return name, value
    return None


def _split_endpoint(variable: str, url: str, region: str | None) -> tuple[str, str | None, str | None]:
    """(service endpoint URL, bucket named in the URL or None, region) for an endpoint variable's value."""
    parts = urlsplit(url)
    # The value is not echoed in these messages: a URL can carry user:password.
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{variable} must be an http(s) URL such as https://s3.example.com/my-bucket")
    segments = [s for s in parts.path.split("/") if s]
    if len(segments) > 1:
        raise ValueError(f"{variable} may name only the bucket in its path (https://host/bucket)")
    path_bucket = segments[0] if segments else None
    aws = _AWS_HOST.fullmatch(parts.hostname.lower())
    if aws:
        region = region or aws["region"] or DEFAULT_REGION
        # Normalised to the regional endpoint so presigned URLs point at the bucket's own region.
        return f"{parts.scheme}://s3.{region}.amazonaws.com", path_bucket or aws["bucket"], region
    return f"{parts.scheme}://{parts.netloc}", path_bucket, region


def _is_aws(endpoint_url: str) -> bool:
    host = urlsplit(endpoint_url).hostname
    return bool(host and _AWS_HOST.fullmatch(host.lower()))


@dataclass(frozen=True)
class S3Config:
    bucket: str
    endpoint_url: str | None
    access_key_id: str
    secret_access_key: str = field(repr=False)
    region: str | None
    key_prefix: str = DEFAULT_KEY_PREFIX
    url_expiry_s: int = DEFAULT_URL_EXPIRY_S

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> S3Config | None:
        """The S3 settings; None when no endpoint, key, secret or bucket variable is set; ValueError naming
        what is missing when only some are."""
        endpoint = _first(env, "BUCKET_ENDPOINT_URL", "S3_ENDPOINT")
        access = _first(env, "BUCKET_ACCESS_KEY_ID", "S3_ACCESS_KEY")
        secret = _first(env, "BUCKET_SECRET_ACCESS_KEY", "S3_SECRET_KEY")
        bucket = _first(env, "S3_BUCKET", "BUCKET_NAME")
        region_var = _first(env, "S3_REGION")
        given = [item[0] for item in (endpoint, access, secret, bucket) if item]
        if not given:
            return None
        partly = f"S3 is partly configured ({', '.join(given)} set)"
        if access is None:
            raise ValueError(f"{partly}: BUCKET_ACCESS_KEY_ID (or S3_ACCESS_KEY) is not set")
        if secret is None:
            raise ValueError(f"{partly}: BUCKET_SECRET_ACCESS_KEY (or S3_SECRET_KEY) is not set")

        region = region_var[1] if region_var else None
        endpoint_url = url_bucket = None
        if endpoint:
            endpoint_url, url_bucket, region = _split_endpoint(endpoint[0], endpoint[1], region)
        bucket_name = bucket[1] if bucket else url_bucket
        if not bucket_name:
            raise ValueError(
                f"{partly}: no bucket. Set S3_BUCKET (or BUCKET_NAME), or name the bucket in "
                "BUCKET_ENDPOINT_URL as https://<bucket>.s3.<region>.amazonaws.com or https://<host>/<bucket>"
            )

        expiry_raw = (env.get("S3_URL_EXPIRY_SECONDS") or "").strip()
        try:
            expiry = int(expiry_raw) if expiry_raw else DEFAULT_URL_EXPIRY_S
        except ValueError:
            raise ValueError(f"S3_URL_EXPIRY_SECONDS must be an integer, got {expiry_raw!r}") from None
        if not 1 <= expiry <= MAX_URL_EXPIRY_S:
            raise ValueError(f"S3_URL_EXPIRY_SECONDS must be between 1 and {MAX_URL_EXPIRY_S}, got {expiry}")

        prefix = env.get("S3_KEY_PREFIX")
        prefix = DEFAULT_KEY_PREFIX if prefix is None else prefix.strip().lstrip("/")
        # "tts-output" and "tts-output/" both mean the folder; a leading "/" would make an empty path segment.
        if prefix and not prefix.endswith("/"):
            prefix += "/"

        return cls(
            bucket=bucket_name,
            endpoint_url=endpoint_url,
            access_key_id=access[1],
            secret_access_key=secret[1],
            region=region,
            key_prefix=prefix,
            url_expiry_s=expiry,
        )


def object_key(prefix: str, job_id: str, fmt: str, item: int | None = None) -> str:
    """`{prefix}{job_id}.{ext}`, the job id reduced to [A-Za-z0-9._-] with no leading dot; one item of a
    `join: false` job is `{prefix}{job_id}/{item}.{ext}`."""
    safe = _UNSAFE_KEY_CHARS.sub("_", job_id).lstrip(".")[:128]
    if not safe or safe != job_id:
        # Two ids that differ only in replaced characters must not overwrite each other's audio.
        safe = f"{safe or 'job'}-{hashlib.sha256(job_id.encode()).hexdigest()[:12]}"
    fmt = fmt.lower()
    name = safe if item is None else f"{safe}/{item}"
    return f"{prefix}{name}.{_EXTENSIONS.get(fmt, fmt)}"


def _base64_size(n: int) -> int:
    return 4 * ((n + 2) // 3)


class Deliverer:
    """Delivers one job's audio. Thread-safe; holds the worker's single S3 client."""

    def __init__(
        self,
        s3: S3Config | None,
        max_inline_bytes: int,
        *,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 60.0,
        max_attempts: int = 4,
    ):
        self._s3 = s3
        self._max_inline_bytes = max_inline_bytes
        self._connect_timeout_s = connect_timeout_s
        self._read_timeout_s = read_timeout_s
        self._max_attempts = max_attempts
        self._client: Any = None
        self._client_lock = threading.Lock()

    @property
    def s3_configured(self) -> bool:
        return self._s3 is not None

    def check_mode(self, mode: str) -> None:
        """Raise the InputError `deliver` would for this mode, before any audio is generated."""
        if mode not in MODES:
            raise InputError(f"delivery must be one of {', '.join(MODES)}, got {quoted(mode)}")
        if mode == "s3" and self._s3 is None:
            raise InputError(
                f'delivery "s3" needs S3 configured on the worker: set {_S3_VARIABLES} (or S3_BUCKET, '
                'S3_ACCESS_KEY and S3_SECRET_KEY); or use delivery "base64"'
            )

    def check_inline_floor(self, size_bytes: int, mode: str) -> None:
        """Raise the PayloadTooLargeError `deliver` would, before any audio is made, for a result known to be at
        least `size_bytes` that would go inline."""
        if self._s3 is not None and mode in ("s3", "auto"):
            return
        self._check_inline(_base64_size(size_bytes))

    def deliver(self, audio: bytes, *, fmt: str, content_type: str, job_id: str, mode: str) -> dict:
        """`{"audio_base64": ...}` or `{"audio_url": presigned GET URL}` for `mode` base64, s3 or auto."""
        self.check_mode(mode)
        if self._s3 is not None and mode in ("s3", "auto"):
            key = object_key(self._s3.key_prefix, job_id, fmt)
            return {"audio_url": self._upload(self._s3, audio, content_type=content_type, key=key)}
        self._check_inline(_base64_size(len(audio)))
        return {"audio_base64": base64.b64encode(audio).decode("ascii")}

    def deliver_items(self, audios: list[bytes], *, fmt: str, content_type: str, job_id: str, mode: str) -> list[dict]:
        """`deliver` for each item of a `join: false` job: S3 objects `{prefix}{job_id}/{i}.{ext}`, or base64
        under the inline limit for all of them together (they travel in one response)."""
        self.check_mode(mode)
        if self._s3 is not None and mode in ("s3", "auto"):
            keys = [object_key(self._s3.key_prefix, job_id, fmt, item=i) for i in range(len(audios))]
            return [
                {"audio_url": self._upload(self._s3, audio, content_type=content_type, key=key)}
                for audio, key in zip(audios, keys, strict=True)
            ]
        self._check_inline(sum(_base64_size(len(a)) for a in audios), items=len(audios))
        return [{"audio_base64": base64.b64encode(a).decode("ascii")} for a in audios]

    def _check_inline(self, size: int, items: int = 1) -> None:
        # Checked before encoding, so an oversized result is never built.
        if size > self._max_inline_bytes:
            if self._s3 is not None:
                fix = 'Use delivery "s3" (S3 is configured on this worker)'
            else:
                fix = f'Configure S3 on the worker (set {_S3_VARIABLES}) and use delivery "s3"'
            what = "The audio is" if items == 1 else f"The {items} audio items are together"
            raise PayloadTooLargeError(
                f"{what} {size} bytes as base64, over this worker's inline limit of "
                f'{self._max_inline_bytes} bytes. {fix}, or ask for a compressed output_format ("mp3" or '
                '"opus"), or send shorter text.'
            )

    def _upload(self, s3: S3Config, audio: bytes, *, content_type: str, key: str) -> str:
        try:
            client = self._get_client(s3)
            client.put_object(Bucket=s3.bucket, Key=key, Body=audio, ContentType=content_type)
            url = client.generate_presigned_url(
                "get_object", Params={"Bucket": s3.bucket, "Key": key}, ExpiresIn=s3.url_expiry_s
            )
        except ClientError as e:
            error = e.response.get("Error", {})
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            code = error.get("Code") or "UnknownError"
            detail = _scrub(str(error.get("Message") or ""), s3)
            raise DeliveryError(
                f'Uploading the audio to S3 bucket "{s3.bucket}" failed: {code}'
                + (f" (HTTP {status})" if status else "")
                + (f": {detail}" if detail else "")
            ) from None
        except (BotoCoreError, ValueError) as e:
            # BotoCoreError covers EndpointConnectionError, timeouts, NoCredentialsError, ...; ValueError is
            # what botocore raises for an endpoint URL it can't use. `from None`: the chained botocore
            # exception carries request details that have no place in the worker's logs.
            detail = _scrub(str(e), s3)
            raise DeliveryError(
                f'Uploading the audio to S3 bucket "{s3.bucket}" failed: {type(e).__name__}: {detail}'
            ) from None
        log.info("delivered %d bytes to s3://%s/%s", len(audio), s3.bucket, key)
        return url

    def _get_client(self, s3: S3Config) -> Any:
        with self._client_lock:
            if self._client is None:
                self._client = self._make_client(s3)
            return self._client

    def _make_client(self, s3: S3Config) -> Any:
        region = s3.region or DEFAULT_REGION
        # Left to itself botocore presigns for the global s3.amazonaws.com, which redirects for other regions.
        endpoint_url = s3.endpoint_url or f"https://s3.{region}.amazonaws.com"
        # AWS: virtual-hosted, its preferred form, unless a dotted bucket name would break the TLS wildcard.
        # Anything else: path-style, which needs no wildcard DNS or certificate for the bucket name.
        virtual = _is_aws(endpoint_url) and "." not in s3.bucket
        config = Config(
            signature_version="s3v4",
            s3={"addressing_style": "virtual" if virtual else "path"},
            retries={"max_attempts": self._max_attempts, "mode": "standard"},
            connect_timeout=self._connect_timeout_s,
            read_timeout=self._read_timeout_s,
            # boto3 >= 1.36 sends CRC32 trailer checksums by default, which some S3-compatible stores reject.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            # Only this config decides the endpoint, not AWS_ENDPOINT_URL* or ~/.aws/config on the worker.
            ignore_configured_endpoint_urls=True,
        )
        session = boto3.session.Session(
            aws_access_key_id=s3.access_key_id,
            aws_secret_access_key=s3.secret_access_key,
            region_name=region,
        )
        return session.client("s3", endpoint_url=endpoint_url, config=config)


def _scrub(text: str, s3: S3Config) -> str:
    """`text` with the credentials blanked out, should a server or botocore echo them."""
    for secret in (s3.secret_access_key, s3.access_key_id):
        if secret:
            text = text.replace(secret, "***")
    return text
