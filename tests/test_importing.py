"""`credgate cred import FILE --type T | --tool T [--format jsonl|csv|env] [--name NAME] [--dry-run]` (contract §9):
JSON lines, CSV and .env files, validated like `cred add`, all or nothing per file, errors that name the line
and the field and never a value. Every value below is a canary, and every output is scanned for it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import Result

from mcp_credgate.config import Settings
from mcp_credgate.store import Store
from tests.support.cli import CliRun, ProcRun, assert_ok, assert_refused, assert_usage_error, out
from tests.support.gateway import leaks, make_canary

CANARIES: list[str] = []  # every value any test of this module wrote into a file


def canary(tag: str, *, prefix: str = "") -> str:
    value = prefix + make_canary(tag)
    CANARIES.append(value)
    return value


def wk(tag: str) -> str:
    """A weatherkey value (`^wk_[A-Za-z0-9]{8,}$`) that is a canary."""
    return canary(tag, prefix="wk_")


@pytest.fixture
def cli(run_cli: CliRun) -> Iterator[CliRun]:
    """run_cli on an initialised home; every output it gives is checked for every canary."""
    assert_ok(run_cli("init"))
    results: list[Result] = []

    def run(*args: str, **kw: object) -> Result:
        result = run_cli(*args, **kw)
        results.append(result)
        return result

    yield run
    for result in results:
        for value in CANARIES:
            assert not leaks(out(result), value), f"a value reached the output of {result}"


def stored(settings: Settings) -> dict[str, dict[str, str]]:
    """Every credential of the store, decrypted."""
    with Store.open(settings, env={}) as store:
        return {c.name: dict(store.read_credential(c.name)) for c in store.iter_credentials()}


def write(tmp_path: Path, name: str, text: str | bytes) -> str:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return str(path)


def jsonl(*objects: object) -> str:
    return "".join(json.dumps(o) + "\n" for o in objects)


# -- the three formats ------------------------------------------------------------------------------


def test_json_lines_add_one_credential_per_line(cli: CliRun, tmp_path: Path, settings: Settings) -> None:
    a, b = canary("PA"), canary("PB")
    path = write(
        tmp_path,
        "people.jsonl",
        jsonl({"name": "alice", "username": "alice", "password": a})
        + "\n"  # a blank line is no credential
        + jsonl({"name": "bob", "username": "bob", "password": b, "note": "desk 2"}),
    )
    result = cli("cred", "import", path, "--type", "account")
    assert_ok(result)
    assert result.stdout.strip() == f"imported 2 credentials of type account from {path}"
    assert stored(settings) == {
        "alice": {"username": "alice", "password": a},
        "bob": {"username": "bob", "password": b, "note": "desk 2"},
    }


def test_csv_adds_one_credential_per_row_and_an_empty_cell_is_no_value(
    cli: CliRun, tmp_path: Path, settings: Settings
) -> None:
    a, b = canary("CA"), canary("CB")
    path = write(tmp_path, "people.csv", f'name,username,password,note\nalice,alice,{a},\nbob,bob,"{b}","desk, 2"\n')
    result = cli("cred", "import", path, "--tool", "login", "--json")
    assert_ok(result)
    assert json.loads(result.stdout) == {
        "file": path,
        "type": "account",
        "credentials": 2,
        "dry_run": False,
        "owner": None,
    }
    assert stored(settings) == {
        "alice": {"username": "alice", "password": a},
        "bob": {"username": "bob", "password": b, "note": "desk, 2"},
    }


def test_a_dotenv_file_is_one_credential_its_keys_matched_to_fields_in_any_case(
    cli: CliRun, tmp_path: Path, settings: Settings
) -> None:
    password = canary("EP")
    path = write(
        tmp_path,
        ".env",
        "# the demo account\n\nUSERNAME=alice\nexport Password='" + password + '\'\nnote = "desk 2"  # inline\n',
    )
    assert_ok(cli("cred", "import", path, "--type", "account", "--name", "demo"))
    assert stored(settings) == {"demo": {"username": "alice", "password": password, "note": "desk 2"}}


@pytest.mark.parametrize("filename", ["keys.JSONL", "keys.ndjson", "keys.csv", "prod.env", ".env.production"])
def test_the_format_comes_from_the_files_name(cli: CliRun, tmp_path: Path, settings: Settings, filename: str) -> None:
    key = wk("FN")
    lower = filename.lower()
    extra: list[str] = []
    if lower.endswith(("jsonl", "ndjson")):
        text = jsonl({"name": "k1", "api_key": key})
    elif lower.endswith("csv"):
        text = f"name,api_key\nk1,{key}\n"
    else:
        text, extra = f"API_KEY={key}\n", ["--name", "k1"]
    assert_ok(cli("cred", "import", write(tmp_path, filename, text), "--type", "weatherkey", *extra))
    assert stored(settings) == {"k1": {"api_key": key}}


def test_format_overrides_the_files_name_and_standard_input_needs_it(
    cli: CliRun, tmp_path: Path, settings: Settings
) -> None:
    k1, k2 = wk("F1"), wk("F2")
    assert_ok(
        cli(
            "cred",
            "import",
            write(tmp_path, "keys.txt", f"name,api_key\nk1,{k1}\n"),
            "--type",
            "weatherkey",
            "--format",
            "csv",
        )
    )
    assert_ok(
        cli(
            "cred",
            "import",
            "-",
            "--type",
            "weatherkey",
            "--format",
            "jsonl",
            input=jsonl({"name": "k2", "api_key": k2}),
        )
    )
    assert stored(settings) == {"k1": {"api_key": k1}, "k2": {"api_key": k2}}


def test_dry_run_checks_everything_and_stores_nothing(cli: CliRun, tmp_path: Path, settings: Settings) -> None:
    path = write(tmp_path, "keys.jsonl", jsonl(*({"name": f"k{i}", "api_key": wk("DR")} for i in range(3))))
    result = cli("cred", "import", path, "--type", "weatherkey", "--dry-run")
    assert_ok(result)
    assert (
        result.stdout.strip()
        == f"checked 3 credentials of type weatherkey in {path}: all valid, none stored (--dry-run)"
    )
    assert stored(settings) == {}
    bad = write(tmp_path, "bad.jsonl", jsonl({"name": "k1", "api_key": "wk_short"}))
    assert_refused(cli("cred", "import", bad, "--type", "weatherkey", "--dry-run"), "line 1", "api_key")


# -- what is refused, in one line naming the line and the field -------------------------------------


def refused(cli: CliRun, tmp_path: Path, settings: Settings, filename: str, text: str | bytes, *args: str) -> str:
    """Import `text` as `filename` (type account unless `args` say otherwise): refused, nothing stored."""
    before = stored(settings)
    line = assert_refused(cli("cred", "import", write(tmp_path, filename, text), *(args or ("--type", "account"))))
    assert stored(settings) == before
    return line


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            '{"name": "a", "username": "u", "password": "' + "@@P1@@" + '"}\n{"name": "b", "username": ',
            ["line 2", "not valid JSON"],
        ),
        ('{"name": "a", "username": "u", "password": "@@P1@@"\n', ["line 1", "not valid JSON"]),
        ('["a", "u", "@@P1@@"]\n', ["line 1", "a JSON object"]),
        ('{"name": "a", "username": "u", "password": "@@P1@@", "pin": "@@P2@@"}\n', ["line 1", "'pin'"]),
        ('{"name": "a", "username": "u"}\n', ["line 1", "'password'", "missing"]),
        ('{"name": "a", "username": "u", "password": 12345678}\n', ["line 1", "'password'", "string"]),
        ('{"username": "u", "password": "@@P1@@"}\n', ["line 1", '"name"']),
        ('{"name": "bad name!", "username": "u", "password": "@@P1@@"}\n', ["line 1", "name"]),
        ('{"name": "a", "username": "u", "password": "@@P1@@\\nX"}\n', ["line 1", "'password'", "CR or LF"]),
        ('{"name": "a", "username": "u", "password": "@@P1@@\\q"}\n', ["line 1", "not valid JSON"]),
    ],
    ids=[
        "bad JSON",
        "cut JSON",
        "an array",
        "unknown field",
        "missing field",
        "a number",
        "no name",
        "bad name",
        "LF",
        "bad escape",
    ],
)
def test_a_bad_json_line_is_refused_naming_its_line_and_field(
    cli: CliRun, tmp_path: Path, settings: Settings, text: str, expected: list[str]
) -> None:
    text = text.replace("@@P1@@", canary("J1")).replace("@@P2@@", canary("J2"))
    line = refused(cli, tmp_path, settings, "bad.jsonl", text)
    for words in expected:
        assert words in line, line
    assert "bad.jsonl" in line


def test_a_value_that_does_not_match_its_format_is_refused(cli: CliRun, tmp_path: Path, settings: Settings) -> None:
    good, bad = wk("G1"), canary("B1")  # the bad one lacks the wk_ prefix
    text = jsonl({"name": "k1", "api_key": good}, {"name": "k2", "api_key": bad})
    line = refused(cli, tmp_path, settings, "keys.jsonl", text, "--type", "weatherkey")
    assert "line 2" in line and "'api_key'" in line and "does not match the format" in line


def test_a_name_twice_in_the_file_is_refused_naming_both_lines(cli: CliRun, tmp_path: Path, settings: Settings) -> None:
    text = jsonl(*({"name": n, "api_key": wk("D1")} for n in ("k1", "k2", "k3", "k2")))
    line = refused(cli, tmp_path, settings, "keys.jsonl", text, "--type", "weatherkey")
    assert "line 4" in line and "line 2" in line and "'k2'" in line


def test_a_name_the_store_has_is_refused_and_nothing_is_added(cli: CliRun, tmp_path: Path, settings: Settings) -> None:
    assert_ok(
        cli("cred", "add", "k2", "--type", "weatherkey", "--from-json", "-", input=json.dumps({"api_key": wk("S1")}))
    )
    text = jsonl(*({"name": f"k{i}", "api_key": wk("S2")} for i in range(1, 4)))
    line = refused(cli, tmp_path, settings, "keys.jsonl", text, "--type", "weatherkey")
    assert "line 2" in line and "'k2' exists already" in line


@pytest.mark.parametrize(
    "text, expected",
    [
        ("name,username,password,pin\na,u,@@P1@@,@@P2@@\n", ["line 1", "'pin'"]),
        ("username,password\nu,@@P1@@\n", ["line 1", "'name'"]),
        ("name,username,password,password\na,u,@@P1@@,@@P2@@\n", ["line 1", "'password'", "twice"]),
        ("name,username,password\na,u,@@P1@@\nb,u\n", ["line 3", "2 cells", "3"]),
        ("name,username,password\na,u,@@P1@@,@@P2@@\n", ["line 2", "4 cells"]),
        ('name,username,password\na,u,"@@P1@@\nX"\n', ["line 2", "'password'", "CR or LF"]),
        ("name,username,password\na,u,\n", ["line 2", "'password'"]),
        ("name,username,password\n", ["no credential"]),
    ],
    ids=[
        "unknown column",
        "no name column",
        "a column twice",
        "short row",
        "long row",
        "LF",
        "empty required",
        "empty",
    ],
)
def test_a_bad_csv_file_is_refused_naming_its_line_and_column(
    cli: CliRun, tmp_path: Path, settings: Settings, text: str, expected: list[str]
) -> None:
    text = text.replace("@@P1@@", canary("C1")).replace("@@P2@@", canary("C2"))
    line = refused(cli, tmp_path, settings, "bad.csv", text)
    for words in expected:
        assert words in line, line


@pytest.mark.parametrize(
    "text, expected",
    [
        ("USERNAME=u\n@@P1@@\n", ["line 2", "KEY=VALUE"]),
        ("USERNAME=u\nPASSWORD=@@P1@@\nPIN=@@P2@@\n", ["line 3", "'PIN'"]),
        ("USERNAME=u\nPASSWORD=@@P1@@\npassword=@@P2@@\n", ["line 3", "'password'", "line 2"]),
        ("USERNAME=u\nPASSWORD='@@P1@@\n", ["line 2", "quote"]),
        ("USERNAME=u\n", ["'password'", "missing"]),
        ("# nothing\n", ["no credential"]),
    ],
    ids=["not KEY=VALUE", "unknown key", "a field twice", "open quote", "missing field", "empty"],
)
def test_a_bad_dotenv_file_is_refused_naming_its_line_and_key(
    cli: CliRun, tmp_path: Path, settings: Settings, text: str, expected: list[str]
) -> None:
    text = text.replace("@@P1@@", canary("E1")).replace("@@P2@@", canary("E2"))
    line = refused(cli, tmp_path, settings, "acct.env", text, "--type", "account", "--name", "acct")
    for words in expected:
        assert words in line, line


def test_a_file_that_is_not_utf8_or_not_there_is_refused(cli: CliRun, tmp_path: Path, settings: Settings) -> None:
    secret = canary("U1")
    text = jsonl({"name": "a", "username": "u", "password": secret}).encode() + b'{"name": "b\xff"}\n'
    line = refused(cli, tmp_path, settings, "latin.jsonl", text)
    assert "line 2" in line and "UTF-8" in line
    assert_refused(cli("cred", "import", str(tmp_path / "none.jsonl"), "--type", "account"), "none.jsonl")


@pytest.mark.parametrize(
    "args",
    [
        ("FILE.jsonl",),  # neither --type nor --tool
        ("FILE.jsonl", "--type", "account", "--tool", "login"),
        ("FILE.txt", "--type", "account"),  # no format to be told from the name
        ("FILE.jsonl", "--type", "account", "--format", "xml"),
        ("FILE.env", "--type", "account"),  # a .env file needs --name
        ("FILE.jsonl", "--type", "account", "--name", "x"),  # and only a .env file takes it
        ("FILE.env", "--type", "account", "--name", "bad name"),
        ("-", "--type", "account"),  # standard input has no name to tell its format
    ],
)
def test_usage_errors_exit_2(cli: CliRun, tmp_path: Path, args: tuple[str, ...]) -> None:
    path = write(tmp_path, "FILE" + (Path(args[0]).suffix or ""), "")
    assert_usage_error(cli("cred", "import", *(path if a.startswith("FILE") else a for a in args)))


# -- all or nothing -------------------------------------------------------------------------------


def test_a_bad_last_line_of_a_big_file_leaves_the_store_as_it_was(
    cli: CliRun, tmp_path: Path, settings: Settings
) -> None:
    rows = [{"name": f"k{i:05d}", "api_key": f"wk_{i:010d}"} for i in range(2500)]
    text = jsonl(*rows, {"name": "last", "api_key": "no"})
    line = refused(cli, tmp_path, settings, "keys.jsonl", text, "--type", "weatherkey")
    assert "line 2501" in line


def test_a_name_taken_while_the_file_is_written_adds_none_of_it(
    cli: CliRun, tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checked first, then written in one transaction: a name another process adds in between is caught there,
    named with its line, and the transaction leaves nothing of the file behind."""
    assert_ok(cli("cred", "add", "k01700", "--type", "weatherkey", "--set", "api_key=wk_0123456789"))
    monkeypatch.setattr(Store, "existing_credential_names", lambda self, names: set())  # as if it came later
    rows = [{"name": f"k{i:05d}", "api_key": f"wk_{i:010d}"} for i in range(2500)]
    line = refused(cli, tmp_path, settings, "keys.jsonl", jsonl(*rows), "--type", "weatherkey")
    assert "line 1701" in line and "'k01700' exists already" in line
    assert list(stored(settings)) == ["k01700"]


# -- big files ------------------------------------------------------------------------------------


def test_a_big_file_reports_its_progress_on_stderr(cli: CliRun, tmp_path: Path, settings: Settings) -> None:
    rows = [{"name": f"k{i:05d}", "api_key": f"wk_{i:010d}"} for i in range(20_000)]
    result = cli("cred", "import", write(tmp_path, "keys.jsonl", jsonl(*rows)), "--type", "weatherkey")
    assert_ok(result)
    progress = result.stderr.strip().splitlines()
    assert "stored 2000 of 20000 credentials (10%)" in progress
    assert progress[-1] == "stored 20000 of 20000 credentials (100%)"
    assert result.stdout.count("\n") == 1
    with Store.open(settings, env={}) as store:
        assert store.read_credential("k12345")["api_key"] == "wk_0000012345"


def test_a_real_process_imports_from_standard_input(run_credgate: ProcRun, tmp_path: Path) -> None:
    assert run_credgate("init").returncode == 0
    key = wk("RP")
    done = run_credgate(
        "cred", "import", "-", "--format", "csv", "--type", "weatherkey", input=f"name,api_key\nk1,{key}\n"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "imported 1 credential of type weatherkey from standard input"
    shown = run_credgate("cred", "show", "k1", "--json")
    assert json.loads(shown.stdout)["values"] == {"api_key": "••••" + key[-4:]}
    for text in (done.stdout, done.stderr, shown.stdout):
        assert not leaks(text, key)
