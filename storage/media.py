"""Media stores: where uploaded images live. `S3MediaStore` talks to MinIO or any S3;
`LocalMediaStore` keeps files under a directory and signs URLs that the app itself serves,
so `make run` needs no object store. Both honour `domain.ports.MediaStore`."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import tempfile
import time
from collections.abc import AsyncIterable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlencode, urlsplit

import urllib3
from minio import Minio
from minio.error import MinioException, S3Error

from domain.errors import Unavailable
from domain.media import content_type_of_key, is_valid_key

log = logging.getLogger("chirp.media")

T = TypeVar("T")

# Network failures surface from urllib3 (after its retries) or as OSError.
S3_ERRORS: tuple[type[BaseException], ...] = (
    MinioException,
    urllib3.exceptions.HTTPError,
    OSError,
    ValueError,
)
_MISSING_CODES = {"NoSuchKey", "NotFound", "ResourceNotFound"}
# Images never change under a key (keys are random and used once), so any cache may keep them.
IMMUTABLE_CACHE = "public, max-age=86400, immutable"


def split_endpoint(endpoint: str, secure: bool) -> tuple[str, bool]:
    """`host:port` and whether to use TLS, from either `host:port` or a URL (a URL's scheme
    decides TLS; docker-compose passes `http://minio:9000`)."""
    if "://" in endpoint:
        parts = urlsplit(endpoint)
        return parts.netloc, parts.scheme == "https"
    return endpoint, secure


class S3MediaStore:
    """MinIO or any S3. Presigning is done locally (the region is given, so the client never
    asks the server for it); the few calls that do I/O run in a thread, since the minio
    client is synchronous."""

    def __init__(
        self,
        *,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        region: str,
        secure: bool,
        public_endpoint: str = "",
    ) -> None:
        host, tls = split_endpoint(endpoint, secure)
        # The default client waits five minutes per attempt; a store that slow is down.
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=3.0, read=20.0),
            maxsize=10,
            retries=urllib3.Retry(
                total=2, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]
            ),
        )
        self._client = Minio(
            host,
            access_key=access_key,
            secret_key=secret_key,
            secure=tls,
            region=region,
            http_client=http,
        )
        # Presigned URLs are signed for the host the client will call, which behind
        # docker-compose or a proxy is not the host the app calls.
        self._signer = self._client
        if public_endpoint:
            public_host, public_tls = split_endpoint(public_endpoint, secure)
            self._signer = Minio(
                public_host,
                access_key=access_key,
                secret_key=secret_key,
                secure=public_tls,
                region=region,
            )
        self._bucket = bucket
        self._region = region

    def presign_put(
        self, key: str, content_type: str, size: int, expires: timedelta
    ) -> tuple[str, dict[str, str]]:
        # minio signs only the host, so S3 cannot hold the client to the declared type and
        # size; posting the tweet checks both (size by HEAD, type by the first bytes).
        url = self._signer.presigned_put_object(self._bucket, key, expires=expires)
        return url, {"Content-Type": content_type}

    def presign_get(self, key: str, expires: timedelta, *, issued_at: datetime) -> str:
        return self._signer.presigned_get_object(
            self._bucket,
            key,
            expires=expires,
            request_date=issued_at,
            # Served as the declared image type whatever Content-Type the uploader sent, so
            # a stored object can never be rendered as a page.
            response_headers={
                "response-content-type": content_type_of_key(key),
                "response-cache-control": IMMUTABLE_CACHE,
            },
        )

    async def head(self, key: str) -> int | None:
        def stat() -> int | None:
            try:
                found = self._client.stat_object(self._bucket, key)
            except S3Error as error:
                if error.code in _MISSING_CODES:
                    return None
                raise
            return found.size

        return await self._call(stat)

    async def read_range(self, key: str, start: int, length: int) -> bytes:
        def read() -> bytes:
            response = self._client.get_object(self._bucket, key, offset=start, length=length)
            try:
                return bytes(response.read())
            finally:
                response.close()
                response.release_conn()

        return await self._call(read)

    async def delete(self, key: str) -> None:
        await self._call(lambda: self._client.remove_object(self._bucket, key))

    async def ping(self) -> bool:
        try:
            return await self._call(lambda: self._client.bucket_exists(self._bucket))
        except Unavailable:
            return False

    async def start(self) -> None:
        def ensure_bucket() -> None:
            if not self._client.bucket_exists(self._bucket):
                self._client.make_bucket(self._bucket, location=self._region)

        try:
            await self._call(ensure_bucket)
        except Unavailable:
            log.warning("media store unreachable at start", extra={"bucket": self._bucket})

    async def _call(self, operation: Callable[[], T]) -> T:
        try:
            return await asyncio.to_thread(operation)
        except S3_ERRORS as error:
            log.warning("media store call failed: %s", error)
            raise Unavailable("the media store is unavailable") from error


class LocalMediaStore:
    """Files under one directory, named by their keys. Its URLs point at the app
    (`web/media_api.py`), carry an expiry and an HMAC signature, and are relative to the app's
    origin: only the app knows how clients reach it (a proxy, a 0.0.0.0 bind)."""

    def __init__(
        self,
        root: Path,
        secret: bytes,
        *,
        base_url: str = "",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = root
        # A key of its own, so a media signature can never stand in for any other signature
        # made with the app's secret.
        self._key = hmac.new(secret, b"chirp media urls", hashlib.sha256).digest()
        self._base_url = base_url.rstrip("/")
        self._clock = clock

    # -- signing -------------------------------------------------------------------------

    def _sign(self, *parts: object) -> str:
        message = "\n".join(str(p) for p in parts).encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def presign_put(
        self, key: str, content_type: str, size: int, expires: timedelta
    ) -> tuple[str, dict[str, str]]:
        self.path(key)
        deadline = int(self._clock() + expires.total_seconds())
        query = {
            "expires": deadline,
            "type": content_type,
            "size": size,
            "sig": self._sign("PUT", key, deadline, content_type, size),
        }
        return f"{self._base_url}/media/upload/{key}?{urlencode(query)}", {
            "Content-Type": content_type
        }

    def presign_get(self, key: str, expires: timedelta, *, issued_at: datetime) -> str:
        self.path(key)
        deadline = int((issued_at + expires).timestamp())
        query = {"expires": deadline, "sig": self._sign("GET", key, deadline)}
        return f"{self._base_url}/media/files/{key}?{urlencode(query)}"

    def put_allowed(self, key: str, expires: int, content_type: str, size: int, sig: str) -> bool:
        expected = self._sign("PUT", key, expires, content_type, size)
        return hmac.compare_digest(expected, sig) and expires >= self._clock()

    def get_allowed(self, key: str, expires: int, sig: str) -> bool:
        expected = self._sign("GET", key, expires)
        return hmac.compare_digest(expected, sig) and expires >= self._clock()

    def seconds_left(self, expires: int) -> int:
        return max(0, int(expires - self._clock()))

    def path(self, key: str) -> Path:
        """The file of a key. Keys are ours (random hex and an extension); anything else,
        and anything that would resolve outside the store, is refused."""
        if not is_valid_key(key):
            raise ValueError("not a media key")
        path = self.root / key
        if path.resolve().parent != self.root.resolve():
            raise ValueError("not a media key")
        return path

    # -- the bytes -------------------------------------------------------------------------

    async def write(self, key: str, chunks: AsyncIterable[bytes], size: int) -> bool:
        """Stores exactly `size` bytes under `key`, once. Streams into a temporary file and
        links it into place only when complete, so a reader never sees a partial file.
        Returns False, keeping nothing, when the bytes are not `size` long; raises
        FileExistsError when the key holds a file already."""
        target = self.path(key)
        fd, temp_name = await asyncio.to_thread(tempfile.mkstemp, dir=self.root, prefix=".upload-")
        temp = Path(temp_name)
        try:
            written = 0
            with os.fdopen(fd, "wb") as out:
                async for chunk in chunks:
                    written += len(chunk)
                    if written > size:
                        return False
                    await asyncio.to_thread(out.write, chunk)
            if written != size:
                return False
            # link, unlike rename, refuses to replace: a URL uploads one object, once.
            await asyncio.to_thread(os.link, temp, target)
            return True
        finally:
            # Synchronous on purpose: it must run even when the upload is cancelled.
            _discard(temp)

    async def head(self, key: str) -> int | None:
        path = self.path(key)

        def stat() -> int | None:
            try:
                return path.stat().st_size
            except FileNotFoundError:
                return None

        return await self._io(stat)

    async def read_range(self, key: str, start: int, length: int) -> bytes:
        path = self.path(key)

        def read() -> bytes:
            with path.open("rb") as f:
                f.seek(start)
                return f.read(length)

        try:
            return await self._io(read)
        except FileNotFoundError:
            return b""

    async def delete(self, key: str) -> None:
        path = self.path(key)
        await self._io(lambda: path.unlink(missing_ok=True))

    async def ping(self) -> bool:
        return await asyncio.to_thread(
            lambda: self.root.is_dir() and os.access(self.root, os.W_OK | os.X_OK)
        )

    async def start(self) -> None:
        try:
            await self._io(lambda: self.root.mkdir(parents=True, exist_ok=True))
        except Unavailable:
            log.warning("media directory unusable", extra={"path": str(self.root)})

    async def _io(self, operation: Callable[[], T]) -> T:
        try:
            return await asyncio.to_thread(operation)
        except FileNotFoundError:
            raise
        except OSError as error:
            log.warning("media store call failed: %s", error)
            raise Unavailable("the media store is unavailable") from error


def _discard(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
