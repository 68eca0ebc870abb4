"""The dashboard's pages: server-rendered HTML (Jinja2, autoescaped), plain forms, no JavaScript.

Every page needs the admin session cookie; every form post also its CSRF token. Secret values are shown
masked and never put into a form: an empty secret input keeps the stored value. The rules (validation,
binding types, statuses) are `admin`'s, as for the CLI.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import anyio
import anyio.to_thread
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .. import admin, oauth
from ..agents import create_agent
from ..config import Settings
from ..credential import mask
from ..declarations import NAME_PATTERN, Catalog, CredentialField, CredentialSpec, Tool
from ..errors import ConflictError, CredentialValueError, CredgateError, NotFoundError
from ..store import Store
from .session import COOKIE_NAME, AdminSessions, Session

HERE = Path(__file__).parent
PENDING_SECONDS = 600
OUTCOMES = ("ok", "error", "missing_credential", "denied", "invalid_arguments")
DONE_MESSAGES = {
    "saved": "Saved.",
    "created": "Created.",
    "deleted": "Deleted.",
    "bound": "Binding saved.",
    "allowed": "Tool allowed.",
    "denied": "Tool removed from the group.",
    "revoked": "Agent revoked.",
    "connected": "Connected: the tokens are stored.",
    "setup": "Set up: the agent's next call will use this credential.",
}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # "no-referrer" would make browsers send `Origin: null` with forms
    "Cache-Control": "no-store",
}

Handler = Callable[[Request, Session], Awaitable[Response]]


@dataclass
class PendingConnection:
    """An OAuth2 connection started from the dashboard, waiting for the provider's redirect."""

    request: oauth.AuthorizationRequest
    name: str
    type: str
    client: dict[str, str] = field(repr=False)  # client id and secret for the code exchange
    given: dict[str, str] = field(repr=False)  # what the form gave, stored with the tokens
    uid: str | None  # the credential reconnected (None: a new one)
    bind_to: tuple[str, str] | None  # (group, tool) for the setup page
    started: float = field(default_factory=time.monotonic)


class Dashboard:
    """The pages, over one store and the current declarations (`catalog()` follows reloads)."""

    def __init__(self, store: Store, catalog: Callable[[], Catalog], settings: Settings) -> None:
        self.store = store
        self.catalog = catalog
        self.settings = settings
        self.sessions = AdminSessions(store)
        self.pending: dict[str, PendingConnection] = {}
        self.templates = Environment(
            loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(default=True)
        )
        self.templates.globals["mask"] = mask
        self.templates.globals["redirect_uri"] = f"{settings.public_url.rstrip('/')}/oauth/callback"
        self.templates.filters["q"] = lambda value: quote(str(value), safe="")

    def routes(self) -> list[Route | Mount]:
        page = self._page
        return [
            Route("/", page(self.home)),
            Route("/login", self.login, methods=["GET", "POST"]),
            Route("/logout", page(self.logout), methods=["POST"]),
            Route("/credentials", page(self.credentials)),
            Route("/credentials/new", page(self.credential_new), methods=["GET", "POST"]),
            Route("/credentials/{name}", page(self.credential_edit), methods=["GET", "POST"]),
            Route("/credentials/{name}/delete", page(self.credential_delete), methods=["POST"]),
            Route("/credentials/{name}/connect", page(self.credential_connect), methods=["POST"]),
            Route("/oauth/callback", self.oauth_callback),  # the state proves it; see oauth_callback
            Route("/groups", page(self.groups), methods=["GET", "POST"]),
            Route("/groups/{group}", page(self.group), methods=["GET"]),
            Route("/groups/{group}/{action:str}", page(self.group_action), methods=["POST"]),
            Route("/groups/{group}/tools/{tool}/setup", page(self.setup), methods=["GET", "POST"]),
            Route("/audit", page(self.audit)),
            Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static"),
        ]

    # -- plumbing ----------------------------------------------------------------------------

    def _page(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        """Only with the admin session; a form post only with its CSRF token as well."""

        async def endpoint(request: Request) -> Response:
            if request.method not in ("GET", "POST"):  # HEAD too: every handler reads "not GET" as a change
                return PlainTextResponse("Method Not Allowed", status_code=405, headers={"Allow": "GET, POST"})
            session = self.sessions.verify(request.cookies.get(COOKIE_NAME))
            if session is None:
                if request.method != "GET":
                    return self._refusal(request, 403, "Not signed in.")
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                return RedirectResponse(f"/login?{urlencode({'next': target})}", status_code=303)
            if request.method == "POST":
                form = await request.form()
                if not self.sessions.check_csrf(session, str(form.get("csrf", ""))):
                    return self._refusal(request, 403, "The form's CSRF token is missing or wrong: reload the page.")
            try:
                return await handler(request, session)
            except NotFoundError as exc:
                return self._refusal(request, 404, str(exc), session)
            except CredgateError as exc:  # a rule refused the change (messages never carry a value)
                return self._refusal(request, 409, str(exc), session)

        return endpoint

    def _render(
        self, request: Request, template: str, session: Session | None, status: int = 200, **context: Any
    ) -> HTMLResponse:
        done = request.query_params.get("done", "")
        html = self.templates.get_template(template).render(
            csrf=self.sessions.csrf_token(session) if session else "",
            signed_in=session is not None,
            message=DONE_MESSAGES.get(done, ""),
            path=request.url.path,
            **context,
        )
        headers = SECURITY_HEADERS
        spec = context.get("spec")
        if isinstance(spec, CredentialSpec) and spec.oauth is not None:
            # its Connect form is answered with a redirect to the provider, which `form-action` must allow
            parts = urlsplit(spec.oauth.authorize_url)
            allowed = f"form-action 'self' {parts.scheme}://{parts.netloc}"
            csp = SECURITY_HEADERS["Content-Security-Policy"].replace("form-action 'self'", allowed)
            headers = {**headers, "Content-Security-Policy": csp}
        return HTMLResponse(html, status_code=status, headers=headers)

    def _refusal(self, request: Request, status: int, text: str, session: Session | None = None) -> HTMLResponse:
        return self._render(request, "refused.html", session, status=status, title="Refused", text=text)

    @staticmethod
    def _back(path: str, done: str) -> RedirectResponse:
        return RedirectResponse(f"{path}?done={done}", status_code=303, headers=SECURITY_HEADERS)

    # -- sign in and out -----------------------------------------------------------------------

    async def login(self, request: Request) -> Response:
        next_path = request.query_params.get("next", "/")
        if not next_path.startswith("/") or next_path.startswith("//") or "\\" in next_path:
            next_path = "/"
        error = ""
        if request.method == "POST":
            form = await request.form()
            if self.sessions.check_secret(str(form.get("secret", ""))):
                response = RedirectResponse(next_path, status_code=303, headers=SECURITY_HEADERS)
                response.set_cookie(
                    COOKIE_NAME,
                    self.sessions.issue(),
                    max_age=self.sessions.max_age,
                    httponly=True,
                    samesite="strict",
                    secure=request.url.scheme == "https" or self.settings.public_url.startswith("https://"),
                )
                return response
            error = "That is not the admin secret."
        no_secret = self.store.admin_secret_hash() is None
        return self._render(
            request,
            "login.html",
            None,
            status=401 if error else 200,
            error=error,
            no_secret=no_secret,
            next_path=next_path,
        )

    async def logout(self, request: Request, session: Session) -> Response:
        response = RedirectResponse("/login", status_code=303, headers=SECURITY_HEADERS)
        response.delete_cookie(COOKIE_NAME, httponly=True, samesite="strict")
        return response

    async def home(self, request: Request, session: Session) -> Response:
        return RedirectResponse("/credentials", status_code=303)

    # -- credentials ---------------------------------------------------------------------------

    async def credentials(self, request: Request, session: Session) -> Response:
        catalog = self.catalog()
        rows = []
        for info in self.store.list_credentials():
            spec = catalog.types.get(info.type)
            try:
                values = self.store.read_credential(info.name)
                shown = admin.shown_values(spec, values, info.secret_fields)
                summary = admin.oauth_summary(spec, values) if spec else None
                unreadable = False
            except CredgateError:
                shown, summary, unreadable = {}, None, True
            rows.append({"info": info, "values": shown, "oauth": summary, "unreadable": unreadable})
        return self._render(request, "credentials.html", session, rows=rows, types=sorted(catalog.types))

    async def credential_new(self, request: Request, session: Session) -> Response:
        catalog = self.catalog()
        source = request.query_params
        type_name = source.get("type", "")
        if request.method == "POST":
            form = await request.form()
            type_name = str(form.get("type", ""))
        spec = catalog.types.get(type_name)
        if spec is None:
            return self._render(request, "choose_type.html", session, types=catalog.types, catalog=catalog)
        if request.method == "GET":
            return self._credential_form(request, session, spec, None)
        name, values, connect, errors = self._new_credential(spec, await request.form())
        if errors:
            return self._credential_form(request, session, spec, None, errors=errors, given=values, name=name)
        if connect:
            return self._start_connection(spec, name, values, values, None, None)
        admin.add_credential(self.store, spec, name, values)
        return self._back(f"/credentials/{quote(name, safe='')}", "created")

    def _new_credential(
        self, spec: CredentialSpec, form: Mapping[str, Any], taken: str = ""
    ) -> tuple[str, dict[str, str], bool, dict[str, str]]:
        """A new credential's form: (name, values, whether to connect it over OAuth2, errors by field)."""
        name = str(form.get("name", "")).strip()
        values = _form_values(spec, form)
        connect = form.get("action") == "connect" and spec.oauth is not None
        errors = _name_errors(name) or _value_errors(spec, values, complete=not connect, connect=connect)
        if not errors and self._credential_exists(name):
            errors = {"name": f"a credential named {name!r} exists already{taken}"}
        return name, values, connect, errors

    def _credential_exists(self, name: str) -> bool:
        try:
            self.store.credential_info(name)
        except NotFoundError:
            return False
        return True

    def _credential_form(
        self,
        request: Request,
        session: Session,
        spec: CredentialSpec,
        existing: Mapping[str, str] | None,
        *,
        errors: Mapping[str, str] | None = None,
        given: Mapping[str, str] | None = None,
        name: str = "",
        status: int | None = None,
        **context: Any,
    ) -> HTMLResponse:
        return self._render(
            request,
            "credential_form.html",
            session,
            status=status or (400 if errors else 200),
            spec=spec,
            fields=fields_of(spec),
            existing=existing,
            errors=errors or {},
            given=_plain(spec, given or {}),
            name=name,
            tools=self.catalog().tools_of_type(spec.type),
            **context,
        )

    async def credential_edit(self, request: Request, session: Session) -> Response:
        name = request.path_params["name"]
        info = self.store.credential_info(name)
        spec = self.catalog().types.get(info.type)
        if spec is None:
            return self._refusal(request, 409, f"No tool declares type {info.type!r} any more.", session)
        existing = self.store.read_credential(name)
        shown = admin.shown_values(spec, existing, info.secret_fields)
        context: dict[str, Any] = {"info": info, "oauth": admin.oauth_summary(spec, existing)}
        if request.method == "GET":
            return self._credential_form(request, session, spec, shown, name=name, **context)
        form = await request.form()
        values = _form_values(spec, form)
        cleared = [  # an optional plain field emptied on purpose
            f.name
            for f in fields_of(spec)
            if not f.secret and not f.required and f.name in existing and form.get(f"field_{f.name}") == ""
        ]
        errors = _value_errors(spec, values, complete=False)
        if errors:
            return self._credential_form(
                request, session, spec, shown, errors=errors, given=values, name=name, **context
            )
        if values:  # may wait for a refresh's lock: not on the event loop
            await anyio.to_thread.run_sync(admin.update_credential, self.store, self.catalog(), name, values)
        if cleared:
            self.store.update_credential(name, {}, spec.secret_fields, remove=cleared)
        return self._back(f"/credentials/{quote(name, safe='')}", "saved")

    async def credential_delete(self, request: Request, session: Session) -> Response:
        name = request.path_params["name"]
        form = await request.form()
        try:
            self.store.remove_credential(name, force=form.get("remove_bindings") == "yes")
        except ConflictError:
            info = self.store.credential_info(name)
            return self._render(request, "delete_refused.html", session, status=409, info=info)
        return self._back("/credentials", "deleted")

    async def credential_connect(self, request: Request, session: Session) -> Response:
        name = request.path_params["name"]
        info = self.store.credential_info(name)
        spec = self.catalog().types.get(info.type)
        if spec is None or spec.oauth is None:
            return self._refusal(request, 409, f"Credential {name!r} has no OAuth2 field to connect.", session)
        existing = self.store.read_credential(name)
        client = {k: existing[k] for k in ("client_id", "client_secret") if k in existing}
        return self._start_connection(spec, name, client, {}, existing.uid, None)

    # -- OAuth2 connections ----------------------------------------------------------------------

    def _start_connection(
        self,
        spec: CredentialSpec,
        name: str,
        client: dict[str, str],
        given: dict[str, str],
        uid: str | None,
        bind_to: tuple[str, str] | None,
    ) -> Response:
        assert spec.oauth is not None
        if not client.get("client_id"):
            raise CredentialValueError("the OAuth2 client id is missing")
        now = time.monotonic()
        self.pending = {k: v for k, v in self.pending.items() if now - v.started < PENDING_SECONDS}
        redirect_uri = f"{self.settings.public_url.rstrip('/')}/oauth/callback"
        auth = oauth.start_authorization(spec.oauth, client["client_id"], redirect_uri)
        self.pending[auth.state] = PendingConnection(auth, name, spec.type, client, given, uid, bind_to)
        return RedirectResponse(auth.url, status_code=303, headers=SECURITY_HEADERS)

    async def oauth_callback(self, request: Request) -> Response:
        """The provider's redirect back. It needs no session: the browser arrives from the provider's site,
        so a `SameSite=Strict` cookie is not sent; the single-use `state`, known only to the admin session
        that started the connection, is the proof. The page then links back into the dashboard."""
        params = dict(request.query_params)
        pending = self.pending.pop(params.get("state", ""), None) if params.get("state") else None
        if pending is None or time.monotonic() - pending.started > PENDING_SECONDS:
            return self._refusal(request, 400, "This answer belongs to no connection started here (or it expired).")
        spec = self.catalog().types.get(pending.type)
        if spec is None or spec.oauth is None:
            return self._refusal(request, 409, f"Type {pending.type!r} is no longer declared.")
        try:
            code = oauth.code_from_callback(pending.request, params)
            from ..handlers.http import make_client

            async with make_client() as http:
                tokens = await oauth.exchange_code(http, spec.oauth, pending.client, pending.request, code)
            save = partial(admin.save_connection, self.store, spec, pending.name, pending.given, tokens, pending.uid)
            await anyio.to_thread.run_sync(save)  # it may wait for a refresh's lock: not on the event loop
        except CredgateError as exc:
            return self._refusal(request, 502, f"Not connected: {exc}. Nothing was stored.")
        if pending.bind_to is not None:
            try:
                admin.bind(self.store, self.catalog(), *pending.bind_to, pending.name)
            except CredgateError as exc:  # the group or its tool changed meanwhile
                return self._refusal(request, 409, f"Connected and stored as {pending.name}, but not bound: {exc}")
        if pending.bind_to is not None:
            group, tool = pending.bind_to
            target, what = f"/groups/{quote(group, safe='')}", f"{pending.name}, bound to {tool} for {group}"
        else:
            target, what = f"/credentials/{quote(pending.name, safe='')}", pending.name
        return self._render(request, "connected.html", None, target=target, what=what)

    # -- agent groups ----------------------------------------------------------------------------

    async def groups(self, request: Request, session: Session) -> Response:
        error = ""
        if request.method == "POST":
            form = await request.form()
            name = str(form.get("name", "")).strip()
            error = _name_errors(name).get("name", "")
            if not error:
                try:
                    self.store.add_group(name, str(form.get("description", "")).strip())
                except ConflictError as exc:
                    error = str(exc)
            if not error:
                return self._back(f"/groups/{quote(name, safe='')}", "created")
        groups = self.store.list_groups()
        agents = self.store.list_agents()
        return self._render(
            request, "groups.html", session, status=400 if error else 200, groups=groups, agents=agents, error=error
        )

    async def group(
        self, request: Request, session: Session, error: str = "", token: str = "", status: int | None = None
    ) -> Response:
        name = request.path_params["group"]
        catalog = self.catalog()
        info = self.store.group(name)
        statuses = admin.group_statuses(self.store, catalog, name)
        credentials = self.store.list_credentials()
        choices = {}
        for st in statuses:
            if st.credential_type:
                choices[st.tool] = [c.name for c in credentials if c.type == st.credential_type]
        allowable = [n for n in catalog.tools if n not in info.tools and not _via_upstream(catalog, n, info.tools)]
        allowable += [f"{u}.*" for u in catalog.upstreams if f"{u}.*" not in info.tools]
        agents = [a for a in self.store.list_agents() if a.group == name]
        return self._render(
            request,
            "group.html",
            session,
            status=status or (400 if error else 200),
            info=info,
            statuses=statuses,
            choices=choices,
            allowable=sorted(allowable),
            agents=agents,
            error=error,
            token=token,
            status_text=admin.STATUS_LABELS,
        )

    async def group_action(self, request: Request, session: Session) -> Response:
        name = request.path_params["group"]
        action = request.path_params["action"]
        form = await request.form()
        catalog = self.catalog()
        here = f"/groups/{quote(name, safe='')}"
        self.store.group(name)  # 404 for an unknown group
        try:
            if action == "allow":
                admin.allow(self.store, catalog, name, [str(form.get("tool", ""))])
                return self._back(here, "allowed")
            if action == "deny":
                admin.deny(self.store, catalog, name, [str(form.get("tool", ""))])
                return self._back(here, "denied")
            if action == "bind":
                tool, credential = str(form.get("tool", "")), str(form.get("credential", ""))
                if credential:
                    admin.bind(self.store, catalog, name, tool, credential)
                else:
                    admin.unbind(self.store, catalog, name, tool)
                return self._back(here, "bound")
            if action == "agents":
                agent = str(form.get("name", "")).strip()
                problem = _name_errors(agent).get("name")
                if problem:
                    raise CredentialValueError(f"agent {problem}")
                token = create_agent(self.store, name, agent)
                return await self.group(request, session, token=token)
            if action == "revoke":
                agent = str(form.get("agent", ""))
                if not any(a.name == agent and a.group == name for a in self.store.list_agents()):
                    raise NotFoundError(f"no agent named {agent!r} in group {name!r}")
                self.store.revoke_agent(agent)
                return self._back(here, "revoked")
            if action == "delete":
                self.store.remove_group(name)
                return self._back("/groups", "deleted")
        except ConflictError as exc:
            return await self.group(request, session, error=str(exc), status=409)
        except CredentialValueError as exc:
            return await self.group(request, session, error=str(exc))
        raise NotFoundError(f"no such action: {action}")

    # -- the setup page a warning links to -------------------------------------------------------

    async def setup(self, request: Request, session: Session) -> Response:
        group, tool_name = request.path_params["group"], request.path_params["tool"]
        catalog = self.catalog()
        self.store.group(group)
        tool = admin.require_tool(catalog, tool_name)
        spec = tool.credential
        context = {"group": group, "tool": tool, "spec": spec}
        if spec is None:
            return self._render(request, "setup.html", session, **context, compatible=[], fields=[])
        if tool_name in catalog.upstreams:  # the upstream as a whole: allowed as NAME.*
            binding = self.store.binding(group, f"{tool_name}.*", tool_name)
        else:
            binding = self.store.binding(group, tool_name, tool.upstream)
        allowed = binding.allowed
        credentials = self.store.list_credentials()
        compatible = [c.name for c in credentials if c.type == spec.type]
        context |= {"compatible": compatible, "fields": fields_of(spec), "allowed": allowed, "expired": None}
        bound = next((c for c in credentials if c.name == binding.credential), None)
        if bound is not None and admin.credential_status(spec, bound).status == "expired":
            context["expired"] = bound.name  # the fix is to connect it again, not another binding
        if request.method == "GET":
            return self._render(request, "setup.html", session, **context, errors={}, given={}, name="")
        if not allowed:
            return self._render(request, "setup.html", session, status=409, **context, errors={}, given={}, name="")
        form = await request.form()
        if form.get("mode") == "existing":
            admin.bind(self.store, catalog, group, _bind_target(tool), str(form.get("credential", "")))
            return self._back(f"/groups/{quote(group, safe='')}", "setup")
        return await self._setup_new(request, session, context, spec, tool, group, form)

    async def _setup_new(
        self,
        request: Request,
        session: Session,
        context: dict[str, Any],
        spec: CredentialSpec,
        tool: Tool,
        group: str,
        form: Mapping[str, Any],
    ) -> Response:
        name, values, connect, errors = self._new_credential(spec, form, ": pick it above instead")
        if errors:
            given = _plain(spec, values)
            return self._render(
                request, "setup.html", session, status=400, **context, errors=errors, given=given, name=name
            )
        if connect:
            return self._start_connection(spec, name, values, values, None, (group, _bind_target(tool)))
        admin.add_credential(self.store, spec, name, values)
        admin.bind(self.store, self.catalog(), group, _bind_target(tool), name)
        return self._back(f"/groups/{quote(group, safe='')}", "setup")

    # -- audit -----------------------------------------------------------------------------------

    async def audit(self, request: Request, session: Session) -> Response:
        q = request.query_params
        group, tool, outcome = q.get("group") or None, q.get("tool") or None, q.get("outcome") or None
        try:
            limit = max(1, min(int(q.get("limit", "100")), 1000))
        except ValueError:
            limit = 100
        rows = self.store.read_audit(group=group, tool=tool, outcome=outcome, limit=limit)
        groups = [g.name for g in self.store.list_groups()]
        return self._render(
            request,
            "audit.html",
            session,
            rows=rows,
            groups=groups,
            tools=sorted(self.catalog().tools),
            outcomes=OUTCOMES,
            selected={"group": group or "", "tool": tool or "", "outcome": outcome or ""},
            limit=limit,
        )


def _bind_target(tool: Tool) -> str:
    """What a binding names: the tool, or the upstream MCP server the tool belongs to."""
    return tool.upstream or tool.name


def _via_upstream(catalog: Catalog, name: str, allowed: Mapping[str, Any]) -> bool:
    tool = catalog.tool(name)
    return tool is not None and tool.upstream is not None and f"{tool.upstream}.*" in allowed


def _name_errors(name: str) -> dict[str, str]:
    if not re.fullmatch(NAME_PATTERN, name):
        return {"name": "name: 1 to 64 letters, digits, '_' or '-'"}
    return {}


def fields_of(spec: CredentialSpec) -> list[CredentialField]:
    """The fields a person fills in (not those only credgate writes)."""
    return [f for f in spec.fields if f.name not in spec.managed_fields]


def _form_values(spec: CredentialSpec, form: Mapping[str, Any]) -> dict[str, str]:
    """The fields the form filled in. An empty input is no value: for a secret, the stored one stays."""
    values = {}
    for f in fields_of(spec):
        raw = form.get(f"field_{f.name}")
        if isinstance(raw, str) and raw != "":
            values[f.name] = raw
    return values


def _plain(spec: CredentialSpec, values: Mapping[str, str]) -> dict[str, str]:
    """What a form may show again after an error: the values of fields that are not secret."""
    return {k: v for k, v in values.items() if k not in spec.secret_fields}


def _value_errors(
    spec: CredentialSpec, values: Mapping[str, str], *, complete: bool, connect: bool = False
) -> dict[str, str]:
    """Each field's problem, to show next to it (never the value). Connecting needs the client id only."""
    errors = {}
    if connect:  # the tokens come from the provider; everything else must be there before going
        token_field = spec.oauth.field if spec.oauth else ""
        errors = {m: "required to connect" for m in spec.missing_fields(values) if m != token_field}
    for name, value in values.items():
        declared = spec.field(name)
        if declared is None:
            errors[name] = "not a field of this type"
            continue
        try:
            declared.check_value(value)
        except CredentialValueError as exc:
            errors[name] = str(exc)
    if complete:
        for missing in spec.missing_fields(values):
            errors.setdefault(missing, "required")
    return errors


def build_dashboard_app(settings: Settings, catalog: Catalog, *, host: str, port: int) -> Starlette:
    """`credgate dashboard`: the pages alone, behind the same Host/Origin guard as the MCP app."""
    from ..http_app import RequestGuard, allowed_hosts_and_origins

    store = Store.open(settings)
    dashboard = Dashboard(store, lambda: catalog, settings)
    hosts, origins = allowed_hosts_and_origins(host, port, settings.public_url)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            store.close()

    return Starlette(
        routes=dashboard.routes(),
        middleware=[Middleware(RequestGuard, hosts=hosts, origins=origins)],
        lifespan=lifespan,
    )
