"""BIP-39 mnemonics and SLIP-0010 derivation (protocol.md): the vectors, and clear refusals."""

from __future__ import annotations

import pytest

from wallet.errors import InvalidMnemonic
from wallet.mnemonic import (
    DERIVATION_PATH,
    generate_mnemonic,
    key_from_mnemonic,
    mnemonic_to_seed,
    slip10_ed25519,
    validate_mnemonic,
)
from wallet.tests.support import vectors

MNEMONICS = vectors()["mnemonics"]
VALID_24 = MNEMONICS[0]["mnemonic"]


@pytest.mark.parametrize("vector", MNEMONICS, ids=lambda v: f"{len(v['mnemonic'].split())} words")
def test_vector_mnemonics_give_their_seed_pubkey_and_address(vector: dict) -> None:
    assert vector["path"] == DERIVATION_PATH
    seed = slip10_ed25519(mnemonic_to_seed(vector["mnemonic"], vector["passphrase"]), vector["path"])
    assert seed.hex() == vector["seed"]
    key = key_from_mnemonic(vector["mnemonic"], vector["passphrase"])
    assert key.seed.hex() == vector["seed"]
    assert key.pubkey_hex == vector["pubkey"]
    assert key.address == vector["address"]


def test_the_passphrase_changes_the_key() -> None:
    vector = MNEMONICS[1]
    assert key_from_mnemonic(vector["mnemonic"], "").address != vector["address"]


def test_slip10_reproduces_its_own_ed25519_test_vector() -> None:
    # SLIP-0010, "Test vector 1 for ed25519".
    seed = bytes.fromhex("000102030405060708090a0b0c0d0e0f")
    assert slip10_ed25519(seed, "m").hex() == "2b4be7f19ee27bbf30c667b642d5f4aa69fd169872f8fc3059c08ebae2eb19e7"
    assert slip10_ed25519(seed, "m/0'").hex() == "68e0fe46dfb67e368c75379acec591dad19df3cde26e63b93a8e704f1dade7a3"
    assert (
        slip10_ed25519(seed, "m/0'/1'/2'/2'/1000000000'").hex()
        == "8f94d394a8e8fd6b1bc2f3f49f5c47e385281d5c17e65324b0f62483e37e8793"
    )


@pytest.mark.parametrize("path", ["m/44/7337'/0'/0'", "44'/7337'", "m/x'", f"m/{2**31}'"])
def test_derivation_paths_must_be_all_hardened(path: str) -> None:
    with pytest.raises(ValueError):
        slip10_ed25519(bytes(64), path)


def test_new_mnemonics_have_24_words_by_default_and_validate() -> None:
    phrase = generate_mnemonic()
    assert len(phrase.split()) == 24
    assert validate_mnemonic(phrase) == phrase
    assert generate_mnemonic() != phrase
    assert len(generate_mnemonic(12).split()) == 12


def test_spacing_and_case_do_not_change_the_key() -> None:
    messy = "  " + "\n".join(word.upper() for word in VALID_24.split()) + "\t\n"
    assert key_from_mnemonic(messy).address == MNEMONICS[0]["address"]


def test_an_unknown_word_is_given_by_its_position_never_shown() -> None:
    words = VALID_24.split()
    words[4] = "abandonn"
    with pytest.raises(InvalidMnemonic, match=r"word 5 is not in the BIP-39") as raised:
        validate_mnemonic(" ".join(words))
    assert "abandonn" not in str(raised.value)


def test_a_bad_checksum_is_refused() -> None:
    words = VALID_24.split()
    words[-1] = "zoo"
    with pytest.raises(InvalidMnemonic, match="bad checksum"):
        key_from_mnemonic(" ".join(words))


@pytest.mark.parametrize("count", [0, 11, 13, 25])
def test_a_wrong_word_count_is_refused(count: int) -> None:
    with pytest.raises(InvalidMnemonic, match=f"got {count}"):
        validate_mnemonic(" ".join(["abandon"] * count))
