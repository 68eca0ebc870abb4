"""The setup page a missing-credential warning links to: bind a credential there is, or make one (and bind it)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response

from ... import admin
from ...allow import AllowEntry
from ...declarations import CredentialSpec, Tool, Upstream
from ..forms import fields_of, plain
from ..session import Session
from ..site import Site, back
from .credentials import new_credential, start_connection
from .groups import credential_choices


def setup(site: Site, request: Request, session: Session, form: FormData) -> Response:
    group, tool_name = request.path_params["group"], request.path_params["tool"]
    return setup_page(site, request, session, form, group, tool_name, lambda: back(_group_page(group), "setup"))


def setup_page(
    site: Site,
    request: Request,
    session: Session,
    form: FormData,
    group: str,
    tool_name: str,
    finished: Callable[[], Response],
    link: str | None = None,
) -> Response:
    """The page of `tool_name` in `group`; `finished()` answers a save (a binding made, a credential added and
    bound). `link`: the setup link it is opened by, which an OAuth2 connection spends when it ends."""
    catalog = site.catalog()
    site.store.group(group)
    tool = admin.require_tool(catalog, tool_name)
    spec = tool.credential
    context: dict[str, Any] = {"group": group, "tool": tool, "spec": spec, "link": link}
    if spec is None:
        return site.render(request, "setup.html", session, **context, compatible=[], fields=[])
    if isinstance(tool, Upstream):  # the upstream as a whole: allowed as NAME.*
        binding = site.store.binding(group, str(AllowEntry.of_upstream(tool_name)), tool_name)
    else:
        binding = site.store.binding(group, tool_name, tool.upstream)
    allowed = binding.allowed
    if binding.personal:  # nothing to bind for the group: each member binds their own
        return site.refusal(
            request,
            409,
            f"{tool_name} is personal in group {group}: each member sets it up on their own page (My tools).",
            session,
        )
    # A page opened by its link alone (over stdio) creates a credential; it binds no stored one: whoever holds
    # the link (the agent is given it too) must not pick another group's credential for this one.
    compatible = [] if session.by_link else credential_choices(site, spec.type)
    context |= {"compatible": compatible, "fields": fields_of(spec), "allowed": allowed, "expired": None}
    bound = site.store.credentials_named([binding.credential]).get(binding.credential) if binding.credential else None
    if bound is not None and admin.credential_status(spec, bound).status == "expired":
        # the fix is to connect it again, not another binding; by the link alone, only the group's own credential
        # (no user's, no other group's): connected again to whatever account the link's holder signs in with,
        # it would serve them all
        used_by = {g for g, _ in site.store.credential_info(bound.name).bindings}
        mine = bound.owner is None and used_by == {group}
        if mine or not session.by_link:
            context["expired"] = bound.name
    if request.method == "GET":
        return site.render(request, "setup.html", session, **context, errors={}, given={}, name="")
    if not allowed:
        return site.render(request, "setup.html", session, status=409, **context, errors={}, given={}, name="")
    if form.get("mode") == "existing" and not session.by_link:
        admin.bind(site.store, catalog, group, _bind_target(tool), str(form.get("credential", "")))
        return finished()
    if form.get("mode") == "reconnect" and context["expired"]:  # the bound credential, connected again
        existing = site.store.read_credential(context["expired"])
        client = admin.stored_client(existing)
        return start_connection(site, spec, existing.name, client, {}, existing.uid, None, link=link)
    return _setup_new(site, request, session, context, spec, tool, group, form, finished)


def _setup_new(
    site: Site,
    request: Request,
    session: Session,
    context: dict[str, Any],
    spec: CredentialSpec,
    tool: Tool | Upstream,
    group: str,
    form: Mapping[str, Any],
    finished: Callable[[], Response],
) -> Response:
    name, values, connect, errors = new_credential(site, spec, form, ": pick it above instead")
    if errors:
        given = plain(spec, values)
        return site.render(request, "setup.html", session, status=400, **context, errors=errors, given=given, name=name)
    if connect:
        return start_connection(
            site, spec, name, values, values, None, (group, _bind_target(tool)), None, context["link"]
        )
    admin.add_credential(site.store, spec, name, values)
    admin.bind(site.store, site.catalog(), group, _bind_target(tool), name)
    return finished()


def _group_page(group: str) -> str:
    return f"/groups/{quote(group, safe='')}"


def _bind_target(tool: Tool | Upstream) -> str:
    """What a binding names: the tool, or the upstream MCP server (which the tool belongs to)."""
    return (tool.upstream if isinstance(tool, Tool) else None) or tool.name
