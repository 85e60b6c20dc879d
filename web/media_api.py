"""Media over HTTP: `POST /api/v1/media` hands out an upload URL; when the local store is in
use, the app also plays the object store's part and serves those signed URLs itself
(`PUT /media/upload/{key}`, `GET /media/files/{key}`)."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, get, post, put
from litestar.datastructures import State
from litestar.exceptions import HTTPException, NotFoundException, PermissionDeniedException
from litestar.params import FromPath, JSONBody
from litestar.response import File

from domain.media import MAX_MEDIA_BYTES, content_type_of_key
from storage.media import LocalMediaStore
from web.deps import ChirpDep, PrincipalDep
from web.errors import rate_limit_headers
from web.schemas import MediaCreatedOut, MediaIn, UploadOut, format_time

ACCESS_DENIED = "the URL is invalid or has expired"


class MediaController(Controller):
    path = "/api/v1/media"
    tags = ["media"]

    @post("/", status_code=201)
    async def create(
        self, data: JSONBody[MediaIn], principal: PrincipalDep, chirp: ChirpDep
    ) -> Response[MediaCreatedOut]:
        upload = await chirp.media.create_upload(
            principal.user.id, data.content_type, data.size, data.alt
        )
        decision = upload.decision
        return Response(
            MediaCreatedOut(
                media_id=str(upload.media_id),
                upload=UploadOut(method="PUT", url=upload.url, headers=upload.headers),
                expires_at=format_time(upload.expires_at),
            ),
            status_code=201,
            headers=rate_limit_headers(decision.limit, decision.remaining, decision.reset),
        )


def _local_store(state: State) -> LocalMediaStore:
    store = state.services.media_store
    if not isinstance(store, LocalMediaStore):
        # Another store is configured: these URLs were never handed out.
        raise NotFoundException("not found")
    return store


def _int(raw: str | None) -> int | None:
    return int(raw) if raw is not None and raw.isascii() and raw.isdigit() else None


def _valid_key(store: LocalMediaStore, key: str) -> None:
    try:
        store.path(key)
    except ValueError:
        raise NotFoundException("not found") from None


class LocalMediaController(Controller):
    """The local store's object-store endpoints. The signature in the URL is the credential,
    as with S3; it covers the key, the expiry and, for uploads, the declared type and size,
    which the upload must match exactly."""

    path = "/media"
    tags = ["media"]
    include_in_schema = False
    # See web/csrf.py: the signature, not the cookie, authorises these requests.
    opt = {"csrf_exempt": True}

    @put("/upload/{key:str}", status_code=200, request_max_body_size=MAX_MEDIA_BYTES)
    async def upload(
        self, key: FromPath[str], request: Request[Any, Any, Any], state: State
    ) -> Response[None]:
        store = _local_store(state)
        _valid_key(store, key)
        query = request.query_params
        expires, size = _int(query.get("expires")), _int(query.get("size"))
        declared_type, sig = query.get("type"), query.get("sig")
        if expires is None or size is None or declared_type is None or sig is None:
            raise PermissionDeniedException(ACCESS_DENIED)
        if not store.put_allowed(key, expires, declared_type, size, sig):
            raise PermissionDeniedException(ACCESS_DENIED)
        sent_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if sent_type != declared_type:
            raise HTTPException(
                status_code=400, detail=f"Content-Type must be {declared_type}, as declared"
            )
        length = request.headers.get("content-length")
        if length is not None and _int(length) != size:
            raise HTTPException(
                status_code=400, detail=f"the body must be exactly {size} bytes, as declared"
            )
        try:
            stored = await store.write(key, request.stream(), size)
        except FileExistsError:
            raise HTTPException(status_code=409, detail="this upload is complete already") from None
        if not stored:
            raise HTTPException(
                status_code=400, detail=f"the body must be exactly {size} bytes, as declared"
            )
        return Response(None, status_code=200)

    @get("/files/{key:str}")
    async def download(
        self, key: FromPath[str], request: Request[Any, Any, Any], state: State
    ) -> File:
        store = _local_store(state)
        _valid_key(store, key)
        expires, sig = _int(request.query_params.get("expires")), request.query_params.get("sig")
        if expires is None or sig is None or not store.get_allowed(key, expires, sig):
            raise PermissionDeniedException(ACCESS_DENIED)
        if await store.head(key) is None:
            raise NotFoundException("not found")
        return File(
            store.path(key),
            content_disposition_type="inline",
            media_type=content_type_of_key(key),
            headers={
                # Keys never change their bytes, so a cache may keep the image for as long
                # as its URL is valid.
                "Cache-Control": f"public, max-age={store.seconds_left(expires)}, immutable",
                "X-Content-Type-Options": "nosniff",
            },
        )
