"""`create_app()`: the Litestar application, built from settings. Nothing connects until the
app starts (its lifespan), so importing this module is free of I/O."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from litestar import Litestar, Request, get
from litestar.datastructures import State
from litestar.di import Provide
from litestar.exceptions import HTTPException, NotAuthorizedException, NotFoundException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import RedocRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from litestar.response import Response

from domain.errors import DomainError
from realtime.live import LiveHub
from storage.metrics import forget_dead_processes
from web.api import AccountController, TimelineController, TweetController, UserController
from web.container import Services, build_services, settle_heap, start_services, stop_services
from web.csrf import csrf_protection
from web.deps import ChirpDep, ViewerDep
from web.errors import handle_domain_error, handle_http_error, handle_unexpected
from web.media_api import LocalMediaController, MediaController
from web.observability import metrics, request_observer
from web.ops_pages import ops_router
from web.page_live import home_socket
from web.pages import not_found, pages_router
from web.search_api import SearchController
from web.services import Chirp, Principal
from web.settings import Settings
from web.stream_api import stream
from web.templating import static_files_router, template_config

log = logging.getLogger("chirp.web")

SESSION_COOKIE = "chirp_session"


async def supervise(name: str, run: Callable[[], Awaitable[None]]) -> None:
    """Keeps a background loop alive: a crash is logged and the loop restarted, instead of
    the task dying silently and being noticed only at shutdown."""
    while True:
        try:
            await run()
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("background task crashed; restarting", extra={"task": name})
            await asyncio.sleep(1.0)


def provide_chirp(state: State) -> Chirp:
    chirp: ChirpDep = state.chirp
    return chirp


def credentials(request: Request[Any, Any, Any]) -> str | None:
    header = request.headers.get("authorization")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        return None
    return request.cookies.get(SESSION_COOKIE)


async def provide_viewer(request: Request[Any, Any, Any], chirp: ChirpDep) -> Principal | None:
    token = credentials(request)
    if token is None:
        return None
    return await chirp.authenticate(token)


async def provide_principal(viewer: ViewerDep) -> Principal:
    if viewer is None:
        raise NotAuthorizedException(
            "authentication required", headers={"WWW-Authenticate": "Bearer"}
        )
    return viewer


@get("/health", tags=["operations"])
async def health() -> dict[str, str]:
    return {"status": "ok"}


@get("/ready", tags=["operations"])
async def ready(state: State) -> Response[dict[str, str]]:
    services: Services = state.services
    report: dict[str, str] = {}
    report["postgres"] = "ok" if await services.db.ping() else "down"
    try:
        await asyncio.wait_for(services.redis.ping(), 1.0)
        report["redis"] = "ok"
    except Exception:
        report["redis"] = "down"
    report["nats"] = "ok" if services.link.connected else "down"
    report["typesense"] = "ok" if await services.search.healthy() else "down"
    try:
        media_ok = await asyncio.wait_for(services.media_store.ping(), 1.0)
    except Exception:
        media_ok = False
    report["media"] = "ok" if media_ok else "down"
    # Only Postgres is indispensable: without Redis or NATS Chirp still serves, degraded.
    status = 503 if report["postgres"] != "ok" else 200
    return Response(report, status_code=status)


def create_app(settings: Settings | None = None, *, run_relay: bool = True) -> Litestar:
    settings = settings or Settings.from_env()

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        services = build_services(settings, process_name="chirp-web")
        # Sockets counted by a web process that is gone must not count any more.
        forget_dead_processes()
        await start_services(services)
        app.state.services = services
        app.state.chirp = Chirp(services)
        hub = LiveHub(services.link, services.names, services.presence)
        app.state.hub = hub
        prepare_streams = services.link.on_connect

        async def on_connect() -> None:
            # Sockets opened before NATS answered must get their subscriptions even when
            # preparing the streams fails this time (it is retried on the next connect).
            try:
                if prepare_streams is not None:
                    await prepare_streams()
            finally:
                await hub.resubscribe()

        services.link.on_connect = on_connect
        tasks: list[asyncio.Task[None]] = [
            asyncio.create_task(supervise("live-presence", hub.keep_presence))
        ]
        if run_relay:
            tasks.append(
                asyncio.create_task(supervise("relay-publisher", services.relay.run_publisher))
            )
            tasks.append(
                asyncio.create_task(supervise("relay-sweeper", services.relay.run_sweeper))
            )
        settle_heap()
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await stop_services(services)

    return Litestar(
        route_handlers=[
            health,
            ready,
            metrics,
            AccountController,
            UserController,
            TweetController,
            TimelineController,
            stream,
            MediaController,
            LocalMediaController,
            SearchController,
            pages_router(),
            ops_router(),
            home_socket,
            static_files_router(),
        ],
        template_config=template_config(),
        # The request id and request metrics (web/observability.py); requests the session
        # cookie would authenticate need the CSRF token (web/csrf.py).
        middleware=[request_observer, csrf_protection],
        # Logging is configured once, by web/logs.py (JSON lines). Litestar's default config
        # would replace the root logger's handler and level with its own plain-text ones.
        logging_config=None,
        lifespan=[lifespan],
        dependencies={
            "chirp": Provide(provide_chirp, sync_to_thread=False),
            "viewer": Provide(provide_viewer),
            "principal": Provide(provide_principal),
        },
        exception_handlers={
            DomainError: handle_domain_error,
            HTTPException: handle_http_error,
            NotFoundException: not_found,
            Exception: handle_unexpected,
        },
        request_max_body_size=settings.max_body_bytes,
        openapi_config=OpenAPIConfig(
            title="Chirp API",
            version="1.0.0",
            path="/schema",
            # Everything from our own /static: no CDN, no web fonts (ui/static/vendor/).
            render_plugins=[
                RedocRenderPlugin(
                    js_url="/static/vendor/redoc.standalone.js",
                    google_fonts=False,
                    favicon='<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">',
                )
            ],
            components=Components(
                security_schemes={
                    "bearer": SecurityScheme(type="http", scheme="bearer"),
                }
            ),
            security=[{"bearer": []}],
        ),
        debug=False,
    )
