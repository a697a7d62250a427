"""The local cache of s3:// models: parallel ranged downloads, verification, and a completion marker.

One cache entry per (endpoint, bucket, prefix), a flat folder under the cache root:

    <root>/<bucket>--<prefix with '/' as '--'>--<hash of endpoint, bucket, prefix>/
        files/          the model folder handed to the loader: the objects, by their path under the prefix
        journal.json    files already downloaded and checked: rel -> {size, etag}   (for resuming)
        complete.json   the completion marker: the listing the files match, written last
        lock            flock'ed by the one process that checks or changes the entry

Invariants:
- `ensure_local` returns `files/` only when complete.json exists and equals the current listing (keys, sizes,
  ETags) and every file has its listed size; complete.json is written (atomically, after every file) only
  when that holds, and removed before any file of an entry is changed. So a partial download is never
  loaded, and an entry that matches the listing is used with no GET at all (only the LIST).
- A file is downloaded into `<rel>.pagoda-part` (preallocated, chunks written at their offsets by parallel
  ranged GETs with If-Match on the listed ETag, so every chunk comes from the same object version), its size
  and, when its ETag is a plain MD5 (32 hex digits, no '-N' multipart suffix), its MD5 checked, then renamed to
  `<rel>` and recorded in journal.json. An interrupted download keeps the files it finished; the next call
  downloads the rest. Stale parts and files no longer listed are removed.
- One process at a time works on an entry (flock on `lock`); the engine core and the server's frontend resolve
  the same URL at once, and the second waits and then finds the entry complete.
- Data files are not fsync'ed (the marker guards against an interrupted process, not a power cut); the marker
  and the journal are replaced atomically.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import sys
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass

from pagoda.s3_storage import S3Location, S3Object, S3StorageError, describe_error, endpoint_url, redact, safe_endpoint

logger = logging.getLogger(__name__)

PART_SUFFIX = ".pagoda-part"
MARKER, JOURNAL, LOCK, FILES = "complete.json", "journal.json", "lock", "files"
_MD5_ETAG = re.compile(r"^[0-9a-f]{32}$")
_READ_BYTES = 1 << 20
_CHUNK_RETRIES = 3


@dataclass(frozen=True)
class DownloadSettings:
    concurrency: int = 8
    chunk_bytes: int = 16 << 20
    verify_md5: bool = True

    @classmethod
    def from_env(cls) -> "DownloadSettings":
        def number(name: str, default: int, low: int) -> int:
            text = os.environ.get(name, "").strip()
            if not text:
                return default
            try:
                value = int(text)
            except ValueError:
                raise S3StorageError(f"{name} must be an integer >= {low}, got {text!r}") from None
            if value < low:
                raise S3StorageError(f"{name} must be an integer >= {low}, got {value}")
            return value

        verify = os.environ.get("PAGODA_S3_VERIFY_MD5", "1").strip().lower() not in ("0", "false", "no", "off")
        return cls(number("PAGODA_S3_CONCURRENCY", 8, 1), number("PAGODA_S3_CHUNK_BYTES", 16 << 20, 1024), verify)


def entry_dir(root: str, loc: S3Location) -> str:
    """The cache entry of `loc` at the current endpoint (see the module docstring)."""
    ident = f"{endpoint_url() or 'aws'}\n{loc.bucket}\n{loc.prefix}"
    digest = hashlib.sha256(ident.encode()).hexdigest()[:12]
    readable = "--".join([loc.bucket, *[p for p in loc.prefix.split("/") if p]])
    readable = re.sub(r"[^A-Za-z0-9._-]", "_", readable)[:120]
    return os.path.join(root, f"{readable}--{digest}")


def _listing(objects: list[S3Object]) -> dict:
    return {o.rel: {"size": o.size, "etag": o.etag} for o in objects}


def _read_json(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
        return value if isinstance(value, dict) else None
    except (OSError, ValueError):
        return None


def _write_json(path: str, value: dict) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _has_size(path: str, size: int) -> bool:
    try:
        return os.path.isfile(path) and os.path.getsize(path) == size
    except OSError:
        return False


def _complete(entry: str, listing: dict) -> bool:
    marker = _read_json(os.path.join(entry, MARKER))
    if marker is None or marker.get("objects") != listing:
        return False
    files = os.path.join(entry, FILES)
    return all(_has_size(os.path.join(files, rel), meta["size"]) for rel, meta in listing.items())


class _EntryLock:
    def __init__(self, entry: str) -> None:
        self.path = os.path.join(entry, LOCK)

    def __enter__(self) -> "_EntryLock":
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("another process is downloading into %s; waiting for it", os.path.dirname(self.path))
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def ensure_local(client, loc: S3Location, objects: list[S3Object], root: str, settings: DownloadSettings,
                 secrets: list[str]) -> str:
    """The local `files/` folder of `loc`, holding exactly `objects`; downloads what is missing."""
    entry = entry_dir(root, loc)
    files = os.path.join(entry, FILES)
    listing = _listing(objects)
    if _complete(entry, listing):  # the common second start: no lock, no GET
        logger.info("%s: using the cached copy in %s", loc.display(), files)
        return files
    try:
        os.makedirs(files, exist_ok=True)
    except OSError as exc:
        raise S3StorageError(f"cannot create the cache folder {entry!r} ({exc.strerror}); set PAGODA_S3_CACHE "
                             "or --download-dir to a writable folder") from None
    with _EntryLock(entry):
        if _complete(entry, listing):  # another process finished it while we waited
            logger.info("%s: using the cached copy in %s", loc.display(), files)
            return files
        marker = os.path.join(entry, MARKER)
        if os.path.exists(marker):
            logger.info("%s changed in storage since it was cached; updating %s", loc.display(), files)
            os.remove(marker)  # first: from now on the entry is incomplete
        done = _tidy(entry, listing)
        todo = [o for o in objects if o.rel not in done]
        _download_all(client, loc, todo, files, settings, secrets, done, entry)
        _write_json(marker, {"url": loc.display(), "endpoint": safe_endpoint(), "objects": listing,
                             "completed_at": time.time()})
    return files


def _tidy(entry: str, listing: dict) -> dict:
    """The journal's files that still match the listing; removes parts and files that do not."""
    files = os.path.join(entry, FILES)
    journal = _read_json(os.path.join(entry, JOURNAL)) or {}
    done = {rel: meta for rel, meta in journal.items()
            if listing.get(rel) == meta and _has_size(os.path.join(files, rel), meta["size"])}
    for dirpath, _, names in os.walk(files, topdown=False):
        for name in names:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, files).replace(os.sep, "/")
            if rel not in done:
                os.remove(path)  # a part, a stale file, or one never recorded as checked
        if dirpath != files and not os.listdir(dirpath):
            os.rmdir(dirpath)
    _write_json(os.path.join(entry, JOURNAL), done)
    return dict(done)


class _Progress:
    """A tqdm bar in a terminal; a log line every 15 s otherwise (pod logs)."""

    def __init__(self, total: int, desc: str) -> None:
        from tqdm.auto import tqdm

        self.total, self.done, self.lock = total, 0, threading.Lock()
        self.bar = tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                        disable=not sys.stderr.isatty(), mininterval=0.5)
        self.started = self.logged = time.monotonic()
        self.desc = desc

    def add(self, n: int) -> None:
        with self.lock:
            self.done += n
            self.bar.update(n)
            now = time.monotonic()
            if self.bar.disable and now - self.logged >= 15:
                self.logged = now
                logger.info("%s: %.1f%% of %.1f MiB", self.desc, 100 * self.done / max(self.total, 1),
                            self.total / 2**20)

    def close(self) -> float:
        self.bar.close()
        return time.monotonic() - self.started


class _FileJob:
    """One object being downloaded: its part file, its chunks still to come."""

    def __init__(self, obj: S3Object, files: str, chunk_bytes: int) -> None:
        self.obj = obj
        self.final = os.path.join(files, *obj.rel.split("/"))
        self.part = self.final + PART_SUFFIX
        os.makedirs(os.path.dirname(self.final), exist_ok=True)
        self.fd = os.open(self.part, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        os.ftruncate(self.fd, obj.size)
        self.chunks = [(start, min(start + chunk_bytes, obj.size)) for start in range(0, obj.size, chunk_bytes)]
        self.left = len(self.chunks)
        self.lock = threading.Lock()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _download_all(client, loc: S3Location, todo: list[S3Object], files: str, settings: DownloadSettings,
                  secrets: list[str], done: dict, entry: str) -> None:
    if not todo:
        return
    total = sum(o.size for o in todo)
    logger.info("downloading %d file(s), %.1f MiB, from %s (%d parallel ranged GETs)", len(todo), total / 2**20,
                loc.display(), settings.concurrency)
    jobs = [_FileJob(o, files, settings.chunk_bytes) for o in sorted(todo, key=lambda o: o.size)]
    progress = _Progress(total, f"Downloading {loc.display()}")
    stop = threading.Event()
    journal_lock = threading.Lock()

    def finish(job: _FileJob) -> None:
        _check_and_place(job, settings, loc)
        with journal_lock:
            done[job.obj.rel] = {"size": job.obj.size, "etag": job.obj.etag}
            _write_json(os.path.join(entry, JOURNAL), done)

    def run_chunk(job: _FileJob, start: int, end: int) -> None:
        if stop.is_set():
            return
        _get_range(client, loc, job, start, end, progress, stop, secrets)
        if stop.is_set():
            return
        with job.lock:
            job.left -= 1
            last = job.left == 0
        if last:
            finish(job)

    try:
        with ThreadPoolExecutor(max_workers=settings.concurrency, thread_name_prefix="pagoda-s3") as pool:
            futures = [pool.submit(finish, job) for job in jobs if not job.chunks]
            futures += [pool.submit(run_chunk, job, s, e) for job in jobs for s, e in job.chunks]
            try:
                finished, _ = wait(futures, return_when=FIRST_EXCEPTION)
                failed = next((f for f in finished if f.exception() is not None), None)
                if failed is not None:
                    raise failed.exception()
            except BaseException:  # a failed chunk, or Ctrl-C / SIGTERM: stop the others before the pool joins them
                stop.set()
                for future in futures:
                    future.cancel()
                raise
    finally:
        for job in jobs:
            job.close()
        seconds = progress.close()
    logger.info("downloaded %.1f MiB from %s in %.1f s (%.1f MiB/s)", total / 2**20, loc.display(), seconds,
                total / 2**20 / max(seconds, 1e-6))


def _get_range(client, loc: S3Location, job: _FileJob, start: int, end: int, progress: _Progress,
               stop: threading.Event, secrets: list[str]) -> None:
    """Bytes [start, end) of the object into its part file; a broken stream is retried from its start."""
    from botocore import exceptions as bexc

    for attempt in range(1, _CHUNK_RETRIES + 1):
        written = 0
        try:
            response = client.get_object(Bucket=loc.bucket, Key=job.obj.key, Range=f"bytes={start}-{end - 1}",
                                         IfMatch=f'"{job.obj.etag}"')
            body = response["Body"]
            while written < end - start and not stop.is_set():
                data = body.read(min(_READ_BYTES, end - start - written))
                if not data:
                    break
                os.pwrite(job.fd, data, start + written)
                written += len(data)
                progress.add(len(data))
            body.close()
            if stop.is_set():
                return
            if written != end - start:
                raise S3StorageError(f"{job.obj.key}: the range {start}-{end - 1} ended after {written} bytes")
            return
        except bexc.ClientError as exc:  # not retried: credentials, a missing or changed object
            raise describe_error(exc, loc, f"download {job.obj.key} from", secrets) from None
        except Exception as exc:  # noqa: BLE001 - a broken stream or connection: retried, then reported
            progress.add(-written)
            if attempt == _CHUNK_RETRIES or isinstance(exc, (bexc.NoCredentialsError, PermissionError)):
                if isinstance(exc, S3StorageError):
                    raise S3StorageError(redact(f"download of {loc.display()} failed: {exc}", secrets)) from None
                raise describe_error(exc, loc, f"download {job.obj.key} from", secrets) from None
            logger.warning("%s: range %d-%d failed (%s); retrying (%d/%d)", job.obj.key, start, end - 1,
                           redact(f"{type(exc).__name__}: {exc}", secrets), attempt, _CHUNK_RETRIES - 1)
            stop.wait(0.2 * attempt)


def _check_and_place(job: _FileJob, settings: DownloadSettings, loc: S3Location) -> None:
    """Size and (plain-MD5 ETag) checksum of a finished part, then its rename to the final name."""
    size = os.fstat(job.fd).st_size
    if size != job.obj.size:
        raise S3StorageError(f"{loc.display()}: {job.obj.rel} has {size} bytes, the listing says {job.obj.size}")
    if settings.verify_md5 and _MD5_ETAG.match(job.obj.etag):
        digest = hashlib.md5(usedforsecurity=False)
        offset = 0
        while offset < size:
            data = os.pread(job.fd, 8 << 20, offset)
            if not data:
                break
            digest.update(data)
            offset += len(data)
        if digest.hexdigest() != job.obj.etag:
            raise S3StorageError(f"{loc.display()}: {job.obj.rel} does not match its ETag (MD5 {digest.hexdigest()} "
                                 f"!= {job.obj.etag}); the download was corrupted, start again (or, for objects "
                                 "encrypted with SSE-KMS, whose ETag is no MD5, set PAGODA_S3_VERIFY_MD5=0)")
    job.close()
    os.replace(job.part, job.final)
