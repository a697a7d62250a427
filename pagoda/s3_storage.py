"""Models in S3-compatible object storage: `s3://bucket/prefix` -> a complete, verified local folder.

`hf_utils.resolve_model_path` sends every `s3://` name here (--model, --tokenizer, --speculative-model and a
draft's speculative_config 'model' all resolve through it), so the objects under the prefix are in a local
cache before any config, tokenizer or weight is read. The download itself is in s3_storage_cache.py.

Where the connection comes from (the environment, read on every call; boto3 reads the credentials):

| variable | meaning |
| --- | --- |
| AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN | credentials (boto3's chain: also ~/.aws, web identity) |
| AWS_DEFAULT_REGION (or AWS_REGION) | the region signed for; default us-east-1 |
| AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL | the endpoint URL (boto3's names; KServe's storage initializer sets AWS_ENDPOINT_URL) |
| AWS_S3_ENDPOINT | an OpenShift AI data connection's endpoint URL, e.g. http://minio.ns.svc:9000 |
| S3_ENDPOINT, S3_USE_HTTPS | KServe's host[:port] without a scheme; S3_USE_HTTPS=0 means http (default https) |
| AWS_S3_BUCKET | a data connection's bucket: used when the URL names none (`s3:///models/granite`) |
| S3_VERIFY_SSL | 0/false: do not verify the endpoint's TLS certificate (KServe's) |
| AWS_CA_BUNDLE | a CA bundle file to verify the endpoint's certificate with |
| awsAnonymousCredential | true: unsigned requests (a public bucket; KServe's) |
| S3_USER_VIRTUAL_BUCKET | true: virtual-hosted-style addressing (KServe's); default: path style on a custom endpoint |
| PAGODA_S3_CACHE | the cache folder (default: `--download-dir`/pagoda-s3, else $HF_HOME/pagoda-s3, else ~/.cache/pagoda/s3) |
| PAGODA_S3_CONCURRENCY, PAGODA_S3_CHUNK_BYTES | parallel ranged GETs (default 8) and their size (default 16 MiB) |
| PAGODA_S3_VERIFY_MD5 | 0: skip the MD5 check of objects whose ETag is an MD5 (sizes are always checked) |

The first endpoint variable set wins, in the order of the table.

Invariants:
- No message this module raises or logs contains a credential: every text built from a botocore error goes
  through `redact`, which blanks the access key id, the secret and the session token (from the environment
  and from boto3's resolved credentials); botocore's own DEBUG logging (it prints signed headers) is held at
  WARNING while we talk to S3.
- Every failure is an `S3StorageError` (a ValueError, so the CLI and `LLM` report it as a bad option) that
  names the URL, the endpoint and what to check (bucket, key, credentials, connection), never the secret.
- A listing is the objects under `prefix/` (the whole bucket for an empty prefix), keys ending in '/' skipped;
  an empty listing is an error, and so is a key that would land outside the cache folder ('..', absolute).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from urllib.parse import urlparse

logger = logging.getLogger(__name__)

S3_SCHEME = "s3://"
ENDPOINT_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_S3_ENDPOINT", "S3_ENDPOINT")
_FALSE = ("0", "false", "no", "off")
_SECRET_VARS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ACCESS_KEY_ID")


class S3StorageError(ValueError):
    """A model could not be fetched from S3-compatible storage; the message says why (never a secret)."""


@dataclass(frozen=True)
class S3Object:
    key: str  # the full object key
    rel: str  # its path under the prefix: where it lands in the local folder
    size: int
    etag: str  # without quotes


@dataclass(frozen=True)
class S3Location:
    url: str  # as the user gave it
    bucket: str
    prefix: str  # without leading or trailing '/'; '' for the whole bucket

    def display(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


def is_s3_url(name: object) -> bool:
    return isinstance(name, str) and name.lower().startswith(S3_SCHEME)


def parse_s3_url(url: str, field_name: str = "model") -> S3Location:
    """`s3://bucket/some/prefix/` -> S3Location; the bucket falls back to AWS_S3_BUCKET (a data connection)."""
    parsed = urlparse(url)
    bucket = parsed.netloc or os.environ.get("AWS_S3_BUCKET", "").strip()
    if not bucket:
        raise S3StorageError(f"{field_name}={url!r} names no bucket: write s3://BUCKET/PREFIX "
                             "(or set AWS_S3_BUCKET, as an OpenShift AI data connection does)")
    if parsed.query or parsed.fragment:
        raise S3StorageError(f"{field_name}={url!r}: an s3:// URL takes no '?' or '#' part")
    return S3Location(url=url, bucket=bucket, prefix=parsed.path.strip("/"))


def endpoint_url() -> str | None:
    """The endpoint the environment names (see the table above), with a scheme; None: AWS's own."""
    for name in ENDPOINT_VARS:
        value = os.environ.get(name, "").strip()
        if value:
            if "://" not in value:
                https = os.environ.get("S3_USE_HTTPS", "1").strip().lower() not in _FALSE
                value = ("https://" if https else "http://") + value
            return value.rstrip("/")
    return None


def safe_endpoint() -> str:
    """The endpoint for messages: without any user:password@ part; 'AWS' for AWS's own."""
    url = endpoint_url()
    if not url:
        return "AWS"
    parsed = urlparse(url)
    return parsed._replace(netloc=parsed.hostname + (f":{parsed.port}" if parsed.port else "")).geturl() \
        if parsed.username or parsed.password else url


def _verify() -> bool | str:
    if os.environ.get("S3_VERIFY_SSL", "").strip().lower() in _FALSE:
        return False
    bundle = os.environ.get("AWS_CA_BUNDLE", "").strip()
    if bundle:
        if not os.path.isfile(bundle):
            raise S3StorageError(f"AWS_CA_BUNDLE={bundle!r} is not a file (a PEM CA bundle is expected)")
        return bundle
    return True


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def make_client(max_pool_connections: int = 10):
    """A botocore S3 client configured from the environment. ImportError -> S3StorageError naming the extra."""
    try:
        import boto3
        from botocore import UNSIGNED
        from botocore.config import Config
    except ImportError:
        raise S3StorageError("s3:// models need boto3: pip install 'pagoda[s3]' (or pip install boto3)") from None
    endpoint = endpoint_url()
    addressing = "virtual" if _env_flag("S3_USER_VIRTUAL_BUCKET") else ("path" if endpoint else "auto")
    config = Config(retries={"max_attempts": 5, "mode": "standard"}, max_pool_connections=max_pool_connections,
                    connect_timeout=10, read_timeout=60, s3={"addressing_style": addressing})
    if _env_flag("awsAnonymousCredential"):
        config = config.merge(Config(signature_version=UNSIGNED))
    region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1"
    session = boto3.session.Session()
    return session.client("s3", endpoint_url=endpoint, region_name=region, verify=_verify(), config=config)


def secrets_of(client) -> list[str]:
    """The credential strings to keep out of every message: the environment's and the client's resolved ones."""
    values = [os.environ.get(name, "") for name in _SECRET_VARS]
    try:
        creds = client._request_signer._credentials  # botocore's resolved credentials (None when unsigned)
        if creds is not None:
            frozen = creds.get_frozen_credentials()
            values += [frozen.access_key or "", frozen.secret_key or "", frozen.token or ""]
    except Exception:  # noqa: BLE001 - redaction must never fail the caller
        pass
    return sorted({v for v in values if len(v) >= 4}, key=len, reverse=True)


def redact(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


class quiet_botocore:
    """Hold botocore's, boto3's, s3transfer's and urllib3's loggers at WARNING or above (their DEBUG output
    carries signed request headers), restoring their levels afterwards."""

    NAMES = ("botocore", "boto3", "s3transfer", "urllib3")

    def __enter__(self):
        self._levels = {name: logging.getLogger(name).level for name in self.NAMES}
        for name, level in self._levels.items():
            if level < logging.WARNING:
                logging.getLogger(name).setLevel(logging.WARNING)
        return self

    def __exit__(self, *exc) -> None:
        for name, level in self._levels.items():
            logging.getLogger(name).setLevel(level)


def describe_error(exc: BaseException, loc: S3Location, what: str, secrets: list[str]) -> S3StorageError:
    """A botocore exception -> an S3StorageError that says what to check (redacted)."""
    from botocore import exceptions as bexc

    where = f"{loc.display()} (endpoint {safe_endpoint()})"
    code = ""
    if isinstance(exc, bexc.ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        hints = {
            "NoSuchBucket": f"bucket {loc.bucket!r} does not exist",
            "NoSuchKey": "the object is gone (was the model folder changed while downloading?)",
            "InvalidAccessKeyId": "the access key id (AWS_ACCESS_KEY_ID) is not known to this endpoint",
            "SignatureDoesNotMatch": "the secret key (AWS_SECRET_ACCESS_KEY) does not match the access key id",
            "InvalidToken": "the session token (AWS_SESSION_TOKEN) is not valid",
            "ExpiredToken": "the credentials have expired",
            "AccessDenied": f"access denied: the credentials may not list or read bucket {loc.bucket!r}",
            "PreconditionFailed": "the object changed while it was downloading; start again",
            "PermanentRedirect": "the bucket is in another region: set AWS_DEFAULT_REGION",
            "AuthorizationHeaderMalformed": "the region is wrong: set AWS_DEFAULT_REGION",
        }
        hint = hints.get(code) or (f"bucket {loc.bucket!r} does not exist" if status == 404 and what == "list"
                                   else f"{code or 'error'} (HTTP {status})")
    elif isinstance(exc, bexc.NoCredentialsError):
        hint = ("no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or awsAnonymousCredential=true "
                "for a public bucket)")
    elif isinstance(exc, (bexc.EndpointConnectionError, bexc.ConnectTimeoutError)):
        hint = "cannot connect to the endpoint: check AWS_ENDPOINT_URL / AWS_S3_ENDPOINT / S3_ENDPOINT"
    elif isinstance(exc, bexc.SSLError):
        hint = "TLS failed: set AWS_CA_BUNDLE to the endpoint's CA bundle (or S3_VERIFY_SSL=0)"
    else:
        hint = f"{type(exc).__name__}: {exc}"
    return S3StorageError(redact(f"cannot {what} {where}: {hint}", secrets))


def list_objects(client, loc: S3Location, secrets: list[str]) -> list[S3Object]:
    """Every object under the prefix, sorted by relative path; S3StorageError for an error or nothing found."""
    prefix = loc.prefix + "/" if loc.prefix else ""
    objects: list[S3Object] = []
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=loc.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                key = item["Key"]
                if key.endswith("/"):
                    continue
                rel = key[len(prefix):]
                parts = rel.split("/")
                if rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
                    raise S3StorageError(f"{loc.display()}: object key {key!r} cannot be a file of a local folder")
                objects.append(S3Object(key=key, rel=rel, size=int(item["Size"]), etag=item["ETag"].strip('"')))
    except S3StorageError:
        raise
    except Exception as exc:  # noqa: BLE001 - botocore's exceptions, redacted
        raise describe_error(exc, loc, "list", secrets) from None
    if not objects:
        raise S3StorageError(f"no objects under {loc.display()}/ (endpoint {safe_endpoint()}): check the "
                             "bucket and the path (storage.path of the InferenceService, or the URL)")
    return sorted(objects, key=lambda o: o.rel)


def cache_root(download_dir: str | None = None) -> str:
    """Where s3:// models are cached (see the table above)."""
    if download_dir:
        return os.path.join(os.path.expanduser(download_dir), "pagoda-s3")
    if os.environ.get("PAGODA_S3_CACHE"):
        return os.path.expanduser(os.environ["PAGODA_S3_CACHE"])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "pagoda-s3")
    return os.path.join(os.path.expanduser("~"), ".cache", "pagoda", "s3")


def resolve_s3_model(url: str, field_name: str = "model", download_dir: str | None = None) -> str:
    """Download (or find complete in the cache) the objects under `url`; return the local folder."""
    from pagoda import s3_storage_cache

    try:
        loc = parse_s3_url(url, field_name)
        settings = s3_storage_cache.DownloadSettings.from_env()
        with quiet_botocore():
            client = make_client(max_pool_connections=settings.concurrency + 2)
            secrets = secrets_of(client)
            objects = list_objects(client, loc, secrets)
            return s3_storage_cache.ensure_local(client, loc, objects, cache_root(download_dir), settings, secrets)
    except S3StorageError as exc:
        message = str(exc)
        if not message.startswith(f"{field_name}="):
            message = f"{field_name}={url!r}: {message}"
        raise S3StorageError(message) from None
