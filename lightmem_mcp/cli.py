"""`lightmem-mcp` command line: serve the MCP server (stdio by default)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from lightmem_mcp import __version__
from lightmem_mcp.config import Settings, load_settings
from lightmem_mcp.errors import ConfigError

if TYPE_CHECKING:
    from lightmem_mcp.memory import Memory


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lightmem-mcp", description="Long-term memory MCP server.")
    parser.add_argument("--version", action="version", version=f"lightmem-mcp {__version__}")
    parser.add_argument(
        "--config", type=Path, default=None, help="TOML settings file; LIGHTMEM_* env vars override it."
    )
    commands = parser.add_subparsers(dest="command")
    serve = commands.add_parser("serve", help="Run the MCP server (the default command).")
    serve.add_argument(
        "--transport",
        choices=["stdio", "http", "sse"],
        default="stdio",
        help="stdio (default); http: streamable HTTP at /mcp, stateless; sse: legacy SSE at /sse (sticky sessions).",
    )
    serve.add_argument("--host", help="Address to bind for http / sse (LIGHTMEM_HTTP_HOST, default 127.0.0.1).")
    serve.add_argument("--port", type=int, help="Port for http / sse (LIGHTMEM_HTTP_PORT, default 8000).")
    token = commands.add_parser("token", help="Bearer tokens for the HTTP transports.")
    token_commands = token.add_subparsers(dest="token_command", required=True)
    new_token = token_commands.add_parser(
        "new", help="Print a fresh token once, and the line that grants it (for LIGHTMEM_AUTH_TOKENS_FILE)."
    )
    new_token.add_argument("--tenant", required=True, help="The tenant (user) the token acts for.")
    new_token.add_argument(
        "--scopes", default="read,write", help="Comma-separated: read, write, admin (default read,write)."
    )
    new_token.add_argument("--name", help="Optional label kept in the tokens file, e.g. who holds the token.")
    new_token.add_argument(
        "--write",
        type=Path,
        metavar="FILE",
        help="Append the line to this tokens file (created, or tightened, to mode 0600) and print only the token.",
    )
    reindex = commands.add_parser(
        "reindex",
        help="Bring a store written by an older lightmem-mcp to this version's index now (the server also does "
        "it at start); resumes where an interrupted run stopped.",
    )
    reindex.add_argument("--batch", type=int, default=64, help="Records re-embedded per step (default 64).")
    doctor = commands.add_parser("doctor", help="Check every model and backend, then exit.")
    doctor.add_argument("--ping-llm", action="store_true", help="Also make one small call to the LLM.")
    export = commands.add_parser("export", help="Write memories as JSON Lines (a scope, or everything).")
    export.add_argument("--user", help="Only this user's points (default: every user).")
    export.add_argument("--agent", help="Only this agent of --user.")
    export.add_argument("--session", help="Only this session of --user.")
    export.add_argument("--vectors", action="store_true", help="Include dense vectors (else re-embedded on import).")
    export.add_argument(
        "--output",
        default="-",
        help="File to write (created 0600, replaced only when complete; never a link or special file), "
        "or - for stdout (the default).",
    )
    backlog = commands.add_parser(
        "backlog",
        help="Extract facts from the messages stored while no LLM was configured, oldest first, in the normal "
        "batches (it costs LLM calls: run it with --dry-run first). Stop the MCP servers of this data directory "
        "first, or call the flush_memory tool with backlog=true instead.",
    )
    backlog.add_argument("--dry-run", action="store_true", help="Change nothing; print calls, tokens and cost.")
    backlog.add_argument("--user", help="Only this user's scopes (default: every user).")
    restore = commands.add_parser(
        "import",
        help="Restore an export: checked whole first (a bad line writes nothing); importing twice changes nothing; "
        "points whose user or scope was edited are copied there under that scope's ids.",
    )
    restore.add_argument("file", help="The export file, or - for stdin.")
    browse = commands.add_parser(
        "ui",
        help="Open the memory browser of this data directory on 127.0.0.1 (through the stdio server that holds it, "
        "if one runs) and print a one-time link to it.",
    )
    browse.add_argument("--port", type=int, help="Port to bind (LIGHTMEM_UI_PORT; default: a free one).")
    browse.add_argument("--read-only", action="store_true", help="A session that can look but not delete.")
    link = commands.add_parser(
        "ui-link",
        help="Print a one-time link to a hosted server's memory browser for one tenant (needs the server's "
        "LIGHTMEM_UI_SECRET).",
    )
    link.add_argument("--tenant", required=True, help="The tenant (user) the link opens.")
    link.add_argument("--read-only", action="store_true", help="The session can look but not delete or export.")
    link.add_argument("--url", help="The server's base URL (default LIGHTMEM_HTTP_PUBLIC_URL).")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `lightmem-mcp` console script."""
    args = _parser().parse_args(argv)
    if args.command == "token":
        return _new_token(args)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"lightmem-mcp: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.server.log_level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Model loading must never write to stdout, which carries the stdio protocol.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")

    if args.command == "doctor":
        from lightmem_mcp.doctor import run_doctor

        return run_doctor(settings, ping_llm=args.ping_llm)

    if args.command == "reindex":
        return _reindex(args, settings)

    if args.command in ("export", "import"):
        return _transfer(args, settings)

    if args.command == "backlog":
        return _backlog(args, settings)

    if args.command in ("ui", "ui-link"):
        return _browser(args, settings)

    if getattr(args, "transport", "stdio") != "stdio":
        return _serve_http(args, settings)

    return _serve_stdio(settings)


def _reindex(args: argparse.Namespace, settings: Settings) -> int:
    """`reindex`: open the store, re-index it if it is stale, report."""
    from lightmem_mcp.errors import LightMemError
    from lightmem_mcp.memory import Memory

    if args.batch < 1:
        print("lightmem-mcp: --batch must be at least 1", file=sys.stderr)
        return 2
    from lightmem_mcp.shared import holding_store

    try:
        with holding_store(settings, "reindex"):
            memory = Memory.open_idle(settings, reindex_batch=args.batch)
            try:
                print(f"re-indexed {memory.reindexed} records" if memory.reindexed else "the store is up to date")
            finally:
                memory.close()
    except LightMemError as exc:
        print(f"lightmem-mcp: {exc}", file=sys.stderr)
        return 1
    return 0


def _backlog(args: argparse.Namespace, settings: Settings) -> int:
    """`backlog`: per scope with skipped turns, extract them (or, with --dry-run, say what it would take)."""
    from lightmem_mcp.errors import LightMemError
    from lightmem_mcp.memory import Memory
    from lightmem_mcp.shared import holding_store

    try:
        with holding_store(settings, "backlog"):
            memory = Memory.open_idle(settings)
            try:
                if not memory.llm.configured and not args.dry_run:
                    print(
                        "lightmem-mcp backlog: no LLM configured (LIGHTMEM_LLM_PROVIDER); set one up, or use "
                        "--dry-run to see what extraction would take",
                        file=sys.stderr,
                    )
                    return 2
                return _run_backlog(memory, args.user, args.dry_run)
            finally:
                memory.close()
    except LightMemError as exc:
        print(f"lightmem-mcp backlog: {exc}", file=sys.stderr)
        return 1


def _run_backlog(memory: Memory, user: str | None, dry_run: bool) -> int:
    """The body of `backlog` over an open store: one line per scope, then the total."""
    totals = [0, 0, 0, 0]
    cost: dict[str, float] = {}
    failed = False
    print(
        "scope\tturns\tllm_calls\tprompt_tokens\tcompletion_tokens\tcost"
        if dry_run
        else "scope\tturns\tfacts\tllm_calls\terror"
    )
    for scope in memory.backlog_scopes(user):
        done = memory.flush(scope, backlog=True, dry_run=dry_run)
        if not done.backlog_turns:
            continue
        name = "/".join(part or "-" for part in (scope.user_id, scope.agent_id, scope.session_id, scope.project))
        if dry_run and done.estimate is not None:
            spend = done.estimate
            money = ", ".join(f"{amount:.4f} {currency}" for currency, amount in spend.cost.items()) or "unpriced"
            print(
                f"{name}\t{done.extracted_turns}\t{spend.llm_calls}\t{spend.prompt_tokens}\t{spend.completion_tokens}\t{money}"
            )
            figures = (done.extracted_turns, spend.llm_calls, spend.prompt_tokens, spend.completion_tokens)
            for currency, amount in spend.cost.items():
                cost[currency] = cost.get(currency, 0.0) + amount
        else:
            print(f"{name}\t{done.extracted_turns}\t{done.facts}\t{done.llm_calls}\t{done.error or ''}")
            figures = (done.extracted_turns, done.facts, done.llm_calls, 0)
            failed = failed or done.error is not None
        totals = [a + b for a, b in zip(totals, figures, strict=True)]
    if dry_run:
        money = ", ".join(f"{amount:.4f} {currency}" for currency, amount in sorted(cost.items())) or "unpriced"
        print(
            f"lightmem-mcp backlog --dry-run: {totals[0]} turns, {totals[1]} LLM calls, {totals[2]} prompt and "
            f"~{totals[3]} completion tokens, estimated {money}; nothing was changed",
            file=sys.stderr,
        )
    else:
        print(
            f"lightmem-mcp backlog: {totals[0]} turns extracted into {totals[1]} facts in {totals[2]} LLM calls",
            file=sys.stderr,
        )
    return 1 if failed else 0


def _serve_stdio(settings: Settings) -> int:
    """`serve` (the default): the MCP server on stdin / stdout, until stdin ends."""
    import anyio

    from lightmem_mcp.server import MemoryProvider, SessionProjects, build_server
    from lightmem_mcp.stdio import serve_stdio

    provider = None
    if settings.shared.enabled and not settings.store.qdrant_url:
        from lightmem_mcp.shared import SharedMemory

        # Every IDE window starts its own server: the first owns the store, the others forward to it.
        provider = MemoryProvider(settings, SharedMemory.open)
    projects = SessionProjects() if settings.server.projects else None
    anyio.run(serve_stdio, build_server(settings, provider, projects=projects))
    return 0


def _serve_http(args: argparse.Namespace, settings: Settings) -> int:
    """`serve --transport http|sse`: the hosted server, until SIGTERM."""
    from lightmem_mcp.hosted import serve

    overrides = {name: value for name in ("host", "port") if (value := getattr(args, name)) is not None}
    if overrides:
        http = settings.http.model_copy(update=overrides)
        settings = settings.model_copy(update={"http": http})
    try:
        started = serve(settings, args.transport)
    except ConfigError as exc:
        print(f"lightmem-mcp: {exc}", file=sys.stderr)
        return 2
    return 0 if started else 1


def _browser(args: argparse.Namespace, settings: Settings) -> int:
    """`ui`: the memory browser on this machine; `ui-link`: a one-time link to a hosted one."""
    from lightmem_mcp.ui.local import hosted_link, serve_local

    if args.command == "ui":
        if args.port is not None and not 0 <= args.port <= 65535:
            print("lightmem-mcp ui: --port must be 0 to 65535", file=sys.stderr)
            return 2
        return serve_local(settings, args.port, args.read_only)
    if not args.tenant.strip():
        print("lightmem-mcp ui-link: --tenant is empty: give the tenant the link opens", file=sys.stderr)
        return 2
    try:
        print(hosted_link(settings, args.tenant, args.read_only, args.url))
    except ConfigError as exc:
        print(f"lightmem-mcp ui-link: {exc}", file=sys.stderr)
        return 2
    return 0


def _new_token(args: argparse.Namespace) -> int:
    """`token new`: a fresh token on stdout once, then its tokens-file line (the server keeps only the hash)."""
    from lightmem_mcp.auth import new_token, token_line

    scopes = [scope.strip() for scope in args.scopes.split(",") if scope.strip()]
    token = new_token()
    try:
        line = token_line(token, args.tenant, scopes, args.name)
    except ConfigError as exc:
        print(f"lightmem-mcp token new: {exc}", file=sys.stderr)
        return 2
    if args.write is not None:
        from lightmem_mcp.privacy import append_private

        try:
            tightened = append_private(args.write, line + "\n")
        except OSError as exc:
            print(f"lightmem-mcp token new: {args.write}: {exc.strerror}; nothing written", file=sys.stderr)
            return 1
        # Only the token on stdout, so that TOKEN=$(lightmem-mcp token new ... --write FILE) works.
        print(token)
        note = " (its mode was wider: now 0600)" if tightened else ""
        print(f"lightmem-mcp token new: granted in {args.write}{note}; the token is shown only now", file=sys.stderr)
        return 0
    print("# The token, shown only now. Clients send it as: Authorization: Bearer <token>")
    print(token)
    print("# Add this line to the file LIGHTMEM_AUTH_TOKENS_FILE names (or to LIGHTMEM_AUTH_TOKENS):")
    print(line)
    return 0


def _transfer(args: argparse.Namespace, settings: Settings) -> int:
    """`export` / `import`: open the store without background work, move the points, report on stderr."""
    from lightmem_mcp.errors import InvalidInput, LightMemError
    from lightmem_mcp.memory import Memory
    from lightmem_mcp.shared import holding_store
    from lightmem_mcp.transfer import check_output

    if args.command == "export" and args.user is None and (args.agent or args.session):
        print("lightmem-mcp export: --agent and --session narrow a --user; give --user too", file=sys.stderr)
        return 2
    target = None
    if args.command == "export" and args.output != "-":
        try:
            target = check_output(args.output)  # before loading any model
        except InvalidInput as exc:
            print(f"lightmem-mcp export: {exc}", file=sys.stderr)
            return 2
    with ExitStack() as held:
        try:
            held.enter_context(holding_store(settings, args.command))
            memory = Memory.open_idle(settings)
        except LightMemError as exc:
            print(f"lightmem-mcp {args.command}: {exc}", file=sys.stderr)
            return 1
        return _move(args, memory, target)


def _move(args: argparse.Namespace, memory: Memory, target: Path | None) -> int:
    """The body of `export` / `import` over an open store; closes it."""
    from lightmem_mcp.errors import InvalidInput, LightMemError
    from lightmem_mcp.records import Scope
    from lightmem_mcp.transfer import atomic_output, open_export

    try:
        if args.command == "export":
            scope = None if args.user is None else Scope(args.user, args.agent, args.session)
            if target is None:
                done = memory.export_records(sys.stdout, scope, vectors=args.vectors)
            else:
                with atomic_output(target) as out:
                    done = memory.export_records(out, scope, vectors=args.vectors)
            kinds = ", ".join(f"{n} {kind}" for kind, n in done.by_kind.items()) or "nothing"
            print(f"lightmem-mcp export: {done.points} points ({kinds}) to {args.output}", file=sys.stderr)
        else:
            with open_export(args.file) as source, _interrupt_stops() as interrupted:
                result = memory.import_records(source, stop=interrupted.is_set)
            copies = f", {result.copied} copied into an edited scope" if result.copied else ""
            if result.cancelled:
                print(
                    f"lightmem-mcp import: interrupted: {result.points} points written from {args.file}"
                    f"{copies}, {result.points_left} not; import the same file again to write the rest",
                    file=sys.stderr,
                )
                return 130
            print(
                f"lightmem-mcp import: {result.points} points from {args.file} "
                f"({result.embedded} embedded here, {result.vectors_kept} vectors kept{copies})",
                file=sys.stderr,
            )
    except OSError as exc:
        print(f"lightmem-mcp {args.command}: {exc.filename or ''}: {exc.strerror}", file=sys.stderr)
        return 1
    except InvalidInput as exc:
        done_what = "nothing written" if args.command == "import" else "no file written"
        print(f"lightmem-mcp {args.command} refused, {done_what}: {exc}", file=sys.stderr)
        return 1
    except LightMemError as exc:
        print(f"lightmem-mcp {args.command} failed: {exc}", file=sys.stderr)
        return 1
    finally:
        memory.close()
    return 0


@contextmanager
def _interrupt_stops() -> Iterator[threading.Event]:
    """An event Ctrl-C sets, so that an import stops between two write batches; a second Ctrl-C
    interrupts at once (the file can be imported again either way)."""
    interrupted = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield interrupted  # signal handlers belong to the main thread
        return

    def stop_softly(signum: int, frame: FrameType | None) -> None:
        interrupted.set()
        signal.signal(signal.SIGINT, previous)
        print("lightmem-mcp import: stopping after this batch (Ctrl-C again to stop at once)", file=sys.stderr)

    found = signal.getsignal(signal.SIGINT)
    previous = signal.default_int_handler if found is None else found  # None: not set from Python
    signal.signal(signal.SIGINT, stop_softly)
    try:
        yield interrupted
    finally:
        signal.signal(signal.SIGINT, previous)
