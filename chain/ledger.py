"""The state transition: how a transaction changes balances and escrows.

Pure Python over an in-memory view of the accounts and escrows a block
touches, so block application, admission checks and the property-based tests
share one implementation. The view is loaded from the database before and
written back after (``chain/services.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from chain.protocol.errors import ProtocolError


@dataclass
class EscrowState:
    id: str
    job_id: str
    payer: str
    arbiter: str
    amount: int
    paid: int
    refunded: int
    timeout_height: int
    open: bool
    opened_height: int
    closed_height: int | None = None
    new: bool = False

    @property
    def remaining(self) -> int:
        return self.amount - self.paid - self.refunded


@dataclass
class LedgerView:
    """Accounts ``{address: [balance, nonce]}`` and escrows a block reads and writes."""

    accounts: dict[str, list[int]] = field(default_factory=dict)
    escrows: dict[str, EscrowState | None] = field(default_factory=dict)
    touched_accounts: set[str] = field(default_factory=set)
    touched_escrows: set[str] = field(default_factory=set)
    validators: dict[str, tuple[str, int]] = field(default_factory=dict)
    approvals: list[tuple[str, str, int, str]] = field(default_factory=list)

    def account(self, address: str) -> list[int]:
        entry = self.accounts.get(address)
        if entry is None:
            entry = self.accounts[address] = [0, 0]
        return entry

    def credit(self, address: str, amount: int) -> None:
        self.account(address)[0] += amount
        self.touched_accounts.add(address)


@dataclass(frozen=True, slots=True)
class Outcome:
    """``included``: the transaction goes into the block (fee paid, nonce used).
    ``code``: None when its effect applied, else the protocol code it was rejected with."""

    included: bool
    code: str | None = None
    message: str = ""


OK = Outcome(True)


def check_escrow_rules(
    escrow: EscrowState | None, *, kind: str, sender: str, payload: dict[str, Any], height: int
) -> None:
    """The escrow rules of ``protocol.md`` at chain height ``height``; raises ``ProtocolError``."""
    if escrow is None:
        raise ProtocolError("escrow_not_found", f"no escrow {payload['escrow']}")
    if not escrow.open:
        raise ProtocolError("escrow_closed", f"escrow {escrow.id} is closed")
    if kind == "escrow_pay":
        if sender != escrow.arbiter:
            raise ProtocolError("not_arbiter", "only the escrow's arbiter may pay out of it")
        if payload["amount"] > escrow.remaining:
            raise ProtocolError(
                "exceeds_escrow", f"pay of {payload['amount']} exceeds the {escrow.remaining} remaining"
            )
    elif sender != escrow.arbiter and height < escrow.timeout_height:
        raise ProtocolError(
            "not_arbiter", f"before height {escrow.timeout_height} only the arbiter may refund this escrow"
        )


def apply_transaction(
    view: LedgerView,
    *,
    tx_id: str,
    sender: str,
    nonce: int,
    fee: int,
    kind: str,
    payload: dict[str, Any],
    height: int,
    proposer: str,
    min_escrow_blocks: int,
) -> Outcome:
    """Apply one transaction at block ``height``; money is only ever moved, never made."""
    account = view.account(sender)
    if nonce != account[1]:
        return Outcome(False, "bad_nonce", f"nonce {nonce} but the account's nonce is {account[1]}")
    if account[0] < fee:
        return Outcome(False, "insufficient_funds", f"balance {account[0]} cannot pay the fee {fee}")
    # The fee is paid and the nonce used even when the type's own effect fails.
    account[0] -= fee
    account[1] += 1
    view.touched_accounts.add(sender)
    view.credit(proposer, fee)

    if kind == "transfer":
        amount = payload["amount"]
        if account[0] < amount:
            return Outcome(True, "insufficient_funds", f"balance {account[0]} cannot cover {amount}")
        account[0] -= amount
        view.credit(payload["to"], amount)
        return OK
    if kind == "escrow_lock":
        amount = payload["amount"]
        if payload["timeout_height"] < height + min_escrow_blocks:
            return Outcome(
                True,
                "timeout_too_short",
                f"timeout_height {payload['timeout_height']} is below {height + min_escrow_blocks}",
            )
        if account[0] < amount:
            return Outcome(True, "insufficient_funds", f"balance {account[0]} cannot cover {amount}")
        account[0] -= amount
        view.escrows[tx_id] = EscrowState(
            id=tx_id,
            job_id=payload["job_id"],
            payer=sender,
            arbiter=payload["arbiter"],
            amount=amount,
            paid=0,
            refunded=0,
            timeout_height=payload["timeout_height"],
            open=True,
            opened_height=height,
            new=True,
        )
        view.touched_escrows.add(tx_id)
        return OK
    if kind == "validator_update":
        if sender not in view.validators:
            return Outcome(True, "not_validator", "only a current validator may approve a validator set change")
        # Recorded here; the change takes effect once validators holding more than 2/3
        # of the power approved the same change (chain/blocks.py).
        view.approvals.append((payload["validator"], payload["pubkey"], payload["power"], sender))
        return OK
    escrow = view.escrows.get(payload["escrow"])
    try:
        check_escrow_rules(escrow, kind=kind, sender=sender, payload=payload, height=height)
    except ProtocolError as exc:
        return Outcome(True, exc.code, exc.message)
    assert escrow is not None
    if kind == "escrow_pay":
        escrow.paid += payload["amount"]
        view.credit(payload["to"], payload["amount"])
    else:
        remaining = escrow.remaining
        escrow.refunded += remaining
        escrow.open = False
        escrow.closed_height = height
        view.credit(escrow.payer, remaining)
    view.touched_escrows.add(escrow.id)
    return OK
