"""The web process learns of new blocks by watching the node's head.

A node announces its blocks on its own channel layer; the web process (and its
dashboard's websockets) is elsewhere. Beat runs ``chain.watch_head`` every second:
it learns the node's height and, when it moved, sends a ``block`` event (the node's
own shape) for each new block to ``/ws/events/``. Which heights were announced is
shared state (``aitbc_site.shared_state``), so with several workers each block is
announced once.

Each pass costs the node a request, and a node's requests are what an idle network
spends most of its CPU on: once a height was announced, a pass asks only for the blocks
past it (an empty list when nothing is new). ``/status`` is read first only when no
height was announced yet, when more blocks are new than one pass announces, or when the
blocks could not be read.
"""

from __future__ import annotations

import logging

from aitbc_site.events import EVENTS_GROUP, send_event
from aitbc_site.shared_state import raise_value
from chain.client import ChainUnavailable

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
    except Exception as exc:  # no node configured
        logger.debug("watch_head: %s", exc)
        return 0
    # Raising to -1 raises nothing: this reads the last height announced (-1: none yet).
    announced = raise_value("chain_head", -1)
    if announced >= 0:
        try:
            # One block more than a pass announces tells whether more are new than that.
            blocks = client.blocks(announced + 1, MAX_BLOCKS_PER_PASS + 1)
        except ChainUnavailable as exc:  # the node is away: nothing to announce until it is back
            logger.debug("watch_head: %s", exc)
            return 0
        except Exception as exc:
            logger.debug("watch_head: blocks from %d: %s", announced + 1, exc)
        else:
            if not blocks:
                return 0
            if len(blocks) <= MAX_BLOCKS_PER_PASS:
                return _announce(max(b["height"] for b in blocks), blocks)
    try:
        height = int(client.status()["height"])
    except Exception as exc:  # the node is away: nothing to announce
        logger.debug("watch_head: %s", exc)
        return 0
    return _announce(height, None, client)


def _announce(height: int, blocks: list[dict] | None, client=None) -> int:
    """Send an event for each block up to ``height`` not announced yet (at most the newest
    ``MAX_BLOCKS_PER_PASS``); ``blocks`` read already, else read from ``client``."""
    previous = raise_value("chain_head", height)
    if previous >= height:
        return 0
    start = max(previous + 1, height - MAX_BLOCKS_PER_PASS + 1, 1)
    if blocks is None:
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
