"""The browser a client opens, for clients that open one themselves (mcp-remote runs `$BROWSER URL` through
xdg-open): the person of `PERSON.json` answers the consent page in chromium, and the browser really goes back
to the client's loopback listener. What happened is appended, one JSON line, to the log the file names.

Usage: python -m tests.support.browser_opener PERSON.json URL
PERSON.json: {"secret", "group" (null: deny), "callback" (the client's redirect URI, up to its path), "log"}.

`opener_script(folder, person)` writes the executable a client is given as its browser (`BROWSER=...`), and
`opened(log)` reads back what it did.
"""

from __future__ import annotations

import json
import shlex
import sys
import traceback
from pathlib import Path
from typing import Any

from tests.support.sign_in import BrowserUser

ROOT = Path(__file__).resolve().parents[2]


def opener_script(folder: Path, secret: str, group: str | None, callback: str) -> tuple[Path, Path]:
    """Write the opener into `folder` (no spaces or colons in it: xdg-open splits $BROWSER on them): the
    executable, and the log it appends to."""
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "opened.jsonl"
    person = folder / "person.json"
    person.write_text(json.dumps({"secret": secret, "group": group, "callback": callback, "log": str(log)}))
    person.chmod(0o600)
    script = folder / "browser"
    command = [sys.executable, "-m", "tests.support.browser_opener", str(person)]
    script.write_text(f'#!/bin/sh\ncd {shlex.quote(str(ROOT))} && exec {shlex.join(command)} "$1"\n')
    script.chmod(0o700)
    return script, log


def opened(log: Path) -> list[dict[str, Any]]:
    """What the opener did so far, one entry a time it was run."""
    if not log.is_file():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def main(person_file: str, url: str) -> int:
    person = json.loads(Path(person_file).read_text())
    entry: dict[str, Any] = {"opened": url}
    try:
        user = BrowserUser(person["secret"], group=person["group"], callback=person["callback"], deliver=True)
        entry["redirect"] = user.follow(url)
        entry["consent"] = user.pages[-1] if user.pages else ""
        entry["landing"] = user.landings[-1] if user.landings else ""
    except BaseException:
        entry["error"] = traceback.format_exc()
    with Path(person["log"]).open("a") as log:
        log.write(json.dumps(entry) + "\n")
    return 0 if "error" not in entry else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
