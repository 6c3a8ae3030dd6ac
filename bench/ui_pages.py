"""Memory browser page loads over real HTTP, at 10k records in one user's scope.

The store: one user, `--records` records (default 10,000) of turns, facts and summaries, filled
through the real `Memory.add` path:
  * turns: the two LoCoMo dev conversations (four named speakers, one session per chat session),
    then LongMemEval haystack sessions (user and assistant, no names), one exchange per add (a
    message and the replies after it, as an agent adds them); each turn one minute after the one
    before it, from its session's date; metadata on every add (`source`, and the conversation or
    the haystack it came from);
  * facts: each session is flushed once it is added, and extraction goes to a scripted
    OpenAI-compatible server (`tests/openai_server.py`) that answers one fact for about one user
    message in five, citing it; so every fact has its source turns and its LLM call in the ledger;
  * summaries: every fourth session is summarized (`window="session"`) by the same scripted server;
  * then turns added with no LLM configured (backlog turns, as stored while extraction was off)
    make the scope exactly `--records`.
Embeddings are the real MiniLM's (every distinct text embedded once, cached under
bench/results/cache/ for the next run). The price table prices the scripted model, so the stats
page shows costs.

The server: the real app (`hosted.build_app(settings, "http")`, token auth, the `/ui` browser) on
uvicorn on a loopback port, in a thread of this process; the client logs in through
`POST /ui/login` with a bearer token and keeps the session cookie, then loads pages with httpx over
one keep-alive connection. What a page load counts: the HTML document (body read in full) and one
request per distinct static asset it references (ui.css, ui.js, icon.svg), one after the other
(a browser fetches the three in parallel: this is an upper bound). Warm loads revalidate the assets
as a browser does for files served without a freshness lifetime (`If-None-Match`, answered 304);
cold loads (empty cache) fetch them in full. Parsing the HTML in the client is not counted.

Baselines, in the same run and interleaved with the page loads (order alternating each round):
  * the service call the page is built on, in-process on the same `Memory` (Memory.search with the
    page's arguments, Memory.list, Memory.get, Memory.stats + Memory.activity);
  * every service call the page makes, as timed inside the server during that very load (the
    server's `Memory` is wrapped to time its methods), so `page - service` is the page's own cost:
    HTTP, session check, rendering;
  * GET /healthz over the same connection.

Every page's HTML is parsed and each src / href / action checked to be of this server (nothing loads
from outside), and the stylesheet checked for external url()s.

    .venv/bin/python -m bench.ui_pages [--records 10000] [--loads 30] [--warmup 5] [--store DIR]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import logging
import os
import re
import socket
import statistics
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, cast
from urllib.parse import urljoin, urlsplit

import httpx
import numpy as np
import uvicorn
from pydantic import SecretStr

from bench.common import (
    DEFAULT_DATA,
    RESULTS,
    bench_env,
    load_questions,
    machine_info,
    percentile,
    print_machine,
    print_table,
    settings_for,
    write_results,
)
from bench.pipeline import exchanges
from lightmem_mcp.api import Message, SearchFilters
from lightmem_mcp.auth import token_line
from lightmem_mcp.calls import MemoryProvider
from lightmem_mcp.config import AuthSettings, HttpSettings, LLMSettings, PipelineSettings
from lightmem_mcp.embedder import SentenceTransformerEmbedder
from lightmem_mcp.hosted import build_app
from lightmem_mcp.indexing import store_layout
from lightmem_mcp.lexical import LexicalEncoder
from lightmem_mcp.memory import Memory
from lightmem_mcp.records import Scope, is_blank
from lightmem_mcp.store import open_store
from lightmem_mcp.ui.app import SEARCH_CONTEXT, SEARCH_LIMIT, TIMELINE_PAGE
from tests.openai_server import PROMPT_LINE, ChatRequest, FakeLLMServer, Reply

DEFAULT_LOCOMO = Path("/work/shared/data/locomo_dev2.json.gz")
USER = "reader"
TOKEN = "lm-bench-ui-pages-token"  # a token of this run's tokens list only
BUDGET_MS = 300.0
TURN_SHARE = 0.85  # of --records, the turns stored with the LLM on (facts and summaries follow from them)
FACT_EVERY = 5  # about one user message in five gets a fact
SUMMARY_EVERY = 4  # every fourth session gets a summary
PRICE = {"input_cache_miss": 0.28, "input_cache_hit": 0.028, "output": 0.42}
# The service calls a page can make: the server's Memory is wrapped to time these.
SERVICE_CALLS = ("search", "get", "list", "suggest", "history", "llm_calls", "summaries", "stats", "activity")


# -- data ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Session:
    """One session of the corpus: where it goes, its metadata, and its adds in order."""

    session_id: str
    metadata: dict[str, str]
    adds: list[list[Message]]

    @property
    def turns(self) -> int:
        return sum(len(add) for add in self.adds)


def _spread(start: datetime, index: int) -> str:
    """A turn's time: its session's start plus one minute per turn before it, as UTC."""
    return (start + timedelta(minutes=index)).isoformat() + "Z"


def locomo_sessions(path: Path) -> list[Session]:
    """Each LoCoMo chat session, both speakers as named `user` messages, in pairs (one add each)."""
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        conversations = json.load(handle)
    sessions = []
    for conversation in conversations:
        sample, chat = conversation["sample_id"], conversation["conversation"]
        number = 1
        while f"session_{number}" in chat:
            start = datetime.strptime(chat[f"session_{number}_date_time"], "%I:%M %p on %d %B, %Y")
            said = [t for t in chat[f"session_{number}"] if not is_blank(t["text"])]
            messages = [
                Message(role="user", name=t["speaker"], content=t["text"], id=t["dia_id"], timestamp=_spread(start, i))
                for i, t in enumerate(said)
            ]
            adds = [messages[i : i + 2] for i in range(0, len(messages), 2)]
            sessions.append(Session(f"{sample}-session-{number}", {"source": "locomo", "conversation": sample}, adds))
            number += 1
    return sessions


def longmemeval_sessions(path: Path) -> Iterator[Session]:
    """LongMemEval haystack sessions in file order, each once, as exchanges."""
    seen: set[str] = set()
    for question in load_questions(path):
        sessions = zip(
            question["haystack_session_ids"], question["haystack_dates"], question["haystack_sessions"], strict=True
        )
        for session_id, date, turns in sessions:
            if session_id in seen:
                continue
            seen.add(session_id)
            start = datetime.strptime(date, "%Y/%m/%d (%a) %H:%M")
            messages = [
                Message(role=t["role"], content=t["content"], id=f"{session_id}#{i}", timestamp=_spread(start, i))
                for i, t in enumerate(turns)
                if not is_blank(t["content"])
            ]
            if messages:
                metadata = {"source": "longmemeval", "haystack": question["question_id"]}
                yield Session(session_id, metadata, exchanges(messages))


def corpus(locomo: Path, longmemeval: Path) -> Iterator[Session]:
    yield from locomo_sessions(locomo)
    yield from longmemeval_sessions(longmemeval)


# -- the embedder and the scripted LLM -------------------------------------------------


class CachedEmbedder:
    """The real MiniLM, each distinct text embedded once; the vectors kept on disk for the next run."""

    def __init__(self, real: SentenceTransformerEmbedder, path: Path) -> None:
        self.id = real.id
        self.dimension = real.dimension
        self.device = real.device
        self.location = real.location
        self._real = real
        self._path = path
        self._vectors: dict[str, list[float]] = {}
        self.embedded = 0
        if path.with_suffix(".npy").exists():
            texts = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
            vectors = np.load(path.with_suffix(".npy"))
            self._vectors = {t: v.tolist() for t, v in zip(texts, vectors, strict=True)}
            print(f"{len(texts)} cached vectors from {path.with_suffix('.npy')}")
        self._known = len(self._vectors)

    def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        missing = list(dict.fromkeys(t for t in texts if t not in self._vectors))
        if missing:
            for text, vector in zip(missing, self._real.embed_documents(missing), strict=True):
                self._vectors[text] = vector
            self.embedded += len(missing)
        return [self._vectors[t] for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return self._real.embed_query(text)

    def save(self) -> None:
        if len(self._vectors) == self._known:
            return
        self._path.parent.mkdir(parents=True, exist_ok=True)
        texts = list(self._vectors)
        np.save(self._path.with_suffix(".npy"), np.asarray([self._vectors[t] for t in texts], dtype=np.float32))
        self._path.with_suffix(".json").write_text(json.dumps(texts), encoding="utf-8")


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def scripted_answer(request: ChatRequest) -> dict[str, Any]:
    """Extraction: a fact for about one message in five (chosen by a hash of its words), citing it.
    Summaries: the first three memories of the period, clipped."""
    lines = [m for m in map(PROMPT_LINE.match, request.user.splitlines()) if m]
    if '{"summary"' in request.system:
        said = [_clip(m.group(5), 140) for m in lines[:3]] or [_clip(request.user, 400)]
        return {"summary": "In this period: " + " / ".join(said)}
    facts = [
        {"fact": f"{m.group(4) or 'The user'} said: {_clip(m.group(5), 200)}", "sources": [int(m.group(1))]}
        for m in lines
        if zlib.crc32(m.group(5).encode()) % FACT_EVERY == 0
    ]
    return {"facts": facts}


# -- filling ---------------------------------------------------------------------------


def fill(root: Path, records: int, embedder: CachedEmbedder, locomo: Path, longmemeval: Path) -> dict[str, Any]:
    """Fill USER's scope with `records` records (see the module docstring; at a few hundred, the sessions with
    the LLM on may already pass it); returns what was made."""
    lexical = LexicalEncoder()
    layout = store_layout(embedder, lexical)
    llm = FakeLLMServer().start()
    llm.script(*[Reply.computed(scripted_answer)] * (records * 2))
    began = time.perf_counter()
    sessions = corpus(locomo, longmemeval)
    made: dict[str, Any] = {"sessions": 0, "adds": 0, "summarized_sessions": 0}
    try:
        extracting = settings_for(root).model_copy(
            update={"llm": llm.settings(timeout_s=60.0), "pipeline": PipelineSettings(buffer_tokens=100_000)}
        )
        memory = Memory(extracting, embedder, open_store(extracting.store, layout), lexical)
        turns = 0
        try:
            for session in sessions:
                scope = Scope(user_id=USER, session_id=session.session_id)
                for add in session.adds:
                    memory.add(add, scope, metadata=session.metadata)
                flushed = memory.flush(scope)
                if flushed.error:
                    raise RuntimeError(f"flush of {session.session_id}: {flushed.error}")
                if made["sessions"] % SUMMARY_EVERY == 0:
                    memory.summarize(scope, window="session")
                    made["summarized_sessions"] += 1
                made["sessions"] += 1
                made["adds"] += len(session.adds)
                turns += session.turns
                if made["sessions"] % 100 == 0:
                    print(f"  {made['sessions']} sessions, {turns} turns, {time.perf_counter() - began:.0f} s")
                if turns >= records * TURN_SHARE:
                    break
        finally:
            memory.close()
        made["llm_requests"] = len(llm.requests)
    finally:
        llm.stop()
    if llm.broken:
        raise RuntimeError(f"the scripted answer raised: {llm.broken[0]}")

    # The rest: turns stored while no LLM was configured (a backlog), to land on exactly `records`.
    quiet = settings_for(root).model_copy(update={"llm": LLMSettings(provider="none")})
    memory = Memory(quiet, embedder, open_store(quiet.store, layout), lexical)
    try:
        left = records - memory.count(Scope(user_id=USER))
        made["backlog_turns"] = max(left, 0)
        for session in sessions:
            if left <= 0:
                break
            scope = Scope(user_id=USER, session_id=session.session_id)
            for add in session.adds:
                if left <= 0:
                    break
                memory.add(add[:left], scope, metadata=session.metadata)
                left -= len(add[:left])
                made["adds"] += 1
            made["sessions"] += 1
        if left < 0:
            print(f"note: the scope holds {-left} records more than --records asked")
    finally:
        memory.close()
    made["fill_seconds"] = time.perf_counter() - began
    made["texts_embedded"] = embedder.embedded
    return made


# -- the server ------------------------------------------------------------------------


class ServiceClock:
    """The time the server's `Memory` spends in service calls, per page load (loads run one at a time)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: list[tuple[str, float]] = []

    def take(self) -> list[tuple[str, float]]:
        with self._lock:
            calls, self.calls = self.calls, []
        return calls

    def wrap(self, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                with self._lock:
                    self.calls.append((name, time.perf_counter() - began))

        return timed


class TimedMemory:
    """The server's `Memory`, its service calls timed by `clock`; everything else passed through."""

    def __init__(self, memory: Memory, clock: ServiceClock) -> None:
        self._memory = memory
        self._clock = clock

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._memory, name)
        return self._clock.wrap(name, value) if name in SERVICE_CALLS else value


@dataclass
class Server:
    """uvicorn serving the hosted app in a thread."""

    base_url: str
    memory: Memory
    clock: ServiceClock
    _server: uvicorn.Server
    _thread: threading.Thread

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=60)


def start_server(root: Path, real: SentenceTransformerEmbedder) -> Server:
    """The hosted HTTP app on 127.0.0.1 with a token for USER, its `Memory` opened and ready."""
    with socket.socket() as probe:  # a port nothing listens on now
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    settings = settings_for(root)
    settings = settings.model_copy(
        update={
            "http": HttpSettings(host="127.0.0.1", port=port),
            "auth": AuthSettings(mode="tokens", tokens=SecretStr(token_line(TOKEN, USER, ["read", "write"]))),
        }
    )
    clock = ServiceClock()
    memory = Memory.open(settings, embedder=real)
    provider: MemoryProvider[Any] = MemoryProvider(settings, lambda _: TimedMemory(memory, clock))
    hosted = build_app(settings, "http", cast(MemoryProvider[Memory], provider))
    config = uvicorn.Config(
        hosted.app,
        host="127.0.0.1",
        port=port,
        log_config=None,
        log_level="warning",
        access_log=False,
        server_header=False,
        lifespan="on",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{base_url}/readyz", timeout=5).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the server did not become ready")
        time.sleep(0.1)
    return Server(base_url, memory, clock, server, thread)


# -- loading pages ---------------------------------------------------------------------


class Links(HTMLParser):
    """Every URL-valued attribute of a page, and the assets a browser fetches for it."""

    URL_ATTRS = ("src", "href", "action", "formaction", "srcset", "poster", "data", "background", "cite")

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[tuple[str, str, str]] = []  # (tag, attribute, value)
        self.assets: list[str] = []
        self.next: str | None = None
        self.styles = 0  # inline style attributes or <style> elements

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        for name in self.URL_ATTRS:
            if name in values:
                self.urls.append((tag, name, values[name]))
        if "style" in values or tag == "style":
            self.styles += 1
        rel = values.get("rel", "").split()
        if tag == "link" and ("stylesheet" in rel or "icon" in rel):
            self.assets.append(values["href"])
        if tag in ("script", "img") and values.get("src"):
            self.assets.append(values["src"])
        if tag == "a" and "next" in rel:
            self.next = values["href"]


def parsed(html: str) -> Links:
    links = Links()
    links.feed(html)
    links.close()
    return links


def foreign(page_url: str, links: Links) -> list[str]:
    """The page's URLs that point anywhere but this server (a fragment or a relative path is this server)."""
    origin = urlsplit(page_url)
    bad = []
    for tag, name, value in links.urls:
        for url in [u.strip().split()[0] for u in value.split(",") if u.strip()] if name == "srcset" else [value]:
            target = urlsplit(urljoin(page_url, url))
            if (target.scheme, target.netloc) != (origin.scheme, origin.netloc):
                bad.append(f"<{tag} {name}={value!r}>")
    return bad


@dataclass
class Browser:
    """An httpx client with the session cookie and an asset cache (ETags), as a browser keeps them."""

    client: httpx.Client
    etags: dict[str, str] = field(default_factory=dict)
    checked: dict[str, list[str]] = field(default_factory=dict)  # page kind -> foreign URLs found

    def login(self) -> None:
        answer = self.client.post("/ui/login", data={"token": TOKEN, "next": ""})
        if answer.status_code != 303 or "lightmem_ui" not in self.client.cookies:
            raise RuntimeError(f"login failed: {answer.status_code} {answer.text[:200]}")

    def load(self, url: str, kind: str) -> tuple[float, Links, int]:
        """Load a page with its assets; seconds spent on the network (parsing not counted), links, bytes."""
        began = time.perf_counter()
        page = self.client.get(url)
        spent = time.perf_counter() - began
        if page.status_code != 200:
            raise RuntimeError(f"GET {url}: {page.status_code} {page.text[:300]}")
        links = parsed(page.text)
        self.checked.setdefault(kind, []).extend(foreign(str(page.url), links))
        if "default-src 'none'" not in page.headers.get("content-security-policy", ""):
            self.checked[kind].append("no CSP header")
        size = len(page.content)
        began = time.perf_counter()
        for asset in dict.fromkeys(links.assets):
            cached = self.etags.get(asset)
            answer = self.client.get(asset, headers={"if-none-match": cached} if cached else {})
            if answer.status_code == 200:
                self.etags[asset] = answer.headers["etag"]
                size += len(answer.content)
            elif answer.status_code != 304 or cached is None:
                raise RuntimeError(f"GET {asset}: {answer.status_code}")
        spent += time.perf_counter() - began
        return spent, links, size


@dataclass
class PageSpec:
    """One page to time: its URL for round `n`, and the in-process call it is built on."""

    name: str
    url: Callable[[int], str]
    baseline: Callable[[int], Any]
    baseline_label: str
    # Run before the page and before its baseline, untimed (e.g. a write, so that nothing kept is reused).
    before: Callable[[int], Any] | None = None


@dataclass
class Timings:
    page: list[float] = field(default_factory=list)
    service: list[float] = field(default_factory=list)  # the page's service calls, timed in the server
    calls: dict[str, list[float]] = field(default_factory=dict)  # per service method, summed per load
    baseline: list[float] = field(default_factory=list)
    cold: list[float] = field(default_factory=list)
    bytes: int = 0


def page_specs(memory: Memory, queries: Sequence[str], later_url: str, ids: dict[str, str]) -> list[PageSpec]:
    """The pages, with the same arguments for the page and its in-process baseline."""
    from urllib.parse import parse_qs, urlencode

    scope = Scope(user_id=USER)
    later_cursor = parse_qs(urlsplit(later_url).query)["cursor"][0]

    def search_url(n: int) -> str:
        return "/ui/search?" + urlencode({"user": USER, "q": queries[n % len(queries)]})

    def search(n: int) -> Any:
        return memory.search(queries[n % len(queries)], scope, SEARCH_LIMIT, SearchFilters(), context=SEARCH_CONTEXT)

    def listed(cursor: str | None) -> Callable[[int], Any]:
        return lambda n: memory.list(scope, kinds=None, limit=TIMELINE_PAGE, cursor=cursor, metadata=None)

    def got(record: str) -> Callable[[int], Any]:
        return lambda n: memory.get([record], scope)

    def stats(bucket: Any, buckets: int) -> Callable[[int], Any]:
        return lambda n: (memory.stats(scope), memory.activity(scope, bucket, buckets))

    def write(n: int) -> Any:
        """One message written to a side session (always the same message id, so the scope keeps its size):
        the user's stats are counted again at the next load."""
        text = f"bench write {n}: a note about nothing in particular"
        message = Message(role="user", content=text, id="bench-write")
        return memory.add([message], Scope(user_id=USER, session_id="bench-writes"))

    record = f"/ui/records/{{}}?user={USER}"
    return [
        PageSpec("search", search_url, search, "Memory.search (hybrid, top 20, context 2)"),
        PageSpec("timeline, first page", lambda n: f"/ui/timeline?user={USER}", listed(None), "Memory.list (100)"),
        PageSpec("timeline, page 10 (cursor)", lambda n: later_url, listed(later_cursor), "Memory.list (100, cursor)"),
        PageSpec("record: a fact", lambda n: record.format(ids["fact"]), got(ids["fact"]), "Memory.get"),
        PageSpec("record: a summary", lambda n: record.format(ids["summary"]), got(ids["summary"]), "Memory.get"),
        PageSpec("record: a turn", lambda n: record.format(ids["turn"]), got(ids["turn"]), "Memory.get"),
        PageSpec("stats, weeks", lambda n: f"/ui/stats?user={USER}", stats("week", 16), "Memory.stats + activity"),
        PageSpec(
            "stats, days", lambda n: f"/ui/stats?user={USER}&bucket=day", stats("day", 30), "Memory.stats + activity"
        ),
        PageSpec(
            "stats, after a write",
            lambda n: f"/ui/stats?user={USER}",
            stats("week", 16),
            "Memory.stats + activity (after a write)",
            before=write,
        ),
    ]


def pick_records(memory: Memory) -> dict[str, str]:
    """A fact (with sources and an LLM call), a summary and a turn: the middle one of the newest 100 of each kind."""
    scope = Scope(user_id=USER)
    chosen = {}
    for kind in ("fact", "summary", "turn"):
        page = memory.list(scope, kinds=[kind], limit=100).records
        chosen[kind] = page[len(page) // 2].id
    return chosen


def measure(
    server: Server, specs: Sequence[PageSpec], loads: int, warmup: int, cold_loads: int
) -> tuple[dict[str, Timings], list[float], dict[str, list[str]]]:
    """Rounds of every page: the page over HTTP and its in-process baseline, in alternating order."""
    timings = {spec.name: Timings() for spec in specs}
    health: list[float] = []
    with httpx.Client(base_url=server.base_url, timeout=120, follow_redirects=False) as client:
        browser = Browser(client)
        browser.login()
        for n in range(warmup + loads):
            timed = n >= warmup
            began = time.perf_counter()
            answer = client.get("/healthz")
            if timed:
                health.append(time.perf_counter() - began)
            assert answer.status_code == 200
            order = specs if n % 2 == 0 else list(reversed(specs))
            for spec in order:
                steps = ("page", "baseline") if n % 2 == 0 else ("baseline", "page")
                for step in steps:
                    if spec.before is not None:
                        spec.before(n)
                    if step == "baseline":
                        began = time.perf_counter()
                        spec.baseline(n)
                        spent = time.perf_counter() - began
                        if timed:
                            timings[spec.name].baseline.append(spent)
                        continue
                    server.clock.take()
                    spent, _, size = browser.load(spec.url(n), spec.name)
                    calls = server.clock.take()
                    if timed:
                        record = timings[spec.name]
                        record.page.append(spent)
                        record.service.append(sum(s for _, s in calls))
                        per_method: dict[str, float] = {}
                        for name, s in calls:
                            per_method[name] = per_method.get(name, 0.0) + s
                        for name, s in per_method.items():
                            record.calls.setdefault(name, []).append(s)
                        record.bytes = size
        # Cold loads: the asset cache emptied before each (the session cookie kept).
        for n in range(cold_loads):
            for spec in specs:
                browser.etags.clear()
                spent, _, _ = browser.load(spec.url(warmup + n), spec.name)
                timings[spec.name].cold.append(spent)
    return timings, health, browser.checked


def later_page(server: Server, pages: int) -> str:
    """The URL of timeline page `pages` (1 is the first), followed through each page's `Older` link."""
    with httpx.Client(base_url=server.base_url, timeout=120) as client:
        browser = Browser(client)
        browser.login()
        url = f"/ui/timeline?user={USER}"
        for _ in range(pages - 1):
            _, links, _ = browser.load(url, "timeline, following Older")
            if links.next is None:
                raise RuntimeError(f"the timeline has fewer than {pages} pages")
            url = links.next
    return url


def css_check(server: Server) -> list[str]:
    """External url()s or @imports in the stylesheet."""
    css = httpx.get(f"{server.base_url}/ui/static/ui.css").text
    found = re.findall(r"url\(\s*['\"]?([^'\")]+)", css) + re.findall(r"@import\s+['\"]?([^'\";]+)", css)
    return [u for u in found if urlsplit(u).scheme or u.startswith("//")]


# -- main ------------------------------------------------------------------------------


def ms(values: Sequence[float]) -> dict[str, float]:
    out = [v * 1000 for v in values]
    return {
        "n": len(out),
        "p50_ms": percentile(out, 50),
        "p95_ms": percentile(out, 95),
        "max_ms": max(out),
        "mean_ms": statistics.fmean(out),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=10_000, help="records in the user's scope")
    parser.add_argument("--loads", type=int, default=30, help="timed loads of each page (after --warmup)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed rounds first")
    parser.add_argument("--cold", type=int, default=5, help="loads of each page with an empty asset cache")
    parser.add_argument("--later-page", type=int, default=10, help="which timeline page the cursor page is")
    parser.add_argument("--pages", default="", help="only the pages whose name holds one of these, comma-separated")
    parser.add_argument("--store", type=Path, help="keep the filled store here (reused when it holds --records)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--locomo", type=Path, default=DEFAULT_LOCOMO)
    args = parser.parse_args()

    # The scripted model is priced (DeepSeek-like figures), so stats and record pages show costs.
    os.environ.setdefault("LIGHTMEM_PRICE_TABLE", json.dumps({"openai-compatible/fake-model": PRICE}))
    info = machine_info()
    print_machine(info)
    print(f"benchmark settings: {bench_env()}")

    with tempfile.TemporaryDirectory(prefix="lightmem-ui-") as tmp:
        root = args.store or Path(tmp)
        real = SentenceTransformerEmbedder(settings_for(root).embedding)
        cache = RESULTS / "cache" / f"ui-pages-{hashlib.sha256(real.id.encode()).hexdigest()[:8]}"
        marker = root / "ui-pages-filled.json"  # what a kept store was filled with
        filled: dict[str, Any] = json.loads(marker.read_text()) if marker.exists() else {}
        if filled.get("records") != args.records:
            if root.exists() and any(root.iterdir()):
                raise SystemExit(
                    f"{root} is not empty and holds no store of {args.records} records: use another --store"
                )
            embedder = CachedEmbedder(real, cache)
            print(f"filling {args.records:,} records for user {USER!r} in {root} ...")
            filled = {"records": args.records, **fill(root, args.records, embedder, args.locomo, args.data)}
            embedder.save()
            marker.write_text(json.dumps(filled))
            print(
                f"filled in {filled['fill_seconds']:.0f} s: {filled['sessions']} sessions, {filled['adds']} adds, "
                f"{filled['texts_embedded']} texts embedded by MiniLM"
            )

        for noisy in ("httpx", "mcp", "uvicorn"):  # a request log line per asset would drown the report
            logging.getLogger(noisy).setLevel(logging.WARNING)
        server = start_server(root, real)
        try:
            memory = server.memory
            scope = Scope(user_id=USER)
            stats = memory.stats(scope)
            counts: dict[str, int] = {r.kind: r.total for r in stats.records}
            speakers = memory.suggest(scope, "speaker", limit=50)
            print(
                f"scope {USER!r}: {memory.count(scope):,} records {counts}, {stats.llm_total.calls} LLM calls in the "
                f"ledger, speakers {speakers}"
            )
            questions = load_questions(args.data)
            queries = [q["question"] for q in questions][: max(args.loads + args.warmup, 1)]
            ids = pick_records(memory)
            later = later_page(server, args.later_page)
            specs = page_specs(memory, queries, later, ids)
            if args.pages:
                specs = [s for s in specs if any(part.strip() in s.name for part in args.pages.split(","))]
            timings, health, checked = measure(server, specs, args.loads, args.warmup, args.cold)
            css = css_check(server)
        finally:
            server.stop()  # its shutdown closes the Memory

    labels = {s.name: s.baseline_label for s in specs}
    results = report(timings, health, checked, css, args, counts, labels)
    write_results(
        "ui_pages",
        {
            "machine": info,
            "settings": bench_env(),
            "args": {k: str(v) for k, v in vars(args).items()},
            "filled": filled,
            "records": counts,
            "ids": ids,
            **results,
        },
    )


def report(
    timings: dict[str, Timings],
    health: list[float],
    checked: dict[str, list[str]],
    css: list[str],
    args: argparse.Namespace,
    counts: dict[str, int],
    labels: dict[str, str],
) -> dict[str, Any]:
    """The tables, the ratios, the verdicts; returns the figures."""
    healthz = ms(health)
    pages: dict[str, Any] = {}
    for name, t in timings.items():
        own = [p - s for p, s in zip(t.page, t.service, strict=True)]
        pages[name] = {
            "page": ms(t.page),
            "service_in_page": ms(t.service),
            "page_minus_service": ms(own),
            "baseline": ms(t.baseline),
            "cold": ms(t.cold),
            "calls_p50_ms": {k: percentile([v * 1000 for v in vs], 50) for k, vs in t.calls.items()},
            "samples_ms": {"page": [v * 1000 for v in t.page], "service": [v * 1000 for v in t.service]},
            "bytes": t.bytes,
        }
    print(
        f"\nPage loads at {sum(counts.values()):,} records ({counts}), {args.loads} loads per page after "
        f"{args.warmup} warm-up rounds (ms; a warm load = the document + 304s for its 3 assets):"
    )
    print_table(
        ["page", "p50", "p95", "max", "cold p50", "service in page p50", "page - service p50", "KB"],
        [
            [
                name,
                p["page"]["p50_ms"],
                p["page"]["p95_ms"],
                p["page"]["max_ms"],
                p["cold"]["p50_ms"],
                p["service_in_page"]["p50_ms"],
                p["page_minus_service"]["p50_ms"],
                round(p["bytes"] / 1024, 1),
            ]
            for name, p in pages.items()
        ],
    )
    print(
        f"\nBaselines (ms): GET /healthz over the same connection p50 {healthz['p50_ms']:.2f}, "
        f"p95 {healthz['p95_ms']:.2f}"
    )
    print_table(
        ["page", "in-process call", "call p50", "call p95", "page / call p50", "page / healthz p50"],
        [
            [
                name,
                labels[name],
                p["baseline"]["p50_ms"],
                p["baseline"]["p95_ms"],
                p["page"]["p50_ms"] / p["baseline"]["p50_ms"],
                p["page"]["p50_ms"] / healthz["p50_ms"],
            ]
            for name, p in pages.items()
        ],
    )
    print("\nService calls inside each page (p50 ms per load, summed per method, timed in the server):")
    for name, p in pages.items():
        calls = ", ".join(f"{k} {v:.1f}" for k, v in sorted(p["calls_p50_ms"].items(), key=lambda kv: -kv[1]))
        print(f"  {name}: {calls}")
    print(f"\nVerdicts against {BUDGET_MS:.0f} ms (p95 of warm loads; cold p50 shown too):")
    verdicts = {}
    for name, p in pages.items():
        ok = p["page"]["p95_ms"] < BUDGET_MS
        verdicts[name] = "meets" if ok else "OVER BUDGET"
        print(
            f"  {name}: p95 {p['page']['p95_ms']:.1f} ms, max {p['page']['max_ms']:.1f} ms, cold p50 "
            f"{p['cold']['p50_ms']:.1f} ms -> {verdicts[name]}"
        )
    outside = {k: sorted(set(v)) for k, v in checked.items() if v}
    if outside or css:
        print(f"\nNOT self-contained: {outside} {css}")
    else:
        checked_urls = "every src / href / action of every loaded page, and ui.css"
        print(f"\nNothing loads from outside: {checked_urls} point to this server; every page sent its CSP.")
    return {"healthz": healthz, "pages": pages, "verdicts": verdicts, "foreign": outside, "css_foreign": css}


if __name__ == "__main__":
    main()
