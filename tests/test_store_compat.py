"""A store written by the previous version of lightmem-mcp opens as it is and answers as it did.

fixtures/store-v2.tar.gz was written by commit 80e89a0 (schema 2, the current schema) through its
public API, and holds that version's answers on it (v2store/expected.json); fixtures/build_store_v2.py
says how. This version must read the stored payloads unchanged: no migration, no re-index, and the
same records, histories, stats, hits and recalled context. Float scores are compared to 1e-6 (the
query is embedded again at each call); everything else exactly, but for the fields added since
(`ADDED_FIELDS`), which must say that every record is in the user's global tier, has no metadata and
never expires, and that no daily budget is set and nothing expired; and for the fields that newly show
what was stored (`SHOWN_FIELDS`), such as the LLM call that wrote a fact.
"""

from __future__ import annotations

import json
import math
import re
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lightmem_mcp.config import CompressionSettings, LLMSettings, Settings, StoreSettings
from lightmem_mcp.memory import Memory
from lightmem_mcp.records import Scope

FIXTURES = Path(__file__).parent / "fixtures"
SCORE_TOLERANCE = 1e-6
# Result fields added since the fixture was written, with the value every record it holds must show:
# all of them were stored before projects, in the user's global tier, with no metadata and no expiry.
ADDED_FIELDS: dict[str, Any] = {
    "project": None,
    "tier": "global",
    "budget": None,
    "metadata": {},
    "expires_at": None,
    "expired_purged": 0,
    "expired_pending": 0,
}
# Result fields added since that show what the store already held: any value the stored payloads give.
SHOWN_FIELDS: dict[str, Callable[[Any], bool]] = {
    # The LLM call that wrote a fact or summary (the id the ledger and the history already named).
    "llm_call_id": lambda value: value is None or bool(re.fullmatch(r"[0-9a-f]{32}", str(value))),
}


def previous_version_store(tmp_path: Path) -> tuple[Settings, dict[str, Any]]:
    """The fixture store, extracted, with settings a user would have: no LLM, no compression model."""
    with tarfile.open(FIXTURES / "store-v2.tar.gz") as archive:
        archive.extractall(tmp_path, filter="data")
    folder = tmp_path / "v2store"
    settings = Settings(
        store=StoreSettings(data_dir=folder),
        compression=CompressionSettings(enabled=False),
        llm=LLMSettings(provider="none"),
    )
    return settings, json.loads((folder / "expected.json").read_text())


def differences(expected: Any, actual: Any, path: str = "") -> list[str]:
    """Where `actual` differs from `expected`: floats within SCORE_TOLERANCE, the rest exactly."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        found = [f"{path}.{k}: missing now" for k in expected.keys() - actual.keys()]
        found += [
            f"{path}.{k}: new field {actual[k]!r}"
            for k in actual.keys() - expected.keys()
            if (k not in ADDED_FIELDS or actual[k] != ADDED_FIELDS[k])
            and not (k in SHOWN_FIELDS and SHOWN_FIELDS[k](actual[k]))
        ]
        for key in expected.keys() & actual.keys():
            found += differences(expected[key], actual[key], f"{path}.{key}")
        return found
    if isinstance(expected, list) and isinstance(actual, list):
        if len(expected) != len(actual):
            return [f"{path}: {len(expected)} items before, {len(actual)} now: {expected!r} != {actual!r}"]
        return [
            d for i, (e, a) in enumerate(zip(expected, actual, strict=True)) for d in differences(e, a, f"{path}[{i}]")
        ]
    if isinstance(expected, float) and isinstance(actual, int | float) and not isinstance(actual, bool):
        return (
            []
            if math.isclose(expected, actual, rel_tol=0, abs_tol=SCORE_TOLERANCE)
            else [f"{path}: {expected!r} != {actual!r}"]
        )
    if type(expected) is not type(actual) or expected != actual:
        return [f"{path}: {expected!r} before, {actual!r} now"]
    return []


def answers_now(memory: Memory, expected: dict[str, Any]) -> dict[str, Any]:
    """The same calls the previous version answered, made with this version."""

    def dump(value: Any) -> Any:
        return value.model_dump(mode="json")

    now: dict[str, Any] = {"built_by": expected["built_by"], "scopes": [], "history": []}
    for old in expected["scopes"]:
        scope = Scope(**old["scope"])
        now["scopes"].append(
            {
                "scope": old["scope"],
                "list": dump(memory.list(scope, limit=100, include_superseded=True)),
                "get": {"ids": old["get"]["ids"], "result": dump(memory.get(old["get"]["ids"], scope))},
                "stats": dump(memory.stats(scope)),
                "queries": [
                    {
                        "query": q["query"],
                        "search": dump(memory.search(q["query"], scope)),
                        "search_context": dump(memory.search(q["query"], scope, context=1)),
                        "recall": dump(memory.recall(q["query"], scope)),
                    }
                    for q in old["queries"]
                ],
            }
        )
    for old in expected["history"]:
        result = dump(memory.history(old["id"], Scope(**old["scope"])))
        now["history"].append({"id": old["id"], "scope": old["scope"], "result": result})
    return now


def test_a_store_written_by_the_previous_version_answers_the_same(tmp_path: Path) -> None:
    settings, expected = previous_version_store(tmp_path)
    # The fixture covers every kind of record and a consolidated fact with its history.
    friends, solo = expected["scopes"]
    assert {(r["kind"], r["status"]) for r in friends["list"]["records"]} == {
        ("turn", "active"),
        ("fact", "active"),
        ("fact", "superseded"),
        ("summary", "active"),
    }
    assert [len(h["result"]["versions"]) for h in expected["history"]] == [2, 2]
    assert {row["purpose"]: row["calls"] for row in friends["stats"]["llm"]} == {
        "extraction": 1,
        "update": 1,
        "summary": 1,
    }
    # A user/assistant session: the assistant's turn is kept but not extracted.
    assert sorted(r["kind"] for r in solo["list"]["records"]) == ["fact", "turn", "turn"]
    assert (solo["stats"]["turns"]["extracted"], solo["stats"]["turns"]["skipped"]) == (1, 1)

    memory = Memory.open_idle(settings)
    try:
        assert memory.reindexed == 0  # read as it is: no migration, no re-index
        found = differences(expected, answers_now(memory, expected))
    finally:
        memory.close()
    assert not found, f"{len(found)} answers differ from the previous version's:\n" + "\n".join(found[:20])
    # Every fact the previous version extracted names the LLM call that wrote it, as the store held it.
    listed = answers_now_facts(settings, Scope(**friends["scope"]))
    assert listed and all(call for call in listed)


def answers_now_facts(settings: Settings, scope: Scope) -> list[str | None]:
    """The `llm_call_id` of every fact of `scope`, superseded ones too, as this version lists them."""
    memory = Memory.open_idle(settings)
    try:
        found = memory.list(scope, kinds=["fact"], limit=100, include_superseded=True)
        return [r.llm_call_id for r in found.records]
    finally:
        memory.close()
