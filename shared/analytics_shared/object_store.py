"""One object-store interface, two implementations.

`LocalObjectStore` (a folder, the embedded default, `file:///abs/path`) and
`S3ObjectStore` (`s3://bucket/prefix`, any S3-compatible server through
`endpoint_url`). Both pass the same contract tests. Writes are atomic from a
reader's point of view: a reader sees the old object or the new one, never a
partial one (local: write a temp file then `os.replace`; S3: PUT is atomic).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from analytics_shared.errors import AnalyticsError, TransientError

if TYPE_CHECKING:
    from boto3.s3.transfer import TransferConfig

__all__ = [
    "LocalObjectStore",
    "NotModified",
    "ObjectInfo",
    "ObjectNotFound",
    "ObjectStore",
    "PreconditionFailed",
    "S3ObjectStore",
    "StoreError",
    "StoreUnavailable",
    "open_store",
]


class StoreError(AnalyticsError):
    """Base class for object-store failures."""


class ObjectNotFound(StoreError, KeyError):
    """The key does not exist."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "object not found"


class StoreUnavailable(StoreError, TransientError):
    """The store could not be reached or failed transiently; retrying may help."""


class NotModified(StoreError):
    """The object's ETag still matches the caller's `if_none_match`."""


class PreconditionFailed(StoreError):
    """A conditional write lost: the object changed (or exists) since the caller looked."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str
    last_modified: datetime


class ObjectStore(ABC):
    """Keys are '/'-separated paths relative to the store's root/prefix."""

    url: str

    @abstractmethod
    def put_file(self, key: str, path: Path) -> ObjectInfo: ...

    @abstractmethod
    def put_bytes(
        self,
        key: str,
        data: bytes,
        content_type: str = "application/json",
        *,
        if_match: str | None = None,
        if_none_match: str | None = None,
    ) -> ObjectInfo:
        """Atomically create or replace a small object.

        Conditional writes (compare-and-swap): `if_match=etag` writes only while
        the object still has that ETag; `if_none_match="*"` only creates. A lost
        condition raises `PreconditionFailed` and leaves the object untouched.
        """

    @abstractmethod
    def get_bytes(self, key: str, if_none_match: str | None = None) -> tuple[bytes, str]:
        """Return (body, etag); raise NotModified when the etag still matches."""

    @abstractmethod
    def get_file(self, key: str, dest: Path) -> ObjectInfo:
        """Download to `dest` (written via a temp file, renamed when complete)."""

    @abstractmethod
    def head(self, key: str) -> ObjectInfo | None: ...

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]: ...

    @abstractmethod
    def delete(self, key: str) -> None:
        """Delete a key; deleting a missing key is not an error."""


def _check_conditions(if_match: str | None, if_none_match: str | None) -> None:
    if if_none_match not in (None, "*"):
        raise ValueError("put_bytes supports only if_none_match='*' (create, never replace)")
    if if_match is not None and if_none_match is not None:
        raise ValueError("give if_match or if_none_match, not both")


def _check_key(key: str) -> str:
    if not key or key.startswith("/") or ".." in key.split("/"):
        raise ValueError(f"invalid object key {key!r}")
    return key


class LocalObjectStore(ObjectStore):
    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.url = self.root.as_uri()

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    @staticmethod
    def _info(key: str, path: Path) -> ObjectInfo:
        st = path.stat()
        # A cheap validator that changes whenever the file is replaced.
        etag = hashlib.md5(f"{st.st_ino}:{st.st_mtime_ns}:{st.st_size}".encode()).hexdigest()  # noqa: S324
        return ObjectInfo(key, st.st_size, etag, datetime.fromtimestamp(st.st_mtime, UTC))

    def _atomic_write(self, key: str, writer) -> ObjectInfo:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as fh:
                writer(fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, dest)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return self._info(key, dest)

    def put_file(self, key: str, path: Path) -> ObjectInfo:
        def write(fh):
            with Path(path).open("rb") as src:
                shutil.copyfileobj(src, fh, 1 << 20)

        return self._atomic_write(key, write)

    def put_bytes(
        self,
        key: str,
        data: bytes,
        content_type: str = "application/json",
        *,
        if_match: str | None = None,
        if_none_match: str | None = None,
    ) -> ObjectInfo:
        _check_conditions(if_match, if_none_match)
        if if_match is None and if_none_match is None:
            return self._atomic_write(key, lambda fh: fh.write(data))
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        # Check and replace under an exclusive lock, so two conditional writers
        # cannot both see the old ETag (the lock file is never deleted).
        lock_path = dest.with_name(f".lock-{dest.name}")
        with lock_path.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            current = self.head(key)
            if if_none_match is not None and current is not None:
                raise PreconditionFailed(f"{key!r} already exists in {self.url}")
            if if_match is not None and (current is None or current.etag != if_match):
                raise PreconditionFailed(f"{key!r} changed since ETag {if_match} in {self.url}")
            return self._atomic_write(key, lambda fh: fh.write(data))

    def get_bytes(self, key: str, if_none_match: str | None = None) -> tuple[bytes, str]:
        path = self._path(key)
        try:
            info = self._info(key, path)
            if if_none_match is not None and info.etag == if_none_match:
                raise NotModified(key)
            return path.read_bytes(), info.etag
        except FileNotFoundError:
            raise ObjectNotFound(f"no object at {key!r} in {self.url}") from None

    def get_file(self, key: str, dest: Path) -> ObjectInfo:
        src = self._path(key)
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        try:
            shutil.copyfile(src, tmp)
            os.replace(tmp, dest)
        except FileNotFoundError:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise ObjectNotFound(f"no object at {key!r} in {self.url}") from None
        return self._info(key, src)

    def head(self, key: str) -> ObjectInfo | None:
        path = self._path(key)
        return self._info(key, path) if path.is_file() else None

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        base = self.root
        for path in sorted(base.rglob("*")):
            if not path.is_file() or path.name.startswith((".tmp-", ".lock-")):
                continue
            key = path.relative_to(base).as_posix()
            if key.startswith(prefix):
                yield self._info(key, path)

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(key).unlink()


# Parts uploaded at once, each held in memory: bounds an upload's buffers
# (the ETL's memory budget counts them) whatever the snapshot's size.
UPLOAD_CONCURRENCY = 4
UPLOAD_PART_BYTES = 8 * 2**20


def _upload_transfer() -> TransferConfig:
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(
        max_concurrency=UPLOAD_CONCURRENCY,
        multipart_chunksize=UPLOAD_PART_BYTES,
        multipart_threshold=UPLOAD_PART_BYTES,
    )


class S3ObjectStore(ObjectStore):
    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        max_attempts: int = 3,
    ) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self._client = boto3.client(
            "s3",
            endpoint_url=endpoint_url or None,
            region_name=region or None,
            aws_access_key_id=access_key_id or None,
            aws_secret_access_key=secret_access_key or None,
            config=Config(
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                retries={"max_attempts": max_attempts, "mode": "standard"},
                # Path-style works with S3 and with SeaweedFS/MinIO on any host name.
                s3={"addressing_style": "path"},
            ),
        )

    def _key(self, key: str) -> str:
        _check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _strip(self, full_key: str) -> str:
        return full_key[len(self.prefix) + 1 :] if self.prefix else full_key

    @contextlib.contextmanager
    def _errors(self, key: str) -> Iterator[None]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("304", "NotModified") or status == 304:
                raise NotModified(key) from None
            # 409 ConditionalRequestConflict: a concurrent conditional write won.
            if code in ("412", "PreconditionFailed", "ConditionalRequestConflict") or status == 412:
                raise PreconditionFailed(f"{self.url}: {key}: {code or status}") from None
            if code in ("404", "NoSuchKey", "NotFound"):
                raise ObjectNotFound(f"no object at {key!r} in {self.url}") from None
            if status is not None and int(status) >= 500:
                raise StoreUnavailable(f"{self.url}: {code or status}") from exc
            raise StoreError(f"{self.url}: {key}: {code or exc}") from exc
        except BotoCoreError as exc:
            raise StoreUnavailable(f"{self.url}: {exc}") from exc

    def _info(self, key: str, meta: dict) -> ObjectInfo:
        return ObjectInfo(
            key=key,
            size=int(meta.get("ContentLength", meta.get("Size", 0))),
            etag=str(meta.get("ETag", "")).strip('"'),
            last_modified=meta.get("LastModified") or datetime.now(UTC),
        )

    def put_file(self, key: str, path: Path) -> ObjectInfo:
        with self._errors(key):
            self._client.upload_file(
                str(path), self.bucket, self._key(key), Config=_upload_transfer()
            )
            info = self.head(key)
        if info is None:
            raise StoreError(f"{self.url}: {key} missing right after upload")
        return info

    def put_bytes(
        self,
        key: str,
        data: bytes,
        content_type: str = "application/json",
        *,
        if_match: str | None = None,
        if_none_match: str | None = None,
    ) -> ObjectInfo:
        _check_conditions(if_match, if_none_match)
        kwargs: dict[str, object] = {"Bucket": self.bucket, "Key": self._key(key), "Body": data}
        if if_match is not None:
            kwargs["IfMatch"] = f'"{if_match}"'
        if if_none_match is not None:
            kwargs["IfNoneMatch"] = if_none_match
        with self._errors(key):
            resp = self._client.put_object(ContentType=content_type, **kwargs)
        return ObjectInfo(key, len(data), str(resp.get("ETag", "")).strip('"'), datetime.now(UTC))

    def get_bytes(self, key: str, if_none_match: str | None = None) -> tuple[bytes, str]:
        kwargs = {"Bucket": self.bucket, "Key": self._key(key)}
        if if_none_match:
            kwargs["IfNoneMatch"] = f'"{if_none_match}"'
        with self._errors(key):
            resp = self._client.get_object(**kwargs)
            body = resp["Body"].read()
        return body, str(resp.get("ETag", "")).strip('"')

    def get_file(self, key: str, dest: Path) -> ObjectInfo:
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        try:
            with self._errors(key):
                info = self.head(key)
                if info is None:
                    raise ObjectNotFound(f"no object at {key!r} in {self.url}")
                self._client.download_file(self.bucket, self._key(key), str(tmp))
            os.replace(tmp, dest)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        return info

    def head(self, key: str) -> ObjectInfo | None:
        try:
            with self._errors(key):
                meta = self._client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ObjectNotFound:
            return None
        return self._info(key, meta)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        paginator = self._client.get_paginator("list_objects_v2")
        with self._errors(prefix):
            for page in paginator.paginate(
                Bucket=self.bucket,
                Prefix=self._key(prefix) if prefix else (self.prefix + "/" if self.prefix else ""),
            ):
                for obj in page.get("Contents", []):
                    yield self._info(self._strip(obj["Key"]), obj)

    def delete(self, key: str) -> None:
        with self._errors(key):
            self._client.delete_object(Bucket=self.bucket, Key=self._key(key))


def open_store(
    url: str,
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    access_key_id: str | None = None,
    secret_access_key: str | None = None,
) -> ObjectStore:
    """Build the store a `STORAGE_URL` names (`file:///abs/path` or `s3://bucket/prefix`)."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"file URLs must be absolute (file:///path), got {url!r}")
        return LocalObjectStore(Path(parsed.path))
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ValueError(f"s3 URLs need a bucket (s3://bucket/prefix), got {url!r}")
        return S3ObjectStore(
            parsed.netloc,
            parsed.path,
            endpoint_url=endpoint_url,
            region=region,
            access_key_id=access_key_id,
            secret_access_key=secret_access_key,
        )
    raise ValueError(f"unsupported storage URL scheme {parsed.scheme!r} (use file:// or s3://)")
