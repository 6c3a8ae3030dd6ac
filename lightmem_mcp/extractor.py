"""Long-term memory extraction: one LLM call turns a batch of topic segments into sourced facts."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field, field_validator

from lightmem_mcp.llm import LLMClient
from lightmem_mcp.records import Lineage, LLMCall, Scope, Turn
from lightmem_mcp.timestamps import from_epoch

log = logging.getLogger(__name__)

EXTRACTION_PURPOSE = "extraction"

EXTRACTION_PROMPT = """\
You turn conversations into long-term memories. The messages below are grouped by topic and \
numbered; each carries the time it was written and who wrote it.

Write down every fact worth remembering about the people in the conversation: who they are, \
what they own, do, like, plan, decided, asked for or experienced, with the names, numbers, places \
and dates they mention.

Each fact must be:
- exhaustive: one fact per distinct piece of information; leave out greetings and small talk;
- standalone: one complete third-person sentence that makes sense with no other context; name \
the person (the speaker's name when given, otherwise "The user" or "The assistant");
- anchored in time: replace relative dates ("yesterday", "next Friday", "last year") by the \
absolute date computed from the time of the message, e.g. "On 2023-05-19 the user ...";
- sourced: "sources" lists the numbers of the messages the fact comes from;
- faithful: only what the messages say, no guesses.

Answer with JSON only, in this shape:
{"facts": [{"fact": "The user adopted a cat named Luna on 2023-05-13.", "sources": [1]}]}
If nothing is worth remembering, answer {"facts": []}."""

# Appended for a conversation in a project: the facts about the person go to the global tier, which
# every project reads; the rest stay in the project. Without a project everything is global, so the
# question is not asked (no tokens spent on it).
ABOUT_PROMPT = """
Add "about": "user" to each lasting fact about the person rather than the work at hand \
(preferences, identity, habits, relationships: "The user prefers tabs over spaces."), and \
"about": "context" to every other fact."""


def extraction_prompt(scope: Scope) -> str:
    """The system prompt of an extraction call for the scope."""
    return EXTRACTION_PROMPT + ABOUT_PROMPT if scope.project else EXTRACTION_PROMPT


# What a fact is about: the person (stored in the user's global tier, whatever project the
# conversation is in) or the work at hand (stored in the conversation's project).
About = Literal["user", "context"]


class ExtractedFact(BaseModel):
    """One fact as the LLM returns it."""

    fact: str = Field(min_length=1)
    sources: list[int] = Field(min_length=1)
    about: About = "context"

    @field_validator("about", mode="before")
    @classmethod
    def _about(cls, value: object) -> About:
        # Anything but a clear "user" keeps the fact in the conversation's own tier.
        return "user" if isinstance(value, str) and value.strip().lower() == "user" else "context"


class ExtractionAnswer(BaseModel):
    """The whole JSON answer."""

    facts: list[ExtractedFact]


# A turn made up outside the store (a benchmark's) hands down no metadata and never expires.
_NO_LINEAGE = Lineage((0.0, 0.0, 0, ""))


@dataclass(frozen=True)
class BufferedTurn:
    """A pending turn as the extractor sees it."""

    record_id: str
    message_id: str
    role: str
    speaker: str | None
    text: str
    event_time: datetime
    topic_id: str
    # What the turn hands down to the facts extracted from it (the caller's metadata, its expiry).
    lineage: Lineage = _NO_LINEAGE

    @classmethod
    def of(cls, turn: Turn, topic_id: str = "", said: bool = False) -> BufferedTurn:
        """A stored turn as sent to extraction: its compressed words (see `Turn.for_extraction`), or
        with `said` its words as the person wrote them."""
        return cls(
            record_id=turn.id,
            message_id=turn.message_id,
            role=turn.role or "user",
            speaker=turn.speaker,
            text=turn.said if said else turn.for_extraction,
            event_time=from_epoch(turn.event_ts),
            topic_id=topic_id,
            lineage=turn.lineage,
        )


@dataclass(frozen=True)
class DraftFact:
    """A fact tied to the turns it comes from, before it is embedded and stored."""

    text: str
    sources: tuple[BufferedTurn, ...]
    about: About = "context"


class FactExtractor:
    """Builds the prompt, makes the one call, and maps message numbers back to turns."""

    def __init__(self, llm: LLMClient) -> None:
        self._llm = llm

    def extract(self, scope: Scope, segments: Sequence[Sequence[BufferedTurn]]) -> tuple[list[DraftFact], LLMCall]:
        """Facts from a batch of segments of the scope, in one LLM call; raises the client's error on failure."""
        numbered = [turn for segment in segments for turn in segment]
        result = self._llm.complete_json(
            EXTRACTION_PURPOSE,
            extraction_prompt(scope),
            render_batch(segments),
            ExtractionAnswer,
            scope=scope,
            turns=len(numbered),
        )
        drafts = []
        for item in result.value.facts:
            sources = tuple(dict.fromkeys(numbered[n - 1] for n in item.sources if 1 <= n <= len(numbered)))
            text = " ".join(item.fact.split())
            if not sources or not text:
                log.warning("dropped a fact citing no message of the batch: sources %s", item.sources)
                continue
            drafts.append(DraftFact(text, sources, item.about))
        return drafts, result.call


def render_batch(segments: Sequence[Sequence[BufferedTurn]]) -> str:
    """The user prompt: numbered messages under one heading per topic."""
    lines = []
    number = 0
    for index, segment in enumerate(segments, start=1):
        lines.append(f"Topic {index}:")
        for turn in segment:
            number += 1
            who = turn.role if not turn.speaker else f"{turn.role} ({turn.speaker})"
            when = turn.event_time.strftime("%Y-%m-%d (%a) %H:%M")
            lines.append(f"[{number}] {when} | {who}: {turn.text}")
        lines.append("")
    lines.append("Extract the facts as JSON.")
    return "\n".join(lines)
