"""Lists of a big store, a page at a time: credentials, groups, agents and the audit log, paged by key (`after` /
`before` a name, or an audit row's id) and searched by name prefix, identically on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

import pytest

from mcp_credgate.config import Settings
from mcp_credgate.declarations import Catalog
from mcp_credgate.errors import ConflictError, NameTakenError
from mcp_credgate.store import AuditRow, Page, Store
from mcp_credgate.store import credentials as credentials_module
from tests.support.raw_db import raw_db

T = TypeVar("T")

# Names whose byte order differs from a dictionary's: upper before lower case, '-' and '_' between.
NAMES = ["A-1", "Zeta", "a", "a-b", "a_b", "ab", "ab-c", "abc", "abd", "b", "b0", "ba"]


def weatherkeys(store: Store, catalog: Catalog, names: Iterable[str]) -> None:
    spec = catalog.types["weatherkey"]
    store.add_credentials(
        spec.type, [(n, {"api_key": f"wk_{i:010d}"}) for i, n in enumerate(names)], spec.secret_fields
    )


def all_pages(fetch: Callable[[str | None], Page[T]], key: Callable[[T], str]) -> list[list[str]]:
    """Every page from the first, following `after`: the keys on each."""
    pages, after = [], None
    while True:
        page = fetch(after)
        pages.append([key(item) for item in page.items])
        if page.after is None:
            return pages
        assert page.after == key(page.items[-1])
        after = page.after


# -- credentials ------------------------------------------------------------------------------------


def test_credentials_come_in_pages_in_byte_order_of_their_names(store: Store, catalog: Catalog) -> None:
    weatherkeys(store, catalog, reversed(NAMES))
    pages = all_pages(lambda after: store.credentials_page(limit=5, after=after), lambda c: c.name)
    assert pages == [NAMES[0:5], NAMES[5:10], NAMES[10:]]
    assert [c.name for c in store.list_credentials()] == NAMES


def test_a_credentials_page_knows_whether_there_is_one_before_and_after(store: Store, catalog: Catalog) -> None:
    weatherkeys(store, catalog, NAMES)
    first = store.credentials_page(limit=5)
    assert (first.before, first.after) == (None, "a_b")
    middle = store.credentials_page(limit=5, after="a_b")
    assert [c.name for c in middle.items] == NAMES[5:10]
    assert (middle.before, middle.after) == ("ab", "b")
    back = store.credentials_page(limit=5, before="ab")
    assert [c.name for c in back.items] == NAMES[0:5]
    assert (back.before, back.after) == (None, "a_b")
    last = store.credentials_page(limit=5, before=None, after="b")
    assert [c.name for c in last.items] == ["b0", "ba"]
    assert (last.before, last.after) == ("b0", None)
    assert [c.name for c in store.credentials_page(limit=5, before="b0").items] == NAMES[5:10]


def test_paging_past_the_end_gives_an_empty_page(store: Store, catalog: Catalog) -> None:
    weatherkeys(store, catalog, NAMES)
    page = store.credentials_page(limit=5, after="zzz")
    assert page.items == () and page.after is None
    assert store.credentials_page(limit=5, before="A").items == ()


def test_a_name_prefix_finds_exactly_the_names_that_start_with_it(store: Store, catalog: Catalog) -> None:
    weatherkeys(store, catalog, NAMES)

    def found(prefix: str, limit: int = 50) -> list[list[str]]:
        return all_pages(
            lambda after: store.credentials_page(limit=limit, after=after, prefix=prefix), lambda c: c.name
        )

    assert found("ab") == [["ab", "ab-c", "abc", "abd"]]
    assert found("a") == [["a", "a-b", "a_b", "ab", "ab-c", "abc", "abd"]]
    assert found("a", limit=3) == [["a", "a-b", "a_b"], ["ab", "ab-c", "abc"], ["abd"]]
    assert found("a-") == [["a-b"]]
    assert found("A") == [["A-1"]]  # case counts: a name is an exact identifier
    assert found("abd") == [["abd"]]
    assert found("abz") == [[]]
    assert found("") == [NAMES]
    assert found("a%") == [[]] and found("a_") == [["a_b"]]  # no wildcard of SQL's LIKE


def test_a_prefix_and_a_type_together_page_backwards_too(store: Store, catalog: Catalog) -> None:
    weatherkeys(store, catalog, NAMES)
    account = catalog.types["account"]
    store.add_credentials(
        "account", [(f"ab-acct{i}", {"username": "u", "password": f"pw{i}"}) for i in range(3)], account.secret_fields
    )
    accounts = store.credentials_page(limit=2, prefix="ab", type_="account")
    assert [c.name for c in accounts.items] == ["ab-acct0", "ab-acct1"]
    assert accounts.after == "ab-acct1"
    rest = store.credentials_page(limit=2, prefix="ab", type_="account", after=accounts.after)
    assert [c.name for c in rest.items] == ["ab-acct2"] and rest.after is None and rest.before == "ab-acct2"
    back = store.credentials_page(limit=2, prefix="ab", type_="account", before="ab-acct2")
    assert [c.name for c in back.items] == ["ab-acct0", "ab-acct1"] and back.before is None
    keys = store.credentials_page(limit=50, prefix="ab", type_="weatherkey")
    assert [c.name for c in keys.items] == ["ab", "ab-c", "abc", "abd"]
    names = store.credential_names_page(limit=3, prefix="ab", type_="weatherkey")
    assert names.items == ("ab", "ab-c", "abc") and names.after == "abc"


def test_a_page_carries_each_credentials_fields_and_bindings(store: Store, catalog: Catalog) -> None:
    weatherkeys(store, catalog, ["k1", "k2"])
    store.add_group("ops")
    store.allow("ops", ["weather", "forecast"])
    store.bind("ops", "weather", "k1")
    store.bind("ops", "forecast", "k1")
    page = store.credentials_page(limit=10)
    k1, k2 = page.items
    assert k1.fields == ("api_key",) and k1.secret_fields == frozenset({"api_key"})
    assert k1.bindings == (("ops", "forecast"), ("ops", "weather"))
    assert k2.bindings == ()
    assert store.credential_info("k1") == k1


def test_a_store_made_before_the_list_indexes_gets_them_at_its_next_open(
    store: Store, catalog: Catalog, settings: Settings
) -> None:
    weatherkeys(store, catalog, reversed(NAMES))
    store.close()
    indexes = ("credentials_type_name", "credentials_key", "group_upstreams_credential", "agents_group")
    with raw_db(settings) as db:  # back to the schema of migration 0007
        for index in (*indexes, "audit_group", "audit_tool", "audit_outcome"):
            db.execute(f"DROP INDEX {index}")
        if db.postgres:
            for table in ("credentials", "groups", "agents"):
                db.execute(f'ALTER TABLE {table} ALTER COLUMN name TYPE TEXT COLLATE "default"')
            db.execute("DELETE FROM _credgate_migrations WHERE name = '0008_list_indexes'")
        else:
            db.execute("DELETE FROM _sqlite_migrations WHERE name = '0008_list_indexes'")
    with Store.open(settings) as reopened:
        assert not reopened._db.pending_migrations()
        assert [c.name for c in reopened.credentials_page(limit=50).items] == NAMES
        assert [c.name for c in reopened.credentials_page(limit=50, prefix="a-").items] == ["a-b"]
    with raw_db(settings) as db:
        if db.postgres:
            found = {r[0] for r in db.execute("SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()")}
            collations = {
                r[0]
                for r in db.execute(
                    "SELECT collation_name FROM information_schema.columns WHERE table_schema = current_schema()"
                    " AND column_name = 'name' AND table_name IN ('credentials', 'groups', 'agents')"
                )
            }
            assert collations == {"C"}
        else:
            found = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert set(indexes) <= found


# -- adding many at once --------------------------------------------------------------------------


def test_many_credentials_are_added_in_one_transaction_and_each_opens(store: Store, catalog: Catalog) -> None:
    spec = catalog.types["account"]
    rows = [(f"acct{i:04d}", {"username": f"user{i}", "password": f"pw-{i}"}) for i in range(2500)]
    seen: list[int] = []
    assert store.add_credentials("account", rows, spec.secret_fields, progress=seen.append) == 2500
    assert seen[-1] == 2500 and seen == sorted(seen)
    for name, values in (rows[0], rows[1234], rows[-1]):
        assert dict(store.read_credential(name)) == values
    assert store.credential_info("acct0007").secret_fields == frozenset({"password"})


@pytest.mark.postgresql_only
def test_adding_many_at_once_refreshes_the_planners_statistics(
    store: Store, catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(credentials_module, "ANALYZE_FROM", 100)
    spec = catalog.types["weatherkey"]
    store.add_credentials("weatherkey", [(f"k{i}", {"api_key": f"wk_{i:010d}"}) for i in range(99)], spec.secret_fields)

    def analysed() -> set[str]:
        rows = store._db.execute(
            "SELECT relname FROM pg_stat_user_tables WHERE schemaname = current_schema() AND last_analyze IS NOT NULL"
        )
        return {r["relname"] for r in rows}

    assert analysed() == set()
    store.add_credentials(
        "weatherkey", [(f"m{i}", {"api_key": f"wk_{i:010d}"}) for i in range(100)], spec.secret_fields
    )
    assert analysed() == {"credentials", "credential_values"}


def test_adding_many_with_a_name_that_exists_adds_none_of_them(store: Store, catalog: Catalog) -> None:
    weatherkeys(store, catalog, ["taken"])
    spec = catalog.types["weatherkey"]
    rows = [(f"k{i}", {"api_key": f"wk_{i:010d}"}) for i in range(1500)] + [("taken", {"api_key": "wk_0123456789"})]
    with pytest.raises(NameTakenError) as refused:
        store.add_credentials("weatherkey", rows, spec.secret_fields)
    assert refused.value.name == "taken"
    assert isinstance(refused.value, ConflictError)
    assert [c.name for c in store.list_credentials()] == ["taken"]


def test_adding_many_with_a_name_twice_adds_none_of_them(store: Store, catalog: Catalog) -> None:
    spec = catalog.types["weatherkey"]
    rows = [("twice", {"api_key": "wk_0123456789"}), ("other", {"api_key": "wk_0123456789"})] * 2
    with pytest.raises(NameTakenError) as refused:
        store.add_credentials("weatherkey", rows, spec.secret_fields)
    assert refused.value.name == "twice"
    assert store.list_credentials() == []


def test_a_failure_half_way_through_adding_many_leaves_the_store_as_it_was(store: Store, catalog: Catalog) -> None:
    weatherkeys(store, catalog, ["before"])
    spec = catalog.types["weatherkey"]

    def rows() -> object:
        for i in range(3000):
            if i == 2100:
                raise RuntimeError("the file went away")
            yield f"k{i}", {"api_key": f"wk_{i:010d}"}

    with pytest.raises(RuntimeError):
        store.add_credentials("weatherkey", rows(), spec.secret_fields)  # type: ignore[arg-type]
    assert [c.name for c in store.list_credentials()] == ["before"]
    weatherkeys(store, catalog, ["after"])  # the store is still usable
    assert store.existing_credential_names(["before", "after", "k1"]) == {"before", "after"}


# -- groups and agents ----------------------------------------------------------------------------


def test_groups_come_in_pages_with_their_tools_and_can_be_searched(store: Store, catalog: Catalog) -> None:
    for name in NAMES:
        store.add_group(name, f"group {name}")
    store.allow("ab", ["weather", "echo"])
    weatherkeys(store, catalog, ["k"])
    store.bind("ab", "weather", "k")
    pages = all_pages(lambda after: store.groups_page(limit=4, after=after), lambda g: g.name)
    assert pages == [NAMES[0:4], NAMES[4:8], NAMES[8:]]
    (ab,) = [g for g in store.groups_page(limit=50, prefix="ab").items if g.name == "ab"]
    assert dict(ab.tools) == {"echo": None, "weather": "k"} and ab.description == "group ab"
    assert [g.name for g in store.groups_page(limit=50, prefix="ab").items] == ["ab", "ab-c", "abc", "abd"]
    assert [g.name for g in store.groups_page(limit=2, before="ab").items] == ["a-b", "a_b"]
    assert [g.name for g in store.list_groups()] == NAMES
    names = store.group_names_page(limit=2, prefix="ab", after="ab")
    assert names.items == ("ab-c", "abc") and (names.before, names.after) == ("ab-c", "abc")
    assert store.group("ab") == ab


def test_agents_come_in_pages_by_name_and_by_group(store: Store) -> None:
    store.add_group("ops")
    store.add_group("research")
    for i, name in enumerate(NAMES):
        store.add_agent("ops" if i % 2 else "research", name, f"hash-{i}")
    store.revoke_agent("b")
    pages = all_pages(lambda after: store.agents_page(limit=5, after=after), lambda a: a.name)
    assert pages == [NAMES[0:5], NAMES[5:10], NAMES[10:]]
    ops = [NAMES[i] for i in range(1, len(NAMES), 2)]
    assert all_pages(lambda after: store.agents_page(limit=4, after=after, group="ops"), lambda a: a.name) == [
        ops[0:4],
        ops[4:],
    ]
    assert [a.name for a in store.agents_page(limit=50, prefix="ab").items] == ["ab", "ab-c", "abc", "abd"]
    assert store.agent("b").revoked_at is not None and store.agent("b").group == "ops"
    assert store.live_agent_counts(["ops", "research", "nobody"]) == {"ops": 5, "research": 6}
    assert store.has_live_agent()
    assert [a.name for a in store.list_agents()] == NAMES
    assert store.agents_page(limit=5, group="nobody").items == ()


# -- the audit log --------------------------------------------------------------------------------


def test_the_audit_log_comes_in_pages_newest_first_filtered_as_asked(store: Store) -> None:
    rows = [
        AuditRow(f"2030-01-01T00:00:{i:02d}.000+00:00", "ops" if i % 3 else "night", None, f"t{i % 2}", None, "ok", 1.0)
        for i in range(20)
    ]
    store.write_audit(rows)
    newest_first = list(reversed(rows))

    pages, after = [], None
    while True:
        page = store.audit_page(limit=6, after=after)
        pages.append(list(page.items))
        if page.after is None:
            break
        after = page.after
    assert pages == [newest_first[0:6], newest_first[6:12], newest_first[12:18], newest_first[18:]]
    second = store.audit_page(limit=6, after=store.audit_page(limit=6).after)
    assert list(store.audit_page(limit=6, before=second.before).items) == newest_first[0:6]

    night = [r for r in newest_first if r.group == "night"]
    assert list(store.audit_page(limit=50, group="night").items) == night
    night_t0 = [r for r in night if r.tool == "t0"]
    assert list(store.audit_page(limit=50, group="night", tool="t0").items) == night_t0
    assert store.read_audit(group="night", limit=3) == night[:3]
    assert list(store.iter_audit(limit=15)) == newest_first[:15]
    assert store.audit_page(limit=5, after="not-a-number").items == ()  # a foreign key is no page, not an error
