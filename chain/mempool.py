"""The mempool: transactions this node admitted that no block has taken yet, held in memory.

A transaction is written to the database once, when a block decides it: committed,
rejected by its code inside the block, or dropped by the block producer (rejected
without a height). Admission writes nothing. Every node of a network admits every
gossiped transaction, so a pending row would cost each node an insert and then an
update for each transaction; CometBFT keeps its mempool in memory for the same reason.

A node that restarts starts with an empty mempool. Its peers still hold what was
gossiped; a client whose transaction the node no longer knows (``not_found``) sends it
again, which is safe: the same signed bytes can only ever be included once.

One lock (``Mempool.lock``) serializes admission with the application of a block:
admission reads the accounts a batch touches and adds to the mempool under it, and a
block's database transaction commits and its transactions leave the mempool under it,
so an admission sees the ledger and the mempool of the same moment.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from chain.protocol.tx import Transaction as CheckedTx


@dataclass(slots=True)
class Pending:
    tx: CheckedTx
    seq: int  # arrival order
    received_at: datetime


class Mempool:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._entries: dict[str, Pending] = {}  # by id, in arrival order
        self._by_sender: dict[str, dict[int, str]] = {}  # sender -> nonce -> id
        self._spend: dict[str, int] = {}  # what each sender's pending transactions spend
        self._pays: dict[str, int] = {}  # escrow id -> amount of its pending pays
        self._locks: set[str] = set()  # ids of pending escrow_lock transactions
        self._by_signature: dict[str, str] = {}  # signature -> id
        self._seq = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, tx_id: object) -> bool:
        return tx_id in self._entries

    def get(self, tx_id: str) -> Pending | None:
        return self._entries.get(tx_id)

    def add(self, c: CheckedTx, *, received_at: datetime) -> Pending:
        with self.lock:
            self._seq += 1
            entry = Pending(c, self._seq, received_at)
            self._entries[c.id] = entry
            self._by_sender.setdefault(c.sender, {})[c.nonce] = c.id
            self._spend[c.sender] = self._spend.get(c.sender, 0) + c.spend
            if c.type == "escrow_pay":
                escrow = c.payload["escrow"]
                self._pays[escrow] = self._pays.get(escrow, 0) + c.payload["amount"]
            elif c.type == "escrow_lock":
                self._locks.add(c.id)
            self._by_signature[c.tx["signature"]] = c.id
            return entry

    def remove(self, ids: list[str]) -> None:
        with self.lock:
            for tx_id in ids:
                entry = self._entries.pop(tx_id, None)
                if entry is None:
                    continue
                c = entry.tx
                nonces = self._by_sender[c.sender]
                del nonces[c.nonce]
                if nonces:
                    self._spend[c.sender] -= c.spend
                else:
                    del self._by_sender[c.sender]
                    del self._spend[c.sender]
                if c.type == "escrow_pay":
                    escrow = c.payload["escrow"]
                    left = self._pays[escrow] - c.payload["amount"]
                    if left:
                        self._pays[escrow] = left
                    else:
                        del self._pays[escrow]
                elif c.type == "escrow_lock":
                    self._locks.discard(tx_id)
                self._by_signature.pop(c.tx["signature"], None)

    def clear(self) -> None:
        with self.lock:
            for part in (self._entries, self._by_sender, self._spend, self._pays, self._locks, self._by_signature):
                part.clear()

    # what admission asks
    def pending_at(self, sender: str, nonce: int) -> str | None:
        """The id of the pending transaction of ``sender`` with ``nonce``, if any."""
        nonces = self._by_sender.get(sender)
        return nonces.get(nonce) if nonces else None

    def spend_of(self, sender: str) -> int:
        return self._spend.get(sender, 0)

    def pays_of(self, escrow_id: str) -> int:
        return self._pays.get(escrow_id, 0)

    def lock_pending(self, escrow_id: str) -> bool:
        return escrow_id in self._locks

    # what block building asks
    def senders(self) -> list[str]:
        with self.lock:
            return list(self._by_sender)

    def nonces_of(self, sender: str) -> dict[int, str]:
        return self._by_sender.get(sender, {})

    def same_slot(self, pairs: set[tuple[str, int]], ids: set[str]) -> list[Pending]:
        """Pending transactions holding one of the (sender, nonce) ``pairs`` whose ids are not in ``ids``."""
        with self.lock:
            found = []
            for sender, nonce in pairs:
                other = self.pending_at(sender, nonce)
                if other is not None and other not in ids:
                    found.append(self._entries[other])
            return found

    def oldest(self, limit: int) -> list[Pending]:
        with self.lock:
            out = []
            for entry in self._entries.values():
                if len(out) >= limit:
                    break
                out.append(entry)
            return out

    def involving(self, address: str, limit: int) -> list[Pending]:
        """Pending transactions sent by ``address`` or paying it, newest first."""
        with self.lock:
            entries = list(self._entries.values())
        found = []
        for entry in reversed(entries):
            c = entry.tx
            if c.sender == address or c.payload.get("to") == address:
                found.append(entry)
                if len(found) >= limit:
                    break
        return found

    def checked_forms(self, txs: list[Any]) -> list[CheckedTx | None]:
        """For each wire transaction, the checked form pending here if it is exactly that one.

        Exactly: equal and of the same JSON types field by field (``1``, ``1.0`` and
        ``true`` are equal in Python but not on the wire), so its canonical encoding,
        id and signature are the admitted ones.
        """
        with self.lock:
            found = []
            for tx in txs:
                tx_id = (
                    self._by_signature.get(tx["signature"])
                    if type(tx) is dict and type(tx.get("signature")) is str
                    else None
                )
                found.append(self._entries[tx_id].tx if tx_id is not None else None)
        return [c if c is not None and _same_wire(tx, c.tx) else None for tx, c in zip(txs, found, strict=True)]


def _same_wire(tx: dict[str, Any], known: dict[str, Any]) -> bool:
    if tx is known:
        return True
    if tx != known:
        return False
    # Equal, so only a number can be of another JSON type (1 == 1.0 == true); a string
    # equals only a string. The known form's numbers are integers.
    if type(tx["nonce"]) is not int or type(tx["fee"]) is not int:
        return False
    payload = tx["payload"]
    return all(type(payload[k]) is int for k, v in known["payload"].items() if type(v) is int)


mempool = Mempool()
