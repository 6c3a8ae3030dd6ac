"""The memory browser's pages: search, timeline, a record and its history, stats, and the actions.

Pages are rendered on the server (Jinja2, autoescaped) from the same service calls the tools make,
through the same `MemoryProvider`: in hosted mode the process's `Memory`, under `lightmem-mcp ui`
the shared owner of the data directory (or a front door to it). One small script, served from the
package, adds keyboard shortcuts and the typed-confirmation check; every page works without it.

Every request passes `Guard` first: the Host and Origin rules of the MCP endpoint, the security
headers, and for a POST an Origin of this server. Each page then needs a session (`access`), and
a `user` the session may see; each action needs the `write` scope and the session's CSRF token.
"""

from __future__ import annotations

import difflib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlencode, urlsplit

import anyio
import jinja2
from mcp.server.transport_security import TransportSecurityMiddleware, TransportSecuritySettings
from starlette.applications import Starlette
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Send
from starlette.types import Message as ASGIMessage
from starlette.types import Scope as ASGIScope

import lightmem_mcp
from lightmem_mcp.api import (
    ActivityResult,
    HistoryResult,
    LLMCallInfo,
    MemoryRecord,
    SearchFilters,
    SearchResult,
    StatsResult,
)
from lightmem_mcp.calls import MemoryProvider, MemoryService
from lightmem_mcp.errors import BackendUnavailable, InvalidInput, LightMemError, NotFound
from lightmem_mcp.records import KINDS, MAX_ID_CHARS, Scope, record_id
from lightmem_mcp.ui.access import COOKIE, PATH, Access, LinkRefused, Viewer
from lightmem_mcp.ui.charts import bars, stacked_bars

log = logging.getLogger(__name__)

T = TypeVar("T")
_HERE = Path(__file__).parent
SEARCH_LIMIT = 20
SEARCH_CONTEXT = 2
TIMELINE_PAGE = 100
_SOURCES_SHOWN = 12  # source messages shown per hit
_TEXT_SHOWN = 600  # characters of a record's text in a list
_SUMMARIES_READ = 1_000  # summaries read to find what a summary hit covers
_LOOKED_UP = 1_000  # message ids looked for in other sessions, per page
_SESSIONS_LOOKED_IN = 200  # sessions (the busiest) where a merged fact's other messages are looked for
GROUPS = ("session", "day", "week")

# No inline script or style anywhere: everything the page runs or wears comes from /ui/static.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; connect-src 'self'"
)
_HEADERS = {
    "content-security-policy": CSP,
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    # A Referer only to this server, so a link's ticket never leaves; not "no-referrer", under which
    # browsers send `Origin: null` with every form POST, and the Origin check refuses them all.
    "referrer-policy": "same-origin",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
    "permissions-policy": "camera=(), microphone=(), geolocation=()",
}


class Refused(Exception):
    """A request the page answers with an error page: status and what to say."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def build_ui(provider: MemoryProvider[Any], access: Access, security: TransportSecuritySettings) -> ASGIApp:
    """The `/ui` app (mount it at `PATH`): pages and actions over `provider`'s memory service."""
    pages = Pages(provider, access)
    routes = [
        Route("/", pages.home, methods=["GET"]),
        Route("/login", pages.login, methods=["GET", "POST"]),
        Route("/logout", pages.logout, methods=["POST"]),
        Route("/enter", pages.enter, methods=["GET"]),
        Route("/search", pages.search, methods=["GET"]),
        Route("/timeline", pages.timeline, methods=["GET"]),
        Route("/records/{record_id}", pages.record, methods=["GET"]),
        Route("/records/{record_id}/delete", pages.delete, methods=["POST"]),
        Route("/stats", pages.stats, methods=["GET"]),
        Route("/forget", pages.forget, methods=["GET", "POST"]),
        Route("/export", pages.export, methods=["POST"]),
        Mount("/static", app=StaticFiles(directory=_HERE / "static"), name="static"),
    ]
    return Guard(Starlette(routes=routes), security)


class Guard:
    """ASGI guard of every `/ui` request: Host and Origin as the MCP endpoint checks them (421 / 403),
    a POST's Origin (when the browser sends one) of this server, and the security headers."""

    def __init__(self, app: ASGIApp, security: TransportSecuritySettings) -> None:
        self._app = app
        self._security = security
        self._check = TransportSecurityMiddleware(security)

    async def __call__(self, scope: ASGIScope, receive: Receive, send: Send) -> None:
        """Refuse what the rules refuse; add the headers to every answer."""
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return

        async def dressed(message: ASGIMessage) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.decode().lower() not in _HEADERS]
                headers += [(k.encode(), v.encode()) for k, v in _HEADERS.items()]
                message = {**message, "headers": headers}
            await send(message)

        request = Request(scope, receive)
        refused = await self._check.validate_request(request, is_post=False)
        if refused is None and scope["method"] == "POST" and not self._same_origin(request):
            refused = Response("Cross-origin form refused: this page only accepts its own forms", status_code=403)
        if refused is not None:
            await refused(scope, receive, dressed)
            return
        await self._app(scope, receive, dressed)

    def _same_origin(self, request: Request) -> bool:
        """A POST from a browser names its page's origin: it must be this server (or an allowed one)."""
        origin = request.headers.get("origin")
        if origin is None:
            # Browsers send Origin with every POST; what comes without one is no browser's cross-site form.
            return request.headers.get("sec-fetch-site") in (None, "same-origin", "none")
        if origin in self._security.allowed_origins:
            return True
        return urlsplit(origin).netloc == request.headers.get("host", "")


@dataclass
class Page:
    """What a handler needs: the request, its viewer, the user it looks at, the service."""

    request: Request
    viewer: Viewer
    user: str
    memory: MemoryService

    async def call(self, work: Callable[[MemoryService], T]) -> T:
        """Run a service call off the event loop; domain errors become error pages."""
        try:
            return await anyio.to_thread.run_sync(work, self.memory)
        except NotFound as exc:
            raise Refused(404, str(exc)) from None
        except InvalidInput as exc:
            raise Refused(400, str(exc)) from None
        except BackendUnavailable as exc:
            raise Refused(503, str(exc)) from None
        except LightMemError as exc:
            raise Refused(400, str(exc)) from None


Handler = Callable[[Page], Awaitable[Response]]


class Pages:
    """The handlers, with the checks every page and action shares."""

    def __init__(self, provider: MemoryProvider[Any], access: Access) -> None:
        self._provider = provider
        self._access = access
        self._templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(_HERE / "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self._templates.filters.update(when=_when, day=_day, shortened=_shortened, pretty=_pretty, plural=_plural)

    # -- rendering -----------------------------------------------------------------------------

    def render(
        self, request: Request, name: str, viewer: Viewer | None, status: int = 200, **context: Any
    ) -> HTMLResponse:
        """A page of `name`, with what every page shows (who, the user, the nav, the CSRF token)."""
        user = context.pop("user", viewer.home_user if viewer else None)
        html = self._templates.get_template(name).render(
            viewer=viewer,
            user=user,
            csrf=self._access.csrf(viewer) if viewer else "",
            path=request.url.path,
            href=lambda page, **query: _href(page, user, **query),
            static=lambda file: f"{PATH}/static/{file}?v={lightmem_mcp.__version__}",
            entry=self._access.entry,
            **context,
        )
        response = HTMLResponse(html, status_code=status)
        response.headers["cache-control"] = "no-store"
        return response

    def refusal(self, request: Request, viewer: Viewer | None, refused: Refused, user: str | None = None) -> Response:
        """The error page of a refused request."""
        return self.render(
            request, "error.html", viewer, status=refused.status, message=str(refused), user=user, title="Refused"
        )

    # -- the checks ----------------------------------------------------------------------------

    async def _viewer(self, request: Request) -> tuple[Viewer | None, str | None]:
        """The session's viewer, and a fresh session cookie when the server is open to all."""
        viewer = await self._access.viewer(request.cookies.get(COOKIE))
        if viewer is None and self._access.entry == "open":
            cookie = self._access.open_session()
            return await self._access.viewer(cookie), cookie
        return viewer, None

    async def _page(self, request: Request, handler: Handler, write: bool = False) -> Response:
        """Run `handler` for the session's viewer on the `user` asked for, once the checks pass: a
        session, a user it may see, the `write` scope for actions, and the CSRF token on every POST."""
        viewer, cookie = await self._viewer(request)
        if viewer is None:
            if request.method != "GET":
                return self.refusal(request, None, Refused(401, "your session has ended: log in again"))
            return RedirectResponse(f"{PATH}/login?{urlencode({'next': _local_path(request)})}", status_code=303)
        form = await request.form() if request.method == "POST" else None
        user = _field(form, "user") if form is not None else request.query_params.get("user")
        user = user or viewer.home_user
        try:
            if not user.strip() or len(user) > MAX_ID_CHARS:
                raise Refused(400, f"user: give a user id of 1 to {MAX_ID_CHARS} characters")
            if not viewer.may_see(user):
                raise Refused(
                    403,
                    f"user: {user!r} is not yours to see. This session acts for {viewer.tenant!r}: "
                    "memories of other users cannot be reached.",
                )
            if not viewer.can_read:
                raise Refused(403, "this token lacks the 'read' scope")
            if write and not viewer.can_write:
                raise Refused(
                    403, "this session is read-only: deleting, forgetting and exporting need the 'write' scope"
                )
            if form is not None and not self._access.csrf_ok(viewer, _field(form, "csrf")):
                raise Refused(403, "this form is stale or was not sent by this page: reload the page and retry")
            memory = await self._provider.get()
            response = await handler(Page(request, viewer, user, memory))
        except Refused as refused:
            response = self.refusal(request, viewer, refused, user=user if viewer.may_see(user) else None)
        except BackendUnavailable as exc:
            response = self.refusal(request, viewer, Refused(503, str(exc)))
        if cookie is not None:
            self._set_cookie(request, response, cookie)
        return response

    def _set_cookie(self, request: Request, response: Response, value: str) -> None:
        response.set_cookie(
            COOKIE,
            value,
            path=PATH,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https" or request.headers.get("x-forwarded-proto") == "https",
        )

    # -- entry ---------------------------------------------------------------------------------

    async def home(self, request: Request) -> Response:
        """To the search page of the viewer's own user."""

        async def to_search(page: Page) -> Response:
            return _redirect(_href("search", page.user))

        return await self._page(request, to_search)

    async def login(self, request: Request) -> Response:
        """The token form (GET), or a session for a valid token (POST)."""
        target = request.query_params.get("next") or ""
        if request.method == "GET":
            viewer, _ = await self._viewer(request)
            if viewer is not None:
                return _redirect(_safe_next(target) or _href("search", viewer.home_user))
            return self.render(request, "login.html", None, title="Log in", next=target, message=None, user=None)
        form = await request.form()
        cookie = await self._access.token_session(_field(form, "token") or "")
        if cookie is None:
            message = (
                "That token was not accepted: check it, or ask for a new one."
                if self._access.entry == "token"
                else "This server takes no tokens: open the link that `lightmem-mcp ui` printed."
            )
            return self.render(
                request, "login.html", None, status=401, title="Log in", next=target, message=message, user=None
            )
        viewer = await self._access.viewer(cookie)
        assert viewer is not None
        response = _redirect(_safe_next(_field(form, "next") or "") or _href("search", viewer.home_user))
        self._set_cookie(request, response, cookie)
        return response

    async def enter(self, request: Request) -> Response:
        """A signed link: a session, then the search page without the ticket in the address bar."""
        try:
            cookie = self._access.take_link(request.query_params.get("ticket", ""))
        except LinkRefused as exc:
            return self.refusal(request, None, Refused(403, str(exc)))
        viewer = await self._access.viewer(cookie)
        assert viewer is not None
        response = _redirect(_href("search", viewer.home_user))
        self._set_cookie(request, response, cookie)
        return response

    async def logout(self, request: Request) -> Response:
        """End the session (its CSRF token must come with it)."""
        viewer, _ = await self._viewer(request)
        form = await request.form()
        if viewer is not None and not self._access.csrf_ok(viewer, _field(form, "csrf")):
            return self.refusal(request, viewer, Refused(403, "this form was not sent by this page"))
        response = _redirect(f"{PATH}/login")
        response.delete_cookie(COOKIE, path=PATH)
        return response

    # -- pages ---------------------------------------------------------------------------------

    async def search(self, request: Request) -> Response:
        """Search as the tool ranks, each hit with its source messages and context."""
        return await self._page(request, self._search)

    async def _search(self, page: Page) -> Response:
        query = page.request.query_params
        text = (query.get("q") or "").strip()
        kind = query.get("kind") or ""
        speaker = (query.get("speaker") or "").strip()
        session = (query.get("session") or "").strip() or None
        scope = Scope(page.user, session_id=session)
        found: SearchResult | None = None
        sources: dict[str, list[MemoryRecord]] = {}
        if text:
            filters = SearchFilters(
                kinds=[kind] if kind in KINDS else None,
                speakers=[speaker] if speaker else None,
            )
            found = await page.call(lambda m: m.search(text, scope, SEARCH_LIMIT, filters, context=SEARCH_CONTEXT))
            hits = [h for h in found.hits if h.kind != "turn"]
            records = await page.call(lambda m: m.get([h.id for h in hits], Scope(page.user)).records) if hits else []
            sources = await self._sources(page, records)
        speakers = await page.call(lambda m: m.known(Scope(page.user), "speaker"))
        return self.render(
            page.request,
            "search.html",
            page.viewer,
            user=page.user,
            title=f"Search: {text}" if text else "Search",
            q=text,
            kind=kind,
            speaker=speaker,
            session=session or "",
            speakers=speakers,
            found=found,
            sources=sources,
            deleted=query.get("deleted"),
        )

    async def _sources(self, page: Page, records: Sequence[MemoryRecord]) -> dict[str, list[MemoryRecord]]:
        """The stored messages each fact or summary comes from, by its id (at most a few each)."""
        wanted: dict[str, list[str]] = {}
        covered: dict[str, list[str]] = {}
        if any(r.kind == "summary" for r in records):
            summaries = await page.call(lambda m: m.summaries(Scope(page.user), None, _SUMMARIES_READ))
            covered = {s.id: s.covered_ids for s in summaries}
        for record in records:
            if record.kind == "summary":
                ids = covered.get(record.id, [])
            else:
                # A fact's messages are turns of its own scope, whose ids follow from the message ids.
                origin = Scope(record.user_id, record.agent_id, record.session_id, record.project)
                ids = [record_id(origin, "turn", message) for message in record.source_ids]
            wanted[record.id] = ids[:_SOURCES_SHOWN]
        every = list(dict.fromkeys(i for ids in wanted.values() for i in ids))
        if not every:
            return {}
        got = await page.call(lambda m: m.get(every, Scope(page.user)).records)
        by_id = {r.id: r for r in got}
        # A fact that consolidation merged also cites messages of other sessions: those not found in
        # its own session are looked for in the user's other sessions.
        lost = [r for r in records if r.kind == "fact" and any(i not in by_id for i in wanted[r.id])]
        if lost:
            named = await page.call(lambda m: m.known(Scope(page.user), "session_id", _SESSIONS_LOOKED_IN))
            sessions: list[str | None] = [None, *named]
            for record in lost:
                ids = []
                for message, own in zip(record.source_ids, wanted[record.id], strict=False):
                    elsewhere = [Scope(record.user_id, record.agent_id, s, record.project) for s in sessions]
                    others = [record_id(o, "turn", message) for o in elsewhere if o.session_id != record.session_id]
                    ids += [own] if own in by_id else others
                wanted[record.id] = ids
            more = list(dict.fromkeys(i for r in lost for i in wanted[r.id] if i not in by_id))[:_LOOKED_UP]
            if more:
                by_id |= {r.id: r for r in await page.call(lambda m: m.get(more, Scope(page.user)).records)}
        return {
            owner: sorted((by_id[i] for i in ids if i in by_id), key=lambda r: r.event_time)
            for owner, ids in wanted.items()
        }

    async def timeline(self, request: Request) -> Response:
        """Turns, facts and summaries newest first, grouped by session, day or week, filtered."""
        return await self._page(request, self._timeline)

    async def _timeline(self, page: Page) -> Response:
        query = page.request.query_params
        kind = query.get("kind") or ""
        speaker = (query.get("speaker") or "").strip()
        session = (query.get("session") or "").strip() or None
        group = query.get("group") or "day"
        group = group if group in GROUPS else "day"
        raw_meta = [m for m in query.getlist("meta") if m.strip()]
        metadata = _metadata(raw_meta)
        cursor = query.get("cursor") or None
        listed = await page.call(
            lambda m: m.list(
                Scope(page.user, session_id=session),
                kinds=[kind] if kind in KINDS else None,
                limit=TIMELINE_PAGE,
                cursor=cursor,
                metadata=metadata or None,
                speakers=[speaker] if speaker else None,
            )
        )
        groups = _grouped(listed.records, group)
        speakers = await page.call(lambda m: m.known(Scope(page.user), "speaker"))
        sessions = await page.call(lambda m: m.known(Scope(page.user), "session_id"))
        filters = {"kind": kind, "speaker": speaker, "session": session or "", "group": group, "meta": raw_meta}
        return self.render(
            page.request,
            "timeline.html",
            page.viewer,
            user=page.user,
            title="Timeline",
            groups=groups,
            filters=filters,
            speakers=speakers,
            sessions=sessions,
            next_cursor=listed.next_cursor,
            first_page=cursor is None,
        )

    async def record(self, request: Request) -> Response:
        """One record: its text, sources, every version side by side and the LLM calls behind them."""
        return await self._page(request, self._record)

    async def _record(self, page: Page) -> Response:
        wanted = page.request.path_params["record_id"]
        got = await page.call(lambda m: m.get([wanted], Scope(page.user)))
        if not got.records:
            raise Refused(404, f"no memory {wanted!r} for user {page.user!r}: it was deleted, or is not theirs")
        record = got.records[0]
        history: HistoryResult | None = None
        if record.kind == "fact":
            history = await page.call(lambda m: m.history(wanted, Scope(page.user)))
        versions = history.versions if history else [record]
        call_ids = [v.llm_call_id for v in versions if v.llm_call_id]
        call_ids += [c.llm_call_id for c in history.changes] if history else []
        calls: dict[str, LLMCallInfo] = {}
        if call_ids:
            found = await page.call(lambda m: m.llm_calls(Scope(page.user), list(dict.fromkeys(call_ids))))
            calls = {c.id: c for c in found}
        sources = (await self._sources(page, [record])).get(record.id, []) if record.kind != "turn" else []
        return self.render(
            page.request,
            "record.html",
            page.viewer,
            user=page.user,
            title=f"{record.kind.capitalize()} {record.id[:8]}",
            record=record,
            versions=versions,
            diffs=[None, *(_diff(a.text, b.text) for a, b in pairwise(versions))],
            changes=history.changes if history else [],
            calls=calls,
            sources=sources,
        )

    async def stats(self, request: Request) -> Response:
        """Records over time, compression, LLM calls and cost, as charts with their tables."""
        return await self._page(request, self._stats)

    async def _stats(self, page: Page) -> Response:
        bucket: Literal["day", "week"] = "day" if page.request.query_params.get("bucket") == "day" else "week"
        scope = Scope(page.user)
        stats: StatsResult = await page.call(lambda m: m.stats(scope))
        activity: ActivityResult = await page.call(lambda m: m.activity(scope, bucket, 30 if bucket == "day" else 16))
        kinds = list(KINDS)
        over_time = stacked_bars([b.label for b in activity.buckets], [b.counts for b in activity.buckets], kinds)
        turns = stats.turns
        tokens = bars(
            [
                ("As sent", turns.tokens_original, f"{turns.tokens_original:,}", "before"),
                ("Compressed", turns.tokens_compressed, f"{turns.tokens_compressed:,}", "after"),
            ]
        )
        per_add = stats.cost.one_call_per_add
        calls = bars(
            [
                ("LightMem (batched)", stats.llm_total.calls, f"{stats.llm_total.calls:,}", "after"),
                ("One call per add", per_add.llm_calls, f"{per_add.llm_calls:,}", "before"),
            ]
        )
        llm_tokens = bars(
            [
                (
                    "LightMem (batched)",
                    stats.llm_total.prompt_tokens + stats.llm_total.completion_tokens,
                    f"{stats.llm_total.prompt_tokens + stats.llm_total.completion_tokens:,}",
                    "after",
                ),
                (
                    "One call per add",
                    per_add.prompt_tokens + per_add.completion_tokens,
                    f"{per_add.prompt_tokens + per_add.completion_tokens:,}",
                    "before",
                ),
            ]
        )
        costs = _cost_bars(stats)
        saved = {
            currency: 1 - stats.cost.actual.get(currency, 0.0) / baseline
            for currency, baseline in stats.cost.one_call_per_add.cost.items()
            if baseline > 0
        }
        return self.render(
            page.request,
            "stats.html",
            page.viewer,
            user=page.user,
            title="Stats",
            stats=stats,
            bucket=bucket,
            activity=activity,
            over_time=over_time,
            tokens=tokens,
            calls=calls,
            llm_tokens=llm_tokens,
            costs=costs,
            saved=saved,
        )

    # -- actions -------------------------------------------------------------------------------

    async def delete(self, request: Request) -> Response:
        """Delete one record, then back to where the button was."""
        return await self._page(request, self._delete, write=True)

    async def _delete(self, page: Page) -> Response:
        wanted = page.request.path_params["record_id"]
        result = await page.call(lambda m: m.delete([wanted], Scope(page.user)))
        if not result.deleted:
            raise Refused(404, f"no memory {wanted!r} for user {page.user!r}: it was already deleted")
        log.info("ui: record %s of user %r deleted by %s", wanted, page.user, page.viewer.who)
        form = await page.request.form()
        back = _safe_next(_field(form, "back") or "")
        if back:
            separator = "&" if "?" in back else "?"
            return _redirect(f"{back}{separator}{urlencode({'deleted': wanted})}")
        return _redirect(_href("search", page.user, deleted=wanted))

    async def forget(self, request: Request) -> Response:
        """What forgetting a session, agent or user deletes (GET), and the deletion once typed (POST)."""
        return await self._page(request, self._forget, write=True)

    async def _forget(self, page: Page) -> Response:
        request = page.request
        form = await request.form() if request.method == "POST" else None
        values = form if form is not None else request.query_params
        session = (_field(values, "session") or "").strip() or None
        agent = (_field(values, "agent") or "").strip() or None
        scope = Scope(page.user, agent, session)
        what, expected = _forget_target(scope)
        preview = await page.call(lambda m: m.forget_preview(scope))
        context: dict[str, Any] = {
            "title": "Forget",
            "user": page.user,
            "session": session or "",
            "agent": agent or "",
            "what": what,
            "expected": expected,
            "preview": preview,
            "deleted": None,
            "message": None,
        }
        if form is None:
            return self.render(request, "forget.html", page.viewer, **context)
        typed = (_field(form, "typed") or "").strip()
        if typed != expected:
            context["message"] = f"typed: type {expected!r} exactly to confirm; nothing was deleted"
            return self.render(request, "forget.html", page.viewer, status=400, **context)
        deleted = await page.call(lambda m: m.forget(scope, True))
        log.info("ui: %s forgotten (%d records) by %s", what, deleted, page.viewer.who)
        context.update(deleted=deleted, preview={})
        return self.render(request, "forget.html", page.viewer, **context)

    async def export(self, request: Request) -> Response:
        """The user's (or one session's) records as a JSON Lines download, as `lightmem-mcp export` writes."""
        return await self._page(request, self._export, write=True)

    async def _export(self, page: Page) -> Response:
        form = await page.request.form()
        session = (_field(form, "session") or "").strip() or None
        scope = Scope(page.user, session_id=session)
        first = await page.call(lambda m: m.export_page(scope))
        memory = page.memory

        async def lines() -> AsyncIterator[bytes]:
            current = first
            while True:
                head = [current.header] if current.header else []
                yield "".join(f"{line}\n" for line in [*head, *current.lines]).encode()
                after = current.next
                if after is None:
                    return
                current = await anyio.to_thread.run_sync(memory.export_page, scope, after)

        name = _filename(page.user, session)
        return StreamingResponse(
            lines(),
            media_type="application/x-ndjson",
            headers={"content-disposition": f'attachment; filename="{name}"', "cache-control": "no-store"},
        )


# -- helpers ---------------------------------------------------------------------------------------


def _href(page: str, user: str | None, **query: Any) -> str:
    """The URL of a page for `user`, empty query values left out."""
    pairs: list[tuple[str, str]] = [("user", user)] if user else []
    for key, value in query.items():
        for item in value if isinstance(value, list) else [value]:
            if item not in (None, ""):
                pairs.append((key, str(item)))
    return f"{PATH}/{page}" + (f"?{urlencode(pairs)}" if pairs else "")


def _redirect(url: str) -> Response:
    return RedirectResponse(url, status_code=303)


def _local_path(request: Request) -> str:
    return request.url.path + (f"?{request.url.query}" if request.url.query else "")


def _safe_next(target: str) -> str | None:
    """`target` when it is a page of this browser (never another site: no open redirect)."""
    if target.startswith(PATH + "/") and not target.startswith("//") and "\\" not in target:
        parts = urlsplit(target)
        if not parts.scheme and not parts.netloc:
            return target
    return None


def _field(form: FormData | Mapping[str, Any] | None, name: str) -> str | None:
    value = form.get(name) if form is not None else None
    return value if isinstance(value, str) else None


def _metadata(pairs: Iterable[str]) -> dict[str, Any]:
    """`key=value` filters: the value read as JSON when it is a number, boolean or quoted string."""
    found: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise Refused(400, f"meta: {pair!r} is not key=value, e.g. source=slack or priority=2")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        if isinstance(value, dict | list) or value is None:
            value = raw
        found[key.strip()] = value
    return found


@dataclass(frozen=True)
class Group:
    """Records of one session, day or week, in the timeline."""

    label: str
    records: list[MemoryRecord]


def _grouped(records: Sequence[MemoryRecord], group: str) -> list[Group]:
    """A page's records (newest first) under the heading of their session, day or week, the groups in
    the order of their newest record: a session's fact dated after its later sessions stays with it."""
    groups: dict[str, Group] = {}
    for record in records:
        if group == "session":
            label = f"Session {record.session_id}" if record.session_id else "No session"
        elif group == "week":
            year, week, _ = record.event_time.isocalendar()
            label = f"Week {year}-W{week:02d}"
        else:
            label = record.event_time.strftime("%A %-d %B %Y")
        groups.setdefault(label, Group(label, [])).records.append(record)
    return list(groups.values())


@dataclass(frozen=True)
class Piece:
    """A run of words in a diff: kept, removed (old version only) or added (new version only)."""

    op: str  # "same", "del", "ins"
    text: str


def _diff(old: str, new: str) -> list[Piece]:
    """A word diff from one version's text to the next."""
    a, b = old.split(), new.split()
    pieces: list[Piece] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if op == "equal":
            pieces.append(Piece("same", " ".join(a[i1:i2])))
            continue
        if i2 > i1:
            pieces.append(Piece("del", " ".join(a[i1:i2])))
        if j2 > j1:
            pieces.append(Piece("ins", " ".join(b[j1:j2])))
    return pieces


def _forget_target(scope: Scope) -> tuple[str, str]:
    """What a forget of `scope` is called, and what must be typed to confirm it."""
    if scope.session_id:
        return f"session {scope.session_id!r} of user {scope.user_id!r}", scope.session_id
    if scope.agent_id:
        return f"agent {scope.agent_id!r} of user {scope.user_id!r}", scope.agent_id
    return f"every memory of user {scope.user_id!r}", scope.user_id


def _cost_bars(stats: StatsResult) -> dict[str, list[Any]]:
    """Per currency: the actual estimated cost against the two counterfactuals."""
    cost = stats.cost
    currencies = sorted(set(cost.actual) | set(cost.without_compression.cost) | set(cost.one_call_per_add.cost))
    return {
        currency: bars(
            [
                ("LightMem", cost.actual.get(currency, 0.0), _money(cost.actual.get(currency, 0.0)), "after"),
                (
                    "Without compression",
                    cost.without_compression.cost.get(currency, 0.0),
                    _money(cost.without_compression.cost.get(currency, 0.0)),
                    "middle",
                ),
                (
                    "One call per add",
                    cost.one_call_per_add.cost.get(currency, 0.0),
                    _money(cost.one_call_per_add.cost.get(currency, 0.0)),
                    "before",
                ),
            ]
        )
        for currency in currencies
    }


def _money(value: float) -> str:
    return f"{value:.4f}" if value < 1 else f"{value:,.2f}"


def _filename(user: str, session: str | None) -> str:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in (user + (f"-{session}" if session else "")))
    return f"lightmem-{safe[:80]}.jsonl"


def _when(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _day(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d")


def _shortened(text: str, limit: int = _TEXT_SHOWN) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _plural(kind: str) -> str:
    return "summaries" if kind == "summary" else f"{kind}s"


def _pretty(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)
