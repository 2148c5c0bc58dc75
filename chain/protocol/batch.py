"""The stateless half of admitting a submitted batch, as one call a worker process can make.

A node spends most of a batch's admission on work that needs no ledger state: the
strict parse, the field and address checks, the canonical bytes and the signature.
``check_batch`` does all of it for one request body and returns what the stateful half
(``chain.services``) needs, so a node can run it in other processes, one per core,
outside the interpreter lock its database work holds. Pure code: no Django.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from chain.protocol.encoding import parse_strict
from chain.protocol.errors import ProtocolError
from chain.protocol.tx import check_transaction, signature_valid, spend_of


class Checked:
    """A transaction that passed the stateless checks, as a check process hands it back.

    What the stateful half reads of ``chain.protocol.tx.Transaction`` (id, wire form,
    canonical body, sender, nonce, fee, type, payload, spend), without the signed bytes,
    which it never needs. It crosses the process boundary as (id, wire form, body): a
    quarter of the cost of pickling the dataclass field by field, paid in the node.
    """

    __slots__ = ("id", "tx", "body", "sender", "nonce", "fee", "type", "payload")

    def __init__(self, id: str, tx: dict[str, Any], body: str) -> None:
        self.id, self.tx, self.body = id, tx, body
        self.sender, self.nonce, self.fee = tx["from"], tx["nonce"], tx["fee"]
        self.type, self.payload = tx["type"], tx["payload"]

    def __reduce__(self):
        return (Checked, (self.id, self.tx, self.body))

    @property
    def spend(self) -> int:
        return spend_of(self.type, self.fee, self.payload)


# One entry per transaction of the batch, in order: the error that refused it, or its
# checked form and whether its signature verifies (the fee and the ledger are checked
# by the caller, after it has answered transactions it already holds as duplicates).
Entry = ProtocolError | tuple[Checked, bool]


def parse_batch(body: bytes, max_batch: int) -> list[Any]:
    """The transactions of a batch body, or ``malformed`` naming what is wrong with it."""
    txs = parse_strict(body)
    if not isinstance(txs, list):
        raise ProtocolError("malformed", "a batch is a JSON list of transactions")
    if len(txs) > max_batch:
        raise ProtocolError("malformed", f"a batch holds at most {max_batch} transactions, got {len(txs)}")
    return txs


def check_batch(body: bytes, chain_id: str, max_batch: int) -> list[Entry]:
    """Parse a batch body and run each transaction's stateless checks and signature check.

    Raises ``ProtocolError`` when the body is not a batch (``parse_batch``).
    """
    entries: list[Entry] = []
    for raw in parse_batch(body, max_batch):
        try:
            # The fee is the caller's to check, after the signature, as the protocol orders them.
            checked = check_transaction(raw, chain_id=chain_id, min_fee=0, verify_signature=False)
        except ProtocolError as exc:
            entries.append(exc)
            continue
        entries.append((Checked(checked.id, checked.tx, checked.body), signature_valid(checked)))
    return entries


def watch_parent(parent: int, interval: float = 0.5) -> None:
    """Exit this process once ``parent`` is gone (a check process's initializer).

    A node killed outright (SIGKILL, out of memory) cannot stop its check processes,
    and they would wait for work forever: each watches its parent instead.
    """

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os._exit(0)

    threading.Thread(target=watch, name="watch-parent", daemon=True).start()
