"""The MCP interface: thin tools over the `Memory` service, which loads in the background."""

# No `from __future__ import annotations`: tool signatures are read at registration, and
# their Field descriptions use configured limits.
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Generic, Literal, TypeVar

import anyio
from mcp.server.auth.provider import TokenVerifier
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.resolve import ListRoots, Resolve
from mcp.server.mcpserver.utilities.func_metadata import FuncMetadata
from mcp.types import ListRootsResult, ToolAnnotations
from pydantic import Field, ValidationError
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
    Message,
    Progress,
    RecallResult,
    SearchFilters,
    SearchResult,
    StatsResult,
    SummarizeResult,
    Window,
)
from lightmem_mcp.auth import Forbidden, acting_user, check_access
from lightmem_mcp.compressor import MAX_FORCE_TOKENS
from lightmem_mcp.config import Settings
from lightmem_mcp.errors import BackendUnavailable, LightMemError
from lightmem_mcp.memory import MAX_CONTEXT, Memory
from lightmem_mcp.projects import Project, project_from_cwd, project_from_roots, project_of
from lightmem_mcp.recall import (
    DEFAULT_RECALL_CONTEXT,
    DEFAULT_RECALL_TOKENS,
    MAX_RECALL_TOKENS,
    MIN_RECALL_TOKENS,
)
from lightmem_mcp.records import GLOBAL, MAX_ID_CHARS, Kind, Scope
from lightmem_mcp.shared import SharedMemory
from lightmem_mcp.timestamps import MAX_TIME_CHARS

log = logging.getLogger(__name__)

T = TypeVar("T")
# The service the tools call: a `Memory`, or in stdio mode a `SharedMemory` (the owner's memory, or
# a forwarder to it); mypy checks every tool's call against both.
MemoryService = Memory | SharedMemory
S = TypeVar("S", bound=MemoryService)
Access = Literal["read", "write", "admin"]

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
Filters = Annotated[SearchFilters | None, Field(description="Optional: kinds, roles, speakers, since / until.")]
Time = Annotated[str | None, Field(max_length=MAX_TIME_CHARS)]


class MemoryProvider(Generic[S]):
    """Builds the memory service once, off the event loop, so `initialize` never waits for models."""

    def __init__(self, settings: Settings, factory: Callable[[Settings], S]) -> None:
        self._settings = settings
        self._factory = factory
        self._lock = threading.Lock()
        self._future: Future[S] | None = None

    def start(self) -> Future[S]:
        """Begin loading unless it is loading or loaded; a failed load is retried."""
        with self._lock:
            if self._future is None or (self._future.done() and self._future.exception() is not None):
                future: Future[S] = Future()
                self._future = future
                threading.Thread(target=self._load, args=(future,), name="lightmem-load", daemon=True).start()
            return self._future

    def _load(self, future: Future[S]) -> None:
        try:
            future.set_result(self._factory(self._settings))
        except BaseException as exc:  # handed to every caller, logged once here
            log.error("memory backend unavailable: %s", exc)
            future.set_exception(exc)

    async def get(self) -> S:
        """The ready service; raises `BackendUnavailable` when loading failed."""
        future = self.start()
        try:
            return await anyio.to_thread.run_sync(future.result)
        except LightMemError:
            raise
        except Exception as exc:
            raise BackendUnavailable(f"memory backend failed to load: {exc}") from exc

    async def close(self) -> None:
        """Close the service if it was loaded."""
        future = self._future
        if future is None:
            return
        memory = await anyio.to_thread.run_sync(lambda: future.exception() is None and future.result())
        if memory:
            await anyio.to_thread.run_sync(memory.close)


# What the `project` argument accepts besides a project id or a folder.
ALL_PROJECTS = "all"
GLOBAL_TIER = "global"
# How long a session's project (from its client's roots) is reused before the roots are asked again.
ROOTS_TTL_S = 60.0


class SessionProjects:
    """The project a stdio server's session works in: its client's first root that is a project
    folder (when the client offers roots), else the server's working directory. A stdio server has
    one client, so one of these per server; over HTTP every caller's scope is explicit.

    The roots are asked through the SDK's resolver (`ListRoots`), which speaks both protocol eras: a
    request to the client mid-call (2025-11-25), or an input-required round (2026-07-28). The answer
    is reused for `ROOTS_TTL_S`.
    """

    def __init__(self, cwd: Path | None = None) -> None:
        self._cwd = cwd
        self._known: tuple[float, ListRootsResult] | None = None

    async def roots(self, ctx: Context) -> ListRoots | ListRootsResult | None:
        """The resolver of a tool's `roots` parameter: the client's roots, known or to be asked."""
        capabilities = ctx.client_capabilities
        if capabilities is None or capabilities.roots is None:
            return None
        known = self._known
        if known is not None and time.monotonic() - known[0] < ROOTS_TTL_S:
            return known[1]
        return ListRoots()

    async def of(self, roots: ListRootsResult | None) -> Project | None:
        """The session's project: from its roots, else from the working directory."""
        project = None
        if roots is not None:
            if self._known is None or self._known[1] is not roots:  # a fresh answer, not the one reused
                self._known = (time.monotonic(), roots)
            project = await anyio.to_thread.run_sync(project_from_roots, [str(root.uri) for root in roots.roots])
        if project is None:
            project = await anyio.to_thread.run_sync(project_from_cwd, self._cwd)
        return project


def build_server(
    settings: Settings,
    provider: MemoryProvider[Any] | None = None,
    *,
    auth: AuthSettings | None = None,
    token_verifier: TokenVerifier | None = None,
    close_on_exit: bool = True,
    projects: SessionProjects | None = None,
) -> MCPServer:
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

    server = MCPServer(
        "lightmem-mcp",
        version=__version__,
        instructions=INSTRUCTIONS,
        lifespan=lifespan,
        log_level=settings.server.log_level,
        auth=auth,
        token_verifier=token_verifier,
    )
    _register_tools(server, memory_provider, settings, projects)
    _make_arguments_strict(server)
    return server


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


def _register_tools(
    server: MCPServer, provider: MemoryProvider[Any], settings: Settings, projects: SessionProjects | None
) -> None:
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
        """The scope a tool call acts on: with an access token (HTTP), the user is the token's tenant;
        the project tier is the argument's, else the session's."""
        try:
            user = acting_user(user_id)
        except Forbidden as exc:
            raise ToolError(str(exc)) from exc
        if project is None:
            found = await projects.of(roots) if projects is not None else None
            tier = found.id if found is not None else None
        else:
            tier = await anyio.to_thread.run_sync(_named_project, project)
        return Scope(user, agent_id, session_id, tier)

    async def run(call: Callable[[MemoryService], T], access: Access = "read") -> T:
        """Run a service call in a worker thread; domain errors become tool errors.

        `access` is what the call needs from the caller's credentials: read, write or admin.
        """
        try:
            check_access(access)
            memory = await provider.get()
            return await anyio.to_thread.run_sync(call, memory)
        except LightMemError as exc:
            raise ToolError(str(exc)) from exc

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
    ) -> AddResult:
        """Store conversation messages in long-term memory. Each message is kept verbatim and is
        searchable as soon as this returns. Re-sending a message with the same id replaces it."""
        if project == ALL_PROJECTS:
            raise ToolError(
                'project: "all" is for reading every project; a message is stored in one: omit project (this '
                'session\'s), or give "global" or a project'
            )
        scope = await scope_of(user_id, agent_id, session_id, project, roots)
        return await run(lambda m: m.add(messages, scope), "write")

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
    ) -> SearchResult:
        """Search long-term memory by meaning and keywords. Returns the best matches with their
        text, time, speaker and the ids of the messages they come from; with `context`, also the
        turns around each hit."""
        scope = await scope_of(user_id, agent_id, session_id, project, roots)
        return await run(lambda m: m.search(query, scope, limit, filters, context=context))

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
    ) -> RecallResult:
        """Call before answering a question that may depend on earlier conversations: returns the most
        relevant memories with the turns around them, packed into at most `max_tokens` tokens, grouped
        by session in time order, each block citing its message ids and time. Put `context` in your
        prompt."""
        scope = await scope_of(user_id, agent_id, session_id, project, roots)
        return await run(lambda m: m.recall(query, scope, max_tokens, context, filters, compress))

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
    ) -> ListResult:
        """List memory records page by page, newest event first."""
        scope = await scope_of(user_id, agent_id, session_id, project, roots)
        return await run(lambda m: m.list(scope, kinds, limit, cursor, include_superseded))

    @server.tool(
        annotations=ToolAnnotations(
            title="Delete memories", read_only_hint=False, destructive_hint=True, idempotent_hint=True
        )
    )
    async def delete_memory(
        ids: Annotated[list[RecordId], Field(description=f"Record ids to delete; at most {limits.max_ids_per_call}.")],
        user_id: UserId = "default",
        agent_id: AgentId = None,
        session_id: SessionId = None,
        project: ProjectArg = None,
        roots: ClientRoots = None,
    ) -> DeleteResult:
        """Permanently delete memory records by id. Ids not in this scope are reported missing."""
        scope = await scope_of(user_id, agent_id, session_id, project, roots)
        return await run(lambda m: m.delete(ids, scope), "write")

    @server.tool(
        annotations=ToolAnnotations(
            title="Forget everything in a scope", read_only_hint=False, destructive_hint=True, idempotent_hint=True
        )
    )
    async def forget(
        confirm: Annotated[
            bool, Field(description="Must be the JSON boolean true: this deletes every memory in the scope.")
        ],
        user_id: UserId = "default",
        agent_id: AgentId = None,
        session_id: SessionId = None,
        project: ProjectArg = None,
        roots: ClientRoots = None,
    ) -> ForgetResult:
        """Permanently delete every memory of a user, or of one agent or session of that user."""
        scope = await scope_of(user_id, agent_id, session_id, project, roots)
        return await run(lambda m: ForgetResult(deleted_count=m.forget(scope, confirm)), "write")

    @server.tool(
        annotations=ToolAnnotations(
            title="Flush the memory buffer", read_only_hint=False, destructive_hint=False, idempotent_hint=True
        )
    )
    async def flush_memory(
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
        return await run(lambda m: m.flush(scope, backlog=backlog, dry_run=dry_run), "write")

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
        return await run(
            lambda m: m.consolidate(scope, since, until, dry_run, report), "admin" if all_users else "write"
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
        return await run(lambda m: m.summarize(scope, window, since, until, topic, report, dry_run), "write")

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


def _named_project(value: str) -> str | None:
    """The `Scope.project` a `project` argument names: a project id, or a folder's project."""
    if value == ALL_PROJECTS:
        return None
    if value == GLOBAL_TIER:
        return GLOBAL
    if value.startswith(("/", "~", "file:")) or (len(value) > 2 and value[1] == ":" and value[2] in "\\/"):
        found = project_from_roots([value]) if value.startswith("file:") else project_of(Path(value).expanduser())
        if found is None:
            raise ToolError(
                f"project: {value!r} is not a project folder (it does not exist, or is the home directory or the "
                'filesystem root): give a folder inside a project, a project id, "global" or "all"'
            )
        return found.id
    if not value.strip() or len(value) > MAX_ID_CHARS or any(ord(c) < 32 for c in value):
        raise ToolError(
            f"project: give a project id of at most {MAX_ID_CHARS} printable characters, an absolute folder path, "
            '"global" or "all"'
        )
    return value


def _progress_reporter(ctx: Context) -> Progress:
    """A progress callback for service code running in a worker thread; never fails the call."""

    def report(done: float, total: float, message: str) -> None:
        try:
            anyio.from_thread.run(ctx.report_progress, done, total, message)
        except Exception:  # a client that asked for no progress, or went away
            log.debug("progress notification not sent", exc_info=True)

    return report
