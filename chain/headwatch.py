"""The web process learns of new blocks by watching the node's head.

A node announces its blocks on its own channel layer; the web process (and its
dashboard's websockets) is elsewhere. Beat runs ``chain.watch_head`` every second:
it reads the node's ``/status`` and, when the height moved, sends a ``block`` event
(the node's own shape) for each new block to ``/ws/events/``. Which heights were
announced is shared state (``aitbc_site.shared_state``), so with several workers
each block is announced once.
"""

from __future__ import annotations

import logging

from aitbc_site.events import EVENTS_GROUP, send_event
from aitbc_site.shared_state import raise_value

logger = logging.getLogger(__name__)

# After a gap (the web process started, or the node was away) only this many of the
# newest blocks are announced one by one.
MAX_BLOCKS_PER_PASS = 20


def _event(block: dict) -> dict:
    return {
        "type": "block",
        "height": block["height"],
        "id": block["id"],
        "time": block["time"],
        "tx_count": len(block.get("tx_ids") or []),
    }


def watch_once(client=None) -> int:
    """Announce the blocks the node made since the last pass; how many were announced."""
    from chain import dashboard

    try:
        client = client or dashboard.client()
        height = int(client.status()["height"])
    except Exception as exc:  # no node configured, or it is away: nothing to announce
        logger.debug("watch_head: %s", exc)
        return 0
    previous = raise_value("chain_head", height)
    if previous >= height:
        return 0
    start = max(previous + 1, height - MAX_BLOCKS_PER_PASS + 1, 1)
    try:
        blocks = client.blocks(start, height - start + 1)
    except Exception as exc:
        logger.debug("watch_head: blocks %d..%d: %s", start, height, exc)
        blocks = []
    events = [_event(b) for b in blocks if start <= b["height"] <= height]
    if not events:
        events = [{"type": "block", "height": height, "id": "", "time": "", "tx_count": 0}]
    for event in events:
        send_event(EVENTS_GROUP, event)
    return len(events)
