"""Tests for audio/output/delivery.py: S3 settings from env, inline limits, uploads to a real S3 server."""

from __future__ import annotations

import base64
import time
from urllib.parse import parse_qs, urlsplit

import botocore.session
import pytest
import requests

from audio.errors import DeliveryError, InputError, PayloadTooLargeError
from audio.output.delivery import Deliverer, S3Config, object_key
from tests.s3server import S3Server, free_port

AK = "AKIAEXAMPLEKEY000001"
SK = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
KEYS = {"BUCKET_ACCESS_KEY_ID": AK, "BUCKET_SECRET_ACCESS_KEY": SK}
SEED_KEYS = {"S3_ACCESS_KEY": AK, "S3_SECRET_KEY": SK}
AUDIO = bytes(range(256)) * 40  # 10 KiB, every byte value
FAST = {"connect_timeout_s": 2.0, "read_timeout_s": 10.0, "max_attempts": 2}


def s3(bucket: str, endpoint_url: str | None, region: str | None = None, **kw) -> S3Config:
    return S3Config(bucket, endpoint_url, AK, SK, region, **kw)


def deliver(deliverer: Deliverer, mode: str, *, audio=AUDIO, fmt="wav", content_type="audio/wav", job_id="j"):
    return deliverer.deliver(audio, fmt=fmt, content_type=content_type, job_id=job_id, mode=mode)


# --- S3Config.from_env --------------------------------------------------------------------------------

FROM_ENV = [
    pytest.param(
        {"BUCKET_ENDPOINT_URL": "https://minio.example.com:9000/my-bucket", **KEYS},
        s3("my-bucket", "https://minio.example.com:9000"),
        id="runpod-names-bucket-in-path",
    ),
    pytest.param(
        {"BUCKET_ENDPOINT_URL": "https://minio.example.com/my-bucket/", **KEYS},
        s3("my-bucket", "https://minio.example.com"),
        id="bucket-in-path-trailing-slash",
    ),
    pytest.param(
        {"BUCKET_ENDPOINT_URL": "https://my-bucket.s3.eu-west-2.amazonaws.com", **KEYS},
        s3("my-bucket", "https://s3.eu-west-2.amazonaws.com", "eu-west-2"),
        id="aws-virtual-host-bucket-and-region",
    ),
    pytest.param(
        {"BUCKET_ENDPOINT_URL": "https://my.dotted.bucket.s3.ap-southeast-2.amazonaws.com", **KEYS},
        s3("my.dotted.bucket", "https://s3.ap-southeast-2.amazonaws.com", "ap-southeast-2"),
        id="aws-virtual-host-dotted-bucket",
    ),
    pytest.param(
        {"BUCKET_ENDPOINT_URL": "https://my-bucket.s3-us-west-1.amazonaws.com", **KEYS},
        s3("my-bucket", "https://s3.us-west-1.amazonaws.com", "us-west-1"),
        id="aws-legacy-dash-region",
    ),
    pytest.param(
        {"BUCKET_ENDPOINT_URL": "https://my-bucket.s3.amazonaws.com", **KEYS},
        s3("my-bucket", "https://s3.us-east-1.amazonaws.com", "us-east-1"),
        id="aws-global-host-is-us-east-1",
    ),
    pytest.param(
        {"BUCKET_ENDPOINT_URL": "https://s3.eu-central-1.amazonaws.com/my-bucket", **KEYS},
        s3("my-bucket", "https://s3.eu-central-1.amazonaws.com", "eu-central-1"),
        id="aws-path-form",
    ),
    pytest.param(
        {"BUCKET_ENDPOINT_URL": "https://my-bucket.s3.amazonaws.com", "S3_REGION": "eu-north-1", **KEYS},
        s3("my-bucket", "https://s3.eu-north-1.amazonaws.com", "eu-north-1"),
        id="s3-region-overrides-aws-host",
    ),
    pytest.param(
        {"BUCKET_ENDPOINT_URL": "https://host.example.com/url-bucket", "S3_BUCKET": "explicit", **KEYS},
        s3("explicit", "https://host.example.com"),
        id="explicit-s3-bucket-wins-over-url",
    ),
    pytest.param(
        {"BUCKET_ENDPOINT_URL": "https://acct.r2.cloudflarestorage.com", "BUCKET_NAME": "named", **KEYS},
        s3("named", "https://acct.r2.cloudflarestorage.com"),
        id="bucket-name-with-bare-endpoint",
    ),
    pytest.param(
        {
            "S3_ENDPOINT": "http://127.0.0.1:9000",
            "S3_BUCKET": "seed",
            "S3_REGION": "auto",
            "S3_KEY_PREFIX": "audio",
            "S3_URL_EXPIRY_SECONDS": "600",
            **SEED_KEYS,
        },
        s3("seed", "http://127.0.0.1:9000", "auto", key_prefix="audio/", url_expiry_s=600),
        id="seed-names-prefix-gets-slash",
    ),
    pytest.param(
        {"S3_BUCKET": "plain-aws", "S3_REGION": "us-west-2", **SEED_KEYS},
        s3("plain-aws", None, "us-west-2"),
        id="no-endpoint-is-aws-default",
    ),
    pytest.param(
        {
            "BUCKET_ENDPOINT_URL": "https://new.example.com/new",
            "S3_ENDPOINT": "https://old.example.com/old",
            "BUCKET_ACCESS_KEY_ID": AK,
            "S3_ACCESS_KEY": "OLDKEY",
            "BUCKET_SECRET_ACCESS_KEY": SK,
            "S3_SECRET_KEY": "OLDSECRET",
        },
        s3("new", "https://new.example.com"),
        id="runpod-names-win-over-seed-names",
    ),
    pytest.param(
        {"BUCKET_ENDPOINT_URL": "https://h.example.com/b", "S3_KEY_PREFIX": "", **KEYS},
        s3("b", "https://h.example.com", key_prefix=""),
        id="empty-prefix",
    ),
    pytest.param(
        {"BUCKET_ENDPOINT_URL": "https://h.example.com/b", "S3_KEY_PREFIX": "/jobs/tts/", **KEYS},
        s3("b", "https://h.example.com", key_prefix="jobs/tts/"),
        id="prefix-leading-slash-dropped",
    ),
]


@pytest.mark.parametrize(("env", "expected"), FROM_ENV)
def test_from_env(env, expected):
    assert S3Config.from_env(env) == expected


@pytest.mark.parametrize(
    "env",
    [
        pytest.param({}, id="empty"),
        pytest.param({"S3_KEY_PREFIX": "x/", "S3_URL_EXPIRY_SECONDS": "60", "S3_REGION": "eu"}, id="extras"),
        pytest.param({"BUCKET_ENDPOINT_URL": "", "S3_ACCESS_KEY": "  ", "S3_BUCKET": ""}, id="blank-values"),
    ],
)
def test_from_env_unconfigured_is_none(env):
    assert S3Config.from_env(env) is None


@pytest.mark.parametrize(
    ("env", "names"),
    [
        pytest.param(
            {"BUCKET_ENDPOINT_URL": "https://h.example.com/b", "BUCKET_ACCESS_KEY_ID": AK},
            "BUCKET_SECRET_ACCESS_KEY",
            id="key-without-secret",
        ),
        pytest.param(
            {"S3_BUCKET": "b", "S3_SECRET_KEY": SK},
            "BUCKET_ACCESS_KEY_ID (or S3_ACCESS_KEY) is not set",
            id="secret-without-key",
        ),
        pytest.param({"BUCKET_ENDPOINT_URL": "https://h.example.com/b"}, "BUCKET_ACCESS_KEY_ID", id="endpoint-only"),
        pytest.param({"S3_BUCKET": "b"}, "BUCKET_ACCESS_KEY_ID", id="bucket-only"),
        pytest.param({"BUCKET_ENDPOINT_URL": "https://h.example.com", **KEYS}, "S3_BUCKET", id="no-bucket"),
        pytest.param(KEYS, "S3_BUCKET", id="keys-only"),
        pytest.param({"BUCKET_ENDPOINT_URL": "minio:9000/b", **KEYS}, "BUCKET_ENDPOINT_URL", id="not-a-url"),
        pytest.param({"S3_ENDPOINT": "ftp://h/b", **SEED_KEYS}, "S3_ENDPOINT", id="seed-endpoint-not-http"),
        pytest.param(
            {"BUCKET_ENDPOINT_URL": "https://h.example.com/b/folder", **KEYS},
            "BUCKET_ENDPOINT_URL may name only the bucket",
            id="endpoint-path-too-deep",
        ),
        pytest.param(
            {"BUCKET_ENDPOINT_URL": "https://h.example.com/b", "S3_URL_EXPIRY_SECONDS": "1h", **KEYS},
            "S3_URL_EXPIRY_SECONDS must be an integer",
            id="expiry-not-int",
        ),
        pytest.param(
            {"BUCKET_ENDPOINT_URL": "https://h.example.com/b", "S3_URL_EXPIRY_SECONDS": "604801", **KEYS},
            "S3_URL_EXPIRY_SECONDS must be between 1 and 604800",
            id="expiry-over-7-days",
        ),
    ],
)
def test_from_env_partial_raises_naming_the_variable(env, names):
    with pytest.raises(ValueError, match=names.replace("(", r"\(").replace(")", r"\)")) as info:
        S3Config.from_env(env)
    assert SK not in str(info.value)


def test_repr_hides_the_secret():
    config = S3Config.from_env({"BUCKET_ENDPOINT_URL": "https://h.example.com/b", **KEYS})
    assert SK not in repr(config)
    assert "bucket='b'" in repr(config)


# --- object keys --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "job_id", "fmt", "expected"),
    [
        pytest.param("tts-output/", "sync-1a2b-3c4d", "wav", "tts-output/sync-1a2b-3c4d.wav", id="wav"),
        pytest.param("tts-output/", "job_1.2", "mp3", "tts-output/job_1.2.mp3", id="mp3"),
        pytest.param("tts-output/", "j", "opus", "tts-output/j.ogg", id="opus-is-ogg"),
        pytest.param("tts-output/", "j", "pcm", "tts-output/j.pcm", id="pcm"),
        pytest.param("", "j", "FLAC", "j.flac", id="no-prefix-format-lowercased"),
    ],
)
def test_object_key(prefix, job_id, fmt, expected):
    assert object_key(prefix, job_id, fmt) == expected


def test_object_key_sanitises_unsafe_job_ids():
    traversal = object_key("p/", "../../etc/passwd", "wav")
    assert traversal.startswith("p/_.._etc_passwd-")
    assert traversal.endswith(".wav")
    assert "/.." not in traversal
    # Ids that differ only in replaced characters still get different keys.
    assert object_key("p/", "a/b", "wav") != object_key("p/", "a?b", "wav")
    assert object_key("p/", "", "wav").startswith("p/job-")
    assert len(object_key("p/", "x" * 1000, "wav")) < 160


@pytest.mark.parametrize(
    ("config", "url_start"),
    [
        pytest.param(
            s3("my-bucket", "https://s3.eu-west-2.amazonaws.com", "eu-west-2"),
            "https://my-bucket.s3.eu-west-2.amazonaws.com/tts-output/j.wav?",
            id="aws-virtual-hosted",
        ),
        pytest.param(
            s3("my.dotted.bucket", "https://s3.eu-west-2.amazonaws.com", "eu-west-2"),
            "https://s3.eu-west-2.amazonaws.com/my.dotted.bucket/tts-output/j.wav?",
            id="aws-dotted-bucket-path-style",
        ),
        pytest.param(
            s3("my-bucket", None, "ap-south-1"),
            "https://my-bucket.s3.ap-south-1.amazonaws.com/tts-output/j.wav?",
            id="no-endpoint-is-regional-aws",
        ),
        pytest.param(
            s3("my-bucket", "https://acct.r2.cloudflarestorage.com"),
            "https://acct.r2.cloudflarestorage.com/my-bucket/tts-output/j.wav?",
            id="custom-endpoint-path-style",
        ),
    ],
)
def test_presigned_url_addressing(config, url_start):
    # Presigning is local, so the client's addressing can be checked without a server.
    client = Deliverer(config, 10)._get_client(config)
    params = {"Bucket": config.bucket, "Key": "tts-output/j.wav"}
    assert client.generate_presigned_url("get_object", Params=params).startswith(url_start)


# --- inline (base64) and mode rules -------------------------------------------------------------------


def test_base64_round_trip():
    assert deliver(Deliverer(None, 10**6), "base64") == {"audio_base64": base64.b64encode(AUDIO).decode()}


def test_base64_limit_is_on_the_encoded_size():
    encoded_len = len(base64.b64encode(AUDIO))
    at_limit = deliver(Deliverer(None, encoded_len), "base64")
    assert base64.b64decode(at_limit["audio_base64"]) == AUDIO
    with pytest.raises(PayloadTooLargeError) as info:
        deliver(Deliverer(None, encoded_len - 1), "base64")
    assert info.value.code == "payload_too_large"
    assert f"{encoded_len} bytes as base64" in info.value.message
    assert f"limit of {encoded_len - 1} bytes" in info.value.message


def test_auto_without_s3_is_base64():
    assert deliver(Deliverer(None, 10**6), "auto") == {"audio_base64": base64.b64encode(AUDIO).decode()}


def test_auto_without_s3_oversized_is_payload_too_large():
    with pytest.raises(PayloadTooLargeError) as info:
        deliver(Deliverer(None, 100), "auto")
    assert info.value.code == "payload_too_large"
    message = info.value.message
    assert 'use delivery "s3"' in message
    assert "BUCKET_ENDPOINT_URL" in message
    assert '"mp3" or "opus"' in message


def test_base64_oversized_with_s3_configured_suggests_s3():
    deliverer = Deliverer(s3("b", "http://127.0.0.1:9"), 100)
    with pytest.raises(PayloadTooLargeError) as info:
        deliver(deliverer, "base64")
    assert 'Use delivery "s3" (S3 is configured on this worker)' in info.value.message
    assert SK not in info.value.message


def test_s3_mode_without_config_is_invalid_input():
    deliverer = Deliverer(None, 10**6)
    assert deliverer.s3_configured is False
    with pytest.raises(InputError) as info:
        deliver(deliverer, "s3")
    assert info.value.code == "invalid_input"
    assert "BUCKET_ENDPOINT_URL, BUCKET_ACCESS_KEY_ID and BUCKET_SECRET_ACCESS_KEY" in info.value.message


def test_unknown_mode_is_invalid_input():
    with pytest.raises(InputError) as info:
        deliver(Deliverer(None, 10**6), "email")
    assert info.value.code == "invalid_input"
    assert "'email'" in info.value.message


# --- against a real S3 server (rclone serve s3) ---------------------------------------------------------


def config_for(server: S3Server, **overrides) -> S3Config:
    config = S3Config.from_env(server.env())
    assert config is not None
    return S3Config(**{**config.__dict__, **overrides})


def fetch(url: str) -> requests.Response:
    response = requests.get(url, timeout=10)
    assert response.status_code == 200, response.text
    return response


@pytest.mark.parametrize(
    ("fmt", "content_type", "ext"),
    [
        pytest.param("wav", "audio/wav", "wav", id="wav"),
        pytest.param("mp3", "audio/mpeg", "mp3", id="mp3"),
        # Not what the server would guess from ".ogg": proves the type stored is the one sent.
        pytest.param("opus", "audio/ogg; codecs=opus", "ogg", id="opus"),
        pytest.param("pcm", "application/octet-stream", "pcm", id="pcm"),
    ],
)
def test_upload_then_presigned_get_returns_the_bytes(s3_server, fmt, content_type, ext):
    deliverer = Deliverer(config_for(s3_server), 10**6, **FAST)
    assert deliverer.s3_configured is True
    job_id = f"sync-{fmt}-0001"
    result = deliver(deliverer, "s3", fmt=fmt, content_type=content_type, job_id=job_id)
    assert list(result) == ["audio_url"]
    url = result["audio_url"]
    assert urlsplit(url).path == f"/{s3_server.bucket}/tts-output/{job_id}.{ext}"
    assert parse_qs(urlsplit(url).query)["X-Amz-Expires"] == ["3600"]
    response = fetch(url)
    assert response.content == AUDIO
    assert response.headers["Content-Type"] == content_type
    assert s3_server.path_of(f"tts-output/{job_id}.{ext}").read_bytes() == AUDIO


def test_upload_uses_prefix_and_expiry(s3_server):
    deliverer = Deliverer(config_for(s3_server, key_prefix="custom/deep/", url_expiry_s=120), 10**6, **FAST)
    url = deliver(deliverer, "s3", fmt="flac", content_type="audio/flac", job_id="job-x")["audio_url"]
    assert urlsplit(url).path == f"/{s3_server.bucket}/custom/deep/job-x.flac"
    assert parse_qs(urlsplit(url).query)["X-Amz-Expires"] == ["120"]
    assert fetch(url).content == AUDIO


def test_server_checks_signatures(s3_server):
    """The fixture is only a fair test of signing if a tampered presigned URL is refused."""
    deliverer = Deliverer(config_for(s3_server), 10**6, **FAST)
    url = deliver(deliverer, "s3", job_id="sig")["audio_url"]
    tampered = url.replace("X-Amz-Signature=", "X-Amz-Signature=0")
    assert requests.get(tampered, timeout=10).status_code == 403
    other_key = url.replace("/sig.wav?", "/other.wav?")
    assert requests.get(other_key, timeout=10).status_code == 403


def test_auto_with_s3_uploads_even_when_oversized_for_inline(s3_server):
    deliverer = Deliverer(config_for(s3_server), 100, **FAST)
    result = deliver(deliverer, "auto", fmt="mp3", content_type="audio/mpeg", job_id="big")
    assert list(result) == ["audio_url"]
    assert fetch(result["audio_url"]).content == AUDIO


def test_one_client_per_deliverer(s3_server, monkeypatch):
    created = []
    original = botocore.session.Session.create_client

    def counting(self, *args, **kwargs):
        created.append(args[0] if args else kwargs.get("service_name"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(botocore.session.Session, "create_client", counting)
    deliverer = Deliverer(config_for(s3_server), 10**6, **FAST)
    assert created == []  # lazily, on the first upload
    first = deliver(deliverer, "s3", job_id="one")
    second = deliver(deliverer, "auto", audio=AUDIO[:100], job_id="two")
    assert created == ["s3"]
    assert fetch(first["audio_url"]).content == AUDIO
    assert fetch(second["audio_url"]).content == AUDIO[:100]


def deliver_error(config: S3Config) -> DeliveryError:
    with pytest.raises(DeliveryError) as info:
        deliver(Deliverer(config, 10**6, **FAST), "s3")
    assert info.value.code == "delivery_failed"
    assert config.secret_access_key not in info.value.message
    assert config.access_key_id not in info.value.message
    assert "Traceback" not in info.value.message
    return info.value


def test_wrong_secret_is_delivery_failed(s3_server, caplog):
    caplog.set_level("DEBUG", logger="audio.output.delivery")
    error = deliver_error(config_for(s3_server, secret_access_key="not-the-secret-" + "x" * 25))
    assert error.message.startswith(f'Uploading the audio to S3 bucket "{s3_server.bucket}" failed: ')
    assert "SignatureDoesNotMatch (HTTP 403)" in error.message
    assert "not-the-secret-" not in caplog.text
    assert s3_server.secret_access_key not in error.message


def test_unknown_access_key_is_delivery_failed(s3_server):
    error = deliver_error(config_for(s3_server, access_key_id="AKIAUNKNOWN000000000"))
    assert f'bucket "{s3_server.bucket}"' in error.message
    assert "InvalidAccessKeyId (HTTP 403)" in error.message


def test_missing_bucket_is_delivery_failed(s3_server):
    error = deliver_error(config_for(s3_server, bucket="no-such-bucket"))
    assert 'S3 bucket "no-such-bucket" failed: NoSuchBucket (HTTP 404)' in error.message


def test_server_down_is_delivery_failed_fast():
    port = free_port()  # bound and released: nothing listens there
    started = time.monotonic()
    error = deliver_error(s3("down-bucket", f"http://127.0.0.1:{port}"))
    assert time.monotonic() - started < 5
    assert 'S3 bucket "down-bucket" failed: EndpointConnectionError' in error.message
