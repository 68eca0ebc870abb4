"""No query behind a listing, a call, `group show` or a dashboard list page reads a whole table: each statement
the store runs for them is explained by the database itself (SQLite's EXPLAIN QUERY PLAN; PostgreSQL's EXPLAIN
with sequential scans priced out, so that only a statement no index can serve keeps one), and none scans a table
that grows with the store (credentials, their values, groups, their tools and upstreams, agents, the audit log).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date
from typing import Any

import pytest

from mcp_credgate import admin, people
from mcp_credgate.config import Settings
from mcp_credgate.declarations import Catalog
from mcp_credgate.gate import Gate
from mcp_credgate.store import AuditRow, Store
from mcp_credgate.store.database import Cursor, Params
from mcp_credgate.store.opening import check_keyring

GROWING = {
    "credentials",
    "credential_values",
    "groups",
    "group_tools",
    "group_upstreams",
    "agents",
    "audit",
    "users",
    "members",
    "personal_bindings",
}
TABLE_REF = re.compile(r"\b(?:FROM|JOIN|UPDATE)\s+([a-z_]+)(?:\s+(?:AS\s+)?([a-z_]+))?", re.IGNORECASE)
KEYWORDS = {"on", "where", "join", "left", "order", "group", "limit", "set", "union", "inner"}


@pytest.fixture
def filled(store: Store, catalog: Catalog) -> Store:
    """A few of everything, so that every statement has rows to find."""
    key, account = catalog.types["weatherkey"], catalog.types["account"]
    store.add_credentials(
        "weatherkey", [(f"k{i:03d}", {"api_key": f"wk_{i:010d}"}) for i in range(40)], key.secret_fields
    )
    store.add_credentials(
        "account", [(f"a{i:03d}", {"username": "u", "password": f"p{i}"}) for i in range(40)], account.secret_fields
    )
    for g in range(20):
        store.add_group(f"g{g:03d}")
        store.allow(f"g{g:03d}", ["weather", "login", "echo"])
        store.bind(f"g{g:03d}", "weather", f"k{g:03d}")
        store.add_agent(f"g{g:03d}", f"bot{g:03d}", f"hash{g}")
        store.allow(f"g{g:03d}", ["forecast"], personal=True)
    for u in range(60):  # three members per group, each with a personal key bound for forecast, and an agent
        user, group = f"u{u:03d}", f"g{u % 20:03d}"
        store.add_user(user, f"secret{u}")
        store.add_members(group, [user])
        store.add_credential(f"p{u:03d}", "weatherkey", {"api_key": f"wk_p{u:09d}"}, key.secret_fields, owner=user)
        store.bind_personal(group, "forecast", user, f"p{u:03d}")
        store.add_agent(group, f"ubot{u:03d}", f"uhash{u}", user)
    store.write_audit(
        [
            AuditRow("2030-01-01T00:00:00.000+00:00", f"g{i % 20:03d}", "bot", "weather", None, "ok", 1.0, user="u007")
            for i in range(200)
        ]
    )
    return store


@contextmanager
def recorded(store: Store) -> Iterator[list[tuple[str, Params]]]:
    """The statements (reads and writes of rows) the store runs inside the block."""
    db = store._db
    real = db.execute
    seen: list[tuple[str, Params]] = []

    def execute(sql: str, params: Params = ()) -> Cursor:
        if sql.lstrip().upper().startswith(("SELECT", "UPDATE", "DELETE", "WITH")):
            seen.append((sql, tuple(params)))
        return real(sql, params)

    db.execute = execute  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        del db.execute


def scans(store: Store, sql: str, params: Params) -> list[str]:
    """The growing tables the statement reads whole, as the database plans it."""
    names = {}
    for table, alias in TABLE_REF.findall(sql):
        if table.lower() in GROWING or table.lower() == "bindings":
            names[table.lower()] = table.lower()
            if alias and alias.lower() not in KEYWORDS:
                names[alias.lower()] = table.lower()
    db = store._db
    if store._db.shared:  # PostgreSQL
        db.execute("SET enable_seqscan = off")
        try:
            plan = db.execute(f"EXPLAIN (FORMAT JSON) {sql}", params).fetchone()
        finally:
            db.execute("SET enable_seqscan = on")
        found: list[str] = []
        _walk(json.loads(plan["QUERY PLAN"]) if isinstance(plan["QUERY PLAN"], str) else plan["QUERY PLAN"], found)
        return found
    out = []
    for row in db.execute(f"EXPLAIN QUERY PLAN {sql}", params):
        detail = row["detail"]
        m = re.match(r"SCAN (\w+)", detail)
        if m and m.group(1).lower() in names:
            out.append(f"{names[m.group(1).lower()]}: {detail}")
    return out


def _walk(node: Any, found: list[str], limited: bool = False) -> None:
    if isinstance(node, list):
        for n in node:
            _walk(n, found, limited)
        return
    if not isinstance(node, dict):
        return
    if "Plan" in node:
        _walk(node["Plan"], found, limited)
        return
    kind, relation = node.get("Node Type", ""), node.get("Relation Name", "")
    limited = limited or kind == "Limit"
    if relation in GROWING:
        whole_index = kind in ("Index Scan", "Index Only Scan") and "Index Cond" not in node and not limited
        if kind == "Seq Scan" or whole_index:
            found.append(f"{relation}: {kind}")
    for child in node.get("Plans", []):
        _walk(child, found, limited)


def assert_no_scan(store: Store, work: Callable[[], object]) -> None:
    with recorded(store) as statements:
        work()
    assert statements, "nothing was read"
    problems = {sql: found for sql, params in statements if (found := scans(store, sql, params))}
    assert not problems, problems


def test_tools_list_and_a_calls_binding_read_no_whole_table(filled: Store, catalog: Catalog) -> None:
    gate = Gate(filled, catalog, "http://127.0.0.1:8765")
    assert_no_scan(filled, lambda: gate.list_tools("g007"))
    assert_no_scan(filled, lambda: gate.check("g007", "weather", {}))


def test_a_members_tools_list_and_personal_call_read_no_whole_table(filled: Store, catalog: Catalog) -> None:
    gate = Gate(filled, catalog, "http://127.0.0.1:8765")
    assert_no_scan(filled, lambda: gate.list_tools("g007", "u007"))
    assert_no_scan(filled, lambda: gate.check("g007", "forecast", {}, "u007"))
    assert_no_scan(filled, lambda: gate.check("g007", "forecast", {}, "u008"))  # not a member


def test_group_show_reads_no_whole_table(filled: Store, catalog: Catalog) -> None:
    assert_no_scan(filled, lambda: (filled.group("g007"), admin.group_statuses(filled, catalog, "g007")))
    assert_no_scan(filled, lambda: people.personal_statuses(filled, catalog, "g007", "forecast"))


def test_users_pages_and_a_users_own_credentials_read_no_whole_table(filled: Store) -> None:
    assert_no_scan(filled, lambda: filled.users_page(limit=5, after="u010"))
    assert_no_scan(filled, lambda: filled.user("u007"))
    assert_no_scan(filled, lambda: filled.credentials_page(limit=5, owner="u007"))
    assert_no_scan(filled, lambda: filled.user_by_secret_hash("secret7"))


def test_a_credential_and_its_bindings_are_read_without_a_whole_table(filled: Store) -> None:
    assert_no_scan(filled, lambda: filled.credential_info("k007"))


@pytest.mark.parametrize(
    "how",
    [
        {},
        {"after": "k010"},
        {"before": "k010"},
        {"prefix": "k01"},
        {"prefix": "k01", "after": "k012"},
        {"type_": "account"},
        {"type_": "account", "prefix": "a0", "after": "a003"},
        {"type_": "account", "before": "a020"},
    ],
    ids=repr,
)
def test_a_credentials_page_reads_no_whole_table(filled: Store, how: dict[str, str]) -> None:
    assert_no_scan(filled, lambda: filled.credentials_page(limit=5, **how))
    assert_no_scan(filled, lambda: filled.credential_names_page(limit=5, **how))


@pytest.mark.parametrize("how", [{}, {"after": "g005"}, {"before": "g010"}, {"prefix": "g01"}], ids=repr)
def test_a_groups_page_and_its_agent_counts_read_no_whole_table(filled: Store, how: dict[str, str]) -> None:
    def work() -> None:
        page = filled.groups_page(limit=5, **how)
        filled.live_agent_counts([g.name for g in page.items])
        filled.group_names_page(limit=5, **how)

    assert_no_scan(filled, work)


@pytest.mark.parametrize(
    "how", [{}, {"after": "bot005"}, {"before": "bot010"}, {"prefix": "bot01"}, {"group": "g003"}], ids=repr
)
def test_an_agents_page_reads_no_whole_table(filled: Store, how: dict[str, str]) -> None:
    assert_no_scan(filled, lambda: filled.agents_page(limit=5, **how))


@pytest.mark.parametrize(
    "how",
    [
        {},
        {"group": "g003"},
        {"tool": "weather"},
        {"outcome": "error"},
        {"group": "g003", "tool": "weather"},
        {"user": "u007"},
        {"group": "g003", "day": date(2024, 1, 1), "ran": True},  # a usage chart's bar
    ],
    ids=repr,
)
def test_an_audit_page_reads_no_whole_table(filled: Store, how: dict[str, Any]) -> None:
    def work() -> None:
        first = filled.audit_page(limit=5, **how)
        if first.after is not None:
            filled.audit_page(limit=5, after=first.after, **how)

    assert_no_scan(filled, work)


def test_opening_the_store_and_an_agents_request_read_no_whole_table(filled: Store, settings: Settings) -> None:
    assert_no_scan(filled, lambda: filled.agent_by_token_hash("hash3"))
    assert_no_scan(filled, lambda: filled.agent_by_token_hash("uhash3"))
    assert_no_scan(filled, lambda: filled.touch_agent("bot003"))
    assert_no_scan(filled, lambda: filled.agent("bot003"))
    assert_no_scan(filled, lambda: check_keyring(filled._db, filled._keyring, settings))  # what `Store.open` checks


def test_the_check_sees_a_whole_table_read_when_there_is_one(filled: Store) -> None:
    with pytest.raises(AssertionError, match="group_tools"):  # `doctor` reads every binding, by design
        assert_no_scan(filled, filled.bound_targets)
