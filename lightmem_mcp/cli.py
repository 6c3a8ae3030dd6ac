"""`lightmem-mcp` command line: serve the MCP server (stdio by default)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from lightmem_mcp import __version__
from lightmem_mcp.config import load_settings
from lightmem_mcp.errors import ConfigError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lightmem-mcp", description="Long-term memory MCP server.")
    parser.add_argument("--version", action="version", version=f"lightmem-mcp {__version__}")
    parser.add_argument(
        "--config", type=Path, default=None, help="TOML settings file; LIGHTMEM_* env vars override it."
    )
    commands = parser.add_subparsers(dest="command")
    serve = commands.add_parser("serve", help="Run the MCP server (the default command).")
    serve.add_argument("--transport", choices=["stdio"], default="stdio", help="MCP transport.")
    doctor = commands.add_parser("doctor", help="Check every model and backend, then exit.")
    doctor.add_argument("--ping-llm", action="store_true", help="Also make one small call to the LLM.")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `lightmem-mcp` console script."""
    args = _parser().parse_args(argv)
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

    from lightmem_mcp.server import build_server

    server = build_server(settings)
    server.run("stdio")
    return 0
