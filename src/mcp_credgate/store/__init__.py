"""The store and what it hands out. See `core` for the operations and `database` for the backends."""

from .change_hint import hint_path
from .core import (
    AgentInfo,
    AuditRow,
    Binding,
    CredentialInfo,
    GroupInfo,
    SealedCredential,
    Store,
    load_keyring,
    now,
    read_staged_key,
    restore_store,
    store_exists,
    store_location,
)

__all__ = [
    "AgentInfo",
    "AuditRow",
    "Binding",
    "CredentialInfo",
    "GroupInfo",
    "SealedCredential",
    "Store",
    "hint_path",
    "load_keyring",
    "now",
    "read_staged_key",
    "restore_store",
    "store_exists",
    "store_location",
]
