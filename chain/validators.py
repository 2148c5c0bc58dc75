"""The validator set over time: genesis, approved changes, jailing."""

from __future__ import annotations

import hashlib
import threading
from typing import Any

from django.db import connection
from django.db.models.signals import post_delete, post_save

from chain.models import Validator
from chain.protocol.encoding import canonical_json

# A change approved in the block at height h takes effect at h + VALSET_DELAY, so every
# validator knows the set of the next height before it starts voting on it.
VALSET_DELAY = 2


class _ValidatorRows:
    """The validator history (a few rows per validator ever known), as last read from the database.

    The consensus thread asks for the set of each height five or six times while deciding it
    (its state machine, the proposal check, the commit check, the application), and the rows
    change only when a block records an approved change or jails a validator
    (``chain.services``), which then calls ``forget_validator_sets``. Rows are kept only when
    read outside a transaction: rows read inside one may roll back. A generation number keeps
    rows read before a ``forget`` from being kept after it.
    """

    def __init__(self) -> None:
        self.rows: list[tuple[str, str, int, int]] | None = None
        self.generation = 0
        self.lock = threading.Lock()

    def get(self) -> list[tuple[str, str, int, int]]:
        rows = self.rows
        if rows is not None:
            return rows
        generation = self.generation
        rows = list(
            Validator.objects.order_by("effective_height", "id").values_list(
                "address", "pubkey", "power", "effective_height"
            )
        )
        if not connection.in_atomic_block:
            with self.lock:
                if generation == self.generation:
                    self.rows = rows
        return rows

    def forget(self) -> None:
        with self.lock:
            self.generation += 1
            self.rows = None


_rows = _ValidatorRows()


def forget_validator_sets() -> None:
    """The validator rows changed (or are about to, in a transaction): read them afresh."""
    _rows.forget()


def validator_set_at(height: int) -> dict[str, tuple[str, int]]:
    """``{address: (pubkey, power)}`` of the validators voting at ``height``."""
    latest: dict[str, tuple[str, int]] = {}
    for address, pubkey, power, effective in _rows.get():
        if effective <= max(height, 1):
            latest[address] = (pubkey, power)
    return {address: entry for address, entry in latest.items() if entry[1] > 0}


def _rows_changed(**_kwargs: Any) -> None:
    forget_validator_sets()


# Saves through the ORM anywhere (the admin, a shell) invalidate too; bulk writes call
# ``forget_validator_sets`` themselves.
post_save.connect(_rows_changed, sender=Validator, dispatch_uid="chain.validators.saved")
post_delete.connect(_rows_changed, sender=Validator, dispatch_uid="chain.validators.deleted")


def validators_detail(height: int) -> list[dict[str, Any]]:
    """Every validator ever known, with its state at ``height`` and any change still to come."""
    latest: dict[str, Validator] = {}
    upcoming: dict[str, Validator] = {}
    for row in Validator.objects.order_by("effective_height"):
        if row.effective_height <= max(height, 1):
            latest[row.address] = row
        else:
            upcoming.setdefault(row.address, row)
    out = []
    for address in sorted(set(latest) | set(upcoming)):
        row = latest.get(address)
        entry: dict[str, Any] = {
            "address": address,
            "pubkey": (row or upcoming[address]).pubkey,
            "power": row.power if row else 0,
            "status": "active" if row and row.power > 0 else ("jailed" if row and "jail" in row.reason else "inactive"),
        }
        if row is not None and row.reason != "genesis":
            entry["reason"] = row.reason
            entry["since_height"] = row.effective_height
        if address in upcoming:
            nxt = upcoming[address]
            entry["pending_change"] = {"power": nxt.power, "from_height": nxt.effective_height, "reason": nxt.reason}
        out.append(entry)
    return out


def change_id(address: str, pubkey: str, power: int) -> str:
    return hashlib.sha256(canonical_json({"address": address, "pubkey": pubkey, "power": power})).hexdigest()
