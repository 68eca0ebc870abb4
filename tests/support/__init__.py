"""What the tests share: real parts to test against, and one set of helpers.

Helpers (imported by the tests):
    cli             the runner types of the CLI fixtures; `out`, `assert_ok`, `assert_refused`, `assert_usage_error`
    samples         the sample declarations and values the `tools_dir` fixture writes
    gateway         canaries and leak scans, the recording HTTP upstream, a credgate `World`, `connect` (in memory)
    http_server     a real `credgate serve --http` process and `connect_over_http`
    oauth_provider  a real local OAuth2 authorization server; oauth_world: a world whose tools use it
    raw_db          direct SQL on a test's store, behind the store's back
    postgres        the PostgreSQL half of the suite (a pytest plugin that conftest loads)

Programs and modules that credgate runs or imports by name (keep their paths and names in step with the tests
that point at them):
    stdout_tee.py       `python tests/support/stdout_tee.py COPY COMMAND...`: a stdio server's stdout, copied
    upstream_server.py  an upstream MCP server (tests/handlers/test_upstream.py), run by path
    front_upstream.py   an upstream with everything but tools (tests/test_front.py), run by path
    sample_handlers     python handlers, entrypoints `tests.support.sample_handlers:NAME`
"""

from pathlib import Path

SUPPORT_DIR = Path(__file__).resolve().parent
"""This folder: where the programs above are (run them by this path)."""
REPO_ROOT = SUPPORT_DIR.parents[1]
