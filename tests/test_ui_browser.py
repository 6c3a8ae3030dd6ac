"""The memory browser in a real browser: headless Chromium (Playwright) against `serve --transport http`.

The data directory is filled beforehand through the real pipeline (extraction and consolidation
through the scripted LLM server, the real MiniLM, Qdrant Edge), closed, and then served by a real
server process with token auth; the LLM is off there, so nothing changes in the background.

Every page is saved as a PNG under $LIGHTMEM_ARTIFACTS_DIR (default artifacts/ui). Without
/usr/bin/chromium the tests skip, unless LIGHTMEM_REQUIRE_BROWSER=1 (CI), where they fail.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Dialog,
    Locator,
    Page,
    Playwright,
    ViewportSize,
    expect,
    sync_playwright,
)

from lightmem_mcp.api import Message
from lightmem_mcp.auth import new_token, token_line
from lightmem_mcp.config import ConsolidationSettings, PipelineSettings, Settings, StoreSettings
from lightmem_mcp.embedder import SentenceTransformerEmbedder
from lightmem_mcp.records import Scope
from tests.conftest import open_memory
from tests.hosted_server import HostedServer
from tests.openai_server import ChatRequest, FakeLLMServer, prompt_messages
from tests.test_consolidate import MAYA, MERGED, SPRING, SUMMER, extract, judge, said

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ROOT = Path(__file__).resolve().parent.parent
LAPTOP: ViewportSize = {"width": 1280, "height": 800}
PHONE: ViewportSize = {"width": 390, "height": 844}
TIMEOUT_MS = 20_000

# A session of Maya's that the forget test removes, and a user of another tenant.
TRIP = [
    ("t1", "2024-08-02T09:00:00Z", "We fly to Lisbon on Friday.", "Maya flies to Lisbon on a Friday in August."),
    ("t2", "2024-08-02T09:05:00Z", "Pack the blue suitcase.", "Maya packs the blue suitcase for Lisbon."),
]
BOB = [("b1", "2024-05-05T08:00:00Z", "My locker code is 4711.", "Bob's locker code is 4711.")]
OTHER_FACTS = {text: fact for _, _, text, fact in TRIP + BOB}
CAT_SOURCE = "I have a cat called Luna."
CHESS_FACT = "Maya plays chess every Sunday."
MUNICH_FACT = "Maya lives in Munich, Germany."


def extract_other(request: ChatRequest) -> dict[str, Any]:
    """Extraction of the trip and of Bob's message: the scripted fact of each numbered message."""
    return {"facts": [{"fact": OTHER_FACTS[text], "sources": [n]} for n, text in prompt_messages(request)]}


def messages(rows: list[tuple[str, str, str, str]]) -> list[Message]:
    return [Message(role="user", content=text, id=mid, timestamp=ts) for mid, ts, text, _ in rows]


# -- fixtures ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def chromium() -> Path:
    """The system's Chromium; the tests skip without it, or fail where a browser is required (CI)."""
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} not found: apt-get install chromium (the browser tests drive the system's Chromium)"
        if os.environ.get("LIGHTMEM_REQUIRE_BROWSER") == "1":
            pytest.fail(f"LIGHTMEM_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)
    return CHROMIUM


@pytest.fixture(scope="module")
def artifacts() -> Path:
    """Where the screenshots go: $LIGHTMEM_ARTIFACTS_DIR, default artifacts/ui of the repository."""
    folder = Path(os.environ.get("LIGHTMEM_ARTIFACTS_DIR") or ROOT / "artifacts" / "ui")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def tokens() -> dict[str, str]:
    """Maya read-write, Maya read-only, Bob read-write."""
    return {"maya": new_token(), "reader": new_token(), "bob": new_token()}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory, embedder: SentenceTransformerEmbedder) -> Path:
    """A data directory filled through the real pipeline, then closed: Maya's spring and summer
    sessions consolidated (the cat fact updated, "breed added"; Berlin superseded by Munich), her
    trip session, and Bob's locker code."""
    folder = tmp_path_factory.mktemp("ui-browser") / "data"
    llm = FakeLLMServer().start()
    try:
        settings = Settings(
            store=StoreSettings(data_dir=folder),
            llm=llm.settings(max_retries=0),
            pipeline=PipelineSettings(buffer_tokens=10_000),
            consolidation=ConsolidationSettings(score_threshold=0.7),
        )
        memory = open_memory(settings, embedder)
        try:
            llm.script(extract, extract, judge, extract_other, extract_other)
            for rows, session in ((SPRING, "spring"), (SUMMER, "summer")):
                scope = Scope("maya", session_id=session)
                memory.add(said(rows, session), scope)
                memory.flush(scope)
            assert memory.consolidate(MAYA).updated == 1
            for rows, scope in ((TRIP, Scope("maya", session_id="trip")), (BOB, Scope("bob", session_id="gym"))):
                memory.add(messages(rows), scope)
                memory.flush(scope)
        finally:
            memory.close()
    finally:
        llm.stop()
    assert not llm.unexpected and not llm.broken and not llm.pending
    return folder


@pytest.fixture(scope="module")
def server(data_dir: Path, tokens: dict[str, str]) -> Iterator[HostedServer]:
    grants = {"maya": ("maya", ["read", "write"]), "reader": ("maya", ["read"]), "bob": ("bob", ["read", "write"])}
    lines = "\n".join(token_line(tokens[name], tenant, scopes, name) for name, (tenant, scopes) in grants.items())
    env = {
        "LIGHTMEM_AUTH_TOKENS": lines,
        "LIGHTMEM_LLM_PROVIDER": "none",
        "LIGHTMEM_COMPRESSION_ENABLED": "false",
    }
    hosted = HostedServer(data_dir, "http", env=env).start()
    yield hosted
    assert hosted.terminate() == 0, hosted.log()


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright: Playwright, chromium: Path) -> Iterator[Browser]:
    launched = playwright.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
    yield launched
    launched.close()


class Watched:
    """A browser context and what its pages reported: console errors, uncaught errors, CSP violations."""

    def __init__(self, context: BrowserContext) -> None:
        self.context = context
        self.errors: list[str] = []
        context.on("console", self._console)
        context.on("weberror", lambda error: self.errors.append(f"uncaught: {error.error}"))

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(f"console: {message.text}")

    def csp_violations(self, page: Page) -> list[str]:
        """What the page's `securitypolicyviolation` events recorded (the init script listens)."""
        recorded = page.evaluate("() => window.__cspViolations")
        assert isinstance(recorded, list), "the CSP listener did not run"
        return [str(item) for item in recorded]


# Listens for CSP violations from the first script on: init scripts run outside the page's CSP.
CSP_LISTENER = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__cspViolations.push(`${e.violatedDirective} blocked ${e.blockedURI}`);
});
"""


@pytest.fixture
def contexts(browser: Browser, server: HostedServer) -> Iterator[list[Watched]]:
    """Browser contexts made by `open_context`, closed after the test."""
    made: list[Watched] = []
    yield made
    for watched in made:
        watched.context.close()


def open_context(browser: Browser, server: HostedServer, made: list[Watched], viewport: ViewportSize) -> Watched:
    context = browser.new_context(base_url=server.base_url, viewport=viewport)
    context.set_default_timeout(TIMEOUT_MS)
    context.add_init_script(CSP_LISTENER)
    watched = Watched(context)
    made.append(watched)
    return watched


def log_in(watched: Watched, token: str, artifacts: Path | None = None) -> Page:
    """A page logged in through the login form, on the search page it lands on."""
    page = watched.context.new_page()
    page.goto("/ui/")
    expect(page).to_have_url(re.compile(r"/ui/login\?next="))
    expect(page.get_by_role("button", name="Log in")).to_be_visible()
    if artifacts is not None:
        shot(page, artifacts, "login")
    page.get_by_label("Access token").fill(token)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(re.compile(r"/ui/search\?user="))
    return page


def search(page: Page, text: str) -> None:
    """Search through the form, as a person does."""
    page.get_by_label("Search for").fill(text)
    with page.expect_navigation():
        page.get_by_label("Search for").press("Enter")
    expect(page.get_by_role("status").first).to_contain_text(text)


def hit(page: Page, text: str) -> Locator:
    """The search hit whose own text is `text`."""
    return page.locator("li.hit").filter(has=page.locator("a.hit-text", has_text=text))


def unlabelled(page: Page) -> list[str]:
    """The page's inputs that no label names (a label[for], an enclosing label or aria-label)."""
    found = page.evaluate(
        """() => [...document.querySelectorAll("input:not([type=hidden]), select, textarea")]
            .filter((el) => !(el.getAttribute("aria-label")
                || (el.id && document.querySelector(`label[for="${CSS.escape(el.id)}"]`))
                || el.closest("label")))
            .map((el) => el.outerHTML)"""
    )
    return [str(html) for html in found]


def shot(page: Page, artifacts: Path, name: str, full_page: bool = True) -> Path:
    path = artifacts / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path


@pytest.fixture
def maya(browser: Browser, server: HostedServer, contexts: list[Watched], tokens: dict[str, str]) -> Iterator[Page]:
    """A laptop-sized browser logged in with Maya's read-write token."""
    watched = open_context(browser, server, contexts, LAPTOP)
    page = log_in(watched, tokens["maya"])
    yield page
    # A refused page (403) is logged as a failed load: the tenant test asks for those.
    assert not [e for e in watched.errors if "status of 403" not in e], watched.errors
    assert not watched.csp_violations(page)


# -- the flows --------------------------------------------------------------------------------------


def test_log_in_and_search_shows_a_fact_with_its_source_messages(
    browser: Browser, server: HostedServer, contexts: list[Watched], tokens: dict[str, str], artifacts: Path
) -> None:
    watched = open_context(browser, server, contexts, LAPTOP)
    page = log_in(watched, tokens["maya"], artifacts)
    expect(page.get_by_role("heading", level=1)).to_have_text("Search maya's memories")

    search(page, "cat")
    cat = hit(page, MERGED)
    expect(cat).to_have_count(1)
    expect(cat.locator(".badge")).to_have_text("fact")
    sources = cat.locator("details.sources")
    expect(sources.locator("summary")).to_contain_text("Source messages")
    expect(sources.locator(".transcript")).to_contain_text(CAT_SOURCE)
    expect(sources.locator(".transcript")).to_contain_text("Luna is a grey Persian.")
    shot(page, artifacts, "search")
    shot(page, artifacts, "search-viewport", full_page=False)  # the picture of the docs: 1280x800
    assert not watched.errors


def test_a_facts_history_shows_both_versions_side_by_side_and_why(maya: Page, artifacts: Path) -> None:
    search(maya, "cat")
    hit(maya, MERGED).get_by_role("link", name="History").click()
    expect(maya).to_have_url(re.compile(r"/ui/records/[0-9a-f-]{36}\?user=maya"))

    versions = maya.locator("ol.versions > li.version")
    expect(versions).to_have_count(2)
    expect(versions.nth(0)).to_contain_text("Maya has a cat named Luna.")
    expect(versions.nth(0)).to_contain_text("superseded")
    expect(versions.nth(1)).to_contain_text(MERGED)
    expect(versions.nth(1).locator("ins").first).to_be_visible()  # the words the update added
    first, second = versions.nth(0).bounding_box(), versions.nth(1).bounding_box()
    assert first is not None and second is not None
    assert first["y"] == second["y"] and second["x"] >= first["x"] + first["width"], (first, second)

    expect(maya.get_by_role("heading", name="What changed and why")).to_be_visible()
    change = maya.locator("ol.changes > li")
    expect(change).to_have_count(1)
    expect(change).to_contain_text("Updated")
    expect(change).to_contain_text("Why: breed added")
    card = change.locator("dl.call")
    expect(card).to_contain_text("LLM call")
    expect(card).to_contain_text("update")  # the purpose
    expect(card).to_contain_text("fake-model")
    shot(maya, artifacts, "record-history")
    shot(maya, artifacts, "record-history-viewport", full_page=False)


def test_delete_removes_a_record_from_the_results(maya: Page) -> None:
    asked: list[str] = []

    def accept(dialog: Dialog) -> None:
        asked.append(dialog.message)
        dialog.accept()

    maya.on("dialog", accept)
    search(maya, "chess")
    chess = hit(maya, CHESS_FACT)
    expect(chess).to_have_count(1)
    chess.get_by_role("button", name=re.compile(r"^Delete fact")).click()

    expect(maya.get_by_role("status").first).to_contain_text("Deleted record")
    assert asked == ["Delete this fact permanently?"]
    expect(hit(maya, CHESS_FACT)).to_have_count(0)
    search(maya, "chess on Sundays")  # again, from scratch
    expect(maya.locator("li.hit").first).to_be_visible()  # the turn is still there, only the fact went
    expect(hit(maya, CHESS_FACT)).to_have_count(0)


def test_forget_a_session_after_typing_its_id(maya: Page, artifacts: Path) -> None:
    maya.goto("/ui/timeline?user=maya&group=session")
    expect(maya.get_by_role("heading", name=re.compile(r"^Session trip"))).to_be_visible()
    expect(maya.locator("main")).to_contain_text("We fly to Lisbon on Friday.")
    shot(maya, artifacts, "timeline")

    maya.goto("/ui/forget?user=maya&session=trip")
    button = maya.get_by_role("button", name="Forget permanently")
    typed = maya.get_by_label("Type trip to confirm")
    expect(button).to_be_disabled()
    preview = maya.locator(".danger-zone ul li").all_inner_texts()
    expected = sum(int(line.split()[0]) for line in preview)
    assert expected >= 4, preview  # two turns and their two facts at least
    for wrong in ("tri", "trip2", "Trip"):
        typed.fill(wrong)
        expect(button).to_be_disabled()
    # The server checks the typed id again: a form sent without it deletes nothing.
    csrf = maya.locator("form[data-typed-confirm] input[name=csrf]").get_attribute("value") or ""
    refused = maya.context.request.post(
        "/ui/forget", form={"csrf": csrf, "user": "maya", "session": "trip", "agent": "", "typed": "tri"}
    )
    assert refused.status == 400 and "nothing was deleted" in refused.text(), refused.text()
    typed.fill("trip")
    expect(button).to_be_enabled()
    shot(maya, artifacts, "forget")

    button.click()
    done = maya.get_by_role("status")
    expect(done).to_contain_text(f"Forgot session 'trip' of user 'maya': {expected} records deleted.")
    shot(maya, artifacts, "forget-done")

    maya.get_by_role("link", name="Back to the timeline").click()
    expect(maya.get_by_role("heading", level=1)).to_contain_text("Timeline")
    main = maya.locator("main")
    expect(main).not_to_contain_text("Lisbon")
    expect(main).to_contain_text("I moved to Munich.")  # the other sessions stay
    maya.goto("/ui/timeline?user=maya&group=session&session=trip")
    expect(maya.get_by_role("status")).to_contain_text("No memories match these filters")


def test_a_read_only_token_sees_no_actions_and_a_forged_delete_is_refused(
    browser: Browser, server: HostedServer, contexts: list[Watched], tokens: dict[str, str], artifacts: Path
) -> None:
    watched = open_context(browser, server, contexts, LAPTOP)
    page = log_in(watched, tokens["reader"])
    search(page, "Munich")
    munich = hit(page, MUNICH_FACT)
    expect(munich).to_have_count(1)
    expect(page.get_by_role("button", name=re.compile("Delete"))).to_have_count(0)
    expect(page.locator("form[action$='/delete']")).to_have_count(0)
    expect(page.get_by_role("navigation", name="Pages").get_by_role("link", name="Forget")).to_have_count(0)
    expect(page.locator("header .who")).to_contain_text("token for maya (read-only)")
    shot(page, artifacts, "search-read-only")
    href = munich.locator("a.hit-text").get_attribute("href")
    assert href is not None
    record = href.split("?")[0].rsplit("/", 1)[1]
    csrf = page.locator("form[action='/ui/logout'] input[name=csrf]").get_attribute("value")

    page.goto("/ui/timeline?user=maya")
    expect(page.get_by_role("heading", level=1)).to_contain_text("Timeline")
    expect(page.get_by_role("heading", name="Export")).to_have_count(0)
    expect(page.locator("form[action='/ui/export']")).to_have_count(0)

    # The same browser session, forging the forms the page does not offer (its own CSRF token included).
    request = watched.context.request
    forged = request.post(f"/ui/records/{record}/delete", form={"csrf": csrf or "", "user": "maya", "back": ""})
    assert forged.status == 403, forged.text()
    assert "read-only" in forged.text()
    forget = request.post("/ui/forget", form={"csrf": csrf or "", "user": "maya", "session": "", "typed": "maya"})
    assert forget.status == 403, forget.text()
    exported = request.post("/ui/export", form={"csrf": csrf or "", "user": "maya"})
    assert exported.status == 403, exported.text()

    page.goto("/ui/search?user=maya")
    search(page, "Munich")
    expect(hit(page, MUNICH_FACT)).to_have_count(1)
    assert not watched.errors, watched.errors


def test_another_tenants_user_in_the_url_is_refused(
    maya: Page, browser: Browser, server: HostedServer, contexts: list[Watched], tokens: dict[str, str]
) -> None:
    # Bob's own session finds his message: the text exists to be hidden.
    bob = log_in(open_context(browser, server, contexts, LAPTOP), tokens["bob"])
    search(bob, "locker code")
    expect(bob.locator("ol.hits")).to_contain_text("My locker code is 4711.")

    for url in ("/ui/search?user=bob&q=locker+code", "/ui/timeline?user=bob", "/ui/stats?user=bob"):
        response = maya.goto(url)
        assert response is not None and response.status == 403, url
        expect(maya.get_by_role("alert")).to_contain_text("'bob' is not yours to see")
        expect(maya.locator("body")).not_to_contain_text("4711")
        expect(maya.locator("body")).not_to_contain_text("locker")
    record = maya.goto("/ui/records/anything?user=bob")
    assert record is not None and record.status == 403


def test_keyboard_labels_console_and_csp_on_every_page(
    browser: Browser, server: HostedServer, contexts: list[Watched], tokens: dict[str, str], artifacts: Path
) -> None:
    watched = open_context(browser, server, contexts, LAPTOP)
    page = log_in(watched, tokens["maya"])
    page.goto("/ui/search?user=maya&q=cat")
    expect(page.locator("li.hit").first).to_be_visible()

    page.keyboard.press("/")
    assert page.evaluate("() => document.activeElement && document.activeElement.id") == "q"
    first_link = "document.querySelector('li.hit a')"
    for _ in range(10):
        page.keyboard.press("Tab")
        if page.evaluate(f"() => document.activeElement === {first_link}"):
            break
    else:
        pytest.fail("Tab never reached the first hit's link")

    record = hit(page, MERGED).locator("a.hit-text").get_attribute("href")  # its page has the history
    pages = {
        "search": "/ui/search?user=maya&q=cat",
        "record": record or "",
        "timeline": "/ui/timeline?user=maya",
        "stats": "/ui/stats?user=maya",
        "forget": "/ui/forget?user=maya&session=summer",
    }
    for name, url in pages.items():
        response = page.goto(url)
        assert response is not None and response.status == 200, url
        assert unlabelled(page) == [], f"{name}: inputs without a label"
        assert watched.csp_violations(page) == [], name
        if name == "stats":
            expect(page.locator("svg.columns")).to_be_visible()
            shot(page, artifacts, "stats")
    # The script ran (the confirmation button waits for the typed id) and the styles applied.
    expect(page.get_by_role("button", name="Forget permanently")).to_be_disabled()
    assert page.evaluate("() => getComputedStyle(document.body).margin") == "0px"
    # The login page too, in a fresh context.
    login = open_context(browser, server, contexts, LAPTOP).context.new_page()
    login.goto("/ui/login")
    assert login.evaluate("() => document.activeElement.id") == "token"  # autofocus
    assert unlabelled(login) == [], "login: inputs without a label"
    assert watched.errors == [], watched.errors
    # The watch itself works: an inline script is refused by the CSP, and both signals say so.
    page.evaluate("() => { const s = document.createElement('script'); s.textContent = '1'; document.body.append(s); }")
    page.wait_for_function("() => window.__cspViolations.length > 0")
    assert watched.csp_violations(page)[0].startswith("script-src")
    for _ in range(50):
        if any("Content Security Policy" in e for e in watched.errors):
            break
        page.wait_for_timeout(100)
    assert any("Content Security Policy" in e for e in watched.errors), watched.errors


def test_the_search_page_fits_a_phone(
    browser: Browser, server: HostedServer, contexts: list[Watched], tokens: dict[str, str], artifacts: Path
) -> None:
    watched = open_context(browser, server, contexts, PHONE)
    page = log_in(watched, tokens["maya"])
    page.goto("/ui/search?user=maya&q=cat")
    expect(page.locator("li.hit").first).to_be_visible()
    overflow = "() => [document.documentElement.scrollWidth, window.innerWidth]"
    scroll_width, inner_width = page.evaluate(overflow)
    assert scroll_width <= inner_width, (scroll_width, inner_width)
    shot(page, artifacts, "search-phone")
    record = page.locator("li.hit a.hit-text").first.get_attribute("href")
    for url in ("/ui/timeline?user=maya", "/ui/stats?user=maya", "/ui/forget?user=maya&session=summer", record or ""):
        page.goto(url)
        scroll_width, inner_width = page.evaluate(overflow)
        assert scroll_width <= inner_width, (url, scroll_width, inner_width)
    assert not watched.errors, watched.errors
