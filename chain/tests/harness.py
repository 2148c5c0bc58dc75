"""A test chain in the test database, driven through the RPC (Django test client) and the services."""

from __future__ import annotations

import json
from typing import Any

from django.test import Client

from chain import services
from chain.mempool import mempool
from chain.models import Account, Block, ChainState, Escrow, Transaction
from chain.protocol import block as proto_block
from chain.protocol.keys import Key
from chain.protocol.tx import check_transaction, tx_id
from chain.tests.support import Keys, LedgerState, StoredBlock, escrow_fields, replay, state_of, transfer

# protocol.md's table of error codes and HTTP statuses, copied here on purpose: the
# tests hold the implementation (chain.protocol.errors.HTTP_STATUS) to the contract.
PROTOCOL_STATUS = {
    "malformed": 400,
    "invalid_address": 400,
    "wrong_chain": 400,
    "bad_signature": 400,
    "fee_too_low": 400,
    "bad_nonce": 409,
    "duplicate": 409,
    "insufficient_funds": 409,
    "escrow_not_found": 404,
    "escrow_closed": 409,
    "not_arbiter": 403,
    "exceeds_escrow": 409,
    "timeout_too_short": 400,
    "not_found": 404,
    "mempool_full": 503,
    "rate_limited": 429,
}

SUBMIT = "/v1/chain/transactions"
BATCH = "/v1/chain/transactions/batch"


def assert_error(response, code: str) -> dict[str, Any]:
    """``response`` is protocol.md's error answer for ``code``: its status and exactly {"error": {code, message}}."""
    body = response.json()
    assert body.get("error", {}).get("code") == code, f"expected {code}, got {response.status_code} {body}"
    assert response.status_code == PROTOCOL_STATUS[code], f"{code} answered {response.status_code}, not per table"
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], body
    return body["error"]


def encode(body: Any) -> bytes:
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode("utf-8")
    return json.dumps(body, ensure_ascii=False).encode("utf-8")


class ChainHarness:
    """The test chain: genesis loaded, the RPC reached through Django's test client."""

    def __init__(self, client: Client, keys: Keys, genesis: dict[str, Any]) -> None:
        self.client = client
        self.keys = keys
        self.genesis = genesis
        self.params = genesis["params"]

    # -- RPC ----------------------------------------------------------------------------------

    def post(self, body: Any, path: str = SUBMIT):
        return self.client.post(path, data=encode(body), content_type="application/json")

    def get(self, path: str):
        return self.client.get(path)

    def submit(self, tx: dict[str, Any]) -> str:
        """POST ``tx`` and require it admitted; return its id."""
        response = self.post(tx)
        assert response.status_code == 202, response.json()
        return response.json()["id"]

    def batch(self, txs: list[Any]) -> list[dict[str, Any]]:
        response = self.post(txs, BATCH)
        assert response.status_code == 200, response.json()
        return response.json()

    def tx_status(self, tx_id: str) -> dict[str, Any]:
        response = self.get(f"{SUBMIT}/{tx_id}")
        assert response.status_code == 200, response.json()
        return response.json()

    # -- services and state -------------------------------------------------------------------

    @property
    def height(self) -> int:
        return ChainState.objects.get().height

    def produce(self, key: Key | None = None) -> Block:
        """The next block, as the producer would make it once ``block_time_ms`` has passed."""
        state = ChainState.objects.get()
        now_ms = int(state.latest_block_time.timestamp() * 1000) + self.params["block_time_ms"]
        block = services.block_produce(key=key or self.keys.validator, now_ms=now_ms)
        assert block is not None
        return block

    def account(self, key_or_address: Key | str) -> tuple[int, int]:
        address = key_or_address if isinstance(key_or_address, str) else key_or_address.address
        row = Account.objects.filter(address=address).values_list("balance", "nonce").first()
        return row or (0, 0)

    def balance(self, key_or_address: Key | str) -> int:
        return self.account(key_or_address)[0]

    def nonce(self, key_or_address: Key | str) -> int:
        return self.account(key_or_address)[1]


def stored_state() -> LedgerState:
    """Accounts and escrows as the database holds them."""
    accounts = {a: (b, n) for a, b, n in Account.objects.values_list("address", "balance", "nonce")}
    escrows = {e.id: escrow_fields(services.escrow_state(e)) for e in Escrow.objects.all()}
    return state_of(accounts, escrows)


def replayed_state(genesis: dict[str, Any]) -> LedgerState:
    """The ledger recomputed from genesis and every stored block's transactions."""
    blocks = [
        StoredBlock(height=h, proposer=p, tx_ids=ids, results=r)
        for h, p, ids, r in Block.objects.order_by("height").values_list("height", "proposer", "tx_ids", "results")
    ]
    bodies = {tx_id: json.loads(body) for tx_id, body in Transaction.objects.values_list("id", "body")}
    return replay(genesis, blocks, bodies)


def dropped_transaction_comes_back(chain: ChainHarness) -> None:
    """A transaction a block dropped (stored rejected, no height) is admitted again; the
    block that commits it replaces its row."""
    alice, bob = chain.keys.alice, chain.keys.bob
    tx = transfer(alice, 0, bob.address, 5)
    checked = check_transaction(tx, chain_id=chain.genesis["chain_id"], min_fee=0)
    Transaction.objects.create(
        id=checked.id,
        seq=1,
        sender=checked.sender,
        nonce=checked.nonce,
        fee=checked.fee,
        type=checked.type,
        spend=checked.spend,
        body=checked.body,
        status=Transaction.REJECTED,
        height=None,
        error_code="insufficient_funds",
        error_message="dropped",
    )
    others = [transfer(bob, n, alice.address, 1) for n in range(3)]
    results = chain.batch([*others, tx])
    assert all("id" in r for r in results) and results[3]["id"] == checked.id, results
    assert chain.tx_status(checked.id)["status"] == Transaction.PENDING
    assert len(mempool) == 4
    block = chain.produce()
    assert block.tx_count == 4
    stored = Transaction.objects.get(id=checked.id)
    assert (stored.status, stored.height, stored.error_code) == (Transaction.COMMITTED, block.height, "")
    assert Transaction.objects.count() == 4
    assert stored_state() == replayed_state(chain.genesis)


def commit_peer_block(chain: ChainHarness, txs: list[dict[str, Any]]) -> Block:
    """The next block with ``txs``, as a peer's block with its commit reaches this node, committed."""
    state = services.chain_state()
    height = state.height + 1
    header = proto_block.block_header(
        chain_id=state.chain_id,
        height=height,
        prev_id=state.latest_block_id,
        time_ms=int(state.latest_block_time.timestamp() * 1000) + 1000,
        proposer=chain.keys.validator.address,
        tx_ids=[tx_id(tx) for tx in txs],
    )
    bid = proto_block.block_id(header)
    commit = proto_block.make_commit(
        chain.keys.validator, chain_id=state.chain_id, height=height, round=0, block_id=bid
    )
    return services.block_commit(body={"header": header, "txs": txs, "evidence": []}, commit=commit)
