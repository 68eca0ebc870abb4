"""The sample declarations and values every test can rely on (the `tools_dir` fixture writes them)."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

from tests.support import REPO_ROOT

REPO_TOOLS_DIR = REPO_ROOT / "tools.d"

# The tools every test can rely on (see `tools_dir`):
#   echo      python handler, no credential
#   weather   http handler, credential type "weatherkey" (api_key, secret, pattern ^wk_…)
#   forecast  http handler, the same type "weatherkey" (shares its credentials with `weather`)
#   login     python handler, credential type "account" (username: not secret; password: secret;
#             note: optional text)
SAMPLE_TOOLS: dict[str, str] = {
    "echo.toml": """
        name = "echo"
        description = "Echo the given text back."

        [input_schema]
        type = "object"
        required = ["text"]
        properties.text = { type = "string" }

        [handler]
        kind = "python"
        entrypoint = "mcp_credgate.examples:echo"
    """,
    "weather.toml": """
        name = "weather"
        description = "Current weather for a city."

        [input_schema]
        type = "object"
        properties.city = { type = "string" }

        [credential]
        type = "weatherkey"
        fields = [
          { name = "api_key", kind = "api_key", required = true, pattern = '^wk_[A-Za-z0-9]{8,}$' },
        ]

        [handler]
        kind = "http"
        url = "https://weather.example.com/v1/current"
        query = { city = "{args.city}" }
        headers = { "X-Api-Key" = "{cred.api_key}" }
    """,
    "forecast.toml": """
        name = "forecast"
        description = "Weather forecast for a city."

        [input_schema]
        type = "object"
        properties.city = { type = "string" }

        [credential]
        type = "weatherkey"
        fields = [
          { name = "api_key", kind = "api_key", required = true, pattern = '^wk_[A-Za-z0-9]{8,}$' },
        ]

        [handler]
        kind = "http"
        url = "https://weather.example.com/v1/forecast"
        query = { city = "{args.city}" }
        headers = { "X-Api-Key" = "{cred.api_key}" }
    """,
    "login.toml": """
        name = "login"
        description = "Sign in to the demo account service."

        [credential]
        type = "account"
        fields = [
          { name = "username", kind = "username" },
          { name = "password", kind = "password" },
          { name = "note", kind = "text", required = false },
        ]

        [handler]
        kind = "python"
        entrypoint = "mcp_credgate.examples:account_login"
    """,
}

# Values that pass the sample types' validation.
WEATHER_KEY = "wk_0123456789abcdef"
ACCOUNT = {"username": "alice", "password": "correct horse battery staple"}


def write_tool(folder: Path, filename: str, text: str) -> Path:
    """Write one declaration file (the text is dedented, so tests may indent it)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / filename
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


def database_url() -> str | None:
    """The PostgreSQL URL of this test's store (None on SQLite), for settings built by hand."""
    return os.environ.get("CREDGATE_DATABASE_URL")
