"""The browser UI: server-rendered pages from ui/templates, made smooth by htmx. Every page
works with plain links and forms (POST, then redirect, then GET); a request made by htmx gets
the fragment it swaps in instead. Like the JSON API, the controllers only parse, call the
`Chirp` services and render."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from litestar import Request, Response, Router, get, post
from litestar.datastructures import Cookie
from litestar.di import NamedDependency, Provide
from litestar.exceptions import HTTPException, NotAuthorizedException, NotFoundException
from litestar.params import FromPath, FromQuery
from litestar.plugins.htmx import ClientRedirect, HTMXRequest
from litestar.response import Redirect, Template

from domain.errors import DomainError, InvalidInput, NotFound, RateLimited, Unauthorized
from domain.ids import parse_id
from domain.model import Media, User
from web.api import client_address, parse_cursor
from web.csrf import (
    PRESESSION_COOKIE,
    SESSION_COOKIE,
    csrf_binding,
    csrf_key,
    csrf_token,
    new_presession_value,
    page_csrf_guard,
)
from web.deps import ChirpDep, ViewerDep
from web.errors import STATUS_BY_ERROR, handle_http_error
from web.search import TweetSearch
from web.search_api import parse_page
from web.services import SESSION_LIFETIME, Chirp, Principal

log = logging.getLogger("chirp.pages")

PAGE_SIZE = 20
SEARCH_PAGE_SIZE = 20


class Ui:
    """Renders pages and fragments for one request, with what every template needs: the
    signed-in user, the CSRF token, where "back" is, and how to show an image."""

    def __init__(self, request: HTMXRequest, viewer: Principal | None, chirp: Chirp) -> None:
        self.request = request
        self.viewer = viewer
        self.chirp = chirp
        self._cookies: list[Cookie] = []
        binding = csrf_binding(request)
        if binding is None:
            # No session yet: a pre-session cookie gives the sign-in form its token.
            binding = new_presession_value()
            self._cookies.append(self.cookie(PRESESSION_COOKIE, binding, max_age=None))
        self.csrf = csrf_token(csrf_key(request.app.state), binding)
        # The error handler renders with whatever the request got as far as knowing.
        request.state.ui = self

    @property
    def htmx(self) -> bool:
        return bool(self.request.htmx)

    @property
    def me(self) -> User | None:
        return self.viewer.user if self.viewer else None

    @property
    def here(self) -> str:
        """The page the user is on (for an htmx request: the page that made it)."""
        if self.htmx and self.request.htmx.current_url_abs_path:
            return self.request.htmx.current_url_abs_path
        query = self.request.url.query
        return self.request.url.path + (f"?{query}" if query else "")

    def cookie(self, key: str, value: str, *, max_age: int | None) -> Cookie:
        secure = self.chirp.s.settings.secure_cookies or self.request.url.scheme == "https"
        return Cookie(
            key=key, value=value, max_age=max_age, httponly=True, samesite="lax", secure=secure
        )

    def context(self, **values: Any) -> dict[str, Any]:
        media_url: Callable[[Media], str] = self.chirp.media.url
        return {
            "me": self.me,
            "csrf": self.csrf,
            "here": self.here,
            "media_url": media_url,
            **values,
        }

    def page(
        self,
        template: str,
        *,
        status: int = 200,
        cookies: list[Cookie] | None = None,
        **values: Any,
    ) -> Template:
        return Template(
            template_name=template,
            context=self.context(**values),
            status_code=status,
            cookies=[*self._cookies, *(cookies or [])],
            headers={"Vary": "HX-Request", "Cache-Control": "no-store"},
        )

    def redirect(self, to: str, *, cookies: list[Cookie] | None = None) -> Response[Any]:
        """After a form post: the browser GETs the next page (htmx: reloads it whole)."""
        if self.htmx:
            response: Response[Any] = ClientRedirect(to)
            response.cookies = [*response.cookies, *(cookies or [])]
            return response
        return Redirect(to, status_code=303, cookies=cookies or [])


async def provide_ui(request: HTMXRequest, viewer: ViewerDep, chirp: ChirpDep) -> Ui:
    return Ui(request, viewer, chirp)


UiDep = NamedDependency[Ui]


def safe_next(value: object, default: str = "/") -> str:
    """Only paths on this site: `next` must never send the user elsewhere. Browsers drop
    tabs and newlines from URLs ("/\t/evil.example" becomes "//evil.example") and read "\\"
    as "/", so neither may appear at all."""
    if (
        isinstance(value, str)
        and value.startswith("/")
        and not value.startswith("//")
        and "\\" not in value
        and value.isprintable()
        and not any(char.isspace() for char in value)
    ):
        return value
    return default


def field(form: Any, name: str) -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""


def require(ui: Ui) -> Principal:
    if ui.viewer is None:
        raise NotAuthorizedException("sign in to continue")
    return ui.viewer


def tweet_id_of(raw: str) -> int:
    value = parse_id(raw)
    if value is None:
        raise NotFound("tweet not found")
    return value


def with_cursor(path: str, cursor: int | None, **params: str) -> str | None:
    if cursor is None:
        return None
    return f"{path}?{urlencode({**params, 'cursor': str(cursor)})}"


# -- home, sign up, sign in, sign out ----------------------------------------------------------


@get("/")
async def home(ui: UiDep, chirp: ChirpDep, cursor: FromQuery[str | None] = None) -> Response[Any]:
    if ui.viewer is None:
        return ui.page("welcome.html", username="", error=None, next="/")
    page = await chirp.home(ui.viewer, before=parse_cursor(cursor), after=None, limit=PAGE_SIZE)
    more = with_cursor("/", page.next_cursor)
    if ui.htmx and cursor:
        return ui.page("fragments/more.html", items=page.items, more=more, feed="timeline")
    newest = page.items[0].tweet.id if page.items else None
    return ui.page(
        "home.html",
        items=page.items,
        more=more,
        live=cursor is None,
        since_id=newest or chirp.s.ids.next_id(),
    )


@get("/signin")
async def sign_in_page(ui: UiDep, next: FromQuery[str | None] = None) -> Response[Any]:
    if ui.viewer is not None:
        return ui.redirect(safe_next(next))
    return ui.page("signin.html", username="", error=None, next=safe_next(next))


@post("/signin")
async def sign_in(ui: UiDep, chirp: ChirpDep) -> Response[Any]:
    form = await ui.request.form()
    username, target = field(form, "username").strip(), safe_next(form.get("next"))
    try:
        _, token = await chirp.sign_in(
            username,
            field(form, "password"),
            client_address(ui.request),
            browser=True,
        )
    except (Unauthorized, RateLimited) as error:
        status = 429 if isinstance(error, RateLimited) else 401
        return ui.page(
            "signin.html", status=status, username=username, error=error.detail, next=target
        )
    return ui.redirect(target, cookies=[session_cookie(ui, token)])


@get("/signup")
async def sign_up_page(ui: UiDep) -> Response[Any]:
    if ui.viewer is not None:
        return ui.redirect("/")
    return ui.page("signup.html", values={}, error=None)


@post("/signup")
async def sign_up(ui: UiDep, chirp: ChirpDep) -> Response[Any]:
    form = await ui.request.form()
    values = {name: field(form, name).strip() for name in ("username", "display_name")}
    try:
        _, token = await chirp.sign_up(
            values["username"],
            field(form, "password"),
            values["display_name"] or None,
            client_address(ui.request),
            browser=True,
        )
    except DomainError as error:
        status = STATUS_BY_ERROR.get(type(error), 422)
        return ui.page("signup.html", status=status, values=values, error=error.detail)
    return ui.redirect("/", cookies=[session_cookie(ui, token)])


def session_cookie(ui: Ui, token: str) -> Cookie:
    return ui.cookie(SESSION_COOKIE, token, max_age=int(SESSION_LIFETIME.total_seconds()))


@post("/signout")
async def sign_out(ui: UiDep, chirp: ChirpDep) -> Response[Any]:
    if ui.viewer is not None:
        await chirp.sign_out(ui.viewer)
    gone = ui.cookie(SESSION_COOKIE, "", max_age=0)
    return ui.redirect("/", cookies=[gone])


# -- tweets ----------------------------------------------------------------------------------


@post("/tweets")
async def compose(ui: UiDep, chirp: ChirpDep) -> Response[Any]:
    principal = require(ui)
    form = await ui.request.form()
    reply_to = None
    if raw_reply := field(form, "reply_to"):
        reply_to = parse_id(raw_reply)
        if reply_to is None:
            raise InvalidInput("reply_to is not an existing tweet")
    media_ids = []
    for raw in form.getall("media_ids", []):
        media_id = parse_id(raw) if isinstance(raw, str) else None
        if media_id is None:
            raise InvalidInput("media_ids holds an unknown media id")
        media_ids.append(media_id)
    alts = {m: alt for m in media_ids if (alt := field(form, f"alt_{m}"))}
    view, _ = await chirp.post_tweet(
        principal,
        field(form, "text"),
        reply_to=reply_to,
        media_ids=media_ids,
        media_alts=alts,
        idempotency_key=field(form, "idempotency_key") or None,
    )
    if ui.htmx:
        return ui.page("fragments/tweet.html", view=view, status=201)
    return ui.redirect(safe_next(form.get("next")))


@get("/tweets/{tweet_id:str}")
async def tweet_page(
    ui: UiDep, chirp: ChirpDep, tweet_id: FromPath[str], cursor: FromQuery[str | None] = None
) -> Response[Any]:
    tid = tweet_id_of(tweet_id)
    replies = await chirp.replies(ui.viewer, tid, after=parse_cursor(cursor), limit=PAGE_SIZE)
    more = with_cursor(f"/tweets/{tid}", replies.next_cursor)
    if ui.htmx and cursor:
        return ui.page("fragments/more.html", items=replies.items, more=more, feed="replies")
    view = await chirp.tweet(ui.viewer, tid)
    parent = None
    if view.tweet.reply_to is not None:
        try:
            parent = await chirp.tweet(ui.viewer, view.tweet.reply_to)
        except NotFound:
            parent = None
    return ui.page("tweet.html", view=view, parent=parent, replies=replies.items, more=more)


@post("/tweets/{tweet_id:str}/delete")
async def delete_tweet(ui: UiDep, chirp: ChirpDep, tweet_id: FromPath[str]) -> Response[Any]:
    tid = tweet_id_of(tweet_id)
    await chirp.delete_tweet(require(ui), tid)
    form = await ui.request.form()
    back = safe_next(form.get("next"))
    if back.split("?")[0] == f"/tweets/{tid}":
        return ui.redirect("/")  # the page of a deleted tweet is gone
    if ui.htmx:
        return Response("", media_type="text/html")  # swapped in: the tweet disappears
    return ui.redirect(back)


@post("/tweets/{tweet_id:str}/like")
async def like(ui: UiDep, chirp: ChirpDep, tweet_id: FromPath[str]) -> Response[Any]:
    return await _like(ui, chirp, tweet_id, liked=True)


@post("/tweets/{tweet_id:str}/unlike")
async def unlike(ui: UiDep, chirp: ChirpDep, tweet_id: FromPath[str]) -> Response[Any]:
    return await _like(ui, chirp, tweet_id, liked=False)


async def _like(ui: Ui, chirp: Chirp, raw_id: str, *, liked: bool) -> Response[Any]:
    tid = tweet_id_of(raw_id)
    count = await chirp.like(require(ui), tid, liked=liked)
    if ui.htmx:
        return ui.page("fragments/like.html", tweet_id=tid, liked=liked, like_count=count)
    form = await ui.request.form()
    return ui.redirect(safe_next(form.get("next"), f"/tweets/{tid}"))


# -- people ----------------------------------------------------------------------------------


@get("/u/{username:str}")
async def profile(
    ui: UiDep, chirp: ChirpDep, username: FromPath[str], cursor: FromQuery[str | None] = None
) -> Response[Any]:
    user = await chirp.user(username)
    page = await chirp.user_tweets(
        ui.viewer, user.username, before=parse_cursor(cursor), limit=PAGE_SIZE
    )
    more = with_cursor(f"/u/{quote(user.username)}", page.next_cursor)
    if ui.htmx and cursor:
        return ui.page("fragments/more.html", items=page.items, more=more, feed="timeline")
    following = await chirp.is_following(ui.viewer, user)
    return ui.page("profile.html", user=user, following=following, items=page.items, more=more)


@post("/u/{username:str}/follow")
async def follow(ui: UiDep, chirp: ChirpDep, username: FromPath[str]) -> Response[Any]:
    return await _follow(ui, chirp, username, following=True)


@post("/u/{username:str}/unfollow")
async def unfollow(ui: UiDep, chirp: ChirpDep, username: FromPath[str]) -> Response[Any]:
    return await _follow(ui, chirp, username, following=False)


async def _follow(ui: Ui, chirp: Chirp, username: str, *, following: bool) -> Response[Any]:
    principal = require(ui)
    if following:
        await chirp.follow(principal, username)
    else:
        await chirp.unfollow(principal, username)
    if ui.htmx:
        user = await chirp.user(username)
        # On that user's own profile page, the follower count beside the button changes too.
        on_profile = urlsplit(ui.here).path.lower() == f"/u/{user.username.lower()}"
        return ui.page(
            "fragments/follow.html", user=user, following=following, on_profile=on_profile
        )
    form = await ui.request.form()
    return ui.redirect(safe_next(form.get("next"), f"/u/{quote(username)}"))


@get("/u/{username:str}/followers")
async def followers(
    ui: UiDep, chirp: ChirpDep, username: FromPath[str], cursor: FromQuery[str | None] = None
) -> Response[Any]:
    return await _people(ui, chirp, username, cursor, followers=True)


@get("/u/{username:str}/following")
async def following_list(
    ui: UiDep, chirp: ChirpDep, username: FromPath[str], cursor: FromQuery[str | None] = None
) -> Response[Any]:
    return await _people(ui, chirp, username, cursor, followers=False)


async def _people(
    ui: Ui, chirp: Chirp, username: str, cursor: str | None, *, followers: bool
) -> Response[Any]:
    user = await chirp.user(username)
    page = await chirp.follow_list(
        ui.viewer, user.username, followers=followers, before=parse_cursor(cursor), limit=PAGE_SIZE
    )
    kind = "followers" if followers else "following"
    more = with_cursor(f"/u/{quote(user.username)}/{kind}", page.next_cursor)
    if ui.htmx and cursor:
        return ui.page("fragments/more_people.html", people=page.users, more=more)
    return ui.page("people.html", user=user, kind=kind, people=page.users, more=more)


# -- search ----------------------------------------------------------------------------------


@get("/search")
async def search(
    ui: UiDep, chirp: ChirpDep, q: FromQuery[str | None] = None, page: FromQuery[str | None] = None
) -> Response[Any]:
    query = (q or "").strip()
    results, error = None, None
    number = parse_page(page)
    if query:
        try:
            results = await TweetSearch(chirp.s).search(
                ui.viewer.user.id if ui.viewer else None,
                query,
                page=number,
                limit=SEARCH_PAGE_SIZE,
            )
        except DomainError as failure:
            error = failure.detail
    more = None
    if results is not None and number * SEARCH_PAGE_SIZE < results.found:
        more = f"/search?{urlencode({'q': query, 'page': number + 1})}"
    if ui.htmx and ui.request.htmx.target == "results":
        return ui.page(
            "fragments/search_results.html", q=query, results=results, error=error, more=more
        )
    if ui.htmx and number > 1 and results is not None:
        return ui.page("fragments/more.html", items=results.items, more=more, feed="timeline")
    return ui.page("search.html", q=query, results=results, error=error, more=more)


# -- errors ----------------------------------------------------------------------------------


def _is_htmx(request: Request[Any, Any, Any]) -> bool:
    # Exception handlers get the app's plain Request, not the router's HTMXRequest.
    return request.headers.get("hx-request") == "true"


def page_error(request: Request[Any, Any, Any], error: Exception) -> Response[Any]:
    """Errors on pages: the sign-in page when signing in would help, else a page (or, for
    htmx, a message in the toast) saying what went wrong in words."""
    if isinstance(error, NotAuthorizedException):
        target = "/signin?" + urlencode({"next": _page_of(request)})
        if _is_htmx(request):
            return ClientRedirect(target)
        return Redirect(target, status_code=303)
    if isinstance(error, DomainError):
        status = next((c for k, c in STATUS_BY_ERROR.items() if isinstance(error, k)), 400)
        detail = error.detail
    elif isinstance(error, HTTPException):
        status, detail = error.status_code, str(error.detail)
    else:
        log.exception("unhandled error on a page", extra={"path": request.url.path})
        status, detail = 500, "Something went wrong on our side. Please try again."
    ui: Ui | None = request.state.get("ui")
    if _is_htmx(request):
        return Template(
            template_name="fragments/toast.html",
            context={"message": detail},
            status_code=status,
            headers={"HX-Retarget": "#toast", "HX-Reswap": "innerHTML"},
        )
    if ui is not None:
        context = ui.context()
    else:  # failed before the page knew its user (e.g. the CSRF check itself)
        binding = csrf_binding(request)
        token = csrf_token(csrf_key(request.app.state), binding) if binding else ""
        context = {"me": None, "csrf": token, "here": request.url.path}
    title = {404: "Not found", 403: "Not allowed", 429: "Slow down"}.get(
        status, "Something went wrong"
    )
    return Template(
        template_name="error.html",
        context={**context, "status": status, "title": title, "detail": detail},
        status_code=status,
    )


NOT_PAGES = ("/api/", "/media/", "/static/", "/schema", "/ws/")


def not_found(request: Request[Any, Any, Any], error: NotFoundException) -> Response[Any]:
    """An unknown address: a page for a browser, the contract's JSON body for API clients."""
    wants_page = "text/html" in request.headers.get("accept", "")
    if request.url.path.startswith(NOT_PAGES) or not wants_page:
        return handle_http_error(request, error)
    return page_error(request, error)


def _page_of(request: Request[Any, Any, Any]) -> str:
    current = request.headers.get("hx-current-url")
    if current:
        parts = urlsplit(current)
        return safe_next(parts.path + (f"?{parts.query}" if parts.query else ""))
    return request.url.path if request.method == "GET" else "/"


def page_router(path: str, route_handlers: list[Any]) -> Router:
    """A router of HTML pages: the page context, CSRF on unsafe requests, htmx requests, and
    every error answered with a page."""
    return Router(
        path=path,
        route_handlers=route_handlers,
        dependencies={"ui": Provide(provide_ui)},
        guards=[page_csrf_guard],
        request_class=HTMXRequest,
        # Every type the app maps to JSON, so that pages answer with pages instead.
        exception_handlers={
            DomainError: page_error,
            HTTPException: page_error,
            Exception: page_error,
        },
        include_in_schema=False,
    )


def pages_router() -> Router:
    return page_router(
        "/",
        [
            home,
            sign_in_page,
            sign_in,
            sign_up_page,
            sign_up,
            sign_out,
            compose,
            tweet_page,
            delete_tweet,
            like,
            unlike,
            profile,
            follow,
            unfollow,
            followers,
            following_list,
            search,
        ],
    )
