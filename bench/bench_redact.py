"""Benchmark: what redaction costs per MB of output, the redactor of a past commit and today's side by side.

The past redactor is read from git (`--before`, by default the last commit before the Aho-Corasick rewrite of
issue 19) and loaded next to today's; both redact the same outputs in alternation, in one run. Outputs: an
API's JSON (escapes, URLs, numbers), text with line breaks, and a base64 blob, each about 1 MB, holding the
secrets a few times. Printed: milliseconds per MB (median of the runs) and today's/past ratio; then what one
call with a small result costs (the redactor is built per call: nothing keeps a secret between calls).

    python bench/bench_redact.py [--before REV] [--runs 7]
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from mcp_credgate import redact as today

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "ghp_" + "Zx81kQ2mW9vR4tY7uI0oP3aS6dF5gH1jK8lL"
PASSWORD = "correct horse/battery+staple!"
MB = 1 << 20
SMALL = {"temp": 21.5, "city": "Paris", "wind": "5 km/h"}


def load_past(revision: str) -> ModuleType:
    """`mcp_credgate/redact.py` as it was at `revision`, loaded as a module of the package beside today's."""
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{revision}:src/mcp_credgate/redact.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    spec = importlib.util.spec_from_loader("mcp_credgate._redact_past", loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "mcp_credgate"
    sys.modules[spec.name] = module
    exec(compile(source, f"{revision}:redact.py", "exec"), module.__dict__)  # our own file, from git
    return module


def outputs(rng: random.Random) -> dict[str, Any]:
    words = ["alpha", "beta", "gamma", "delta", "https://api.example.com/v1/items?page=2&size=50", "caf\u00e9"]
    items = [
        {
            "id": rng.randrange(10**9),
            "name": " ".join(rng.choice(words) for _ in range(6)),
            "url": f"https://api.example.com/v1/items/{i}?q=a%20b&x=1",
            "note": 'He said "hi" \\ <b>bye</b>' if i % 7 else f"token={TOKEN}",
            "price": rng.random() * 100,
        }
        for i in range(5200)
    ]
    api_json = json.dumps({"items": items})
    lines = [" ".join(rng.choice(words) for _ in range(12)) for _ in range(14000)]
    lines[5000] = f"password: {PASSWORD}"
    text = "\n".join(lines)
    blob = rng.randbytes(770_000)
    blob = blob[:400_000] + TOKEN.encode() + blob[400_000:]
    b64 = base64.encodebytes(blob).decode()  # wrapped at 76 columns
    return {"API JSON (structured)": json.loads(api_json), "API JSON (text)": api_json, "text": text, "base64": b64}


def size(value: Any) -> int:
    return len(value) if isinstance(value, str) else len(json.dumps(value))


def redact_once(module: ModuleType, value: Any) -> float:
    redactor = module.Redactor({"token": TOKEN, "password": PASSWORD})
    started = time.perf_counter()
    if isinstance(value, str):
        redactor.text(value)
    else:
        redactor.obj(value)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="a3ec7d9", help="the commit whose redactor is the past one")
    parser.add_argument("--runs", type=int, default=7)
    options = parser.parse_args()
    past = load_past(options.before)
    print(f"redaction per MB of output: past ({options.before}) and today, median of {options.runs} runs")
    print(f"{'output':24} {'MB':>5} {'past ms/MB':>11} {'today ms/MB':>12} {'today/past':>11}")
    for name, value in outputs(random.Random(19)).items():
        megabytes = size(value) / MB
        times: dict[str, list[float]] = {"past": [], "today": []}
        for _ in range(options.runs):  # alternate, so both see the same machine
            times["past"].append(redact_once(past, value))
            times["today"].append(redact_once(today, value))
        per_mb = {k: statistics.median(v) * 1000 / megabytes for k, v in times.items()}
        ratio = per_mb["today"] / per_mb["past"]
        print(f"{name:24} {megabytes:5.2f} {per_mb['past']:11.1f} {per_mb['today']:12.1f} {ratio:11.2f}")
    small = {"content": [{"type": "text", "text": '{"temp": 21.5, "city": "Paris"}'}], "structuredContent": SMALL}
    calls: dict[str, list[float]] = {"past": [], "today": []}
    for _ in range(options.runs):
        for label, module in (("past", past), ("today", today)):
            started = time.perf_counter()
            for _ in range(1000):
                redact_once(module, small)
            calls[label].append((time.perf_counter() - started) / 1000 * 1e6)
    per_call = {k: statistics.median(v) for k, v in calls.items()}
    print(f"a small result, per call (the redactor built and used once): past {per_call['past']:.0f} us, ", end="")
    print(f"today {per_call['today']:.0f} us")


if __name__ == "__main__":
    main()
