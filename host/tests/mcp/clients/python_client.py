"""The official Python SDK (`mcp` 2.3.0) against Maestro: the same checks as the
JavaScript clients (common.mjs), with the same command line, plus

    --mode auto|legacy   auto (the SDK default) probes `server/discover` and speaks
                         2026-07-28 when the server does; legacy forces the
                         2025-era initialize handshake

and the agent checks (--agents PERSONA --expect-answer TEXT --expect-document TEXT), as
common.mjs's runAgentChecks.

Run with the venv of scripts/mcp-clients.sh: `$MAESTRO_MCP_CLIENTS/venv/bin/python`.
Each check prints `ok: ...` on stdout; the first failure prints `FAIL: ...` on stderr
and exits 1.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Any, NoReturn

import anyio
import httpx2
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError


def fail(check: str, message: str) -> NoReturn:
    # Exit at once: unwinding the SDK's task groups could wait on the server. A stdio
    # server sees its stdin close.
    sys.stdout.flush()
    print(f"FAIL: {check}: {message}", file=sys.stderr, flush=True)
    os._exit(1)


def ok(check: str, detail: str = "") -> None:
    print(f"ok: {check}" + (f" ({detail})" if detail else ""), flush=True)


@dataclass
class Options:
    url: str | None = None
    token: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    tools: list[str] | None = None
    prompts: list[str] = field(default_factory=list)
    plugins: list[str] = field(default_factory=list)
    denied_plugin: str | None = None
    only: str | None = None
    mode: str = "auto"
    command: list[str] | None = None
    agents: str | None = None
    expect_answer: str | None = None
    expect_document: str | None = None


def parse_args(argv: list[str]) -> Options:
    options = Options()
    args = iter(enumerate(argv))
    for i, arg in args:
        if arg == "--":
            options.command = argv[i + 1 :]
            break

        def value() -> str:
            try:
                return next(args)[1]
            except StopIteration:
                fail("usage", f"{arg} needs a value")

        def names() -> list[str]:
            return [n.strip() for n in value().split(",") if n.strip()]

        if arg == "--url":
            options.url = value()
        elif arg == "--token":
            options.token = value()
        elif arg == "--env":
            key, eq, val = value().partition("=")
            if not key or not eq:
                fail("usage", "--env expects KEY=VALUE")
            options.env[key] = val
        elif arg == "--tools":
            options.tools = names()
        elif arg == "--prompts":
            options.prompts = names()
        elif arg == "--plugins":
            options.plugins = names()
        elif arg == "--denied-plugin":
            options.denied_plugin = value()
        elif arg == "--only":
            options.only = value()
        elif arg == "--mode":
            options.mode = value()
        elif arg == "--agents":
            options.agents = value()
        elif arg == "--expect-answer":
            options.expect_answer = value()
        elif arg == "--expect-document":
            options.expect_document = value()
        else:
            fail("usage", f"unknown argument {arg}")
    if options.tools is None and options.agents is None:
        fail("usage", "--tools (or --agents) is required")
    if (options.url is None) == (options.command is None):
        fail("usage", "give either --url URL --token TOKEN or -- COMMAND ARGS")
    if options.url is not None and options.token is None:
        fail("usage", "--url needs --token")
    if options.command is not None and not options.command:
        fail("usage", "no command after --")
    if options.only not in (None, "tools"):
        fail("usage", f'--only {options.only}: only "tools" is known')
    if options.mode not in ("auto", "legacy"):
        fail("usage", f"--mode {options.mode}: auto or legacy")
    return options


def show(value: Any) -> str:
    if hasattr(value, "model_dump"):
        value = value.model_dump(mode="json", by_alias=True, exclude_none=True)
    return json.dumps(value, ensure_ascii=False)


def text(result: Any) -> str:
    return "\n".join(c.text for c in result.content if getattr(c, "type", None) == "text")


def error_text(error: BaseException) -> str:
    # anyio task groups wrap what failed inside them: name the leaves.
    if isinstance(error, BaseExceptionGroup):
        return "; ".join(error_text(e) for e in error.exceptions)
    code = f" (code {error.code})" if isinstance(error, MCPError) else ""
    return f"{type(error).__name__}{code}: {error}"


class Step:
    """`async with Step("check"):` fails the check on any exception inside."""

    def __init__(self, check: str) -> None:
        self.check = check

    async def __aenter__(self) -> Step:
        return self

    async def __aexit__(self, _type: Any, error: BaseException | None, _tb: Any) -> bool:
        if error is not None and not isinstance(error, anyio.get_cancelled_exc_class()):
            fail(self.check, error_text(error))
        return False


async def expect_error(check: str, call: Any) -> BaseException:
    try:
        value = await call
    except Exception as error:  # noqa: BLE001 - any failure is what the check wants
        return error
    fail(check, f"expected an error, got {show(value)}")


async def run_checks(client: Client, options: Options) -> None:
    async with Step("tools/list"):
        tools = (await client.list_tools(cache_mode="refresh")).tools
    names = sorted(t.name for t in tools)
    if names != sorted(options.tools or []):
        fail("tools/list", f"expected exactly {sorted(options.tools or [])}, got {names}")
    for tool in tools:
        if not re.fullmatch(r"[a-z0-9_-]+\.[a-z0-9_-]+", tool.name):
            fail("tools/list", f"tool name {tool.name} is not plugin.tool")
        if tool.input_schema.get("type") != "object":
            fail("tools/list", f"{tool.name}: inputSchema is not an object schema: {show(tool.input_schema)}")
    calc = next((t for t in tools if t.name == "calc.evaluate"), None)
    if calc is not None:
        if not calc.output_schema or calc.output_schema.get("type") != "object":
            fail("tools/list", f"calc.evaluate has no outputSchema: {show(calc)}")
        if calc.annotations is None or calc.annotations.read_only_hint is not True:
            fail("tools/list", f"calc.evaluate is not annotated read-only: {show(calc)}")
    ok("tools/list", f"{len(tools)} tools")
    if options.only == "tools":
        return

    async with Step("calc.evaluate"):
        evaluated = await client.call_tool("calc.evaluate", {"expression": "6*7"})
    if evaluated.is_error:
        fail("calc.evaluate", f"isError result: {show(evaluated)}")
    if evaluated.structured_content != {"value": 42}:
        fail("calc.evaluate", f'structuredContent is not {{"value":42}}: {show(evaluated)}')
    if "42" not in text(evaluated):
        fail("calc.evaluate", f"no text content with the value: {show(evaluated)}")
    ok("calc.evaluate", text(evaluated))

    args = {"word": "héllo", "list": [1, 2.5, None], "nested": {"deep": True}}
    async with Step("hostile.echo"):
        echoed = await client.call_tool("hostile.echo", args)
    if echoed.is_error or echoed.structured_content != args:
        fail("hostile.echo", f"structuredContent is not the arguments {show(args)}: {show(echoed)}")
    ok("hostile.echo")

    async with Step("hostile.fail"):
        failed = await client.call_tool("hostile.fail", {})
    if failed.is_error is not True:
        fail("hostile.fail", f"expected isError: true, got {show(failed)}")
    if "boom" not in text(failed):
        fail("hostile.fail", f'the error result does not name the cause "boom": {show(failed)}')
    ok("hostile.fail", text(failed))

    unknown = await expect_error("unknown tool", client.call_tool("hostile.no_such_tool", {}))
    if not isinstance(unknown, MCPError):
        fail("unknown tool", f"expected a JSON-RPC error, got {error_text(unknown)}")
    if unknown.code != -32602:
        fail("unknown tool", f"expected JSON-RPC error -32602 (invalid params), got {error_text(unknown)}")
    ok("unknown tool", error_text(unknown))

    async with Step("prompts/list"):
        prompts = (await client.list_prompts(cache_mode="bypass")).prompts
    prompt_names = sorted(p.name for p in prompts)
    if prompt_names != sorted(options.prompts):
        fail("prompts/list", f"expected exactly {sorted(options.prompts)}, got {prompt_names}")
    ok("prompts/list", f"{len(prompts)} prompts")
    critic = next((p for p in prompts if p.name == "personas.critic"), None)
    if critic is not None:
        arguments = {a.name: a for a in critic.arguments or []}
        if "idea" not in arguments or arguments["idea"].required is not True or "focus" not in arguments or arguments["focus"].required:
            fail("prompts/list", f'personas.critic should take a required "idea" and an optional "focus": {show(critic)}')
        idea = "a bicycle-sharing service for the moon"
        async with Step("prompts/get"):
            prompt = await client.get_prompt("personas.critic", {"idea": idea, "focus": "market"})
        rendered = "\n".join(getattr(m.content, "text", "") for m in prompt.messages)
        if idea not in rendered:
            fail("prompts/get", f"the rendered prompt does not contain the idea: {show(prompt)}")
        ok("prompts/get", f"{len(prompt.messages)} messages")

    async with Step("resources/templates/list"):
        templates = (await client.list_resource_templates(cache_mode="bypass")).resource_templates
    if not any(t.uri_template == "maestro://plugins/{name}" for t in templates):
        fail("resources/templates/list", f"no maestro://plugins/{{name}} template: {[show(t) for t in templates]}")
    ok("resources/templates/list")
    async with Step("resources/list"):
        resources = (await client.list_resources(cache_mode="bypass")).resources
    uris = [str(r.uri) for r in resources]
    if "maestro://policy/effective" not in uris:
        fail("resources/list", f"no maestro://policy/effective: {uris}")
    plugin_uris = sorted(u for u in uris if u.startswith("maestro://plugins/"))
    expected_plugin_uris = sorted(f"maestro://plugins/{p}" for p in options.plugins)
    if plugin_uris and plugin_uris != expected_plugin_uris:
        fail("resources/list", f"plugin resources should be exactly {expected_plugin_uris}, got {plugin_uris}")
    ok("resources/list", json.dumps(uris))

    for plugin in options.plugins:
        uri = f"maestro://plugins/{plugin}"
        async with Step(f"read {uri}"):
            read = await client.read_resource(uri, cache_mode="bypass")
        contents = read.contents[0] if read.contents else None
        try:
            manifest = json.loads(getattr(contents, "text", None) or "")
        except ValueError:
            fail(f"read {uri}", f"not JSON text: {show(read)}")
        if not isinstance(manifest, dict) or manifest.get("name") != plugin:
            fail(f"read {uri}", f"the manifest does not name {plugin}: {show(read)}")
        if str(contents.uri) != uri:
            fail(f"read {uri}", f"contents carry uri {contents.uri}")
        if contents.mime_type != "application/json":
            fail(f"read {uri}", f"mimeType {contents.mime_type}, expected application/json")
        ok(f"read {uri}")
    if options.denied_plugin:
        uri = f"maestro://plugins/{options.denied_plugin}"
        denied = await expect_error(f"read {uri}", client.read_resource(uri, cache_mode="bypass"))
        if not isinstance(denied, MCPError):
            fail(f"read {uri}", f"expected a JSON-RPC error, got {error_text(denied)}")
        ok(f"read {uri} is refused", error_text(denied))
    async with Step("read maestro://policy/effective"):
        policy = await client.read_resource("maestro://policy/effective", cache_mode="bypass")
    policy_text = getattr(policy.contents[0], "text", "") if policy.contents else ""
    try:
        effective = json.loads(policy_text)
    except ValueError:
        fail("read maestro://policy/effective", f"not JSON text: {show(policy)}")
    if not isinstance(effective, dict) or "calc" not in policy_text:
        fail("read maestro://policy/effective", f"not a JSON object mentioning the calc grant: {policy_text}")
    ok("read maestro://policy/effective")

    progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append((value, total, message))

    async with Step("hostile.progress"):
        progressed = await client.call_tool("hostile.progress", {"n": 3}, progress_callback=on_progress)
    if progressed.is_error:
        fail("hostile.progress", f"isError result: {show(progressed)}")
    if [p[0] for p in progress] != [1, 2, 3] or any(p[1] != 3 for p in progress):
        fail("hostile.progress", f"expected progress 1, 2, 3 of 3 before the result, got {progress}")
    ok("hostile.progress", str(progress))

    started = time.monotonic()
    spun: Any = None
    with anyio.move_on_after(0.3) as scope:
        async with Step("cancel hostile.spin"):
            spun = await client.call_tool("hostile.spin", {})
    elapsed = time.monotonic() - started
    if not scope.cancelled_caught:
        fail("cancel hostile.spin", f"the call returned instead of being cancelled: {show(spun)}")
    if elapsed > 2.3:
        fail("cancel hostile.spin", f"the call stopped {elapsed - 0.3:.2f} s after the cancel")
    ok("cancel hostile.spin", f"stopped {(elapsed - 0.3) * 1000:.0f} ms after the cancel")

    async with Step("hostile.noop after cancel"):
        after = await client.call_tool("hostile.noop", {})
    if after.is_error or text(after) != "ok":
        fail("hostile.noop after cancel", f'expected "ok", got {show(after)}')
    ok("hostile.noop after cancel")


UPDATED: list[str] = []
UPDATE_SEEN = anyio.Event()


async def on_message(message: Any) -> None:
    from mcp import ResourceUpdatedNotification

    inner = getattr(message, "root", message)
    if isinstance(inner, ResourceUpdatedNotification):
        UPDATED.append(str(inner.params.uri))
        UPDATE_SEEN.set()


async def run_agent_checks(client: Client, options: Options) -> None:
    progress: list[tuple[float, str | None]] = []

    async def on_progress(value: float, _total: float | None, message: str | None) -> None:
        progress.append((value, message))

    arguments = {"personas": [options.agents], "strategy": "sequence", "message": "Write the plan."}
    async with Step("runs.start"):
        started = await client.call_tool("runs.start", arguments, progress_callback=on_progress)
    if started.is_error or text(started) != options.expect_answer:
        fail("runs.start", f"expected the answer {options.expect_answer!r}: {show(started)}")
    values = [p[0] for p in progress]
    if len(values) < 5 or any(b <= a for a, b in zip(values, values[1:])):
        fail("runs.start", f"expected at least 5 increasing progress reports: {progress}")
    if not any((m or "").startswith("document ") for _, m in progress):
        fail("runs.start", f"no progress report of the document written: {progress}")
    ok("runs.start", f"{len(progress)} progress reports")

    async with Step("resources/list"):
        listed = await client.list_resources()
    uris = [str(r.uri) for r in listed.resources]
    uri = next((u for u in uris if u.startswith("maestro://documents/")), None)
    if uri is None:
        fail("resources/list", f"no maestro://documents/ resource: {uris}")
    async with Step(f"read {uri}"):
        read = await client.read_resource(uri)
    contents = read.contents[0]
    if getattr(contents, "text", None) != options.expect_document or contents.mime_type != "text/markdown":
        fail(f"read {uri}", f"expected {options.expect_document!r} as text/markdown: {show(read)}")
    ok(f"read {uri}")

    if client.protocol_version >= "2026-07-28":
        return
    async with Step("resources/subscribe"):
        await client.subscribe_resource(uri)
    document = uri.removeprefix("maestro://documents/")
    async with Step("documents.edit"):
        edited = await client.call_tool(
            "documents.edit", {"id": document, "base_version": 1, "content": "# Edited over MCP\n"}
        )
    if edited.is_error:
        fail("documents.edit", f"isError result: {show(edited)}")
    with anyio.move_on_after(10):
        await UPDATE_SEEN.wait()
    if uri not in UPDATED:
        fail("resources/updated", f"no update of {uri} within 10 s: {UPDATED}")
    ok("resources/updated", uri)


async def main(options: Options) -> None:
    async with contextlib.AsyncExitStack() as stack:
        if options.url is not None:
            # The SDK's documented way to authenticate: its transport over our HTTP client.
            http = httpx2.AsyncClient(
                headers={"Authorization": f"Bearer {options.token}"}, timeout=httpx2.Timeout(30, read=300)
            )
            await stack.enter_async_context(http)
            server: Any = streamable_http_client(options.url, http_client=http)
        else:
            assert options.command is not None
            server = StdioServerParameters(command=options.command[0], args=options.command[1:], env=options.env)
        try:
            client = await stack.enter_async_context(Client(server, mode=options.mode, message_handler=on_message))
        except Exception as error:  # noqa: BLE001 - reported as the failed check
            fail("connect", error_text(error))
        print(f"protocol-version: {client.protocol_version}", flush=True)
        info = client.server_info
        ok("connect", f"server {info.name} {info.version}" if info else "anonymous server")
        if options.agents is not None:
            await run_agent_checks(client, options)
        else:
            await run_checks(client, options)
    ok("close")


if __name__ == "__main__":
    anyio.run(main, parse_args(sys.argv[1:]))
