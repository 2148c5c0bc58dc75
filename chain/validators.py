"""The validator set over time: genesis, approved changes, jailing."""

from __future__ import annotations

import hashlib
from typing import Any

from chain.models import Validator
from chain.protocol.encoding import canonical_json

# A change approved in the block at height h takes effect at h + VALSET_DELAY, so every
# validator knows the set of the next height before it starts voting on it.
VALSET_DELAY = 2


def validator_set_at(height: int) -> dict[str, tuple[str, int]]:
    """``{address: (pubkey, power)}`` of the validators voting at ``height``."""
    latest: dict[str, Validator] = {}
    for row in Validator.objects.filter(effective_height__lte=max(height, 1)).order_by("effective_height"):
        latest[row.address] = row
    return {address: (row.pubkey, row.power) for address, row in latest.items() if row.power > 0}


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
