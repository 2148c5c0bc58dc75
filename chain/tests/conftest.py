"""Fixtures of the chain's tests: fixed keys, a one-validator genesis, a loaded test chain."""

from __future__ import annotations

from typing import Any

import pytest

from chain import services
from chain.protocol.keys import Key
from chain.tests.harness import ChainHarness
from chain.tests.support import Keys, fixed_keys, make_genesis


@pytest.fixture(scope="session")
def chain_keys() -> Keys:
    """The validator, four funded accounts (alice, bob, carol, dave) and an arbiter with fee money."""
    return fixed_keys()


@pytest.fixture(scope="session")
def funded_keys(chain_keys: Keys) -> list[Key]:
    return chain_keys.funded


@pytest.fixture(scope="session")
def validator_key(chain_keys: Keys) -> Key:
    return chain_keys.validator


@pytest.fixture
def chain_genesis(chain_keys: Keys) -> dict[str, Any]:
    """A fresh genesis document (tests may change it before loading)."""
    return make_genesis(chain_keys)


@pytest.fixture
def chain(db, client, chain_keys: Keys, chain_genesis: dict[str, Any]) -> ChainHarness:
    """The test chain with its genesis loaded, driven through the RPC and the services."""
    _state, applied = services.genesis_load(genesis=chain_genesis)
    assert applied
    return ChainHarness(client, chain_keys, chain_genesis)
