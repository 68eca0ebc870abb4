"""The rest of MCP for upstream servers, per group: resources, prompts, completion and logging.

A group reaches an upstream's resources, prompts and log lines when it allows the upstream as a whole
(`NAME.*`), with the credential bound to that upstream. Prompts are renamed with the upstream's prefix,
as its tools are; resource URIs are kept (a URI names its resource) and a request for one goes to the
upstream that lists it or one of whose templates matches it. Every answer comes back through the
credential's redactor; an upstream error keeps its code, its text redacted.

The capabilities a group is offered are the union of what its upstreams announced (cached at discovery
and whenever one starts) and the gateway's own tools: nothing a group cannot use.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import cached_property, partial
from typing import Any, TypeVar

import anyio
import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler, ServerEvent
from mcp.shared.exceptions import MCPError
from mcp.shared.uri_template import InvalidUriTemplate, UriTemplate
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import BaseModel

from . import oauth
from .audit import AuditLog
from .caller import Caller
from .credential import Credential
from .declarations import McpHandler
from .errors import StoreError
from .gate import CredentialWarning, Gate, Ready
from .handlers.upstream import Session, UpstreamError, UpstreamPool, shown_to_agent
from .redact import Redactor, redactor_for
from .relay import Relay, redacted
from .rounds import UNRELAYED_ROUND, Answers, Rounds

logger = logging.getLogger("credgate.front")

RESOURCE_NOT_FOUND = -32002  # the code for an unknown resource before 2026-07-28
MAX_PAGES = 100  # an upstream's list, page after page, up to this many pages
_ModelT = TypeVar("_ModelT", bound=BaseModel)
_T = TypeVar("_T")
_R = TypeVar("_R")
NO_ANSWERS = Answers()  # a request that answers no round
LISTEN_READY_SECONDS = 5.0  # how long an agent's listen stream waits for its upstreams' to open
LISTEN_STREAMS_PER_AGENT = 16
LISTEN_URIS = 100  # resources one listen stream may watch

# The credential of a ready decision as it may be used now (see `Gateway.usable_credential`): in full and as
# the upstream gets it, or the warning that replaces it; raises oauth.OAuthError when it cannot be refreshed.
UsableCredential = Callable[[str, Ready[Any]], Awaitable[tuple[Credential, Credential] | CredentialWarning]]


@dataclass(frozen=True)
class Reached:
    """An upstream as one group reaches it: its declaration and the group's credential for it."""

    name: str
    handler: McpHandler
    credential: Credential  # in full: what the redactor must know
    handler_view: Credential  # what the upstream is started with
    capabilities: Mapping[str, Any]
    credential_name: str | None

    @property
    def prefix(self) -> str:
        return self.name if self.handler.prefix is None else self.handler.prefix

    def exported(self, remote: str) -> str:
        return f"{self.prefix}_{remote}" if self.prefix else remote

    def remote(self, exported: str) -> str | None:
        if not self.prefix:
            return exported
        head = f"{self.prefix}_"
        return exported[len(head) :] if exported.startswith(head) else None

    @cached_property
    def redactor(self) -> Redactor:
        return redactor_for(self.credential)


def _refused(warning: CredentialWarning) -> MCPError:
    return MCPError(code=types.INVALID_REQUEST, message=warning.text(), data=warning.as_json())


def _not_found(uri: str, ctx: ServerRequestContext[Any]) -> MCPError:
    """An unknown resource: -32002 on the handshake protocols, Invalid params on 2026-07-28 (SEP-2164)."""
    return MCPError(code=_not_found_code(ctx), message="Resource not found", data={"uri": uri})


def _not_found_code(ctx: ServerRequestContext[Any]) -> int:
    return types.INVALID_PARAMS if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS else RESOURCE_NOT_FOUND


def _in_agents_protocol(exc: MCPError, ctx: ServerRequestContext[Any]) -> MCPError:
    """An upstream's "resource not found" in the code of the agent's protocol, which need not be the upstream's."""
    unknown = exc.code == RESOURCE_NOT_FOUND or (exc.code == types.INVALID_PARAMS and "not found" in exc.message)
    if not unknown or exc.code == _not_found_code(ctx):
        return exc
    return MCPError(code=_not_found_code(ctx), message=exc.message, data=exc.error.data)


async def _send(session: Session, request: types.ClientRequest) -> types.EmptyResult:
    """A request of the handshake protocols only (logging/setLevel, resources/subscribe and unsubscribe), which
    the SDK's client marks deprecated; an upstream speaking 2026-07-28 gets none of them (`Relay.log_level`,
    `handlers.upstream._relay_subscriptions` stand in)."""
    if session.modern:
        return types.EmptyResult()
    return await session.live.session.send_request(request, types.EmptyResult)


async def _set_level(session: Session, level: types.LoggingLevel) -> types.EmptyResult:
    session.relay.log_level = level
    return await _send(session, types.SetLevelRequest(params=types.SetLevelRequestParams(level=level)))


def _subscribes(up: Reached) -> bool:
    """Whether the upstream announced resource subscriptions."""
    resources = up.capabilities.get("resources")
    return isinstance(resources, Mapping) and bool(resources.get("subscribe"))


def _matches(template: str, uri: str) -> bool:
    try:
        return UriTemplate.parse(template).match(uri) is not None
    except InvalidUriTemplate:
        return False


class Front:
    """Lives as long as the gateway that makes it (it remembers what each upstream last listed). Answers
    resources/*, prompts/*, completion/complete and logging/setLevel, with what it is given: the current
    gate (a reload replaces it), what the upstreams announced, the audit writer, the upstream pool (none
    outside `Gateway.running`) and the way to a usable credential."""

    def __init__(
        self,
        *,
        gate: Callable[[], Gate],
        announced: Callable[[], Mapping[str, Mapping[str, Any]]],
        audit: AuditLog,
        pool: Callable[[], UpstreamPool | None],
        usable_credential: UsableCredential,
        rounds: Rounds,
    ) -> None:
        self._gate = gate
        self._rounds = rounds
        self._announced = announced
        self._audit = audit
        self._pool = pool
        self._usable_credential = usable_credential
        # what each upstream last listed: resource URIs and templates (for routing a read), by upstream
        self._uris: dict[str, set[str]] = {}
        self._templates: dict[str, set[str]] = {}
        # the listen streams of each group's agents (2026-07-28): where its upstreams' events go, each agent's
        # handler over its group's bus, and how many streams each agent has open
        self._buses: dict[str, InMemorySubscriptionBus] = {}
        self._listen_handlers: dict[tuple[str, str | None], ListenHandler] = {}
        self._listen_streams: Counter[tuple[str, str | None]] = Counter()

    @property
    def pool(self) -> UpstreamPool:
        pool = self._pool()
        if pool is None:
            raise MCPError(code=types.INTERNAL_ERROR, message="upstream MCP servers are not served here")
        return pool

    # -- policy and capabilities ---------------------------------------------------------------

    def capabilities(self, group: str, *, listen: bool = False) -> types.ServerCapabilities:
        """The group's tools, and what its allowed upstreams announced: the union, not more. `listen`: for an
        agent of 2026-07-28, whose listen streams carry the upstreams' list changes (`listen`)."""
        caps: dict[str, Any] = {"tools": {}}
        try:
            announced = self._announced()
            allowed = self._gate().allowed_upstreams(group)
        except StoreError as exc:  # a session still opens: its calls say the store is away, with a ref
            logger.error("capabilities of tools alone: the store cannot be read (%s)", exc)
            return types.ServerCapabilities.model_validate(caps)
        for name in allowed:
            upstream = announced.get(name, {})
            for feature in ("prompts", "completions", "logging"):
                if feature in upstream:
                    caps.setdefault(feature, {})
            if "resources" in upstream:
                resources = caps.setdefault("resources", {})
                if isinstance(upstream["resources"], Mapping) and upstream["resources"].get("subscribe"):
                    resources["subscribe"] = True
            for feature in ("tools", "prompts", "resources") if listen else ():
                offered = upstream.get(feature)
                if isinstance(offered, Mapping) and offered.get("listChanged"):
                    caps.setdefault(feature, {})["listChanged"] = True
        return types.ServerCapabilities.model_validate(caps)

    def _announcing(self, group: str, feature: str, method: str | None) -> dict[str, Mapping[str, Any]]:
        """The group's upstreams that announced `feature`, with what they announced. When none did, `method`
        is unknown to the group, as it would be on a server without the feature: Method not found."""
        announced = self._announced()
        allowed = self._gate().allowed_upstreams(group)
        found: dict[str, Mapping[str, Any]] = {n: announced[n] for n in allowed if feature in announced.get(n, {})}
        if not found and method is not None:
            raise MCPError(code=types.METHOD_NOT_FOUND, message=f"Method not found: {method}")
        return found

    async def reached(
        self, caller: Caller, feature: str, method: str | None, warnings: list[CredentialWarning] | None = None
    ) -> list[Reached]:
        """The group's upstreams that announced `feature` (none: `method` is not found), each with the group's
        credential. One whose credential is missing or unusable is left out (logged, and its setup warning
        added to `warnings`): a list leaves its items out, a request that only it could answer gets the warning."""
        out = []
        for name, capabilities in self._announcing(caller.group, feature, method).items():
            found = await self._reach(caller, name, capabilities)
            if isinstance(found, CredentialWarning):
                logger.info("upstream %s left out for group %s: %s", name, caller.group, found.warning)
                if warnings is not None:
                    warnings.append(found)
                continue
            out.append(found)
        return out

    async def _reach(self, caller: Caller, name: str, capabilities: Mapping[str, Any]) -> Reached | CredentialWarning:
        group = caller.group
        decision = self._gate().check_upstream(group, name, user=caller.user)
        if isinstance(decision, CredentialWarning):
            return decision
        if not isinstance(decision, Ready):
            raise MCPError(code=types.INVALID_PARAMS, message=f"Unknown upstream: {name}")
        try:
            usable = await self._usable_credential(group, decision)
        except oauth.OAuthError as exc:
            raise MCPError(code=types.INTERNAL_ERROR, message=f"upstream {name}: {exc}") from None
        if isinstance(usable, CredentialWarning):
            return usable
        handler = decision.tool.handler
        return Reached(name, handler, usable[0], usable[1], capabilities, decision.credential_name)

    async def _ask(
        self,
        up: Reached,
        send: Callable[[Session], Awaitable[_T]],
        ctx: ServerRequestContext[Any] | None,
        caller: Caller,
        audited: str | None = None,
    ) -> _T:
        """One request to an upstream on behalf of the agent; its errors reach the agent redacted. A request
        that reads content with the credential (`audited`: its method) leaves an audit row, as a tool call does:
        `UPSTREAM:METHOD` in the tool column."""
        started, outcome = time.perf_counter(), "error"
        try:
            scope = caller.upstream_scope(up.name, up.handler, up.handler_view.name)
            result = await self.pool.request(scope, up.handler, up.handler_view, send, caller.relayed(ctx))
            outcome = "ok"
            return result
        except UpstreamError as exc:
            raise MCPError(code=types.INTERNAL_ERROR, message=str(exc)) from None
        except MCPError as exc:
            raise MCPError(
                code=exc.code, message=up.redactor.text(exc.message), data=up.redactor.obj(exc.data)
            ) from None
        finally:
            if audited is not None:
                label = f"{up.name}:{audited}"
                self._audit.record(
                    caller.group, caller.agent, label, up.credential_name, outcome, started, user=caller.user
                )

    async def _gather(
        self, caller: Caller, feature: str, method: str, list_one: Callable[[Reached], Awaitable[_T]]
    ) -> list[_T]:
        """Each reached upstream's answer; one that fails is logged and left out, the others still answer."""
        out = []
        for up in await self.reached(caller, feature, method):
            try:
                out.append(await list_one(up))
            except (MCPError, UpstreamError) as exc:
                logger.warning("upstream %s: its %s could not be listed (%s)", up.name, feature, type(exc).__name__)
        return out

    # -- resources ---------------------------------------------------------------------------

    async def list_resources(self, ctx: ServerRequestContext[Any], caller: Caller) -> types.ListResourcesResult:

        async def list_one(up: Reached) -> list[types.Resource]:
            pages = await self._pages(up, ctx, caller, lambda c, s: s.live.list_resources(cursor=c))
            resources = [r for page in pages for r in page.resources]
            self._uris[up.name] = {str(r.uri) for r in resources}
            return [redacted(up.redactor, r) for r in resources]

        found = await self._gather(caller, "resources", "resources/list", list_one)
        return types.ListResourcesResult(resources=[r for listed in found for r in listed])

    async def list_resource_templates(
        self, ctx: ServerRequestContext[Any], caller: Caller
    ) -> types.ListResourceTemplatesResult:

        async def list_one(up: Reached) -> list[types.ResourceTemplate]:
            pages = await self._pages(up, ctx, caller, lambda c, s: s.live.list_resource_templates(cursor=c))
            templates = [t for page in pages for t in page.resource_templates]
            self._templates[up.name] = {t.uri_template for t in templates}
            return [redacted(up.redactor, t) for t in templates]

        found = await self._gather(caller, "resources", "resources/templates/list", list_one)
        return types.ListResourceTemplatesResult(resource_templates=[t for listed in found for t in listed])

    async def _pages(
        self,
        up: Reached,
        ctx: ServerRequestContext[Any],
        caller: Caller,
        fetch: Callable[[str | None, Session], Awaitable[_ModelT]],
    ) -> list[_ModelT]:
        """Every page of a list (the agent gets them in one answer: cursors of several upstreams don't mix)."""
        pages: list[_ModelT] = []
        cursor: str | None = None
        for _ in range(MAX_PAGES):
            page = await self._ask(up, partial(fetch, cursor), ctx, caller)
            pages.append(page)
            cursor = getattr(page, "next_cursor", None)
            if not cursor:
                break
        return pages

    async def _owners(self, ctx: ServerRequestContext[Any], caller: Caller, uris: list[str]) -> dict[str, list[str]]:
        """The URIs by the upstream each belongs to, as `_owner_of` finds it (the lists asked for again once at
        most); a URI of none of the group's upstreams is left out: nothing will ever say it changed."""
        candidates = await self.reached(caller, "resources", None)
        if len(candidates) == 1:
            return {candidates[0].name: list(uris)}

        def owner(uri: str) -> Reached | None:
            listed = (up for up in candidates if uri in self._uris.get(up.name, ()))
            matched = (up for up in candidates if any(_matches(t, uri) for t in self._templates.get(up.name, ())))
            return next(listed, None) or next(matched, None)

        if any(owner(uri) is None for uri in uris):
            await self.list_resources(ctx, caller)
            await self.list_resource_templates(ctx, caller)
        owners: dict[str, list[str]] = {}
        for uri in uris:
            if (up := owner(uri)) is not None:
                owners.setdefault(up.name, []).append(uri)
        return owners

    async def _owner_of(self, ctx: ServerRequestContext[Any], caller: Caller, uri: str, method: str | None) -> Reached:
        """The upstream a resource URI belongs to: the only one, the one that listed it, or the one with a
        template that matches it (the lists are asked for again when they are not known yet)."""
        warnings: list[CredentialWarning] = []
        candidates = await self.reached(caller, "resources", method, warnings)
        if len(candidates) == 1 and not warnings:
            return candidates[0]
        for refresh in (False, True):
            if refresh:
                await self.list_resources(ctx, caller)
                await self.list_resource_templates(ctx, caller)
            for up in candidates:
                if uri in self._uris.get(up.name, ()):
                    return up
            for up in candidates:
                if any(_matches(t, uri) for t in self._templates.get(up.name, ())):
                    return up
        raise _refused(warnings[0]) if warnings else _not_found(uri, ctx)

    async def read_resource(
        self, ctx: ServerRequestContext[Any], caller: Caller, uri: str, answers: Answers = NO_ANSWERS
    ) -> types.ReadResourceResult | types.InputRequiredResult:
        up = await self._owner_of(ctx, caller, uri, "resources/read")

        def in_rounds(
            s: Session, responses: types.InputResponses | None, state: str | None
        ) -> Awaitable[types.ReadResourceResult | types.InputRequiredResult]:
            return s.live.session.read_resource(
                uri, input_responses=responses, request_state=state, allow_input_required=True
            )

        try:
            result = await self._in_rounds(
                up, ctx, caller, ("resources/read", uri, None), answers, in_rounds, lambda s: s.live.read_resource(uri)
            )
        except MCPError as exc:
            raise _in_agents_protocol(exc, ctx) from None
        return result if isinstance(result, types.InputRequiredResult) else redacted(up.redactor, result)

    async def subscribe(self, ctx: ServerRequestContext[Any], caller: Caller, uri: str) -> types.EmptyResult:
        up = await self._owner_of(ctx, caller, uri, "resources/subscribe")
        if not _subscribes(up):
            raise MCPError(code=types.METHOD_NOT_FOUND, message="Method not found: resources/subscribe")

        async def send(session: Session) -> None:
            if session.relay.subscribe(uri, ctx):
                try:
                    await _send(session, types.SubscribeRequest(params=types.SubscribeRequestParams(uri=uri)))
                except BaseException:
                    session.relay.unsubscribe(uri, ctx)
                    raise

        await self._ask(up, send, ctx, caller)
        return types.EmptyResult()

    async def unsubscribe(self, ctx: ServerRequestContext[Any], caller: Caller, uri: str) -> types.EmptyResult:
        up = await self._owner_of(ctx, caller, uri, "resources/unsubscribe")

        async def send(session: Session) -> None:
            if session.relay.unsubscribe(uri, ctx):
                await _send(session, types.UnsubscribeRequest(params=types.UnsubscribeRequestParams(uri=uri)))

        await self._ask(up, send, ctx, caller)
        return types.EmptyResult()

    # -- listen streams (2026-07-28) ---------------------------------------------------------------

    async def publish(self, group: str, event: ServerEvent) -> None:
        """An upstream's event, to the open listen streams of the group's agents."""
        bus = self._buses.get(group)
        if bus is not None:
            await bus.publish(event)

    async def listen(
        self, ctx: ServerRequestContext[Any], caller: Caller, params: types.SubscriptionsListenRequestParams
    ) -> types.SubscriptionsListenResult:
        """A 2026-07-28 agent's `subscriptions/listen` stream: the group's upstreams (started when needed) each
        listen for it too, for list changes and for those of its resources that are theirs (an upstream hears of
        no other's), and what they send reaches it through the group's bus, filtered as it asked. Its stream is
        acknowledged once they listen (or after LISTEN_READY_SECONDS), so nothing sent after the acknowledgment
        is missed. An agent holds LISTEN_STREAMS_PER_AGENT streams at most, of LISTEN_URIS URIs each."""
        who = (caller.group, caller.agent)
        uris = params.notifications.resource_subscriptions or []
        if len(uris) > LISTEN_URIS:
            message = f"a listen stream watches {LISTEN_URIS} resources at most"
            raise MCPError(code=types.INVALID_PARAMS, message=message)
        if self._listen_streams[who] >= LISTEN_STREAMS_PER_AGENT:
            raise MCPError(
                code=types.INVALID_REQUEST,
                message=f"this agent has {LISTEN_STREAMS_PER_AGENT} listen streams open already: close one first",
            )
        self._listen_streams[who] += 1
        stream = object()
        listening: list[tuple[Reached, Relay]] = []
        try:
            ready = await self._listen_upstreams(ctx, caller, stream, uris, listening)
            with anyio.move_on_after(LISTEN_READY_SECONDS):
                for listened in ready:
                    await listened.wait()
            return await self._listen_handler(who)(ctx, params)
        finally:
            self._listen_streams[who] -= 1
            if not self._listen_streams[who]:
                del self._listen_streams[who]
                self._listen_handlers.pop(who, None)
            with anyio.CancelScope(shield=True), anyio.move_on_after(LISTEN_READY_SECONDS):
                for up, relay in listening:
                    await self._unlisten(up, relay, stream, ctx, caller)

    def _listen_handler(self, who: tuple[str, str | None]) -> ListenHandler:
        """The agent's own handler (its streams, its bound) over its group's bus."""
        group = who[0]
        bus = self._buses.setdefault(group, InMemorySubscriptionBus())
        handler = self._listen_handlers.get(who)
        if handler is None:
            handler = self._listen_handlers[who] = ListenHandler(bus, max_subscriptions=LISTEN_STREAMS_PER_AGENT)
        return handler

    async def _listen_upstreams(
        self,
        ctx: ServerRequestContext[Any],
        caller: Caller,
        stream: object,
        uris: list[str],
        listening: list[tuple[Reached, Relay]],
    ) -> list[anyio.Event]:
        """Have each of the group's upstreams listen for the stream (noted in `listening`); the events that say
        the 2026-07-28 ones do."""
        owners = await self._owners(ctx, caller, uris)
        ready: list[anyio.Event] = []

        async def register(up: Reached, session: Session) -> None:
            relay, own = session.relay, owners.get(up.name, [])
            if session.modern:
                ready.append(relay.listened)
            new = relay.listen(stream, own)
            listening.append((up, relay))
            if not session.modern and _subscribes(up):  # a handshake upstream is subscribed on the stream's behalf
                for uri in new:
                    await _send(session, types.SubscribeRequest(params=types.SubscribeRequestParams(uri=uri)))

        for name in self._gate().allowed_upstreams(caller.group):
            up = await self._reach(caller, name, self._announced().get(name, {}))
            if isinstance(up, CredentialWarning):
                continue
            try:
                await self._ask(up, partial(register, up), ctx, caller)
            except MCPError as exc:
                logger.warning("upstream %s: not listened to for group %s (%s)", name, caller.group, exc.message)
        return ready

    async def _unlisten(
        self, up: Reached, relay: Relay, stream: object, ctx: ServerRequestContext[Any], caller: Caller
    ) -> None:
        """A listen stream ended: a handshake upstream is unsubscribed from what no one watches any more."""
        gone = relay.unlisten(stream)

        async def unsubscribe(session: Session) -> None:
            if session.relay is relay and not session.modern:  # the same upstream process, still running
                for uri in gone:
                    await _send(session, types.UnsubscribeRequest(params=types.UnsubscribeRequestParams(uri=uri)))

        if gone and _subscribes(up):
            try:
                await self._ask(up, unsubscribe, ctx, caller)
            except (MCPError, UpstreamError) as exc:
                logger.info("upstream %s: not unsubscribed (%s)", up.name, type(exc).__name__)

    # -- prompts -----------------------------------------------------------------------------

    async def _prompts_of(self, ctx: ServerRequestContext[Any], caller: Caller, up: Reached) -> list[types.Prompt]:
        pages = await self._pages(up, ctx, caller, lambda c, s: s.live.list_prompts(cursor=c))
        return [p for page in pages for p in page.prompts]

    async def list_prompts(self, ctx: ServerRequestContext[Any], caller: Caller) -> types.ListPromptsResult:

        async def list_one(up: Reached) -> list[types.Prompt]:
            prompts = await self._prompts_of(ctx, caller, up)
            return [redacted(up.redactor, p).model_copy(update={"name": up.exported(p.name)}) for p in prompts]

        seen: set[str] = set()
        prompts = []
        for listed in await self._gather(caller, "prompts", "prompts/list", list_one):
            for prompt in listed:
                if prompt.name in seen:
                    logger.warning("prompt %s is offered by two upstreams: the first is kept", prompt.name)
                    continue
                seen.add(prompt.name)
                prompts.append(prompt)
        return types.ListPromptsResult(prompts=prompts)

    async def _prompt_owner(
        self, ctx: ServerRequestContext[Any], caller: Caller, name: str, method: str | None
    ) -> tuple[Reached, str]:
        """The upstream of an exported prompt name and its name there: by prefix, and by the upstreams'
        lists when more than one prefix fits (an upstream with no prefix fits every name)."""
        warnings: list[CredentialWarning] = []
        reached = await self.reached(caller, "prompts", method, warnings)
        fits = [(up, remote) for up in reached if (remote := up.remote(name))]
        if len(fits) > 1:
            for up, remote in fits:
                if any(p.name == remote for p in await self._prompts_of(ctx, caller, up)):
                    return up, remote
        elif fits:
            return fits[0]
        raise (
            _refused(warnings[0])
            if warnings
            else MCPError(code=types.INVALID_PARAMS, message=f"Unknown prompt: {name}")
        )

    async def get_prompt(
        self,
        ctx: ServerRequestContext[Any],
        caller: Caller,
        name: str,
        arguments: dict[str, str] | None,
        answers: Answers = NO_ANSWERS,
    ) -> types.GetPromptResult | types.InputRequiredResult:
        up, remote = await self._prompt_owner(ctx, caller, name, "prompts/get")

        def in_rounds(
            s: Session, responses: types.InputResponses | None, state: str | None
        ) -> Awaitable[types.GetPromptResult | types.InputRequiredResult]:
            return s.live.session.get_prompt(
                remote, arguments, input_responses=responses, request_state=state, allow_input_required=True
            )

        result = await self._in_rounds(
            up,
            ctx,
            caller,
            ("prompts/get", name, arguments),
            answers,
            in_rounds,
            lambda s: s.live.get_prompt(remote, arguments),
        )
        return result if isinstance(result, types.InputRequiredResult) else redacted(up.redactor, result)

    # -- input-required rounds (2026-07-28) -----------------------------------------------------

    async def _in_rounds(
        self,
        up: Reached,
        ctx: ServerRequestContext[Any],
        caller: Caller,
        asked: tuple[str, str, Mapping[str, Any] | None],
        answers: Answers,
        in_rounds: Callable[
            [Session, types.InputResponses | None, str | None], Awaitable[_R | types.InputRequiredResult]
        ],
        whole: Callable[[Session], Awaitable[_R]],
    ) -> _R | types.InputRequiredResult:
        """A request the upstream may answer with a round of questions (`rounds`): to an agent and an upstream
        both of 2026-07-28, the round reaches the agent and its retry the upstream (`in_rounds`); otherwise the
        upstream's questions are the agent's requests, asked during the request (`whole`). `asked`: the method,
        the prompt's name or the resource's URI, and the arguments the round is bound to."""
        method, what, arguments = asked
        bound = f"{method} {what}"
        resumed = None
        if answers.state is not None:
            resumed = await self._rounds.resume(answers.state, caller, bound, arguments)
            if resumed is None:
                raise MCPError(code=types.INVALID_PARAMS, message="Invalid or expired requestState")
        responses, state = answers.for_upstream(), resumed.upstream_state if resumed is not None else None
        agent_in_rounds = ctx.protocol_version in MODERN_PROTOCOL_VERSIONS

        async def send(session: Session) -> _R | types.InputRequiredResult:
            if not (agent_in_rounds and session.modern):
                return await whole(session)
            result = await in_rounds(session, responses, state)
            if not isinstance(result, types.InputRequiredResult):
                return result
            shown = shown_to_agent(result, session.relay)
            if isinstance(shown, str):
                raise MCPError(code=types.INTERNAL_ERROR, message=shown)
            return shown

        result = await self._ask(up, send, ctx, caller, method)
        if not isinstance(result, types.InputRequiredResult):
            return result
        asking = await self._rounds.begin(caller, bound, arguments, result)
        if asking is None:
            raise MCPError(code=types.INTERNAL_ERROR, message=f"upstream {up.name}: {UNRELAYED_ROUND}")
        return asking

    # -- completion and logging --------------------------------------------------------------

    async def complete(
        self, ctx: ServerRequestContext[Any], caller: Caller, params: types.CompleteRequestParams
    ) -> types.CompleteResult:
        self._announcing(caller.group, "completions", "completion/complete")
        ref = params.ref
        if isinstance(ref, types.PromptReference):
            up, remote = await self._prompt_owner(ctx, caller, ref.name, None)
            ref = ref.model_copy(update={"name": remote})
        else:
            up = await self._owner_of(ctx, caller, ref.uri, None)
        if "completions" not in up.capabilities:
            return types.CompleteResult(completion=types.Completion(values=[]))
        argument = {"name": params.argument.name, "value": params.argument.value}
        context = params.context.arguments if params.context is not None else None
        result = await self._ask(
            up, lambda s: s.live.complete(ref, argument, context), ctx, caller, "completion/complete"
        )
        return redacted(up.redactor, result)

    async def set_logging_level(
        self, ctx: ServerRequestContext[Any], caller: Caller, level: types.LoggingLevel
    ) -> types.EmptyResult:
        """Passed on to each of the group's upstreams that logs (an upstream is shared by the agents of the
        group, unless its declaration says isolation = "agent": the last level set is theirs)."""
        await self._gather(
            caller,
            "logging",
            "logging/setLevel",
            lambda up: self._ask(up, lambda s: _set_level(s, level), ctx, caller),
        )
        return types.EmptyResult()
