"""The MCP wiring: a low-level `Server` whose tool list and calls are worked out per caller's group.

`build_server(gateway, identify)` makes it over a `gateway.Gateway` (the app-lifetime parts): `ToolCalls`
answers tools/list and tools/call, the gateway's `Front` the rest of MCP for upstream servers.

Every request stands alone (the SDK's newest protocol has no session): the group comes from
`identify(ctx)` each time. Everything that leaves for the agent passes through the redactor of the
credential in use; no exception escapes `on_call_tool`, nor a StoreError any handler (the SDK would echo its
text in legacy mode).
"""

from __future__ import annotations

import functools
import json
import logging
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import Any, TypeVar, cast

import anyio.to_thread
import mcp_types as types
from mcp.server import Server
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import NotificationOptions
from mcp.shared.exceptions import MCPError, UrlElicitationRequiredError
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from . import __version__, oauth
from .approvals import APPROVAL_INPUT, ApprovalState, approval_form
from .budgets import Limit, exceeded_warning
from .caller import Caller
from .credential import Credential
from .declarations import HttpHandler, PythonHandler, Tool
from .errors import StoreError
from .gate import CredentialWarning, InvalidArguments, NotMember, Unknown
from .gateway import Gateway
from .handlers import ToolOutput
from .handlers.http import run_http
from .handlers.python import run_python
from .handlers.upstream import Rounds, UpstreamError
from .logs import new_ref, request_id
from .redact import Redactor, redactor_for
from .rounds import UNRELAYED_ROUND, Answers
from .store import BUSY, Exceeded

logger = logging.getLogger("credgate.server")

NOT_READY_NOTE = " (Not set up yet for this agent group: calling it returns setup instructions.)"
Handler = TypeVar("Handler", bound=Callable[..., Awaitable[Any]])
SETUP_INPUT = "credgate_setup"  # the key of a call's setup link among a 2026-07-28 round's input requests


class ToolCalls:
    """Lives as long as its server (one per `build_server`) and keeps nothing of a call: a call's caller, ref
    and start time travel as arguments. tools/list and tools/call over the gateway's parts; the gate, the
    HTTP client and the upstream pool are read from the gateway at each call (a reload replaces the gate)."""

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway
        self._audit = gateway.audit
        self._deadlines = gateway.deadlines
        self._usable_credential = gateway.usable_credential

    # -- tools/list ------------------------------------------------------------------------

    async def list_tools(self, caller: Caller) -> list[types.Tool]:
        await self._gateway.discover_for(caller)
        return [
            types.Tool(
                name=listed.tool.name,
                description=listed.tool.decl.description + ("" if listed.ready else NOT_READY_NOTE),
                input_schema=listed.tool.decl.input_schema,
            )
            for listed in self._gateway.gate.list_tools(caller.group, caller.user)
        ]

    # -- tools/call ------------------------------------------------------------------------

    async def call_tool(
        self,
        caller: Caller,
        name: str,
        arguments: Mapping[str, Any] | None,
        ctx: ServerRequestContext[Any] | None = None,
        answers: Answers | None = None,
    ) -> types.CallToolResult | types.InputRequiredResult:
        """Call a tool for the caller; `ctx`, the agent's request, receives what an upstream sends meanwhile.
        `answers`: what a 2026-07-28 retry brings back from its round (setup, approval)."""
        ref = new_ref()
        token = request_id.set(ref)
        try:
            return await self._call(caller, name, arguments, ref, ctx, answers or Answers())
        except StoreError as exc:  # the store could not be read (or written where a call must): closed, with a ref
            return self._not_now(
                caller, name, None, time.perf_counter(), ref, "the gateway cannot reach its store", exc
            )
        finally:
            request_id.reset(token)

    async def _call(
        self,
        caller: Caller,
        name: str,
        arguments: Mapping[str, Any] | None,
        ref: str,
        ctx: ServerRequestContext[Any] | None,
        answers: Answers,
    ) -> types.CallToolResult | types.InputRequiredResult:
        started = time.perf_counter()
        if self._gateway.settings.audit_required and self._audit.failing:  # `serve --audit required`
            return self._not_now(caller, name, None, started, ref, "its call cannot be audited", "--audit required")
        args = dict(arguments or {})  # a dict of its own, as JSON Schema's object is
        decision = self._gateway.gate.check(caller.group, name, args, caller.user)
        if isinstance(decision, Unknown):
            self._record(caller, name, None, "denied", started, ref)
            raise MCPError(code=types.INVALID_PARAMS, message=f"Unknown tool: {name}")
        if isinstance(decision, NotMember):
            self._record(caller, name, None, "denied", started, ref)
            return _text_result(decision.text(), is_error=True)
        if isinstance(decision, InvalidArguments):
            self._record(caller, name, None, "invalid_arguments", started, ref)
            return _text_result(f"Invalid arguments for tool {name}: {decision.message}", is_error=True)
        if isinstance(decision, CredentialWarning):
            return await self._warn(caller, name, decision, started, ref, ctx, SETUP_INPUT in answers.responses)
        try:
            usable = await self._usable_credential(caller.group, decision)
        except oauth.OAuthError as exc:
            self._record(caller, name, decision.credential_name, "error", started, ref)
            return _text_result(  # the provider's error code is its own text: it may repeat what it was sent
                f"The tool {name} was not called: the OAuth2 token of its credential could not be refreshed "
                f"({redactor_for(decision.credential).text(str(exc))}); the stored tokens are unchanged, "
                f"retry later (ref: {ref}).",
                is_error=True,
            )
        if isinstance(usable, CredentialWarning):
            return await self._warn(caller, name, usable, started, ref, ctx, SETUP_INPUT in answers.responses)
        credential, handler_view = usable
        resumed = None
        if answers.state is not None and not (decision.approval and APPROVAL_INPUT in answers.responses):
            resumed = await self._gateway.rounds.resume(answers.state, caller, name, args)
            if resumed is None:
                self._record(caller, name, decision.credential_name, "denied", started, ref)
                raise MCPError(code=types.INVALID_PARAMS, message="Invalid or expired requestState")
        charges = self._charges(caller, decision.tool)
        # budget before the question (contract §7's order); a charge that cannot be counted is refused here too
        if charges and resumed is None and (decision.approval or any(n < 0 for _, n in charges)):
            try:
                over = await anyio.to_thread.run_sync(self._first_exceeded, charges)
            except StoreError as exc:
                return self._not_now(
                    caller, name, decision.credential_name, started, ref, "its budget could not be counted", exc
                )
            if over is not None:
                self._record(caller, name, decision.credential_name, "over_budget", started, ref)
                return _budget_refusal(over, name)
        approval = "approved" if resumed is not None and resumed.approved else None
        if decision.approval and approval is None:  # the last check before the call runs (contract §7's order)
            refused = await self._approval(caller, name, args, ctx, answers)
            if refused is not None:
                answer, outcome = refused
                if outcome is not None:  # the question itself ends nothing: its retry is the call audited
                    self._record(caller, name, decision.credential_name, outcome, started, ref)
                return answer
            approval = "approved"
        if charges and resumed is None:  # the call runs now: counted, or refused if it no longer fits
            counts = self._gateway.counts
            try:
                at_once = counts.charge_at_once(charges)  # a thread hop costs more than the count itself
                over = await anyio.to_thread.run_sync(counts.charge, charges) if at_once is BUSY else at_once
            except StoreError as exc:  # fails closed: a call under a budget runs only once counted
                return self._not_now(
                    caller, name, decision.credential_name, started, ref, "its budget could not be counted", exc
                )
            if over is not None:
                self._record(caller, name, decision.credential_name, "over_budget", started, ref, approval)
                return _budget_refusal(over, name)
        redactor = redactor_for(credential)
        resume = (answers.for_upstream(), resumed.upstream_state if resumed is not None else None)
        try:
            output = await self._dispatch(decision.tool, args, handler_view, caller, ctx, resume)
            if isinstance(output, types.InputRequiredResult):  # the upstream asks: the call goes on at the retry
                asking = await self._gateway.rounds.begin(caller, name, args, output, approval is not None)
                if asking is not None:
                    return asking
                output = ToolOutput.error(f"upstream of {name}: {UNRELAYED_ROUND}")
        except Exception as exc:
            if isinstance(exc, MCPError) and exc.code == types.MISSING_REQUIRED_CLIENT_CAPABILITY:
                # the upstream needs what the agent's client did not declare: the agent must learn which
                self._record(caller, name, decision.credential_name, "error", started, ref, approval, decision.tool)
                raise MCPError(exc.code, redactor.text(exc.message), redactor.obj(exc.data)) from None
            details = "".join(traceback.format_exception(exc))
            logger.error("tool %s failed (ref: %s):\n%s", name, ref, redactor.text(details))
            self._record(caller, name, decision.credential_name, "error", started, ref, approval, decision.tool)
            return _text_result(f"The tool {name} failed (ref: {ref}).", is_error=True)
        outcome = "error" if output.is_error else "ok"
        self._record(caller, name, decision.credential_name, outcome, started, ref, approval, decision.tool)
        return _to_result(output, redactor)

    def _charges(self, caller: Caller, tool: Tool) -> list[tuple[Limit, int]]:
        """What a call of the tool counts against each of the group's limits that applies to it: 1 call, or its
        cost (a spend limit in another currency than the tool's counts it as over: `_first_exceeded`)."""
        limits = self._gateway.store.budgets(caller.group)
        decl = tool.decl
        return [
            (limit, 1 if limit.kind == "calls" else (decl.cost if limit.currency == decl.currency else -1))
            for limit in limits
            if limit.applies(tool.name, caller.user, caller.agent)
        ]

    def _not_now(
        self,
        caller: Caller,
        name: str,
        credential: str | None,
        started: float,
        ref: str,
        why: str,
        cause: StoreError | str,
    ) -> types.CallToolResult:
        """A call not run for a fault of the moment (the store, the audit): the agent gets `why` and the ref, the
        log the cause (never the agent: the store's message may name its paths). Its audit row is kept, written
        once the store can be again."""
        logger.error("tool %s not called: %s (ref: %s): %s", name, why, ref, cause)
        self._record(caller, name, credential, "error", started, ref)
        return _text_result(f"The tool {name} was not called: {why} just now; retry later (ref: {ref}).", is_error=True)

    def _first_exceeded(self, charges: list[tuple[Limit, int]]) -> Exceeded | None:
        """The first limit the call would not fit (read only: nothing is counted here)."""
        store = self._gateway.counts
        for limit, n in charges:
            used, resets_at = store.used(limit)
            if n < 0 or used + n > limit.amount:
                return Exceeded(limit, used, resets_at)
        return None

    async def _approval(
        self,
        caller: Caller,
        name: str,
        args: dict[str, Any],
        ctx: ServerRequestContext[Any] | None,
        answers: Answers,
    ) -> tuple[types.CallToolResult | types.InputRequiredResult, str | None] | None:
        """Ask the person behind the agent to approve this call (`approvals`): None when approved; else what
        the agent gets, with the audit outcome: the question (a 2026-07-28 round; no outcome yet), a declined
        call (`declined`), or, from a client that cannot ask, the §4 shape (`approval_required`)."""
        if ctx is None or not _asks_by_form(ctx):
            return _approval_required(caller, name), "approval_required"
        store = self._gateway.store
        if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
            answer = answers.responses.get(APPROVAL_INPUT)
            if answer is None:
                state = await anyio.to_thread.run_sync(ApprovalState.asking(caller, name, args).seal, store)
                asked = types.ElicitRequest(params=approval_form(name, args))
                return types.InputRequiredResult(input_requests={APPROVAL_INPUT: asked}, request_state=state), None
            approves = ApprovalState.approves
            valid = await anyio.to_thread.run_sync(approves, answers.state, store, caller, name, args)
            if not valid:
                text = (
                    f"The approval given does not belong to this call of {name} (another call's, used, or expired): "
                    "nothing was run."
                )
                return _text_result(text, is_error=True), "declined"
            accepted = _action_of(answer) == "accept"
        else:
            form = approval_form(name, args)
            try:
                asked_now = await ctx.session.elicit_form(
                    form.message, form.requested_schema, related_request_id=ctx.request_id
                )
            except MCPError:
                asked_now = types.ElicitResult(action="cancel")
            accepted = asked_now.action == "accept"
        if accepted:
            return None
        return _text_result(f"The call of {name} was declined: nothing was run.", is_error=True), "declined"

    async def _warn(
        self,
        caller: Caller,
        name: str,
        warning: CredentialWarning,
        started: float,
        ref: str,
        ctx: ServerRequestContext[Any] | None,
        answered: bool = False,
    ) -> types.CallToolResult | types.InputRequiredResult:
        """The §4 warning; with a setup link of its own (contract §7) where the gateway serves its pages itself,
        and as a URL elicitation of the link to a client that declared URL elicitation: error -32042 on the
        handshake protocols, an input-required result on 2026-07-28 (once per call: `answered`)."""
        self._record(caller, name, warning.credential_name, warning.outcome, started, ref)
        pages = self._gateway.pages
        asks = ctx is not None and not answered and _asks_by_url(ctx)
        if warning.warning != "user_required" and (asks or pages.own):
            links = self._gateway.setup_links
            base = await pages.base_url()
            link = await anyio.to_thread.run_sync(links.issue, base, warning.group, warning.tool, warning.user)
            linked = replace(warning, setup_url=link.url)
            warning = linked if pages.own else warning
            if ctx is not None and asks:
                session, eid = ctx.session, link.elicitation_id
                asked = types.ElicitRequestURLParams(message=linked.text(), url=link.url, elicitation_id=eid)
                if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
                    return types.InputRequiredResult(input_requests={SETUP_INPUT: types.ElicitRequest(params=asked)})
                links.completions.wait(eid, lambda: session.send_elicit_complete(eid))
                raise UrlElicitationRequiredError([asked])
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=warning.text())],
            structured_content=warning.as_json(),
            is_error=True,
        )

    def _record(
        self,
        caller: Caller,
        tool: str,
        credential: str | None,
        outcome: str,
        started: float,
        ref: str,
        approval: str | None = None,
        ran: Tool | None = None,
    ) -> None:
        """`ran`: the call ran (its cost counts in usage)."""
        spent = (ran.decl.cost, ran.decl.currency) if ran is not None else None
        self._audit.record(
            caller.group, caller.agent, tool, credential, outcome, started, ref, caller.user, approval, spent
        )
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
        resume: Rounds = (None, None),
    ) -> ToolOutput | types.InputRequiredResult:
        handler = tool.decl.handler
        if isinstance(handler, HttpHandler):
            return await run_http(self._gateway.http, handler, tool.credential, args, credential)
        if isinstance(handler, PythonHandler):
            assert tool.function is not None
            return await run_python(handler, tool.function, args, credential, self._deadlines)
        upstreams = self._gateway.upstreams
        if upstreams is None or tool.upstream is None or tool.upstream_tool is None:
            return ToolOutput.error(f"upstream tools are not served by this gateway: {tool.name}")
        scope = caller.upstream_scope(tool.upstream, handler, credential.name)
        agent = caller.relayed(ctx)  # only an upstream sends messages of its own during a call: the relay's view
        in_rounds = ctx is not None and ctx.protocol_version in MODERN_PROTOCOL_VERSIONS
        try:
            result = await upstreams.call(
                scope, handler, tool.upstream_tool, args, credential, agent, resume if in_rounds else None
            )
            if isinstance(result, types.InputRequiredResult):
                return result
        except UpstreamError as exc:
            return ToolOutput.error(str(exc))
        dumped = result.model_dump(mode="json", by_alias=True, exclude_none=True)
        return ToolOutput(
            text="", structured=dumped.get("structuredContent"), is_error=result.is_error, content=dumped["content"]
        )


def _action_of(response: Any) -> str | None:
    return response.get("action") if isinstance(response, dict) else getattr(response, "action", None)


def _budget_refusal(over: Exceeded, name: str) -> types.CallToolResult:
    """The §4 shape of a call a budget refused (contract §8)."""
    limit, found = over.limit, exceeded_warning(over.limit, over.used, over.resets_at, name)
    text = (
        f"The tool {name} was not called: agent group {limit.group}'s limit of {limit.describe()} is used up "
        f"({found['used']} used); it resets at {found['resets_at']}."
    )
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=text)], structured_content=found, is_error=True
    )


def _approval_required(caller: Caller, name: str) -> types.CallToolResult:
    """The §4 shape for a call that needs approval from a client that cannot ask (no form elicitation)."""
    text = (
        f"Tool {name} needs a person's approval of each call in agent group {caller.group}, and this agent's client "
        "cannot ask for it (it offers no form elicitation): nothing was run."
    )
    found = {"warning": "approval_required", "tool": name, "group": caller.group}
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=text)], structured_content=found, is_error=True
    )


def _asks_by_form(ctx: ServerRequestContext[Any]) -> bool:
    """Whether the calling client can be asked a question (form elicitation; declared empty, it means form)."""
    declared = ctx.session.client_capabilities
    asks = declared.elicitation if declared is not None else None
    return asks is not None and (asks.form is not None or asks.url is None)


def _asks_by_url(ctx: ServerRequestContext[Any]) -> bool:
    """Whether the calling client declared URL-mode elicitation (at its handshake, or with this request)."""
    declared = ctx.session.client_capabilities
    return declared is not None and declared.elicitation is not None and declared.elicitation.url is not None


def _text_result(text: str, *, is_error: bool = False) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)], is_error=is_error)


def _to_result(output: ToolOutput, redactor: Redactor) -> types.CallToolResult:
    """The result the agent receives, redacted as one text: its content blocks, then its structured content, so a
    secret split between two blocks (or a block and a structured value) is found too. A text that is the
    structured content's JSON is written again from the redacted structure (in the text, two halves of a secret
    in two values have the JSON between them)."""
    if output.mirrored and output.content is None and output.structured is not None:
        structured = redactor.obj(output.structured)
        text = json.dumps(structured, ensure_ascii=False) if redactor else output.text
        content: list[dict[str, Any]] = [{"type": "text", "text": text}]
        return types.CallToolResult.model_validate(
            {"content": content, "structuredContent": structured, "isError": output.is_error}
        )
    content = output.content if output.content is not None else [{"type": "text", "text": output.text}]
    redacted = redactor.obj({"content": content, "structuredContent": output.structured})
    return types.CallToolResult.model_validate({**redacted, "isError": output.is_error})


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
            **{name: _store_faults_closed(h) if name.startswith("on_") else h for name, h in handlers.items()},
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
        return self._gateway.front.capabilities(group, listen=protocol_version in MODERN_PROTOCOL_VERSIONS)


def _store_faults_closed(handler: Handler) -> Handler:
    """`handler`, whose StoreError (the group's tools read at each request, the store away) the agent gets as a
    JSON-RPC error with a ref; the store's own message, which names its paths or server, goes to the log alone
    (the SDK would echo it in legacy mode)."""

    @functools.wraps(handler)
    async def answered(ctx: ServerRequestContext[Any], params: Any) -> Any:
        try:
            return await handler(ctx, params)
        except StoreError as exc:
            ref = new_ref()
            logger.error("%s not answered: the store cannot be used (ref: %s): %s", handler.__name__, ref, exc)
            message = f"The gateway cannot reach its store just now; retry later (ref: {ref})."
            raise MCPError(code=types.INTERNAL_ERROR, message=message) from None

    return cast(Handler, answered)


def build_server(gateway: Gateway, identify: Identify) -> Server[Any]:
    """A low-level MCP server over the gateway; `identify` names the caller of each request."""
    front = gateway.front
    calls = ToolCalls(gateway)

    async def on_list_tools(
        ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=await calls.list_tools(identify(ctx)))

    async def on_call_tool(
        ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult | types.InputRequiredResult:
        answers = Answers(params.input_responses or {}, params.request_state)
        try:
            return await calls.call_tool(identify(ctx), params.name, params.arguments, ctx, answers)
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
    ) -> types.ReadResourceResult | types.InputRequiredResult:
        answers = Answers(params.input_responses or {}, params.request_state)
        return await front.read_resource(ctx, identify(ctx), str(params.uri), answers)

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
    ) -> types.GetPromptResult | types.InputRequiredResult:
        answers = Answers(params.input_responses or {}, params.request_state)
        return await front.get_prompt(ctx, identify(ctx), params.name, params.arguments, answers)

    async def on_completion(
        ctx: ServerRequestContext[Any], params: types.CompleteRequestParams
    ) -> types.CompleteResult:
        return await front.complete(ctx, identify(ctx), params)

    async def on_listen(
        ctx: ServerRequestContext[Any], params: types.SubscriptionsListenRequestParams
    ) -> types.SubscriptionsListenResult:
        return await front.listen(ctx, identify(ctx), params)

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
        on_subscriptions_listen=on_listen,
    )
    # registered apart: through the constructor the SDK warns that logging is deprecated for 2026-07-28
    server.add_request_handler(
        "logging/setLevel", types.SetLevelRequestParams, _store_faults_closed(on_set_logging_level)
    )
    return server
