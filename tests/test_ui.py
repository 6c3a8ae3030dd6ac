"""The memory browser (`/ui`) as a person or an attacker meets it: pages, logins, links, actions and their refusals.

In-process, the hosted app (`build_app`) runs over one filled embedded store with the real MiniLM,
driven by Starlette's test client; facts come from the scripted LLM server. Real processes serve
the links that `lightmem-mcp ui-link` prints (`lightmem-mcp serve --transport http`) and the local
browser (`lightmem-mcp ui`, twice on one data directory).
"""

from __future__ import annotations

import io
import json
import os
import re
import selectors
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import httpx2
import pytest
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.testclient import TestClient

from lightmem_mcp.api import Message
from lightmem_mcp.auth import new_token, token_line
from lightmem_mcp.calls import MemoryProvider
from lightmem_mcp.config import (
    AuthSettings,
    CompressionSettings,
    PipelineSettings,
    Settings,
    StoreSettings,
    UISettings,
)
from lightmem_mcp.embedder import SentenceTransformerEmbedder
from lightmem_mcp.hosted import build_app
from lightmem_mcp.memory import Memory
from lightmem_mcp.records import Scope
from lightmem_mcp.ui.local import access_of
from tests.conftest import open_memory
from tests.hosted_server import COMMAND, HostedServer
from tests.openai_server import FakeLLMServer, Reply, facts_per_message

SECRET = "a-shared-secret-of-the-ui-tests"
LINK_MINUTES = 0.02  # 1.2 s: the in-process app's links expire within a test
GRANTS = {
    "maya": ("maya", ["read", "write"]),
    "bob": ("bob", ["read", "write"]),
    "reader": ("maya", ["read"]),
    "revoked": ("maya", ["read", "write"]),
}
# Times a few days back, so the week and day charts of the stats page always hold them.
START = (datetime.now(UTC) - timedelta(days=3)).replace(hour=9, minute=0, second=0, microsecond=0)
GARDEN = Scope("maya", session_id="garden")
NOTES = Scope("maya", session_id="notes")
VAULT = Scope("bob", session_id="vault")
GARDEN_TURNS = {
    "g1": ("Ann", "I planted three fig trees along the south wall this spring."),
    "g2": ("Bo", "The fig trees need watering twice a week until they take root."),
    "g3": ("Ann", "Our allotment rent of ninety euros is due every March."),
    "g4": ("Bo", "The compost heap behind the shed is ready to spread."),
    "g5": ("Ann", "Next year we want to add a row of raspberry canes."),
}
BOB_TURNS = {
    "b1": "My locker combination is 4417 and the spare key sits under the blue flower pot.",
    "b2": "The boat insurance renews on the first of June with the harbour office.",
}
HEADERS = {"x-frame-options": "DENY", "x-content-type-options": "nosniff"}
# Either way no Referer (with a link's ticket in it) ever goes to another site.
PRIVATE_REFERRERS = ("no-referrer", "same-origin")


def at(minutes: int) -> str:
    return (START + timedelta(minutes=minutes)).isoformat()


def said(message_id: str, text: str, minutes: int, name: str | None = None) -> Message:
    return Message(role="user", content=text, id=message_id, timestamp=at(minutes), name=name)


# -- reading pages ------------------------------------------------------------------------------------


@dataclass
class Form:
    action: str
    method: str
    fields: dict[str, str] = field(default_factory=dict)
    buttons: list[str] = field(default_factory=list)


class Doc(HTMLParser):
    """What a page holds: its URLs, forms, inline code, visible text and `<details>` lists."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.urls: list[str] = []
        self.forms: list[Form] = []
        self.inline: list[str] = []  # inline scripts, styles and handlers: what the CSP would block
        self.svg_images = 0
        self.details: list[tuple[str, list[str]]] = []  # (summary, the items of its list)
        self._chunks: list[str] = []
        self._in_script = self._in_button = self._in_summary = False
        self._form: Form | None = None
        self._detail: tuple[list[str], list[str]] | None = None
        self._item: list[str] | None = None
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = {key: value or "" for key, value in attrs}
        for key, value in named.items():
            if key.startswith("on"):
                self.inline.append(f"<{tag} {key}=...>")
            if key == "style":
                self.inline.append(f"<{tag} style=...>")
            if key in ("src", "href", "action", "formaction", "xlink:href", "srcset", "poster", "data"):
                self.urls.append(value)
        if tag == "style":
            self.inline.append("<style>")
        if tag == "script":
            self._in_script = True
            if not named.get("src"):
                self.inline.append("<script> without src")
        if tag == "svg" and named.get("role") == "img":
            self.svg_images += 1
        if tag == "form":
            self._form = Form(named.get("action", ""), named.get("method", "get").lower())
            self.forms.append(self._form)
        if self._form is not None and tag in ("input", "select", "textarea") and "name" in named:
            self._form.fields[named["name"]] = named.get("value", "")
        if tag == "button":
            self._in_button = True
            if self._form is not None:
                self._form.buttons.append("")
        if tag == "details":
            self._detail = ([], [])
        if tag == "summary":
            self._in_summary = True
        if tag == "li" and self._detail is not None:
            self._item = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False
        if tag == "form":
            self._form = None
        if tag == "button":
            self._in_button = False
        if tag == "summary":
            self._in_summary = False
        if tag == "li" and self._detail is not None and self._item is not None:
            self._detail[1].append(" ".join(" ".join(self._item).split()))
            self._item = None
        if tag == "details" and self._detail is not None:
            self.details.append((" ".join(" ".join(self._detail[0]).split()), self._detail[1]))
            self._detail = None

    def handle_data(self, data: str) -> None:
        if self._in_script:
            if data.strip():
                self.inline.append("an inline script body")
            return
        self._chunks.append(data)
        if self._in_button and self._form is not None:
            self._form.buttons[-1] += data.strip()
        if self._in_summary and self._detail is not None:
            self._detail[0].append(data)
        if self._item is not None:
            self._item.append(data)

    @property
    def text(self) -> str:
        """The page's text, whitespace collapsed."""
        return " ".join(" ".join(self._chunks).split())

    @property
    def record_ids(self) -> list[str]:
        """The records the page links to, in order, once each."""
        found = (re.match(r"^/ui/records/([^/?]+)(\?|$)", url) for url in self.urls)
        return list(dict.fromkeys(m.group(1) for m in found if m))

    def form(self, action: str, method: str = "post") -> Form:
        """The one form sent to `action` with `method`."""
        (found,) = [f for f in self.forms if f.action == action and f.method == method]
        return found

    def posts_to(self, fragment: str) -> list[Form]:
        return [f for f in self.forms if f.method == "post" and fragment in f.action]

    @property
    def csrf(self) -> str:
        """The session's CSRF token, as every form that changes something carries it."""
        tokens = {f.fields["csrf"] for f in self.forms if "csrf" in f.fields}
        assert len(tokens) == 1, tokens
        return tokens.pop()


def doc(response: httpx.Response | httpx2.Response) -> Doc:
    return Doc(response.text)


def assert_guarded(response: httpx.Response | httpx2.Response) -> None:
    """The headers every answer of /ui carries: a strict CSP, no framing, no sniffing, no referrer."""
    csp = response.headers.get("content-security-policy", "")
    directives = {d.split()[0]: d.split()[1:] for d in csp.split(";") if d.strip()}
    assert directives.get("script-src") == ["'self'"], csp
    assert directives.get("frame-ancestors") == ["'none'"], csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp, csp
    for name, value in HEADERS.items():
        assert response.headers.get(name) == value, (name, response.headers)
    assert response.headers.get("referrer-policy") in PRIVATE_REFERRERS, response.headers


def assert_page(response: httpx.Response | httpx2.Response, host: str) -> Doc:
    """A rendered page: guarded, never cached, self-contained (nothing inline, nothing from elsewhere)."""
    assert_guarded(response)
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["content-type"].startswith("text/html")
    page = doc(response)
    assert page.inline == [], page.inline
    for url in page.urls:
        parts = urlsplit(url)
        assert parts.scheme in ("", "http", "https") and parts.netloc in ("", host), url
    return page


def follow(client: TestClient | httpx2.Client, response: httpx.Response | httpx2.Response) -> Any:
    assert response.status_code in (303, 307, 308), (response.status_code, response.text)
    return client.get(response.headers["location"])


def cookie_attributes(response: httpx.Response | httpx2.Response) -> dict[str, str]:
    """The attributes of the `lightmem_ui` cookie a response sets, names lower-cased."""
    (header,) = [h for h in response.headers.get_list("set-cookie") if h.startswith("lightmem_ui=")]
    attributes = {}
    for part in header.split(";")[1:]:
        key, _, value = part.strip().partition("=")
        attributes[key.lower()] = value
    return attributes


# -- the in-process app over one filled store ---------------------------------------------------------


@dataclass
class World:
    app: Starlette
    base_url: str
    memory: Memory
    settings: Settings
    tokens: dict[str, str]
    tokens_file: Path
    lines: dict[str, str]
    garden: dict[str, str]  # turn id by message id
    notes: dict[str, str]
    bob: dict[str, str]

    @property
    def host(self) -> str:
        return urlsplit(self.base_url).netloc

    def browser(self) -> TestClient:
        """A browser of its own (cookies apart); the app's lifespan runs in the module's client."""
        return TestClient(self.app, base_url=self.base_url, follow_redirects=False)

    def login(self, name: str) -> TestClient:
        client = self.browser()
        answer = client.post("/ui/login", data={"token": self.tokens[name]})
        assert answer.status_code == 303, answer.text
        return client

    def facts(self) -> list[str]:
        return [r.id for r in self.memory.list(GARDEN, kinds=["fact"], limit=100).records]

    def page(self, client: TestClient, url: str) -> Doc:
        answer = client.get(url)
        assert answer.status_code == 200, (url, answer.status_code, answer.text)
        return assert_page(answer, self.host)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, embedder: SentenceTransformerEmbedder) -> Iterator[World]:
    """Maya's garden conversation (turns and the facts the scripted LLM drew from them), her notes with
    metadata, and Bob's vault, behind the hosted app with tokens for maya, bob, a read-only maya and one to revoke."""
    root = tmp_path_factory.mktemp("ui")
    tokens = {name: new_token() for name in GRANTS}
    lines = {name: token_line(tokens[name], tenant, scopes, name) for name, (tenant, scopes) in GRANTS.items()}
    tokens_file = root / "tokens.jsonl"
    tokens_file.write_text("\n".join(lines.values()) + "\n")
    llm = FakeLLMServer().start()
    try:
        settings = Settings(
            store=StoreSettings(data_dir=root / "data"),
            auth=AuthSettings(tokens_file=tokens_file),
            compression=CompressionSettings(enabled=False),
            llm=llm.settings(max_retries=0),
            pipeline=PipelineSettings(buffer_tokens=100_000),  # extraction only when flushed
            ui=UISettings(secret=SecretStr(SECRET), link_minutes=LINK_MINUTES),
        )
        memory = open_memory(settings, embedder)
        provider = MemoryProvider(settings, lambda _: memory)
        app = build_app(settings, "http", provider).app
        with TestClient(app, base_url=f"http://127.0.0.1:{settings.http.port}"):
            added = memory.add(
                [said(key, text, n, name) for n, (key, (name, text)) in enumerate(GARDEN_TURNS.items())], GARDEN
            )
            garden = dict(zip(GARDEN_TURNS, added.ids, strict=True))
            llm.script(Reply.computed(facts_per_message("Maya noted")))
            memory.flush(GARDEN)
            notes = {
                key: memory.add([said(key, text, 10 + n)], NOTES, metadata=meta).ids[0]
                for n, (key, text, meta) in enumerate(
                    [
                        ("n1", "Standup moved to Thursdays at ten.", {"source": "slack"}),
                        ("n2", "The invoice for the printer arrived.", {"source": "email"}),
                        ("n3", "Renew the domain before May.", {"source": "slack", "priority": 2}),
                    ]
                )
            }
            added = memory.add([said(key, text, 20 + n) for n, (key, text) in enumerate(BOB_TURNS.items())], VAULT)
            bob = dict(zip(BOB_TURNS, added.ids, strict=True))
            yield World(
                app,
                f"http://127.0.0.1:{settings.http.port}",
                memory,
                settings,
                tokens,
                tokens_file,
                lines,
                garden,
                notes,
                bob,
            )
    finally:
        llm.stop()
    assert not llm.unexpected and not llm.broken, "the scripted LLM got requests beyond its script"


def same_origin(world: World) -> dict[str, str]:
    """What a browser sends with a form of this server."""
    return {"origin": world.base_url}


# -- 1. headers and self-contained pages --------------------------------------------------------------


def test_every_answer_is_guarded_and_pages_load_nothing_from_elsewhere(world: World) -> None:
    anon = world.browser()
    maya = world.login("maya")
    fact = world.facts()[0]

    redirect = anon.get("/ui/")
    assert redirect.status_code == 303 and redirect.headers["location"].startswith("/ui/login")
    assert_guarded(redirect)
    pages = [
        anon.get("/ui/login"),
        maya.get("/ui/search?user=maya&q=fig+trees"),
        maya.get("/ui/timeline?user=maya&group=session"),
        maya.get(f"/ui/records/{fact}?user=maya"),
        maya.get(f"/ui/records/{world.garden['g1']}?user=maya"),
        maya.get("/ui/stats?user=maya"),
        maya.get("/ui/stats?user=maya&bucket=day"),
        maya.get("/ui/forget?user=maya&session=garden"),
    ]
    errors = [maya.get("/ui/search?user=bob"), maya.get(f"/ui/records/{uuid.uuid4()}?user=maya")]
    assert [p.status_code for p in pages] == [200] * len(pages)
    assert [e.status_code for e in errors] == [403, 404]
    scripts: set[str] = set()
    for answer in pages + errors:
        page = assert_page(answer, world.host)
        scripts |= {u for u in page.urls if "/static/" in u}
    assert any("/ui/static/ui.js" in s for s in scripts) and any("/ui/static/ui.css" in s for s in scripts)

    # What the pages load is served here, guarded, and loads nothing from elsewhere in turn.
    for url in sorted(scripts):
        served = anon.get(url)
        assert served.status_code == 200, url
        assert_guarded(served)
    css = anon.get("/ui/static/ui.css")
    js = anon.get("/ui/static/ui.js")
    assert css.headers["content-type"].startswith("text/css")
    assert "javascript" in js.headers["content-type"]
    assert not re.search(r"https?:|@import|url\(\s*['\"]?//", css.text, re.IGNORECASE)
    assert not re.search(r"https?:|\bimport\s*\(|XMLHttpRequest|\bfetch\s*\(|\beval\s*\(", js.text)

    # Refusals that never reach a page are guarded too: an unknown path, a wrong method, another Host.
    for refused, status in [
        (maya.get("/ui/no-such-page"), 404),
        (maya.post("/ui/stats", data={}), 405),
        (anon.get("/ui/login", headers={"host": "evil.example"}), 421),
    ]:
        assert refused.status_code == status
        assert_guarded(refused)


# -- 2. logging in and out ----------------------------------------------------------------------------


def test_a_token_logs_in_and_the_session_ends_with_logout_or_the_token(world: World) -> None:
    anon = world.browser()
    wrong = anon.post("/ui/login", data={"token": "lmk_not-a-token-of-this-server"})
    assert wrong.status_code == 401
    assert "set-cookie" not in wrong.headers and not anon.cookies
    assert "not accepted" in assert_page(wrong, world.host).text
    assert "token" in world.page(anon, "/ui/login").form("/ui/login").fields

    browser = world.browser()
    entered = browser.post("/ui/login", data={"token": world.tokens["maya"]})
    assert entered.status_code == 303 and entered.headers["location"] == "/ui/search?user=maya"
    attributes = cookie_attributes(entered)
    assert "httponly" in attributes and attributes["samesite"].lower() == "strict" and attributes["path"] == "/ui"
    assert "expires" not in attributes and "max-age" not in attributes  # gone when the browser closes
    assert "secure" not in attributes  # plain http here; behind a TLS proxy it is Secure:
    behind_tls = world.browser().post(
        "/ui/login", data={"token": world.tokens["maya"]}, headers={"x-forwarded-proto": "https"}
    )
    assert "secure" in cookie_attributes(behind_tls)
    landed = follow(browser, entered)
    assert landed.status_code == 200 and "Search maya's memories" in assert_page(landed, world.host).text
    assert browser.get("/ui/").headers["location"] == "/ui/search?user=maya"

    # Logout needs the session's CSRF token; with it the cookie goes and the pages ask for a login.
    csrf = world.page(browser, "/ui/search?user=maya").csrf
    assert browser.post("/ui/logout", data={}).status_code == 403
    assert browser.get("/ui/search?user=maya").status_code == 200
    out = browser.post("/ui/logout", data={"csrf": csrf})
    assert out.status_code == 303 and out.headers["location"] == "/ui/login"
    assert "max-age" in cookie_attributes(out) or "expires" in cookie_attributes(out)
    assert not browser.cookies.get("lightmem_ui")
    gone = browser.get("/ui/search?user=maya")
    assert gone.status_code == 303 and gone.headers["location"].startswith("/ui/login?next=")

    # `next` leads to a page of this browser, never to another site.
    for target, landing in [
        ("https://evil.example/", "/ui/search?user=maya"),
        ("//evil.example", "/ui/search?user=maya"),
        ("//evil.example/ui/", "/ui/search?user=maya"),
        ("/\\evil.example", "/ui/search?user=maya"),
        ("/ui/timeline?user=maya", "/ui/timeline?user=maya"),
    ]:
        client = world.browser()
        answer = client.post("/ui/login", data={"token": world.tokens["maya"], "next": target})
        assert answer.status_code == 303 and answer.headers["location"] == landing, target
        again = client.get("/ui/login", params={"next": target})
        assert again.status_code == 303 and again.headers["location"] == landing, target

    # A token taken out of the tokens file ends its sessions at the next request.
    revoked = world.login("revoked")
    assert revoked.get("/ui/timeline?user=maya").status_code == 200
    before = world.tokens_file.stat().st_mtime_ns
    kept = [line for name, line in world.lines.items() if name != "revoked"]
    world.tokens_file.write_text("\n".join(kept) + "\n")
    os.utime(world.tokens_file, ns=(before + 2_000_000_000, before + 2_000_000_000))  # whatever the mtime granularity
    ended = revoked.get("/ui/timeline?user=maya")
    assert ended.status_code == 303 and ended.headers["location"] == "/ui/login?next=%2Fui%2Ftimeline%3Fuser%3Dmaya"
    assert revoked.post("/ui/export", data={"user": "maya"}).status_code == 401
    assert world.browser().post("/ui/login", data={"token": world.tokens["revoked"]}).status_code == 401
    assert world.login("maya").get("/ui/search?user=maya").status_code == 200  # the others stay in force


# -- 3. tenants -------------------------------------------------------------------------------------------


def test_a_tenant_never_reaches_another_users_memories(world: World) -> None:
    maya = world.login("maya")
    csrf = world.page(maya, "/ui/search?user=maya").csrf
    bob_id = world.bob["b1"]
    secret_words = "locker combination is 4417"

    refused = [
        maya.get("/ui/?user=bob"),
        maya.get("/ui/search?user=bob&q=locker+combination"),
        maya.get("/ui/timeline?user=bob"),
        maya.get(f"/ui/records/{bob_id}?user=bob"),
        maya.get("/ui/stats?user=bob"),
        maya.get("/ui/forget?user=bob&session=vault"),
        maya.post(f"/ui/records/{bob_id}/delete", data={"user": "bob", "csrf": csrf}, headers=same_origin(world)),
        maya.post(
            "/ui/forget",
            data={"user": "bob", "session": "vault", "typed": "vault", "csrf": csrf},
            headers=same_origin(world),
        ),
        maya.post("/ui/export", data={"user": "bob", "csrf": csrf}, headers=same_origin(world)),
    ]
    for answer in refused:
        assert answer.status_code == 403, (answer.request.url, answer.status_code)
        text = assert_page(answer, world.host).text
        assert "'bob' is not yours to see" in text and "acts for 'maya'" in text, text
        assert secret_words not in answer.text and bob_id not in answer.text

    # Bob's record under maya's own name: not found, never shown, not deleted.
    opened = maya.get(f"/ui/records/{bob_id}?user=maya")
    assert opened.status_code == 404 and secret_words not in opened.text
    deleted = maya.post(f"/ui/records/{bob_id}/delete", data={"user": "maya", "csrf": csrf}, headers=same_origin(world))
    assert deleted.status_code == 404
    searched = world.page(maya, "/ui/search?user=maya&q=locker+combination+spare+key")
    assert secret_words not in searched.text and not set(searched.record_ids) & set(world.bob.values())

    assert len(world.memory.get(list(world.bob.values()), VAULT).records) == len(BOB_TURNS)
    bob = world.login("bob")
    assert secret_words in world.page(bob, f"/ui/records/{bob_id}?user=bob").text


# -- 4. read-only tokens --------------------------------------------------------------------------------


def test_a_read_only_session_sees_no_controls_and_its_forged_actions_are_refused(world: World) -> None:
    reader = world.login("reader")
    fact = world.facts()[0]
    pages = {
        "search": world.page(reader, "/ui/search?user=maya&q=fig+trees"),
        "timeline": world.page(reader, "/ui/timeline?user=maya"),
        "fact": world.page(reader, f"/ui/records/{fact}?user=maya"),
        "turn": world.page(reader, f"/ui/records/{world.garden['g1']}?user=maya"),
        "stats": world.page(reader, "/ui/stats?user=maya"),
    }
    forget = reader.get("/ui/forget?user=maya&session=garden")  # its address typed by hand
    assert forget.status_code == 403
    pages["forget"] = assert_page(forget, world.host)
    assert "read-only" in pages["forget"].text
    assert pages["search"].record_ids and pages["timeline"].record_ids  # it sees the memories
    for name, page in pages.items():
        posts = [f.action for f in page.forms if f.method == "post"]
        assert posts == ["/ui/logout"], (name, posts)
        assert not any(
            b in ("Delete", "Forget permanently") or b.startswith("Download") for f in page.forms for b in f.buttons
        )
        assert not any(u.startswith("/ui/forget") for u in page.urls), name

    csrf = pages["search"].csrf
    target = world.garden["g1"]
    forged = [
        reader.post(f"/ui/records/{target}/delete", data={"user": "maya", "csrf": csrf}, headers=same_origin(world)),
        reader.post(
            "/ui/forget",
            data={"user": "maya", "session": "garden", "typed": "garden", "csrf": csrf},
            headers=same_origin(world),
        ),
        reader.post("/ui/export", data={"user": "maya", "csrf": csrf}, headers=same_origin(world)),
    ]
    for answer in forged:
        assert answer.status_code == 403
        assert "read-only" in assert_page(answer, world.host).text
        assert "content-disposition" not in answer.headers
    assert len(world.memory.list(GARDEN, limit=100).records) == 2 * len(GARDEN_TURNS)


# -- 5. CSRF and origins ------------------------------------------------------------------------------


def test_actions_need_this_sessions_csrf_token_and_this_servers_origin(world: World) -> None:
    scope = Scope("maya", session_id="csrf")
    (target,) = world.memory.add([said("c1", "The spare bulbs are in the hall cupboard.", 30)], scope).ids
    mine, other = world.login("maya"), world.login("maya")
    csrf = world.page(mine, "/ui/timeline?user=maya").csrf
    theirs = world.page(other, "/ui/timeline?user=maya").csrf
    assert csrf != theirs

    delete = f"/ui/records/{target}/delete"
    forget = {"user": "maya", "session": "csrf", "typed": "csrf"}
    attempts: list[tuple[str, dict[str, str], dict[str, str], int]] = []
    for action, fields in [(delete, {"user": "maya"}), ("/ui/forget", forget), ("/ui/export", {"user": "maya"})]:
        attempts += [
            (action, fields, same_origin(world), 403),  # no token
            (action, {**fields, "csrf": theirs}, same_origin(world), 403),  # another session's
            (action, {**fields, "csrf": "0" * 64}, same_origin(world), 403),
            (action, {**fields, "csrf": csrf}, {"origin": "http://evil.example"}, 403),
            (action, {**fields, "csrf": csrf}, {"origin": "null"}, 403),
            (action, {**fields, "csrf": csrf}, {"sec-fetch-site": "cross-site"}, 403),
            (action, {**fields, "csrf": csrf}, {"host": "evil.example"}, 421),
        ]
    for action, fields, headers, status in attempts:
        answer = mine.post(action, data=fields, headers=headers)
        assert answer.status_code == status, (action, fields, headers, answer.status_code, answer.text)
        assert_guarded(answer)
        assert "content-disposition" not in answer.headers
    # Without a session at all: asked to log in again.
    assert world.browser().post(delete, data={"user": "maya", "csrf": csrf}).status_code == 401
    assert world.memory.get([target], scope).records

    # The same request with this session's token from this origin goes through.
    done = mine.post(delete, data={"user": "maya", "csrf": csrf}, headers=same_origin(world))
    assert done.status_code == 303
    assert world.memory.get([target], scope).missing == [target]


# -- 6. actions ---------------------------------------------------------------------------------------


def test_deleting_a_record_takes_it_out_of_the_search_results(world: World) -> None:
    scope = Scope("maya", session_id="chores")
    kettle, tyre = world.memory.add(
        [
            said("k1", "Remember to descale the kettle on Sunday morning.", 40),
            said("k2", "The bike needs a new rear tyre before winter.", 41),
        ],
        scope,
    ).ids
    maya = world.login("maya")
    url = "/ui/search?user=maya&q=descale+the+kettle"
    found = world.page(maya, url)
    assert kettle in found.record_ids
    (button,) = found.posts_to(f"/ui/records/{kettle}/delete")
    assert button.fields["user"] == "maya" and button.fields["back"].startswith("/ui/search?")

    answer = maya.post(button.action, data=button.fields, headers=same_origin(world))
    assert answer.status_code == 303 and answer.headers["location"] == f"{button.fields['back']}&deleted={kettle}"
    after = follow(maya, answer)
    page = assert_page(after, world.host)
    assert f"Deleted record {kettle[:8]}" in page.text
    assert kettle not in page.record_ids
    assert kettle not in world.page(maya, url).record_ids
    assert world.memory.get([kettle, tyre], scope).missing == [kettle]
    again = maya.post(button.action, data=button.fields, headers=same_origin(world))
    assert again.status_code == 404


def test_forget_deletes_exactly_the_session_whose_id_is_typed(world: World) -> None:
    trip_a, trip_b = Scope("maya", session_id="trip-a"), Scope("maya", session_id="trip-b")
    world.memory.add([said("a1", "Train to Porto at 8.", 50), said("a2", "Hotel near the river.", 51)], trip_a)
    kept = world.memory.add([said("b1", "Ferry to Tangier.", 52), said("b2", "Riad in the medina.", 53)], trip_b).ids
    garden = len(world.memory.list(GARDEN, limit=100).records)
    maya = world.login("maya")

    preview = world.page(maya, "/ui/forget?user=maya&session=trip-a")
    assert "2 turns" in preview.text and "Forget session 'trip-a' of user 'maya'" in preview.text
    form = preview.form("/ui/forget")
    assert form.fields["session"] == "trip-a" and form.buttons == ["Forget permanently"]

    for typed in ["", "trip-b", "maya", "trip-a!"]:
        wrong = maya.post("/ui/forget", data={**form.fields, "typed": typed}, headers=same_origin(world))
        assert wrong.status_code == 400, typed
        assert "nothing was deleted" in assert_page(wrong, world.host).text
        assert len(world.memory.list(trip_a, limit=100).records) == 2

    done = maya.post("/ui/forget", data={**form.fields, "typed": " trip-a "}, headers=same_origin(world))
    assert done.status_code == 200
    assert "2 records deleted" in assert_page(done, world.host).text
    assert world.memory.list(trip_a, limit=100).records == []
    assert sorted(r.id for r in world.memory.list(trip_b, limit=100).records) == sorted(kept)
    assert len(world.memory.list(GARDEN, limit=100).records) == garden


def test_export_downloads_jsonl_that_imports_back_with_the_same_ids(
    world: World, tmp_path: Path, embedder: SentenceTransformerEmbedder
) -> None:
    maya = world.login("maya")
    timeline = world.page(maya, "/ui/timeline?user=maya&session=garden")
    form = timeline.form("/ui/export")
    assert form.fields["session"] == "garden"

    answer = maya.post("/ui/export", data=form.fields, headers=same_origin(world))
    assert answer.status_code == 200
    assert_guarded(answer)
    assert answer.headers["content-disposition"] == 'attachment; filename="lightmem-maya-garden.jsonl"'
    assert answer.headers["content-type"].startswith("application/x-ndjson")
    assert answer.headers["cache-control"] == "no-store"
    lines = answer.text.splitlines()
    assert all(isinstance(json.loads(line), dict) for line in lines)

    fresh = open_memory(Settings(store=StoreSettings(data_dir=tmp_path / "fresh")), embedder)
    try:
        imported = fresh.import_records(io.StringIO(answer.text))
        exported = {r.id for r in world.memory.list(GARDEN, limit=100).records}
        assert len(exported) == 2 * len(GARDEN_TURNS)
        assert imported.by_kind == {"turn": 5, "fact": 5, "llm_call": 1}  # the extraction call goes along
        assert {r.id for r in fresh.list(GARDEN, limit=100).records} == exported
        (call,) = {r.llm_call_id for r in fresh.list(GARDEN, kinds=["fact"], limit=100).records}
        assert call is not None and [c.id for c in fresh.llm_calls(Scope("maya"), [call])] == [call]
        assert fresh.list(Scope("maya", session_id="notes"), limit=100).records == []
        assert fresh.list(VAULT, limit=100).records == []
    finally:
        fresh.close()


# -- 7. what the pages show -----------------------------------------------------------------------------


def test_search_shows_a_turn_with_its_conversation_and_a_fact_with_its_source(world: World) -> None:
    maya = world.login("maya")
    page = world.page(maya, "/ui/search?user=maya&q=allotment+rent+due+in+March")
    turn = world.garden["g3"]
    assert turn in page.record_ids
    around = [items for summary, items in page.details if summary.startswith("Conversation around it")]
    assert around, page.details
    window = next(items for items in around if any(GARDEN_TURNS["g3"][1] in item for item in items))
    assert [key for key, (_, text) in GARDEN_TURNS.items() if any(text in item for item in window)] == list(
        GARDEN_TURNS
    )
    assert window[0].startswith("Ann") and window[1].startswith("Bo")  # speaker first, in conversation order

    (fact,) = [r for r in world.memory.list(GARDEN, kinds=["fact"], limit=100).records if "allotment" in r.text]
    assert fact.id in page.record_ids
    sources = [items for summary, items in page.details if summary == "Source messages (1)"]
    assert any(GARDEN_TURNS["g3"][1] in items[0] for items in sources)

    record = world.page(maya, f"/ui/records/{fact.id}?user=maya")
    assert fact.text in record.text and "One version" in record.text
    assert "fake-model" in record.text and "extraction" in record.text  # the LLM call that wrote it
    assert world.garden["g3"] in record.record_ids

    nothing = world.page(maya, "/ui/search?user=maya&q=zeppelin+hangar+blueprints&kind=summary")
    assert "Nothing found" in nothing.text


def test_the_timeline_filters_by_kind_speaker_session_and_metadata(world: World) -> None:
    maya = world.login("maya")
    facts = set(world.facts())
    garden, notes = world.garden, world.notes

    def shown(query: str) -> set[str]:
        return set(world.page(maya, f"/ui/timeline?user=maya&{query}").record_ids)

    assert len(facts) == 5
    assert shown("kind=fact&session=garden") == facts
    assert shown("kind=turn&session=garden") == set(garden.values())
    assert shown("kind=turn&speaker=Ann") == {garden["g1"], garden["g3"], garden["g5"]}
    assert shown("speaker=Bo&kind=turn&group=week") == {garden["g2"], garden["g4"]}
    assert shown("meta=source%3Dslack") == {notes["n1"], notes["n3"]}
    assert shown("meta=source%3Demail&kind=turn") == {notes["n2"]}
    assert shown("meta=priority%3D2&meta=source%3Dslack") == {notes["n3"]}
    assert shown("meta=source%3Dfax") == set()
    assert not shown("session=vault") & set(world.bob.values())

    grouped = world.page(maya, "/ui/timeline?user=maya&session=garden&group=session")
    assert "Session garden (10)" in grouped.text
    # Every session of the page under one heading, however its records interleave in time.
    by_session = maya.get("/ui/timeline?user=maya&group=session")
    assert_page(by_session, world.host)
    headings = re.findall(r"<h2 id=\"g\d+\">(Session [^<]*?) <span", by_session.text)
    assert sorted(headings) == sorted(set(headings)) and {"Session garden", "Session notes"} <= set(headings)

    bad = maya.get("/ui/timeline?user=maya&meta=novalue")
    assert bad.status_code == 400
    assert "meta: 'novalue' is not key=value" in assert_page(bad, world.host).text


def test_stats_draws_charts_with_their_figures(world: World) -> None:
    maya = world.login("maya")
    for bucket in ("week", "day"):
        page = world.page(maya, f"/ui/stats?user=maya&bucket={bucket}")
        assert page.svg_images >= 5, page.svg_images  # records over time, tokens, LLM calls, LLM tokens, ...
        assert f"Records by kind per {bucket}" in page.text
    answer = maya.get("/ui/stats?user=maya")
    figures = re.search(r'<table class="data">.*?<tbody>(.*?)</tbody>', answer.text, re.S)
    assert figures is not None
    rows = re.findall(r'<th scope="row">[^<]*</th>((?:<td class="num">\d+</td>)+)</tr>', figures.group(1))
    columns = [list(map(int, re.findall(r"\d+", row))) for row in rows]
    totals = [sum(c[i] for c in columns) for i in range(3)]  # turns, facts, summaries
    stats = world.memory.stats(Scope("maya"))
    active = {r.kind: r.active for r in stats.records}
    assert totals == [active.get("turn", 0), active.get("fact", 0), active.get("summary", 0)]
    assert totals[1] == 5
    text = doc(answer).text
    assert re.search(r"extraction 1 0 [\d,]+ 0 [\d,]+", text), text  # one batched extraction call, none failed


# -- 8. signed links --------------------------------------------------------------------------------


def ui_link(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [COMMAND, "ui-link", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_ui_link_opens_one_session_once(tmp_path: Path, embedder: SentenceTransformerEmbedder) -> None:
    data = tmp_path / "data"
    filled = open_memory(Settings(store=StoreSettings(data_dir=data)), embedder)
    (garage,) = filled.add([said("m1", "The garage door code changed to 2580 last week.", 0)], Scope("maya")).ids
    filled.close()
    tokens = tmp_path / "tokens.jsonl"
    tokens.write_text(token_line(new_token(), "maya", ["read", "write"]) + "\n")
    server = HostedServer(
        data,
        "http",
        {
            "LIGHTMEM_AUTH_TOKENS_FILE": str(tokens),
            "LIGHTMEM_UI_SECRET": SECRET,
            "LIGHTMEM_COMPRESSION_ENABLED": "false",
        },
    )
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "LIGHTMEM_HTTP_PORT": str(server.port)}
    links = {
        "writer": ui_link({**env, "LIGHTMEM_UI_SECRET": SECRET}, "--tenant", "maya"),
        "reader": ui_link({**env, "LIGHTMEM_UI_SECRET": SECRET}, "--tenant", "maya", "--read-only"),
        "forged": ui_link({**env, "LIGHTMEM_UI_SECRET": "another-secret"}, "--tenant", "maya"),
        "unsigned": ui_link(env, "--tenant", "maya"),
    }
    server.start()
    try:
        printed = {name: process.communicate(timeout=60) for name, process in links.items()}
        codes = {name: process.returncode for name, process in links.items()}
        assert codes == {"writer": 0, "reader": 0, "forged": 0, "unsigned": 2}, printed
        assert "LIGHTMEM_UI_SECRET" in printed["unsigned"][1] and printed["unsigned"][0] == ""
        url = {name: out.strip() for name, (out, _) in printed.items() if name != "unsigned"}
        for link in url.values():
            assert link.startswith(f"{server.base_url}/ui/enter?ticket="), link

        with httpx2.Client(follow_redirects=True, timeout=60) as browser:
            landed = browser.get(url["writer"])
            assert landed.status_code == 200 and landed.url.path == "/ui/search"
            assert "ticket" not in str(landed.url) and parse_qs(landed.url.query.decode())["user"] == ["maya"]
            assert [r.status_code for r in landed.history] == [303]
            attributes = cookie_attributes(landed.history[0])
            assert "httponly" in attributes and attributes["samesite"].lower() == "strict"
            found = assert_page(browser.get(f"{server.base_url}/ui/search?user=maya&q=garage+door"), "")
            assert garage in found.record_ids and found.posts_to(f"/ui/records/{garage}/delete")
            assert browser.get(f"{server.base_url}/ui/search?user=bob").status_code == 403

        with httpx2.Client(timeout=60) as again:
            used = again.get(url["writer"])
            assert used.status_code == 403 and "already used" in doc(used).text
            assert not again.cookies
            ticket = parse_qs(urlsplit(url["reader"]).query)["ticket"][0]
            tampered = ticket[:-3] + ("AAA" if ticket[-3:] != "AAA" else "BBB")
            for refused in [f"{server.base_url}/ui/enter?ticket={tampered}", url["forged"]]:
                answer = again.get(refused)
                assert answer.status_code == 403 and "not valid" in doc(answer).text
                assert_guarded(answer)
            assert again.get(f"{server.base_url}/ui/enter").status_code == 403
            assert not again.cookies

        with httpx2.Client(follow_redirects=True, timeout=60) as reader:
            landed = reader.get(url["reader"])
            assert landed.status_code == 200 and "maya (read-only)" in doc(landed).text
            found = doc(reader.get(f"{server.base_url}/ui/search?user=maya&q=garage+door"))
            assert garage in found.record_ids and not found.posts_to("/delete")
            forged = reader.post(
                f"{server.base_url}/ui/records/{garage}/delete",
                data={"user": "maya", "csrf": found.csrf},
                headers={"origin": server.base_url},
            )
            assert forged.status_code == 403
            assert garage in doc(reader.get(f"{server.base_url}/ui/search?user=maya&q=garage+door")).record_ids
    finally:
        for process in links.values():
            if process.poll() is None:
                process.kill()
        assert server.terminate() == 0, server.log()


def test_a_link_is_refused_once_expired_and_stays_used_until_then(world: World) -> None:
    """LINK_MINUTES is 1.2 s: links live one whole second, as their signatures count seconds."""
    access = access_of(world.settings, "token")
    for _attempt in range(5):
        # Start just after a second begins, so that the link's signed second is known.
        while time.time() % 1 > 0.2:
            time.sleep(0.02)
        signed = int(time.time())
        taken = access.link(world.base_url, "maya", True)
        kept = access.link(world.base_url, "maya", True)
        first = world.browser().get(taken)
        assert first.status_code == 303 and first.headers["location"] == "/ui/search?user=maya"
        # A second after it was taken, while its signature still passes (up to `signed` + 2 s).
        time.sleep(max(0.0, 1.1 - (time.time() - signed)))
        if int(time.time()) != signed + 1 or time.time() % 1 > 0.5:
            continue  # a slow machine missed the window: try again with new links
        again = world.browser().get(taken)
        assert again.status_code == 403 and "already used" in doc(again).text
        assert "set-cookie" not in again.headers
        break
    else:
        pytest.fail("could not take a link and retry it within the same second")

    time.sleep(max(0.0, signed + 2.1 - time.time()))
    for link in (kept, taken):
        late = world.browser().get(link)
        assert late.status_code == 403 and "expired" in doc(late).text
        assert "set-cookie" not in late.headers


# -- 9. `lightmem-mcp ui` -----------------------------------------------------------------------------


@dataclass
class LocalBrowser:
    process: subprocess.Popen[bytes]
    link: str
    log: Path

    @property
    def base_url(self) -> str:
        parts = urlsplit(self.link)
        return f"{parts.scheme}://{parts.netloc}"

    @property
    def port(self) -> int:
        return int(urlsplit(self.link).port or 0)

    def stop(self, signum: int) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signum)
        try:
            return self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise


def start_ui(data_dir: Path, home: Path, name: str) -> LocalBrowser:
    """`lightmem-mcp ui --port 0` on `data_dir`, once it has printed its link."""
    log = home / f"{name}.log"
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(home),
        "LIGHTMEM_DATA_DIR": str(data_dir),
        "HF_HUB_OFFLINE": "1",
        "LIGHTMEM_EMBEDDING_DEVICE": "cpu",
        "LIGHTMEM_COMPRESSION_DEVICE": "cpu",
        "LIGHTMEM_COMPRESSION_ENABLED": "false",
    }
    with open(log, "wb") as stderr:
        process = subprocess.Popen(
            [COMMAND, "ui", "--port", "0"], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr
        )
    assert process.stdout is not None
    printed = b""
    deadline = time.monotonic() + 120
    with selectors.DefaultSelector() as waiting:
        waiting.register(process.stdout, selectors.EVENT_READ)
        while b"/ui/enter?ticket=" not in printed or not printed.endswith(b"\n"):
            left = deadline - time.monotonic()
            assert left > 0 and waiting.select(left), f"no link printed: {printed!r}\n{log.read_text()}"
            chunk = os.read(process.stdout.fileno(), 4096)
            assert chunk, f"exited with {process.wait()} before printing a link:\n{log.read_text()}"
            printed += chunk
    (link,) = [line for line in printed.decode().splitlines() if "/ui/enter?ticket=" in line]
    assert "open this link (once, within 10 minutes)" in printed.decode()
    return LocalBrowser(process, link.strip(), log)


def listening_addresses(port: int) -> set[str]:
    """The local addresses (hex, as /proc/net/tcp* write them) with a socket listening on `port`."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            for row in list(rows)[1:]:
                local, state = row.split()[1], row.split()[3]
                address, _, hex_port = local.rpartition(":")
                if state == "0A" and int(hex_port, 16) == port:
                    found.add(address)
    return found


def test_lightmem_mcp_ui_serves_this_machines_memories_to_whoever_has_its_link(
    tmp_path: Path, embedder: SentenceTransformerEmbedder
) -> None:
    data = tmp_path / "data"
    written = open_memory(Settings(store=StoreSettings(data_dir=data)), embedder)
    (ana,) = written.add([said("x1", "Ana keeps the kayak paddles in the loft.", 0)], Scope("ana")).ids
    (mine,) = written.add([said("x2", "The boiler service is booked for Friday.", 1)], Scope("default")).ids
    written.close()

    first = start_ui(data, tmp_path, "first")
    second: LocalBrowser | None = None
    try:
        assert first.link.startswith("http://127.0.0.1:")
        if os.path.exists("/proc/net/tcp"):
            assert listening_addresses(first.port) == {"0100007F"}  # 127.0.0.1, nothing else

        with httpx2.Client(base_url=first.base_url, timeout=60) as stranger:
            door = stranger.get("/ui/")
            assert door.status_code == 303 and door.headers["location"].startswith("/ui/login")
            login = assert_page(follow(stranger, door), "")
            assert "Open the one-time link that lightmem-mcp ui printed" in login.text
            assert not login.forms  # no token form: only the link opens a session
            refused = stranger.post("/ui/login", data={"token": "anything"})
            assert refused.status_code == 401 and "takes no tokens" in doc(refused).text
            assert stranger.get("/ui/search?user=ana").status_code == 303
            assert stranger.get("/ui/", headers={"host": "evil.example"}).status_code == 421

        with httpx2.Client(base_url=first.base_url, timeout=60) as owner:
            entered = owner.get(first.link)
            assert entered.status_code == 303 and entered.headers["location"] == "/ui/search?user=default"
            home = assert_page(follow(owner, entered), "")
            assert "Search default's memories" in home.text
            assert mine in doc(owner.get("/ui/timeline")).record_ids
            found = doc(owner.get("/ui/search", params={"user": "ana", "q": "kayak paddles"}))
            assert ana in found.record_ids and found.posts_to(f"/ui/records/{ana}/delete")  # any user, read-write
            assert owner.get(first.link).status_code == 403  # the link is spent

            second = start_ui(data, tmp_path, "second")
            assert second.port != first.port
            with httpx2.Client(base_url=second.base_url, timeout=60) as front:
                assert front.get(first.link.replace(first.base_url, second.base_url)).status_code == 403
                assert front.get(second.link).status_code == 303
                shown = doc(front.get("/ui/search", params={"user": "ana", "q": "kayak paddles"}))
                assert ana in shown.record_ids
                assert mine in doc(front.get("/ui/timeline?user=default")).record_ids
                # What one deletes, the other no longer shows: one store behind both.
                (button,) = shown.posts_to(f"/ui/records/{ana}/delete")
                deleted = front.post(button.action, data=button.fields, headers={"origin": second.base_url})
                assert deleted.status_code == 303
            assert ana not in doc(owner.get("/ui/search", params={"user": "ana", "q": "kayak paddles"})).record_ids
        assert f"forwarding to the memory owner (pid {first.process.pid})" in second.log.read_text()

        # Ctrl-C is a clean stop; SIGTERM ends it as it ends most programs, by the signal, once shut down.
        assert second.stop(signal.SIGTERM) == -signal.SIGTERM, second.log.read_text()
        assert first.stop(signal.SIGINT) == 0, first.log.read_text()
        for browser in (first, second):
            assert "Traceback" not in browser.log.read_text(), browser.log.read_text()
    finally:
        for browser in (first, second):
            if browser is not None and browser.process.poll() is None:
                browser.process.kill()
                browser.process.wait()
