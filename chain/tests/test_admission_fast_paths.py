"""The admission and production shortcuts keep the rules they shortcut.

Strict JSON skips its walk over every string unless the text can hold a lone
surrogate; a checked transaction's signed bytes are written out without the general
encoder; admission reads a batch's accounts with set-based SQL and checks pending spends
and nonces in the in-memory mempool; a block is built before the write lock is taken
and rebuilt if the head moved meanwhile.
"""

from __future__ import annotations

import threading

import pytest
from django.db import connection
from hypothesis import given, settings
from hypothesis import strategies as st

from chain import services
from chain.mempool import mempool
from chain.models import Account, Block, ChainState, Transaction
from chain.protocol.encoding import parse_strict
from chain.protocol.errors import ProtocolError
from chain.protocol.tx import PAYLOAD_FIELDS, checked_sign_bytes, sign_bytes, tx_id
from chain.tests.harness import ChainHarness, dropped_transaction_comes_back, replayed_state, stored_state
from chain.tests.support import MIN_FEE, make_genesis, named_key, transfer


@pytest.mark.parametrize(
    "body",
    [
        b'["\\ud800"]',
        b'{"memo": "\\uDFFF"}',
        b'{"a": {"b": ["ok", "\\uDbFf"]}}',
        b'["\\ud83d"]',
        b'["\\ude00\\ud83d"]',
        '["\ud800"]',
        '{"k": "caf\u00e9 \udc00"}',
    ],
    ids=["high", "low-upper-case", "nested-mixed-case", "half-pair", "pair-reversed", "str-literal", "str-non-ascii"],
)
def test_lone_surrogates_are_malformed(body: bytes | str) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_strict(body)
    assert caught.value.code == "malformed"
    assert "surrogate" in caught.value.message


@pytest.mark.parametrize(
    ("body", "value"),
    [
        (b'["\\ud83d\\ude00"]', ["\U0001f600"]),
        (b'["\\\\ud800"]', ["\\ud800"]),
        ('["caf\u00e9"]'.encode(), ["caf\u00e9"]),
        ('["caf\u00e9"]', ["caf\u00e9"]),
        (b'{"b": 1, "a": [2, {"c": "\\u00e9"}]}', {"b": 1, "a": [2, {"c": "\u00e9"}]}),
    ],
    ids=["pair", "escaped-backslash", "utf8-bytes", "str", "nested"],
)
def test_texts_without_lone_surrogates_parse(body: bytes | str, value) -> None:
    assert parse_strict(body) == value


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"a": 1, "b": 2, "a": 3}', "duplicate key 'a'"),
        (b'{"\\u00e9": 1}', "is not ASCII"),
        (b'{"x": {"k": 1, "k": 1}}', "duplicate key 'k'"),
        (b'{"\\u00e9": 1, "\\u00e9": 2}', "is not ASCII"),
    ],
)
def test_object_keys_are_unique_and_ascii(body: bytes, message: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_strict(body)
    assert caught.value.code == "malformed"
    assert message in caught.value.message


# Any text, lone surrogates included, and quotes, backslashes and control characters.
_texts = st.text(st.characters(blacklist_categories=()), max_size=12)
_ints = st.integers(min_value=0, max_value=2**53 - 1)
_INT_FIELDS = {"nonce", "fee", "amount", "timeout_height", "power"}


@st.composite
def _shaped_transactions(draw) -> dict:
    """Dicts with the fields and JSON types ``check_fields`` lets through (values otherwise arbitrary)."""
    kind = draw(st.sampled_from(sorted(PAYLOAD_FIELDS)))
    payload = {name: draw(_ints if name in _INT_FIELDS else _texts) for name in PAYLOAD_FIELDS[kind]}
    tx = {name: draw(_texts) for name in ("chain_id", "from", "pubkey", "memo", "signature")}
    return tx | {"type": kind, "nonce": draw(_ints), "fee": draw(_ints), "payload": payload}


@settings(max_examples=300, deadline=None)
@given(_shaped_transactions())
def test_checked_sign_bytes_are_the_canonical_encoding(tx: dict) -> None:
    try:
        expected = sign_bytes(tx)
    except UnicodeEncodeError:
        with pytest.raises(UnicodeEncodeError):
            checked_sign_bytes(tx)
        return
    assert checked_sign_bytes(tx) == expected


def test_pending_spends_and_nonces_of_earlier_batches_count(chain: ChainHarness) -> None:
    """Admission sums the sender's pending spends and sees its pending nonces in the mempool."""
    alice, bob = chain.keys.alice, chain.keys.bob
    balance = chain.balance(alice)
    first = chain.batch([transfer(alice, n, bob.address, balance // 4) for n in range(3)])
    assert all("id" in r for r in first), first
    left = balance - 3 * (balance // 4 + MIN_FEE)
    results = chain.batch(
        [
            transfer(alice, 1, bob.address, 7),
            transfer(alice, 3, bob.address, left - MIN_FEE + 1),
            transfer(alice, 3, bob.address, left - MIN_FEE),
            transfer(alice, 4, bob.address, 1),
        ]
    )
    assert [r.get("error", {}).get("code") for r in results] == [
        "duplicate",
        "insufficient_funds",
        None,
        "insufficient_funds",
    ], results
    assert len(mempool.nonces_of(alice.address)) == 4
    assert not Transaction.objects.exists()  # admission writes nothing
    block = chain.produce()
    assert block.tx_count == 4
    assert chain.balance(alice) == 0
    assert stored_state() == replayed_state(chain.genesis)


def test_a_block_built_while_the_head_moved_is_rebuilt(chain: ChainHarness, monkeypatch) -> None:
    """Another block stored between the draft and the write lock: the draft is dropped and rebuilt on the new head."""
    alice, bob, carol = chain.keys.alice, chain.keys.bob, chain.keys.carol
    for n in range(3):
        chain.submit(transfer(alice, n, bob.address, 10 + n))
    draft_block = services._draft_block
    drafts: list[int] = []

    def racing_draft(state: ChainState, key, now_ms: int):
        drafts.append(state.height)
        draft = draft_block(state, key, now_ms)
        if len(drafts) == 1:
            # The rival block takes alice's transfers and carol's, which arrives only now.
            chain.submit(transfer(carol, 0, bob.address, 5))
            monkeypatch.setattr(services, "_draft_block", draft_block)
            chain.produce()
            monkeypatch.setattr(services, "_draft_block", racing_draft)
        return draft

    monkeypatch.setattr(services, "_draft_block", racing_draft)
    start = ChainState.objects.get()
    later = int(start.latest_block_time.timestamp() * 1000) + 10 * chain.params["block_time_ms"]
    block = services.block_produce(key=chain.keys.validator, now_ms=later)
    assert drafts == [0, 1]
    assert block is not None and block.height == 2
    first, second = Block.objects.order_by("height")
    assert second.prev_id == first.id
    assert first.tx_count == 4 and second.tx_count == 0
    assert Transaction.objects.filter(status=Transaction.COMMITTED).count() == 4
    assert chain.nonce(alice) == 3 and chain.nonce(carol) == 1
    assert stored_state() == replayed_state(chain.genesis)


def test_a_draft_too_early_takes_no_lock_and_writes_nothing(chain: ChainHarness) -> None:
    chain.submit(transfer(chain.keys.alice, 0, chain.keys.bob.address, 1))
    chain.produce()
    chain.submit(transfer(chain.keys.alice, 1, chain.keys.bob.address, 1))
    state = ChainState.objects.get()
    early = int(state.latest_block_time.timestamp() * 1000) + chain.params["block_time_ms"] - 1
    assert services.block_produce(key=chain.keys.validator, now_ms=early) is None
    assert ChainState.objects.get().height == 1
    assert [entry.tx.nonce for entry in mempool.oldest(10)] == [1]
    assert Transaction.objects.count() == 1


def test_the_mempool_bound_counts_what_is_pending(chain: ChainHarness, monkeypatch) -> None:
    """A block that took a pending transaction makes room for one more; at the bound admission refuses."""
    monkeypatch.setattr(services, "MEMPOOL_MAX", 3)
    alice, bob, carol, dave = chain.keys.alice, chain.keys.bob, chain.keys.carol, chain.keys.dave
    chain.submit(transfer(alice, 1, bob.address, 1))  # waits for alice's nonce 0
    chain.submit(transfer(bob, 0, alice.address, 1))
    chain.submit(transfer(carol, 1, bob.address, 1))  # waits for carol's nonce 0
    refuse = chain.post(transfer(dave, 0, bob.address, 1))
    assert refuse.status_code == 503 and refuse.json()["error"]["code"] == "mempool_full"
    assert chain.produce().tx_count == 1
    assert len(mempool) == 2
    chain.submit(transfer(dave, 0, bob.address, 1))
    refuse = chain.post(transfer(dave, 1, bob.address, 1))
    assert refuse.status_code == 503 and refuse.json()["error"]["code"] == "mempool_full"


@pytest.mark.parametrize("odd", ['with "quotes"', "back\\slash", "", "NULL", "a,b", "{x}"])
def test_set_lookups_take_any_value(chain: ChainHarness, odd: str) -> None:
    """The array literal written for PostgreSQL must neither drop, merge nor null a value."""
    alice = chain.keys.alice.address
    sql = "SELECT address FROM chain_account WHERE address {in}"
    assert services._select_in(sql, [odd, alice]) == [(alice,)]
    assert services._select_in(sql, [odd]) == []
    nonces = services._select_in("SELECT nonce FROM chain_account WHERE nonce {in}", [0, 2**53 - 1])
    assert len(nonces) == len(chain.genesis["allocations"])


def test_a_pending_transaction_behind_its_account_nonce_is_rejected_stale(chain: ChainHarness) -> None:
    """Its nonce was used by another way in (a peer's block, say): the next block marks it, reading the index."""
    alice, bob = chain.keys.alice, chain.keys.bob
    stale = chain.submit(transfer(alice, 0, bob.address, 1))
    ready = chain.submit(transfer(bob, 0, alice.address, 1))
    Account.objects.filter(address=alice.address).update(nonce=1)
    block = chain.produce()
    assert block.tx_ids == [ready]
    row = Transaction.objects.get(id=stale)
    assert (row.status, row.height, row.error_code) == (Transaction.REJECTED, None, "bad_nonce")
    assert Transaction.objects.get(id=ready).status == Transaction.COMMITTED


@pytest.mark.django_db(transaction=True)
def test_concurrent_batches_and_blocks_commit_each_admitted_transaction_once(chain_keys) -> None:
    """Admissions from several threads (some submitting the same transactions) while blocks are produced:
    the writers queue on the lock in this process and on the database's, nothing is admitted twice and
    every admitted transaction ends in exactly one block."""
    senders = [named_key(f"concurrent-{n}") for n in range(6)]
    genesis = make_genesis(chain_keys, funded=senders)
    services.genesis_load(genesis=genesis)
    sink = chain_keys.bob.address
    batches = [
        [transfer(key, nonce, sink, 1 + nonce) for key in senders[2 * t : 2 * t + 2] for nonce in range(20)]
        for t in range(3)
    ]
    batches.append(batches[0][:10] + batches[1][:10])  # the same transactions, raced by a fourth thread
    results: list[list[services.AdmitResult]] = [[] for _ in batches]
    done = threading.Event()

    def admit(n: int) -> None:
        try:
            for start in range(0, len(batches[n]), 5):
                results[n] += services.mempool_admit(
                    txs=batches[n][start : start + 5], chain_id=genesis["chain_id"], min_fee=MIN_FEE
                )
        finally:
            connection.close()

    def produce() -> None:
        try:
            now = int(ChainState.objects.get().latest_block_time.timestamp() * 1000)
            while not done.is_set():
                now += genesis["params"]["block_time_ms"]
                services.block_produce(key=chain_keys.validator, now_ms=now)
        finally:
            connection.close()

    producer = threading.Thread(target=produce)
    producer.start()
    admitters = [threading.Thread(target=admit, args=(n,)) for n in range(len(batches))]
    for thread in admitters:
        thread.start()
    for thread in admitters:
        thread.join()
    done.set()
    producer.join()
    state = ChainState.objects.get()
    now = int(state.latest_block_time.timestamp() * 1000)
    while len(mempool):
        now += genesis["params"]["block_time_ms"]
        services.block_produce(key=chain_keys.validator, now_ms=now)

    admitted = [r.id for rs in results for r in rs if r.error is None]
    refused = [r.error.code for rs in results for r in rs if r.error is not None]
    assert sorted(admitted) == sorted({tx_id(tx) for batch in batches[:3] for tx in batch})
    assert refused == ["duplicate"] * 20
    in_blocks = [i for ids in Block.objects.values_list("tx_ids", flat=True) for i in ids]
    assert sorted(in_blocks) == sorted(admitted)
    assert set(Transaction.objects.values_list("status", flat=True)) == {Transaction.COMMITTED}
    assert sum(Account.objects.values_list("balance", flat=True)) == ChainState.objects.get().total_supply
    assert stored_state() == replayed_state(genesis)


def test_a_transaction_dropped_from_a_block_is_admitted_again(chain: ChainHarness) -> None:
    dropped_transaction_comes_back(chain)


def test_resubmitted_pending_and_committed_transactions_are_duplicates(chain: ChainHarness) -> None:
    alice, bob = chain.keys.alice, chain.keys.bob
    committed, pending = transfer(alice, 0, bob.address, 5), transfer(alice, 1, bob.address, 5)
    chain.batch([committed])
    chain.produce()
    chain.batch([pending])
    results = chain.batch([committed, pending, transfer(alice, 2, bob.address, 5)])
    assert [r.get("error", {}).get("code") for r in results] == ["duplicate", "duplicate", None], results
