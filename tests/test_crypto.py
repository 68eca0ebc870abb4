"""Master keys, data keys and AES-GCM envelopes: round trips, associated data, key text."""

from __future__ import annotations

import base64
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from mcp_credgate.crypto import (
    DataKey,
    Keyring,
    MasterKey,
    OpenError,
    read_key_file,
    write_key_file,
)
from mcp_credgate.errors import MasterKeyError

pytestmark = pytest.mark.no_store  # never touches a store: runs once, not per backend

UID = "4f1c0ffee0000000000000000000aaaa"
OTHER_UID = "4f1c0ffee0000000000000000000bbbb"


@pytest.fixture
def zero_umask() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_value_round_trip() -> None:
    dek = DataKey.generate()

    blob = dek.encrypt(UID, "token", "s3cr3t-välue")

    assert dek.decrypt(UID, "token", blob) == "s3cr3t-välue"
    assert b"s3cr3t" not in blob


def test_each_encryption_uses_a_fresh_nonce() -> None:
    dek = DataKey.generate()

    first, second = dek.encrypt(UID, "token", "same"), dek.encrypt(UID, "token", "same")

    assert first != second
    assert first[:12] != second[:12]


def test_data_key_wrap_round_trip() -> None:
    master, dek = MasterKey.generate(), DataKey.generate()

    wrapped = master.wrap(dek.raw, UID)

    assert master.unwrap(wrapped, UID).raw == dek.raw
    assert dek.raw not in wrapped


def test_value_moved_to_another_credential_does_not_open() -> None:
    dek = DataKey.generate()
    blob = dek.encrypt(UID, "token", "secret")

    with pytest.raises(OpenError):
        dek.decrypt(OTHER_UID, "token", blob)


def test_value_moved_to_another_field_does_not_open() -> None:
    dek = DataKey.generate()
    blob = dek.encrypt(UID, "password", "secret")

    with pytest.raises(OpenError):
        dek.decrypt(UID, "username", blob)


def test_wrapped_data_key_moved_to_another_credential_does_not_open() -> None:
    master = MasterKey.generate()
    wrapped = master.wrap(DataKey.generate().raw, UID)

    with pytest.raises(OpenError):
        master.unwrap(wrapped, OTHER_UID)


def test_wrong_master_key_does_not_unwrap() -> None:
    wrapped = MasterKey.generate().wrap(DataKey.generate().raw, UID)

    with pytest.raises(OpenError):
        MasterKey.generate().unwrap(wrapped, UID)


def test_wrong_data_key_does_not_decrypt() -> None:
    blob = DataKey.generate().encrypt(UID, "token", "secret")

    with pytest.raises(OpenError):
        DataKey.generate().decrypt(UID, "token", blob)


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty"])
def test_damaged_blob_does_not_open(damage: str) -> None:
    dek = DataKey.generate()
    blob = dek.encrypt(UID, "token", "secret")
    damaged = {
        "flip": blob[:-1] + bytes([blob[-1] ^ 1]),
        "truncate": blob[:20],
        "empty": b"",
    }[damage]

    with pytest.raises(OpenError):
        dek.decrypt(UID, "token", damaged)


def test_key_check_opens_only_under_its_own_key() -> None:
    master = MasterKey.generate()
    check = master.check_blob()

    assert master.opens_check(check)
    assert not MasterKey.generate().opens_check(check)
    assert not master.opens_check(check[:-1])


def test_key_id_is_stable_and_differs_between_keys() -> None:
    master = MasterKey.generate()

    assert MasterKey.from_text(master.to_text(), "test").key_id == master.key_id
    assert MasterKey.generate().key_id != master.key_id
    assert master.key_id not in master.to_text()


@pytest.mark.parametrize(
    "transform",
    [
        lambda t: t,
        lambda t: t.rstrip("="),  # padding optional
        lambda t: f"  {t}\n",  # surrounding whitespace, as in a key file
    ],
)
def test_key_text_round_trip(transform: object) -> None:
    master = MasterKey.generate()

    parsed = MasterKey.from_text(transform(master.to_text()), "test")  # type: ignore[operator]

    assert parsed.to_text() == master.to_text()


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not base64 at all!!",
        base64.urlsafe_b64encode(os.urandom(16)).decode(),  # too short
        base64.urlsafe_b64encode(os.urandom(33)).decode(),  # too long
        base64.urlsafe_b64encode(os.urandom(32)).decode()[:-6],  # truncated
    ],
)
def test_malformed_key_text_is_refused_without_echoing_it(text: str) -> None:
    with pytest.raises(MasterKeyError) as excinfo:
        MasterKey.from_text(text, "CREDGATE_MASTER_KEY")

    message = str(excinfo.value)
    assert "CREDGATE_MASTER_KEY" in message
    assert "malformed" in message
    if len(text) > 4:
        assert text not in message


def test_master_key_of_wrong_length_is_refused() -> None:
    with pytest.raises(MasterKeyError):
        MasterKey(os.urandom(31))


def test_reprs_do_not_show_key_material() -> None:
    master, dek = MasterKey.generate(), DataKey.generate()
    keyring = Keyring(master, [MasterKey.generate()])
    key_text = master.to_text()

    for shown in (repr(master), str(master), repr(keyring), repr(dek), str(dek)):
        assert key_text not in shown
        assert key_text.rstrip("=")[:12] not in shown
        assert dek.raw.hex()[:12] not in shown
        assert base64.urlsafe_b64encode(dek.raw).decode()[:12] not in shown
    assert master.key_id in repr(master)


def test_keyring_finds_keys_by_id() -> None:
    primary, pending = MasterKey.generate(), MasterKey.generate()

    keyring = Keyring(primary, [pending])

    assert keyring.primary is primary
    assert keyring.get(pending.key_id) is pending
    assert keyring.get(primary.key_id) is primary
    assert keyring.get("nope") is None


def test_key_file_is_created_0600_whatever_the_umask(tmp_path: Path, zero_umask: None) -> None:
    path = tmp_path / "master.key"
    master = MasterKey.generate()

    write_key_file(path, master)

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = read_key_file(path)
    assert loaded is not None
    assert loaded.key_id == master.key_id


def test_key_file_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    write_key_file(path, MasterKey.generate())
    before = path.read_bytes()

    with pytest.raises(FileExistsError):
        write_key_file(path, MasterKey.generate())
    assert path.read_bytes() == before


def test_missing_key_file_reads_as_none(tmp_path: Path) -> None:
    assert read_key_file(tmp_path / "absent.key") is None


def test_malformed_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    path.write_text("garbage\n")

    with pytest.raises(MasterKeyError) as excinfo:
        read_key_file(path)
    assert str(path) in str(excinfo.value)
