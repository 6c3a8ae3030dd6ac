"""Run the official MCP conformance suite against `lightmem-mcp serve --transport http`.

Starts the server on a free loopback port with a fresh data directory and auth off (the suite's
client sends no credentials, and its DNS-rebinding scenario is written for a local server
without auth), waits for `/healthz`, then runs every scenario that applies to this server, one
suite process per scenario, and stops the server. Exits 1 when any of them fails.

Which scenarios apply is decided from what the server declares, never from what passes:

* protocol scenarios run when the server has the capability they test (`logging-set-level`
  only if it declares `logging`, `completion-complete` only with `completions`, ...);
* fixture scenarios call tools, prompts or resources of the suite's reference server
  (`test_simple_text`, `test://static-text`, ...); they run only if this server lists them;
* a scenario this script does not know stops the run: a new suite version must be classified here.

    make conformance                                   # installs Node 22 + the suite into .node/ first
    .venv/bin/python scripts/conformance/run.py [--node-dir .node] [--results DIR] [--url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SUITE_JS = Path("node_modules/@modelcontextprotocol/conformance/dist/index.js")
NODE_BIN = Path("node_modules/node/bin/node")
READY_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 30.0
SCENARIO_TIMEOUT_S = 120.0


@dataclass
class Offer:
    """What the server under test declares: capabilities, and the names of its tools, prompts, resources."""

    capabilities: dict[str, Any]
    tools: set[str] = field(default_factory=set)
    prompts: set[str] = field(default_factory=set)
    resources: set[str] = field(default_factory=set)
    templates: set[str] = field(default_factory=set)


Rule = Callable[[Offer], str | None]  # None: applies; else why it does not


def always(_: Offer) -> str | None:
    """Transport and lifecycle scenarios every MCP server over HTTP must pass."""
    return None


def capability(name: str, sub: str | None = None) -> Rule:
    """Applies when the server declares the capability (and the sub-capability, when given)."""

    def rule(offer: Offer) -> str | None:
        declared = offer.capabilities.get(name)
        if declared is None:
            return f"the server does not declare the `{name}` capability"
        if sub is not None and not (isinstance(declared, dict) and declared.get(sub)):
            return f"the server does not declare `{name}.{sub}`"
        return None

    return rule


def fixture(kind: str, name: str) -> Rule:
    """Applies when the server offers the reference server's tool / prompt / resource the scenario calls."""

    def rule(offer: Offer) -> str | None:
        offered = {
            "tool": offer.tools,
            "prompt": offer.prompts,
            "resource": offer.resources,
            "template": offer.templates,
        }[kind]
        return None if name in offered else f"calls the reference server's {kind} `{name}`, which this server lacks"

    return rule


def both(first: Rule, second: Rule) -> Rule:
    """Applies when both rules do."""
    return lambda offer: first(offer) or second(offer)


WATCHED = both(capability("resources", "subscribe"), fixture("resource", "test://watched-resource"))

# Every server scenario of the pinned suite (scripts/conformance/package.json), and when it applies.
SCENARIOS: dict[str, Rule] = {
    "server-initialize": always,
    "ping": always,
    "tools-list": capability("tools"),
    "resources-list": capability("resources"),
    "prompts-list": capability("prompts"),
    "logging-set-level": capability("logging"),
    "completion-complete": capability("completions"),
    # Concurrent POSTs on one session; a stateless server gives no session id, and the suite says so (a warning).
    "server-sse-multiple-streams": always,
    # The suite sends Host / Origin evil.example.com and expects a 4xx; run on loopback with auth off.
    "dns-rebinding-protection": always,
    "tools-call-simple-text": fixture("tool", "test_simple_text"),
    "tools-call-image": fixture("tool", "test_image_content"),
    "tools-call-audio": fixture("tool", "test_audio_content"),
    "tools-call-embedded-resource": fixture("tool", "test_embedded_resource"),
    "tools-call-mixed-content": fixture("tool", "test_multiple_content_types"),
    "tools-call-with-logging": fixture("tool", "test_tool_with_logging"),
    "tools-call-error": fixture("tool", "test_error_handling"),
    "tools-call-with-progress": fixture("tool", "test_tool_with_progress"),
    "tools-call-sampling": fixture("tool", "test_sampling"),
    "tools-call-elicitation": fixture("tool", "test_elicitation"),
    "elicitation-sep1034-defaults": fixture("tool", "test_elicitation_sep1034_defaults"),
    "elicitation-sep1330-enums": fixture("tool", "test_elicitation_sep1330_enums"),
    "json-schema-2020-12": fixture("tool", "json_schema_2020_12_tool"),
    "server-sse-polling": fixture("tool", "test_reconnection"),
    "resources-read-text": fixture("resource", "test://static-text"),
    "resources-read-binary": fixture("resource", "test://static-binary"),
    "resources-templates-read": fixture("template", "test://template/{id}/data"),
    "resources-subscribe": WATCHED,
    "resources-unsubscribe": WATCHED,
    "prompts-get-simple": fixture("prompt", "test_simple_prompt"),
    "prompts-get-with-args": fixture("prompt", "test_prompt_with_arguments"),
    "prompts-get-embedded-resource": fixture("prompt", "test_prompt_with_embedded_resource"),
    "prompts-get-with-image": fixture("prompt", "test_prompt_with_image"),
}


@dataclass
class Outcome:
    """One scenario's run: the suite's exit status and its checks by status."""

    scenario: str
    exit_code: int
    checks: list[dict[str, Any]]

    def count(self, status: str) -> int:
        """Checks with this status (SUCCESS, FAILURE, WARNING, INFO)."""
        return sum(1 for check in self.checks if check.get("status") == status)

    @property
    def passed(self) -> bool:
        """The suite's verdict: exit 0 and no failed check."""
        return self.exit_code == 0 and self.count("FAILURE") == 0


# -- the suite -------------------------------------------------------------------------


class Suite:
    """The conformance CLI under `node_dir`, run with the Node 22 installed beside it."""

    def __init__(self, node_dir: Path) -> None:
        self.node = node_dir / NODE_BIN
        self.script = node_dir / SUITE_JS
        for path in (self.node, self.script):
            if not path.exists():
                raise SystemExit(f"{path} is missing: run `make conformance` (it installs Node 22 and the suite)")

    def versions(self) -> str:
        """The suite's version and Node's."""
        node = subprocess.run([str(self.node), "--version"], capture_output=True, text=True, check=True)
        return f"{self._run('--version').stdout.strip()} on Node {node.stdout.strip()}"

    def scenarios(self) -> list[str]:
        """Every server scenario the suite knows, active and pending."""
        listing = self._run("list", "--server").stdout
        return [line.strip()[2:].split(" ")[0] for line in listing.splitlines() if line.strip().startswith("- ")]

    def run(self, url: str, scenario: str, results: Path) -> Outcome:
        """Run one scenario; its checks come from the checks.json the suite writes."""
        out = results / scenario
        done = self._run("server", "--url", url, "--scenario", scenario, "--output-dir", str(out), check=False)
        (results / f"{scenario}.log").write_text(done.stdout + done.stderr, encoding="utf-8")
        checks: list[dict[str, Any]] = []
        for path in sorted(out.glob("*/checks.json")):
            checks.extend(json.loads(path.read_text(encoding="utf-8")))
        if not checks:  # the suite itself failed: keep its output as the failure
            checks = [{"id": scenario, "status": "FAILURE", "errorMessage": (done.stderr or done.stdout)[-2000:]}]
        return Outcome(scenario, done.returncode, checks)

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "NO_COLOR": "1", "PATH": f"{self.node.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        return subprocess.run(
            [str(self.node), str(self.script), *args],
            capture_output=True,
            text=True,
            check=check,
            env=env,
            timeout=SCENARIO_TIMEOUT_S,
        )


# -- the server ------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def http_server(data_dir: Path, log_path: Path) -> Iterator[str]:
    """`lightmem-mcp serve --transport http` on a free loopback port, auth off; yields the /mcp URL."""
    port = free_port()
    env = {
        **os.environ,
        "LIGHTMEM_DATA_DIR": str(data_dir),
        "LIGHTMEM_AUTH_MODE": "none",
        # No protocol scenario calls a tool: models would load (or download) for nothing.
        "LIGHTMEM_WARMUP": "false",
        "LIGHTMEM_LOG_LEVEL": os.environ.get("LIGHTMEM_LOG_LEVEL", "WARNING"),
    }
    command = [sys.executable, "-m", "lightmem_mcp", "serve", "--transport", "http", "--host", "127.0.0.1"]
    with open(log_path, "w", encoding="utf-8") as log:
        process = subprocess.Popen([*command, "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_healthy(f"http://127.0.0.1:{port}/healthz", process, log_path)
            yield f"http://127.0.0.1:{port}/mcp"
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_healthy(url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    """Poll `/healthz` until it answers 200; fail with the server's log if it exits or never does."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with {process.returncode}:\n{log_path.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} did not answer within {READY_TIMEOUT_S:.0f} s:\n{log_path.read_text()[-4000:]}")


async def read_offer(url: str) -> Offer:
    """Initialize as an MCP client and list what the server offers (only the lists it declares)."""
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    async with streamable_http_client(url) as (read, write), ClientSession(read, write) as session:
        init = await session.initialize()
        caps = init.capabilities.model_dump(exclude_none=True)
        offer = Offer(caps)
        if "tools" in caps:
            offer.tools = {tool.name for tool in (await session.list_tools()).tools}
        if "prompts" in caps:
            offer.prompts = {prompt.name for prompt in (await session.list_prompts()).prompts}
        if "resources" in caps:
            offer.resources = {str(resource.uri) for resource in (await session.list_resources()).resources}
            templates = (await session.list_resource_templates()).resource_templates
            offer.templates = {template.uri_template for template in templates}
        return offer


# -- the run ---------------------------------------------------------------------------


def plan(suite_scenarios: list[str], offer: Offer) -> tuple[list[str], dict[str, str]]:
    """The scenarios to run, and why each other one does not apply; stops on a scenario not classified here."""
    unknown = [name for name in suite_scenarios if name not in SCENARIOS]
    if unknown:
        raise SystemExit(
            f"the suite has server scenarios this script does not classify: {', '.join(unknown)}; "
            "add them to SCENARIOS in scripts/conformance/run.py"
        )
    applies: list[str] = []
    skipped: dict[str, str] = {}
    for name in suite_scenarios:
        reason = SCENARIOS[name](offer)
        if reason is None:
            applies.append(name)
        else:
            skipped[name] = reason
    return applies, skipped


def report(outcomes: list[Outcome], skipped: dict[str, str]) -> None:
    """Per scenario: the verdict and its checks; failed and warning checks with their messages."""
    print("\n| scenario | result | checks passed | failed | warnings |")
    print("|---|---|---|---|---|")
    for outcome in outcomes:
        verdict = "pass" if outcome.passed else "FAIL"
        counts = (outcome.count("SUCCESS"), outcome.count("FAILURE"), outcome.count("WARNING"))
        print(f"| {outcome.scenario} | {verdict} | {counts[0]} | {counts[1]} | {counts[2]} |")
    for outcome in outcomes:
        for check in outcome.checks:
            if check.get("status") in ("FAILURE", "WARNING"):
                message = check.get("errorMessage") or json.dumps(check.get("details"))
                print(f"  {outcome.scenario} / {check.get('id')}: {check['status']}: {message}")
    print(f"\nnot applicable ({len(skipped)}):")
    for name, reason in skipped.items():
        print(f"  {name}: {reason}")


def main() -> int:
    """Start the server (unless --url), run the applicable scenarios, stop it; 1 if any scenario failed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--node-dir", type=Path, default=ROOT / ".node", help="where `make conformance` installs")
    parser.add_argument("--results", type=Path, help="keep the suite's checks and logs in a new folder under this one")
    parser.add_argument("--url", help="test this running streamable HTTP endpoint instead of starting a server")
    args = parser.parse_args()

    suite = Suite(args.node_dir.resolve())
    print(f"MCP conformance suite {suite.versions()}")
    with tempfile.TemporaryDirectory(prefix="lightmem-conformance-") as tmp:
        work = Path(tmp)
        results = args.results.resolve() / time.strftime("%Y%m%dT%H%M%S") if args.results else work / "results"
        results.mkdir(parents=True)
        with _endpoint(args.url, work) as url:
            offer = asyncio.run(read_offer(url))
            print(f"{url}: capabilities {sorted(offer.capabilities)}, {len(offer.tools)} tools")
            applies, skipped = plan(suite.scenarios(), offer)
            outcomes = []
            for name in applies:
                outcome = suite.run(url, name, results)
                print(f"{name}: {'pass' if outcome.passed else 'FAIL'}", flush=True)
                outcomes.append(outcome)
        report(outcomes, skipped)
        failed = [o.scenario for o in outcomes if not o.passed]
        log = work / "server.log"
        if failed and log.exists():
            print(f"\nserver log (last 4000 characters):\n{log.read_text()[-4000:]}")
        if args.results:
            print(f"\nsuite output: {results}")
    summary = f"{len(outcomes) - len(failed)} of {len(outcomes)} applicable scenarios passed"
    print(f"\n{summary}; failed: {', '.join(failed)}" if failed else f"\n{summary}")
    return 1 if failed else 0


@contextmanager
def _endpoint(url: str | None, work: Path) -> Iterator[str]:
    if url is not None:
        yield url
        return
    with http_server(work / "data", work / "server.log") as started:
        yield started


if __name__ == "__main__":
    sys.exit(main())
