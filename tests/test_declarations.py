"""tools.d/*.toml: what loads, and every problem named by file and field (contract §2)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from mcp_credgate.declarations import Catalog, CredentialSpec, McpHandler, SandboxSpec, load_catalog
from mcp_credgate.errors import CredentialValueError, DeclarationError
from tests.support.samples import REPO_TOOLS_DIR, write_tool

pytestmark = pytest.mark.no_store  # never touches a store: runs once, not per backend

CREDENTIALED_HTTP = """
    name = "{name}"

    [credential]
    type = "svc"
    fields = [{{ name = "token", kind = "token" }}]

    [handler]
    kind = "http"
    url = "{url}"
    headers = {{ Authorization = "Bearer {{cred.token}}" }}
"""


def load(folder: Path) -> Catalog:
    return load_catalog([folder])


def only_problem(catalog: Catalog) -> str:
    assert len(catalog.problems) == 1, catalog.problems
    return catalog.problems[0]


# -- what loads ------------------------------------------------------------------------------


def test_repository_tools_load_without_problems() -> None:
    catalog = load(REPO_TOOLS_DIR)

    assert catalog.problems == ()
    assert len(catalog.tools) == 7
    assert set(catalog.tools) == {
        "account_login",
        "echo",
        "github_repos",
        "google_calendar_list",
        "stripe_balance",
        "utc_now",
        "weather",
    }
    assert set(catalog.types) == {"demo_account", "github", "google", "stripe"}
    assert catalog.types["google"].oauth is not None
    needs_none = [t.name for t in catalog.tools.values() if t.credential is None]
    assert set(needs_none) == {"echo", "utc_now", "weather"}


def test_repository_tools_include_api_key_and_username_password_types() -> None:
    catalog = load(REPO_TOOLS_DIR)

    kinds = {name: {f.kind for f in spec.fields} for name, spec in catalog.types.items()}
    assert "api_key" in kinds["stripe"]
    assert {"username", "password"} <= kinds["demo_account"]


def test_sample_tools_load_and_share_a_type(tools_dir: Path) -> None:
    catalog = load(tools_dir)

    assert catalog.problems == ()
    assert set(catalog.tools) == {"echo", "weather", "forecast", "login"}
    assert catalog.tools_of_type("weatherkey") == ["forecast", "weather"]
    assert catalog.tools["echo"].function is not None
    assert catalog.tools["weather"].source == tools_dir / "weather.toml"


def test_missing_tools_folder_gives_an_empty_catalog(tmp_path: Path) -> None:
    catalog = load(tmp_path / "nowhere")

    assert catalog.tools == {}
    assert catalog.problems == ()


def test_tools_from_several_folders_are_merged(tmp_path: Path, tools_dir: Path) -> None:
    other = tmp_path / "more"
    write_tool(
        other,
        "clock.toml",
        """
        name = "clock"
        [handler]
        kind = "python"
        entrypoint = "mcp_credgate.examples:utc_now"
    """,
    )

    catalog = load_catalog([tools_dir, other])

    assert catalog.problems == ()
    assert "clock" in catalog.tools
    assert "echo" in catalog.tools


def test_entrypoint_module_beside_the_declarations_imports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))  # the loader adds the folder to sys.path
    folder = tmp_path / "local_tools"
    (folder).mkdir()
    (folder / "credgate_test_local_handler.py").write_text("def hello(args, credential):\n    return 'hi'\n")
    write_tool(
        folder,
        "hello.toml",
        """
        name = "hello"
        [handler]
        kind = "python"
        entrypoint = "credgate_test_local_handler:hello"
    """,
    )

    catalog = load(folder)

    assert catalog.problems == ()
    fn = catalog.tools["hello"].function
    assert fn is not None
    assert fn({}, {}) == "hi"


# -- every problem names file and field -------------------------------------------------------


def test_toml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write_tool(tmp_path, "broken.toml", 'name = "broken"\ndescription = "x"\nhandler = = 1\n')

    problem = only_problem(load(tmp_path))

    assert str(path) in problem
    assert "TOML" in problem
    assert "line 3" in problem


def test_unknown_top_level_key_is_named(tmp_path: Path) -> None:
    path = write_tool(
        tmp_path,
        "extra.toml",
        """
        name = "extra"
        colour = "blue"
        [handler]
        kind = "python"
        entrypoint = "mcp_credgate.examples:echo"
    """,
    )

    problem = only_problem(load(tmp_path))

    assert str(path) in problem
    assert "colour" in problem
    assert "unknown key" in problem


def test_unknown_key_in_a_credential_field_is_named(tmp_path: Path) -> None:
    path = write_tool(
        tmp_path,
        "extra.toml",
        """
        name = "extra"
        [credential]
        type = "svc"
        fields = [{ name = "token", kind = "token", secrett = true }]
        [handler]
        kind = "http"
        url = "https://api.example.com/"
    """,
    )

    problem = only_problem(load(tmp_path))

    assert str(path) in problem
    assert "credential.fields[0].secrett" in problem
    assert "unknown key" in problem


def test_unknown_key_in_the_handler_is_named(tmp_path: Path) -> None:
    path = write_tool(
        tmp_path,
        "extra.toml",
        """
        name = "extra"
        [handler]
        kind = "http"
        url = "https://api.example.com/"
        verb = "GET"
    """,
    )

    problem = only_problem(load(tmp_path))

    assert str(path) in problem
    assert "handler.verb" in problem
    assert "unknown key" in problem


def test_unknown_field_kind_is_named(tmp_path: Path) -> None:
    path = write_tool(
        tmp_path,
        "kind.toml",
        """
        name = "kind"
        [credential]
        type = "svc"
        fields = [{ name = "token", kind = "magic" }]
        [handler]
        kind = "http"
        url = "https://api.example.com/"
    """,
    )

    problem = only_problem(load(tmp_path))

    assert str(path) in problem
    assert "credential.fields[0].kind" in problem


def test_invalid_tool_name_is_named(tmp_path: Path) -> None:
    path = write_tool(
        tmp_path,
        "bad.toml",
        """
        name = "has spaces"
        [handler]
        kind = "python"
        entrypoint = "mcp_credgate.examples:echo"
    """,
    )

    problem = only_problem(load(tmp_path))

    assert str(path) in problem
    assert "name" in problem


def test_duplicate_tool_names_name_both_files(tmp_path: Path) -> None:
    body = """
        name = "twin"
        [handler]
        kind = "python"
        entrypoint = "mcp_credgate.examples:echo"
    """
    first = write_tool(tmp_path, "a_twin.toml", body)
    second = write_tool(tmp_path, "b_twin.toml", body)

    catalog = load(tmp_path)
    problem = only_problem(catalog)

    assert str(first) in problem
    assert str(second) in problem
    assert "name" in problem
    assert "twin" in problem
    assert catalog.tools["twin"].source == first


def test_one_type_declared_with_different_fields_names_both_files(tmp_path: Path) -> None:
    first = write_tool(tmp_path, "a.toml", CREDENTIALED_HTTP.format(name="a", url="https://a.example.com/"))
    second = write_tool(
        tmp_path,
        "b.toml",
        """
        name = "b"
        [credential]
        type = "svc"
        fields = [{ name = "token", kind = "token" }, { name = "region", kind = "text" }]
        [handler]
        kind = "http"
        url = "https://b.example.com/"
    """,
    )

    problem = only_problem(load(tmp_path))

    assert str(first) in problem
    assert str(second) in problem
    assert "credential.fields" in problem
    assert "'svc'" in problem


@pytest.mark.parametrize(
    "url",
    [
        "{args.scheme}://api.example.com/items",
        "https://{args.host}/items",
        "https://api.{args.domain}.com/items",
        "https://api.example.com:{args.port}/items",
        "https://{cred.token}@api.example.com/items",
    ],
)
def test_placeholder_in_url_scheme_host_or_port_is_refused(tmp_path: Path, url: str) -> None:
    path = write_tool(
        tmp_path,
        "origin.toml",
        f"""
        name = "origin"
        [input_schema]
        type = "object"
        properties.scheme = {{ type = "string" }}
        properties.host = {{ type = "string" }}
        properties.domain = {{ type = "string" }}
        properties.port = {{ type = "string" }}
        [credential]
        type = "svc"
        fields = [{{ name = "token", kind = "token" }}]
        [handler]
        kind = "http"
        url = "{url}"
    """,
    )

    problems = load(tmp_path).problems

    assert any(str(path) in p and "handler.url" in p and "scheme, host or port" in p for p in problems), problems


def test_placeholders_in_url_path_and_query_are_allowed(tmp_path: Path) -> None:
    write_tool(
        tmp_path,
        "path.toml",
        """
        name = "path"
        [input_schema]
        type = "object"
        properties.owner = { type = "string" }
        [credential]
        type = "svc"
        fields = [{ name = "token", kind = "token" }]
        [handler]
        kind = "http"
        url = "https://api.example.com/users/{args.owner}/repos?key={cred.token}"
    """,
    )

    assert load(tmp_path).problems == ()


@pytest.mark.parametrize(
    ("where", "snippet"),
    [
        ("handler.headers.Authorization", 'headers = { Authorization = "Bearer {cred.secret}" }'),
        ("handler.query.key", 'query = { key = "{cred.secret}" }'),
        ("handler.json.auth.key", 'json = { auth = { key = "{cred.secret}" } }'),
    ],
)
def test_placeholder_naming_a_field_the_type_lacks_is_named(tmp_path: Path, where: str, snippet: str) -> None:
    path = write_tool(
        tmp_path,
        "lacks.toml",
        f"""
        name = "lacks"
        [credential]
        type = "svc"
        fields = [{{ name = "token", kind = "token" }}]
        [handler]
        kind = "http"
        method = "POST"
        url = "https://api.example.com/"
        {snippet}
    """,
    )

    problem = only_problem(load(tmp_path))

    assert str(path) in problem
    assert where in problem
    assert "{cred.secret}" in problem
    assert "lacks" in problem


def test_credential_placeholder_in_a_tool_without_credential_is_refused(tmp_path: Path) -> None:
    path = write_tool(
        tmp_path,
        "nocred.toml",
        """
        name = "nocred"
        [handler]
        kind = "http"
        url = "https://api.example.com/"
        headers = { Authorization = "Bearer {cred.token}" }
    """,
    )

    problem = only_problem(load(tmp_path))

    assert str(path) in problem
    assert "handler.headers.Authorization" in problem
    assert "declares no credential" in problem


def test_argument_placeholder_missing_from_input_schema_is_named(tmp_path: Path) -> None:
    path = write_tool(
        tmp_path,
        "noarg.toml",
        """
        name = "noarg"
        [handler]
        kind = "http"
        url = "https://api.example.com/"
        query = { q = "{args.query}" }
    """,
    )

    problem = only_problem(load(tmp_path))

    assert str(path) in problem
    assert "handler.query.q" in problem
    assert "{args.query}" in problem


def test_unknown_placeholder_scope_is_named(tmp_path: Path) -> None:
    path = write_tool(
        tmp_path,
        "scope.toml",
        """
        name = "scope"
        [handler]
        kind = "http"
        url = "https://api.example.com/"
        headers = { X-Env = "{env.HOME}" }
    """,
    )

    problem = only_problem(load(tmp_path))

    assert str(path) in problem
    assert "handler.headers.X-Env" in problem
    assert "{env.HOME}" in problem


@pytest.mark.parametrize("url", ["http://api.example.com/v1", "http://10.0.0.5:8080/v1", "http://127.example.com/"])
def test_credentialed_plain_http_to_a_remote_host_is_refused(tmp_path: Path, url: str) -> None:
    path = write_tool(tmp_path, "plain.toml", CREDENTIALED_HTTP.format(name="plain", url=url))

    problem = only_problem(load(tmp_path))

    assert str(path) in problem
    assert "handler.url" in problem
    assert "https://" in problem


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:9000/v1", "http://localhost/v1", "http://LOCALHOST:1/", "http://[::1]:8080/"]
)
def test_credentialed_plain_http_to_loopback_is_allowed(tmp_path: Path, url: str) -> None:
    write_tool(tmp_path, "local.toml", CREDENTIALED_HTTP.format(name="local", url=url))

    assert load(tmp_path).problems == ()


def test_plain_http_without_a_credential_is_allowed(tmp_path: Path) -> None:
    write_tool(
        tmp_path,
        "open.toml",
        """
        name = "open"
        [handler]
        kind = "http"
        url = "http://data.example.com/open"
    """,
    )

    assert load(tmp_path).problems == ()


def test_relative_or_non_http_url_is_refused(tmp_path: Path) -> None:
    path = write_tool(
        tmp_path,
        "ftp.toml",
        """
        name = "ftp"
        [handler]
        kind = "http"
        url = "ftp://files.example.com/x"
    """,
    )

    problem = only_problem(load(tmp_path))

    assert str(path) in problem
    assert "handler.url" in problem


# -- an http handler's redirect policy ----------------------------------------------------------

REDIRECTS = """
    name = "hops"
    [handler]
    kind = "http"
    url = "{url}"
    redirects = {policy}
"""


def redirect_policy(tmp_path: Path, policy: str, url: str = "http://api.example.com/v1") -> object:
    write_tool(tmp_path, "hops.toml", REDIRECTS.format(url=url, policy=policy))
    catalog = load(tmp_path)
    assert catalog.problems == (), catalog.problems
    handler = catalog.tools["hops"].decl.handler
    return getattr(handler, "redirects", None)


def test_an_http_handler_follows_same_origin_redirects_unless_told_otherwise(tmp_path: Path) -> None:
    write_tool(tmp_path, "plain.toml", CREDENTIALED_HTTP.format(name="plain", url="https://api.example.com/"))

    handler = load(tmp_path).tools["plain"].decl.handler

    assert getattr(handler, "redirects", None) == "same-origin"


@pytest.mark.parametrize(
    ("policy", "loaded"),
    [
        ('"same-origin"', "same-origin"),
        ('"https"', "https"),
        ("false", False),
        ("[]", ()),
        (
            '["https://api.example.com", "https://CDN.example.com:8443", "http://[::1]:8080", "http://127.0.0.1:9"]',
            ("https://api.example.com", "https://cdn.example.com:8443", "http://[::1]:8080", "http://127.0.0.1:9"),
        ),
    ],
)
def test_a_redirect_policy_loads_as_declared(tmp_path: Path, policy: str, loaded: object) -> None:
    assert redirect_policy(tmp_path, policy) == loaded


@pytest.mark.parametrize("policy", ["true", '"always"', '"same_origin"', "1", '""', "{ to = 1 }"])
def test_an_unknown_redirect_policy_is_named_with_the_values_it_may_take(tmp_path: Path, policy: str) -> None:
    path = write_tool(tmp_path, "hops.toml", REDIRECTS.format(url="https://api.example.com/", policy=policy))

    problem = only_problem(load(tmp_path))

    assert problem.startswith(f"{path}: handler.redirects: ")
    assert '"same-origin"' in problem and '"https"' in problem and "false" in problem
    assert "\n" not in problem


@pytest.mark.parametrize(
    "entry",
    [
        "https://api.example.com/",
        "https://api.example.com/v1",
        "https://api.example.com?x=1",
        "https://api.example.com#top",
        "https://user@api.example.com",
        "https://api.example.com:0",
        "https://api.example.com:65536",
        "https://api.example.com:",
        "ftp://api.example.com",
        "api.example.com",
        "//api.example.com",
        "https://",
        "https://[not-ipv6]",
        "https://{args.host}",
        "https://api example.com",
    ],
)
def test_a_redirect_origin_that_is_not_scheme_host_and_port_is_one_line_naming_file_and_field(
    tmp_path: Path, entry: str
) -> None:
    policy = f'["https://ok.example.com", "{entry}"]'
    path = write_tool(tmp_path, "hops.toml", REDIRECTS.format(url="https://api.example.com/", policy=policy))

    problem = only_problem(load(tmp_path))

    assert problem.startswith(f"{path}: handler.redirects: ")
    assert "[1]" in problem
    assert "scheme://host[:port]" in problem
    assert "\n" not in problem


def test_a_redirect_origin_entry_that_is_not_text_is_named(tmp_path: Path) -> None:
    path = write_tool(tmp_path, "hops.toml", REDIRECTS.format(url="https://api.example.com/", policy="[443]"))

    problem = only_problem(load(tmp_path))

    assert problem.startswith(f"{path}: handler.redirects: ")
    assert "[0]" in problem


def test_a_listed_http_origin_is_refused_when_the_declared_url_is_https(tmp_path: Path) -> None:
    policy = '["https://cdn.example.com", "http://cdn.example.com"]'
    path = write_tool(tmp_path, "hops.toml", REDIRECTS.format(url="https://api.example.com/", policy=policy))

    problem = only_problem(load(tmp_path))

    assert problem.startswith(f"{path}: handler.redirects[1]: ")
    assert "https://" in problem and "http://" in problem


def test_a_redirect_policy_is_only_for_http_handlers(tmp_path: Path) -> None:
    path = write_tool(
        tmp_path,
        "py.toml",
        """
        name = "py"
        [handler]
        kind = "python"
        entrypoint = "mcp_credgate.examples:echo"
        redirects = false
    """,
    )

    problem = only_problem(load(tmp_path))

    assert str(path) in problem and "handler.redirects" in problem and "unknown key" in problem


@pytest.mark.parametrize(
    "entrypoint",
    [
        "credgate_no_such_module_xyz:run",
        "mcp_credgate.examples:no_such_function",
        "mcp_credgate.examples:__doc__",
    ],
)
def test_entrypoint_that_does_not_import_is_named(tmp_path: Path, entrypoint: str) -> None:
    path = write_tool(
        tmp_path,
        "ep.toml",
        f"""
        name = "ep"
        [handler]
        kind = "python"
        entrypoint = "{entrypoint}"
    """,
    )

    catalog = load(tmp_path)
    problem = only_problem(catalog)

    assert str(path) in problem
    assert "handler.entrypoint" in problem
    assert "does not import" in problem
    assert "ep" not in catalog.tools


def test_malformed_entrypoint_is_named(tmp_path: Path) -> None:
    path = write_tool(
        tmp_path,
        "ep.toml",
        """
        name = "ep"
        [handler]
        kind = "python"
        entrypoint = "no colon here"
    """,
    )

    problem = only_problem(load(tmp_path))

    assert str(path) in problem
    assert "handler.entrypoint" in problem


def test_input_schema_that_is_not_an_object_schema_is_named(tmp_path: Path) -> None:
    path = write_tool(
        tmp_path,
        "schema.toml",
        """
        name = "schema"
        [input_schema]
        type = "string"
        [handler]
        kind = "python"
        entrypoint = "mcp_credgate.examples:echo"
    """,
    )

    problem = only_problem(load(tmp_path))

    assert str(path) in problem
    assert "input_schema" in problem
    assert '"object"' in problem


def test_invalid_json_schema_is_named(tmp_path: Path) -> None:
    path = write_tool(
        tmp_path,
        "schema.toml",
        """
        name = "schema"
        [input_schema]
        type = "object"
        properties.count = { type = "integer", minimum = "zero" }
        [handler]
        kind = "python"
        entrypoint = "mcp_credgate.examples:echo"
    """,
    )

    problem = only_problem(load(tmp_path))

    assert str(path) in problem
    assert "input_schema" in problem
    assert "minimum" in problem


def test_pattern_that_does_not_compile_is_named(tmp_path: Path) -> None:
    path = write_tool(
        tmp_path,
        "pat.toml",
        """
        name = "pat"
        [credential]
        type = "svc"
        fields = [{ name = "token", kind = "token", pattern = '^(unclosed' }]
        [handler]
        kind = "http"
        url = "https://api.example.com/"
    """,
    )

    problem = only_problem(load(tmp_path))

    assert str(path) in problem
    assert "credential.fields[0]" in problem
    assert "pattern" in problem


def test_empty_field_list_is_named(tmp_path: Path) -> None:
    path = write_tool(
        tmp_path,
        "empty.toml",
        """
        name = "empty"
        [credential]
        type = "svc"
        fields = []
        [handler]
        kind = "http"
        url = "https://api.example.com/"
    """,
    )

    problem = only_problem(load(tmp_path))

    assert str(path) in problem
    assert "credential.fields" in problem


def test_duplicate_field_names_are_named(tmp_path: Path) -> None:
    path = write_tool(
        tmp_path,
        "dupe.toml",
        """
        name = "dupe"
        [credential]
        type = "svc"
        fields = [{ name = "token", kind = "token" }, { name = "token", kind = "text" }]
        [handler]
        kind = "http"
        url = "https://api.example.com/"
    """,
    )

    problem = only_problem(load(tmp_path))

    assert str(path) in problem
    assert "credential" in problem
    assert "unique: token" in problem


def test_problems_of_every_file_are_reported_together(tmp_path: Path, tools_dir: Path) -> None:
    bad_syntax = write_tool(tools_dir, "zz_syntax.toml", "name = \n")
    bad_key = write_tool(
        tools_dir,
        "zz_key.toml",
        """
        name = "zz"
        nonsense = 1
        [handler]
        kind = "python"
        entrypoint = "mcp_credgate.examples:echo"
    """,
    )

    catalog = load(tools_dir)

    assert len(catalog.problems) == 2
    assert any(str(bad_syntax) in p for p in catalog.problems)
    assert any(str(bad_key) in p for p in catalog.problems)
    assert {"echo", "weather", "forecast", "login"} <= set(catalog.tools)
    with pytest.raises(DeclarationError) as excinfo:
        catalog.raise_problems()
    assert excinfo.value.problems == list(catalog.problems)


# -- credential fields: `secret` defaults and value validation --------------------------------


def spec_of(tmp_path: Path, fields: str) -> CredentialSpec:
    write_tool(
        tmp_path,
        "spec.toml",
        f"""
        name = "spec"
        [credential]
        type = "svc"
        fields = [{fields}]
        [handler]
        kind = "http"
        url = "https://api.example.com/"
    """,
    )
    catalog = load(tmp_path)
    assert catalog.problems == ()
    return catalog.types["svc"]


@pytest.mark.parametrize(
    ("kind", "secret"),
    [
        ("api_key", True),
        ("token", True),
        ("password", True),
        ("oauth2", True),
        ("username", False),
        ("text", False),
    ],
)
def test_secret_defaults_by_kind(tmp_path: Path, kind: str, secret: bool) -> None:
    provider = (
        ', authorize_url = "https://id.example.com/authorize", token_url = "https://id.example.com/token"'
        if kind == "oauth2"
        else ""
    )
    spec = spec_of(tmp_path, f'{{ name = "value", kind = "{kind}"{provider} }}')

    assert spec.fields[0].secret is secret
    companions = {"client_secret", "refresh_token"} if kind == "oauth2" else set()
    assert spec.secret_fields == (frozenset({"value"}) if secret else frozenset()) | companions


def test_explicit_secret_overrides_the_kind_default(tmp_path: Path) -> None:
    spec = spec_of(
        tmp_path,
        '{ name = "a", kind = "token", secret = false }, { name = "b", kind = "text", secret = true }',
    )

    assert spec.secret_fields == frozenset({"b"})


def test_required_defaults_to_true(tmp_path: Path) -> None:
    spec = spec_of(tmp_path, '{ name = "a", kind = "token" }, { name = "b", kind = "text", required = false }')

    assert [f.required for f in spec.fields] == [True, False]
    assert spec.missing_fields([]) == ["a"]


@pytest.fixture
def svc_spec(tmp_path: Path) -> CredentialSpec:
    return spec_of(
        tmp_path,
        '{ name = "token", kind = "token", pattern = \'^tok_[a-z0-9]+$\' },'
        ' { name = "region", kind = "text", required = false }',
    )


def test_valid_values_pass_and_empty_optional_ones_are_dropped(svc_spec: CredentialSpec) -> None:
    assert svc_spec.validate_values({"token": "tok_abc123", "region": ""}) == {"token": "tok_abc123"}
    assert svc_spec.validate_values({"region": "eu"}, complete=False) == {"region": "eu"}


SECRET_LOOKING = "tok_Zq9sEcReTvAlUe"


@pytest.mark.parametrize(
    ("values", "field_named", "complete"),
    [
        ({"region": "eu"}, "token", True),  # required field missing
        ({"token": ""}, "token", True),  # required field empty
        ({"token": SECRET_LOOKING.upper()}, "token", True),  # pattern does not match
        ({"token": SECRET_LOOKING + "\x00"}, "token", True),
        ({"token": SECRET_LOOKING + "\r"}, "token", True),
        ({"token": "tok_a\n" + SECRET_LOOKING}, "token", False),
        ({"token": "tok_" + "a" * (64 * 1024)}, "token", True),  # over 64 KiB
        ({"token": "tok_abc", "colour": SECRET_LOOKING}, "colour", True),  # unknown field
        ({"region": SECRET_LOOKING + "\n"}, "region", False),
        ({"token": 12345}, "token", True),  # not a string
    ],
)
def test_bad_values_are_refused_naming_the_field_not_the_value(
    svc_spec: CredentialSpec, values: dict[str, object], field_named: str, complete: bool
) -> None:
    with pytest.raises(CredentialValueError) as excinfo:
        svc_spec.validate_values(values, complete=complete)

    message = str(excinfo.value)
    assert f"'{field_named}'" in message
    for value in values.values():
        if isinstance(value, str) and len(value) > 3:
            assert value.strip() not in message
            assert value[-8:].strip() not in message
    assert SECRET_LOOKING.lower() not in message.lower()


def test_value_of_exactly_64_kib_is_accepted(tmp_path: Path) -> None:
    spec = spec_of(tmp_path, '{ name = "blob", kind = "text" }')

    assert spec.validate_values({"blob": "x" * (64 * 1024)})["blob"] == "x" * (64 * 1024)
    with pytest.raises(CredentialValueError):
        spec.validate_values({"blob": "x" * (64 * 1024 + 1)})
    with pytest.raises(CredentialValueError):  # the limit counts bytes, not characters
        spec.validate_values({"blob": "é" * (32 * 1024 + 1)})


def test_values_that_are_not_a_mapping_are_refused(svc_spec: CredentialSpec) -> None:
    with pytest.raises(CredentialValueError):
        svc_spec.validate_values(["tok_abc"])  # type: ignore[arg-type]


# -- an upstream's sandbox (`sandbox` in an mcp handler with a command) ------------------------------

STDIO_UPSTREAM = """
    name = "up"
    [handler]
    kind = "mcp"
    command = "up-server"
"""


def upstream_handler(tmp_path: Path, sandbox: str) -> McpHandler:
    write_tool(tmp_path, "up.toml", STDIO_UPSTREAM + sandbox)
    catalog = load(tmp_path)
    assert catalog.problems == ()
    return catalog.upstreams["up"].handler


def test_a_stdio_upstream_is_sandboxed_by_default_with_network_and_sane_limits(tmp_path: Path) -> None:
    handler = upstream_handler(tmp_path, "")

    assert handler.sandbox == SandboxSpec()
    assert handler.sandbox.read == () and handler.sandbox.write == () and handler.sandbox.network
    assert handler.sandbox.max_memory_mb == 2048 and handler.sandbox.max_processes == 512
    assert handler.sandbox.max_home_mb == 1024


def test_sandbox_false_opts_out_and_a_table_sets_the_options(tmp_path: Path) -> None:
    assert upstream_handler(tmp_path, "sandbox = false\n").sandbox is None
    assert upstream_handler(tmp_path, "sandbox = true\n").sandbox == SandboxSpec()

    handler = upstream_handler(
        tmp_path,
        'sandbox.read = ["/srv/models", "~/.cache/x"]\nsandbox.write = ["/srv/out"]\n'
        "sandbox.network = false\nsandbox.max_memory_mb = 512\n",
    )

    assert handler.sandbox == SandboxSpec(
        read=("/srv/models", "~/.cache/x"), write=("/srv/out",), network=False, max_memory_mb=512
    )


BAD_SANDBOXES = {
    "unknown key": ("sandbox.net = false", "handler.sandbox.net", "unknown key"),
    "relative path": ('sandbox.read = ["data"]', "handler.sandbox.read[0]", "an absolute path"),
    "the root": ('sandbox.write = ["/"]', "handler.sandbox.write[0]", "/ is the whole machine"),
    "a string": ('sandbox = "on"', "handler.sandbox", "false, or a table"),
    "tiny memory": ("sandbox.max_memory_mb = 1", "handler.sandbox.max_memory_mb", "greater than or equal"),
}


def test_a_remote_upstream_has_no_sandbox_to_set(tmp_path: Path) -> None:
    path = write_tool(
        tmp_path, "up.toml", 'name = "up"\n[handler]\nkind = "mcp"\nurl = "https://x.example/mcp"\nsandbox = false\n'
    )

    problem = only_problem(load(tmp_path))

    assert problem.startswith(f"{path}: handler.sandbox: ") and "a remote upstream" in problem


@pytest.mark.parametrize("field", ["read", "write"])
def test_sandbox_paths_reaching_the_data_folder_the_key_or_the_upstreams_homes_are_refused(
    tmp_path: Path, field: str
) -> None:
    data, state = tmp_path / "data", tmp_path / "state"
    protected = {data: "the data folder", data / "master.key": "the master key", state: "the upstreams' homes"}
    cases = {
        str(data): "the data folder",
        str(data / "master.key"): "the data folder",
        str(tmp_path): "the data folder",  # it holds them
        str(state / "other" / "abc"): "the upstreams' homes",
    }
    folder = tmp_path / "tools.d"
    for path, what in cases.items():
        decl = write_tool(folder, "up.toml", STDIO_UPSTREAM + f"sandbox.{field} = [{json.dumps(path)}]\n")

        problem = only_problem(load_catalog([folder], protected=protected))

        assert problem.startswith(f"{decl}: handler.sandbox.{field}[0]: "), problem
        assert what in problem and path in problem


# -- costs (contract §8) -------------------------------------------------------------------------------------

HTTP_HANDLER = '[handler]\nkind = "http"\nurl = "https://api.example.com/x"\n'
STDIO_HANDLER = '[handler]\nkind = "mcp"\ncommand = "up-server"\n'


def test_a_tools_cost_is_kept_exactly_in_micro_units_and_an_upstreams_tools_get_theirs_by_name(
    tmp_path: Path,
) -> None:
    write_tool(tmp_path, "paid.toml", 'name = "paid"\ncost = 0.002\ncurrency = "EUR"\n' + HTTP_HANDLER)
    write_tool(tmp_path, "free.toml", 'name = "free"\n' + HTTP_HANDLER)
    write_tool(tmp_path, "up.toml", 'name = "up"\ncosts = { echo = 0.1 }\n' + STDIO_HANDLER)
    catalog = load(tmp_path)
    listed: dict[str, list[dict[str, Any]]] = {"up": [{"name": "echo"}, {"name": "other"}]}
    with_upstream = catalog.with_discovered(listed)

    assert catalog.problems == ()
    assert (catalog.tools["paid"].decl.cost, catalog.tools["paid"].decl.currency) == (2000, "EUR")
    assert (catalog.tools["free"].decl.cost, catalog.tools["free"].decl.currency) == (0, "USD")
    assert with_upstream.tools["up_echo"].decl.cost == 100_000 and with_upstream.tools["up_other"].decl.cost == 0


BAD_COSTS = {
    "nan": ("cost = nan", "cost", "finite"),
    "inf": ("cost = inf", "cost", "finite"),
    "negative": ("cost = -0.5", "cost", "at least 0"),
    "text": ('cost = "cheap"', "cost", "a number"),
    "a boolean": ("cost = true", "cost", "a number"),
    "too precise": ("cost = 0.0000001", "cost", "6 decimal places"),
    "currency": ('currency = "dollars"', "currency", "pattern"),
    "costs on an http tool": ("costs = { x = 1 }", "", "for an upstream MCP server"),
}


@pytest.mark.parametrize("case", sorted(BAD_COSTS))
def test_bad_costs_are_one_line_naming_the_file_and_field_never_a_traceback(tmp_path: Path, case: str) -> None:
    body, field, message = BAD_COSTS[case]
    path = write_tool(tmp_path, "paid.toml", f'name = "paid"\n{body}\n' + HTTP_HANDLER)

    problem = only_problem(load(tmp_path))

    assert problem.startswith(f"{path}: {field}"), problem
    assert message in problem and "\n" not in problem and "Traceback" not in problem


def test_an_upstream_declaration_gives_its_tools_costs_by_name_not_one_cost(tmp_path: Path) -> None:
    path = write_tool(tmp_path, "up.toml", 'name = "up"\ncost = 1\n' + STDIO_HANDLER)

    problem = only_problem(load(tmp_path))

    assert problem.startswith(f"{path}: cost: ") and "costs" in problem


# -- egress injection (`inject = "egress"` and `[handler.egress]`, issue 27) --------------------------

EGRESS = 'inject = "egress"\n[handler.egress]\n'


def test_an_upstream_holds_its_real_values_unless_it_says_inject_egress(tmp_path: Path) -> None:
    assert upstream_handler(tmp_path, "").inject == "env"

    handler = upstream_handler(
        tmp_path,
        EGRESS + 'hosts = ["API.example.com", "api.example.com:8443", "http://billing.internal:8080"]\n'
        'body_fields = ["token"]\n',
    )

    assert handler.inject == "egress" and handler.egress is not None
    assert handler.egress.hosts == ("api.example.com", "api.example.com:8443", "http://billing.internal:8080")
    assert handler.egress.https_hosts == {"api.example.com", "api.example.com:8443"}
    assert handler.egress.plain_hosts == {"billing.internal:8080"}
    assert handler.egress.other == "deny" and handler.egress.body_fields == ("token",)


BAD_EGRESS = {
    "no hosts table": ('inject = "egress"', "handler", "needs [handler.egress] with hosts"),
    "no hosts": (EGRESS + "hosts = []", "handler.egress.hosts", "at least 1"),
    "egress without inject": ('[handler.egress]\nhosts = ["a.example"]', "handler", 'only with inject = "egress"'),
    "a wildcard": (EGRESS + 'hosts = ["*.example.com"]', "handler.egress.hosts[0]", "no wildcard"),
    "a url": (EGRESS + 'hosts = ["https://a.example/v1"]', "handler.egress.hosts[0]", "not a host name"),
    "plain http without a port": (EGRESS + 'hosts = ["http://a.example"]', "handler.egress.hosts[0]", "in clear"),
    "a port out of range": (EGRESS + 'hosts = ["a.example:70000"]', "handler.egress.hosts[0]", "1-65535"),
    "another other": (EGRESS + 'hosts = ["a.example"]\nother = "allow"', "handler.egress.other", "deny"),
    "no sandbox": ("sandbox = false\n" + EGRESS + 'hosts = ["a"]', "handler", "needs the sandbox"),
    "network set": (
        "sandbox.network = true\n" + EGRESS + 'hosts = ["a"]',
        "handler",
        "leave it out",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_SANDBOXES) + sorted(BAD_EGRESS))
def test_bad_sandbox_and_egress_options_are_one_line_naming_the_file_and_field(tmp_path: Path, case: str) -> None:
    body, field, message = {**BAD_SANDBOXES, **BAD_EGRESS}[case]
    path = write_tool(tmp_path, "up.toml", STDIO_UPSTREAM + body + "\n")

    problem = only_problem(load(tmp_path))

    assert problem.startswith(f"{path}: {field}: "), problem
    assert message in problem and "\n" not in problem


def test_a_remote_upstream_cannot_take_egress_injection(tmp_path: Path) -> None:
    body = 'name = "up"\n[handler]\nkind = "mcp"\nurl = "https://x.example/mcp"\n' + EGRESS + 'hosts = ["a"]\n'
    path = write_tool(tmp_path, "up.toml", body)

    problem = only_problem(load(tmp_path))

    assert problem.startswith(f"{path}: handler: ") and "for a stdio upstream" in problem
