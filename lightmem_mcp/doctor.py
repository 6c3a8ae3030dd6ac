"""`lightmem-mcp doctor`: the state of every model and backend, with what to do about each problem."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from lightmem_mcp.compressor import Compressor
from lightmem_mcp.config import Settings
from lightmem_mcp.embedder import SentenceTransformerEmbedder
from lightmem_mcp.indexing import store_layout
from lightmem_mcp.lexical import LexicalEncoder
from lightmem_mcp.llm import LLMClient
from lightmem_mcp.privacy import exposed
from lightmem_mcp.shared import describe_owner
from lightmem_mcp.spend import SpendGuard
from lightmem_mcp.store import open_store


class _Pong(BaseModel):
    ok: bool


def run_doctor(settings: Settings, *, ping_llm: bool = False) -> int:
    """Print one JSON object per component; exit 1 when memories cannot be stored or searched."""
    failed = False

    def check(name: str, essential: bool, probe: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
        nonlocal failed
        started = time.perf_counter()
        try:
            report = {"component": name, "ok": True, **probe()}
        except Exception as exc:
            report = {"component": name, "ok": False, "error": str(exc)}
            failed = failed or essential
        report["seconds"] = round(time.perf_counter() - started, 2)
        print(json.dumps(report, default=str), flush=True)
        return report if report["ok"] else None

    embedder: list[SentenceTransformerEmbedder] = []

    def embedding() -> dict[str, Any]:
        embedder.append(SentenceTransformerEmbedder(settings.embedding))
        e = embedder[0]
        return {"model": e.id, "dimension": e.dimension, "device": e.device, "source": e.origin}

    owner: dict[str, Any] = {}

    def ownership() -> dict[str, Any]:
        owner.update(describe_owner(settings))
        return owner

    def store() -> dict[str, Any]:
        kind = "qdrant server" if settings.store.qdrant_url else "embedded qdrant edge"
        where = settings.store.qdrant_url or str(settings.store.embedded_path)
        if owner.get("owner_pid"):  # open in a server now: reading it here would fail on its lock
            return {"backend": kind, "location": where, "served_by_pid": owner["owner_pid"]}
        e = embedder[0]
        lexical = LexicalEncoder()
        opened = open_store(settings.store, store_layout(e, lexical))
        try:
            report: dict[str, Any] = {"backend": kind, "location": where, "collection": settings.store.collection}
            guard = SpendGuard(settings.budget, opened)
            if guard.enabled:
                report["budget"] = guard.status(None).model_dump(exclude={"user_tokens"})
            return report
        finally:
            opened.close()

    def compression() -> dict[str, Any]:
        compressor = Compressor(settings.compression)
        status = compressor.load()
        return {**compressor.describe(), "ok": status != "unavailable"}

    def llm() -> dict[str, Any]:
        client = LLMClient(settings.llm)
        report = client.describe()
        if ping_llm and client.configured:
            result = client.complete_json("doctor", 'Answer with the JSON object {"ok": true}.', "ping", _Pong)
            report["ping"] = {"ok": result.value.ok, "seconds": round(result.call.seconds, 2)}
        return report

    # Before the store check: opening the store makes its directory private, which would hide the finding.
    check("privacy", False, lambda: check_privacy(settings))
    if not settings.store.qdrant_url:
        check("owner", False, ownership)
    check("embedding", True, embedding)
    if embedder:
        check("store", True, store)
    check("compression", False, compression)
    check("llm", False, llm)
    if failed:
        print("lightmem-mcp doctor: memories cannot be stored or searched; see the errors above", file=sys.stderr)
    return 1 if failed else 0


def check_privacy(settings: Settings) -> dict[str, Any]:
    """Whether other users can read the data directory, the embedded store or the tokens file."""
    report: dict[str, Any] = {}
    warnings = []
    store = settings.store
    if store.qdrant_url:
        report["data"] = "on the Qdrant server: protect its volumes (see docs/deploy-huawei-cce.md)"
    else:
        roots = list(dict.fromkeys([store.data_dir, store.embedded_path]))
        report["checked"] = [str(root) for root in roots]
        # The data directory itself; its files are those of the store (and of nothing else lightmem writes).
        wider = [*exposed(store.data_dir, recursive=False), *exposed(store.embedded_path)]
        wider = list({item.path: item for item in wider}.values())
        if wider:
            shown = ", ".join(item.describe() for item in wider[:5])
            more = f" and {len(wider) - 5} more" if len(wider) > 5 else ""
            warnings.append(
                f"{len(wider)} path(s) other users can read or enter: {shown}{more}; memories are kept in clear: "
                f"run `chmod -R go-rwx {' '.join(str(r) for r in roots)}` (the server makes the store "
                "directory 0700 and its files 0600 when it opens it)"
            )
    tokens = settings.auth.tokens_file
    if tokens is not None:
        report["tokens_file"] = str(tokens)
        # Group read is how Kubernetes mounts a Secret for the pod's fsGroup; other users are never needed.
        world = [item for item in exposed(tokens, recursive=False) if item.mode & 0o007]
        if world:
            warnings.append(
                f"the tokens file {world[0].describe()} is readable by every user: run `chmod 600 {tokens}`"
            )
    if warnings:
        report["ok"] = False
        report["warning"] = "; ".join(warnings)
    return report
