"""Export and import: a round trip restores the same points and the same search results."""

from __future__ import annotations

import io
import json
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lightmem_mcp import transfer
from lightmem_mcp.api import Message
from lightmem_mcp.config import ConsolidationSettings, LimitSettings, PipelineSettings, Settings, StoreSettings
from lightmem_mcp.embedder import SentenceTransformerEmbedder
from lightmem_mcp.errors import InvalidInput
from lightmem_mcp.memory import Memory
from lightmem_mcp.records import RecordFilter, Scope, StoredPoint, record_id
from lightmem_mcp.store import VectorStore
from tests.conftest import open_memory
from tests.openai_server import FakeLLMServer, facts_per_message
from tests.test_consolidate import MAYA, MERGED, SPRING, SUMMER, extract, judge, said

CLI = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "lightmem-mcp"
ALICE = Scope("alice", session_id="s1")
BOB = Scope("bob")
QUERIES = [
    (ALICE, "what pet do I have"),
    (ALICE, "where do I work"),
    (ALICE, "ZX-4471"),
    (Scope("alice"), "trip in July"),
    (BOB, "dog at the beach"),
]

Snapshot = dict[str, tuple[dict[str, Any], list[float] | None]]


def snapshot(store: VectorStore) -> Snapshot:
    """Every point of every user: payload and dense vector."""
    return {p.id: (dict(p.payload), p.dense) for p in store.scan(with_vectors=True)}


def results(memory: Memory) -> list[list[tuple[str, float]]]:
    """(id, score) of each query's hits, hybrid and dense, in rank order."""
    return [
        [(hit.id, hit.score) for hit in memory.search(query, scope, limit=10, mode=mode).hits]
        for scope, query in QUERIES
        for mode in ("hybrid", "dense")
    ]


def assert_same_results(got: list[list[tuple[str, float]]], want: list[list[tuple[str, float]]]) -> None:
    assert [[i for i, _ in hits] for hits in got] == [[i for i, _ in hits] for hits in want]
    for got_hits, want_hits in zip(got, want, strict=True):
        assert [s for _, s in got_hits] == pytest.approx([s for _, s in want_hits], abs=1e-5)


def fill(memory: Memory, llm_server: FakeLLMServer) -> None:
    """Two users' turns, facts extracted by the scripted LLM (with their ledger), a superseded fact with
    its history, and a vector-less progress point."""
    memory.add(
        [
            Message(role="user", content="I adopted a grey cat named Luna last week.", id="m1"),
            Message(role="assistant", content="Congratulations! How is Luna settling in?", id="m2"),
            Message(role="user", content="I work night shifts as a nurse at Boston General.", id="m3"),
            Message(role="user", content="My order number for the new sofa is ZX-4471.", id="m4"),
        ],
        ALICE,
    )
    memory.add(
        [Message(role="user", content="We are planning a hiking trip to the Dolomites in July.")], Scope("alice")
    )
    memory.add([Message(role="user", content="My dog Rex loves the beach.", id="r1")], BOB)
    llm_server.script(facts_per_message("Alice said"), facts_per_message("Bob said"))
    memory.flush(ALICE)
    memory.flush(BOB)
    (old_fact, new_fact) = sorted(p.id for p in memory.store.scroll(RecordFilter("alice", kinds=("fact",)), 2))
    memory.store.set_payload(
        RecordFilter("alice", ids=(old_fact,)),
        {
            "status": "superseded",
            "superseded_by": new_fact,
            "history": [{"action": "update", "old_text": "before", "new_text": "after", "sources": [new_fact]}],
        },
    )
    progress: dict[str, object] = {
        "user_id": "alice",
        "agent_id": None,
        "session_id": None,
        "kind": "progress",
        "event_ts": 0.0,
    }
    memory.store.upsert([StoredPoint(record_id(Scope("alice"), "progress", "consolidation"), None, None, progress)])


def extracting(settings: Settings, llm_server: FakeLLMServer) -> Settings:
    return settings.model_copy(
        update={"llm": llm_server.settings(), "pipeline": PipelineSettings(buffer_tokens=100_000)}
    )


@pytest.fixture
def filled(settings: Settings, embedder: SentenceTransformerEmbedder, llm_server: FakeLLMServer) -> Iterator[Memory]:
    memory = open_memory(extracting(settings, llm_server), embedder)
    fill(memory, llm_server)
    yield memory
    memory.close()


@pytest.fixture(scope="module")
def sample_export(tmp_path_factory: pytest.TempPathFactory, embedder: SentenceTransformerEmbedder) -> str:
    """An export with vectors of a filled store, made once for the tests that only read it."""
    server = FakeLLMServer().start()
    settings = Settings(store=StoreSettings(data_dir=tmp_path_factory.mktemp("sample")))
    memory = open_memory(extracting(settings, server), embedder)
    try:
        fill(memory, server)
        return exported(memory, vectors=True)
    finally:
        memory.close()
        server.stop()


@pytest.fixture
def empty(tmp_path: Path, embedder: SentenceTransformerEmbedder) -> Iterator[Memory]:
    memory = open_memory(Settings(store=StoreSettings(data_dir=tmp_path / "restored")), embedder)
    yield memory
    memory.close()


def exported(memory: Memory, scope: Scope | None = None, vectors: bool = False) -> str:
    out = io.StringIO()
    memory.export_records(out, scope, vectors=vectors)
    return out.getvalue()


@pytest.mark.parametrize("vectors", [False, True], ids=["re-embedded", "with-vectors"])
def test_a_round_trip_restores_every_point_and_the_same_search_results(
    filled: Memory, empty: Memory, vectors: bool
) -> None:
    before = snapshot(filled.store)

    result = empty.import_records(io.StringIO(exported(filled, vectors=vectors)))

    after = snapshot(empty.store)
    assert {i: payload for i, (payload, _) in after.items()} == {i: payload for i, (payload, _) in before.items()}
    assert {i for i, (_, dense) in after.items() if dense is None} == {i for i, (_, d) in before.items() if d is None}
    assert {p["kind"] for p, _ in after.values()} == {"turn", "fact", "llm_call", "progress"}
    embedded = sum(1 for _, dense in before.values() if dense is not None)
    assert (result.points, result.embedded, result.vectors_kept) == (
        len(before),
        0 if vectors else embedded,
        embedded if vectors else 0,
    )
    for point_id, (_, dense) in before.items():
        if dense is not None:
            restored = after[point_id][1]
            assert restored is not None
            if vectors:
                assert restored == dense  # written as exported, bit for bit
            else:
                assert restored == pytest.approx(dense, abs=1e-5)
    assert_same_results(results(empty), results(filled))


def test_importing_twice_changes_nothing(filled: Memory, empty: Memory) -> None:
    export = exported(filled, vectors=True)
    empty.import_records(io.StringIO(export))
    once = snapshot(empty.store)

    empty.import_records(io.StringIO(export))

    assert snapshot(empty.store) == once
    assert_same_results(results(empty), results(filled))


def test_a_scope_export_holds_that_scope_only(filled: Memory, empty: Memory) -> None:
    export = exported(filled, Scope("alice"))
    header = json.loads(export.splitlines()[0])

    empty.import_records(io.StringIO(export))

    assert header["scope"] == {"user_id": "alice", "agent_id": None, "session_id": None}
    users = {payload["user_id"] for payload, _ in snapshot(empty.store).values()}
    assert users == {"alice"}
    assert empty.store.count(RecordFilter("alice", kinds=("llm_call",))) == 1
    assert len(snapshot(empty.store)) == len(list(filled.store.scan(RecordFilter("alice"))))


def garbage(export: str, embedder_id: str | None = None) -> str:
    """The export with every dense vector replaced by the same unit vector, and optionally another embedder."""
    lines = [json.loads(line) for line in export.splitlines()]
    if embedder_id is not None:
        lines[0]["embedder"] = embedder_id
    for line in lines[1:]:
        if "dense" in line:
            line["dense"] = [1.0] + [0.0] * (len(line["dense"]) - 1)
    return "\n".join(json.dumps(line) for line in lines) + "\n"


def test_vectors_from_another_embedder_are_recomputed(filled: Memory, empty: Memory) -> None:
    export = exported(filled, vectors=True)
    embedded = sum(1 for line in export.splitlines()[1:] if json.loads(line)["embedded"])

    result = empty.import_records(io.StringIO(garbage(export, embedder_id="someone/other-model")))

    assert (result.embedded, result.vectors_kept) == (embedded, 0)
    before, after = snapshot(filled.store), snapshot(empty.store)
    for point_id, (_, dense) in before.items():
        if dense is not None:
            assert after[point_id][1] == pytest.approx(dense, abs=1e-5)


def test_vectors_from_the_same_embedder_are_kept_as_exported(filled: Memory, empty: Memory) -> None:
    result = empty.import_records(io.StringIO(garbage(exported(filled, vectors=True))))

    assert result.embedded == 0
    restored = [dense for _, dense in snapshot(empty.store).values() if dense is not None]
    assert restored and all(dense[:2] == [1.0, 0.0] for dense in restored)


def mutate_last(change: Callable[[dict[str, Any]], object]) -> Callable[[list[str]], list[str]]:
    def apply(lines: list[str]) -> list[str]:
        last = json.loads(lines[-1])
        change(last)
        return [*lines[:-1], json.dumps(last)]

    return apply


def same_turn_new_id(lines: list[str]) -> str:
    """A turn line under another id: it would be written as the same record as the original."""
    turn = next(json.loads(line) for line in lines[1:] if json.loads(line)["payload"]["kind"] == "turn")
    return json.dumps(turn | {"id": str(uuid.uuid4())})


def nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


MALFORMED: list[tuple[str, Callable[[list[str]], list[str]], str]] = [
    ("not json", lambda lines: [*lines[:-1], '{"id": "broken'], "not JSON"),
    ("a list", lambda lines: [*lines[:-1], "[1, 2]"], "not an object"),
    ("no user", mutate_last(lambda p: p["payload"].pop("user_id")), "payload.user_id"),
    ("no text", mutate_last(lambda p: p.update(embedded=True) or p["payload"].pop("text", None)), "payload.text"),
    ("bad id", mutate_last(lambda p: p.update(id="not-a-uuid")), ": id"),
    ("unknown field", mutate_last(lambda p: p.update(colour="red")), ": colour"),
    (
        "short vector",
        mutate_last(lambda p: p.update(embedded=True, dense=[0.5, 0.5]) or p["payload"].setdefault("text", "words")),
        ": dense",
    ),
    ("repeated id", lambda lines: [*lines, lines[1]], "repeats line 2"),
    ("two lines, one record", lambda lines: [*lines, same_turn_new_id(lines)], "keep one of the two lines"),
    ("lone surrogate", mutate_last(lambda p: p["payload"].update(note="sure\ud800")), "payload.note"),
    ("raw surrogate", lambda lines: [*lines[:-1], lines[-1].replace('"payload"', '"pay\ud800load"')], "not UTF-8"),
    ("oversize text", mutate_last(lambda p: p["payload"].update(text="x" * 32_001)), "payload.text"),
    ("oversize line", mutate_last(lambda p: p["payload"].update(notes=["ab"] * 500_000)), "longer than"),
    ("deep nesting", mutate_last(lambda p: p["payload"].update(deep=nested(40))), "nested more than"),
    ("NaN", mutate_last(lambda p: p["payload"].update(event_ts=float("nan"))), "NaN"),
    ("control character", mutate_last(lambda p: p["payload"].update(user_id="al\x00ice")), "payload.user_id"),
    ("unknown kind", mutate_last(lambda p: p["payload"].update(kind="mystery")), "payload.kind"),
]


@pytest.mark.parametrize(("change", "field"), [(c, f) for _, c, f in MALFORMED], ids=[n for n, _, _ in MALFORMED])
def test_a_malformed_line_is_refused_with_its_number_and_nothing_is_written(
    sample_export: str,
    empty: Memory,
    monkeypatch: pytest.MonkeyPatch,
    change: Callable[[list[str]], list[str]],
    field: str,
) -> None:
    monkeypatch.setattr(transfer, "_BATCH", 2)  # many batches: the valid ones must not be written either
    lines = change(sample_export.splitlines())
    bad_line = len(lines)

    with pytest.raises(InvalidInput) as refused:
        empty.import_records(io.StringIO("\n".join(lines) + "\n"))

    message = str(refused.value)
    assert f"line {bad_line}" in message
    assert field in message
    assert list(empty.store.scan()) == []


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("", "line 1"),
        ('{"id": "00000000-0000-0000-0000-000000000000", "embedded": false, "payload": {}}\n', "line 1: format"),
        (
            '{"format": "lightmem-mcp-export", "version": 99, "schema_version": 1, "embedder": "e", "dimension": 1, '
            '"lexical": "l", "vectors": false, "scope": null, "exported_at": "now"}\n',
            "upgrade lightmem-mcp",
        ),
    ],
    ids=["empty", "no header", "newer version"],
)
def test_a_file_without_a_usable_header_is_refused(empty: Memory, text: str, field: str) -> None:
    with pytest.raises(InvalidInput, match=field):
        empty.import_records(io.StringIO(text))
    assert list(empty.store.scan()) == []


def test_the_command_line_exports_to_stdout_and_imports_from_stdin(
    filled: Memory, tmp_path: Path, embedder: SentenceTransformerEmbedder
) -> None:
    source_dir = tmp_path / "data"  # the `settings` fixture's data directory, where `filled` lives
    want = results(filled)
    filled.close()  # one process per data directory
    export_file = tmp_path / "all.jsonl"

    with open(export_file, "w", encoding="utf-8") as out:
        exported_run = cli(["export", "--vectors"], source_dir, stdout=out)
    with open(export_file, encoding="utf-8") as source:
        imported_run = cli(["import", "-"], tmp_path / "copy", stdin=source)
    broken = tmp_path / "broken.jsonl"
    broken.write_text(export_file.read_text(encoding="utf-8").splitlines()[0] + "\n{oops\n", encoding="utf-8")
    refused_run = cli(["import", str(broken)], tmp_path / "copy")
    unscoped_run = cli(["export", "--session", "s1"], source_dir)

    assert exported_run.returncode == 0, exported_run.stderr
    assert json.loads(export_file.read_text(encoding="utf-8").splitlines()[0])["format"] == "lightmem-mcp-export"
    assert imported_run.returncode == 0, imported_run.stderr
    assert "0 embedded here" in imported_run.stderr
    assert (refused_run.returncode, unscoped_run.returncode) == (1, 2)
    assert "nothing written" in refused_run.stderr
    assert "line 2" in refused_run.stderr
    assert "--user" in unscoped_run.stderr
    copy = open_memory(Settings(store=StoreSettings(data_dir=tmp_path / "copy")), embedder)
    try:
        got = results(copy)
    finally:
        copy.close()
    assert_same_results(got, want)


def cli(args: list[str], data_dir: Path, stdin: Any = None, stdout: Any = None) -> subprocess.CompletedProcess[str]:
    """Run `.venv/bin/lightmem-mcp` on `data_dir`; stdout is captured unless a file is given."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("LIGHTMEM_")}
    env.update(
        LIGHTMEM_DATA_DIR=str(data_dir),
        LIGHTMEM_EMBEDDING_DEVICE="cpu",
        LIGHTMEM_LOG_LEVEL="WARNING",
        HF_HUB_OFFLINE="1",
    )
    return subprocess.run(
        [str(CLI), *args],
        env=env,
        stdin=stdin,
        stdout=stdout or subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        timeout=180,
        check=False,
    )


class Pipe(io.StringIO):
    """A stream that cannot seek, like stdin fed by a pipe."""

    def seekable(self) -> bool:
        return False


def test_an_export_read_from_a_pipe_is_validated_then_written(sample_export: str, empty: Memory) -> None:
    result = empty.import_records(Pipe(sample_export))

    assert result.points == len(sample_export.splitlines()) - 1
    assert len(list(empty.store.scan())) == result.points
    with pytest.raises(InvalidInput, match="line 2"):
        empty.import_records(Pipe(sample_export.splitlines()[0] + "\n{oops\n"))


def long_file(sample_export: str, count: int, broken: int) -> str:
    """The sample's header and `count` turns made from its first turn; line `broken` holds a lone surrogate."""
    header, *points = sample_export.splitlines()
    template = next(json.loads(line) for line in points if json.loads(line)["payload"]["kind"] == "turn")
    p = template["payload"]
    scope = Scope(p["user_id"], p["agent_id"], p["session_id"])
    lines = [header]
    for n in range(count):
        words = f"Note number {n}"
        text = words if len(lines) + 1 != broken else "Note \ud800 number"
        payload = p | {"source_ids": [f"note-{n}"], "text": text, "original_text": words}
        lines.append(json.dumps({"id": record_id(scope, "turn", f"note-{n}"), "embedded": True, "payload": payload}))
    return "\n".join(lines) + "\n"


def test_a_bad_line_near_the_end_of_a_long_file_writes_nothing(sample_export: str, empty: Memory) -> None:
    export = long_file(sample_export, 299, broken=290)

    with pytest.raises(InvalidInput) as refused:
        empty.import_records(io.StringIO(export))

    assert "line 290: payload.text" in str(refused.value)
    assert "surrogate" in str(refused.value)
    assert list(empty.store.scan()) == []
    assert empty.import_records(io.StringIO(long_file(sample_export, 299, broken=0))).points == 299


def test_the_text_limit_of_add_memory_holds_for_import(
    sample_export: str, tmp_path: Path, embedder: SentenceTransformerEmbedder
) -> None:
    settings = Settings(store=StoreSettings(data_dir=tmp_path / "small"), limits=LimitSettings(max_message_chars=12))
    memory = open_memory(settings, embedder)
    try:
        with pytest.raises(InvalidInput, match=r"line 2: payload\.text: 13 characters; at most 12 \(LIGHTMEM_MAX_"):
            memory.import_records(io.StringIO(long_file(sample_export, 3, broken=0)))  # "Note number 0"
        assert list(memory.store.scan()) == []
    finally:
        memory.close()


def as_user(export: str, user: str) -> str:
    """The export with every point's user_id edited to `user`, as someone editing the file would."""
    header, *points = export.splitlines()
    edited = [json.loads(line) for line in points]
    for line in edited:
        line["payload"]["user_id"] = user
    return "\n".join([header, *(json.dumps(line) for line in edited)]) + "\n"


def scope_of(payload: dict[str, Any]) -> Scope:
    return Scope(payload["user_id"], payload.get("agent_id"), payload.get("session_id"))


def references(payload: dict[str, Any]) -> list[str]:
    """The record ids a payload points at."""
    found = [payload[key] for key in ("superseded_by",) if payload.get(key)]
    for key in ("supersedes", "batch_turn_ids", "covered_ids"):
        found += payload.get(key) or []
    for entry in payload.get("history") or []:
        found += [entry[key] for key in ("target_id", "new_id") if key in entry] + list(entry.get("by_ids") or [])
    return found


def test_an_export_edited_to_another_user_is_copied_there_and_the_original_kept(filled: Memory) -> None:
    export = as_user(exported(filled, Scope("alice"), vectors=True), "carol")
    before = snapshot(filled.store)
    alice = {i: point for i, point in before.items() if point[0]["user_id"] == "alice"}

    result = filled.import_records(io.StringIO(export))
    once = snapshot(filled.store)
    filled.import_records(io.StringIO(export))
    twice = snapshot(filled.store)
    m1_again = Message(role="user", content="I adopted a grey cat named Luna last week.", id="m1")
    filled.add([m1_again], CAROL)  # the message id, sent again in its new scope

    after = snapshot(filled.store)
    assert {i: point for i, point in after.items() if i in before} == before  # alice and bob as they were
    assert twice == once  # importing again changes nothing
    assert set(after) == set(once)  # nor does adding the same message again
    carol = {i: payload for i, (payload, _) in after.items() if payload["user_id"] == "carol"}
    assert len(carol) == len(alice) == result.copied == result.points
    assert not set(carol) & set(alice)
    for record, payload in carol.items():
        if payload["kind"] == "turn":  # the id add_memory gives that message in that scope
            assert record == record_id(scope_of(payload), "turn", payload["source_ids"][0])
        assert set(references(payload)) <= set(carol)
    assert sorted(filled.store.count(RecordFilter(user, kinds=("llm_call",))) for user in ("alice", "carol")) == [1, 1]
    assert [h.text for h in filled.search("what pet do I have", Scope("carol"), 1).hits] == [
        "I adopted a grey cat named Luna last week."
    ]


def test_an_edited_export_restored_elsewhere_takes_the_ids_of_its_new_scope(filled: Memory, empty: Memory) -> None:
    export = as_user(exported(filled, Scope("alice")), "carol")

    empty.import_records(io.StringIO(export))
    turns = empty.store.count(RecordFilter("carol", kinds=("turn",)))
    again = Message(role="user", content="My order number for the new sofa is ZX-4471.", id="m4")
    empty.add([again], CAROL)
    after_carol = empty.store.count(RecordFilter("carol", kinds=("turn",)))
    empty.add([again], ALICE)  # alice's scope is another: her m4 is a record of its own

    assert after_carol == turns  # m4 was already there
    assert empty.store.count(RecordFilter("carol", kinds=("turn",))) == turns
    assert empty.store.count(RecordFilter("alice", kinds=("turn",))) == 1


CAROL = Scope("carol", session_id="s1")


@pytest.fixture
def consolidated(
    settings: Settings, llm_server: FakeLLMServer, embedder: SentenceTransformerEmbedder
) -> Iterator[Memory]:
    """Maya's facts after a consolidation (a superseded fact, an updated one and its new version) and her
    session summaries: every kind of link between records."""
    configured = settings.model_copy(
        update={
            "llm": llm_server.settings(max_retries=0),
            "pipeline": PipelineSettings(buffer_tokens=10_000),
            "consolidation": ConsolidationSettings(score_threshold=0.7),
        }
    )
    memory = open_memory(configured, embedder)
    llm_server.script(extract, extract)
    for rows, session in ((SPRING, "spring"), (SUMMER, "summer")):
        memory.add(said(rows, session), Scope("maya", session_id=session))
        memory.flush(Scope("maya", session_id=session))
    llm_server.script(judge)
    assert memory.consolidate(MAYA).updated == 1
    llm_server.script({"summary": "Maya lived in Berlin."}, {"summary": "Maya moved to Munich."})
    assert len(memory.summarize(MAYA, window="session").summaries) == 2
    yield memory
    memory.close()


def test_consolidated_facts_and_summaries_keep_their_ids_and_links_when_copied(consolidated: Memory) -> None:
    export = exported(consolidated, MAYA, vectors=True)
    maya = snapshot(consolidated.store)

    consolidated.import_records(io.StringIO(export))  # as exported: every id belongs to its scope
    unchanged = snapshot(consolidated.store)
    consolidated.import_records(io.StringIO(as_user(export, "nora")))

    assert unchanged == maya
    assert {i: point for i, point in snapshot(consolidated.store).items() if i in maya} == maya
    nora: dict[str, dict[str, Any]] = {p.id: dict(p.payload) for p in consolidated.store.scan(RecordFilter("nora"))}
    assert len(nora) == len(maya) and not set(nora) & set(maya)
    assert {p["kind"] for p in nora.values()} == {"turn", "fact", "summary", "llm_call"}
    for payload in nora.values():
        assert set(references(payload)) <= set(nora)
    [version] = [i for i, p in nora.items() if p.get("text") == MERGED]
    [entry] = [e for e in nora[version]["history"] if e["new_id"] == version]
    # The version's id is derived from the ids of nora's copies, as consolidating nora's facts would.
    parts = ["update", entry["target_id"], *sorted(entry["by_ids"])]
    assert version == record_id(scope_of(nora[version]), "fact", "\x1f".join(parts))
    assert nora[entry["target_id"]]["superseded_by"] == version
    history = consolidated.history(version, Scope("nora"))
    assert [v.id for v in history.versions] == [entry["target_id"], version]


def test_the_command_line_replaces_an_output_file_whole_and_refuses_other_targets(
    filled: Memory, tmp_path: Path
) -> None:
    source_dir = tmp_path / "data"
    filled.close()
    victim = tmp_path / "victim.txt"
    victim.write_text("not an export\n", encoding="utf-8")
    (tmp_path / "link.jsonl").symlink_to(victim)
    os.mkfifo(tmp_path / "fifo.jsonl")
    (tmp_path / "folder").mkdir()
    target = tmp_path / "out" / "all.jsonl"
    target.parent.mkdir()
    target.write_text("an older export\n", encoding="utf-8")

    refused = {
        name: cli(["export", "--output", str(tmp_path / name)], source_dir)
        for name in ("link.jsonl", "fifo.jsonl", "folder")
    }
    unnamed = cli(["export", "--output", ""], source_dir)
    written = cli(["export", "--output", str(target)], source_dir)

    for name, kind in (("link.jsonl", "a symbolic link"), ("fifo.jsonl", "a FIFO"), ("folder", "a directory")):
        assert refused[name].returncode == 2, refused[name].stderr
        assert f"--output: {tmp_path / name} is {kind}, not a regular file" in refused[name].stderr
    assert (tmp_path / "link.jsonl").is_symlink() and victim.read_text(encoding="utf-8") == "not an export\n"
    assert (unnamed.returncode, "--output: empty" in unnamed.stderr) == (2, True), unnamed.stderr
    assert written.returncode == 0, written.stderr
    assert os.listdir(target.parent) == ["all.jsonl"]  # the temporary file was renamed over it
    assert target.stat().st_mode & 0o777 == 0o600
    lines = target.read_text(encoding="utf-8").splitlines()
    assert json.loads(lines[0])["format"] == "lightmem-mcp-export" and len(lines) > 5


def test_the_command_line_names_the_line_of_bytes_that_are_not_utf8(
    sample_export: str, tmp_path: Path, embedder: SentenceTransformerEmbedder
) -> None:
    lines = sample_export.encode("utf-8").splitlines()
    lines[3] = lines[3].replace(b'"payload":{', b'"payload":{"note":"caf\xe9",', 1)  # Latin-1, not UTF-8
    broken = tmp_path / "latin1.jsonl"
    broken.write_bytes(b"\n".join(lines) + b"\n")

    run = cli(["import", str(broken)], tmp_path / "copy")

    assert run.returncode == 1
    assert "Traceback" not in run.stderr
    assert "refused, nothing written: line 4: not UTF-8 text: byte 0xE9 at column" in run.stderr
    copy = open_memory(Settings(store=StoreSettings(data_dir=tmp_path / "copy")), embedder)
    try:
        assert list(copy.store.scan()) == []
    finally:
        copy.close()
