"""Genesis: applied once, the same file resumes, another file or an unknown param is refused."""

from __future__ import annotations

import copy

import pytest

from chain import services
from chain.models import Account, ChainState
from chain.protocol.errors import ProtocolError
from chain.tests.harness import ChainHarness
from chain.tests.support import ALLOCATION, named_key, transfer


def test_second_load_of_the_same_genesis_applies_nothing(chain: ChainHarness):
    alice, bob = chain.keys.alice, chain.keys.bob
    chain.submit(transfer(alice, 0, bob.address, 700))
    chain.produce()
    before = sorted(Account.objects.values_list("address", "balance", "nonce"))

    # A key order or whitespace change is the same genesis: its id is over canonical JSON.
    reordered = dict(reversed(list(copy.deepcopy(chain.genesis).items())))
    state, applied = services.genesis_load(genesis=reordered)
    assert not applied
    assert state.height == 1
    assert sorted(Account.objects.values_list("address", "balance", "nonce")) == before
    assert chain.account(bob)[0] == ALLOCATION + 700


def test_a_different_genesis_for_the_same_data_is_refused(chain: ChainHarness):
    other = copy.deepcopy(chain.genesis)
    other["allocations"][0]["amount"] += 1
    with pytest.raises(services.GenesisMismatch, match="another data directory"):
        services.genesis_load(genesis=other)
    renamed = copy.deepcopy(chain.genesis) | {"chain_id": "aitbc-othernet-1"}
    with pytest.raises(services.GenesisMismatch):
        services.genesis_load(genesis=renamed)
    assert ChainState.objects.get().genesis_id


@pytest.mark.django_db
def test_unknown_genesis_param_is_refused_and_nothing_is_stored(chain_genesis):
    chain_genesis["params"]["block_time_seconds"] = 1
    with pytest.raises(ProtocolError, match="unknown genesis params: block_time_seconds") as caught:
        services.genesis_load(genesis=chain_genesis)
    assert caught.value.code == "malformed"
    assert not ChainState.objects.exists()
    assert not Account.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize(
    "change",
    [
        lambda g: g["params"].pop("min_fee"),
        lambda g: g["params"].update(min_fee=True),
        lambda g: g["params"].update(block_time_ms=10),
        lambda g: g.update(extra=1),
        lambda g: g["allocations"].append(dict(g["allocations"][0])),
        lambda g: g["validators"][0].update(pubkey="00" * 32),
        lambda g: g.update(validators=[]),
        lambda g: g.update(genesis_time="yesterday"),
    ],
    ids=[
        "missing param",
        "boolean param",
        "param out of bounds",
        "unknown top-level field",
        "allocation listed twice",
        "validator pubkey not its address",
        "no validators",
        "bad genesis_time",
    ],
)
def test_invalid_genesis_is_refused(chain_genesis, change):
    change(chain_genesis)
    with pytest.raises(ProtocolError) as caught:
        services.genesis_load(genesis=chain_genesis)
    assert caught.value.code in ("malformed", "invalid_address")
    assert not ChainState.objects.exists()


def test_status_repeats_the_genesis_params(chain: ChainHarness):
    status = chain.get("/status").json()
    assert status["params"] == chain.genesis["params"]
    assert status["chain_id"] == chain.genesis["chain_id"]
    assert status["height"] == 0


def test_an_address_never_seen_has_balance_and_nonce_zero(chain: ChainHarness):
    outsider = named_key("never-seen").address
    assert chain.get(f"/v1/chain/accounts/{outsider}").json() == {"address": outsider, "balance": 0, "nonce": 0}
    alice = chain.keys.alice.address
    assert chain.get(f"/v1/chain/accounts/{alice}").json() == {"address": alice, "balance": ALLOCATION, "nonce": 0}
