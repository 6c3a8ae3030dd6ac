"""Projects and the global tier: a session in a project reads that project's memories and the user's
global ones, ranked together, never another project's, and every result says which tier it is in.

Everything is real (Qdrant Edge, MiniLM, the buffer, consolidation, export / import); only the LLM's
answers are scripted, by a local OpenAI-compatible server."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lightmem_mcp.api import Message, SearchFilters
from lightmem_mcp.config import ConsolidationSettings, PipelineSettings, Settings, StoreSettings
from lightmem_mcp.embedder import SentenceTransformerEmbedder
from lightmem_mcp.errors import InvalidInput
from lightmem_mcp.extractor import ABOUT_PROMPT, EXTRACTION_PROMPT
from lightmem_mcp.memory import Memory
from lightmem_mcp.records import GLOBAL, RecordFilter, Scope, record_id
from tests.conftest import open_memory
from tests.openai_server import ChatRequest, FakeLLMServer, prompt_messages

ANA = Scope("ana")  # no project narrowing: every tier (hosted callers, and everything before projects)
HOME = Scope("ana", project=GLOBAL)  # the global tier alone
WEB = Scope("ana", project="web-3f2a9c01d4e5")
CLI = Scope("ana", project="cli-9c1d0b7a2e66")

# (message id, scope it is said in, text)
SAID = [
    ("g1", ANA, "I prefer tabs over spaces in every language."),
    ("g2", ANA, "My name is Ana and I live in Lisbon."),
    ("w1", WEB, "The web app uses React with a Postgres database."),
    ("w2", WEB, "The login page crashes when the password field is empty."),
    ("c1", CLI, "The command line tool is written in Rust and uses clap."),
    ("c2", CLI, "The command line tool release is planned for Friday."),
]


def add(memory: Memory, rows: list[tuple[str, Scope, str]], timestamp: str | None = None) -> dict[str, str]:
    """Each message added in its scope; returns the record id of each message id."""
    ids = {}
    for message_id, scope, text in rows:
        (record,) = memory.add([Message(role="user", content=text, id=message_id, timestamp=timestamp)], scope).ids
        ids[message_id] = record
    return ids


def cited(records: list[Any]) -> set[str]:
    """The message ids some hits or records come from."""
    return {source for record in records for source in record.source_ids}


@pytest.fixture
def filled(memory: Memory) -> dict[str, str]:
    return add(memory, SAID)


# -- reading: own project plus the global tier -------------------------------------------------


def test_a_project_searches_its_own_and_the_global_memories_never_another_projects(
    memory: Memory, filled: dict[str, str]
) -> None:
    hits = memory.search("which database and framework does the app use", WEB, limit=10).hits

    assert cited(hits) == {"g1", "g2", "w1", "w2"}  # every record it may read, none of CLI's
    assert hits[0].source_ids == ["w1"]  # ranked together with the global ones
    for hit in hits:
        if hit.source_ids[0].startswith("w"):
            assert (hit.tier, hit.project) == ("project", WEB.project)
        else:
            assert (hit.tier, hit.project) == ("global", None)
    assert cited(memory.search("release date of the Rust tool", CLI, limit=10).hits) == {"g1", "g2", "c1", "c2"}
    assert cited(memory.search("Rust", HOME, limit=10).hits) == {"g1", "g2"}
    assert cited(memory.search("Rust", ANA, limit=10).hits) == {sid for sid, _, _ in SAID}


def test_recall_packs_only_what_the_project_may_read_and_names_each_blocks_tier(
    memory: Memory, filled: dict[str, str]
) -> None:
    recalled = memory.recall("what does the user prefer and which database is used", WEB, max_tokens=2000)

    assert "Postgres" in recalled.context and "tabs" in recalled.context
    assert "Rust" not in recalled.context and "Friday" not in recalled.context
    tiers = {source: (block.tier, block.project) for block in recalled.blocks for source in block.source_ids}
    assert tiers == {
        "g1": ("global", None),
        "g2": ("global", None),
        "w1": ("project", WEB.project),
        "w2": ("project", WEB.project),
    }


def test_list_get_count_and_stats_follow_the_tier_rule(memory: Memory, filled: dict[str, str]) -> None:
    assert cited(memory.list(WEB, limit=20).records) == {"g1", "g2", "w1", "w2"}
    assert cited(memory.list(HOME, limit=20).records) == {"g1", "g2"}
    assert cited(memory.list(ANA, limit=20).records) == {sid for sid, _, _ in SAID}
    assert [memory.count(s) for s in (WEB, CLI, HOME, ANA)] == [4, 4, 2, 6]

    got = memory.get([filled["g1"], filled["w1"], filled["c1"]], WEB)
    assert [(r.tier, r.project) for r in got.records] == [("global", None), ("project", WEB.project)]
    assert got.missing == [filled["c1"]]  # another project's record is never revealed

    turns = {row.kind: row.total for row in memory.stats(WEB).records}["turn"]
    assert turns == 4


def test_records_stored_before_projects_keep_their_ids_and_are_read_from_every_project(
    memory: Memory, filled: dict[str, str]
) -> None:
    assert filled["g1"] == record_id(Scope("ana"), "turn", "g1")  # ids hash as before projects
    (point,) = memory.store.scroll(RecordFilter("ana", ids=(filled["g1"],)), 1)
    assert "project" not in point.payload  # and the payload is as it was

    # Sent again through the global tier it is the same record; in a project it is another one.
    assert add(memory, [("g1", HOME, SAID[0][2])]) == {"g1": filled["g1"]}
    assert add(memory, [("g1", WEB, SAID[0][2])])["g1"] not in filled.values()
    for scope in (WEB, CLI, HOME):
        assert filled["g2"] in {r.id for r in memory.get([filled["g2"]], scope).records}


# -- deleting ------------------------------------------------------------------------------------


def test_forget_in_a_project_leaves_the_global_tier_and_the_other_projects(
    memory: Memory, filled: dict[str, str]
) -> None:
    with pytest.raises(InvalidInput, match=f"in project '{WEB.project}'"):
        memory.forget(WEB, confirm=False)

    assert memory.forget(WEB, confirm=True) == 2

    assert cited(memory.list(ANA, limit=20).records) == {"g1", "g2", "c1", "c2"}
    assert memory.forget(HOME, confirm=True) == 2
    assert cited(memory.list(ANA, limit=20).records) == {"c1", "c2"}


def test_delete_by_id_reaches_what_the_project_reads_and_nothing_else(memory: Memory, filled: dict[str, str]) -> None:
    result = memory.delete([filled["g1"], filled["w1"], filled["c1"]], WEB)

    assert (result.deleted, result.missing) == ([filled["g1"], filled["w1"]], [filled["c1"]])
    assert cited(memory.list(ANA, limit=20).records) == {"g2", "w2", "c1", "c2"}


# -- the pipeline: project facts stay in the project, facts about the person go global ----------------

FACTS = {
    "I always prefer tabs over spaces.": ("The user prefers tabs over spaces.", "user"),
    "The web app's build fails on Node 18.": ("The web app's build fails on Node 18.", "context"),
    "The command line tool needs a --json flag.": ("The command line tool needs a --json flag.", "context"),
    "I moved to Munich.": ("Ana lives in Munich, Germany.", "context"),
    "I live in Berlin.": ("Ana lives in Berlin, Germany.", "context"),
    "I have a cat called Luna.": ("Ana has a cat named Luna.", "context"),
    "Luna is a grey Persian.": ("Ana has a cat named Luna, a grey Persian.", "context"),
}


def extract(request: ChatRequest) -> dict[str, Any]:
    """Extraction: the scripted fact of each numbered message, with what it is about."""
    return {
        "facts": [
            {"fact": FACTS[text][0], "sources": [n], "about": FACTS[text][1]} for n, text in prompt_messages(request)
        ]
    }


@pytest.fixture
def piped(settings: Settings, llm_server: FakeLLMServer, embedder: SentenceTransformerEmbedder) -> Iterator[Memory]:
    configured = settings.model_copy(
        update={
            "llm": llm_server.settings(max_retries=0),
            "pipeline": PipelineSettings(buffer_tokens=10_000),
            "consolidation": ConsolidationSettings(score_threshold=0.7),
        }
    )
    service = open_memory(configured, embedder)
    yield service
    service.close()


def facts(memory: Memory) -> dict[str, dict[str, Any]]:
    """Every fact of Ana, by text."""
    found = memory.store.scroll(RecordFilter("ana", kinds=("fact",)), 100)
    return {str(p.payload["text"]): dict(p.payload) for p in found}


def test_a_project_flush_keeps_work_facts_in_the_project_and_sends_facts_about_the_user_global(
    piped: Memory, llm_server: FakeLLMServer
) -> None:
    llm_server.script(extract, extract)
    add(piped, [("m1", WEB, "I always prefer tabs over spaces."), ("m2", WEB, "The web app's build fails on Node 18.")])
    add(piped, [("m3", CLI, "The command line tool needs a --json flag.")])

    assert sorted(piped.store.pending_scopes(100), key=str) == sorted([WEB, CLI], key=str)
    flushed = piped.flush(WEB)

    assert (flushed.extracted_turns, flushed.facts, flushed.pending_turns) == (2, 2, 0)
    (request,) = llm_server.requests
    assert ABOUT_PROMPT in request.system
    assert [text for _, text in prompt_messages(request)] == [
        "I always prefer tabs over spaces.",
        "The web app's build fails on Node 18.",
    ]  # the project's turns only: CLI's wait for their own flush
    by_text = facts(piped)
    assert "project" not in by_text["The user prefers tabs over spaces."]
    assert by_text["The web app's build fails on Node 18."]["project"] == WEB.project
    (ledger,) = piped.store.scroll(RecordFilter("ana", kinds=("llm_call",)), 10)
    assert ledger.payload["project"] == WEB.project

    seen_from_cli = piped.search("tabs or spaces, and the build", CLI, 10, SearchFilters(kinds=["fact"])).hits
    assert [(h.text, h.tier) for h in seen_from_cli] == [("The user prefers tabs over spaces.", "global")]
    assert piped.flush(CLI).facts == 1


def test_without_a_project_extraction_is_not_asked_what_a_fact_is_about(
    piped: Memory, llm_server: FakeLLMServer
) -> None:
    llm_server.script(extract)
    add(piped, [("m1", ANA, "I always prefer tabs over spaces.")])

    piped.flush(ANA)

    (request,) = llm_server.requests
    assert request.system == EXTRACTION_PROMPT
    assert "project" not in facts(piped)["The user prefers tabs over spaces."]


TARGET_LINE = re.compile(r"^TARGET \d+ \([\d-]+\): (.*)$")


def judge(request: ChatRequest) -> dict[str, Any]:
    """Consolidation: a move contradicts the old city, the breed updates the cat."""
    decisions = []
    for number, text in enumerate([m.group(1) for m in map(TARGET_LINE.match, request.user.splitlines()) if m], 1):
        if "Berlin" in text:
            decisions.append({"target": number, "action": "delete", "reason": "moved", "sources": [1]})
        else:
            merged = "Ana has a grey Persian cat named Luna."
            decisions.append({"target": number, "action": "update", "text": merged, "reason": "breed", "sources": [1]})
    return {"decisions": decisions}


def test_consolidation_never_lets_one_projects_facts_update_anothers(piped: Memory, llm_server: FakeLLMServer) -> None:
    llm_server.script(extract, extract, extract)
    add(piped, [("s1", WEB, "I live in Berlin."), ("s2", WEB, "I have a cat called Luna.")], "2024-03-01T10:00:00Z")
    piped.flush(WEB)
    add(piped, [("u1", CLI, "I moved to Munich.")], "2024-07-01T10:00:00Z")
    piped.flush(CLI)
    add(piped, [("u2", WEB, "Luna is a grey Persian.")], "2024-07-01T10:05:00Z")
    piped.flush(WEB)
    llm_server.script(judge)

    result = piped.consolidate(ANA)

    # Munich (in CLI) is never set against Berlin (in WEB); the cat is, within WEB.
    (update,) = llm_server.requests[3:]
    assert [m.group(1) for m in map(TARGET_LINE.match, update.user.splitlines()) if m] == ["Ana has a cat named Luna."]
    assert (result.updated, result.superseded) == (1, 0)
    by_text = facts(piped)
    assert by_text["Ana lives in Berlin, Germany."]["status"] == "active"
    assert by_text["Ana has a cat named Luna."]["status"] == "superseded"
    assert by_text["Ana has a grey Persian cat named Luna."]["project"] == WEB.project
    ledger = piped.store.scroll(RecordFilter("ana", kinds=("llm_call",)), 10)
    assert {p.payload["purpose"]: p.payload.get("project") for p in ledger}["update"] == WEB.project


def period(request: ChatRequest) -> dict[str, Any]:
    """A summary that repeats the memories it was given."""
    lines = request.user.split("Memories of the period:")[1].splitlines()
    return {"summary": " ".join(line for line in lines if line.startswith("["))}


def test_summaries_are_stored_in_the_tier_of_what_they_summarize(piped: Memory, llm_server: FakeLLMServer) -> None:
    llm_server.script(extract, extract)
    add(piped, [("m1", WEB, "I always prefer tabs over spaces."), ("m2", WEB, "The web app's build fails on Node 18.")])
    add(piped, [("m3", CLI, "The command line tool needs a --json flag.")])
    piped.flush(WEB)
    piped.flush(CLI)
    llm_server.script(period, period, period)

    scheduled = piped.summarizer.run_scheduled("ana")

    assert scheduled is not None and len(scheduled.summaries) == 3  # the day in the global tier and in each project
    summaries = {
        p.payload.get("project"): str(p.payload["text"])
        for p in piped.store.scroll(RecordFilter("ana", kinds=("summary",)), 10)
    }
    assert "tabs" in summaries[None] and "Node" not in summaries[None] and "--json" not in summaries[None]
    assert "Node" in summaries[WEB.project] and "--json" not in summaries[WEB.project]
    assert "--json" in summaries[CLI.project] and "Node" not in summaries[CLI.project]
    assert {h.text for h in piped.search("summary", CLI, 10, SearchFilters(kinds=["summary"])).hits} == {
        summaries[None],
        summaries[CLI.project],
    }


# -- export and import ---------------------------------------------------------------------------


@pytest.fixture
def empty(tmp_path: Path, embedder: SentenceTransformerEmbedder) -> Iterator[Memory]:
    memory = open_memory(Settings(store=StoreSettings(data_dir=tmp_path / "restored")), embedder)
    yield memory
    memory.close()


def exported(memory: Memory, scope: Scope | None = None) -> str:
    out = io.StringIO()
    memory.export_records(out, scope)
    return out.getvalue()


def test_an_export_keeps_each_records_project_and_an_import_restores_it(
    memory: Memory, filled: dict[str, str], empty: Memory
) -> None:
    export = exported(memory)
    lines = [json.loads(line) for line in export.splitlines()[1:]]
    # Global records are exported as before projects, without the field; they import as global.
    assert sorted(str(line["payload"].get("project")) for line in lines) == sorted(
        [str(scope.project) for _, scope, _ in SAID]
    )

    empty.import_records(io.StringIO(export))

    restored = empty.search("which database does the app use", WEB, limit=10).hits
    assert {(h.id, h.tier, h.project) for h in restored} == {
        (h.id, h.tier, h.project) for h in memory.search("which database does the app use", WEB, limit=10).hits
    }
    assert cited(empty.list(CLI, limit=20).records) == {"g1", "g2", "c1", "c2"}


def test_a_project_export_holds_that_project_alone(memory: Memory, filled: dict[str, str], empty: Memory) -> None:
    export = exported(memory, WEB)
    header = json.loads(export.splitlines()[0])

    result = empty.import_records(io.StringIO(export))

    assert header["scope"] == {"user_id": "ana", "agent_id": None, "session_id": None, "project": WEB.project}
    assert (result.points, result.copied) == (2, 0)
    records = empty.list(ANA, limit=20).records
    assert {(r.id, r.project) for r in records} == {(filled["w1"], WEB.project), (filled["w2"], WEB.project)}
    assert "project" not in json.loads(exported(memory, ANA).splitlines()[0])["scope"]
    assert len(exported(memory, HOME).splitlines()) == 1 + 2  # the header and the global tier's records
