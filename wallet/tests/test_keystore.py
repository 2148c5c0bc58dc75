"""Keystore files (protocol.md): the vectors reproduced, and every refusal with its own error."""

from __future__ import annotations

import copy
import json

import pytest
from nacl.pwhash import argon2id

from chain.protocol.keys import Key
from wallet import keystore
from wallet.errors import (
    AddressMismatch,
    KeystoreMalformed,
    KeystoreUnsupported,
    WeakPassword,
    WrongPasswordOrCorrupted,
)
from wallet.keystore import KdfParams, decrypt_keystore, encrypt_seed, parse_keystore
from wallet.tests.support import DEFAULT_WRITE_PARAMS, FAST_KDF, vectors

KEYSTORES = vectors()["keystores"]
UNSUPPORTED = vectors()["unsupported_keystores"]
TAMPERED = vectors()["tampered_keystores"]


@pytest.fixture
def kdf_must_not_run(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("the key derivation ran")

    monkeypatch.setattr(argon2id, "kdf", refuse)


def vector_keystore() -> dict:
    return copy.deepcopy(KEYSTORES[0]["keystore"])


@pytest.mark.parametrize("vector", KEYSTORES, ids=lambda v: v["keystore"]["address"])
def test_vector_keystore_decrypts_to_its_seed(vector: dict) -> None:
    key = decrypt_keystore(vector["keystore"], vector["password"])
    assert key.seed.hex() == vector["seed"]
    assert key.address == vector["keystore"]["address"]
    assert key.pubkey_hex == vector["keystore"]["pubkey"]


@pytest.mark.parametrize("vector", KEYSTORES, ids=lambda v: v["keystore"]["address"])
def test_vector_keystore_decrypts_from_its_json_text(vector: dict) -> None:
    key = decrypt_keystore(json.dumps(vector["keystore"]).encode(), vector["password"])
    assert key.seed.hex() == vector["seed"]


@pytest.mark.parametrize("vector", KEYSTORES, ids=lambda v: v["keystore"]["address"])
def test_encrypting_the_vector_seed_with_its_salt_nonce_and_params_is_byte_identical(vector: dict) -> None:
    expected = vector["keystore"]
    written = encrypt_seed(
        bytes.fromhex(vector["seed"]),
        vector["password"],
        params=KdfParams(expected["kdf"]["opslimit"], expected["kdf"]["memlimit"]),
        salt=bytes.fromhex(expected["kdf"]["salt"]),
        nonce=bytes.fromhex(expected["cipher"]["nonce"]),
        allow_weak_kdf=True,
    )
    assert written["cipher"]["ciphertext"] == expected["cipher"]["ciphertext"]
    assert written == expected


@pytest.mark.parametrize("vector", UNSUPPORTED, ids=lambda v: v["why"])
def test_unsupported_vector_keystores_are_refused_before_any_derivation(vector: dict, kdf_must_not_run) -> None:
    with pytest.raises(KeystoreUnsupported):
        decrypt_keystore(vector["keystore"], "correct horse battery staple")


def test_opslimit_above_16_is_refused_before_derivation(kdf_must_not_run) -> None:
    data = vector_keystore()
    data["kdf"]["opslimit"] = 17
    with pytest.raises(KeystoreUnsupported, match="opslimit 17"):
        decrypt_keystore(data, "correct horse battery staple")


def test_opslimit_16_and_memlimit_1_gib_are_the_largest_accepted(kdf_must_not_run) -> None:
    data = vector_keystore()
    data["kdf"]["opslimit"] = 16
    data["kdf"]["memlimit"] = 1024 * 1024 * 1024
    assert parse_keystore(data).params == KdfParams(16, 1024 * 1024 * 1024)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("memlimit", 1024 * 1024 * 1024 + 1),
        ("memlimit", argon2id.MEMLIMIT_MIN - 1),
        ("opslimit", argon2id.OPSLIMIT_MIN - 1),
        ("opslimit", 2**53 - 1),
    ],
)
def test_kdf_parameters_out_of_bounds_are_refused_before_derivation(field: str, value: int, kdf_must_not_run) -> None:
    data = vector_keystore()
    data["kdf"][field] = value
    with pytest.raises(KeystoreUnsupported, match=field):
        decrypt_keystore(data, "correct horse battery staple")


def test_opslimit_beyond_protocol_integers_is_refused_before_derivation(kdf_must_not_run) -> None:
    text = json.dumps(vector_keystore()).replace('"opslimit": 2', '"opslimit": 18446744073709551615')
    with pytest.raises(KeystoreUnsupported):
        decrypt_keystore(text, "correct horse battery staple")


@pytest.mark.parametrize(
    ("section", "name"), [("kdf", "scrypt"), ("kdf", "Argon2id"), ("cipher", "aes-256-gcm"), ("cipher", None)]
)
def test_unknown_kdf_or_cipher_is_unsupported(section: str, name: str | None, kdf_must_not_run) -> None:
    data = vector_keystore()
    data[section]["name"] = name
    with pytest.raises(KeystoreUnsupported, match=section):
        decrypt_keystore(data, "correct horse battery staple")


@pytest.mark.parametrize("version", [0, 2, 3])
def test_unknown_version_is_unsupported(version: int, kdf_must_not_run) -> None:
    data = vector_keystore()
    data["version"] = version
    with pytest.raises(KeystoreUnsupported, match=f"version {version}"):
        decrypt_keystore(data, "correct horse battery staple")


def _with(change) -> dict:
    data = vector_keystore()
    change(data)
    return data


MALFORMED = {
    "not json": b"{not json",
    "a list": b"[]",
    "duplicate key": b'{"version": 1, "version": 1}',
    "version is a boolean": _with(lambda d: d.update(version=True)),
    "version is a string": _with(lambda d: d.update(version="1")),
    "missing cipher": _with(lambda d: d.pop("cipher")),
    "extra field": _with(lambda d: d.update(id="x")),
    "salt too short": _with(lambda d: d["kdf"].update(salt="00" * 15)),
    "upper-case nonce": _with(lambda d: d["cipher"].update(nonce=d["cipher"]["nonce"].upper())),
    "ciphertext truncated": _with(lambda d: d["cipher"].update(ciphertext=d["cipher"]["ciphertext"][:-2])),
    "pubkey not hex": _with(lambda d: d.update(pubkey="zz" * 32)),
    "memlimit a float": json.dumps(vector_keystore()).replace("8388608", "8388608.0").encode(),
}


@pytest.mark.parametrize("data", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_keystores_are_refused_before_derivation(data, kdf_must_not_run) -> None:
    with pytest.raises(KeystoreMalformed, match="not a keystore file"):
        decrypt_keystore(data, "correct horse battery staple")


@pytest.mark.parametrize("vector", TAMPERED, ids=lambda v: v["why"])
def test_tampered_vector_keystores_are_refused_as_address_mismatch(vector: dict) -> None:
    with pytest.raises(AddressMismatch):
        decrypt_keystore(vector["keystore"], vector["password"])


def test_an_edited_pubkey_is_an_address_mismatch() -> None:
    data = vector_keystore()
    data["pubkey"] = vectors()["addresses"][1]["pubkey"]
    with pytest.raises(AddressMismatch):
        decrypt_keystore(data, KEYSTORES[0]["password"])


def test_wrong_password_is_refused() -> None:
    with pytest.raises(WrongPasswordOrCorrupted):
        decrypt_keystore(vector_keystore(), "correct horse battery stapler")


@pytest.mark.parametrize("position", [0, 17, 31, 32, 47], ids=lambda p: f"byte {p}")
def test_a_flipped_ciphertext_byte_is_wrong_password_or_corrupted(position: int) -> None:
    data = vector_keystore()
    ciphertext = bytearray.fromhex(data["cipher"]["ciphertext"])
    ciphertext[position] ^= 0x01
    data["cipher"]["ciphertext"] = ciphertext.hex()
    with pytest.raises(WrongPasswordOrCorrupted):
        decrypt_keystore(data, KEYSTORES[0]["password"])


def test_a_changed_salt_is_wrong_password_or_corrupted() -> None:
    data = vector_keystore()
    data["kdf"]["salt"] = "ff" * 16
    with pytest.raises(WrongPasswordOrCorrupted):
        decrypt_keystore(data, KEYSTORES[0]["password"])


def test_the_keystore_errors_are_distinct() -> None:
    errors = [KeystoreUnsupported, WrongPasswordOrCorrupted, AddressMismatch]
    for error in errors:
        assert [issubclass(error, other) for other in errors].count(True) == 1
    assert len({error.code for error in errors}) == 3


def test_new_keystores_round_trip_with_a_random_salt_and_nonce() -> None:
    key = Key.generate()
    first = encrypt_seed(key.seed, "pässword ✓")
    second = encrypt_seed(key.seed, "pässword ✓")
    assert first["kdf"]["salt"] != second["kdf"]["salt"]
    assert first["cipher"]["nonce"] != second["cipher"]["nonce"]
    assert decrypt_keystore(first, "pässword ✓").seed == key.seed
    assert decrypt_keystore(keystore.keystore_json(first), "pässword ✓".encode()).seed == key.seed


def test_the_default_write_parameters_meet_the_protocol_floor() -> None:
    assert DEFAULT_WRITE_PARAMS.opslimit >= 3
    assert DEFAULT_WRITE_PARAMS.memlimit >= 256 * 1024 * 1024


def test_weak_write_parameters_need_the_explicit_test_flag(kdf_must_not_run) -> None:
    with pytest.raises(ValueError, match="allow_weak_kdf"):
        encrypt_seed(bytes(32), "password", params=FAST_KDF)
    with pytest.raises(ValueError, match="allow_weak_kdf"):
        encrypt_seed(bytes(32), "password", params=KdfParams(3, 128 * 1024 * 1024))


def test_write_parameters_beyond_what_readers_accept_are_refused(kdf_must_not_run) -> None:
    with pytest.raises(ValueError, match="outside"):
        encrypt_seed(bytes(32), "password", params=KdfParams(17, 256 * 1024 * 1024))


def test_short_new_passwords_are_refused() -> None:
    with pytest.raises(WeakPassword):
        keystore.check_new_password("short")
    keystore.check_new_password("long enough")
