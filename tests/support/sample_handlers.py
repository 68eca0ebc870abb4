"""Python tool handlers used by the gateway tests (entrypoints `tests.support.sample_handlers:NAME`)."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

import anyio

from mcp_credgate.handlers import ToolOutput


def sync_report(args: Mapping[str, Any], credential: Mapping[str, str]) -> dict[str, Any]:
    """What a sync handler got, and where it ran."""
    return {
        "args": dict(args),
        "fields": sorted(credential),
        "token_length": len(credential.get("token", "")),
        "in_worker_thread": threading.current_thread() is not threading.main_thread(),
    }


async def async_report(args: Mapping[str, Any], credential: Mapping[str, str]) -> dict[str, Any]:
    await anyio.sleep(0)
    return {
        "args": dict(args),
        "fields": sorted(credential),
        "token_length": len(credential.get("token", "")),
        "in_worker_thread": threading.current_thread() is not threading.main_thread(),
    }


def echo_token(args: Mapping[str, Any], credential: Mapping[str, str]) -> str:
    """A careless handler that returns the secret itself."""
    return f"the token is {credential['token']}"


def show_credential(args: Mapping[str, Any], credential: Mapping[str, str]) -> str:
    return f"{credential!r} / {credential!s}"


def raise_with_secret(args: Mapping[str, Any], credential: Mapping[str, str]) -> str:
    raise RuntimeError(f"upstream refused token {credential['token']}")


async def async_raise_with_secret(args: Mapping[str, Any], credential: Mapping[str, str]) -> str:
    await anyio.sleep(0)
    raise ValueError(f"bad token {credential['token']}")


def overwrite_credential(args: Mapping[str, Any], credential: Any) -> str:
    credential["token"] = "replaced"
    return "overwrote it"


async def sleep_long(args: Mapping[str, Any], credential: Mapping[str, str]) -> str:
    await anyio.sleep(30)
    return "woke up"


def sleep_long_sync(args: Mapping[str, Any], credential: Mapping[str, str]) -> str:
    time.sleep(3)
    return "woke up"


CANCELLED: list[str] = []  # the tags of wait_for_cancel calls that were cancelled
WAITING: list[str] = []


async def wait_for_cancel(args: Mapping[str, Any], credential: Mapping[str, str]) -> str:
    WAITING.append(str(args.get("tag")))
    try:
        await anyio.sleep(30)
    except anyio.get_cancelled_exc_class():
        CANCELLED.append(str(args.get("tag")))
        raise
    return "not cancelled"


def returns_list(args: Mapping[str, Any], credential: Mapping[str, str]) -> list[int]:
    return [1, 2, 3]


# Handlers whose results hold values JSON cannot carry (found in a security review: their structured content was
# not redacted).


def leaky_bytes(args: Mapping[str, Any], credential: Mapping[str, str]) -> dict[str, Any]:
    return {"raw": credential["token"].encode()}


def leaky_set(args: Mapping[str, Any], credential: Mapping[str, str]) -> dict[str, Any]:
    return {"tokens": {credential["token"]}}


def leaky_mapping(args: Mapping[str, Any], credential: Mapping[str, str]) -> dict[str, Any]:
    return {"credential": credential}


def echo_pin_as_number(args: Mapping[str, Any], credential: Mapping[str, str]) -> dict[str, Any]:
    """A careless handler that returns a numeric secret as a JSON number."""
    return {"account": int(credential["token"]), "ok": True}


def split_token(args: Mapping[str, Any], credential: Mapping[str, str]) -> ToolOutput:
    """A careless handler that returns the secret in two halves, as two content blocks."""
    token = credential["token"]
    half = len(token) // 2
    return ToolOutput(
        "", content=[{"type": "text", "text": "a: " + token[:half]}, {"type": "text", "text": token[half:] + " :b"}]
    )


def split_into_two_values(args: Mapping[str, Any], credential: Mapping[str, str]) -> dict[str, str]:
    """A careless handler that returns the secret in two halves, as two values of one object."""
    token = credential["token"]
    return {"a": token[:4], "b": token[4:]}
