"""The node's runtime inside its process: validator key, block production, peers.

A node process (``manage.py node``) loads its genesis, and when it holds a
validator key, produces a block every ``block_time_ms``. The production loop
runs in a thread of the node process and calls the same idempotent
``services.block_produce`` that the beat tick calls, so a late or doubled
tick cannot make two blocks at one height.
"""

from __future__ import annotations

import json
import logging
import threading
import time

from django.db import close_old_connections

from chain.protocol.keys import Key

logger = logging.getLogger(__name__)

_validator_key: Key | None = None
_producer: BlockProducer | None = None


def set_validator_key(key: Key | None) -> None:
    global _validator_key
    _validator_key = key


def validator_key() -> Key | None:
    return _validator_key


def _announce(block) -> None:
    """Send a block this node produced to its peers (followers apply it after checking its commit)."""
    from chain.network import driver
    from chain.selectors import block_full

    current = driver()
    if current is not None:
        current.height = block.height
    if current is not None and current.gossip.peers:
        current.gossip.broadcast(json.dumps({"type": "block", **block_full(block)}, ensure_ascii=False))


def producer() -> BlockProducer | None:
    return _producer


class BlockProducer(threading.Thread):
    def __init__(self, key: Key, block_time_ms: int) -> None:
        super().__init__(name="block-producer", daemon=True)
        self.key = key
        self.interval = block_time_ms / 1000
        self._stop_event = threading.Event()
        self.last_error: str | None = None
        self.last_block_at: float | None = None

    def run(self) -> None:
        from chain.services import block_produce

        while not self._stop_event.is_set():
            started = time.monotonic()
            try:
                block = block_produce(key=self.key)
                if block is not None:
                    self.last_block_at = time.time()
                    self.last_error = None
                    _announce(block)
                    if block.tx_count:
                        logger.info("block %d: %d transactions, id %s", block.height, block.tx_count, block.id[:16])
            except Exception as exc:  # keep producing after a transient database error
                self.last_error = f"{type(exc).__name__}: {exc}"
                logger.exception("block production failed")
                close_old_connections()
            elapsed = time.monotonic() - started
            self._stop_event.wait(max(0.01, self.interval - elapsed))

    def stop(self) -> None:
        self._stop_event.set()


def start_producer(key: Key, block_time_ms: int) -> BlockProducer:
    global _producer
    _producer = BlockProducer(key, block_time_ms)
    _producer.start()
    return _producer


def stop_producer() -> None:
    if _producer is not None:
        _producer.stop()
        _producer.join(10)
