"""`bev mcp`: BEV's MCP tools for clients that speak MCP over stdio (desktop assistants, IDE agents).

The tools live in one place, the gateway's `/mcp` (services/gateway/mcp_tools.py). This process is
a relay: an MCP server on stdin/stdout (the SDK's low-level `Server`) whose tools/list and
tools/call are answered by a client session to the gateway over streamable HTTP, sending the
analyst's API key. A stdio client so gets the same tools, scopes, rate limits and audit trail as an
HTTP one, and this side holds no service credentials. Progress the gateway reports while a tool
runs (follow_investigation) is passed on to the stdio client.

Nothing but MCP messages may reach stdout: the SDK's stdio transport points fd 1 at stderr while
it serves, so a stray print cannot corrupt the stream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx2
from mcp import Client, MCPError, types
from mcp.client.streamable_http import streamable_http_client
from mcp.server import Server, ServerRequestContext
from mcp.server.stdio import stdio_server

MCP_PATH = "/mcp"
# A tool call's answer streams while it runs (follow_investigation waits up to 4 minutes, a
# collector up to its 5-minute deadline); a read waits this long before the call fails.
READ_TIMEOUT_S = 360.0
CONNECT_TIMEOUT_S = 10.0


class GatewayUnavailable(Exception):
    """The gateway's MCP endpoint cannot be reached or refused the key; str() says which, in one line."""


@dataclass
class Gateway:
    """A session to the gateway's MCP endpoint, and what the gateway last refused, in its own words
    (the SDK reports any HTTP error status as a bare "Server returned an error response")."""

    url: str
    session: Client
    refusals: list[str] = field(default_factory=list)

    def refusal_since(self, count: int) -> str | None:
        return self.refusals[-1] if len(self.refusals) > count else None


def endpoint(gateway_url: str) -> str:
    """The gateway's MCP URL from its base URL (or from the MCP URL itself)."""
    base = gateway_url.strip().rstrip("/")
    return base if base.endswith(MCP_PATH) else base + MCP_PATH


@asynccontextmanager
async def connect(gateway_url: str, api_key: str) -> AsyncIterator[Gateway]:
    """A session to the gateway's MCP endpoint with `api_key`; GatewayUnavailable when the gateway
    cannot be reached or refuses the key (errors after that are the tools' to report)."""
    url = endpoint(gateway_url)
    refusals: list[str] = []

    async def note_refusal(response: httpx2.Response) -> None:
        if response.status_code >= 400:
            await response.aread()
            refusals.append(_refusal(response))

    async with AsyncExitStack() as stack:
        http = await stack.enter_async_context(httpx2.AsyncClient(
            headers={"Authorization": f"Bearer {api_key}"}, trust_env=False, event_hooks={"response": [note_refusal]},
            timeout=httpx2.Timeout(CONNECT_TIMEOUT_S, read=READ_TIMEOUT_S)))
        try:
            session = await stack.enter_async_context(Client(streamable_http_client(url, http_client=http)))
        except Exception as exc:
            why = refusals[-1] if refusals else _unreachable(exc)
            raise GatewayUnavailable(f"the gateway's MCP endpoint {url}: {why}") from None
        yield Gateway(url, session, refusals)


def _refusal(response: httpx2.Response) -> str:
    """An HTTP error answer in one line: the gateway's own message ({"error": ...}) when it has one."""
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        error = None
    if isinstance(error, dict):  # a JSON-RPC error body
        error = error.get("message")
    message = " ".join(str(error).split()) if error else response.reason_phrase
    hint = " (make a key with `bev keys create`)" if response.status_code == 401 else ""
    return f"HTTP {response.status_code}: {message}{hint}"


def _unreachable(exc: BaseException) -> str:
    """Why a connection failed, in one line: the transport error found inside `exc`, else `exc`."""
    nested: list[BaseException] = [exc]
    while nested:
        current = nested.pop()
        if isinstance(current, httpx2.TransportError):
            return f"cannot be reached ({type(current).__name__}: {' '.join(str(current).split()) or 'no answer'})"
        if isinstance(current, BaseExceptionGroup):
            nested.extend(current.exceptions)
        elif current.__cause__ is not None:
            nested.append(current.__cause__)
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def relay_server(gateway: Gateway) -> Server[Any]:
    """An MCP server answering tools/list and tools/call from `gateway`'s session."""
    remote = gateway.session

    async def list_tools(ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None,
                         ) -> types.ListToolsResult:
        return await remote.list_tools(cursor=params.cursor if params is not None else None)

    async def call_tool(ctx: ServerRequestContext[Any], params: types.CallToolRequestParams) -> types.CallToolResult:
        async def progress(progress: float, total: float | None, message: str | None) -> None:
            await ctx.session.report_progress(progress, total, message)

        refused_before = len(gateway.refusals)
        try:
            return await remote.call_tool(params.name, params.arguments or {}, progress_callback=progress)
        except MCPError:
            refusal = gateway.refusal_since(refused_before)
            if refusal is None:
                raise  # the gateway's own protocol error, passed on as it is
            return _tool_error(f"the BEV gateway refused the call: {refusal}")  # 429 over the hourly budget...
        except Exception as exc:  # the gateway went away mid-session
            return _tool_error(f"the BEV gateway did not answer: {_unreachable(exc)}")

    info = remote.server_info
    return Server(info.name if info is not None else "bev", version=info.version if info is not None else "",
                  title=info.title if info is not None else None, instructions=remote.instructions,
                  on_list_tools=list_tools, on_call_tool=call_tool)


def _tool_error(text: str) -> types.CallToolResult:
    return types.CallToolResult(is_error=True, content=[types.TextContent(type="text", text=text)])


async def serve_stdio(gateway_url: str, api_key: str) -> None:
    """Serve the gateway's MCP tools on stdin/stdout until the client closes stdin.
    GatewayUnavailable, before serving, when the gateway cannot be reached or refuses the key."""
    async with connect(gateway_url, api_key) as gateway:
        server = relay_server(gateway)
        async with stdio_server() as (read_stream, write_stream):
            await server.run(read_stream, write_stream, server.create_initialization_options())
