"""The validator rows a process keeps between changes are dropped when the rows change.

Transactional tests: rows are kept only when read outside a transaction, so the
ordinary tests (each wrapped in one) never see the kept copy.
"""

from __future__ import annotations

import pytest
from django.db import transaction

from chain import services
from chain.models import Validator
from chain.protocol.tx import build_transaction
from chain.tests.support import MIN_FEE, fixed_keys, make_genesis, named_key
from chain.validators import VALSET_DELAY, _rows, forget_validator_sets, validator_set_at

pytestmark = pytest.mark.django_db(transaction=True)


def test_rows_read_outside_a_transaction_are_kept_until_an_orm_save_changes_them() -> None:
    keys = fixed_keys()
    services.genesis_load(genesis=make_genesis(keys))
    assert validator_set_at(1) == {keys.validator.address: (keys.validator.pubkey_hex, 1)}
    assert _rows.rows is not None, "read outside a transaction: kept"
    newcomer = named_key("newcomer")
    Validator.objects.create(address=newcomer.address, pubkey=newcomer.pubkey_hex, power=5, effective_height=3)
    assert validator_set_at(3) == {
        keys.validator.address: (keys.validator.pubkey_hex, 1),
        newcomer.address: (newcomer.pubkey_hex, 5),
    }
    assert validator_set_at(2) == {keys.validator.address: (keys.validator.pubkey_hex, 1)}


def test_rows_read_inside_a_transaction_are_not_kept() -> None:
    keys = fixed_keys()
    services.genesis_load(genesis=make_genesis(keys))
    validator_set_at(1)
    Validator.objects.filter(address=keys.validator.address).update(power=7)  # no signal: stale until forgotten
    forget_validator_sets()
    with transaction.atomic():
        assert validator_set_at(1)[keys.validator.address][1] == 7
        assert _rows.rows is None


def test_a_genesis_loaded_after_the_rows_were_read_is_seen() -> None:
    keys = fixed_keys()
    assert validator_set_at(1) == {}  # read, and kept, before there is any chain
    services.genesis_load(genesis=make_genesis(keys))
    assert validator_set_at(1) == {keys.validator.address: (keys.validator.pubkey_hex, 1)}


def test_an_approved_validator_update_reaches_the_kept_rows_at_its_height() -> None:
    keys = fixed_keys()
    genesis = make_genesis(keys, funded=[*keys.funded, keys.validator])
    services.genesis_load(genesis=genesis)
    validator = keys.validator
    assert set(validator_set_at(5)) == {validator.address}  # read outside a transaction: kept
    newcomer = named_key("newcomer")
    update = build_transaction(
        validator,
        chain_id=genesis["chain_id"],
        type="validator_update",
        nonce=0,
        fee=MIN_FEE,
        payload={"validator": newcomer.address, "pubkey": newcomer.pubkey_hex, "power": 1},
    )
    [result] = services.mempool_admit(txs=[update], chain_id=genesis["chain_id"], min_fee=MIN_FEE)
    assert result.error is None, result.error
    block = services.block_produce(key=validator)
    # The only validator approved it: the change takes effect VALSET_DELAY heights later.
    effective = block.height + VALSET_DELAY
    assert set(validator_set_at(effective - 1)) == {validator.address}
    assert validator_set_at(effective) == {
        validator.address: (validator.pubkey_hex, 1),
        newcomer.address: (newcomer.pubkey_hex, 1),
    }
