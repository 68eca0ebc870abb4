"""The MCP wiring: a low-level `Server` whose tool list and calls are worked out per caller's group.

Every request stands alone (the SDK's newest protocol has no session): the group comes from
`identify(ctx)` each time. Everything that leaves for the agent passes through the redactor of the
credential in use; no exception escapes `on_call_tool` (the SDK would echo its text in legacy mode).
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import httpx2
import mcp_types as types
from mcp.server import Server
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import NotificationOptions
from mcp.shared.exceptions import MCPError
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from . import __version__, oauth
from .audit import AuditLog
from .caller import Caller
from .config import Settings
from .credential import Credential
from .deadlines import Deadlines
from .declarations import Catalog, HttpHandler, PythonHandler, Tool, load_catalog
from .front import Front
from .gate import CredentialWarning, Gate, InvalidArguments, Ready, Unknown
from .handlers import ToolOutput
from .handlers.http import make_client, run_http
from .handlers.python import run_python
from .handlers.upstream import UpstreamError, UpstreamPool, upstream_pool
from .logs import new_ref, request_id
from .redact import Redactor, redactor_for
from .store import Store
from .token_refresh import TokenRefresher

logger = logging.getLogger("credgate.server")

NOT_READY_NOTE = " (Not set up yet for this agent group: calling it returns setup instructions.)"


class Gateway:
    """App-lifetime parts: declarations, store, gate, HTTP client and audit writer."""

    def __init__(self, settings: Settings, catalog: Catalog, store: Store, audit_store: Store) -> None:
        self.settings = settings
        self.catalog = catalog
        self.store = store
        self.gate = Gate(store, catalog, settings.public_url)
        self.audit = AuditLog(audit_store.write_audit)
        self._audit_store = audit_store
        self._http: httpx2.AsyncClient | None = None
        self.upstreams: UpstreamPool | None = None  # set while `running()`
        self.refresher = TokenRefresher(store, lambda: self.http)
        self.deadlines = Deadlines()  # the python handlers' timeouts
        self.front = Front(
            gate=lambda: self.gate,
            announced=store.upstream_capabilities,
            audit=self.audit,
            pool=lambda: self.upstreams,
            usable_credential=self.usable_credential,
        )

    @classmethod
    def open(cls, settings: Settings, catalog: Catalog) -> Gateway:
        catalog.raise_problems()
        return cls(settings, catalog, Store.open(settings), Store.open(settings))

    def reload(self) -> bool:
        """Read the declarations again (SIGHUP). All or nothing: a broken file keeps the running configuration
        and is logged with its file and field. Calls already running finish with the catalog they began with."""
        catalog = load_catalog(self.settings.tools_dirs)
        if catalog.upstreams:
            catalog = catalog.with_discovered(self.store.discovered_tools())
        if catalog.problems:
            for problem in catalog.problems:
                logger.error("reload refused, the previous declarations stay active: %s", problem)
            return False
        gate = Gate(self.store, catalog, self.settings.public_url)
        self.catalog, self.gate = catalog, gate
        logger.info("reloaded the declarations: %d tools", len(catalog.tools))
        return True

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Gateway]:
        """The async lifetime of the app: upstream MCP servers run inside it and stop when it ends."""
        async with upstream_pool(self.store.save_upstream_capabilities) as pool:
            self.upstreams = pool
            try:
                yield self
            finally:
                self.upstreams = None

    @property
    def http(self) -> httpx2.AsyncClient:
        if self._http is None:
            self._http = make_client()
        return self._http

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
        self.audit.close()
        self._audit_store.close()
        self.store.close()

    # -- tools/list ------------------------------------------------------------------------

    def list_tools(self, group: str) -> list[types.Tool]:
        return [
            types.Tool(
                name=listed.tool.name,
                description=listed.tool.decl.description + ("" if listed.ready else NOT_READY_NOTE),
                input_schema=listed.tool.decl.input_schema,
            )
            for listed in self.gate.list_tools(group)
        ]

    # -- tools/call ------------------------------------------------------------------------

    async def call_tool(
        self,
        caller: Caller,
        name: str,
        arguments: Mapping[str, Any] | None,
        ctx: ServerRequestContext[Any] | None = None,
    ) -> types.CallToolResult:
        """Call a tool for the caller; `ctx`, the agent's request, receives what an upstream sends meanwhile."""
        ref = new_ref()
        token = request_id.set(ref)
        try:
            return await self._call(caller, name, arguments, ref, ctx)
        finally:
            request_id.reset(token)

    async def _call(
        self,
        caller: Caller,
        name: str,
        arguments: Mapping[str, Any] | None,
        ref: str,
        ctx: ServerRequestContext[Any] | None,
    ) -> types.CallToolResult:
        started = time.perf_counter()
        args = dict(arguments or {})  # a dict of its own, as JSON Schema's object is
        decision = self.gate.check(caller.group, name, args)
        if isinstance(decision, Unknown):
            self._record(caller, name, None, "denied", started, ref)
            raise MCPError(code=types.INVALID_PARAMS, message=f"Unknown tool: {name}")
        if isinstance(decision, InvalidArguments):
            self._record(caller, name, None, "invalid_arguments", started, ref)
            return _text_result(f"Invalid arguments for tool {name}: {decision.message}", is_error=True)
        if isinstance(decision, CredentialWarning):
            return self._warn(caller, name, decision, started, ref)
        try:
            usable = await self.usable_credential(caller.group, decision)
        except oauth.OAuthError as exc:
            self._record(caller, name, decision.credential_name, "error", started, ref)
            return _text_result(
                f"The tool {name} was not called: the OAuth2 token of its credential could not be refreshed "
                f"({exc}); the stored tokens are unchanged, retry later (ref: {ref}).",
                is_error=True,
            )
        if isinstance(usable, CredentialWarning):
            return self._warn(caller, name, usable, started, ref)
        credential, handler_view = usable
        redactor = redactor_for(credential)
        try:
            output = await self._dispatch(decision.tool, args, handler_view, caller, ctx)
        except Exception as exc:
            details = "".join(traceback.format_exception(exc))
            logger.error("tool %s failed (ref: %s):\n%s", name, ref, redactor.text(details))
            self._record(caller, name, decision.credential_name, "error", started, ref)
            return _text_result(f"The tool {name} failed (ref: {ref}).", is_error=True)
        self._record(caller, name, decision.credential_name, "error" if output.is_error else "ok", started, ref)
        return _to_result(output, redactor)

    async def usable_credential(self, group: str, ready: Ready) -> tuple[Credential, Credential] | CredentialWarning:
        """The credential in full (for redaction) and as a handler sees it: an OAuth2 one refreshed when due,
        without what only the refresh needs. Raises oauth.OAuthError when it cannot be refreshed for now."""
        spec = ready.tool.credential
        if spec is None or spec.oauth is None:
            return ready.credential, ready.credential
        try:
            credential = await self.refresher.fresh(spec, ready.credential)
        except oauth.TokenExpired:
            return self.gate.expired(group, ready.tool, ready.credential.name)
        return credential, credential.only(spec.handler_fields)  # not the refresh token nor the client secret

    def _warn(
        self, caller: Caller, name: str, warning: CredentialWarning, started: float, ref: str
    ) -> types.CallToolResult:
        self._record(caller, name, warning.credential_name, warning.outcome, started, ref)
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=warning.text())],
            structured_content=warning.as_json(),
            is_error=True,
        )

    def _record(
        self, caller: Caller, tool: str, credential: str | None, outcome: str, started: float, ref: str
    ) -> None:
        self.audit.record(caller.group, caller.agent, tool, credential, outcome, started, ref)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "call group=%s agent=%s tool=%s credential=%s outcome=%s",
                caller.group,
                caller.agent or "-",
                tool,
                credential or "-",
                outcome,
            )

    async def _dispatch(
        self,
        tool: Tool,
        args: dict[str, Any],
        credential: Credential,
        caller: Caller,
        ctx: ServerRequestContext[Any] | None,
    ) -> ToolOutput:
        handler = tool.decl.handler
        if isinstance(handler, HttpHandler):
            return await run_http(self.http, handler, tool.credential, args, credential)
        if isinstance(handler, PythonHandler):
            assert tool.function is not None
            return await run_python(handler, tool.function, args, credential, self.deadlines)
        if self.upstreams is None or tool.upstream is None or tool.upstream_tool is None:
            return ToolOutput.error(f"upstream tools are not served by this gateway: {tool.name}")
        try:
            agent = caller.relayed(ctx)  # only an upstream sends messages of its own during a call
            result = await self.upstreams.call(tool.upstream, handler, tool.upstream_tool, args, credential, agent)
        except UpstreamError as exc:
            return ToolOutput.error(str(exc))
        dumped = result.model_dump(mode="json", by_alias=True, exclude_none=True)
        return ToolOutput(
            text="", structured=dumped.get("structuredContent"), is_error=result.is_error, content=dumped["content"]
        )


def _text_result(text: str, *, is_error: bool = False) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)], is_error=is_error)


def _to_result(output: ToolOutput, redactor: Redactor) -> types.CallToolResult:
    structured = redactor.obj(output.structured) if output.structured is not None else None
    if output.content is not None:
        return types.CallToolResult.model_validate(
            {"content": redactor.obj(output.content), "structuredContent": structured, "isError": output.is_error}
        )
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=redactor.text(output.text))],
        structured_content=structured,
        is_error=output.is_error,
    )


# Names the caller of a request; ctx is None where the SDK gives none (the schema lookup below).
Identify = Callable[[ServerRequestContext[Any] | None], Caller]


class GatewayServer(Server[Any]):
    """A low-level server whose capabilities are the caller's group's (`Front.capabilities`): worked out when
    a client connects (the handshake) or asks (`server/discover`), never more than the group can use."""

    def __init__(self, gateway: Gateway, identify: Identify, **handlers: Any) -> None:
        super().__init__(
            "mcp-credgate",
            version=__version__,
            instructions="Tools run through mcp-credgate; credentials stay on the server.",
            **handlers,
        )
        self._gateway = gateway
        self._identify = identify

    def get_capabilities(
        self,
        notification_options: NotificationOptions | None = None,
        experimental_capabilities: dict[str, dict[str, Any]] | None = None,
        extensions: dict[str, dict[str, Any]] | None = None,
        *,
        protocol_version: str | None = None,
    ) -> types.ServerCapabilities:
        try:
            group = self._identify(None).group
        except Exception:  # no caller (yet): the one thing every group has
            return types.ServerCapabilities(tools=types.ToolsCapability())
        capabilities = self._gateway.front.capabilities(group)
        if protocol_version in MODERN_PROTOCOL_VERSIONS and capabilities.resources is not None:
            # 2026-07-28 subscribes through subscriptions/listen, which the gateway does not relay
            capabilities.resources.subscribe = None
        return capabilities


def build_server(gateway: Gateway, identify: Identify) -> Server[Any]:
    """A low-level MCP server over the gateway; `identify` names the caller of each request."""
    front = gateway.front

    async def on_list_tools(
        ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=gateway.list_tools(identify(ctx).group))

    async def on_call_tool(ctx: ServerRequestContext[Any], params: types.CallToolRequestParams) -> types.CallToolResult:
        try:
            return await gateway.call_tool(identify(ctx), params.name, params.arguments, ctx)
        except MCPError:
            raise
        except Exception as exc:  # a bug of ours: never let its text (or a secret in it) reach the agent
            ref = new_ref()
            logger.error("call of %s failed (ref: %s): %s", params.name, ref, type(exc).__name__)
            return _text_result(f"The gateway could not run {params.name} (ref: {ref}).", is_error=True)

    def input_schema(name: str) -> Mapping[str, Any] | None:
        """Streamable HTTP checks `Mcp-Param` headers against the schema on every call; without this lookup
        the SDK would run the whole `tools/list` handler each time."""
        try:
            group = identify(None).group
        except Exception:
            return None
        tool = gateway.catalog.tool(name)
        return tool.decl.input_schema if tool is not None and gateway.gate.allows(group, name) else None

    async def on_list_resources(
        ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourcesResult:
        return await front.list_resources(ctx, identify(ctx))

    async def on_list_resource_templates(
        ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourceTemplatesResult:
        return await front.list_resource_templates(ctx, identify(ctx))

    async def on_read_resource(
        ctx: ServerRequestContext[Any], params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult:
        return await front.read_resource(ctx, identify(ctx), str(params.uri))

    async def on_subscribe(ctx: ServerRequestContext[Any], params: types.SubscribeRequestParams) -> types.EmptyResult:
        return await front.subscribe(ctx, identify(ctx), str(params.uri))

    async def on_unsubscribe(
        ctx: ServerRequestContext[Any], params: types.UnsubscribeRequestParams
    ) -> types.EmptyResult:
        return await front.unsubscribe(ctx, identify(ctx), str(params.uri))

    async def on_list_prompts(
        ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListPromptsResult:
        return await front.list_prompts(ctx, identify(ctx))

    async def on_get_prompt(
        ctx: ServerRequestContext[Any], params: types.GetPromptRequestParams
    ) -> types.GetPromptResult:
        return await front.get_prompt(ctx, identify(ctx), params.name, params.arguments)

    async def on_completion(
        ctx: ServerRequestContext[Any], params: types.CompleteRequestParams
    ) -> types.CompleteResult:
        return await front.complete(ctx, identify(ctx), params)

    async def on_set_logging_level(
        ctx: ServerRequestContext[Any], params: types.SetLevelRequestParams
    ) -> types.EmptyResult:
        return await front.set_logging_level(ctx, identify(ctx), params.level)

    server = GatewayServer(
        gateway,
        identify,
        get_tool_input_schema=input_schema,
        on_list_tools=on_list_tools,
        on_call_tool=on_call_tool,
        on_list_resources=on_list_resources,
        on_list_resource_templates=on_list_resource_templates,
        on_read_resource=on_read_resource,
        on_subscribe_resource=on_subscribe,
        on_unsubscribe_resource=on_unsubscribe,
        on_list_prompts=on_list_prompts,
        on_get_prompt=on_get_prompt,
        on_completion=on_completion,
    )
    # registered apart: through the constructor the SDK warns that logging is deprecated for 2026-07-28
    server.add_request_handler("logging/setLevel", types.SetLevelRequestParams, on_set_logging_level)
    return server


@asynccontextmanager
async def open_gateway(settings: Settings, catalog: Catalog) -> AsyncIterator[Gateway]:
    gateway = Gateway.open(settings, catalog)
    try:
        async with gateway.running():
            yield gateway
    finally:
        await gateway.aclose()
