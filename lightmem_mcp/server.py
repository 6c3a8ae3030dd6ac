"""The MCP interface: thin tools over the `Memory` service, which loads in the background."""

# No `from __future__ import annotations`: tool signatures are read at registration, and
# their Field descriptions use configured limits.
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated, Any, TypeVar

import anyio
from mcp.server.auth.provider import TokenVerifier
from mcp.server.auth.settings import AuthSettings
from mcp.server.elicitation import AcceptedElicitation, ElicitationResult
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.resolve import Elicit, Resolve
from mcp.server.mcpserver.utilities.func_metadata import FuncMetadata
from mcp.types import CallToolResult, ListRootsResult, TextContent, ToolAnnotations
from mcp.types import Resource as MCPResource
from mcp_types.version import is_version_at_least
from pydantic import BaseModel, Field, ValidationError
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import InitErrorDetails, PydanticCustomError, core_schema

from lightmem_mcp import __version__
from lightmem_mcp.api import (
    AddResult,
    CompressResult,
    ConsolidateResult,
    DeleteResult,
    FlushResult,
    ForgetResult,
    GetResult,
    HistoryResult,
    ListResult,
    MemoryRecord,
    Message,
    MetadataInput,
    Progress,
    RecallResult,
    SearchFilters,
    SearchResult,
    StatsResult,
    Stop,
    SummarizeResult,
    Window,
)
from lightmem_mcp.calls import ALL_PROJECTS, Access, Calls, MemoryService
from lightmem_mcp.calls import MemoryProvider as MemoryProvider
from lightmem_mcp.calls import SessionProjects as SessionProjects
from lightmem_mcp.completions import register_completions
from lightmem_mcp.compressor import MAX_FORCE_TOKENS
from lightmem_mcp.config import Settings
from lightmem_mcp.errors import LightMemError
from lightmem_mcp.memory import MAX_CONTEXT, Memory
from lightmem_mcp.prompts import register_prompts
from lightmem_mcp.recall import (
    DEFAULT_RECALL_CONTEXT,
    DEFAULT_RECALL_TOKENS,
    MAX_RECALL_TOKENS,
    MIN_RECALL_TOKENS,
)
from lightmem_mcp.records import GLOBAL as GLOBAL_PROJECT
from lightmem_mcp.records import (
    MAX_ID_CHARS,
    MAX_METADATA_BYTES,
    MAX_METADATA_KEYS,
    MAX_METADATA_VALUE_CHARS,
    MAX_TTL_S,
    MIN_TTL_S,
    Kind,
    Scope,
)
from lightmem_mcp.resources import ICON, listed_resources, register_resources, resource_links, shortened
from lightmem_mcp.timestamps import MAX_TIME_CHARS

log = logging.getLogger(__name__)

T = TypeVar("T")

INSTRUCTIONS = """\
Long-term memory across conversations. Call add_memory with the messages of the conversation
as it goes (both user and assistant turns, with their timestamps when known); call flush_memory
when a conversation ends. Before answering a question that may depend on earlier conversations,
call recall (the relevant memories with the turns around them, packed for your prompt within a
token budget) or search_memory. Results are stored messages (kind "turn") and facts extracted
from them (kind "fact"); source_ids name the messages each one comes from."""

# Size limits of the free-text arguments that have no configured one.
MAX_TOPIC_CHARS = 500
MAX_TOKEN_CHARS = 100
# A project argument may be a folder path.
MAX_PROJECT_CHARS = 4096
# A cursor lists the ids of records tied at a page's boundary time: room for about 1,900 of them.
MAX_CURSOR_CHARS = 100_000

UserId = Annotated[
    str,
    Field(
        max_length=MAX_ID_CHARS,
        description=f"Whose memory, at most {MAX_ID_CHARS} characters. Memories never cross users.",
    ),
]
AgentId = Annotated[
    str | None,
    Field(
        max_length=MAX_ID_CHARS,
        description=f"Optional: narrow to one agent's memories (an id of at most {MAX_ID_CHARS} characters).",
    ),
]
SessionId = Annotated[
    str | None,
    Field(
        max_length=MAX_ID_CHARS,
        description=f"Optional: narrow to one conversation session (an id of at most {MAX_ID_CHARS} characters).",
    ),
]
RecordId = Annotated[str, Field(max_length=MAX_ID_CHARS)]
ProjectArg = Annotated[
    str | None,
    Field(
        max_length=MAX_PROJECT_CHARS,
        description="Optional: the project tier. Default: this session's project (from your client's roots or "
        "working directory), read together with the user's global memories. A project id (as `project` in "
        'results) or an absolute folder path picks another project; "global" reads and writes only the '
        'user\'s global tier (what holds everywhere: preferences, identity); "all" reads every project; '
        f"at most {MAX_PROJECT_CHARS} characters.",
    ),
]
Filters = Annotated[
    SearchFilters | None, Field(description="Optional: kinds, roles, speakers, since / until, metadata.")
]
Metadata = Annotated[
    dict[str, MetadataInput] | None,
    Field(
        max_length=MAX_METADATA_KEYS,
        description=f'Optional: your tags on these messages, e.g. {{"source": "slack", "priority": 2}}: at most '
        f"{MAX_METADATA_KEYS} keys (letters, digits, _ or -, no dots), values strings of at most "
        f"{MAX_METADATA_VALUE_CHARS} characters, numbers or booleans, {MAX_METADATA_BYTES:,} bytes in all. Facts "
        "extracted from them inherit them; search, recall and list_memories filter on them.",
    ),
]
Time = Annotated[str | None, Field(max_length=MAX_TIME_CHARS)]


def build_server(
    settings: Settings,
    provider: MemoryProvider[Any] | None = None,
    *,
    auth: AuthSettings | None = None,
    token_verifier: TokenVerifier | None = None,
    close_on_exit: bool = True,
    projects: SessionProjects | None = None,
) -> "MemoryServer":
    """The MCP server with every tool registered over one `MemoryProvider`.

    `auth` and `token_verifier` protect the HTTP transports (see `hosted.py`). The SSE transport
    enters the lifespan once per connection, so the HTTP app passes `close_on_exit=False` and
    closes the provider itself, once, at shutdown. With `projects` (stdio), each session works in
    its project by default (see the README's scope model).
    """
    memory_provider: MemoryProvider[Any] = provider or MemoryProvider(settings, Memory.open)

    @asynccontextmanager
    async def lifespan(_: MCPServer) -> AsyncIterator[MemoryProvider[Any]]:
        if settings.server.warmup:
            memory_provider.start()
        try:
            yield memory_provider
        finally:
            if close_on_exit:
                await memory_provider.close()

    calls = Calls(memory_provider, projects)
    server = MemoryServer(
        calls,
        "lightmem-mcp",
        title="LightMem memory",
        description="Long-term memory for agents: stored conversations, extracted facts and summaries.",
        icons=[ICON],
        version=__version__,
        instructions=INSTRUCTIONS,
        lifespan=lifespan,
        log_level=settings.server.log_level,
        auth=auth,
        token_verifier=token_verifier,
        # No change notifications are sent (no resource subscriptions, fixed tool and prompt lists), so
        # none are declared: on 2026-07-28 the SDK would declare them whenever it serves listen streams.
        subscriptions=False,
    )
    _register_tools(server, calls, settings, projects)
    register_resources(server, calls)
    register_prompts(server, calls)
    register_completions(server, calls)
    _make_arguments_strict(server)
    _dress_tools(server)
    return server


class MemoryServer(MCPServer[Any]):
    """The SDK's server, whose resource list is the caller's own (their newest summaries, their
    stats) rather than a fixed one."""

    def __init__(self, calls: Calls, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._calls = calls

    @property
    def calls(self) -> Calls:
        """How this server's handlers reach the memory service (and its calls in flight)."""
        return self._calls

    async def list_resources(self) -> list[MCPResource]:
        """The caller's newest summaries and stats."""
        return [*await super().list_resources(), *await listed_resources(self._calls)]


def _dress_tools(server: MCPServer) -> None:
    """Give every tool its title at the top level (clients show it in menus) and the server's icon."""
    for tool in server._tool_manager.list_tools():
        tool.title = tool.title or (tool.annotations.title if tool.annotations else None)
        tool.icons = [ICON]


# Deleting more records than this by id asks the person first, when their client can be asked.
ASK_BEFORE_DELETING_MORE_THAN = 3
# Records a deletion question lists one by one.
_LISTED_IN_QUESTION = 10
_QUESTION_TEXT_CHARS = 80
# First protocol version whose tool calls ask the client through an input-required round (any
# transport); before it, the server sends the client a request mid-call, which needs a connection
# that can carry one (stdio, SSE; not stateless HTTP).
_INPUT_REQUIRED_VERSION = "2026-07-28"


class Confirmation(BaseModel):
    """The person's answer to a deletion question."""

    confirm: bool = Field(title="Delete them", description="Yes: delete them permanently.")


# What a resolved answer holds when the person was not asked (their client cannot be).
NOT_ASKED = AcceptedElicitation[Confirmation].model_construct(data=None)


def can_elicit(ctx: Context) -> bool:
    """Whether the person behind this call can be asked (form elicitation, and a way to send it)."""
    capabilities = ctx.client_capabilities
    elicitation = capabilities.elicitation if capabilities is not None else None
    if elicitation is None or (elicitation.form is None and elicitation.url is not None):
        return False
    version = ctx.protocol_version
    if version is not None and is_version_at_least(version, _INPUT_REQUIRED_VERSION):
        return True
    return bool(ctx.session.can_send_request)


def confirmed(answer: ElicitationResult[Confirmation], confirm: bool, what: str) -> bool:
    """Whether to go ahead: the person said yes, or (not asked) the caller passed confirm=true.
    A person who declined, cancelled or unticked the box stops it, whatever `confirm` says."""
    if not isinstance(answer, AcceptedElicitation):
        raise ToolError(f"{what}: the person declined; nothing was deleted")
    if answer.data is None:  # not asked: a client without elicitation
        return confirm
    if not answer.data.confirm:
        raise ToolError(f"{what}: the person did not confirm; nothing was deleted")
    return True


def forget_question(scope: Scope, counts: dict[str, int]) -> str:
    """What a person is asked before `forget`: exactly which memories of whom go."""
    whose = f"user {scope.user_id!r}"
    whose += f", agent {scope.agent_id!r}" if scope.agent_id else ""
    whose += f", session {scope.session_id!r}" if scope.session_id else ""
    if scope.project == GLOBAL_PROJECT:
        whose += " in the global tier (no project)"
    elif scope.project:
        whose += f" in project {scope.project!r}"
    names = {"turn": "stored messages", "fact": "facts", "summary": "summaries"}
    what = ", ".join(f"{n} {names.get(kind, kind)}" for kind, n in counts.items())
    total = sum(counts.values())
    return f"Permanently delete every memory of {whose}: {total} records ({what})? This cannot be undone."


def delete_question(records: Sequence[MemoryRecord]) -> str:
    """What a person is asked before a large `delete_memory`: the records, listed."""
    lines = [f"Permanently delete these {len(records)} memories? This cannot be undone."]
    for record in records[:_LISTED_IN_QUESTION]:
        lines.append(f"- {record.kind} of {record.event_time:%Y-%m-%d}: {shortened(record.text, _QUESTION_TEXT_CHARS)}")
    if len(records) > _LISTED_IN_QUESTION:
        lines.append(f"- and {len(records) - _LISTED_IN_QUESTION} more")
    return "\n".join(lines)


def _cited(result: SearchResult | RecallResult) -> list[tuple[str, str, str, datetime]]:
    """The records a search or recall result cites: (id, kind, text, time) each, in its order."""
    if isinstance(result, SearchResult):
        return [(hit.id, hit.kind, hit.text, hit.event_time) for hit in result.hits]
    return [(record_id, block.kind, block.text, block.start_time) for block in result.blocks for record_id in block.ids]


def _with_links(result: SearchResult | RecallResult, user_id: str) -> CallToolResult:
    """The tool result, its JSON as text, plus a resource link to each record it cites."""
    return CallToolResult(
        content=[TextContent(type="text", text=result.model_dump_json()), *resource_links(user_id, _cited(result))],
        structured_content=result.model_dump(mode="json", by_alias=True),
    )


class _StrictArguments(FuncMetadata):
    """A tool's arguments taken exactly as its input schema says.

    The SDK's default coerces (`"true"` and `1` pass as `true`, `"10"` as `10`), drops unknown
    arguments (a misspelled `tenant` would write under `default`) and parses strings as JSON first
    (`agent_id: "null"` would widen a scope to the whole user). On scoped and destructive calls each
    of these acts on something the caller did not ask for, so none of them is done here.
    """

    def validate_arguments(self, arguments_to_validate: dict[str, Any]) -> dict[str, Any]:
        """Validate in strict mode, nested models included; unknown names are refused, naming the known ones."""
        known = [field.alias or name for name, field in self.arg_model.model_fields.items()]
        unknown = [name for name in arguments_to_validate if name not in known]
        if unknown:
            error = PydanticCustomError(
                "extra_forbidden", "unknown argument: remove it; this tool takes {known}", {"known": ", ".join(known)}
            )
            details = [InitErrorDetails(type=error, loc=(name,), input=arguments_to_validate[name]) for name in unknown]
            raise ValidationError.from_exception_data(self.arg_model.__name__, details)
        validated = self.arg_model.model_validate(arguments_to_validate, strict=True, extra="forbid")
        return validated.model_dump_one_level()


class _ClosedObjects(GenerateJsonSchema):
    """Input schemas that say what `_StrictArguments` enforces: no property beyond those listed."""

    def model_schema(self, schema: core_schema.ModelSchema) -> JsonSchemaValue:
        """The model's object schema, closed to other properties."""
        json_schema = super().model_schema(schema)
        json_schema["additionalProperties"] = False
        return json_schema


def _make_arguments_strict(server: MCPServer) -> None:
    """Make every registered tool validate its arguments strictly, and publish closed input schemas.

    One pass over all tools, so a tool added to `_register_tools` is strict without asking. The SDK
    has no switch for this (modelcontextprotocol/python-sdk#3067), and `_tool_manager` is its only
    handle on the registered tools.
    """
    for tool in server._tool_manager.list_tools():
        loose = tool.fn_metadata
        tool.fn_metadata = _StrictArguments(**{name: getattr(loose, name) for name in FuncMetadata.model_fields})
        tool.parameters = loose.arg_model.model_json_schema(by_alias=True, schema_generator=_ClosedObjects)


def _register_tools(server: MCPServer, calls: Calls, settings: Settings, projects: SessionProjects | None) -> None:
    limits = settings.limits

    async def no_roots(ctx: Context) -> None:
        return None

    # Filled by the SDK before each call (never an argument): the session's roots, when it has a project.
    ClientRoots = Annotated[ListRootsResult | None, Resolve(projects.roots if projects else no_roots)]

    async def scope_of(
        user_id: str,
        agent_id: str | None,
        session_id: str | None,
        project: str | None,
        roots: ListRootsResult | None = None,
    ) -> Scope:
        """The scope a tool call acts on (see `Calls.scope`); a refused one is a tool error."""
        try:
            return await calls.scope(user_id, agent_id, session_id, project, roots)
        except LightMemError as exc:
            raise ToolError(str(exc)) from exc

    async def run(call: Callable[[MemoryService], T], access: Access = "read") -> T:
        """Run a service call in a worker thread; domain errors become tool errors.

        `access` is what the call needs from the caller's credentials: read, write or admin.
        """
        try:
            return await calls.run(call, access)
        except LightMemError as exc:
            raise ToolError(str(exc)) from exc

    async def run_stoppable(call: Callable[[MemoryService, Stop], T], access: Access, what: str, ctx: Context) -> T:
        """`run` for a call that works in batches: a cancelled request stops it at a batch boundary."""
        try:
            return await calls.run_stoppable(call, access, what, str(ctx.request_id))
        except LightMemError as exc:
            raise ToolError(str(exc)) from exc

    async def ask_to_forget(
        ctx: Context,
        user_id: str = "default",
        agent_id: str | None = None,
        session_id: str | None = None,
        project: str | None = None,
        roots: ClientRoots = None,
    ) -> Elicit[Confirmation] | None:
        """Before `forget`: ask the person, stating what would go, when their client can be asked."""
        if not can_elicit(ctx):
            return None
        scope = await scope_of(user_id, agent_id, session_id, project, roots)
        counts = await run(lambda m: m.forget_preview(scope), "write")
        if not counts:
            return None  # nothing to delete: nothing to ask
        return Elicit(forget_question(scope, counts), Confirmation)

    async def ask_to_delete(
        ctx: Context,
        ids: list[str],
        user_id: str = "default",
        agent_id: str | None = None,
        session_id: str | None = None,
        project: str | None = None,
        roots: ClientRoots = None,
    ) -> Elicit[Confirmation] | None:
        """Before `delete_memory` of more than a few records: ask the person, listing them."""
        if len(set(ids)) <= ASK_BEFORE_DELETING_MORE_THAN or not can_elicit(ctx):
            return None
        scope = await scope_of(user_id, agent_id, session_id, project, roots)
        found = await run(lambda m: m.get(ids, scope), "write")
        if not found.records:
            return None
        return Elicit(delete_question(found.records), Confirmation)

    # Filled by the SDK before the call (never arguments): the person's answer, on clients that can ask.
    ForgetAnswer = Annotated[ElicitationResult[Confirmation], Resolve(ask_to_forget)]
    DeleteAnswer = Annotated[ElicitationResult[Confirmation], Resolve(ask_to_delete)]

    @server.tool(
        annotations=ToolAnnotations(
            title="Remember messages", read_only_hint=False, destructive_hint=False, idempotent_hint=False
        )
    )
    async def add_memory(
        messages: Annotated[
            list[Message],
            Field(
                description=f"The messages to remember, oldest first: at most {limits.max_messages_per_call}, "
                f"each content at most {limits.max_message_chars} characters."
            ),
        ],
        user_id: UserId = "default",
        agent_id: AgentId = None,
        session_id: SessionId = None,
        project: ProjectArg = None,
        roots: ClientRoots = None,
        metadata: Metadata = None,
        expires_at: Annotated[
            Time,
            Field(
                description="Optional: when these memories expire (ISO 8601, in the future, at most "
                f"{MAX_TIME_CHARS} characters): from then on they are left out of every read and later deleted. "
                "Not with ttl."
            ),
        ] = None,
        ttl: Annotated[
            int | None,
            Field(
                description=f"Optional: seconds these memories live, {MIN_TTL_S} to {MAX_TTL_S:,} (100 years), "
                "e.g. 86400 for a day. Not with expires_at."
            ),
        ] = None,
    ) -> AddResult:
        """Store conversation messages in long-term memory. Each message is kept verbatim and is
        searchable as soon as this returns. Re-sending a message with the same id replaces it."""
        if project == ALL_PROJECTS:
            raise ToolError(
                'project: "all" is for reading every project; a message is stored in one: omit project (this '
                'session\'s), or give "global" or a project'
            )
        scope = await scope_of(user_id, agent_id, session_id, project, roots)
        return await run(lambda m: m.add(messages, scope, metadata, expires_at, ttl), "write")

    @server.tool(annotations=ToolAnnotations(title="Search memory", read_only_hint=True, idempotent_hint=True))
    async def search_memory(
        query: Annotated[
            str,
            Field(
                max_length=limits.max_message_chars,
                description="What to look for, in natural language or keywords; at most "
                f"{limits.max_message_chars} characters.",
            ),
        ],
        limit: Annotated[int, Field(description=f"How many results, 1 to {limits.max_results}.")] = 10,
        user_id: UserId = "default",
        agent_id: AgentId = None,
        session_id: SessionId = None,
        filters: Filters = None,
        project: ProjectArg = None,
        roots: ClientRoots = None,
        context: Annotated[
            int,
            Field(
                description=f"Turns to show before and after each stored-message hit, same session only, 0 to "
                f"{MAX_CONTEXT} (default 0): `windows` then holds the exchange around each hit, overlapping "
                "windows merged, and each hit's `window` points to its own."
            ),
        ] = 0,
    ) -> Annotated[CallToolResult, SearchResult]:
        """Search long-term memory by meaning and keywords. Returns the best matches with their
        text, time, speaker and the ids of the messages they come from; with `context`, also the
        turns around each hit."""
        scope = await scope_of(user_id, agent_id, session_id, project, roots)
        found = await run(lambda m: m.search(query, scope, limit, filters, context=context))
        return _with_links(found, scope.user_id)

    @server.tool(annotations=ToolAnnotations(title="Recall for a prompt", read_only_hint=True, idempotent_hint=True))
    async def recall(
        query: Annotated[
            str,
            Field(
                max_length=limits.max_message_chars,
                description="The question about to be answered, or what to remember about; at most "
                f"{limits.max_message_chars} characters.",
            ),
        ],
        max_tokens: Annotated[
            int,
            Field(
                description=f"Token budget of the returned context (cl100k_base), {MIN_RECALL_TOKENS} to "
                f"{MAX_RECALL_TOKENS} (default {DEFAULT_RECALL_TOKENS})."
            ),
        ] = DEFAULT_RECALL_TOKENS,
        context: Annotated[
            int,
            Field(
                description=f"Short neighbouring turns (a reply, a question) to include on each side of a "
                f"stored-message hit when they fit, 0 to {MAX_CONTEXT} (default {DEFAULT_RECALL_CONTEXT})."
            ),
        ] = DEFAULT_RECALL_CONTEXT,
        compress: Annotated[
            bool,
            Field(
                description="Compress the turns with LLMLingua-2 to fit more evidence (only when the model is "
                "loaded; `compressed` in the result says whether it was)."
            ),
        ] = False,
        user_id: UserId = "default",
        agent_id: AgentId = None,
        session_id: SessionId = None,
        filters: Filters = None,
        project: ProjectArg = None,
        roots: ClientRoots = None,
    ) -> Annotated[CallToolResult, RecallResult]:
        """Call before answering a question that may depend on earlier conversations: returns the most
        relevant memories with the turns around them, packed into at most `max_tokens` tokens, grouped
        by session in time order, each block citing its message ids and time. Put `context` in your
        prompt."""
        scope = await scope_of(user_id, agent_id, session_id, project, roots)
        found = await run(lambda m: m.recall(query, scope, max_tokens, context, filters, compress))
        return _with_links(found, scope.user_id)

    @server.tool(annotations=ToolAnnotations(title="Get memories", read_only_hint=True, idempotent_hint=True))
    async def get_memory(
        ids: Annotated[
            list[RecordId],
            Field(
                description=f"Record ids, as search_memory or list_memories return them; at most "
                f"{limits.max_ids_per_call}."
            ),
        ],
        user_id: UserId = "default",
        agent_id: AgentId = None,
        session_id: SessionId = None,
        project: ProjectArg = None,
        roots: ClientRoots = None,
    ) -> GetResult:
        """Read whole memory records by id, including the original message text."""
        scope = await scope_of(user_id, agent_id, session_id, project, roots)
        return await run(lambda m: m.get(ids, scope))

    @server.tool(annotations=ToolAnnotations(title="List memories", read_only_hint=True, idempotent_hint=True))
    async def list_memories(
        user_id: UserId = "default",
        agent_id: AgentId = None,
        session_id: SessionId = None,
        project: ProjectArg = None,
        roots: ClientRoots = None,
        kinds: Annotated[list[Kind] | None, Field(description="Only these kinds: turn, fact, summary.")] = None,
        limit: Annotated[int, Field(description=f"Page size, 1 to {limits.max_results}.")] = 20,
        cursor: Annotated[
            str | None,
            Field(
                max_length=MAX_CURSOR_CHARS,
                description=f"next_cursor from the previous page, unchanged (at most {MAX_CURSOR_CHARS} characters).",
            ),
        ] = None,
        include_superseded: Annotated[
            bool, Field(description="Also facts that newer facts updated or contradicted.")
        ] = False,
        metadata: Annotated[
            dict[str, MetadataInput] | None,
            Field(
                max_length=MAX_METADATA_KEYS,
                description="Optional: only records whose metadata holds every one of these key: value pairs "
                "(equality).",
            ),
        ] = None,
    ) -> ListResult:
        """List memory records page by page, newest event first."""
        scope = await scope_of(user_id, agent_id, session_id, project, roots)
        return await run(lambda m: m.list(scope, kinds, limit, cursor, include_superseded, metadata))

    @server.tool(
        annotations=ToolAnnotations(
            title="Delete memories", read_only_hint=False, destructive_hint=True, idempotent_hint=True
        )
    )
    async def delete_memory(
        ids: Annotated[
            list[RecordId],
            Field(
                description=f"Record ids to delete; at most {limits.max_ids_per_call}. More than "
                f"{ASK_BEFORE_DELETING_MORE_THAN} asks the person first when their client can be asked."
            ),
        ],
        user_id: UserId = "default",
        agent_id: AgentId = None,
        session_id: SessionId = None,
        project: ProjectArg = None,
        roots: ClientRoots = None,
        answer: DeleteAnswer = NOT_ASKED,
    ) -> DeleteResult:
        """Permanently delete memory records by id. Ids not in this scope are reported missing."""
        scope = await scope_of(user_id, agent_id, session_id, project, roots)
        confirmed(answer, True, "delete_memory")
        return await run(lambda m: m.delete(ids, scope), "write")

    @server.tool(
        annotations=ToolAnnotations(
            title="Forget everything in a scope", read_only_hint=False, destructive_hint=True, idempotent_hint=True
        )
    )
    async def forget(
        confirm: Annotated[
            bool,
            Field(
                description="For clients that cannot ask the person (no elicitation): the JSON boolean true, "
                "to delete every memory in the scope. Clients that can are asked instead, with what would go."
            ),
        ] = False,
        user_id: UserId = "default",
        agent_id: AgentId = None,
        session_id: SessionId = None,
        project: ProjectArg = None,
        roots: ClientRoots = None,
        answer: ForgetAnswer = NOT_ASKED,
    ) -> ForgetResult:
        """Permanently delete every memory of a user, or of one agent or session of that user. The
        person is asked first when their client can ask them."""
        scope = await scope_of(user_id, agent_id, session_id, project, roots)
        go = confirmed(answer, confirm, "forget")
        return await run(lambda m: ForgetResult(deleted_count=m.forget(scope, go)), "write")

    @server.tool(
        annotations=ToolAnnotations(
            title="Flush the memory buffer", read_only_hint=False, destructive_hint=False, idempotent_hint=True
        )
    )
    async def flush_memory(
        ctx: Context,
        user_id: UserId = "default",
        agent_id: AgentId = None,
        session_id: SessionId = None,
        project: ProjectArg = None,
        backlog: Annotated[
            bool,
            Field(
                description="Also extract the messages stored while no LLM was configured, oldest first. "
                "It costs LLM calls: run it with dry_run first."
            ),
        ] = False,
        dry_run: Annotated[
            bool,
            Field(description="Change nothing; report the turns, LLM calls, tokens and estimated cost it would take."),
        ] = False,
        roots: ClientRoots = None,
    ) -> FlushResult:
        """Turn the scope's buffered messages into long-term facts now, instead of waiting for the
        buffer to fill (e.g. at the end of a conversation). Messages stay searchable either way."""
        scope = await scope_of(user_id, agent_id, session_id, project, roots)
        report = _progress_reporter(ctx)
        return await run_stoppable(
            lambda m, stop: m.flush(scope, backlog, dry_run, report, stop=stop), "write", "flush_memory", ctx
        )

    @server.tool(
        annotations=ToolAnnotations(
            title="Consolidate memory", read_only_hint=False, destructive_hint=False, idempotent_hint=True
        )
    )
    async def consolidate(
        ctx: Context,
        user_id: UserId = "default",
        agent_id: AgentId = None,
        session_id: SessionId = None,
        project: ProjectArg = None,
        roots: ClientRoots = None,
        since: Annotated[
            Time, Field(description=f"Only facts from this time on (ISO 8601, at most {MAX_TIME_CHARS} characters).")
        ] = None,
        until: Annotated[
            Time, Field(description=f"Only facts up to this time (ISO 8601, at most {MAX_TIME_CHARS} characters).")
        ] = None,
        dry_run: Annotated[bool, Field(description="Report what would change and change nothing.")] = False,
        all_users: Annotated[
            bool, Field(description="Every user's memory instead of one scope (needs the admin scope when hosted).")
        ] = False,
    ) -> ConsolidateResult:
        """Let newer facts update older ones: details are merged into a new version, and facts a newer
        one contradicts are superseded. Nothing is deleted: superseded facts drop out of search and
        keep their history (memory_history). Uses the LLM, a few facts per call."""
        scope = None if all_users else await scope_of(user_id, agent_id, session_id, project, roots)
        report = _progress_reporter(ctx)
        return await run_stoppable(
            lambda m, stop: m.consolidate(scope, since, until, dry_run, report, stop=stop),
            "admin" if all_users else "write",
            "consolidate",
            ctx,
        )

    @server.tool(
        annotations=ToolAnnotations(
            title="Summarize memory", read_only_hint=False, destructive_hint=False, idempotent_hint=True
        )
    )
    async def summarize(
        ctx: Context,
        user_id: UserId = "default",
        agent_id: AgentId = None,
        session_id: SessionId = None,
        project: ProjectArg = None,
        roots: ClientRoots = None,
        window: Annotated[Window, Field(description="One summary for all, or one per session, day or week.")] = "all",
        since: Annotated[
            Time,
            Field(description=f"Only memories from this time on (ISO 8601, at most {MAX_TIME_CHARS} characters)."),
        ] = None,
        until: Annotated[
            Time,
            Field(description=f"Only memories up to this time (ISO 8601, at most {MAX_TIME_CHARS} characters)."),
        ] = None,
        topic: Annotated[
            str | None,
            Field(
                max_length=MAX_TOPIC_CHARS,
                description=f"Only memories about this, e.g. 'travel plans'; at most {MAX_TOPIC_CHARS} characters.",
            ),
        ] = None,
        dry_run: Annotated[
            bool,
            Field(description="Write and call nothing; report the windows, LLM calls, tokens and estimated cost."),
        ] = False,
    ) -> SummarizeResult:
        """Summarize a scope's memories (facts, or messages where no facts exist yet) per window and
        store each summary as a searchable 'summary' memory citing its sources. Summarizing the same
        window again replaces its summary. Uses one LLM call per window; without an LLM the summary
        is extractive (its most central sentences)."""
        scope = await scope_of(user_id, agent_id, session_id, project, roots)
        report = _progress_reporter(ctx)
        return await run_stoppable(
            lambda m, stop: m.summarize(scope, window, since, until, topic, report, dry_run, stop=stop),
            "write",
            "summarize",
            ctx,
        )

    @server.tool(annotations=ToolAnnotations(title="Memory history", read_only_hint=True, idempotent_hint=True))
    async def memory_history(
        id: Annotated[
            RecordId,
            Field(
                description=f"A record id, e.g. from search_memory or list_memories; at most {MAX_ID_CHARS} characters."
            ),
        ],
        user_id: UserId = "default",
        agent_id: AgentId = None,
        session_id: SessionId = None,
        project: ProjectArg = None,
        roots: ClientRoots = None,
    ) -> HistoryResult:
        """Every version of a memory: what it said before, what replaced it, when, why, and which
        newer facts it rests on."""
        scope = await scope_of(user_id, agent_id, session_id, project, roots)
        return await run(lambda m: m.history(id, scope))

    @server.tool(annotations=ToolAnnotations(title="Compress text", read_only_hint=True, idempotent_hint=True))
    async def compress(
        text: Annotated[
            str,
            Field(
                max_length=limits.max_message_chars,
                description=f"The text to shorten for your own prompt, at most {limits.max_message_chars} characters.",
            ),
        ],
        rate: Annotated[
            float | None, Field(description="Share of tokens to keep, e.g. 0.5. Default: configured.")
        ] = None,
        target_tokens: Annotated[int | None, Field(description="Aim for this many tokens instead of a rate.")] = None,
        force_tokens: Annotated[
            list[Annotated[str, Field(max_length=MAX_TOKEN_CHARS)]] | None,
            Field(
                max_length=MAX_FORCE_TOKENS,
                description=f"Tokens that must survive, e.g. ['?', '\\n']: at most {MAX_FORCE_TOKENS}, each at most "
                f"{MAX_TOKEN_CHARS} characters.",
            ),
        ] = None,
    ) -> CompressResult:
        """Compress text with LLMLingua-2, keeping the words that carry the meaning. Token counts are
        those of the target LLM's tokenizer."""
        done = await run(lambda m: m.compress(text, rate, target_tokens, force_tokens or ()))
        return CompressResult(
            compressed_text=done.text,
            original_tokens=done.original_tokens,
            compressed_tokens=done.compressed_tokens,
            ratio=done.ratio,
            model=done.model or "",
            device=done.device or "",
            milliseconds=round(done.seconds * 1000, 1),
        )

    @server.tool(annotations=ToolAnnotations(title="Memory statistics", read_only_hint=True, idempotent_hint=True))
    async def stats(
        user_id: UserId = "default",
        agent_id: AgentId = None,
        session_id: SessionId = None,
        project: ProjectArg = None,
        roots: ClientRoots = None,
    ) -> StatsResult:
        """Report what the scope holds (records by kind and status, tokens before and after compression)
        and what its LLM calls cost: calls and tokens by purpose, the estimated cost, and what the same
        traffic would have cost without compression and without batching."""
        scope = await scope_of(user_id, agent_id, session_id, project, roots)
        return await run(lambda m: m.stats(scope))


def _progress_reporter(ctx: Context) -> Progress:
    """A progress callback for service code running in a worker thread; never fails the call."""

    def report(done: float, total: float, message: str) -> None:
        try:
            anyio.from_thread.run(ctx.report_progress, done, total, message)
        except Exception:  # a client that asked for no progress, or went away
            log.debug("progress notification not sent", exc_info=True)

    return report
