"""Credentials: the list, a new one, editing and deleting one, and connecting one over OAuth2 (the connection
starts here and ends at the provider's redirect back, `oauth_callback`, the one page that runs on the event loop:
it awaits the provider, and hands its store work to a worker thread)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from ... import admin, oauth, people
from ...declarations import CredentialSpec
from ...errors import ConflictError, CredentialValueError, CredgateError, NotFoundError, StoreBusyError, StoreFaultError
from ...handlers.http import make_client
from ...logs import new_ref
from ...store import CredentialInfo, Page
from ..connections import PendingConnection
from ..forms import fields_of, form_values, name_errors, plain, value_errors
from ..paging import ListRequest, name_filter
from ..session import Session
from ..site import SECURITY_HEADERS, Site, back

logger = logging.getLogger("credgate.web")


def credentials(site: Site, request: Request, session: Session, form: FormData) -> Response:
    """A page of credentials by name (`paging`), each with its values masked: `?q=` a name prefix, `?type=`."""
    catalog = site.catalog()
    ask = ListRequest.of(request, filters=("type",))
    type_ = name_filter(request.query_params.get("type"))
    page: Page[CredentialInfo] = Page(())
    if ask.possible:
        page = site.store.credentials_page(
            limit=ask.limit, after=ask.after, before=ask.before, prefix=ask.q, type_=type_
        )
    rows = []
    for info in page.items:
        spec = catalog.types.get(info.type)
        try:
            values = site.store.read_credential(info.name)
            shown = admin.shown_values(spec, values, info.secret_fields)
            summary = admin.oauth_summary(spec, values) if spec else None
            unreadable = False
        except CredgateError:
            shown, summary, unreadable = {}, None, True
        rows.append({"info": info, "values": shown, "oauth": summary, "unreadable": unreadable})
    return site.render(
        request,
        "credentials.html",
        session,
        rows=rows,
        types=sorted(catalog.types),
        ask=ask,
        selected_type=type_ or "",
        links=ask.pager(page),
    )


def credential_new(site: Site, request: Request, session: Session, form: FormData) -> Response:
    catalog = site.catalog()
    type_name = request.query_params.get("type", "")
    if request.method == "POST":
        type_name = str(form.get("type", ""))
    spec = catalog.types.get(type_name)
    if spec is None:
        return site.render(request, "choose_type.html", session, types=catalog.types, catalog=catalog)
    if request.method == "GET":
        return credential_form(site, request, session, spec, None)
    name, values, connect, errors = new_credential(site, spec, form)
    if errors:
        return credential_form(site, request, session, spec, None, errors=errors, given=values, name=name)
    if connect:
        return start_connection(site, spec, name, values, values, None, None)
    admin.add_credential(site.store, spec, name, values)
    return back(f"/credentials/{quote(name, safe='')}", "created")


def new_credential(
    site: Site, spec: CredentialSpec, form: Mapping[str, Any], taken: str = ""
) -> tuple[str, dict[str, str], bool, dict[str, str]]:
    """A new credential's form: (name, values, whether to connect it over OAuth2, errors by field)."""
    name = str(form.get("name", "")).strip()
    values = form_values(spec, form)
    connect = form.get("action") == "connect" and spec.oauth is not None
    errors = name_errors(name) or value_errors(spec, values, complete=not connect, connect=connect)
    if not errors and _credential_exists(site, name):
        errors = {"name": f"a credential named {name!r} exists already{taken}"}
    return name, values, connect, errors


def _credential_exists(site: Site, name: str) -> bool:
    try:
        site.store.credential_info(name)
    except NotFoundError:
        return False
    return True


def credential_form(
    site: Site,
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
    return site.render(
        request,
        "credential_form.html",
        session,
        status=status or (400 if errors else 200),
        spec=spec,
        fields=fields_of(spec),
        existing=existing,
        errors=errors or {},
        given=plain(spec, given or {}),
        name=name,
        tools=site.catalog().tools_of_type(spec.type),
        **context,
    )


def credential_edit(site: Site, request: Request, session: Session, form: FormData) -> Response:
    name = request.path_params["name"]
    info = site.store.credential_info(name)
    spec = site.catalog().types.get(info.type)
    if spec is None:
        return site.refusal(request, 409, f"No tool declares type {info.type!r} any more.", session)
    existing = site.store.read_credential(name)
    shown = admin.shown_values(spec, existing, info.secret_fields)
    context: dict[str, Any] = {"info": info, "oauth": admin.oauth_summary(spec, existing)}
    if request.method == "GET":
        return credential_form(site, request, session, spec, shown, name=name, **context)
    values = form_values(spec, form)
    cleared = [  # an optional plain field emptied on purpose
        f.name
        for f in fields_of(spec)
        if not f.secret and not f.required and f.name in existing and form.get(f"field_{f.name}") == ""
    ]
    errors = value_errors(spec, values, complete=False)
    if errors:
        return credential_form(site, request, session, spec, shown, errors=errors, given=values, name=name, **context)
    if values:  # may wait for a refresh's lock
        admin.update_credential(site.store, site.catalog(), name, values)
    if cleared:
        site.store.update_credential(name, {}, spec.secret_fields, remove=cleared)
    return back(f"/credentials/{quote(name, safe='')}", "saved")


def credential_delete(site: Site, request: Request, session: Session, form: FormData) -> Response:
    name = request.path_params["name"]
    try:
        site.store.remove_credential(name, force=form.get("remove_bindings") == "yes")
    except ConflictError:
        info = site.store.credential_info(name)
        return site.render(request, "delete_refused.html", session, status=409, info=info)
    return back("/credentials", "deleted")


def credential_connect(site: Site, request: Request, session: Session, form: FormData) -> Response:
    name = request.path_params["name"]
    info = site.store.credential_info(name)
    spec = site.catalog().types.get(info.type)
    if spec is None or spec.oauth is None:
        return site.refusal(request, 409, f"Credential {name!r} has no OAuth2 field to connect.", session)
    existing = site.store.read_credential(name)
    client = admin.stored_client(existing)
    return start_connection(site, spec, name, client, {}, existing.uid, None)


# -- OAuth2 connections ------------------------------------------------------------------------------


def start_connection(
    site: Site,
    spec: CredentialSpec,
    name: str,
    client: dict[str, str],
    given: dict[str, str],
    uid: str | None,
    bind_to: tuple[str, str] | None,
    owner: str | None = None,
    link: str | None = None,
) -> Response:
    """Send the browser to the provider; its redirect back ends the connection (`oauth_callback`). `owner`: a
    personal credential of that user, `bind_to` then that user's personal binding; `link`: the setup link
    whose page started it, spent once connected."""
    assert spec.oauth is not None
    if not client.get("client_id"):
        raise CredentialValueError("the OAuth2 client id is missing")
    auth = oauth.start_authorization(spec.oauth, client["client_id"], site.redirect_uri)
    site.pending.add(PendingConnection(auth, name, spec.type, client, given, uid, bind_to, owner, link))
    return RedirectResponse(auth.url, status_code=303, headers=SECURITY_HEADERS)


async def oauth_callback(site: Site, request: Request) -> Response:
    """The provider's redirect back. It needs no session: the browser arrives from the provider's site,
    so a `SameSite=Strict` cookie is not sent; the single-use `state`, known only to the admin session
    that started the connection, is the proof. The page then links back into the dashboard."""
    params = dict(request.query_params)
    pending = site.pending.take(params.get("state", ""))
    if pending is None:
        return site.refusal(request, 400, "This answer belongs to no connection started here (or it expired).")
    spec = site.catalog().types.get(pending.type)
    if spec is None or spec.oauth is None:
        return site.refusal(request, 409, f"Type {pending.type!r} is no longer declared.")
    try:
        code = oauth.code_from_callback(pending.request, params)
        async with make_client() as http:
            tokens = await oauth.exchange_code(http, spec.oauth, pending.client, pending.request, code)
        # a setup link's connection stores nothing once its link is spent (another connection from it, a
        # save at its page) or expired: the agent holds the link too
        link = await site.run(site.setup_links.spend, pending.link) if pending.link is not None else None
        if pending.link is not None and link is None:
            return site.refusal(request, 409, "Not connected: the setup link was used meanwhile or has expired.")
        # it may wait for a refresh's lock
        await site.run(
            admin.save_connection, site.store, spec, pending.name, pending.given, tokens, pending.uid, pending.owner
        )
    except (StoreBusyError, StoreFaultError):  # 503 with a ref (`guard.StoreFaultAnswer`)
        raise
    except CredgateError as exc:
        return site.refusal(request, 502, f"Not connected: {exc}. Nothing was stored.")
    if pending.bind_to is not None:
        try:
            if pending.owner is None:
                await site.run(admin.bind, site.store, site.catalog(), *pending.bind_to, pending.name)
            else:
                group, tool = pending.bind_to
                await site.run(
                    people.bind_personal, site.store, site.catalog(), group, tool, pending.name, pending.owner
                )
        except (StoreBusyError, StoreFaultError) as exc:  # half done: said so, the store's words in the log only
            ref = new_ref()
            logger.error("connected %s but not bound (ref: %s): %s", pending.name, ref, exc)
            why = f"the store cannot be used just now (ref: {ref}); bind it again in a moment"
            return site.refusal(request, 503, f"Connected and stored as {pending.name}, but not bound: {why}")
        except CredgateError as exc:  # the group or its tool changed meanwhile
            return site.refusal(request, 409, f"Connected and stored as {pending.name}, but not bound: {exc}")
    if link is not None:  # back to the setup link's page, which now says it is done
        await site.run(site.setup_links.completions.complete, link.elicitation_id)
        target, what = f"/setup/{pending.link}", pending.name
    elif pending.bind_to is not None:
        group, tool = pending.bind_to
        page = "/me" if pending.owner is not None else f"/groups/{quote(group, safe='')}"
        target, what = page, f"{pending.name}, bound to {tool} for {group}"
    else:
        target, what = f"/credentials/{quote(pending.name, safe='')}", pending.name
    return site.render(request, "connected.html", None, target=target, what=what)
