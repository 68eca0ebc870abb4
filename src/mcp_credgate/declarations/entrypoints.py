"""Importing a python handler's `module:function`, with the tools.d folders on the import path."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any


def resolve_entrypoint(entrypoint: str, search_dirs: Iterable[Path] = ()) -> Callable[..., Any]:
    """Import `module:function`; the tools.d folders are on the import path for local modules."""
    for d in search_dirs:
        if str(d) not in sys.path:
            sys.path.append(str(d))
    module_name, _, attr = entrypoint.partition(":")
    module = importlib.import_module(module_name)
    fn = getattr(module, attr)
    if not callable(fn):
        raise TypeError(f"{attr} is not callable")
    return fn  # type: ignore[no-any-return]
