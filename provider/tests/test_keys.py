"""The provider's key: made on first use in the data directory, or loaded from a given keystore."""

from __future__ import annotations

import stat

import pytest
from nacl.pwhash import argon2id

from chain.protocol.keys import Key
from provider.keys import KeyLoadError, load_or_create_key
from wallet.keystore import KdfParams, encrypt_key, keystore_json

FAST_KDF = KdfParams(opslimit=argon2id.OPSLIMIT_MIN, memlimit=argon2id.MEMLIMIT_MIN)


@pytest.fixture
def keystore(tmp_path):
    key = Key.generate()
    path = tmp_path / "mine.keystore.json"
    path.write_text(keystore_json(encrypt_key(key, "correct horse", params=FAST_KDF, allow_weak_kdf=True)))
    return key, path


def test_the_default_key_is_made_once_with_owner_only_files(tmp_path):
    first = load_or_create_key(tmp_path)
    for name in ("provider.keystore.json", "provider.password"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600
    assert load_or_create_key(tmp_path).address == first.address


def test_a_given_keystore_with_its_password_file(keystore, tmp_path):
    key, path = keystore
    password = tmp_path / "pw"
    password.write_text("correct horse\n")
    assert load_or_create_key(tmp_path, path, password).address == key.address
    password.write_text("wrong horse")
    with pytest.raises(KeyLoadError, match="mine.keystore.json.*wrong password"):
        load_or_create_key(tmp_path, path, password)
    assert not (tmp_path / "provider.keystore.json").exists()


def test_a_given_keystore_takes_the_wallet_password_from_the_environment(keystore, tmp_path, monkeypatch):
    key, path = keystore
    monkeypatch.delenv("AITBC_WALLET_PASSWORD", raising=False)
    monkeypatch.delenv("AITBC_WALLET_PASSWORD_FILE", raising=False)
    with pytest.raises(KeyLoadError, match="--password-file or AITBC_WALLET_PASSWORD"):
        load_or_create_key(tmp_path, path)
    monkeypatch.setenv("AITBC_WALLET_PASSWORD", "correct horse")
    assert load_or_create_key(tmp_path, path).address == key.address
