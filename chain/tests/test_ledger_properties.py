"""Property-based test of the ledger: random operations against the real database.

A Hypothesis state machine submits batches of transfers, escrow locks, pays and refunds
(valid, invalid and replayed ones) through ``services.mempool_admit`` and applies them with
``services.block_produce``, now and then several blocks at once so escrow timeouts pass.
After every block, at every height:

- the total supply (balances plus what remains in open escrows) equals genesis;
- no balance is negative;
- every included transaction is in exactly one block, once, stored with that block's
  height and the status and code the block recorded;
- each account's nonce is the number of its included transactions;
- the stored accounts and escrows equal a replay of the blocks through
  ``chain.ledger.apply_transaction`` (kept incrementally; a full replay from genesis
  closes each example).

Admission is checked too: invalid transactions get their exact code, replays of pending or
included transactions are duplicates, and a refused transaction leaves no row.

Bounded for CI by ``max_examples`` and ``stateful_step_count``; the test prints what it did
and asserts how many transactions it applied, so a change that makes it vacuous fails.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.apps import apps
from django.db.models import Count
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from chain import services
from chain.ledger import LedgerView, apply_transaction
from chain.mempool import mempool
from chain.models import Account, Block, ChainState, Transaction
from chain.protocol.keys import Key
from chain.protocol.tx import NONCE_WINDOW, tx_id
from chain.tests.harness import replayed_state, stored_state
from chain.tests.support import (
    CHAIN_ID,
    MIN_FEE,
    escrow_fields,
    escrow_lock,
    escrow_pay,
    escrow_refund,
    fixed_keys,
    make_genesis,
    named_key,
    state_of,
    transfer,
)

KEYS = fixed_keys()
# Senders: the four funded accounts, the arbiter (fee money only) and the validator, who
# starts with nothing and lives on the fees it collects.
SENDERS = [*KEYS.funded, KEYS.arbiter, KEYS.validator]
ARBITER = 4
RECIPIENTS = [*SENDERS, named_key("outsider")]
ALLOCATION = 40_000_000  # small, so that funds run out and insufficient_funds happens
MIN_ESCROW_BLOCKS = 2
MAX_BLOCK_TXS = 30  # small, so a busy mempool spills over into later blocks
GENESIS = make_genesis(
    KEYS, allocation=ALLOCATION, min_escrow_blocks=MIN_ESCROW_BLOCKS, max_block_txs=MAX_BLOCK_TXS, block_time_ms=1000
)
SUPPLY = sum(entry["amount"] for entry in GENESIS["allocations"])
UNKNOWN_ESCROW = "cd" * 32

# What an admission may answer for a well-formed, signed escrow call: it depends on state
# the test does not model.
ESCROW_CODES = frozenset({"insufficient_funds", "escrow_not_found", "escrow_closed", "not_arbiter", "exceeds_escrow"})


@dataclass
class Totals:
    examples: int = 0
    submitted: int = 0
    admitted: int = 0
    applied: int = 0
    applied_rejected: int = 0
    blocks: int = 0
    refused: Counter = field(default_factory=Counter)


TOTALS = Totals()

amounts = st.one_of(
    *[st.integers(1, 1_000_000)] * 6,
    st.integers(1, 20_000_000),
    st.just(ALLOCATION * 2),  # more than anyone holds
)
# Mostly the funded accounts; now and then the arbiter or the validator, who are short of money.
senders = st.sampled_from([0, 1, 2, 3] * 3 + [ARBITER, 5])
recipients = st.integers(0, len(RECIPIENTS) - 1)
fees = st.sampled_from([MIN_FEE, MIN_FEE, MIN_FEE, MIN_FEE + 1, 3 * MIN_FEE])
escrow_index = st.integers(0, 50)  # 45 and above name no escrow at all
# (weight, strategy): one_of would pick each distinct strategy equally often.
OPERATIONS = [
    (8, st.tuples(st.just("transfer"), senders, recipients, amounts, fees)),
    (1, st.tuples(st.just("lock"), senders, amounts, st.integers(-1, 3))),
    # Pays and refunds are mostly the arbiter's; anyone else's is not_arbiter (before the timeout).
    (1, st.tuples(st.just("pay"), st.sampled_from([ARBITER] * 3 + [0, 1]), escrow_index, recipients, amounts)),
    (1, st.tuples(st.just("refund"), st.sampled_from([ARBITER] * 2 + [0, 2]), escrow_index)),
    (
        1,
        st.tuples(
            st.just("invalid"),
            st.sampled_from(
                ["bad_signature", "wrong_chain", "fee_too_low", "stale_nonce", "beyond_window", "unfunded"]
            ),
            senders,
        ),
    ),
    (1, st.tuples(st.just("replay"), st.integers(0, 10_000))),
    (1, st.tuples(st.just("gap"), senders, st.integers(1, 3), amounts)),
]
operation = st.sampled_from([s for weight, s in OPERATIONS for _ in range(weight)]).flatmap(lambda s: s)


def statuses(ids: list[str]) -> dict[str, tuple[str, int | None]]:
    """Where each of ``ids`` stands on this node: pending in the mempool, else as stored."""
    stored = {i: (s, h) for i, s, h in Transaction.objects.filter(id__in=ids).values_list("id", "status", "height")}
    return stored | {i: (Transaction.PENDING, None) for i in ids if i in mempool}


class Nonces:
    """Account nonces and pending nonces, read once per batch; hands out the next free nonce."""

    def __init__(self) -> None:
        self.account = dict(Account.objects.values_list("address", "nonce"))
        self.taken: dict[str, set[int]] = defaultdict(set)
        for entry in mempool.oldest(len(mempool)):
            self.taken[entry.tx.sender].add(entry.tx.nonce)

    def of(self, address: str) -> int:
        return self.account.get(address, 0)

    def next(self, key: Key, skip: int = 0) -> int:
        """The lowest nonce from the account's that is neither pending nor used in this batch, plus ``skip``."""
        nonce = self.of(key.address)
        while nonce in self.taken[key.address]:
            nonce += 1
        nonce += skip
        self.taken[key.address].add(nonce)
        return nonce


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        # Hypothesis runs many examples in one test: each starts from a fresh genesis.
        for model in apps.get_app_config("chain").get_models():
            model.objects.all().delete()
        services.genesis_load(genesis=GENESIS)
        self.height = 0
        self.history: list[dict[str, Any]] = []  # every transaction admitted, for replays
        self.escrows: list[str] = []  # ids of admitted locks (an escrow's id is its lock's id)
        # The replay, kept block by block: what the stored state must equal.
        self.model = LedgerView(accounts={e["address"]: [e["amount"], 0] for e in GENESIS["allocations"]})
        self.placed: dict[str, int] = {}  # included transaction id -> its block's height
        self.included_per_sender: Counter = Counter()
        TOTALS.examples += 1

    def escrow_ref(self, index: int) -> str:
        if not self.escrows or index >= 45:
            return UNKNOWN_ESCROW
        return self.escrows[index % len(self.escrows)]

    def build(self, op: tuple, nonces: Nonces) -> tuple[dict[str, Any], frozenset[str]]:
        """One transaction for ``op`` and the codes its admission may answer besides admitting it."""
        kind = op[0]
        if kind == "transfer":
            _, s, r, amount, fee = op
            key = SENDERS[s]
            return transfer(key, nonces.next(key), RECIPIENTS[r].address, amount, fee=fee), {"insufficient_funds"}
        if kind == "gap":
            _, s, skip, amount = op
            key = SENDERS[s]
            # Waits for the nonces it skips; its own may already be pending (a duplicate).
            tx = transfer(key, nonces.next(key, skip), KEYS.alice.address, amount)
            return tx, {"insufficient_funds", "duplicate"}
        if kind == "lock":
            _, s, amount, delta = op
            key = SENDERS[s]
            timeout = self.height + MIN_ESCROW_BLOCKS + delta  # below height + 1 + min is too short
            tx = escrow_lock(key, nonces.next(key), amount=amount, arbiter=KEYS.arbiter.address, timeout_height=timeout)
            return tx, {"insufficient_funds", "timeout_too_short"}
        if kind == "pay":
            _, s, index, r, amount = op
            key = SENDERS[s]
            escrow = self.escrow_ref(index)
            return escrow_pay(
                key, nonces.next(key), escrow=escrow, to=RECIPIENTS[r].address, amount=amount
            ), ESCROW_CODES
        if kind == "refund":
            _, s, index = op
            key = SENDERS[s]
            return escrow_refund(key, nonces.next(key), escrow=self.escrow_ref(index)), ESCROW_CODES
        if kind == "replay":
            if not self.history:  # nothing to replay yet: a nonce beyond the window stands in
                return transfer(KEYS.alice, nonces.of(KEYS.alice.address) + NONCE_WINDOW + 1, KEYS.bob.address, 1), {
                    "bad_nonce"
                }
            return self.history[op[1] % len(self.history)], {"duplicate"}
        assert kind == "invalid"
        _, what, s = op
        key = SENDERS[s]
        to = KEYS.bob.address
        # None of these takes a nonce: each is refused before its nonce could matter.
        if what == "bad_signature":
            good = transfer(key, nonces.of(key.address), to, 5)
            return good | {"payload": good["payload"] | {"amount": 6}}, {"bad_signature"}
        if what == "wrong_chain":
            return transfer(key, nonces.of(key.address), to, 5, chain_id="aitbc-othernet-1"), {"wrong_chain"}
        if what == "fee_too_low":
            return transfer(key, nonces.of(key.address), to, 5, fee=MIN_FEE - 1), {"fee_too_low"}
        if what == "stale_nonce" and nonces.of(key.address) > 0:
            return transfer(key, nonces.of(key.address) - 1, to, 5, memo="stale"), {"bad_nonce"}
        if what in ("stale_nonce", "beyond_window"):
            return transfer(key, nonces.of(key.address) + NONCE_WINDOW + 1, to, 5), {"bad_nonce"}
        assert what == "unfunded"
        return transfer(named_key("pauper"), 0, to, 5), {"insufficient_funds"}

    # -- rules ----------------------------------------------------------------------------

    # Every step submits a batch and produces at least one block; now and then several
    # blocks at once, so that escrow timeouts pass.
    @rule(ops=st.lists(operation, min_size=12, max_size=60), blocks=st.sampled_from([1, 1, 1, 1, 1, 3]))
    def submit_and_produce(self, ops: list[tuple], blocks: int) -> None:
        self.admit(ops)
        for _ in range(blocks):
            self.produce()

    def admit(self, ops: list[tuple]) -> None:
        nonces = Nonces()
        built = [self.build(op, nonces) for op in ops]
        txs = [tx for tx, _codes in built]
        ids = [tx_id(tx) for tx in txs]
        before = statuses(ids)
        results = services.mempool_admit(txs=txs, chain_id=CHAIN_ID, min_fee=MIN_FEE)
        assert len(results) == len(txs)
        after = statuses(ids)
        TOTALS.submitted += len(txs)
        seen: set[str] = set()
        for (tx, allowed), this_id, result, op in zip(built, ids, results, ops, strict=True):
            must_refuse = op[0] == "invalid"
            expected: set[str] | None = set(allowed)
            if op[0] == "replay" and this_id in before:
                status, height = before[this_id]
                if status == Transaction.REJECTED and height is None:
                    expected = None  # dropped from a block, never included: it may come back
                else:
                    must_refuse, expected = True, {"duplicate"}
            elif op[0] == "replay":
                must_refuse = True  # the stand-in beyond the window
            elif op[0] != "invalid" and tx["nonce"] > nonces.of(tx["from"]) + NONCE_WINDOW:
                must_refuse, expected = True, {"bad_nonce"}
            if this_id in seen:
                must_refuse = True
                expected = None if expected is None else expected | {"duplicate"}

            if result.error is None:
                assert not must_refuse, (op, "admitted")
                assert result.id == this_id
                assert after[this_id] == (Transaction.PENDING, None)
                TOTALS.admitted += 1
                self.history.append(tx)
                if tx["type"] == "escrow_lock":
                    self.escrows.append(this_id)
            else:
                code = result.error.code
                TOTALS.refused[code] += 1
                assert expected is None or code in expected, (op, code, result.error.message)
                # Nothing recorded for a refused transaction; a stored one is left as it was.
                assert after.get(this_id) == before.get(this_id) or this_id in seen, (op, code)
            seen.add(this_id)

    def produce(self) -> None:
        state = ChainState.objects.get()
        now_ms = int(state.latest_block_time.timestamp() * 1000) + GENESIS["params"]["block_time_ms"]
        block = services.block_produce(key=KEYS.validator, now_ms=now_ms)
        assert block is not None and block.height == self.height + 1
        self.height = block.height
        TOTALS.blocks += 1
        TOTALS.applied += len(block.tx_ids)
        TOTALS.applied_rejected += len(block.results)
        self.check_block(block)

    # -- invariants -----------------------------------------------------------------------

    def check_block(self, block: Block) -> None:
        assert len(block.tx_ids) <= MAX_BLOCK_TXS
        assert len(block.tx_ids) == len(set(block.tx_ids)), "a block lists a transaction twice"
        assert set(block.results) <= set(block.tx_ids)
        rows = {
            i: (status, height, code, json.loads(body))
            for i, status, height, code, body in Transaction.objects.filter(id__in=block.tx_ids).values_list(
                "id", "status", "height", "error_code", "body"
            )
        }
        # Each included transaction: in no earlier block, stored with this height and the block's result,
        # and applying it to the replay gives the result the block recorded.
        for included in block.tx_ids:
            assert included not in self.placed, f"{included} is in blocks {self.placed[included]} and {block.height}"
            self.placed[included] = block.height
            status, height, code, tx = rows[included]
            assert height == block.height
            if included in block.results:
                assert (status, code) == (Transaction.REJECTED, block.results[included])
            else:
                assert (status, code) == (Transaction.COMMITTED, "")
            outcome = apply_transaction(
                self.model,
                tx_id=included,
                sender=tx["from"],
                nonce=tx["nonce"],
                fee=tx["fee"],
                kind=tx["type"],
                payload=tx["payload"],
                height=block.height,
                proposer=block.proposer,
                min_escrow_blocks=MIN_ESCROW_BLOCKS,
            )
            assert outcome.included and outcome.code == block.results.get(included), (outcome, block.results)
            self.included_per_sender[tx["from"]] += 1
        stored = stored_state()
        assert stored.supply == SUPPLY, f"supply {stored.supply} != {SUPPLY} at height {block.height}"
        assert all(balance >= 0 for balance, _nonce in stored.accounts.values())
        for address, (_balance, nonce) in stored.accounts.items():
            assert nonce == self.included_per_sender[address], f"{address}: nonce {nonce}"
        # Counted from the rows: no other transaction claims to be included.
        per_sender_rows = dict(
            Transaction.objects.filter(height__isnull=False).values_list("sender").annotate(n=Count("id"))
        )
        assert per_sender_rows == {a: n for a, n in self.included_per_sender.items() if n}
        replayed = state_of(
            {a: (b, n) for a, (b, n) in self.model.accounts.items()},
            {i: escrow_fields(e) for i, e in self.model.escrows.items() if e is not None},
        )
        assert stored == replayed

    @invariant()
    def nothing_pending_is_included(self) -> None:
        pending = [entry.tx.id for entry in mempool.oldest(len(mempool))]
        assert not Transaction.objects.filter(id__in=pending, height__isnull=False).exists()
        assert not Transaction.objects.filter(status=Transaction.PENDING).exists()

    def teardown(self) -> None:
        # The whole history once more, from genesis, as a fresh replay.
        if self.height:
            assert stored_state() == replayed_state(GENESIS)


@pytest.mark.django_db(transaction=True)
def test_ledger_invariants_hold_under_random_operations():
    start = Totals(**{k: v for k, v in vars(TOTALS).items() if k != "refused"})
    run_state_machine_as_test(
        LedgerMachine,
        settings=settings(
            max_examples=12,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
        ),
    )
    applied = TOTALS.applied - start.applied
    print(
        f"\nledger property test: {TOTALS.examples - start.examples} examples, {TOTALS.blocks - start.blocks} blocks, "
        f"{TOTALS.submitted - start.submitted} transactions submitted, {TOTALS.admitted - start.admitted} admitted, "
        f"{applied} applied in blocks ({TOTALS.applied_rejected - start.applied_rejected} of them included as "
        f"rejected); refused at admission: {dict(TOTALS.refused)}"
    )
    assert applied >= 2000, f"only {applied} transactions applied: the test has become too weak to mean much"
