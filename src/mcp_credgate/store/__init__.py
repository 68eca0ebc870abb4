"""The store and what it hands out. See `core` for the `Store` and its parts, and `database` for the backends."""

from .base import now
from .budgets import BUSY, Busy, Exceeded, Usage
from .change_hint import hint_path
from .core import Store
from .grants import IssuedTokens, OAuthClientRecord, OAuthCode, OAuthToken, RefreshReused
from .keyfiles import load_keyring, read_staged_key
from .opening import restore_store, store_exists, store_location
from .records import (
    AgentIdentity,
    AgentInfo,
    AuditRow,
    Binding,
    CredentialInfo,
    GroupInfo,
    Page,
    SealedCredential,
    UserInfo,
)
from .rotation import rotate_master_key, stage_master_key
from .setup_links import SetupLinkRecord
from .users import BUILT_IN_ADMIN, Removal, SsoLink, SsoMatch

__all__ = [
    "BUILT_IN_ADMIN",
    "BUSY",
    "AgentIdentity",
    "AgentInfo",
    "AuditRow",
    "Binding",
    "Busy",
    "CredentialInfo",
    "Exceeded",
    "GroupInfo",
    "IssuedTokens",
    "OAuthClientRecord",
    "OAuthCode",
    "OAuthToken",
    "Page",
    "RefreshReused",
    "Removal",
    "SealedCredential",
    "SetupLinkRecord",
    "SsoLink",
    "SsoMatch",
    "Store",
    "Usage",
    "UserInfo",
    "hint_path",
    "load_keyring",
    "now",
    "read_staged_key",
    "restore_store",
    "rotate_master_key",
    "stage_master_key",
    "store_exists",
    "store_location",
]
